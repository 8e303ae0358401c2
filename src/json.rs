//! The JSON that `backup --json`, `verify --json` and `drill --json` print: stable shapes for scripts
//! (fields are added, never renamed or removed; absent values are `null`). Pure: built from results.

use serde::Serialize;

/// `backup --json`. `outcome`: `committed` (everywhere), `partial` (committed somewhere, not
/// everywhere, or a pin or prune failed), `unchanged` (skip_unchanged), `failed`, `skipped` (another
/// run held the lock).
#[derive(Debug, Serialize)]
pub struct Backup {
    pub ok: bool,
    pub outcome: &'static str,
    pub id: Option<String>,
    pub revision: Option<i64>,
    pub label: Option<String>,
    pub snapshot_bytes: Option<u64>,
    pub artifact_bytes: Option<u64>,
    pub duration_ms: Option<u64>,
    pub committed: Vec<crate::store::Kind>,
    pub failed: Vec<DestinationError>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct DestinationError {
    pub destination: crate::store::Kind,
    pub error: String,
}

impl Backup {
    /// A run that committed nothing (or did not run).
    pub fn not_committed(outcome: &'static str, error: String) -> Backup {
        Backup {
            ok: false,
            outcome,
            id: None,
            revision: None,
            label: None,
            snapshot_bytes: None,
            artifact_bytes: None,
            duration_ms: None,
            committed: Vec::new(),
            failed: Vec::new(),
            error: Some(error),
        }
    }

    /// Nothing to do: etcd's revision is the last backup's.
    pub fn unchanged(revision: i64) -> Backup {
        Backup {
            ok: true,
            outcome: "unchanged",
            revision: Some(revision),
            error: None,
            ..Self::not_committed("", String::new())
        }
    }

    pub fn committed(report: &crate::backup::BackupReport) -> Backup {
        let m = &report.manifest;
        let ok = report.failed.is_empty();
        Backup {
            ok,
            outcome: if ok { "committed" } else { "partial" },
            id: Some(m.id.to_string()),
            revision: Some(m.etcd.revision),
            label: m.label.clone(),
            snapshot_bytes: Some(m.snapshot.size),
            artifact_bytes: Some(m.artifact.size),
            duration_ms: Some(m.duration_ms),
            committed: report.committed.clone(),
            failed: report.failed.iter().map(|(d, e)| DestinationError { destination: *d, error: e.clone() }).collect(),
            error: None,
        }
    }
}

/// `verify --json`: one entry per copy. `checked`: `sha256` (size and sha256 against the manifest) or
/// `decrypted` (with --identity: also decrypted, decompressed, trailer and database structure).
#[derive(Debug, Serialize)]
pub struct Verify {
    pub ok: bool,
    pub id: String,
    pub copies: Vec<Copy>,
    /// Destinations that could not be listed.
    pub errors: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Copy {
    pub destination: crate::store::Kind,
    pub ok: bool,
    pub checked: &'static str,
    pub revision: Option<i64>,
    pub keys: Option<u64>,
    /// The database hash in hex, as `etcdutl snapshot status` prints it.
    pub hash: Option<String>,
    pub error: Option<String>,
}

/// `drill --json`.
#[derive(Debug, Serialize)]
pub struct Drill {
    pub ok: bool,
    pub id: Option<String>,
    pub from: Option<crate::store::Kind>,
    pub revision: Option<i64>,
    pub keys: Option<u64>,
    /// The control-plane files restored from its files archive, if it has one.
    pub files: Option<usize>,
    /// Its chain of delta segments replayed to its end: segments, revision and keys there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain: Option<DrilledChain>,
    pub duration_ms: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct DrilledChain {
    pub segments: usize,
    pub revision: i64,
    pub keys: u64,
    /// Whether the keys were compared with the count the stream recorded (it may have none).
    pub keys_checked: bool,
}

impl Drill {
    pub fn of(id: Option<&crate::manifest::BackupId>, result: &anyhow::Result<crate::drill::DrillReport>) -> Drill {
        match result {
            Ok(r) => Drill {
                ok: true,
                id: Some(r.id.to_string()),
                from: Some(r.from),
                revision: Some(r.observed.revision),
                keys: Some(r.observed.keys),
                files: r.files,
                chain: r.chain.map(|c| DrilledChain {
                    segments: c.segments,
                    revision: c.observed.revision,
                    keys: c.observed.keys,
                    keys_checked: c.keys_checked,
                }),
                duration_ms: Some(r.duration.as_millis() as u64),
                error: None,
            },
            Err(e) => Drill {
                ok: false,
                id: id.map(ToString::to_string),
                from: None,
                revision: None,
                keys: None,
                files: None,
                chain: None,
                duration_ms: None,
                error: Some(format!("{e:#}")),
            },
        }
    }
}
