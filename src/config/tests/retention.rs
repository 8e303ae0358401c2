use super::*;
use crate::retention::Policy;

#[test]
fn defaults_per_destination() {
    let s = parse(&format!("{}[s3]\nbucket = \"b-1\"\n", minimal())).unwrap();
    assert_eq!(s.local.retention, Policy::local_default());
    assert_eq!(s.s3.unwrap().retention, Policy::remote_default());
    assert_eq!(s.timezone, chrono_tz::Tz::UTC);
    assert_eq!(s.leftover_grace, Duration::from_secs(86400));
}

#[test]
fn a_table_replaces_the_default() {
    let text = format!(
        "{}[local.retention]\nkeep_daily = 2\n[s3]\nbucket = \"b-1\"\n[s3.retention]\nkeep_last = 4\nkeep_hourly = 24\nkeep_daily = 7\nkeep_weekly = 4\nkeep_monthly = 12\nkeep_yearly = 2\nkeep_within = \"2d\"\nmax_total_size = \"20GiB\"\nmin_keep = 2\n[schedule]\ntimezone = \"Europe/Berlin\"\n[backup]\nleftover_grace = \"6h\"\n",
        minimal()
    );
    let s = parse(&text).unwrap();
    assert_eq!(s.local.retention, Policy { keep_daily: 2, ..Policy::default() });
    assert_eq!(
        s.s3.unwrap().retention,
        Policy {
            keep_last: 4,
            keep_hourly: 24,
            keep_daily: 7,
            keep_weekly: 4,
            keep_monthly: 12,
            keep_yearly: 2,
            keep_within: Some(Duration::from_secs(2 * 86400)),
            max_total_size: Some(20 << 30),
            min_keep: 2,
        }
    );
    assert_eq!(s.timezone, chrono_tz::Europe::Berlin);
    assert_eq!(s.leftover_grace, Duration::from_secs(6 * 3600));
}

#[test]
fn a_policy_that_keeps_nothing_is_refused() {
    let p = one(&format!("{}[local.retention]\nmin_keep = 2\nkeep_daily = 0\n", minimal()));
    assert_eq!(p.key, "local.retention");
    assert_eq!(p.line, Some(6));
    assert!(p.message.contains("keeps nothing"), "{}", p.message);
}

#[test]
fn bad_values_name_their_key() {
    let p = one(&format!("{}[local.retention]\nkeep_last = -1\n", minimal()));
    assert_eq!(p.key, "local.retention.keep_last");
    assert_eq!(p.line, Some(7));
    let p = one(&format!("{}[local.retention]\nkeep_lats = 1\n", minimal()));
    assert_eq!(p.key, "local.retention.keep_lats");
    assert!(p.message.contains("unknown field"));
    let p = one(&format!("{}[schedule]\ntimezone = \"Mars/Olympus\"\n", minimal()));
    assert_eq!(p.key, "schedule.timezone");
    assert!(p.message.contains("IANA"));
}
