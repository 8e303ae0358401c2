//! A chain: a full snapshot and the delta segments that follow it, each continuing the one before.
//! Which of the segments found can be used (up to the first break, which is named), what a chain can
//! restore, and which segments a restore to a revision needs. Pure.

use chrono::{DateTime, Utc};

use super::manifest::SegmentManifest;
use crate::manifest::BackupId;

/// Why a chain stops before the last segment found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Break {
    #[error("segment {seq} of the chain from {base} is missing (segments after it cannot be used)")]
    Missing { base: BackupId, seq: u32 },
    #[error(
        "segment {seq} of the chain from {base} starts at revision {found}, not at {expected}: revisions are missing"
    )]
    Gap { base: BackupId, seq: u32, expected: i64, found: i64 },
    #[error("segment {seq} of the chain from {base} does not continue segment {}: its record of the one before differs", seq - 1)]
    Link { base: BackupId, seq: u32 },
    #[error("segment {seq} of the chain from {base} names base revision {found}, not the snapshot's {expected}")]
    Base { base: BackupId, seq: u32, expected: i64, found: i64 },
}

/// The usable part of a chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Chain<'a> {
    pub base: BackupId,
    /// The revision the base snapshot holds.
    pub base_revision: i64,
    /// When the base's snapshot had surely been read: its backup's end (`taken_by`); its id's time
    /// until told. A time before it may be before the snapshot's revision: the base does not hold it.
    pub base_taken: DateTime<Utc>,
    /// Segments 1, 2, … in order, each continuing the one before.
    pub segments: Vec<&'a SegmentManifest>,
    /// Where the chain stops short of a segment that was found, if it does.
    pub broken: Option<Break>,
}

/// Follows the chain from `base` (holding `base_revision`) through `found`: the segments of that base
/// in any order (others are ignored), up to the first that does not continue it.
pub fn follow<'a>(
    base: &BackupId,
    base_revision: i64,
    found: impl IntoIterator<Item = &'a SegmentManifest>,
) -> Chain<'a> {
    let mut found: Vec<&SegmentManifest> = found.into_iter().filter(|m| m.id.base() == base).collect();
    found.sort_by_key(|m| m.id.seq());
    found.dedup_by_key(|m| m.id.seq());
    let mut chain =
        Chain { base: base.clone(), base_revision, base_taken: base.created(), segments: Vec::new(), broken: None };
    for m in found {
        let seq = chain.segments.len() as u32 + 1;
        let base = base.clone();
        let previous = chain.segments.last();
        let expected = previous.map_or(base_revision, |p| p.last_revision).saturating_add(1);
        chain.broken = if m.id.seq() != seq {
            Some(Break::Missing { base, seq })
        } else if m.base_revision != base_revision {
            Some(Break::Base { base, seq, expected: base_revision, found: m.base_revision })
        } else if m.first_revision != expected {
            Some(Break::Gap { base, seq, expected, found: m.first_revision })
        } else if m.previous_sha256.as_ref() != previous.map(|p| &p.body.sha256) {
            Some(Break::Link { base, seq })
        } else {
            None
        };
        if chain.broken.is_some() {
            break;
        }
        chain.segments.push(m);
    }
    chain
}

/// A point a restore can be asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Revision(i64),
    /// The newest revision received at or before this time.
    Time(DateTime<Utc>),
}

/// Why a chain cannot restore to a target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Uncovered {
    #[error("revision {target} is older than the chain's base ({base_revision})")]
    BeforeBase { target: i64, base_revision: i64 },
    #[error("revision {target} is newer than the chain's end ({end})")]
    AfterEnd { target: i64, end: i64 },
    #[error("{target} is before the chain's base was taken ({base_taken})")]
    TimeBeforeBase { target: DateTime<Utc>, base_taken: DateTime<Utc> },
    #[error("{target} is after the chain's end ({end})")]
    TimeAfterEnd { target: DateTime<Utc>, end: DateTime<Utc> },
}

impl Chain<'_> {
    /// The chain, its base's snapshot read by `manifest`'s end: its start plus its duration (the id's
    /// time is the start, to the second, and the snapshot is read after it). Read back from a store:
    /// a time past the representable ones is never reached.
    pub fn taken_by(mut self, manifest: &crate::manifest::Manifest) -> Self {
        let duration = i64::try_from(manifest.duration_ms).unwrap_or(i64::MAX);
        self.base_taken = chrono::Duration::try_milliseconds(duration)
            .and_then(|d| manifest.created.max(self.base.created()).checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        self
    }

    /// How far a restore to `target` through this chain gets, as far as the manifests tell: the target
    /// revision itself; for a time, the last revision of the last segment it needs if that segment was
    /// wholly received by then, else that segment's first (a lower bound: its body tells the rest).
    /// Two chains can both hold a time (the old one streamed on while the next base was uploaded): the
    /// one that gets further is the one to take.
    pub fn reach(&self, needed: &[&SegmentManifest], target: Target) -> i64 {
        match (target, needed.last()) {
            (Target::Revision(r), _) => r,
            (Target::Time(_), None) => self.base_revision,
            (Target::Time(t), Some(last)) if last.last_received <= t => last.last_revision,
            (Target::Time(_), Some(last)) => last.first_revision,
        }
    }

    /// The newest revision the chain can restore.
    pub fn end_revision(&self) -> i64 {
        self.segments.last().map_or(self.base_revision, |s| s.last_revision)
    }

    /// Until when the chain is known to hold every change: its last segment's close (the watch had
    /// seen everything until then), or, without segments, when the base's snapshot had surely been read.
    pub fn end_time(&self) -> DateTime<Utc> {
        self.segments.last().map_or(self.base_taken, |s| s.closed)
    }

    /// The segments a restore to `target` replays (a prefix of the chain; the last one may be
    /// replayed only in part), or why the chain cannot restore it. A time resolves to a revision only
    /// once the bodies are read; here, the segments that can hold it.
    pub fn needs(&self, target: Target) -> Result<&[&SegmentManifest], Uncovered> {
        let (base_revision, end) = (self.base_revision, self.end_revision());
        let count = match target {
            Target::Revision(target) if target < base_revision => {
                return Err(Uncovered::BeforeBase { target, base_revision });
            }
            Target::Revision(target) if target > end => return Err(Uncovered::AfterEnd { target, end }),
            Target::Revision(target) => self.segments.iter().take_while(|s| s.first_revision <= target).count(),
            Target::Time(target) if target < self.base_taken => {
                return Err(Uncovered::TimeBeforeBase { target, base_taken: self.base_taken });
            }
            Target::Time(target) if target > self.end_time() => {
                return Err(Uncovered::TimeAfterEnd { target, end: self.end_time() });
            }
            Target::Time(target) => self.segments.iter().take_while(|s| s.first_received <= target).count(),
        };
        Ok(&self.segments[..count])
    }

    /// `needs`, and also a time after the chain's end that a later backup proves nothing changed
    /// until: one taken at or after `target` holding the revision the chain ends at (a quiet cluster
    /// makes no revisions, so no segments). `later`: when each other backup of the same cluster began
    /// (its snapshot was read after) and the revision its snapshot holds.
    pub fn needs_until(
        &self,
        target: Target,
        later: &[(DateTime<Utc>, i64)],
    ) -> Result<&[&SegmentManifest], Uncovered> {
        match self.needs(target) {
            Err(Uncovered::TimeAfterEnd { target, .. })
                if later.iter().any(|&(taken, revision)| taken >= target && revision == self.end_revision()) =>
            {
                Ok(&self.segments[..])
            }
            needed => needed,
        }
    }
}

#[cfg(test)]
mod tests;
