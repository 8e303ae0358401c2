//! One backup run, as the daemon and the one-shot `backup` command both do it: take the run lock, write
//! the backup (retrying transient failures), upload what S3 missed, pin, prune, and tell `[notify]` how it
//! went. Writing and committing is `pipeline`'s job; recording the outcome is `history`'s.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::Settings;
use crate::manifest::BackupId;
use crate::pipeline::{SnapshotSource, Write, Written, write_backup};
use crate::prune::{PruneOptions, PruneReport, prune};
use crate::schedule;
use crate::state::{Lock, State};
use crate::store::{Destination, Kind as Place};

mod slot;

use slot::{Turn, coordinate, finish_slot};

/// What a backup run is asked to do.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    pub label: Option<String>,
    /// Pin the backup in every destination that commits it.
    pub pin: bool,
    /// Prune each destination after its commit.
    pub prune: bool,
    /// Cancelled (by SIGTERM after the grace period): stop streaming, abort every upload, commit nothing.
    pub cancel: tokio_util::sync::CancellationToken,
    /// Cancelled at once by SIGTERM: a run still waiting for its slot gives up.
    pub stopping: tokio_util::sync::CancellationToken,
    /// Where the snapshot check's unnamed scratch file (page summaries) is written: the state dir.
    pub state_dir: std::path::PathBuf,
    /// The schedule slot this run is for (in cluster mode, one backup per slot for the whole cluster).
    pub slot: Option<SlotRun>,
}

/// A run's schedule slot: from `at` until `until` (the next one). The daemon `claim`s it (etcd's lock,
/// skipped when another member covered it); a one-shot backup records it only if nobody did.
#[derive(Debug, Clone, Copy)]
pub struct SlotRun {
    pub at: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub claim: bool,
}

impl SlotRun {
    /// The slot `now` falls in on `schedule`.
    pub fn now(schedule: &crate::schedule::Schedule, now: DateTime<Utc>, claim: bool) -> SlotRun {
        let at = schedule.last_at_or_before(now).unwrap_or(now);
        let until = schedule.next_after(at).unwrap_or(at + chrono::Duration::days(1));
        SlotRun { at, until, claim }
    }
}

impl Default for BackupRequest {
    fn default() -> Self {
        BackupRequest {
            label: None,
            pin: false,
            prune: true,
            cancel: Default::default(),
            stopping: Default::default(),
            state_dir: crate::host::state_dir(),
            slot: None,
        }
    }
}

/// What happened to one backup.
#[derive(Debug)]
pub struct BackupReport {
    pub manifest: crate::manifest::Manifest,
    pub committed: Vec<Place>,
    /// Destinations that did not commit, and pin, catch-up or prune problems after a commit.
    pub failed: Vec<(Place, String)>,
    pub pruned: Vec<PruneReport>,
}

