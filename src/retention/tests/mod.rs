use super::*;
use chrono::TimeZone;

/// A `now` after every backup of these tests (none is dated in the future).
const LATER: DateTime<Utc> = DateTime::from_timestamp(4_102_444_800, 0).unwrap(); // 2100-01-01

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

fn backup(t: DateTime<Utc>) -> Candidate {
    Candidate { id: BackupId::new(t, t.timestamp(), "a"), size: 100, pinned: false, this_run: false, emergency: false }
}

/// Kept backups as "YYYY-MM-DD HH:MM reasons…", newest first.
fn kept(backups: &[Candidate], policy: &Policy, tz: Tz) -> Vec<String> {
    plan(backups, policy, tz, LATER)
        .into_iter()
        .filter(|d| d.keep)
        .map(|d| {
            let reasons: Vec<String> = d.reasons.iter().map(ToString::to_string).collect();
            format!("{} {}", d.id.created().format("%Y-%m-%d %H:%M"), reasons.join(", "))
        })
        .collect()
}

/// Every 6 hours from 2026-10-01 to 2026-11-22 06:00.
fn six_hourly() -> Vec<Candidate> {
    let mut t = at(2026, 10, 1, 0, 0);
    let mut out = Vec::new();
    while t <= at(2026, 11, 22, 6, 0) {
        out.push(backup(t));
        t += chrono::Duration::hours(6);
    }
    out
}

#[test]
fn keep_last() {
    let policy = Policy { keep_last: 3, ..Policy::default() };
    assert_eq!(
        kept(&six_hourly(), &policy, Tz::UTC),
        vec!["2026-11-22 06:00 newest, last 3", "2026-11-22 00:00 last 3", "2026-11-21 18:00 last 3"]
    );
}

#[test]
fn keep_daily_keeps_the_newest_of_each_day() {
    let policy = Policy { keep_daily: 3, ..Policy::default() };
    assert_eq!(
        kept(&six_hourly(), &policy, Tz::UTC),
        vec![
            "2026-11-22 06:00 newest, daily 2026-11-22",
            "2026-11-21 18:00 daily 2026-11-21",
            "2026-11-20 18:00 daily 2026-11-20"
        ]
    );
}

#[test]
fn calendar_rules_count_periods_that_have_backups() {
    // A gap: nothing between 11-10 and 11-20. Daily 3 reaches back past it.
    let backups: Vec<Candidate> =
        [at(2026, 11, 1, 1, 0), at(2026, 11, 9, 1, 0), at(2026, 11, 10, 1, 0), at(2026, 11, 20, 1, 0)]
            .into_iter()
            .map(backup)
            .collect();
    let policy = Policy { keep_daily: 3, ..Policy::default() };
    assert_eq!(
        kept(&backups, &policy, Tz::UTC),
        vec![
            "2026-11-20 01:00 newest, daily 2026-11-20",
            "2026-11-10 01:00 daily 2026-11-10",
            "2026-11-09 01:00 daily 2026-11-09"
        ]
    );
}

#[test]
fn keep_hourly_weekly_monthly_yearly() {
    let b = six_hourly();
    let p = |f: fn(&mut Policy)| {
        let mut p = Policy::default();
        f(&mut p);
        p
    };
    assert_eq!(
        kept(&b, &p(|p| p.keep_hourly = 2), Tz::UTC),
        vec!["2026-11-22 06:00 newest, hourly 2026-11-22T06", "2026-11-22 00:00 hourly 2026-11-22T00"]
    );
    // 2026-11-22 is a Sunday: ISO week 47 runs 11-16..11-22.
    assert_eq!(
        kept(&b, &p(|p| p.keep_weekly = 3), Tz::UTC),
        vec![
            "2026-11-22 06:00 newest, weekly 2026-W47",
            "2026-11-15 18:00 weekly 2026-W46",
            "2026-11-08 18:00 weekly 2026-W45"
        ]
    );
    assert_eq!(
        kept(&b, &p(|p| p.keep_monthly = 5), Tz::UTC),
        vec!["2026-11-22 06:00 newest, monthly 2026-11", "2026-10-31 18:00 monthly 2026-10"]
    );
    let years: Vec<Candidate> =
        [at(2024, 5, 1, 0, 0), at(2024, 12, 31, 0, 0), at(2025, 6, 1, 0, 0), at(2026, 1, 1, 0, 0)]
            .into_iter()
            .map(backup)
            .collect();
    assert_eq!(
        kept(&years, &p(|p| p.keep_yearly = 2), Tz::UTC),
        vec!["2026-01-01 00:00 newest, yearly 2026", "2025-06-01 00:00 yearly 2025"]
    );
}

