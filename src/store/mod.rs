//! Where backups are kept: a local directory and, optionally, an S3 bucket. Each destination writes an
//! artifact through an `Upload` that becomes visible only at `commit`, which writes the manifest last;
//! removal goes the other way round (artifact, pin, manifest last).

pub mod catalog;
pub mod local;
pub mod reader;
pub mod s3;

use std::collections::{HashMap, HashSet};

use anyhow::Result;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::manifest::segments::{self as segment, SegmentEntry, SegmentId};
use crate::manifest::{BackupId, ClusterName, Compression, Entry, Manifest, classify};
use crate::retention::{Leftover, LeftoverKind};

/// A committed backup as one destination holds it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub manifest: Manifest,
    pub pinned: bool,
}

/// What a destination holds for one cluster.
#[derive(Debug, Default)]
pub struct Listing {
    /// Committed backups: manifest readable and artifact present with the recorded size. Newest first.
    pub backups: Vec<Stored>,
    /// What crashed runs and unfinished removals left behind.
    pub leftovers: Vec<Leftover>,
    /// Names in the cluster folder that are not ours, or whose manifest does not check out: never touched.
    pub ignored: Vec<Ignored>,
    /// Delta segments whose manifest and artifact are both present, unread (`deltas::stored` reads them).
    pub segments: Vec<SegmentPair>,
}

/// A delta segment's manifest with the artifacts of its id found beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentPair {
    pub id: SegmentId,
    pub manifest_name: String,
    pub artifacts: Vec<(String, u64)>,
}

/// A name in the cluster folder that is left alone, and why.
pub type Ignored = (String, String);

/// One file or object found in a destination's cluster folder.
pub struct Found {
    pub name: String,
    pub size: u64,
    pub modified: DateTime<Utc>,
}

/// A manifest worth reading: an artifact of its id is present.
pub struct Pair {
    pub id: BackupId,
    pub manifest_name: String,
    /// The artifacts of this id found beside it, with their sizes (the snapshot's, and its files
    /// archive if it has one).
    pub artifacts: Vec<(String, u64)>,
    pub pinned: bool,
}

/// The names of a cluster folder, sorted out. Pure.
#[derive(Default)]
pub struct Paired {
    /// Newest first.
    pub pairs: Vec<Pair>,
    pub leftovers: Vec<Leftover>,
    pub ignored: Vec<Ignored>,
    /// In id order.
    pub segments: Vec<SegmentPair>,
}

/// Sorts the names found in a cluster folder into backups, leftovers and strangers. Pure.
pub fn pair_up(found: &[Found]) -> Paired {
    let mut artifacts: HashMap<BackupId, Vec<(String, u64)>> = HashMap::new();
    let modified: HashMap<&str, DateTime<Utc>> = found.iter().map(|f| (f.name.as_str(), f.modified)).collect();
    // A leftover is dated by the store's (or file system's) clock; `retention::stale` weighs its id's too.
    let time_of = |name: &str| modified.get(name).copied().unwrap_or_else(Utc::now);
    let mut manifests = Vec::new();
    let mut pins = Vec::new();
    let mut out = Paired::default();
    let mut segment_manifests = Vec::new();
    let mut segment_artifacts: HashMap<SegmentId, Vec<(String, u64)>> = HashMap::new();
    for f in found {
        if let Some(entry) = segment::classify(&f.name) {
            match entry {
                SegmentEntry::Manifest(id) => segment_manifests.push((id, f.name.clone())),
                SegmentEntry::Artifact(id) => segment_artifacts.entry(id).or_default().push((f.name.clone(), f.size)),
                SegmentEntry::Partial => out.leftovers.push(Leftover {
                    name: f.name.clone(),
                    kind: LeftoverKind::Partial,
                    time: f.modified,
                    upload_id: None,
                }),
            }
            continue;
        }
        match classify(&f.name) {
            // A backup's files archive pairs with its manifest as its artifact does (`accept` tells them
            // apart by name).
            Entry::Artifact(id) | Entry::Files(id) => {
                artifacts.entry(id).or_default().push((f.name.clone(), f.size));
            }
            Entry::Manifest(id) => manifests.push((id, f.name.clone())),
            Entry::Pin(id) => pins.push((id, f.name.clone())),
            Entry::Partial(name) => {
                out.leftovers.push(Leftover { name, kind: LeftoverKind::Partial, time: f.modified, upload_id: None })
            }
            Entry::Foreign => out.ignored.push((f.name.clone(), "not an etcd-backupd name".to_string())),
        }
    }
    let pinned: HashSet<&BackupId> = pins.iter().map(|(id, _)| id).collect();
    let mut committed = HashSet::new();
    for (id, manifest_name) in manifests {
        match artifacts.get(&id) {
            Some(found) => {
                committed.insert(id.clone());
                out.pairs.push(Pair { pinned: pinned.contains(&id), artifacts: found.clone(), manifest_name, id })
            }
            None => out.leftovers.push(half_removed(time_of(&manifest_name), manifest_name)),
        }
    }
    for (id, name) in &pins {
        if !artifacts.contains_key(id) {
            out.leftovers.push(half_removed(time_of(name), name.clone()));
        }
    }
    for (id, found) in artifacts {
        if !committed.contains(&id) {
            for (name, _) in found {
                out.leftovers.push(Leftover {
                    time: time_of(&name),
                    name,
                    kind: LeftoverKind::Uncommitted,
                    upload_id: None,
                });
            }
        }
    }
    for (id, manifest_name) in segment_manifests {
        match segment_artifacts.remove(&id) {
            Some(artifacts) => out.segments.push(SegmentPair { id, manifest_name, artifacts }),
            None => out.leftovers.push(half_removed(time_of(&manifest_name), manifest_name)),
        }
    }
    for name in segment_artifacts.into_values().flatten().map(|(name, _)| name) {
        out.leftovers.push(Leftover { time: time_of(&name), name, kind: LeftoverKind::Uncommitted, upload_id: None });
    }
    out.segments.sort_by(|a, b| a.id.cmp(&b.id));
    out.pairs.sort_by(|a, b| b.id.cmp(&a.id));
    out.leftovers.sort_by(|a, b| a.name.cmp(&b.name));
    out.ignored.sort();
    out
}

