use std::time::Duration;

use chrono::TimeZone;

use super::*;

fn t(h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, h, m, s).unwrap()
}

/// Every six hours, no jitter; drills at 03:00.
fn plans<'a>(backups: &'a Schedule, drills: &'a Schedule) -> Plans<'a> {
    Plans { backups, drills: Some(drills) }
}

fn schedules() -> (Schedule, Schedule) {
    let tz = chrono_tz::UTC;
    (
        Schedule::parse("0 */6 * * *", tz, Duration::ZERO).unwrap(),
        Schedule::parse("0 3 * * *", tz, Duration::ZERO).unwrap(),
    )
}

fn idle(next: DateTime<Utc>) -> Loop {
    Loop { next, next_drill: None, backing_up: false, drilling: false }
}

#[test]
fn begins_at_once_without_a_record_or_after_a_missed_run_else_at_the_next_fire() {
    let (b, d) = schedules();
    let p = plans(&b, &d);
    let now = t(7, 30, 0);
    let (s, why) = begin(p, None, true, now, 0);
    assert_eq!((s.next, why), (now, AtStart::FirstBackup));
    assert_eq!(s.next_drill, Some(Utc.with_ymd_and_hms(2026, 11, 23, 3, 0, 0).unwrap()));
    let (s, why) = begin(p, Some(t(5, 0, 0)), true, now, 0);
    assert_eq!((s.next, why), (now, AtStart::CatchUp), "the 06:00 run was missed");
    let (s, why) = begin(p, Some(t(5, 0, 0)), false, now, 0);
    assert_eq!((s.next, why), (t(12, 0, 0), AtStart::Wait), "catch_up = false waits");
    let (s, why) = begin(p, Some(t(6, 0, 1)), true, now, 0);
    assert_eq!((s.next, why), (t(12, 0, 0), AtStart::Wait), "nothing missed since the last attempt");
}

#[test]
fn a_due_run_starts_and_the_next_is_planned() {
    let (b, d) = schedules();
    let (s, actions) = step(idle(t(12, 0, 0)), Event::Due, plans(&b, &d), t(12, 0, 0), 0);
    assert!(s.backing_up);
    assert_eq!(s.next, t(18, 0, 0));
    assert_eq!(actions, vec![Action::StartBackup(Trigger::Schedule), Action::SaveNext(t(18, 0, 0)), Action::Status]);
}

#[test]
fn runs_never_overlap() {
    let (b, d) = schedules();
    let p = plans(&b, &d);
    let running = Loop { backing_up: true, ..idle(t(12, 0, 0)) };
    let (s, actions) = step(running.clone(), Event::Due, p, t(12, 0, 0), 0);
    assert!(s.backing_up);
    assert_eq!(actions, vec![Action::SkipOverlap, Action::SaveNext(t(18, 0, 0)), Action::Status]);
    let (s, actions) = step(running.clone(), Event::BackupNow, p, t(12, 0, 1), 0);
    assert_eq!((s, actions), (running, vec![Action::AlreadyBackingUp]), "SIGUSR1 changes nothing");
}

#[test]
fn sigusr1_backs_up_now_without_moving_the_schedule() {
    let (b, d) = schedules();
    let (s, actions) = step(idle(t(12, 0, 0)), Event::BackupNow, plans(&b, &d), t(8, 0, 0), 0);
    assert!(s.backing_up);
    assert_eq!(s.next, t(12, 0, 0));
    assert_eq!(actions, vec![Action::StartBackup(Trigger::Signal), Action::Status]);
}

#[test]
fn a_finished_backup_is_recorded_then_the_status_follows() {
    let (b, d) = schedules();
    let running = Loop { backing_up: true, ..idle(t(18, 0, 0)) };
    let (s, actions) = step(running, Event::BackupFinished, plans(&b, &d), t(12, 3, 0), 0);
    assert!(!s.backing_up);
    assert_eq!(actions, vec![Action::RecordBackup, Action::SaveNext(t(18, 0, 0)), Action::Status]);
}

