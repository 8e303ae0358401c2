//! Logging: to the journal when systemd runs us, else readable lines on stderr.

use tracing_subscriber::EnvFilter;

/// Whether the logs go to the journal (set once by `init`).
static TO_JOURNAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
use tracing_subscriber::prelude::*;

pub const SYSLOG_IDENTIFIER: &str = "etcd-backupd";

/// Journal MESSAGE_IDs of the entries that make up the backup history (see the message catalog).
pub const MESSAGE_BACKUP_COMMITTED: &str = "f2ffcd6fad5446e58d4a2e66c4ce4361";
pub const MESSAGE_BACKUP_FAILED: &str = "0acec5109baa46fdaa2302d289c85bdf";
pub const MESSAGE_PRUNED: &str = "c7492101e0cf4b4497ca671a0778e215";
pub const MESSAGE_DRILL_PASSED: &str = "a1d343ee59864745a2c51a9158c8c043";
pub const MESSAGE_DRILL_FAILED: &str = "bebb1a90537e431ba951fff46f84cf9f";
pub const MESSAGE_DELTA_COMMITTED: &str = "5d1e0b7a3c4f4e2a9b8d6c1f0e2a7b94";
pub const MESSAGE_CHAIN_ENDED: &str = "9e4c2b1d7a6f4c3e8b5a0d9f1c2e3a47";

/// The one journal entry that ends a successful backup.
pub fn backup_committed(report: &crate::backup::BackupReport) {
    let m = &report.manifest;
    tracing::info!(
        message_id = MESSAGE_BACKUP_COMMITTED,
        backup_id = %m.id,
        revision = m.etcd.revision,
        db_size = m.etcd.db_size,
        artifact_size = m.artifact.size,
        duration_ms = m.duration_ms,
        destinations = %crate::store::Kind::join(&report.committed, ","),
        label = m.label.as_deref().unwrap_or(""),
        // In hex, as `etcdutl snapshot status` prints it.
        snapshot_hash = %m.snapshot.status.map(|s| format!("{:x}", s.hash)).unwrap_or_default(),
        total_keys = m.snapshot.status.map(|s| s.total_key).unwrap_or_default(),
        live_keys = m.snapshot.status.map(|s| s.live_keys).unwrap_or_default(),
        snapshot_revision = m.snapshot.status.map(|s| s.revision).unwrap_or_default(),
        "backup {} committed in {} (revision {}, {} keys, {})",
        m.id,
        crate::store::Kind::join(&report.committed, ", "),
        m.snapshot.status.map_or(m.etcd.revision, |s| s.revision),
        m.snapshot.status.map_or(0, |s| s.live_keys),
        crate::config::units::format_size(m.artifact.size)
    );
}

/// The one journal entry that ends a failed backup.
pub fn backup_failed(error: &str, destinations: &str) {
    // The journal gets the error as a field of its own too (for queries); stderr shows it once.
    if TO_JOURNAL.get().copied().unwrap_or(false) {
        tracing::error!(message_id = MESSAGE_BACKUP_FAILED, error = %error, destinations = %destinations, "backup failed: {error}");
    } else {
        tracing::error!(message_id = MESSAGE_BACKUP_FAILED, destinations = %destinations, "backup failed: {error}");
    }
}

/// One entry per destination pruned.
pub fn pruned(report: &crate::prune::PruneReport) {
    let removed: Vec<String> = report.decisions.iter().filter(|d| !d.keep).map(|d| d.id.to_string()).collect();
    let cleaned = report.leftovers.iter().filter(|l| l.clean).count();
    if removed.is_empty() && cleaned == 0 {
        return;
    }
    tracing::info!(
        message_id = MESSAGE_PRUNED,
        destination = %report.destination,
        removed = removed.len(),
        cleaned,
        backup_ids = %removed.join(","),
        "pruned {}: removed {} backups, cleaned {cleaned} leftovers",
        report.destination,
        removed.len()
    );
}

/// A drill proved a backup restorable.
pub fn drill_passed(report: &crate::drill::DrillReport) {
    tracing::info!(
        message_id = MESSAGE_DRILL_PASSED,
        backup_id = %report.id,
        source = %report.from,
        revision = report.observed.revision,
        live_keys = report.observed.keys,
        duration_ms = report.duration.as_millis() as u64,
        "drill passed: {} restored from {} and served revision {} with {} keys, as its manifest says",
        report.id,
        report.from,
        report.observed.revision,
        report.observed.keys
    );
}

/// A drill could not prove a backup restorable.
pub fn drill_failed(id: Option<&crate::manifest::BackupId>, error: &str) {
    let on = id.map(|i| format!(" for {i}")).unwrap_or_default();
    let id = id.map(ToString::to_string);
    let id = id.as_deref();
    if TO_JOURNAL.get().copied().unwrap_or(false) {
        tracing::error!(message_id = MESSAGE_DRILL_FAILED, backup_id = id.unwrap_or(""), error = %error, "drill FAILED{on}: {error}");
    } else {
        tracing::error!(message_id = MESSAGE_DRILL_FAILED, backup_id = id.unwrap_or(""), "drill FAILED{on}: {error}");
    }
}

/// True when stderr is connected to the journal (systemd sets JOURNAL_STREAM to its device:inode).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(meta.dev()) && ino.parse::<u64>().ok() == Some(meta.ino())
}

/// Installs the global subscriber. `ETCD_BACKUPD_LOG` (or `RUST_LOG`) sets the filter; default `info`.
/// Logs go to the journal when stderr is connected to it (or `ETCD_BACKUPD_LOG_TARGET=journal`).
pub fn init() {
    let filter = EnvFilter::try_from_env("ETCD_BACKUPD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // ETCD_BACKUPD_LOG_TARGET=journal|stderr overrides the detection (auto).
    let to_journal = match std::env::var("ETCD_BACKUPD_LOG_TARGET").as_deref() {
        Ok("journal") => true,
        Ok("stderr") => false,
        _ => stderr_is_journal(),
    };
    let _ = TO_JOURNAL.set(to_journal);
    let journald = if to_journal {
        tracing_journald::layer()
            .ok()
            .map(|l| l.with_syslog_identifier(SYSLOG_IDENTIFIER.to_string()).with_field_prefix(None))
    } else {
        None
    };
    let registry = tracing_subscriber::registry().with(filter);
    match journald {
        Some(layer) => registry.with(layer).init(),
        None => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none(),
            ))
            .init(),
    }
}
