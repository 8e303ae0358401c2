//! What a file name in a cluster folder is: a manifest, an artifact, a files archive, a pin, a `.part`
//! left by an unfinished write, or a stranger. Pure.

use super::{BackupId, Compression, MANIFEST_SUFFIX, PART_SUFFIX, PIN_SUFFIX, files};

/// What one file name in a cluster folder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Manifest(BackupId),
    Artifact(BackupId),
    /// The companion archive of a backup (`[files]`).
    Files(BackupId),
    /// The pin marker of a backup.
    Pin(BackupId),
    /// A `.part` file left by a run that did not finish.
    Partial(String),
    /// Anything else: never ours to touch.
    Foreign,
}

/// Classifies a file name found next to backups.
pub fn classify(name: &str) -> Entry {
    if let Some(stem) = name.strip_suffix(PART_SUFFIX) {
        return match classify(stem) {
            Entry::Manifest(_) | Entry::Artifact(_) | Entry::Files(_) | Entry::Pin(_) => {
                Entry::Partial(name.to_string())
            }
            _ => Entry::Foreign,
        };
    }
    if let Some(stem) = name.strip_suffix(MANIFEST_SUFFIX) {
        return BackupId::parse(stem).map_or(Entry::Foreign, Entry::Manifest);
    }
    if let Some(stem) = name.strip_suffix(PIN_SUFFIX) {
        return BackupId::parse(stem).map_or(Entry::Foreign, Entry::Pin);
    }
    if let Some(stem) = name.strip_suffix(files::FILES_SUFFIX) {
        return BackupId::parse(stem).map_or(Entry::Foreign, Entry::Files);
    }
    for ext in [Compression::None.artifact_extension(), Compression::Zstd { level: 0 }.artifact_extension()] {
        if let Some(stem) = name.strip_suffix(ext) {
            return BackupId::parse(stem).map_or(Entry::Foreign, Entry::Artifact);
        }
    }
    Entry::Foreign
}
