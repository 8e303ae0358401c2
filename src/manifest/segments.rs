//! What a delta segment's files are called: its id (its base backup's id and its place in the chain)
//! and the names derived from it, and telling a segment's name in a cluster folder apart. Pure; a leaf
//! that stores and the `deltas` module both read.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{BackupId, Compression};

pub const SEGMENT_MANIFEST_SUFFIX: &str = ".segment.json";

/// A segment's id: the backup its chain starts from, and its place in the chain from 1,
/// `20261122T060000Z-r48211-8e9e05c52164694d.d00000007`. Ids of one chain sort by place.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SegmentId {
    base: BackupId,
    seq: u32,
}

impl SegmentId {
    /// `seq` counts from 1; 0 is raised to 1.
    pub fn new(base: BackupId, seq: u32) -> Self {
        SegmentId { base, seq: seq.max(1) }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "\"{}\" is not a segment id: expected one like 20261122T060000Z-r48211-8e9e05c52164694d.d00000007",
                text.escape_debug()
            )
        };
        let (base, seq) = text.rsplit_once(".d").ok_or_else(bad)?;
        if seq.len() != 8 || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let seq: u32 = seq.parse().map_err(|_| bad())?;
        if seq == 0 {
            return Err(bad());
        }
        Ok(SegmentId { base: BackupId::parse(base).map_err(|_| bad())?, seq })
    }

    pub fn base(&self) -> &BackupId {
        &self.base
    }

    pub fn seq(&self) -> u32 {
        self.seq
    }

    /// The id of the segment after this one; `None` past 99,999,999.
    pub fn next(&self) -> Option<Self> {
        (self.seq < 99_999_999).then(|| SegmentId { base: self.base.clone(), seq: self.seq + 1 })
    }

    pub fn manifest_name(&self) -> String {
        format!("{self}{SEGMENT_MANIFEST_SUFFIX}")
    }

    pub fn artifact_name(&self, compression: Compression) -> String {
        format!("{self}{}", artifact_extension(compression))
    }
}

/// What a name in a cluster folder is, if it is a delta segment's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentEntry {
    Manifest(SegmentId),
    Artifact(SegmentId),
    /// A `.part` of either, left by a write that did not finish.
    Partial,
}

/// Classifies a name found next to backups: `None` if it is not a segment's.
pub fn classify(name: &str) -> Option<SegmentEntry> {
    if let Some(stem) = name.strip_suffix(crate::manifest::PART_SUFFIX) {
        return classify(stem).filter(|e| *e != SegmentEntry::Partial).map(|_| SegmentEntry::Partial);
    }
    if let Some(stem) = name.strip_suffix(SEGMENT_MANIFEST_SUFFIX) {
        return SegmentId::parse(stem).ok().map(SegmentEntry::Manifest);
    }
    [Compression::None, Compression::Zstd { level: 0 }].into_iter().find_map(|c| {
        let stem = name.strip_suffix(artifact_extension(c))?;
        SegmentId::parse(stem).ok().map(SegmentEntry::Artifact)
    })
}

/// File extension of a segment's artifact, e.g. `.delta.zst.age`.
pub fn artifact_extension(compression: Compression) -> &'static str {
    match compression {
        Compression::None => ".delta.age",
        Compression::Zstd { .. } => ".delta.zst.age",
    }
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.d{:08}", self.base, self.seq)
    }
}

impl TryFrom<String> for SegmentId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        SegmentId::parse(&s)
    }
}

impl From<SegmentId> for String {
    fn from(id: SegmentId) -> String {
        id.to_string()
    }
}