#[test]
fn iso_weeks_cross_years() {
    // 2026-01-01 is a Thursday: it belongs to 2026-W01; 2025-12-28 (Sunday) to 2025-W52.
    let b: Vec<Candidate> =
        [at(2025, 12, 28, 12, 0), at(2025, 12, 29, 12, 0), at(2026, 1, 1, 12, 0)].into_iter().map(backup).collect();
    let policy = Policy { keep_weekly: 5, ..Policy::default() };
    assert_eq!(
        kept(&b, &policy, Tz::UTC),
        vec!["2026-01-01 12:00 newest, weekly 2026-W01", "2025-12-28 12:00 weekly 2025-W52"]
    );
}

#[test]
fn days_follow_the_time_zone() {
    // 23:30 UTC on 11-20 is 08:30 on 11-21 in Tokyo.
    let b: Vec<Candidate> = [at(2026, 11, 20, 14, 0), at(2026, 11, 20, 23, 30)].into_iter().map(backup).collect();
    let policy = Policy { keep_daily: 2, ..Policy::default() };
    assert_eq!(kept(&b, &policy, Tz::UTC).len(), 1, "same UTC day");
    assert_eq!(
        kept(&b, &policy, chrono_tz::Asia::Tokyo),
        vec!["2026-11-20 23:30 newest, daily 2026-11-21", "2026-11-20 14:00 daily 2026-11-20"]
    );
}

#[test]
fn keep_within_is_relative_to_the_newest_backup() {
    let policy = Policy { keep_within: Some(std::time::Duration::from_secs(86400)), ..Policy::default() };
    let k = kept(&six_hourly(), &policy, Tz::UTC);
    assert_eq!(k.len(), 5, "{k:?}");
    assert_eq!(k[4], "2026-11-21 06:00 within 1day");
}

#[test]
fn pinned_backups_are_always_kept() {
    let mut b = six_hourly();
    b[0].pinned = true; // the oldest
    let policy = Policy { keep_last: 1, ..Policy::default() };
    assert_eq!(kept(&b, &policy, Tz::UTC), vec!["2026-11-22 06:00 newest, last 1", "2026-10-01 00:00 pinned"]);
}

#[test]
fn max_total_size_drops_the_oldest_unpinned_but_never_the_newest() {
    let mut b = six_hourly();
    let n = b.len();
    b[n - 5].pinned = true;
    let policy = Policy { keep_last: 6, max_total_size: Some(300), ..Policy::default() };
    let decisions = plan(&b, &policy, Tz::UTC, LATER);
    let keep: Vec<usize> = decisions.iter().enumerate().filter(|(_, d)| d.keep).map(|(i, _)| i).collect();
    assert_eq!(keep, vec![0, 1, 4], "newest, next newest, and the pinned one");
    assert_eq!(decisions[5].reasons, vec![Reason::OverMaxTotalSize]);
    assert_eq!(decisions[6].reasons, vec![Reason::NoRule]);
    // Even a limit below the newest backup keeps the newest.
    let tiny = Policy { keep_last: 3, max_total_size: Some(1), ..Policy::default() };
    let k = kept(&b, &tiny, Tz::UTC);
    assert_eq!(k.len(), 2, "{k:?}");
    assert!(k[0].ends_with("newest, last 3"));
}

