//! One backup run, as the daemon and the one-shot `backup` command both do it: take the run lock, take
//! the backup (retrying transient failures), and tell `[notify]` how it went. Recording the outcome is
//! `history`'s job.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::Settings;
use crate::pipeline::{BackupReport, BackupRequest, write_backup};
use crate::schedule;
use crate::state::{Lock, State};

/// How one run ended.
#[derive(Debug)]
pub enum Outcome {
    Committed(Box<BackupReport>),
    /// `skip_unchanged`: etcd's revision equals the last backup's; nothing was uploaded.
    Unchanged {
        revision: i64,
    },
    Failed(anyhow::Error),
    /// Another process held the lock.
    Skipped(String),
}

/// One backup run, as the daemon and the one-shot `backup` command both do it: take the lock, take the
/// backup (retrying transient failures), then record the outcome in the state, the metrics and the journal.
/// `max_attempts` is 1 for a one-shot `backup` (the operator or the timer decides what next) and
/// `[schedule] max_attempts` for the daemon. The caller records the outcome with `record` (the daemon's
/// loop is the only writer of its state).
pub async fn run_once(
    settings: &Settings,
    request: &BackupRequest,
    state_dir: &Path,
    lock_wait: Duration,
    max_attempts: u32,
    alerts: &mut crate::alerts::Pending,
) -> (DateTime<Utc>, Outcome) {
    use crate::alerts::Kind;
    let started = Utc::now();
    // What a killed verify, restore or drill left (plaintext included) goes with the next backup too.
    crate::scratch::sweep(state_dir);
    let outcome = match Lock::take(state_dir, lock_wait).await {
        // Held by another run: skipped (that run notifies). Anything else (a lock file we may not open)
        // is a failure.
        Err(e) if e.downcast_ref::<crate::state::LockHeld>().is_some() => Outcome::Skipped(format!("{e:#}")),
        Err(e) => Outcome::Failed(e),
        Ok(_lock) => {
            crate::alerts::send(&settings.notify, event(settings, crate::alerts::Kind::Start, None), alerts);
            attempts(settings, request, state_dir, max_attempts).await
        }
    };
    let done = match &outcome {
        Outcome::Committed(report) if report.failed.is_empty() => Some(event(settings, Kind::Success, Some(&outcome))),
        Outcome::Committed(_) | Outcome::Failed(_) => Some(event(settings, Kind::Failure, Some(&outcome))),
        Outcome::Unchanged { .. } => Some(event(settings, Kind::Success, Some(&outcome))),
        Outcome::Skipped(_) => None,
    };
    if let Some(done) = done {
        crate::alerts::send(&settings.notify, done, alerts);
    }
    (started, outcome)
}

/// The notification of a run's start (no outcome yet) or end.
fn event(settings: &Settings, kind: crate::alerts::Kind, outcome: Option<&Outcome>) -> crate::alerts::Event {
    let mut e = crate::alerts::Event {
        event: kind,
        cluster: settings.cluster.to_string(),
        host: crate::host::hostname(),
        time: Utc::now(),
        backup_id: None,
        revision: None,
        snapshot_bytes: None,
        artifact_bytes: None,
        committed: Vec::new(),
        error: None,
    };
    match outcome {
        Some(Outcome::Committed(report)) => {
            let m = &report.manifest;
            e.backup_id = Some(m.id.to_string());
            e.revision = Some(m.etcd.revision);
            e.snapshot_bytes = Some(m.snapshot.size);
            e.artifact_bytes = Some(m.artifact.size);
            e.committed = report.committed.clone();
            if !report.failed.is_empty() {
                e.error = Some(failures(report));
            }
        }
        Some(Outcome::Unchanged { revision }) => e.revision = Some(*revision),
        Some(Outcome::Failed(err)) => e.error = Some(format!("{err:#}")),
        Some(Outcome::Skipped(_)) | None => {}
    }
    e
}

async fn attempts(settings: &Settings, request: &BackupRequest, state_dir: &Path, max: u32) -> Outcome {
    let cancel = &request.cancel;
    let mut attempt = 1;
    loop {
        let result = async {
            let member = crate::etcd::connect(settings.etcd()?).await?;
            if settings.schedule.skip_unchanged {
                // Unchanged only if the last backup of this revision reached every destination: one
                // that missed S3 must still get there (the backup run's catch-up does it).
                let last = State::load(state_dir).last_success;
                if last.is_some_and(|s| s.revision == member.facts.revision && everywhere(settings, &s.destinations)) {
                    return Ok(Outcome::Unchanged { revision: member.facts.revision });
                }
            }
            Ok(Outcome::Committed(Box::new(write_backup(settings, request, member).await?)))
        }
        .await;
        match result {
            Ok(outcome) => return outcome,
            Err(e) if attempt < max && crate::errors::is_transient(&e) && !cancel.is_cancelled() => {
                let delay = schedule::retry_delay(settings.schedule.retry_delay, attempt);
                tracing::warn!(attempt, max, retry_in = %humantime::format_duration(delay), error = %format!("{e:#}"), "backup failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = cancel.cancelled() => return Outcome::Failed(e),
                }
                attempt += 1;
            }
            Err(e) => return Outcome::Failed(e),
        }
    }
}

/// The destinations a committed backup did not reach, and why.
pub(crate) fn failures(report: &BackupReport) -> String {
    report.failed.iter().map(|(d, e)| format!("{d}: {e}")).collect::<Vec<_>>().join("; ")
}

/// Whether a backup recorded as reaching `destinations` (the state file's names: untrusted, compared by
/// name) reached every destination the config has.
fn everywhere(settings: &Settings, destinations: &[String]) -> bool {
    crate::store::Kind::configured(settings).iter().all(|k| destinations.iter().any(|d| d == k.as_str()))
}
