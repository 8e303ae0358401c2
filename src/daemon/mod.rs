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
use crate::history::{finish_drill, persist, record_backup};
use crate::notify::{Notifier, watchdog_interval};
use crate::schedule;

mod step;

use crate::state::State;
use step::{Action, Event, Plans, Trigger};

/// The one-line STATUS= for systemd: "last ok 2026-11-22 06:00 rev 48211 (12.4 MiB); next 12:00".
pub fn status_line(state: &State, running: bool) -> String {
    let covered = state.last_covered.as_ref().filter(|r| state.last_success.as_ref().is_none_or(|s| r.time > s.time));
    if let Some(r) = covered {
        let next =
            state.next_run.map_or("no next run".to_string(), |t| format!("next {}", t.format("%Y-%m-%d %H:%M:%S UTC")));
        return format!(
            "slot {} covered by member {} ({}); {next}",
            r.slot.format("%Y-%m-%d %H:%M"),
            r.member_name,
            r.backup_id
        );
    }
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
    /// Cancelled at once on SIGTERM: a run still waiting for its slot gives up (a backup gets the grace).
    stopping: CancellationToken,
}

/// The randomness jitter needs.
fn random() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::getrandom(&mut b).is_err() {
        b = (Utc::now().timestamp_nanos_opt().unwrap_or(0) as u64).to_ne_bytes();
    }
    u64::from_ne_bytes(b)
}