fn half_removed(time: DateTime<Utc>, name: String) -> Leftover {
    Leftover { name, kind: LeftoverKind::HalfRemoved, time, upload_id: None }
}

/// Checks a manifest read from a destination against its name, its folder's cluster and the artifact
/// found beside it: the artifact the manifest's id and compression name must be there, at the size
/// the manifest records.
pub fn accept(bytes: &[u8], pair: &Pair, cluster: &ClusterName) -> Result<Manifest, String> {
    let m = Manifest::from_json(bytes, &pair.id, cluster)?;
    let name = m.artifact_name();
    match pair.artifacts.iter().find(|(n, _)| *n == name) {
        None => return Err(format!("its artifact '{name}' is missing")),
        Some((_, size)) if *size != m.artifact.size => {
            return Err(format!("artifact is {size} bytes but the manifest says {}", m.artifact.size));
        }
        Some(_) => {}
    }
    if let Some(files) = &m.files {
        let name = m.id.files_name();
        match pair.artifacts.iter().find(|(n, _)| *n == name) {
            None => return Err(format!("its files archive '{name}' is missing")),
            Some((_, size)) if *size != files.size => {
                return Err(format!("files archive is {size} bytes but the manifest says {}", files.size));
            }
            Some(_) => {}
        }
    }
    Ok(m)
}

/// Every configured destination: the local folder always, S3 when configured. One that cannot be set up
/// comes back as its name and why, and each caller decides what that means.
pub async fn open_all(settings: &crate::config::Settings) -> (Vec<Destination>, Vec<(Kind, anyhow::Error)>) {
    let mut out = vec![Destination::Local(local::LocalStore::new(&settings.local.dir, &settings.cluster))];
    let mut errors = Vec::new();
    if let Some(s3) = &settings.s3 {
        match s3::S3Store::new(s3, &settings.cluster).await {
            Ok(store) => out.push(Destination::S3(Box::new(store))),
            Err(e) => errors.push((Kind::S3, e)),
        }
    }
    (out, errors)
}