#[test]
fn a_reload_replans_both_schedules_and_a_failed_one_keeps_them() {
    let (b, d) = schedules();
    let hourly = Schedule::parse("0 * * * *", chrono_tz::UTC, Duration::ZERO).unwrap();
    let before = idle(t(12, 0, 0));
    let (s, actions) = step(before.clone(), Event::Hangup, plans(&b, &d), t(8, 10, 0), 0);
    assert_eq!((s, actions), (before.clone(), vec![Action::Reload]), "the shell loads, then says how it went");
    let (s, actions) = step(before.clone(), Event::Reloaded, Plans { backups: &hourly, drills: None }, t(8, 10, 0), 0);
    assert_eq!((s.next, s.next_drill), (t(9, 0, 0), None));
    assert_eq!(actions, vec![Action::SaveNext(t(9, 0, 0)), Action::ScheduleReloaded, Action::Ready]);
    let (s, actions) = step(before.clone(), Event::ReloadFailed, plans(&b, &d), t(8, 10, 0), 0);
    assert_eq!((s, actions), (before, vec![Action::Ready]));
}

#[test]
fn jitter_delays_the_planned_run_by_what_random_picks() {
    let tz = chrono_tz::UTC;
    let b = Schedule::parse("0 */6 * * *", tz, Duration::from_secs(600)).unwrap();
    let p = Plans { backups: &b, drills: None };
    let (s, _) = step(idle(t(12, 0, 0)), Event::Due, p, t(12, 0, 0), 0);
    assert_eq!(s.next, t(18, 0, 0));
    let (s, _) = step(idle(t(12, 0, 0)), Event::Due, p, t(12, 0, 0), u64::MAX);
    assert!(s.next > t(18, 0, 0) && s.next <= t(18, 10, 0), "{}", s.next);
}

#[test]
fn drills_never_overlap_and_are_recorded_when_they_finish() {
    let (b, d) = schedules();
    let p = plans(&b, &d);
    let tomorrow = Utc.with_ymd_and_hms(2026, 11, 23, 3, 0, 0).unwrap();
    let (s, actions) = step(idle(t(6, 0, 0)), Event::DrillDue, p, t(3, 0, 0), 0);
    assert_eq!((s.drilling, s.next_drill), (true, Some(tomorrow)));
    assert_eq!(actions, vec![Action::StartDrill]);
    let (s, actions) = step(s, Event::DrillDue, p, t(3, 0, 0), 0);
    assert!(s.drilling);
    assert_eq!(actions, vec![Action::SkipDrill]);
    let (s, actions) = step(s, Event::DrillFinished, p, t(3, 5, 0), 0);
    assert!(!s.drilling);
    assert_eq!(actions, vec![Action::RecordDrill]);
    let (_, actions) = step(s, Event::WatchdogTick, p, t(3, 5, 1), 0);
    assert_eq!(actions, vec![Action::Watchdog]);
}

#[test]
fn the_end_of_a_run_that_is_not_running_changes_nothing() {
    let (b, d) = schedules();
    let p = plans(&b, &d);
    for end in [Event::BackupFinished, Event::DrillFinished] {
        let (s, actions) = step(idle(t(12, 0, 0)), end, p, t(12, 0, 0), 0);
        assert_eq!((s, actions), (idle(t(12, 0, 0)), vec![]), "{end:?}");
    }
}

#[test]
fn a_chain_that_needs_a_base_starts_a_backup_unless_one_runs() {
    let (b, d) = schedules();
    let p = plans(&b, &d);
    let (s, actions) = step(idle(t(12, 0, 0)), Event::ChainNeedsBackup, p, t(9, 0, 0), 0);
    assert!(s.backing_up);
    assert_eq!(s.next, t(12, 0, 0), "the schedule stays");
    assert_eq!(actions, vec![Action::StartBackup(Trigger::Deltas), Action::Status]);
    let running = Loop { backing_up: true, ..idle(t(12, 0, 0)) };
    let (s, actions) = step(running.clone(), Event::ChainNeedsBackup, p, t(9, 0, 0), 0);
    assert_eq!((s, actions), (running, vec![]), "the running backup will be the new base");
}
