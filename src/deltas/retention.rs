//! Which delta segments a prune removes: a chain goes with its base, and (with `[deltas] keep_for`)
//! once its base is that old; a pinned base keeps its whole chain, and each member's newest base's
//! chain (the one being written) is never removed. Pure: ids and the time in, decisions out.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::manifest::BackupId;
use crate::store::SegmentPair;

/// Why a segment goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Its base is removed (by this prune, or an earlier one that did not finish).
    BaseRemoved,
    /// Its base is older than `[deltas] keep_for`.
    Expired,
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Why::BaseRemoved => "its base is removed",
            Why::Expired => "its base is older than [deltas] keep_for",
        })
    }
}

/// The segments of `segments` to remove. `kept`: the backups this destination keeps after the prune,
/// with whether each is pinned. A segment whose base this destination never held (another member's, in
/// cluster mode) goes only once it is older than every backup kept here, or past `keep_for`.
pub fn plan<'a>(
    segments: &'a [SegmentPair],
    kept: &HashMap<BackupId, bool>,
    keep_for: Option<Duration>,
    now: DateTime<Utc>,
) -> Vec<(&'a SegmentPair, Why)> {
    // The chains being written: each member's newest base (member mode streams one per member), never
    // one dated in the future (a wrong clock, or planted).
    let mut newest: HashMap<&str, &BackupId> = HashMap::new();
    for id in kept.keys().filter(|id| !crate::retention::is_future_dated(id, now)) {
        let entry = newest.entry(id.member()).or_insert(id);
        if id > *entry {
            *entry = id;
        }
    }
    let oldest = kept.keys().min();
    let expired = |base: &BackupId| {
        keep_for
            .and_then(|k| chrono::Duration::from_std(k).ok())
            .is_some_and(|k| base.created().checked_add_signed(k).is_some_and(|until| until < now))
    };
    segments
        .iter()
        .filter_map(|pair| {
            let base = pair.id.base();
            if newest.get(base.member()) == Some(&base) || kept.get(base) == Some(&true) {
                return None;
            }
            let why = match kept.get(base) {
                Some(_) if expired(base) => Why::Expired,
                Some(_) => return None,
                None if oldest.is_some_and(|o| base < o) => Why::BaseRemoved,
                None if expired(base) => Why::Expired,
                None => return None,
            };
            Some((pair, why))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deltas::manifest::SegmentId;

    fn id(day: u32) -> BackupId {
        BackupId::parse(&format!("202611{day:02}T000000Z-r{day}-a")).unwrap()
    }

    fn chain(day: u32, segments: u32) -> Vec<SegmentPair> {
        (1..=segments)
            .map(|seq| {
                let id = SegmentId::new(self::id(day), seq);
                SegmentPair { manifest_name: id.manifest_name(), artifacts: vec![], id }
            })
            .collect()
    }

    fn now() -> DateTime<Utc> {
        id(20).created()
    }

    fn removed(plan: &[(&SegmentPair, Why)]) -> Vec<(u32, u32, Why)> {
        plan.iter().map(|(p, why)| (p.id.base().revision() as u32, p.id.seq(), *why)).collect()
    }

    #[test]
    fn a_chain_goes_with_its_base_and_the_newest_stays() {
        let segments: Vec<SegmentPair> = [chain(10, 2), chain(12, 1), chain(15, 2)].concat();
        // Day 10's backup was removed; 12 and 15 are kept.
        let kept = HashMap::from([(id(12), false), (id(15), false)]);
        assert_eq!(
            removed(&plan(&segments, &kept, None, now())),
            vec![(10, 1, Why::BaseRemoved), (10, 2, Why::BaseRemoved)]
        );
    }

    #[test]
    fn keep_for_expires_chains_but_never_the_newest_or_a_pinned_bases() {
        let segments: Vec<SegmentPair> = [chain(10, 1), chain(12, 1), chain(15, 1), chain(19, 1)].concat();
        let kept = HashMap::from([(id(10), true), (id(12), false), (id(15), false), (id(19), false)]);
        let three_days = Some(Duration::from_secs(3 * 86400));
        assert_eq!(
            removed(&plan(&segments, &kept, three_days, now())),
            vec![(12, 1, Why::Expired), (15, 1, Why::Expired)],
            "day 10 is pinned, day 19 is the newest (and young)"
        );
        let kept = HashMap::from([(id(12), false)]);
        assert!(plan(&chain(12, 3), &kept, Some(Duration::from_secs(1)), now()).is_empty(), "the chain being written");
    }

    #[test]
    fn a_chain_of_a_base_this_destination_never_held_stays_until_older_than_all_it_keeps() {
        let segments: Vec<SegmentPair> = [chain(11, 1), chain(16, 1)].concat();
        let kept = HashMap::from([(id(12), false), (id(15), false)]);
        assert_eq!(removed(&plan(&segments, &kept, None, now())), vec![(11, 1, Why::BaseRemoved)]);
        // Nothing kept here: only keep_for removes them.
        assert!(plan(&segments, &HashMap::new(), None, now()).is_empty());
        let week = Some(Duration::from_secs(7 * 86400));
        assert_eq!(removed(&plan(&segments, &HashMap::new(), week, now())), vec![(11, 1, Why::Expired)]);
    }

    #[test]
    fn each_members_newest_chain_stays_and_a_future_dated_base_protects_nothing() {
        let other = BackupId::parse("20261118T000000Z-r18-b").unwrap();
        let future = BackupId::parse("20991218T000000Z-r99-a").unwrap();
        let mut segments: Vec<SegmentPair> = [chain(15, 1), chain(19, 1)].concat();
        segments.push(SegmentPair {
            id: SegmentId::new(other.clone(), 1),
            manifest_name: String::new(),
            artifacts: vec![],
        });
        let kept = HashMap::from([(id(15), false), (id(19), false), (other, false), (future, false)]);
        let day = Some(Duration::from_secs(86400));
        assert_eq!(
            removed(&plan(&segments, &kept, day, now())),
            vec![(15, 1, Why::Expired)],
            "day 19 is member a's newest (not the one dated 2099), day 18 member b's"
        );
    }

    #[test]
    fn a_base_dated_in_the_future_never_expires() {
        let segments = chain(25, 1);
        let kept = HashMap::from([(id(25), false), (id(26), false)]);
        assert!(plan(&segments, &kept, Some(Duration::from_secs(1)), now()).is_empty());
    }
}