/// How one run ended.
#[derive(Debug)]
pub enum Outcome {
    Committed(Box<BackupReport>),
    /// `skip_unchanged`: etcd's revision equals the last backup's; nothing was uploaded.
    Unchanged {
        revision: i64,
    },
    Failed(anyhow::Error),
    /// Another process held the lock, or (cluster mode) this member leaves the slot: why.
    Skipped(String),
    /// Cluster mode: another member covered the slot.
    Covered(crate::coordination::slot::Record),
    /// Cluster mode: this member is a learner, which never backs up (the slot's record, if one is there).
    Learner(Option<crate::coordination::slot::Record>),
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
    let outcome = match Lock::take_unless(state_dir, lock_wait, &request.stopping).await {
        // Held by another run: skipped (that run notifies). Anything else (a lock file we may not open)
        // is a failure.
        Err(e) if e.downcast_ref::<crate::state::LockHeld>().is_some() => Outcome::Skipped(format!("{e:#}")),
        Err(e) => Outcome::Failed(e),
        Ok(_lock) => match coordinate(settings, request).await {
            Turn::Leave(outcome) => outcome,
            Turn::Go(held, emergency, member) => {
                crate::alerts::send(&settings.notify, event(settings, crate::alerts::Kind::Start, None), alerts);
                let run_cancel = request.cancel.clone();
                let mut request = request.clone();
                let slot_cancel = held.as_ref().map(|h| h.cancel());
                if let Some(cancel) = &slot_cancel {
                    request.cancel = cancel.clone();
                }
                if emergency && request.label.is_none() {
                    request.label = Some(crate::manifest::EMERGENCY_LABEL.to_string());
                }
                // A member holding a slot does not retry with the slot held: its failure hands the slot to
                // the next member waiting, which is quicker than any retry delay.
                let max = if held.is_some() { 1 } else { max_attempts };
                let mut outcome = attempts(settings, &request, state_dir, max, member).await;
                let lease_lost = slot_cancel.is_some_and(|c| c.is_cancelled()) && !run_cancel.is_cancelled();
                if lease_lost && matches!(outcome, Outcome::Failed(_)) {
                    outcome = Outcome::Failed(anyhow::anyhow!(
                        "the slot's lease was lost during the backup (etcd expired it, or it could not be renewed in \
                         time while the cluster had a leader): the backup stopped, since another member may hold the \
                         slot now"
                    ));
                }
                finish_slot(settings, &request, held, &outcome).await;
                outcome
            }
        },
    };
    let done = match &outcome {
        Outcome::Committed(report) if report.failed.is_empty() => Some(event(settings, Kind::Success, Some(&outcome))),
        Outcome::Committed(_) | Outcome::Failed(_) => Some(event(settings, Kind::Failure, Some(&outcome))),
        Outcome::Unchanged { .. } => Some(event(settings, Kind::Success, Some(&outcome))),
        // A slot another member covered is fresh: the check of this member's runs is pinged too.
        Outcome::Covered(_) => Some(event(settings, Kind::Covered, Some(&outcome))),
        Outcome::Skipped(_) | Outcome::Learner(_) => None,
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
        covered_by: None,
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
        Some(Outcome::Covered(r)) => {
            e.backup_id = Some(r.backup_id.to_string());
            e.revision = Some(r.revision);
            e.covered_by = Some(if r.member_name.is_empty() { r.member_id.clone() } else { r.member_name.clone() });
        }
        Some(Outcome::Skipped(_) | Outcome::Learner(_)) | None => {}
    }
    e
}