/// Which kind of destination: the local folder or S3. Said as `local` and `s3` in logs, JSON, the state
/// file and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Local,
    S3,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Local => "local",
            Kind::S3 => "s3",
        }
    }

    /// The kind in prose: "the local dir", "S3".
    pub fn title(self) -> &'static str {
        match self {
            Kind::Local => "the local dir",
            Kind::S3 => "S3",
        }
    }

    /// Kinds as words, `local, s3`.
    pub fn join(kinds: &[Kind], separator: &str) -> String {
        kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(separator)
    }

    /// The retention policy of this kind of destination.
    pub fn policy(self, settings: &crate::config::Settings) -> &crate::retention::Policy {
        match self {
            Kind::Local => &settings.local.retention,
            // Without [s3] there is no S3 destination; the local policy is as good an answer as any.
            Kind::S3 => settings.s3.as_ref().map_or(&settings.local.retention, |s3| &s3.retention),
        }
    }

    /// The kinds a config backs up to: the local folder always, S3 when configured.
    pub fn configured(settings: &crate::config::Settings) -> Vec<Kind> {
        if settings.s3.is_some() { vec![Kind::Local, Kind::S3] } else { vec![Kind::Local] }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What every destination does. A new destination implements this (and `Writer`) in its own file and is
/// registered in `Kind`, `Destination` and `open_all`.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    fn kind(&self) -> Kind;

    /// Where, for people: a folder or `s3://bucket/prefix/cluster/ at ENDPOINT`.
    fn place(&self) -> String;

    /// Whether anything of backup `id` is already here (a store that cannot be asked says no).
    async fn holds(&self, id: &BackupId, compression: Compression) -> bool;

    /// Checks, before a backup of a `db_size` database begins, that it can be taken here (room, access).
    async fn ready(&self, db_size: u64) -> Result<()>;

    /// Starts writing the artifact `artifact`; nothing is visible until the upload's `commit` writes
    /// `manifest`. Refused (`Cause::Exists`) where a backup of that name is committed.
    async fn begin(&self, artifact: &str, manifest: &str) -> Result<Upload>;

    /// Committed backups (newest first), leftovers and strangers.
    async fn list(&self) -> Result<Listing>;

    /// The manifest `name` in the cluster folder (a backup's or a delta segment's), at most 1 MiB:
    /// unchecked bytes.
    async fn read_manifest(&self, name: &str) -> Result<Vec<u8>>;

    /// Removes committed backups: every artifact first, then pins and manifests, so that an interrupted
    /// removal never leaves a manifest that `list` shows as good. Returns the backups it could not remove.
    async fn remove(&self, backups: &[&Stored]) -> Vec<(BackupId, String)>;

    /// Removes delta segments: every artifact first, then the manifests of those whose artifact went.
    /// Returns the segments it could not remove.
    async fn remove_segments(&self, segments: &[&SegmentPair]) -> Vec<(SegmentId, String)>;

    /// Removes leftovers (or aborts unfinished uploads). Returns those it could not remove.
    async fn clean(&self, leftovers: &[Leftover]) -> Vec<(String, String)>;

    /// Pins (or unpins) a backup: a pinned backup is never removed by retention.
    async fn set_pin(&self, id: &BackupId, pinned: bool) -> Result<()>;

    /// The artifact `name` (`size` bytes) as a file on this host: where it lies, or downloaded to
    /// `download` (0600, hashed as it arrives, a bar on a terminal). Unchecked: the caller compares it
    /// with the manifest, and removes `download` if this fails or is dropped.
    async fn artifact_file(&self, name: &str, size: u64, download: &std::path::Path) -> Result<ArtifactFile>;

    /// The artifact `name` (`size` bytes, as its manifest says) as a stream of its bytes: the file where
    /// it lies, or a download read as it arrives. Unchecked: the reader of it compares it with the
    /// manifest.
    async fn artifact_reader(&self, name: &str, size: u64) -> Result<reader::ArtifactReader>;
}

/// An artifact made available as a file.
pub enum ArtifactFile {
    /// The store's own file: read it, never remove it.
    InPlace(std::path::PathBuf),
    /// Downloaded to the path asked for, with this size and sha256 (hex).
    Downloaded { size: u64, sha256: String },
}

/// A write in progress to one destination. Nothing is visible until `commit`.
#[async_trait::async_trait]
pub trait Writer: Send {
    fn kind(&self) -> Kind;

    async fn write(&mut self, chunk: Bytes) -> Result<()>;

    /// Adds the backup's files archive (complete in `file`, read from its start) as `name` beside the
    /// artifact: part of the commit, removed by `abort`.
    async fn attach(&mut self, name: &str, file: std::fs::File) -> Result<()>;

    /// Makes the artifact durable and visible, then writes the manifest (its JSON, a backup's or a delta
    /// segment's): the commit. A cancelled commit that is still waiting for its data aborts the upload
    /// instead.
    async fn commit(self: Box<Self>, manifest: &[u8], cancel: &tokio_util::sync::CancellationToken) -> Result<()>;

    /// Removes every trace of the unfinished write.
    async fn abort(self: Box<Self>);
}

