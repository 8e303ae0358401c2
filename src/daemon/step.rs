//! The daemon's decisions, without I/O or real time: given what the loop knows, one event and the time,
//! what it now knows and what to do. `daemon::run` turns signals and timers into events and actions into
//! calls; everything it decides is here and tested.

use chrono::{DateTime, Utc};

use crate::schedule::{AtStart, Schedule, at_start, jitter_delay};

/// The schedules the loop follows (they change on reload).
#[derive(Debug, Clone, Copy)]
pub struct Plans<'a> {
    pub backups: &'a Schedule,
    pub drills: Option<&'a Schedule>,
}

impl Plans<'_> {
    /// The next backup after `now`, with the jitter `random` picks (a day later if the schedule never
    /// fires again).
    pub fn next_backup(&self, now: DateTime<Utc>, random: u64) -> DateTime<Utc> {
        let fire = self.backups.next_after(now).unwrap_or(now + chrono::Duration::days(1));
        fire + chrono::Duration::from_std(jitter_delay(self.backups.jitter(), random)).unwrap_or_default()
    }

    pub fn next_drill(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.drills.and_then(|s| s.next_after(now))
    }
}

/// What the loop knows between events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loop {
    /// When the next scheduled backup starts.
    pub next: DateTime<Utc>,
    pub next_drill: Option<DateTime<Utc>>,
    pub backing_up: bool,
    pub drilling: bool,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The next backup's time came.
    Due,
    /// SIGUSR1: back up now.
    BackupNow,
    /// The delta stream cannot continue its chain: a full backup now starts a new one.
    ChainNeedsBackup,
    /// SIGHUP: reload the config.
    Hangup,
    /// The new config loaded (the plans passed with it are the new ones).
    Reloaded,
    /// The new config did not load: the running one stays.
    ReloadFailed,
    /// The next drill's time came.
    DrillDue,
    BackupFinished,
    DrillFinished,
    WatchdogTick,
}

/// What to do, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start a backup (the loop now counts one as running), on the schedule or asked for by SIGUSR1.
    StartBackup(Trigger),
    /// A backup was due while one ran: count the skipped run and say so.
    SkipOverlap,
    /// SIGUSR1 while a backup runs: say so.
    AlreadyBackingUp,
    StartDrill,
    /// A drill was due while one ran: say so.
    SkipDrill,
    /// Record the finished backup (state, journal, metrics).
    RecordBackup,
    /// Record the finished drill and send its notifications.
    RecordDrill,
    /// Save the next run time in the state file; the status line follows from it.
    SaveNext(DateTime<Utc>),
    /// Tell systemd the status line.
    Status,
    /// Tell systemd a reload began, and load the config: `Reloaded` or `ReloadFailed` follows.
    Reload,
    /// Tell systemd the reload is over.
    Ready,
    /// Say the schedule changed.
    ScheduleReloaded,
    Watchdog,
}

/// Why a backup starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    Signal,
    /// The delta stream needs a new base.
    Deltas,
}

/// Where the loop begins: a backup at once if none is on record or (with catch-up) one was missed
/// since the last attempt, else at the next fire time.
pub fn begin(
    plans: Plans,
    last_attempt: Option<DateTime<Utc>>,
    catch_up: bool,
    now: DateTime<Utc>,
    random: u64,
) -> (Loop, AtStart) {
    let decision = at_start(plans.backups, last_attempt, now, catch_up);
    let next = match decision {
        AtStart::CatchUp | AtStart::FirstBackup => now,
        AtStart::Wait => plans.next_backup(now, random),
    };
    let state = Loop { next, next_drill: plans.next_drill(now), backing_up: false, drilling: false };
    (state, decision)
}

/// One event: the loop's new knowledge and what to do. Runs never overlap: a backup due while one is
/// running is skipped and counted, and so is a drill. An end of a run that is not running changes
/// nothing.
pub fn step(mut s: Loop, event: Event, plans: Plans, now: DateTime<Utc>, random: u64) -> (Loop, Vec<Action>) {
    let mut actions = Vec::new();
    match event {
        Event::Due => {
            if s.backing_up {
                actions.push(Action::SkipOverlap);
            } else {
                s.backing_up = true;
                actions.push(Action::StartBackup(Trigger::Schedule));
            }
            s.next = plans.next_backup(now, random);
            actions.extend([Action::SaveNext(s.next), Action::Status]);
        }
        // The running backup will be the new chain's base.
        Event::ChainNeedsBackup if s.backing_up => {}
        Event::ChainNeedsBackup => {
            s.backing_up = true;
            actions.extend([Action::StartBackup(Trigger::Deltas), Action::Status]);
        }
        Event::BackupNow if s.backing_up => actions.push(Action::AlreadyBackingUp),
        Event::BackupNow => {
            s.backing_up = true;
            actions.extend([Action::StartBackup(Trigger::Signal), Action::Status]);
        }
        Event::Hangup => actions.push(Action::Reload),
        Event::Reloaded => {
            s.next = plans.next_backup(now, random);
            s.next_drill = plans.next_drill(now);
            actions.extend([Action::SaveNext(s.next), Action::ScheduleReloaded, Action::Ready]);
        }
        Event::ReloadFailed => actions.push(Action::Ready),
        Event::DrillDue => {
            if s.drilling {
                actions.push(Action::SkipDrill);
            } else {
                s.drilling = true;
                actions.push(Action::StartDrill);
            }
            s.next_drill = plans.next_drill(now);
        }
        Event::BackupFinished | Event::DrillFinished if !running(&s, event) => {}
        Event::BackupFinished => {
            s.backing_up = false;
            actions.extend([Action::RecordBackup, Action::SaveNext(s.next), Action::Status]);
        }
        Event::DrillFinished => {
            s.drilling = false;
            actions.push(Action::RecordDrill);
        }
        Event::WatchdogTick => actions.push(Action::Watchdog),
    }
    (s, actions)
}

/// Whether the run an end event speaks of is running.
fn running(s: &Loop, end: Event) -> bool {
    match end {
        Event::BackupFinished => s.backing_up,
        Event::DrillFinished => s.drilling,
        _ => true,
    }
}

#[cfg(test)]
mod tests;
