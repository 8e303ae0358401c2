//! `etcd-backupd run`: the scheduler loop. It sleeps until the next fire time (plus jitter), runs one
//! backup at a time, answers signals (TERM: finish or abort cleanly and exit; HUP: reload the config;
//! USR1: back up now), tells systemd how it is doing, and keeps the state file and metrics current.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::units::format_size;
use crate::config::{self, Settings};
use crate::notify::{Notifier, watchdog_interval};
use crate::pipeline::{BackupReport, BackupRequest, write_backup};
use crate::schedule::{self, Due};
use crate::state::{Failure, Lock, State, Success};

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
                let everywhere = if settings.s3.is_some() { 2 } else { 1 };
                let last = State::load(state_dir).last_success;
                if last.is_some_and(|s| s.revision == member.facts.revision && s.destinations.len() >= everywhere) {
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

/// Records a run's outcome: the journal entry, the state file, the metrics.
pub async fn record(settings: &Settings, state_dir: &Path, started: DateTime<Utc>, outcome: &Outcome) {
    match outcome {
        Outcome::Committed(report) => {
            crate::telemetry::backup_committed(report);
            report.pruned.iter().for_each(crate::telemetry::pruned);
            if !report.failed.is_empty() {
                crate::telemetry::backup_failed(
                    &failures(report),
                    &report.failed.iter().map(|f| f.0).collect::<Vec<_>>().join(","),
                );
            }
        }
        Outcome::Unchanged { revision } => {
            tracing::info!(revision, "etcd's revision has not changed since the last backup; nothing uploaded");
        }
        Outcome::Failed(e) => crate::telemetry::backup_failed(&format!("{e:#}"), ""),
        Outcome::Skipped(why) => tracing::warn!(%why, "backup skipped"),
    }
    persist(settings, state_dir, |state| {
        state.last_attempt = Some(started);
        match outcome {
            Outcome::Committed(report) => {
                for p in &report.pruned {
                    state.backups.insert(p.destination.to_string(), p.decisions.iter().filter(|d| d.keep).count());
                }
                if !report.pruned.is_empty() {
                    let future: std::collections::BTreeSet<String> = report
                        .pruned
                        .iter()
                        .flat_map(|p| &p.decisions)
                        .filter(|d| d.reasons.contains(&crate::retention::Reason::FutureDated))
                        .map(|d| d.id.to_string())
                        .collect();
                    state.future_dated = future.into_iter().collect();
                }
                let m = &report.manifest;
                state.last_success = Some(Success {
                    time: m.created,
                    id: m.id.to_string(),
                    revision: m.etcd.revision,
                    artifact_size: m.artifact.size,
                    duration_ms: m.duration_ms,
                    destinations: report.committed.iter().map(ToString::to_string).collect(),
                    unchanged: false,
                });
                if report.failed.is_empty() {
                    state.runs.ok += 1;
                } else {
                    state.last_failure = Some(Failure { time: started, error: failures(report) });
                    state.runs.failed += 1;
                }
            }
            Outcome::Unchanged { .. } => {
                if let Some(s) = &mut state.last_success {
                    s.time = started;
                    s.unchanged = true;
                }
                state.runs.unchanged += 1;
            }
            Outcome::Failed(e) => {
                state.last_failure = Some(Failure { time: started, error: format!("{e:#}") });
                state.runs.failed += 1;
            }
            Outcome::Skipped(_) => state.runs.skipped += 1,
        }
    })
    .await;
}

/// The destinations a committed backup did not reach, and why.
fn failures(report: &BackupReport) -> String {
    report.failed.iter().map(|(d, e)| format!("{d}: {e}")).collect::<Vec<_>>().join("; ")
}

/// Changes the state file (under its lock: the daemon, one-shot backups and drills all change it) and
/// rewrites the metrics from the result, which it returns. Failures are logged, never fatal to a run.
pub(crate) async fn persist(settings: &Settings, state_dir: &Path, change: impl FnOnce(&mut State)) -> State {
    let lock = crate::state::StateLock::take(state_dir).await;
    let mut state = State::load(state_dir);
    change(&mut state);
    let held = match lock {
        Ok(lock) => state.save(state_dir).await.map(|()| lock),
        Err(e) => Err(e),
    };
    if let Err(e) = &held {
        tracing::error!(error = %format!("{e:#}"), "cannot save the state file");
    }
    // Still under the lock, so the metrics file is never older than the state file.
    write_metrics(settings, &state).await;
    drop(held);
    state
}

async fn write_metrics(settings: &Settings, state: &State) {
    if let Some(path) = &settings.metrics_textfile
        && let Err(e) = crate::metrics::write(path, &crate::metrics::render(state, settings.cluster.as_str())).await
    {
        tracing::error!(error = %format!("{e:#}"), "cannot write the metrics file");
    }
}

/// The one-line STATUS= for systemd: "last ok 2026-11-22 06:00 rev 48211 (12.4 MiB); next 12:00".
pub fn status_line(state: &State, running: bool) -> String {
    let last = match (&state.last_success, &state.last_failure) {
        (Some(s), Some(f)) if f.time > s.time => format!("last run FAILED {}", f.time.format("%Y-%m-%d %H:%M")),
        (Some(s), _) => format!(
            "last ok {} rev {} ({}){}",
            s.time.format("%Y-%m-%d %H:%M"),
            s.revision,
            format_size(s.artifact_size),
            if s.unchanged { " unchanged" } else { "" }
        ),
        (None, Some(f)) => format!("last run FAILED {}", f.time.format("%Y-%m-%d %H:%M")),
        (None, None) => "no backup yet".to_string(),
    };
    let next = match state.next_run {
        Some(t) => format!("next {}", t.format("%Y-%m-%d %H:%M:%S UTC")),
        None => "no next run".to_string(),
    };
    if running { format!("backing up; {last}; {next}") } else { format!("{last}; {next}") }
}

struct Running {
    handle: JoinHandle<(DateTime<Utc>, Outcome)>,
    cancel: CancellationToken,
}

/// The next fire time after `now`, with jitter.
fn next_fire(settings: &Settings, now: DateTime<Utc>) -> DateTime<Utc> {
    let schedule = &settings.schedule.schedule;
    let fire = schedule.next_after(now).unwrap_or(now + chrono::Duration::days(1));
    let random = u64::from_ne_bytes(rand_bytes());
    let jitter = schedule::jitter_delay(schedule.jitter(), random);
    fire + chrono::Duration::from_std(jitter).unwrap_or_default()
}

fn rand_bytes() -> [u8; 8] {
    let mut b = [0u8; 8];
    if getrandom::getrandom(&mut b).is_err() {
        b = (Utc::now().timestamp_nanos_opt().unwrap_or(0) as u64).to_ne_bytes();
    }
    b
}

fn instant_at(t: DateTime<Utc>) -> tokio::time::Instant {
    let wait = (t - Utc::now()).to_std().unwrap_or_default();
    tokio::time::Instant::now() + wait
}

/// Runs the daemon until SIGTERM (or SIGINT).
pub async fn run(config_path: PathBuf, settings: Settings) -> Result<()> {
    let mut settings = settings;
    let notifier = Notifier::from_env();
    let state_dir = crate::host::state_dir();
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("cannot listen for SIGUSR1")?;
    let watchdog = watchdog_interval();
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));

    // `state` is only read (status lines); every change goes through `persist`, which reloads it under
    // the state lock, so a one-shot backup's or a drill's record is never overwritten.
    let now = Utc::now();
    let mut next = next_fire(&settings, now);
    let last_attempt = State::load(&state_dir).last_attempt;
    match schedule::at_start(&settings.schedule.schedule, last_attempt, now, settings.schedule.catch_up) {
        schedule::AtStart::CatchUp => {
            tracing::info!("a scheduled backup was missed while etcd-backupd was not running; backing up now");
            next = now;
        }
        schedule::AtStart::FirstBackup => {
            tracing::info!("no backup run is on record (a new install): backing up now, then on the schedule");
            next = now;
        }
        schedule::AtStart::Wait => {}
    }
    let mut state = save_next(&settings, &state_dir, next).await;
    let mut running: Option<Running> = None;
    let mut next_drill = next_drill_after(&settings, now);
    let mut drilling: Option<JoinHandle<DrillRun>> = None;
    // Stops a running drill cleanly (its etcd, its plaintext) when the daemon stops.
    let stop_drill = CancellationToken::new();
    tracing::info!(
        schedule = %settings.schedule.schedule.text(), timezone = %settings.timezone, next = %next,
        next_drill = %next_drill.map_or("never".to_string(), |t| t.to_string()),
        state_dir = %state_dir.display(), "etcd-backupd started"
    );
    notifier.ready(&status_line(&state, false));

    loop {
        tokio::select! {
            () = tokio::time::sleep_until(instant_at(next)) => {
                match schedule::on_due(running.is_some()) {
                    Due::Start => running = Some(start(&settings, &state_dir)),
                    Due::SkipOverlap => {
                        tracing::warn!("a backup is still running; skipping this scheduled run");
                        persist(&settings, &state_dir, |s| s.runs.skipped += 1).await;
                    }
                }
                next = next_fire(&settings, Utc::now());
                state = save_next(&settings, &state_dir, next).await;
                notifier.status(&status_line(&state, running.is_some()));
            }
            Some(()) = usr1.recv() => {
                if running.is_some() {
                    tracing::warn!("SIGUSR1: a backup is already running");
                } else {
                    tracing::info!("SIGUSR1: backing up now");
                    running = Some(start(&settings, &state_dir));
                    notifier.status(&status_line(&state, true));
                }
            }
            Some(()) = hup.recv() => {
                notifier.reloading();
                match config::load(&config_path) {
                    Ok(new) => {
                        settings = new;
                        next = next_fire(&settings, Utc::now());
                        next_drill = next_drill_after(&settings, Utc::now());
                        state = save_next(&settings, &state_dir, next).await;
                        tracing::info!(schedule = %settings.schedule.schedule.text(), next = %next, "configuration reloaded");
                    }
                    Err(e) => tracing::error!("the new configuration is not valid; keeping the running one:\n{e}"),
                }
                notifier.ready(&status_line(&state, running.is_some()));
            }
            () = sleep_until_maybe(next_drill) => {
                if drilling.is_some() {
                    tracing::warn!("a drill is still running; skipping this scheduled drill");
                } else {
                    drilling = Some(start_drill(&settings, stop_drill.child_token()));
                }
                next_drill = next_drill_after(&settings, Utc::now());
            }
            done = async { drilling.as_mut().expect("guarded").await }, if drilling.is_some() => {
                drilling = None;
                match done {
                    Ok((started, id, result)) => {
                        state = crate::drill::record(&settings, &state_dir, started, id.as_deref(), &result).await;
                        // The daemon outlives the notifications: they finish on their own tasks.
                        let mut sent = crate::alerts::Pending::default();
                        crate::drill::notify(&settings, id.as_deref(), &result, &mut sent);
                    }
                    Err(e) => tracing::error!(error = %e, "the drill task failed"),
                }
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => notifier.watchdog(),
            outcome = async { running.as_mut().map(|r| &mut r.handle).expect("guarded").await }, if running.is_some() => {
                running = None;
                match outcome {
                    Ok((started, outcome)) => record(&settings, &state_dir, started, &outcome).await,
                    Err(e) => tracing::error!(error = %e, "the backup task failed"),
                }
                state = save_next(&settings, &state_dir, next).await;
                notifier.status(&status_line(&state, false));
            }
            Some(()) = term.recv() => break,
            Some(()) = int.recv() => break,
        }
    }

    notifier.stopping();
    if let Some(mut d) = drilling.take() {
        // The drill stops its throwaway etcd and removes its files; it proved nothing, and is not recorded.
        tracing::info!("stopping: stopping the running drill");
        stop_drill.cancel();
        if tokio::time::timeout(Duration::from_secs(30), &mut d).await.is_err() {
            d.abort();
            let _ = d.await;
        }
    }
    if let Some(mut r) = running.take() {
        let grace = settings.schedule.stop_grace;
        tracing::info!(grace = %humantime::format_duration(grace), "stopping: waiting for the running backup to finish");
        let finished = match tokio::time::timeout(grace, &mut r.handle).await {
            Ok(done) => Some(done),
            Err(_) => {
                tracing::warn!(
                    "stopping: the backup did not finish within stop_grace; cancelling it (an upload not yet committed is aborted, a committed backup stays, catch-up and pruning wait for the next run)"
                );
                r.cancel.cancel();
                tokio::time::timeout(Duration::from_secs(30), &mut r.handle).await.ok()
            }
        };
        match finished {
            Some(Ok((started, outcome))) => record(&settings, &state_dir, started, &outcome).await,
            Some(Err(e)) => tracing::error!(error = %e, "the backup task failed"),
            None => r.handle.abort(),
        }
    }
    tracing::info!("etcd-backupd stopped");
    Ok(())
}