/// The schedules a config sets.
fn plans(settings: &Settings) -> Plans<'_> {
    Plans { backups: &settings.schedule.schedule, drills: settings.drill.schedule.as_ref() }
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
    let last_attempt = State::load(&state_dir).last_attempt;
    let (mut at, decision) = step::begin(plans(&settings), last_attempt, settings.schedule.catch_up, now, random());
    match decision {
        schedule::AtStart::CatchUp => {
            tracing::info!("a scheduled backup was missed while etcd-backupd was not running; backing up now")
        }
        schedule::AtStart::FirstBackup => {
            tracing::info!("no backup run is on record (a new install): backing up now, then on the schedule")
        }
        schedule::AtStart::Wait => {}
    }
    let mut state = save_next(&settings, &state_dir, at.next).await;
    let mut running: Option<Running> = None;
    let mut drilling: Option<JoinHandle<DrillRun>> = None;
    // What a finished task left for its record.
    let mut finished_backup = None;
    let mut finished_drill = None;
    // Stops a running drill cleanly (its etcd, its plaintext) when the daemon stops.
    let stop_drill = CancellationToken::new();
    // The delta stream ([deltas]): asks for a full backup when its chain cannot go on; told when one was
    // recorded.
    let (chain_needs_backup, mut needs_backup) = tokio::sync::mpsc::channel::<String>(1);
    let signals = crate::deltas::run::Signals {
        backup_now: chain_needs_backup,
        backup_recorded: std::sync::Arc::new(tokio::sync::Notify::new()),
    };
    let mut deltas = restart_deltas(None, &settings, &signals);
    tracing::info!(
        schedule = %settings.schedule.schedule.text(), timezone = %settings.timezone, next = %at.next,
        next_drill = %at.next_drill.map_or("never".to_string(), |t| t.to_string()),
        state_dir = %state_dir.display(), "etcd-backupd started"
    );
    notifier.ready(&status_line(&state, false));

    loop {
        // Signals and timers become events; `step` decides; the actions are carried out in order.
        let event = tokio::select! {
            () = tokio::time::sleep_until(instant_at(at.next)) => Event::Due,
            Some(()) = usr1.recv() => Event::BackupNow,
            Some(_) = needs_backup.recv() => Event::ChainNeedsBackup,
            Some(()) = hup.recv() => Event::Hangup,
            () = sleep_until_maybe(at.next_drill) => Event::DrillDue,
            done = async { drilling.as_mut().expect("guarded").await }, if drilling.is_some() => {
                drilling = None;
                finished_drill = Some(done);
                Event::DrillFinished
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => Event::WatchdogTick,
            outcome = async { running.as_mut().map(|r| &mut r.handle).expect("guarded").await }, if running.is_some() => {
                running = None;
                finished_backup = Some(outcome);
                Event::BackupFinished
            }
            Some(()) = term.recv() => break,
            Some(()) = int.recv() => break,
        };
        // A reload's result is an event of its own, stepped at once.
        let mut pending = Some(event);
        while let Some(event) = pending.take() {
            let actions;
            (at, actions) = step::step(at, event, plans(&settings), Utc::now(), random());
            for action in actions {
                match action {
                    Action::StartBackup(trigger) => {
                        match trigger {
                            Trigger::Signal => tracing::info!("SIGUSR1: backing up now"),
                            Trigger::Deltas => tracing::info!("backing up now: the delta stream needs a new base"),
                            Trigger::Schedule => {}
                        }
                        // SIGUSR1 (or the delta stream) asks for a backup now: taken, like a one-shot
                        // backup, whoever covers the slot.
                        running = Some(start(&settings, &state_dir, trigger == Trigger::Schedule));
                    }
                    Action::Reload => {
                        notifier.reloading();
                        pending = Some(match config::load(&config_path) {
                            Ok(new) => {
                                settings = new;
                                // The stream follows the new [deltas], destinations and recipients; the
                                // new one starts once the old one committed its open segment.
                                deltas = restart_deltas(Some(deltas), &settings, &signals);
                                Event::Reloaded
                            }
                            Err(e) => {
                                tracing::error!("the new configuration is not valid; keeping the running one:\n{e}");
                                Event::ReloadFailed
                            }
                        });
                    }
                    Action::SkipOverlap => {
                        tracing::warn!("a backup is still running; skipping this scheduled run");
                        persist(&settings, &state_dir, |s| s.runs.skipped += 1).await;
                    }
                    Action::AlreadyBackingUp => tracing::warn!("SIGUSR1: a backup is already running"),
                    Action::StartDrill => drilling = Some(start_drill(&settings, stop_drill.child_token())),
                    Action::SkipDrill => tracing::warn!("a drill is still running; skipping this scheduled drill"),
                    Action::RecordBackup => match finished_backup.take() {
                        Some(Ok((started, outcome))) => {
                            record_backup(&settings, &state_dir, started, &outcome).await;
                            signals.backup_recorded.notify_one();
                        }
                        Some(Err(e)) => tracing::error!(error = %e, "the backup task failed"),
                        None => {}
                    },
                    Action::RecordDrill => match finished_drill.take() {
                        Some(Ok((started, id, result))) => {
                            // The daemon outlives the notifications: they finish on their own tasks.
                            let mut sent = crate::alerts::Pending::default();
                            let finished =
                                finish_drill(&settings, &state_dir, started, id.as_ref(), &result, &mut sent);
                            state = finished.await.unwrap_or(state);
                        }
                        Some(Err(e)) => tracing::error!(error = %e, "the drill task failed"),
                        None => {}
                    },
                    Action::SaveNext(next) => state = save_next(&settings, &state_dir, next).await,
                    Action::Status => notifier.status(&status_line(&state, at.backing_up)),
                    Action::Ready => notifier.ready(&status_line(&state, at.backing_up)),
                    Action::ScheduleReloaded => {
                        tracing::info!(schedule = %settings.schedule.schedule.text(), next = %at.next, "configuration reloaded")
                    }
                    Action::Watchdog => notifier.watchdog(),
                }
            }
        }
    }

    notifier.stopping();
    // The open delta segment is committed before the stream stops.
    stop_deltas(deltas).await;
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
        r.stopping.cancel();
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

/// The delta stream's task and what stops it.
type Deltas = (JoinHandle<()>, CancellationToken);

/// Stops the running delta stream, if any, and starts one for `settings` (if `[deltas]` is on) once
/// the old one has committed its open segment: the loop does not wait for it.
fn restart_deltas(old: Option<Deltas>, settings: &Settings, signals: &crate::deltas::run::Signals) -> Deltas {
    let stopping = old.map(|old| tokio::spawn(stop_deltas(old)));
    let deltas = settings.deltas.clone();
    let cancel = CancellationToken::new();
    let (settings, signals, token) = (settings.clone(), signals.clone(), cancel.clone());
    let task = tokio::spawn(async move {
        if let Some(stopping) = stopping {
            let _ = stopping.await;
        }
        if let Some(deltas) = deltas {
            crate::deltas::run::run(settings, deltas, signals, token).await;
        }
    });
    (task, cancel)
}

/// Stops the delta stream, letting it commit its open segment (for at most a minute).
async fn stop_deltas((mut task, cancel): Deltas) {
    cancel.cancel();
    if tokio::time::timeout(Duration::from_secs(60), &mut task).await.is_err() {
        tracing::warn!("stopping: the delta stream did not commit its open segment within a minute");
        task.abort();
    }
}

/// A finished drill: when it started, the backup it drilled (if found), and its result.
type DrillRun = (DateTime<Utc>, Option<crate::manifest::BackupId>, Result<crate::drill::DrillReport>);

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

/// Starts a backup run; `claim`: ask for the slot in cluster mode (a scheduled run), else back up and
/// record the slot unless a member covered it.
fn start(settings: &Settings, state_dir: &Path, claim: bool) -> Running {
    let (cancel, stopping) = (CancellationToken::new(), CancellationToken::new());
    let (settings, state_dir, token, stop) =
        (settings.clone(), state_dir.to_path_buf(), cancel.clone(), stopping.clone());
    let handle = tokio::spawn(async move {
        // The daemon does not wait for a one-shot backup holding the lock: it skips this run.
        let slot = crate::backup::SlotRun::now(&settings.schedule.schedule, Utc::now(), claim);
        let request = BackupRequest { cancel: token, stopping: stop, slot: Some(slot), ..BackupRequest::default() };
        // The daemon's notifications finish on their own tasks.
        let mut alerts = crate::alerts::Pending::default();
        run_once(&settings, &request, &state_dir, Duration::ZERO, settings.schedule.max_attempts, &mut alerts).await
    });
    Running { handle, cancel, stopping }
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
        // Cluster mode: a slot another member covered after this member's last backup.
        s.last_covered = Some(crate::coordination::slot::Record {
            slot: t + chrono::Duration::hours(6),
            member_id: "a".into(),
            member_name: "m2".into(),
            backup_id: crate::manifest::BackupId::new(t + chrono::Duration::hours(6), 48300, "a"),
            revision: 48300,
            time: t + chrono::Duration::hours(6),
        });
        assert_eq!(
            status_line(&s, false),
            "slot 2026-11-22 12:00 covered by member m2 (20261122T120000Z-r48300-a); next 2026-11-22 12:00:00 UTC"
        );
    }
}
