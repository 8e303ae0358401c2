//! Reading one key of any table: a path, a duration, a retention table; a problem becomes an `Issue`
//! named with the key. Pure.

use std::path::PathBuf;
use std::time::Duration;

use super::raw::RawRetention;
use super::settings::Issue;
use super::units::{parse_duration, parse_size};
use crate::retention::Policy;

/// A retention table: absent means the destination's default; present replaces it entirely.
pub(super) fn retention(raw: Option<RawRetention>, key: &str, default: Policy, issues: &mut Vec<Issue>) -> Policy {
    let Some(raw) = raw else { return default };
    let keep_within = raw.keep_within.map(|text| match parse_duration(&text) {
        Ok(d) => d,
        Err(e) => {
            issues.push(Issue::new(format!("{key}.keep_within"), e));
            Duration::ZERO
        }
    });
    let max_total_size = raw.max_total_size.map(|text| match parse_size(&text) {
        Ok(0) => {
            issues.push(Issue::new(format!("{key}.max_total_size"), "must be larger than zero"));
            0
        }
        Ok(size) => size,
        Err(e) => {
            issues.push(Issue::new(format!("{key}.max_total_size"), e));
            0
        }
    });
    let policy = Policy {
        keep_last: raw.keep_last.unwrap_or(0),
        keep_hourly: raw.keep_hourly.unwrap_or(0),
        keep_daily: raw.keep_daily.unwrap_or(0),
        keep_weekly: raw.keep_weekly.unwrap_or(0),
        keep_monthly: raw.keep_monthly.unwrap_or(0),
        keep_yearly: raw.keep_yearly.unwrap_or(0),
        keep_within,
        max_total_size,
        min_keep: raw.min_keep.unwrap_or(0),
    };
    if !policy.has_rule() && !issues.iter().any(|i| i.key.starts_with(key)) {
        issues.push(Issue::new(
            key,
            "keeps nothing: set at least one of keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly or keep_within (without a rule, pruning would remove every backup but the newest); remove the table to get the default",
        ));
    }
    policy
}

pub(super) fn path_key(value: Option<String>, key: &str, issues: &mut Vec<Issue>) -> Option<PathBuf> {
    match value {
        Some(v) if v.is_empty() => {
            issues.push(Issue::new(key, "is empty: give an absolute path or remove the key"));
            None
        }
        Some(v) if !v.starts_with('/') => {
            // Somewhere the service may use: it writes only under its state dir, and reads its files
            // from /etc.
            let base = if key == "local.dir" { "/var/lib/etcd-backupd" } else { "/etc/etcd-backupd" };
            issues.push(Issue::new(
                key,
                format!("\"{v}\" is a relative path: give an absolute path, such as \"{base}/{v}\""),
            ));
            None
        }
        other => other.map(PathBuf::from),
    }
}

pub(super) fn duration_key(value: Option<String>, key: &str, default: Duration, issues: &mut Vec<Issue>) -> Duration {
    match value.as_deref().map(parse_duration) {
        None => default,
        Some(Ok(d)) if d.is_zero() => {
            issues.push(Issue::new(key, "must be longer than zero"));
            default
        }
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            issues.push(Issue::new(key, e));
            default
        }
    }
}
