//! `[deltas]`: point-in-time recovery between full snapshots. Pure.

use std::time::Duration;

use super::keys::duration_key;
use super::raw::RawDeltas;
use super::settings::{DEFAULT_DELTA_INTERVAL, DEFAULT_DELTA_SIZE, DeltasSettings, Issue};
use super::units::{format_size, parse_size};

/// The least and most a segment may hold: below, the overhead of a manifest per segment dominates;
/// above, a restore holds too much of one segment in memory.
pub const MIN_DELTA_SIZE: u64 = 64 * 1024;
pub const MAX_DELTA_SIZE: u64 = 256 * 1024 * 1024;
/// Segments are closed at least this often, and never less often than this.
pub const MIN_DELTA_INTERVAL: Duration = Duration::from_secs(1);
pub const MAX_DELTA_INTERVAL: Duration = Duration::from_secs(3600);

/// `None` unless `enabled = true`; the other keys are checked either way.
pub(super) fn validate_deltas(raw: RawDeltas, has_etcd: bool, issues: &mut Vec<Issue>) -> Option<DeltasSettings> {
    let max_interval = duration_key(raw.max_interval, "deltas.max_interval", DEFAULT_DELTA_INTERVAL, issues);
    if !(MIN_DELTA_INTERVAL..=MAX_DELTA_INTERVAL).contains(&max_interval) {
        issues.push(Issue::new(
            "deltas.max_interval",
            "must be from 1s to 1h: it is how many seconds of changes a lost member may take with it",
        ));
    }
    let max_size = match raw.max_size.as_deref().map(parse_size) {
        None => DEFAULT_DELTA_SIZE,
        Some(Ok(size)) if (MIN_DELTA_SIZE..=MAX_DELTA_SIZE).contains(&size) => size,
        Some(Ok(_)) => {
            issues.push(Issue::new(
                "deltas.max_size",
                format!(
                    "must be from {} to {}: a restore reads one segment at a time into memory",
                    format_size(MIN_DELTA_SIZE),
                    format_size(MAX_DELTA_SIZE)
                ),
            ));
            DEFAULT_DELTA_SIZE
        }
        Some(Err(e)) => {
            issues.push(Issue::new("deltas.max_size", e));
            DEFAULT_DELTA_SIZE
        }
    };
    let keep_for = raw.keep_for.map(|text| duration_key(Some(text), "deltas.keep_for", Duration::ZERO, issues));
    let enabled = raw.enabled.unwrap_or(false);
    if enabled && !has_etcd {
        issues.push(Issue::new(
            "deltas.enabled",
            "needs [etcd]: the changes are read from the local member's watch (a verification host restores deltas without it)",
        ));
    }
    enabled.then_some(DeltasSettings { max_interval, max_size, keep_for })
}
