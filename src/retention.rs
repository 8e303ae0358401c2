//! Retention: which committed backups a policy keeps, and why. Pure: the backups, the policy and
//! the time zone go in; one decision per backup, with its reasons, comes out.

use std::collections::HashSet;
use std::fmt;

use chrono::{DateTime, Datelike, Timelike, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::manifest::BackupId;

/// How many backups of one destination to keep. Zero means "this rule keeps nothing".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    pub keep_last: u32,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
    /// Keep everything newer than (newest backup − this).
    pub keep_within: Option<std::time::Duration>,
    /// After the rules, drop the oldest unpinned backups until the total is under this.
    pub max_total_size: Option<u64>,
    /// Never fewer committed backups than this.
    pub min_keep: u32,
}

impl Policy {
    /// The local default: the last three.
    pub fn local_default() -> Self {
        Policy { keep_last: 3, ..Policy::default() }
    }

    /// The off-site default: a week of dailies, a month of weeklies, half a year of monthlies.
    pub fn remote_default() -> Self {
        Policy { keep_daily: 7, keep_weekly: 4, keep_monthly: 6, ..Policy::default() }
    }

    /// Whether any rule keeps anything; a policy without one would remove all but the newest.
    pub fn has_rule(&self) -> bool {
        self.keep_last + self.keep_hourly + self.keep_daily + self.keep_weekly + self.keep_monthly + self.keep_yearly
            > 0
            || self.keep_within.is_some_and(|d| !d.is_zero())
    }
}

/// What the policy needs to know of one committed backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: BackupId,
    /// Artifact size in bytes.
    pub size: u64,
    pub pinned: bool,
    /// The backup the running backup just committed: its own prune never removes it, whatever the
    /// clock says of it or of the others.
    pub this_run: bool,
    /// Taken by a member on its own while its cluster had no quorum (`manifest::EMERGENCY_LABEL`).
    pub emergency: bool,
}

/// How far past `now` a backup's time may lie before it counts as dated in the future. Members that
/// share a destination have clocks that differ by seconds, not by minutes.
pub const FUTURE_TOLERANCE: chrono::Duration = chrono::Duration::minutes(5);

/// Whether a backup's id dates it in the future: taken while a clock was wrong (or planted).
pub fn is_future_dated(id: &BackupId, now: DateTime<Utc>) -> bool {
    id.created() > now + FUTURE_TOLERANCE
}

/// Why a backup is kept or removed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub enum Reason {
    Newest,
    Pinned,
    /// Kept: the backup this run committed.
    ThisRun,
    /// Kept: an emergency backup (taken without quorum) with no normal backup newer than it.
    Emergency,
    /// Kept and left out of every rule: its id dates it after now (a wrong clock, here or where it was
    /// taken). It is never "newer" than a real backup, so it never pushes one out.
    FutureDated,
    Last(u32),
    Hourly(String),
    Daily(String),
    Weekly(String),
    Monthly(String),
    Yearly(String),
    Within(String),
    MinKeep,
    /// Removed: the rules would keep it, but the total is over `max_total_size`.
    OverMaxTotalSize,
    /// Removed: no rule keeps it.
    NoRule,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Emergency => f.write_str("emergency backup, no normal one newer"),
            Reason::Newest => f.write_str("newest"),
            Reason::Pinned => f.write_str("pinned"),
            Reason::ThisRun => f.write_str("taken by this run"),
            Reason::FutureDated => f.write_str("dated in the future (clock?): kept, counts for no rule"),
            Reason::Last(n) => write!(f, "last {n}"),
            Reason::Hourly(b) => write!(f, "hourly {b}"),
            Reason::Daily(b) => write!(f, "daily {b}"),
            Reason::Weekly(b) => write!(f, "weekly {b}"),
            Reason::Monthly(b) => write!(f, "monthly {b}"),
            Reason::Yearly(b) => write!(f, "yearly {b}"),
            Reason::Within(d) => write!(f, "within {d}"),
            Reason::MinKeep => f.write_str("min_keep"),
            Reason::OverMaxTotalSize => f.write_str("over max_total_size"),
            Reason::NoRule => f.write_str("no rule keeps it"),
        }
    }
}

