//! What a backup is: its id, its file names, and the manifest that commits it. Pure.

use std::fmt;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};

pub mod files;
mod names;
pub mod segments;

pub use files::{FileEntry, FileKind, FilesFacts};
pub use names::{Entry, classify};

/// Version of the manifest format written by this build for a backup without a files archive.
pub const FORMAT_VERSION: u32 = 1;
/// The format of a backup with a files archive (`files`): an older reader refuses it rather than
/// missing the archive.
pub const FILES_FORMAT_VERSION: u32 = 2;
/// The newest format this build reads.
pub const NEWEST_FORMAT: u32 = FILES_FORMAT_VERSION;
pub const MANIFEST_SUFFIX: &str = ".manifest.json";
/// Marks a backup that retention must never remove.
pub const PIN_SUFFIX: &str = ".pinned";
/// Suffix of a file still being written; never a backup.
pub use crate::files::PART_SUFFIX;

/// Names one cluster's backups: the folder under the local dir and under the S3 prefix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClusterName(String);

impl ClusterName {
    pub fn parse(name: &str) -> Result<Self, String> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if valid {
            Ok(ClusterName(name.to_string()))
        } else {
            Err(format!(
                "\"{name}\" is not a cluster name: 1 to 63 letters, digits, '-', '_' or '.', starting with a letter or digit (it becomes a folder name)"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ClusterName {
    fn default() -> Self {
        ClusterName("default".into())
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ClusterName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        ClusterName::parse(&s)
    }
}

impl From<ClusterName> for String {
    fn from(c: ClusterName) -> String {
        c.0
    }
}

/// The compression a manifest names: `"zstd"` or `"none"`; any other name refuses the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum CompressionName {
    None,
    Zstd,
}

impl TryFrom<String> for CompressionName {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        match name.as_str() {
            "zstd" => Ok(CompressionName::Zstd),
            "none" => Ok(CompressionName::None),
            other => {
                Err(format!("manifest names a compression this version does not know: \"{}\"", other.escape_debug()))
            }
        }
    }
}

impl From<CompressionName> for String {
    fn from(name: CompressionName) -> String {
        Compression::of(name, None).name().to_string()
    }
}

/// The label of a backup a member takes on its own because its cluster has no quorum (cluster mode).
pub const EMERGENCY_LABEL: &str = "emergency-no-quorum";

/// How the snapshot is compressed before encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd { level: i32 },
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd { .. } => "zstd",
        }
    }

    /// The name a manifest records.
    pub fn kind(self) -> CompressionName {
        match self {
            Compression::None => CompressionName::None,
            Compression::Zstd { .. } => CompressionName::Zstd,
        }
    }

    /// The level a manifest records: zstd's, none without compression.
    pub fn level(self) -> Option<i32> {
        match self {
            Compression::Zstd { level } => Some(level),
            Compression::None => None,
        }
    }

    /// The compression a manifest names, with its level (which only the encoder needed).
    pub fn of(name: CompressionName, level: Option<i32>) -> Self {
        match name {
            CompressionName::Zstd => Compression::Zstd { level: level.unwrap_or(0) },
            CompressionName::None => Compression::None,
        }
    }

    /// File extension of the artifact, e.g. `.db.zst.age`.
    pub fn artifact_extension(self) -> &'static str {
        match self {
            Compression::None => ".db.age",
            Compression::Zstd { .. } => ".db.zst.age",
        }
    }
}

/// A label an operator attaches to a backup, such as `pre-upgrade-1.31`.
pub fn check_label(label: &str) -> Result<(), String> {
    let ok = !label.is_empty()
        && label.len() <= 64
        && label.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok { Ok(()) } else { Err(format!("\"{label}\" is not a label: 1 to 64 letters, digits, '-', '_' or '.'")) }
}

/// A backup's id: its UTC start time, the etcd revision and the member it was taken from,
/// `20261122T060000Z-r48211-8e9e05c52164694d`. Ids sort by time as plain strings; the member keeps two
/// hosts of one cluster that back up at the same second from ever taking the same name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BackupId {
    created: DateTime<Utc>,
    revision: i64,
    member: String,
}

const ID_TIME_FORMAT: &str = "%Y%m%dT%H%M%SZ";

impl BackupId {
    /// `member` is etcd's member id in hex, as `etcdctl member list` prints it.
    pub fn new(created: DateTime<Utc>, revision: i64, member: &str) -> Self {
        // Ids have whole seconds; keep the struct equal to what parses back.
        let created = DateTime::from_timestamp(created.timestamp(), 0).unwrap_or(created);
        BackupId { created, revision, member: member.to_ascii_lowercase() }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let bad =
            || format!("\"{text}\" is not a backup id: expected one like 20261122T060000Z-r48211-8e9e05c52164694d");
        let mut parts = text.split('-');
        let (Some(time), Some(rev), Some(member), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let rev = rev.strip_prefix('r').ok_or_else(bad)?;
        let canonical_rev =
            !rev.is_empty() && rev.chars().all(|c| c.is_ascii_digit()) && (rev == "0" || !rev.starts_with('0'));
        let hex_member = (1..=16).contains(&member.len())
            && member.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
        if time.len() != 16 || !canonical_rev || !hex_member {
            return Err(bad());
        }
        let naive = NaiveDateTime::parse_from_str(time, ID_TIME_FORMAT).map_err(|_| bad())?;
        let revision = rev.parse().map_err(|_| bad())?;
        Ok(BackupId { created: naive.and_utc(), revision, member: member.to_string() })
    }

    pub fn created(&self) -> DateTime<Utc> {
        self.created
    }

    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub fn member(&self) -> &str {
        &self.member
    }

    pub fn manifest_name(&self) -> String {
        format!("{self}{MANIFEST_SUFFIX}")
    }

    pub fn pin_name(&self) -> String {
        format!("{self}{PIN_SUFFIX}")
    }

    pub fn artifact_name(&self, compression: Compression) -> String {
        format!("{self}{}", compression.artifact_extension())
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-r{}-{}", self.created.format(ID_TIME_FORMAT), self.revision, self.member)
    }
}

impl TryFrom<String> for BackupId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        BackupId::parse(&s)
    }
}

