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

use crate::backup::BackupRequest;
use crate::backup::{Outcome, run_once};
use crate::config::units::format_size;
use crate::config::{self, Settings};
use crate::history::{persist, record_backup};
use crate::notify::{Notifier, watchdog_interval};
use crate::schedule::{self, Due};
use crate::state::State;

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
                        state = crate::history::record_drill(&settings, &state_dir, started, id.as_ref(), &result).await;
                        // The daemon outlives the notifications: they finish on their own tasks.
                        let mut sent = crate::alerts::Pending::default();
                        crate::drill::notify(&settings, id.as_ref(), &result, &mut sent);
                    }
                    Err(e) => tracing::error!(error = %e, "the drill task failed"),
                }
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => notifier.watchdog(),
            outcome = async { running.as_mut().map(|r| &mut r.handle).expect("guarded").await }, if running.is_some() => {
                running = None;
                match outcome {
                    Ok((started, outcome)) => record_backup(&settings, &state_dir, started, &outcome).await,
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
            Some(Ok((started, outcome))) => record_backup(&settings, &state_dir, started, &outcome).await,
            Some(Err(e)) => tracing::error!(error = %e, "the backup task failed"),
            None => r.handle.abort(),
        }
    }
    tracing::info!("etcd-backupd stopped");
    Ok(())
}

/// A finished drill: when it started, the backup it drilled (if found), and its result.
type DrillRun = (DateTime<Utc>, Option<crate::manifest::BackupId>, Result<crate::drill::DrillReport>);

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
    use crate::state::Failure;

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