impl From<Reason> for String {
    fn from(r: Reason) -> String {
        r.to_string()
    }
}

/// The verdict on one backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub id: BackupId,
    pub keep: bool,
    pub reasons: Vec<Reason>,
}

/// Names the calendar period a local time falls in.
type PeriodOf = fn(DateTime<Tz>) -> Reason;

/// Calendar periods, each with how many to keep and the function that names a backup's period.
fn periods(policy: &Policy) -> [(u32, PeriodOf); 5] {
    [
        (policy.keep_hourly, |t| {
            Reason::Hourly(format!("{:04}-{:02}-{:02}T{:02}", t.year(), t.month(), t.day(), t.hour()))
        }),
        (policy.keep_daily, |t| Reason::Daily(format!("{:04}-{:02}-{:02}", t.year(), t.month(), t.day()))),
        (policy.keep_weekly, |t| {
            let w = t.iso_week();
            Reason::Weekly(format!("{:04}-W{:02}", w.year(), w.week()))
        }),
        (policy.keep_monthly, |t| Reason::Monthly(format!("{:04}-{:02}", t.year(), t.month()))),
        (policy.keep_yearly, |t| Reason::Yearly(format!("{:04}", t.year()))),
    ]
}

/// Decides, for every backup, whether `policy` keeps it at `now`. The result is newest first and does
/// not depend on the order of `backups`. Guarantees: the newest backup not dated in the future is kept;
/// pinned backups, the backup of this run and backups dated in the future (after `now` +
/// `FUTURE_TOLERANCE`) are kept; the rules count only backups not dated in the future; at least
/// min(min_keep, count) of those are kept; planning the kept set again removes nothing.
pub fn plan(backups: &[Candidate], policy: &Policy, tz: Tz, now: DateTime<Utc>) -> Vec<Decision> {
    let mut all: Vec<&Candidate> = backups.iter().collect();
    all.sort_by(|a, b| b.id.cmp(&a.id));
    all.dedup_by(|a, b| a.id == b.id);
    let (future, sorted): (Vec<&Candidate>, Vec<&Candidate>) =
        all.into_iter().partition(|c| is_future_dated(&c.id, now));
    let mut out: Vec<Decision> =
        future.iter().map(|c| Decision { id: c.id.clone(), keep: true, reasons: vec![Reason::FutureDated] }).collect();
    out.extend(plan_ranked(&sorted, policy, tz));
    out
}

