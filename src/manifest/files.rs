//! The companion archive of a backup: the control-plane files (`[files]`) as the manifest records them.
//! Read back from a store, every field is untrusted: paths are checked before anything is derived from
//! them, and the archive's name is always the id's.

use serde::{Deserialize, Serialize};

use super::{BackupId, is_sha256_hex};

/// The archive's name after the backup id.
pub const FILES_SUFFIX: &str = ".files.tar.zst.age";

/// The archive as stored, and every file in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesFacts {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub recipients: Vec<String>,
    /// The distribution whose layout `[files] preset` named: `restore` prints its node procedure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<crate::archive::preset::Preset>,
    pub entries: Vec<FileEntry>,
}

/// One archived path, as it was on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Absolute, as on the host.
    pub path: String,
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// Of a file's contents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Where a symlink points, as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
}

impl BackupId {
    /// The companion archive's name: `<id>.files.tar.zst.age`.
    pub fn files_name(&self) -> String {
        format!("{self}{FILES_SUFFIX}")
    }
}

/// Whether an absolute path is one an archive may hold: no `.` or `..` component, no empty one, no NUL or
/// control character. Extraction joins it under a folder, so this is what keeps it there.
pub fn is_safe_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else { return false };
    !rest.is_empty()
        && path.len() <= 4096
        && !path.chars().any(char::is_control)
        && rest.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

impl FilesFacts {
    /// Checks what a stored manifest says of the archive of backup `id`.
    pub fn check(&self, id: &BackupId) -> Result<(), String> {
        if self.name != id.files_name() {
            return Err(format!(
                "manifest names its files archive \"{}\" where backup {id}'s is always \"{}\"",
                self.name.escape_debug(),
                id.files_name()
            ));
        }
        if !is_sha256_hex(&self.sha256) {
            return Err("manifest's files archive sha256 is not 64 hex digits".into());
        }
        let mut seen = std::collections::HashSet::new();
        for e in &self.entries {
            if !is_safe_path(&e.path) {
                return Err(format!("manifest's files archive lists an unsafe path: {}", e.path.escape_debug()));
            }
            if !seen.insert(e.path.as_str()) {
                return Err(format!("manifest's files archive lists {} twice", e.path.escape_debug()));
            }
            if e.mode > 0o7777 {
                return Err(format!("manifest gives {} the mode {:o}", e.path.escape_debug(), e.mode));
            }
            let hash_ok = match e.kind {
                FileKind::File => e.sha256.as_deref().is_some_and(is_sha256_hex) && e.target.is_none(),
                FileKind::Dir => e.sha256.is_none() && e.target.is_none(),
                FileKind::Symlink => e.sha256.is_none() && e.target.as_deref().is_some_and(|t| !t.contains('\0')),
            };
            if !hash_ok {
                return Err(format!("manifest's entry for {} does not fit its kind", e.path.escape_debug()));
            }
        }
        Ok(())
    }

    /// The entry of `path`.
    pub fn entry(&self, path: &str) -> Option<&FileEntry> {
        self.entries.iter().find(|e| e.path == path)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn only_plain_absolute_paths_are_safe() {
        for good in ["/etc/kubernetes/pki/ca.key", "/a", "/etc/x..y", "/etc/.hidden"] {
            assert!(is_safe_path(good), "{good}");
        }
        for bad in ["", "/", "etc/x", "/etc/../root", "/etc/./x", "/etc//x", "/etc/x/", "/etc/\nx", "/etc/\0"] {
            assert!(!is_safe_path(bad), "{bad:?}");
        }
    }

    fn id() -> BackupId {
        BackupId::parse("20261122T060000Z-r48211-8e9e05c52164694d").unwrap()
    }

    fn facts() -> FilesFacts {
        facts_of(&id())
    }

    /// The archive record of backup `id`: a folder and a 0600 key in it.
    pub(crate) fn facts_of(id: &BackupId) -> FilesFacts {
        FilesFacts {
            name: id.files_name(),
            size: 10,
            sha256: "a".repeat(64),
            recipients: vec![],
            preset: None,
            entries: vec![
                FileEntry {
                    path: "/etc/kubernetes/pki".into(),
                    kind: FileKind::Dir,
                    size: 0,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    mtime: 0,
                    sha256: None,
                    target: None,
                },
                FileEntry {
                    path: "/etc/kubernetes/pki/ca.key".into(),
                    kind: FileKind::File,
                    size: 3,
                    mode: 0o600,
                    uid: 0,
                    gid: 0,
                    mtime: 0,
                    sha256: Some("b".repeat(64)),
                    target: None,
                },
            ],
        }
    }

    #[test]
    fn a_planted_archive_record_is_refused() {
        assert_eq!(facts().check(&id()), Ok(()));
        let mut f = facts();
        f.name = "../../etc/passwd".into();
        assert!(f.check(&id()).unwrap_err().contains("always"));
        let mut f = facts();
        f.entries[1].path = "/etc/kubernetes/../../root/.ssh/authorized_keys".into();
        assert!(f.check(&id()).unwrap_err().contains("unsafe"));
        let mut f = facts();
        f.entries[1].sha256 = None;
        assert!(f.check(&id()).is_err(), "a file without its hash");
        let mut f = facts();
        f.entries.push(f.entries[1].clone());
        assert!(f.check(&id()).unwrap_err().contains("twice"));
        let mut f = facts();
        f.entries[0].mode = 0o100755;
        assert!(f.check(&id()).is_err());
        let mut f = facts();
        f.sha256 = "x".into();
        assert!(f.check(&id()).is_err());
    }
}
