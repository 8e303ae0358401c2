//! What a committed delta segment is: its id (its base's id and its place in the chain), its file
//! names, and the manifest that commits it and chains it to the one before. Pure. A manifest is read
//! back from a store, so it is untrusted: parsed, then checked against the id its name gives.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::manifest::{ArtifactFacts, BackupId, ClusterName, Compression, is_sha256_hex};

pub const SEGMENT_FORMAT: u32 = 1;
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

/// The commit marker of a segment, stored as JSON next to its artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentManifest {
    pub format_version: u32,
    pub id: SegmentId,
    pub cluster: ClusterName,
    pub host: String,
    pub tool_version: String,
    /// The member whose watch the segment was written from (hex).
    pub member_id: String,
    /// The revision its base snapshot holds (from the database, not the status call): the chain
    /// starts at the revision after it.
    pub base_revision: i64,
    pub first_revision: i64,
    pub last_revision: i64,
    pub revisions: u64,
    pub events: u64,
    /// When the streamer received the first and the last revision.
    pub first_received: DateTime<Utc>,
    pub last_received: DateTime<Utc>,
    /// When the segment was closed: the watch had seen every revision up to `last_revision` by then.
    pub closed: DateTime<Utc>,
    /// The sha256 of the previous segment's body; none for the first of a chain.
    pub previous_sha256: Option<String>,
    /// Keys in the cluster at `last_revision`, counted by etcd when the segment was written (none if
    /// etcd could no longer tell: compacted meanwhile).
    pub live_keys: Option<u64>,
    /// The segment's body (see `segment`).
    pub body: BodyFacts,
    pub artifact: ArtifactFacts,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyFacts {
    pub size: u64,
    pub sha256: String,
}

impl SegmentManifest {
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Parses a segment manifest read back from a store and checks it is the one its name and folder
    /// say, and that its facts agree with each other.
    pub fn from_json(bytes: &[u8], expected: &SegmentId, cluster: &ClusterName) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Format {
            format_version: u32,
        }
        let format: Format = serde_json::from_slice(bytes).map_err(|e| format!("not a valid segment manifest: {e}"))?;
        if format.format_version > SEGMENT_FORMAT {
            return Err(format!(
                "segment format {} is newer than this etcd-backupd understands ({SEGMENT_FORMAT}): upgrade etcd-backupd",
                format.format_version
            ));
        }
        let m: SegmentManifest =
            serde_json::from_slice(bytes).map_err(|e| format!("not a valid segment manifest: {e}"))?;
        if &m.id != expected {
            return Err(format!("segment manifest says id {} but is stored as {expected}", m.id));
        }
        m.check_fields(cluster)?;
        Ok(m)
    }

    /// The facts a manifest must agree on: with its id and folder, and with each other.
    pub fn check_fields(&self, cluster: &ClusterName) -> Result<(), String> {
        let id = &self.id;
        if &self.cluster != cluster {
            return Err(format!("{id} says cluster \"{}\" but is stored in the folder of \"{cluster}\"", self.cluster));
        }
        if self.base_revision < id.base().revision() {
            return Err(format!(
                "{id} says its base holds revision {}, older than the {} its base's id says",
                self.base_revision,
                id.base().revision()
            ));
        }
        let span = self.last_revision.checked_sub(self.first_revision).and_then(|d| d.checked_add(1));
        if self.first_revision <= self.base_revision || span != i64::try_from(self.revisions).ok() || span < Some(1) {
            return Err(format!(
                "{id} says it holds {} revisions from {} to {} after base revision {}: that cannot be",
                self.revisions, self.first_revision, self.last_revision, self.base_revision
            ));
        }
        if self.events < self.revisions {
            return Err(format!("{id} says it holds fewer events than revisions"));
        }
        if !(self.first_received <= self.last_received && self.last_received <= self.closed) {
            return Err(format!("{id} says it received its revisions out of order or after it was closed"));
        }
        if (id.seq() == 1) != self.previous_sha256.is_none() {
            return Err(format!("{id}: only the first segment of a chain has no previous one"));
        }
        let hashes = [Some(&self.body.sha256), Some(&self.artifact.sha256), self.previous_sha256.as_ref()];
        if !hashes.into_iter().flatten().all(|h| is_sha256_hex(h)) {
            return Err(format!("{id}: a sha256 that is not 64 hex digits"));
        }
        let name = id.artifact_name(self.compression());
        if self.artifact.name != name {
            return Err(format!(
                "{id} names its artifact \"{}\" where it is always \"{name}\"",
                self.artifact.name.escape_debug()
            ));
        }
        if self.artifact.encryption != "age" {
            return Err(format!(
                "{id} names an encryption this version does not know: {}",
                self.artifact.encryption.escape_debug()
            ));
        }
        Ok(())
    }

    /// The body read back holds what the manifest says: the same revisions, events and times.
    pub fn matches(&self, found: &super::segment::Summary) -> Result<(), String> {
        let recorded = (
            self.first_revision,
            self.last_revision,
            self.revisions,
            self.events,
            self.first_received,
            self.last_received,
        );
        let read = (
            found.first_revision,
            found.last_revision,
            found.revisions,
            found.events,
            found.first_received,
            found.last_received,
        );
        if recorded != read {
            return Err(format!(
                "segment {} holds revisions {} to {} ({} events, received {} to {}), its manifest says {} to {} ({} events, received {} to {})",
                self.id,
                found.first_revision,
                found.last_revision,
                found.events,
                found.first_received,
                found.last_received,
                self.first_revision,
                self.last_revision,
                self.events,
                self.first_received,
                self.last_received
            ));
        }
        Ok(())
    }

    pub fn compression(&self) -> Compression {
        Compression::of(self.artifact.compression, self.artifact.compression_level)
    }

    /// The artifact's file name, derived from the id and the compression, never from a field.
    pub fn artifact_name(&self) -> String {
        self.id.artifact_name(self.compression())
    }
}

#[cfg(test)]
pub(crate) mod tests;