/// A finished drill: when it started, the backup it drilled (if found), and its result.
type DrillRun = (DateTime<Utc>, Option<String>, Result<crate::drill::DrillReport>);

fn next_drill_after(settings: &Settings, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    settings.drill.schedule.as_ref().and_then(|s| s.next_after(now))
}

/// Sleeps until `t`; forever when there is no `t`.
async fn sleep_until_maybe(t: Option<DateTime<Utc>>) {
    match t {
        Some(t) => tokio::time::sleep_until(instant_at(t)).await,
        None => std::future::pending().await,
    }
}

/// Drills the newest backup with the `[drill]` table's identity and tools.
fn start_drill(settings: &Settings, cancel: CancellationToken) -> JoinHandle<DrillRun> {
    let settings = settings.clone();
    tokio::spawn(async move {
        let started = Utc::now();
        tracing::info!("drilling the newest backup");
        let (id, result) = crate::drill::drill(&settings, &crate::restore::Selector::Latest, None, None, &cancel).await;
        (started, id, result)
    })
}

fn start(settings: &Settings, state_dir: &Path) -> Running {
    let cancel = CancellationToken::new();
    let (settings, state_dir, token) = (settings.clone(), state_dir.to_path_buf(), cancel.clone());
    let handle = tokio::spawn(async move {
        // The daemon does not wait for a one-shot backup holding the lock: it skips this run.
        let request = BackupRequest { cancel: token, ..BackupRequest::default() };
        // The daemon's notifications finish on their own tasks.
        let mut alerts = crate::alerts::Pending::default();
        run_once(&settings, &request, &state_dir, Duration::ZERO, settings.schedule.max_attempts, &mut alerts).await
    });
    Running { handle, cancel }
}

async fn save_next(settings: &Settings, state_dir: &Path, next: DateTime<Utc>) -> State {
    let interval = settings.schedule.schedule.interval_around(Utc::now()).map(|d| d.as_secs());
    persist(settings, state_dir, |state| {
        state.next_run = Some(next);
        state.schedule_interval_secs = interval;
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_reads_like_the_docs() {
        use chrono::TimeZone;
        let t = Utc.with_ymd_and_hms(2026, 11, 22, 6, 0, 0).unwrap();
        let mut s = State {
            last_success: Some(crate::state::sample_success(t)),
            next_run: Some(t + chrono::Duration::hours(6)),
            ..State::default()
        };
        assert_eq!(
            status_line(&s, false),
            "last ok 2026-11-22 06:00 rev 48211 (12.4 MiB); next 2026-11-22 12:00:00 UTC"
        );
        s.last_failure = Some(Failure { time: t + chrono::Duration::hours(1), error: "x".into() });
        assert!(status_line(&s, true).starts_with("backing up; last run FAILED 2026-11-22 07:00"));
        assert_eq!(status_line(&State::default(), false), "no backup yet; no next run");
    }
}