#[test]
fn min_keep_is_a_floor_even_against_max_total_size() {
    let b = six_hourly();
    let policy = Policy { keep_last: 5, max_total_size: Some(100), min_keep: 3, ..Policy::default() };
    let k = kept(&b, &policy, Tz::UTC);
    assert_eq!(k.len(), 3, "{k:?}");
    let only_newest = Policy { keep_daily: 1, min_keep: 2, ..Policy::default() };
    let k = kept(&b, &only_newest, Tz::UTC);
    assert_eq!(k, vec!["2026-11-22 06:00 newest, daily 2026-11-22", "2026-11-22 00:00 min_keep"]);
}

#[test]
fn a_rule_that_keeps_nothing_still_keeps_the_newest() {
    let policy = Policy::default();
    assert!(!policy.has_rule());
    assert_eq!(kept(&six_hourly(), &policy, Tz::UTC), vec!["2026-11-22 06:00 newest"]);
    assert!(Policy::local_default().has_rule() && Policy::remote_default().has_rule());
    assert!(Policy { keep_within: Some(std::time::Duration::from_secs(1)), ..Policy::default() }.has_rule());
    assert!(!Policy { min_keep: 3, max_total_size: Some(1), ..Policy::default() }.has_rule());
}

/// The defect: with `keep_last = 1`, one backup taken while the clock was years ahead made every new
/// backup remove itself in its own prune.
#[test]
fn a_backup_dated_in_the_future_never_pushes_out_a_new_one() {
    let now = at(2026, 11, 22, 6, 0);
    let skewed = backup(at(2031, 3, 1, 0, 0));
    let older = backup(at(2026, 11, 21, 6, 0));
    let mut new = backup(now);
    new.this_run = true;
    let policy = Policy { keep_last: 1, ..Policy::default() };
    let d = plan(&[older.clone(), skewed.clone(), new.clone()], &policy, Tz::UTC, now);
    let view: Vec<(String, bool, Vec<String>)> = d
        .iter()
        .map(|d| {
            (d.id.created().format("%Y-%m-%d").to_string(), d.keep, d.reasons.iter().map(ToString::to_string).collect())
        })
        .collect();
    assert_eq!(
        view,
        vec![
            ("2031-03-01".into(), true, vec!["dated in the future (clock?): kept, counts for no rule".into()]),
            ("2026-11-22".into(), true, vec!["newest".into(), "taken by this run".into(), "last 1".into()]),
            ("2026-11-21".into(), false, vec!["no rule keeps it".into()]),
        ]
    );
    // Within the tolerance a backup is not "in the future": a member whose clock is a minute ahead.
    let ahead = backup(now + chrono::Duration::minutes(1));
    let d = plan(&[ahead.clone(), older], &policy, Tz::UTC, now);
    assert_eq!(d[0].reasons, vec![Reason::Newest, Reason::Last(1)]);
    assert!(!is_future_dated(&ahead.id, now) && is_future_dated(&skewed.id, now));
}

/// The clock went back: the backup just taken is dated before the others, and its own prune keeps it.
#[test]
fn the_backup_of_this_run_survives_a_clock_that_went_back() {
    let now = at(2026, 1, 1, 0, 0);
    let mut new = backup(now);
    new.this_run = true;
    let real = backup(at(2026, 1, 1, 0, 3)); // within the tolerance: not future-dated
    let policy = Policy { keep_last: 1, max_total_size: Some(1), ..Policy::default() };
    let d = plan(&[real, new.clone()], &policy, Tz::UTC, now);
    assert!(d.iter().all(|d| d.keep), "{d:?}");
    assert_eq!(d[1].reasons, vec![Reason::ThisRun]);
}

#[test]
fn empty_input_plans_nothing() {
    assert!(plan(&[], &Policy::remote_default(), Tz::UTC, LATER).is_empty());
}

#[test]
fn removals_name_their_reason() {
    let b = six_hourly();
    let d = plan(&b, &Policy { keep_last: 1, ..Policy::default() }, Tz::UTC, LATER);
    assert!(d[1..].iter().all(|d| !d.keep && d.reasons == vec![Reason::NoRule]));
    assert_eq!(Reason::NoRule.to_string(), "no rule keeps it");
}

