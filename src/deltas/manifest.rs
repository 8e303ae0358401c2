//! What a committed delta segment is: its id (its base's id and its place in the chain), its file
//! names, and the manifest that commits it and chains it to the one before. Pure. A manifest is read
//! back from a store, so it is untrusted: parsed, then checked against the id its name gives.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use crate::manifest::segments::{SEGMENT_MANIFEST_SUFFIX, SegmentEntry, SegmentId, artifact_extension, classify};
use crate::manifest::{ArtifactFacts, ClusterName, Compression, is_sha256_hex};

pub const SEGMENT_FORMAT: u32 = 1;
/// The most a segment's body or artifact may hold, as a manifest says: `[deltas] max_size` is at most
/// 256 MiB, and a segment closes after the revision that crossed it. A restore holds one body in memory;
/// a manifest saying more is refused before anything is read.
pub const MAX_BODY: u64 = 1 << 30;
pub use super::segment::MAX_REVISION;
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
    /// The cluster the chain follows (hex, as etcd reports it): a chain never continues into another
    /// cluster's history (one restored from an older snapshot has a new id).
    pub cluster_id: String,
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
        if self.last_revision > MAX_REVISION {
            return Err(format!("{id} says it holds revisions past {MAX_REVISION}: that cannot be"));
        }
        if self.body.size > MAX_BODY || self.artifact.size > MAX_BODY + MAX_BODY / 64 {
            return Err(format!("{id} says it holds more than a segment can ({} bytes at most)", MAX_BODY));
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