/// `plan` over backups none of which is dated in the future, newest first.
fn plan_ranked(sorted: &[&Candidate], policy: &Policy, tz: Tz) -> Vec<Decision> {
    let mut decisions: Vec<Decision> =
        sorted.iter().map(|c| Decision { id: c.id.clone(), keep: false, reasons: Vec::new() }).collect();
    let Some(newest) = sorted.first().map(|c| c.id.created()) else { return decisions };

    for (i, (c, d)) in sorted.iter().zip(decisions.iter_mut()).enumerate() {
        if i == 0 {
            d.reasons.push(Reason::Newest);
        }
        if c.pinned {
            d.reasons.push(Reason::Pinned);
        }
        if c.this_run {
            d.reasons.push(Reason::ThisRun);
        }
        if c.emergency && !sorted[..i].iter().any(|newer| !newer.emergency) {
            d.reasons.push(Reason::Emergency);
        }
        if (i as u64) < u64::from(policy.keep_last) {
            d.reasons.push(Reason::Last(policy.keep_last));
        }
        if let Some(within) = policy.keep_within
            && let Ok(within_c) = chrono::Duration::from_std(within)
            && c.id.created() >= newest - within_c
        {
            d.reasons.push(Reason::Within(humantime::format_duration(within).to_string()));
        }
    }
    for (count, name) in periods(policy) {
        let mut seen = HashSet::new();
        for (c, d) in sorted.iter().zip(decisions.iter_mut()) {
            if seen.len() as u64 >= u64::from(count) {
                break;
            }
            let reason = name(c.id.created().with_timezone(&tz));
            if seen.insert(reason.clone()) {
                d.reasons.push(reason);
            }
        }
    }
    for d in &mut decisions {
        d.keep = !d.reasons.is_empty();
    }

    let floor = (policy.min_keep as usize).min(decisions.len());
    if let Some(max) = policy.max_total_size {
        let mut total: u64 = sorted.iter().zip(&decisions).filter(|(_, d)| d.keep).map(|(c, _)| c.size).sum();
        let mut kept = decisions.iter().filter(|d| d.keep).count();
        for (c, d) in sorted.iter().zip(decisions.iter_mut()).rev() {
            if total <= max || kept <= floor {
                break;
            }
            let protected = d
                .reasons
                .iter()
                .any(|r| matches!(r, Reason::Newest | Reason::Pinned | Reason::ThisRun | Reason::Emergency));
            if d.keep && !protected {
                d.keep = false;
                d.reasons = vec![Reason::OverMaxTotalSize];
                total -= c.size;
                kept -= 1;
            }
        }
    }
    let mut kept = decisions.iter().filter(|d| d.keep).count();
    for d in &mut decisions {
        if kept >= floor {
            break;
        }
        if !d.keep {
            d.keep = true;
            d.reasons = vec![Reason::MinKeep];
            kept += 1;
        }
    }
    for d in &mut decisions {
        if !d.keep && d.reasons.is_empty() {
            d.reasons.push(Reason::NoRule);
        }
    }
    decisions
}

/// A file or object that is not a committed backup, seen while listing a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub name: String,
    pub kind: LeftoverKind,
    /// When it was written (or, for ids, when its backup started).
    pub time: DateTime<Utc>,
    /// For an unfinished multipart upload: its upload id.
    pub upload_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeftoverKind {
    /// A `.part` file of a run that did not finish.
    Partial,
    /// An artifact whose manifest was never written.
    Uncommitted,
    /// A manifest (or pin) whose artifact is gone: a removal that did not finish.
    HalfRemoved,
    /// An unfinished multipart upload.
    Upload,
}

impl fmt::Display for LeftoverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LeftoverKind::Partial => "unfinished write (.part)",
            LeftoverKind::Uncommitted => "artifact without a manifest",
            LeftoverKind::HalfRemoved => "manifest without its artifact (an unfinished removal)",
            LeftoverKind::Upload => "unfinished multipart upload",
        })
    }
}

/// Which leftovers to clean: those older than `grace` at `now`. Younger ones may belong to a run
/// that is still going (here or on another member sharing the destination). A leftover's age is told by
/// two clocks, the store's (or the file system's) and that of the member whose id it carries; it is
/// stale only when both say so, so a store clock that runs ahead never aborts an upload in progress.
/// An id dated in the future says nothing (that member's clock is wrong): the store's clock decides.
pub fn stale(leftovers: &[Leftover], now: DateTime<Utc>, grace: std::time::Duration) -> Vec<Leftover> {
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let newest_claim = |l: &Leftover| match id_in(&l.name) {
        Some(id) if !is_future_dated(&id, now) => l.time.max(id.created()),
        _ => l.time,
    };
    leftovers.iter().filter(|l| now.signed_duration_since(newest_claim(l)) > grace).cloned().collect()
}

/// The backup id a leftover's name carries, if any.
fn id_in(name: &str) -> Option<BackupId> {
    match crate::manifest::classify(name.strip_suffix(crate::manifest::PART_SUFFIX).unwrap_or(name)) {
        crate::manifest::Entry::Artifact(id)
        | crate::manifest::Entry::Manifest(id)
        | crate::manifest::Entry::Pin(id) => Some(id),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