impl From<BackupId> for String {
    fn from(id: BackupId) -> String {
        id.to_string()
    }
}

/// The commit marker of a backup, stored as JSON next to the artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub id: BackupId,
    pub created: DateTime<Utc>,
    pub duration_ms: u64,
    pub cluster: ClusterName,
    pub label: Option<String>,
    pub host: String,
    pub tool_version: String,
    pub etcd: EtcdFacts,
    pub snapshot: SnapshotFacts,
    pub artifact: ArtifactFacts,
    /// The control-plane files archived beside the snapshot (`[files]`), committed with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesFacts>,
}

/// What etcd reported about the member when the snapshot started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdFacts {
    pub endpoint: String,
    /// Hex, as `etcdctl endpoint status` prints it.
    pub cluster_id: String,
    pub member_id: String,
    pub member_name: String,
    pub version: String,
    pub revision: i64,
    pub raft_term: u64,
    pub raft_index: u64,
    pub db_size: u64,
    pub leader: String,
    pub alarms: Vec<String>,
}

/// The plain snapshot as etcd sent it (trailer included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotFacts {
    pub size: u64,
    /// The sha256 etcd appended to the snapshot, checked while streaming.
    pub sha256: String,
    /// The database's status as `etcdutl snapshot status` prints it, computed before the commit.
    #[serde(default)]
    pub status: Option<crate::snapshot::bbolt::Status>,
}

/// The encrypted file that is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactFacts {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub compression: CompressionName,
    pub compression_level: Option<i32>,
    pub encryption: String,
    pub recipients: Vec<String>,
}

impl Manifest {
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Parses a manifest read back from a store and checks it is the one its name and folder say: the
    /// id, the cluster, and every field that an artifact name, a revision or a check is derived from.
    /// A manifest is untrusted input (anyone who can write to the folder or the prefix can plant one).
    pub fn from_json(bytes: &[u8], expected: &BackupId, cluster: &ClusterName) -> Result<Self, String> {
        // The format first: a newer one may hold fields and values this version cannot parse.
        #[derive(Deserialize)]
        struct Format {
            format_version: u32,
        }
        let format: Format = serde_json::from_slice(bytes).map_err(|e| format!("not a valid manifest: {e}"))?;
        if format.format_version > NEWEST_FORMAT {
            return Err(format!(
                "manifest format {} is newer than this etcd-backupd understands ({NEWEST_FORMAT}): upgrade etcd-backupd",
                format.format_version
            ));
        }
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| format!("not a valid manifest: {e}"))?;
        if &m.id != expected {
            return Err(format!("manifest says id {} but is stored as {expected}", m.id));
        }
        m.check_fields(cluster)?;
        Ok(m)
    }

    /// The fields a manifest must agree on with its id and folder.
    fn check_fields(&self, cluster: &ClusterName) -> Result<(), String> {
        let id = &self.id;
        if &self.cluster != cluster {
            return Err(format!(
                "manifest says cluster \"{}\" but is stored in the folder of \"{cluster}\"",
                self.cluster
            ));
        }
        if self.created.timestamp() != id.created().timestamp() {
            return Err(format!("manifest says it was created at {} but its id says {}", self.created, id.created()));
        }
        if self.etcd.revision != id.revision() {
            return Err(format!("manifest says revision {} but its id says {}", self.etcd.revision, id.revision()));
        }
        if self.etcd.member_id.to_ascii_lowercase() != id.member() {
            return Err(format!(
                "manifest says member {} but its id says {}",
                self.etcd.member_id.escape_debug(),
                id.member()
            ));
        }
        let compression = self.compression();
        let name = id.artifact_name(compression);
        if self.artifact.name != name {
            return Err(format!(
                "manifest names its artifact \"{}\" where a {} backup {id} is always \"{name}\"",
                self.artifact.name.escape_debug(),
                compression.name()
            ));
        }
        for (what, hash) in [("artifact", &self.artifact.sha256), ("snapshot", &self.snapshot.sha256)] {
            if !is_sha256_hex(hash) {
                return Err(format!("manifest's {what} sha256 is not 64 hex digits"));
            }
        }
        if let Some(files) = &self.files {
            if self.format_version < FILES_FORMAT_VERSION {
                return Err(format!("manifest format {} cannot hold a files archive", self.format_version));
            }
            files.check(id)?;
        }
        if let Some(label) = &self.label {
            check_label(label).map_err(|e| format!("manifest's label: {}", e.escape_debug()))?;
        }
        if self.artifact.encryption != "age" {
            return Err(format!(
                "manifest names an encryption this version does not know: {}",
                self.artifact.encryption.escape_debug()
            ));
        }
        Ok(())
    }

    /// Taken without quorum (cluster mode): kept until a normal backup is newer.
    pub fn is_emergency(&self) -> bool {
        self.label.as_deref() == Some(EMERGENCY_LABEL)
    }

    /// How the artifact is compressed.
    pub fn compression(&self) -> Compression {
        Compression::of(self.artifact.compression, self.artifact.compression_level)
    }

    /// The artifact's file name, derived from the id and the compression: never the `artifact.name` field.
    pub fn artifact_name(&self) -> String {
        self.id.artifact_name(self.compression())
    }
}

pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
pub(crate) mod tests;
