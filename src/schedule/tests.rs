use super::*;
use chrono::TimeZone;

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
}

fn berlin(text: &str) -> Schedule {
    Schedule::parse(text, chrono_tz::Europe::Berlin, Duration::ZERO).unwrap()
}

#[test]
fn five_and_six_fields() {
    let s = Schedule::parse("0 */6 * * *", Tz::UTC, Duration::ZERO).unwrap();
    assert_eq!(s.next_after(utc(2026, 11, 22, 6, 0, 0)), Some(utc(2026, 11, 22, 12, 0, 0)));
    assert_eq!(s.next_after(utc(2026, 11, 22, 5, 59, 59)), Some(utc(2026, 11, 22, 6, 0, 0)));
    let every_second = Schedule::parse("* * * * * *", Tz::UTC, Duration::ZERO).unwrap();
    assert_eq!(every_second.next_after(utc(2026, 1, 1, 0, 0, 0)), Some(utc(2026, 1, 1, 0, 0, 1)));
    let at_30s = Schedule::parse("30 0 * * * *", Tz::UTC, Duration::ZERO).unwrap();
    assert_eq!(at_30s.next_after(utc(2026, 1, 1, 0, 0, 0)), Some(utc(2026, 1, 1, 0, 0, 30)));
}

#[test]
fn bad_expressions_say_what_is_expected() {
    for bad in ["", "* * *", "0 */6 * *", "61 * * * *", "* * * * * * * *", "0 0 30 2 *"] {
        let e = Schedule::parse(bad, Tz::UTC, Duration::ZERO).unwrap_err();
        assert!(e.contains(bad.trim()) || e.contains("fields"), "{bad}: {e}");
    }
    assert!(Schedule::parse("0 */6 * *", Tz::UTC, Duration::ZERO).unwrap_err().contains("expected 5"));
    assert!(Schedule::parse("0 0 30 2 *", Tz::UTC, Duration::ZERO).is_err(), "30 February never fires");
}

#[test]
fn fire_times_follow_the_time_zone() {
    let s = berlin("0 6 * * *");
    // Winter: 06:00 in Berlin is 05:00 UTC; summer: 04:00 UTC.
    assert_eq!(s.next_after(utc(2026, 1, 10, 0, 0, 0)), Some(utc(2026, 1, 10, 5, 0, 0)));
    assert_eq!(s.next_after(utc(2026, 7, 10, 0, 0, 0)), Some(utc(2026, 7, 10, 4, 0, 0)));
}

#[test]
fn daylight_saving_time_starts() {
    // 2026-03-29: Berlin skips from 02:00 to 03:00. A 02:30 job cannot run at 02:30 that day; it must
    // not be lost for good, nor run twice.
    let s = berlin("30 2 * * *");
    let before = utc(2026, 3, 28, 12, 0, 0);
    let first = s.next_after(before).unwrap();
    let second = s.next_after(first).unwrap();
    assert!(first > before && first < utc(2026, 3, 30, 0, 0, 0), "fires on the day of the change: {first}");
    assert!(second > first + chrono::Duration::hours(12), "once that day: {first} then {second}");
    assert_eq!(second, utc(2026, 3, 30, 0, 30, 0), "back to 02:30 local the next day");
    // Hourly runs simply see a 23-hour day.
    let hourly = berlin("0 * * * *");
    let mut t = utc(2026, 3, 28, 23, 0, 0);
    let mut fires = 0;
    while let Some(n) = hourly.next_after(t).filter(|n| *n < utc(2026, 3, 29, 22, 0, 0)) {
        fires += 1;
        t = n;
    }
    assert_eq!(fires, 22, "the local day of 2026-03-29 has 23 hours");
}

#[test]
fn daylight_saving_time_ends() {
    // 2026-10-25: Berlin goes from 03:00 back to 02:00; 02:30 happens twice. Run once.
    let s = berlin("30 2 * * *");
    let first = s.next_after(utc(2026, 10, 24, 12, 0, 0)).unwrap();
    let second = s.next_after(first).unwrap();
    assert!(first >= utc(2026, 10, 25, 0, 30, 0) && first <= utc(2026, 10, 25, 1, 30, 0), "{first}");
    assert_eq!(second, utc(2026, 10, 26, 1, 30, 0), "not again an hour later: {first} then {second}");
}