/// Backs up, retrying transient failures up to `max` attempts; the first uses `first` when the member is
/// connected already.
async fn attempts(
    settings: &Settings,
    request: &BackupRequest,
    state_dir: &Path,
    max: u32,
    mut first: Option<Box<crate::etcd::Member>>,
) -> Outcome {
    let cancel = &request.cancel;
    let mut attempt = 1;
    loop {
        let connected = first.take();
        let result = async {
            let member = match connected {
                Some(member) => *member,
                None => crate::etcd::connect(settings.etcd()?).await?,
            };
            if settings.schedule.skip_unchanged {
                // Unchanged only if the last backup of this revision reached every destination: one
                // that missed S3 must still get there (the backup run's catch-up does it).
                let last = State::load(state_dir).last_success;
                if last.is_some_and(|s| s.revision == member.facts.revision && everywhere(settings, &s.destinations)) {
                    return Ok(Outcome::Unchanged { revision: member.facts.revision });
                }
            }
            Ok(Outcome::Committed(Box::new(take(settings, request, member).await?)))
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

/// Takes one backup from `source` (etcd: `etcd::connect`) into every configured destination, then pins it,
/// uploads what S3 missed and prunes. `Err` means no destination committed anything; a report with
/// failures means some committed and others did not, or a step after the commit went wrong.
pub async fn take<S: SnapshotSource>(
    settings: &Settings,
    request: &BackupRequest,
    source: S,
) -> anyhow::Result<BackupReport> {
    let (destinations, unusable) = crate::store::open_all(settings).await;
    let write = Write {
        label: request.label.clone(),
        cancel: request.cancel.clone(),
        check_dir: request.state_dir.clone(),
        host: crate::host::hostname(),
    };
    let Written { manifest, committed, failed } =
        write_backup(settings, &write, &destinations, unusable, source).await?;
    let report = BackupReport { manifest, committed, failed, pruned: Vec::new() };
    after_commit(settings, request, &destinations, report).await
}

/// What follows a commit: the pin, the catch-up upload to S3, pruning each destination that committed.
async fn after_commit(
    settings: &Settings,
    request: &BackupRequest,
    destinations: &[Destination],
    mut report: BackupReport,
) -> anyhow::Result<BackupReport> {
    let id: BackupId = report.manifest.id.clone();
    // A pin asked for is part of the backup: it is written even when the run is stopping.
    if request.pin {
        for destination in destinations.iter().filter(|d| report.committed.contains(&d.kind())) {
            if let Err(e) = destination.set_pin(&id, true).await {
                report.failed.push((destination.kind(), format!("committed, but cannot pin it: {e:#}")));
            } else {
                tracing::info!(destination = %destination.kind(), id = %id, "backup pinned");
            }
        }
    }

    // Stopping (SIGTERM past stop_grace, or an interrupted one-shot run): the backup is committed and
    // stays; catching up and pruning are left to the next run, so the stop is not overrun.
    if request.cancel.is_cancelled() {
        tracing::info!(id = %id, "stopping: the backup is committed; catch-up uploads and pruning are left to the next run");
        return Ok(report);
    }

    // Backups committed locally while an off-site store was failing are uploaded to it now, oldest first,
    // before any pruning: to every off-site store that took this backup.
    if let Some(Destination::Local(local)) = destinations.first() {
        for to in destinations.iter().skip(1).filter(|d| report.committed.contains(&d.kind())) {
            let policy = to.kind().policy(settings);
            let keep = |candidates: &[crate::retention::Candidate]| {
                crate::retention::plan(candidates, policy, settings.timezone, Utc::now())
            };
            if let Err(e) = crate::catch_up::upload_missing(local, &**to, keep, &request.cancel).await {
                report.failed.push((to.kind(), format!("uploading backups that only the local dir holds: {e:#}")));
            }
        }
    }

    // Each destination that committed is pruned on its own; a destination that failed is not pruned,
    // so a failed upload never costs an older backup.
    for destination in destinations.iter().filter(|d| report.committed.contains(&d.kind())) {
        if request.cancel.is_cancelled() || !request.prune {
            break;
        }
        let options = PruneOptions {
            policy: destination.kind().policy(settings).clone(),
            timezone: settings.timezone,
            now: Utc::now(),
            leftover_grace: settings.leftover_grace,
            dry_run: false,
            this_run: Some(id.clone()),
            segments_keep_for: settings.deltas.as_ref().and_then(|d| d.keep_for),
        };
        match prune(destination, &options).await {
            Ok(pruned) => {
                for e in &pruned.errors {
                    report.failed.push((destination.kind(), format!("pruning: {e}")));
                }
                report.pruned.push(pruned);
            }
            Err(e) => report.failed.push((destination.kind(), format!("pruning failed: {e:#}"))),
        }
    }
    Ok(report)
}

/// The destinations a committed backup did not reach, and why.
pub(crate) fn failures(report: &BackupReport) -> String {
    report.failed.iter().map(|(d, e)| format!("{d}: {e}")).collect::<Vec<_>>().join("; ")
}

/// Whether a backup recorded as reaching `destinations` (the state file's) reached every destination the
/// config has.
fn everywhere(settings: &Settings, destinations: &[Place]) -> bool {
    Place::configured(settings).iter().all(|k| destinations.contains(k))
}