pub type Upload = Box<dyn Writer>;

/// One place backups are kept. Everything common is the `Store` it derefs to; the kinds are told apart
/// only where a role differs (the local folder is what catch-up uploads from).
pub enum Destination {
    Local(local::LocalStore),
    S3(Box<s3::S3Store>),
}

impl std::ops::Deref for Destination {
    type Target = dyn Store;

    fn deref(&self) -> &(dyn Store + 'static) {
        match self {
            Destination::Local(l) => l,
            Destination::S3(s) => s.as_ref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn found(name: &str) -> Found {
        Found { name: name.into(), size: 10, modified: Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap() }
    }

    #[test]
    fn pairs_leftovers_and_strangers() {
        let names = [
            "20261101T000000Z-r1-a.db.zst.age",
            "20261101T000000Z-r1-a.manifest.json",
            "20261102T000000Z-r2-a.db.zst.age",
            "20261102T000000Z-r2-a.manifest.json",
            "20261102T000000Z-r2-a.pinned",
            "20261103T000000Z-r3-a.db.zst.age",
            "20261104T000000Z-r4-a.manifest.json",
            "20261105T000000Z-r5-a.pinned",
            "20261106T000000Z-r6-a.db.zst.age.part",
            "notes.txt",
            "20261107T000000Z-r7-a.tar",
        ];
        let p = pair_up(&names.iter().map(|n| found(n)).collect::<Vec<_>>());
        let pairs: Vec<(String, bool)> = p.pairs.iter().map(|x| (x.id.to_string(), x.pinned)).collect();
        assert_eq!(pairs, vec![("20261102T000000Z-r2-a".into(), true), ("20261101T000000Z-r1-a".into(), false)]);
        let left: Vec<(&str, LeftoverKind)> = p.leftovers.iter().map(|l| (l.name.as_str(), l.kind)).collect();
        assert_eq!(
            left,
            vec![
                ("20261103T000000Z-r3-a.db.zst.age", LeftoverKind::Uncommitted),
                ("20261104T000000Z-r4-a.manifest.json", LeftoverKind::HalfRemoved),
                ("20261105T000000Z-r5-a.pinned", LeftoverKind::HalfRemoved),
                ("20261106T000000Z-r6-a.db.zst.age.part", LeftoverKind::Partial),
            ]
        );
        assert_eq!(
            p.leftovers[0].time,
            Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap(),
            "the store's time (retention::stale weighs the id's too)"
        );
        let ignored: Vec<&str> = p.ignored.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(ignored, vec!["20261107T000000Z-r7-a.tar", "notes.txt"]);
    }

    #[test]
    fn segments_pair_apart_from_backups_and_their_leftovers_are_leftovers() {
        let base = "20261101T000000Z-r1-a";
        let names = [
            format!("{base}.db.zst.age"),
            format!("{base}.manifest.json"),
            format!("{base}.d00000002.segment.json"),
            format!("{base}.d00000002.delta.zst.age"),
            format!("{base}.d00000001.delta.zst.age"),
            format!("{base}.d00000001.segment.json"),
            format!("{base}.d00000003.delta.zst.age"),
            format!("{base}.d00000004.segment.json"),
            format!("{base}.d00000005.delta.zst.age.part"),
        ];
        let p = pair_up(&names.iter().map(|n| found(n)).collect::<Vec<_>>());
        assert_eq!(p.pairs.len(), 1);
        assert!(p.ignored.is_empty(), "{:?}", p.ignored);
        let segments: Vec<(u32, &str, usize)> =
            p.segments.iter().map(|s| (s.id.seq(), s.manifest_name.as_str(), s.artifacts.len())).collect();
        assert_eq!(
            segments,
            vec![
                (1, "20261101T000000Z-r1-a.d00000001.segment.json", 1),
                (2, "20261101T000000Z-r1-a.d00000002.segment.json", 1)
            ]
        );
        let left: Vec<(&str, LeftoverKind)> = p.leftovers.iter().map(|l| (l.name.as_str(), l.kind)).collect();
        assert_eq!(
            left,
            vec![
                ("20261101T000000Z-r1-a.d00000003.delta.zst.age", LeftoverKind::Uncommitted),
                ("20261101T000000Z-r1-a.d00000004.segment.json", LeftoverKind::HalfRemoved),
                ("20261101T000000Z-r1-a.d00000005.delta.zst.age.part", LeftoverKind::Partial),
            ]
        );
    }
}