#[test]
fn last_fire_and_interval() {
    let s = Schedule::parse("0 */6 * * *", Tz::UTC, Duration::ZERO).unwrap();
    assert_eq!(s.last_at_or_before(utc(2026, 11, 22, 6, 0, 0)), Some(utc(2026, 11, 22, 6, 0, 0)));
    assert_eq!(s.last_at_or_before(utc(2026, 11, 22, 11, 59, 0)), Some(utc(2026, 11, 22, 6, 0, 0)));
    assert_eq!(s.interval_around(utc(2026, 11, 22, 7, 0, 0)), Some(Duration::from_secs(6 * 3600)));
    let weekdays = Schedule::parse("0 1 * * 1-5", Tz::UTC, Duration::ZERO).unwrap();
    // Around a weekend the longest gap is Friday to Monday.
    assert_eq!(weekdays.interval_around(utc(2026, 11, 21, 12, 0, 0)), Some(Duration::from_secs(3 * 86400)));
}

#[test]
fn jitter_stays_within_bounds() {
    let j = Duration::from_secs(300);
    assert_eq!(jitter_delay(j, 0), Duration::ZERO);
    assert!(jitter_delay(j, u64::MAX) < j);
    assert!(jitter_delay(j, u64::MAX) > Duration::from_secs(299));
    let mid = jitter_delay(j, u64::MAX / 2);
    assert!(mid > Duration::from_secs(149) && mid < Duration::from_secs(151), "{mid:?}");
    assert_eq!(jitter_delay(Duration::ZERO, 12345), Duration::ZERO);
    let mut x = 0x12345678u64;
    for _ in 0..10_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        assert!(jitter_delay(j, x) < j);
    }
}

#[test]
fn catch_up_only_when_a_fire_was_missed() {
    let s = Schedule::parse("0 */6 * * *", Tz::UTC, Duration::ZERO).unwrap();
    let now = utc(2026, 11, 22, 13, 0, 0);
    // Last attempt before the 12:00 fire: missed it.
    assert_eq!(at_start(&s, Some(utc(2026, 11, 22, 6, 0, 5)), now, true), AtStart::CatchUp);
    // Last attempt after the 12:00 fire: nothing missed.
    assert_eq!(at_start(&s, Some(utc(2026, 11, 22, 12, 0, 3)), now, true), AtStart::Wait);
    // Disabled: the schedule decides.
    assert_eq!(at_start(&s, Some(utc(2026, 11, 20, 0, 0, 0)), now, false), AtStart::Wait);
    // Never ran (a new install): back up now, with or without catch_up.
    assert_eq!(at_start(&s, None, now, true), AtStart::FirstBackup);
    assert_eq!(at_start(&s, None, now, false), AtStart::FirstBackup);
    // A restart long after: one catch-up run, not one per missed fire.
    assert_eq!(at_start(&s, Some(utc(2026, 1, 1, 0, 0, 0)), now, true), AtStart::CatchUp);
    // A last attempt dated in the future (a clock that was ahead): no catch-up, the schedule decides.
    assert_eq!(at_start(&s, Some(utc(2030, 1, 1, 0, 0, 0)), now, true), AtStart::Wait);
}

#[test]
fn retries_back_off() {
    assert_eq!(retry_delay(Duration::from_secs(30), 1), Duration::from_secs(30));
    assert_eq!(retry_delay(Duration::from_secs(30), 2), Duration::from_secs(60));
    assert_eq!(retry_delay(Duration::from_secs(30), 3), Duration::from_secs(120));
    assert_eq!(retry_delay(Duration::from_secs(30), 10), Duration::from_secs(600));
    assert_eq!(retry_delay(Duration::from_secs(30), u32::MAX), Duration::from_secs(600));
    assert_eq!(retry_delay(Duration::from_secs(1), 3), Duration::from_secs(4));
    assert_eq!(retry_delay(Duration::from_secs(900), 2), Duration::from_secs(900), "a long first delay is not cut");
}