#[test]
fn stale_leftovers_respect_the_grace_period() {
    let now = at(2026, 11, 22, 12, 0);
    let l = |h: i64, kind| Leftover {
        name: format!("x{h}"),
        kind,
        time: now - chrono::Duration::hours(h),
        upload_id: None,
    };
    let all = vec![
        l(1, LeftoverKind::Partial),
        l(23, LeftoverKind::Uncommitted),
        l(25, LeftoverKind::HalfRemoved),
        l(48, LeftoverKind::Upload),
    ];
    let names: Vec<String> =
        stale(&all, now, std::time::Duration::from_secs(24 * 3600)).into_iter().map(|l| l.name).collect();
    assert_eq!(names, vec!["x25", "x48"]);
}

/// An upload the store dates a day back (its clock runs ahead) but whose id says it began a minute ago
/// is a backup in progress on a member: never aborted. An id in the future leaves the store's clock to
/// decide.
#[test]
fn a_leftover_is_stale_only_when_both_clocks_say_so() {
    let now = at(2026, 11, 22, 12, 0);
    let grace = std::time::Duration::from_secs(24 * 3600);
    let upload = |id_at: DateTime<Utc>, store_at: DateTime<Utc>| Leftover {
        name: BackupId::new(id_at, 5, "a").artifact_name(crate::manifest::Compression::Zstd { level: 3 }),
        kind: LeftoverKind::Upload,
        time: store_at,
        upload_id: Some("u".into()),
    };
    let days = |d: i64| now - chrono::Duration::days(d);
    let cases = [
        (upload(now - chrono::Duration::minutes(1), days(2)), false),
        (upload(days(2), now - chrono::Duration::minutes(1)), false),
        (upload(days(2), days(3)), true),
        (upload(now + chrono::Duration::days(365), days(2)), true),
        (upload(now + chrono::Duration::days(365), now), false),
    ];
    for (i, (l, expected)) in cases.iter().enumerate() {
        assert_eq!(!stale(std::slice::from_ref(l), now, grace).is_empty(), *expected, "case {i}: {l:?}");
    }
    let part = Leftover {
        name: format!("{}.part", BackupId::new(now, 5, "a").artifact_name(crate::manifest::Compression::None)),
        kind: LeftoverKind::Partial,
        time: days(3),
        upload_id: None,
    };
    assert!(stale(&[part], now, grace).is_empty(), "a .part of a run that started now");
}

/// A member's emergency backup (its cluster had no quorum) stays until a normal backup is newer, whatever
/// the rules say, and then goes like any other.
#[test]
fn emergency_backups_stay_until_a_normal_one_is_newer() {
    let policy = Policy { keep_last: 1, ..Policy::default() };
    let now = at(2026, 11, 22, 12, 0);
    let emergency = |t| Candidate { emergency: true, ..backup(t) };
    let backups =
        [backup(at(2026, 11, 22, 6, 0)), emergency(at(2026, 11, 22, 7, 0)), emergency(at(2026, 11, 22, 8, 0))];
    let kept: Vec<bool> = plan(&backups, &policy, chrono_tz::UTC, now).iter().map(|d| d.keep).collect();
    assert_eq!(kept, vec![true, true, false], "newest first: both emergencies stay, the older normal one goes");
    let plans = plan(&backups, &policy, chrono_tz::UTC, now);
    assert!(plans[1].reasons.contains(&Reason::Emergency), "{:?}", plans[1]);
    let mut later = backups.to_vec();
    later.push(backup(at(2026, 11, 22, 9, 0)));
    let kept: Vec<bool> = plan(&later, &policy, chrono_tz::UTC, now).iter().map(|d| d.keep).collect();
    assert_eq!(kept, vec![true, false, false, false], "a normal backup is newer: the emergencies go");
    let small = Policy { max_total_size: Some(1), ..policy };
    assert!(plan(&backups, &small, chrono_tz::UTC, now)[1].keep, "max_total_size never removes an emergency backup");
}

mod properties;
