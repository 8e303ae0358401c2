//! Pruning one destination: list it, plan with the pure retention policy, remove what the plan
//! removes (artifact first, manifest last), and clean leftovers older than the grace period.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Result, bail};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::manifest::BackupId;
use crate::retention::{self, Candidate, Decision, Leftover, LeftoverKind, Policy, Reason};
use crate::store::{Destination, Ignored, Stored};

/// What pruning one destination found and did.
#[derive(Debug, Serialize)]
pub struct PruneReport {
    pub destination: crate::store::Kind,
    pub place: String,
    pub dry_run: bool,
    pub decisions: Vec<Decision>,
    /// Leftovers of crashed runs and unfinished removals, and whether they are old enough to clean.
    pub leftovers: Vec<LeftoverReport>,
    pub ignored: Vec<IgnoredReport>,
    /// Delta segments removed (or, in a dry run, to remove), and why.
    pub segments: Vec<SegmentReport>,
    /// What could not be removed, and why.
    pub errors: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct LeftoverReport {
    pub name: String,
    pub kind: LeftoverKind,
    pub time: DateTime<Utc>,
    pub clean: bool,
}

#[derive(Debug, Serialize)]
pub struct SegmentReport {
    pub id: String,
    pub why: String,
}

#[derive(Debug, Serialize)]
pub struct IgnoredReport {
    pub name: String,
    pub why: String,
}

impl PruneReport {
    pub fn removed(&self) -> usize {
        self.decisions.iter().filter(|d| !d.keep).count()
    }
}

/// How to prune.
pub struct PruneOptions {
    pub policy: Policy,
    pub timezone: Tz,
    pub now: DateTime<Utc>,
    pub leftover_grace: Duration,
    pub dry_run: bool,
    /// The backup the calling run just committed: never removed by this prune.
    pub this_run: Option<BackupId>,
    /// `[deltas] keep_for`: delta segments go once their base is this old (they go with their base in
    /// any case).
    pub segments_keep_for: Option<Duration>,
}

/// Prunes one destination. Errors removing single backups are reported in the result; a destination
/// that cannot even be listed is an `Err`.
pub async fn prune(destination: &Destination, options: &PruneOptions) -> Result<PruneReport> {
    let listing = destination.list().await?;
    let candidates: Vec<Candidate> = listing
        .backups
        .iter()
        .map(|s| Candidate {
            id: s.manifest.id.clone(),
            size: s.manifest.artifact.size,
            pinned: s.pinned,
            this_run: options.this_run.as_ref() == Some(&s.manifest.id),
            emergency: s.manifest.is_emergency(),
        })
        .collect();
    let decisions = retention::plan(&candidates, &options.policy, options.timezone, options.now);
    for d in decisions.iter().filter(|d| d.reasons.contains(&Reason::FutureDated)) {
        tracing::warn!(
            destination = %destination.kind(), id = %d.id, now = %options.now,
            "a backup is dated in the future (a clock was wrong when it was taken, or it was planted): it is kept and counts for no retention rule; check the clocks, and delete it once a newer backup exists"
        );
    }
    let doomed: Vec<&Stored> =
        listing.backups.iter().filter(|s| decisions.iter().any(|d| !d.keep && d.id == s.manifest.id)).collect();
    // The plan guarantees these; removal is the one place where a bug would cost a backup, so check again.
    let newest = decisions.iter().find(|d| d.reasons.contains(&Reason::Newest)).map(|d| &d.id);
    if doomed
        .iter()
        .any(|s| s.pinned || Some(&s.manifest.id) == newest || Some(&s.manifest.id) == options.this_run.as_ref())
        || doomed.iter().any(|s| retention::is_future_dated(&s.manifest.id, options.now))
    {
        bail!(
            "refusing to prune {}: the plan would remove the newest, a pinned, a future-dated or this run's backup",
            destination.place()
        );
    }
    let stale = retention::stale(&listing.leftovers, options.now, options.leftover_grace);
    let leftovers = listing
        .leftovers
        .iter()
        .map(|l: &Leftover| LeftoverReport {
            name: l.name.clone(),
            kind: l.kind,
            time: l.time,
            clean: stale.iter().any(|s| s.name == l.name && s.upload_id == l.upload_id),
        })
        .collect();
    let ignored = listing
        .ignored
        .iter()
        .map(|(name, why): &Ignored| IgnoredReport { name: name.clone(), why: why.clone() })
        .collect();
    // The backups kept after this prune decide which delta segments go.
    let kept: std::collections::HashMap<BackupId, bool> = listing
        .backups
        .iter()
        .filter(|s| decisions.iter().any(|d| d.keep && d.id == s.manifest.id))
        .map(|s| (s.manifest.id.clone(), s.pinned))
        .collect();
    let segments = crate::deltas::retention::plan(&listing.segments, &kept, options.segments_keep_for, options.now);
    let mut report = PruneReport {
        destination: destination.kind(),
        place: destination.place(),
        dry_run: options.dry_run,
        decisions,
        leftovers,
        ignored,
        segments: segments
            .iter()
            .map(|(s, why)| SegmentReport { id: s.id.to_string(), why: why.to_string() })
            .collect(),
        errors: Vec::new(),
    };
    if options.dry_run {
        return Ok(report);
    }
    let mut not_removed = HashSet::new();
    for (id, why) in destination.remove(&doomed).await {
        tracing::error!(destination = %destination.kind(), id = %id, %why, "cannot remove backup");
        report.errors.push(format!("{id}: {why}"));
        not_removed.insert(id);
    }
    for d in report.decisions.iter().filter(|d| !d.keep && !not_removed.contains(&d.id)) {
        let reasons: Vec<String> = d.reasons.iter().map(ToString::to_string).collect();
        tracing::info!(destination = %destination.kind(), id = %d.id, reasons = %reasons.join(", "), "removed backup");
    }
    // Segments after their bases: a base removed first never leaves a chain that looks restorable
    // without it (a chain is read from its base).
    let doomed_segments: Vec<&crate::store::SegmentPair> = segments.iter().map(|(s, _)| *s).collect();
    let failed_segments = destination.remove_segments(&doomed_segments).await;
    for (id, why) in &failed_segments {
        tracing::error!(destination = %destination.kind(), segment = %id, %why, "cannot remove delta segment");
        report.errors.push(format!("{id}: {why}"));
    }
    for (s, why) in segments.iter().filter(|(s, _)| !failed_segments.iter().any(|(id, _)| id == &s.id)) {
        tracing::info!(destination = %destination.kind(), segment = %s.id, %why, "removed delta segment");
    }
    report.segments.retain(|r| !failed_segments.iter().any(|(id, _)| id.to_string() == r.id));
    let mut not_cleaned = HashSet::new();
    for (name, why) in destination.clean(&stale).await {
        tracing::error!(destination = %destination.kind(), %name, %why, "cannot clean leftover");
        report.errors.push(format!("{name}: {why}"));
        not_cleaned.insert(name);
    }
    for l in stale.iter().filter(|l| !not_cleaned.contains(&l.name)) {
        tracing::info!(destination = %destination.kind(), name = %l.name, kind = %l.kind, since = %l.time, "cleaned leftover");
    }
    Ok(report)
}
