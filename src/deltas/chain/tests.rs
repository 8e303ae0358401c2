use super::*;
use crate::deltas::manifest::SegmentId;
use crate::deltas::manifest::tests::{base, segment};

fn chain_of(segments: &[SegmentManifest]) -> Chain<'_> {
    follow(&base(), 105, segments)
}

#[test]
fn segments_in_any_order_make_one_chain_and_others_bases_are_ignored() {
    let mut found: Vec<SegmentManifest> = (1..=4).rev().map(segment).collect();
    let mut stranger = segment(1);
    stranger.id = SegmentId::new(BackupId::parse("20261123T060000Z-r900-8e9e05c52164694d").unwrap(), 1);
    found.push(stranger);
    let chain = chain_of(&found);
    assert_eq!(chain.segments.iter().map(|s| s.id.seq()).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(chain.broken, None);
    assert_eq!(chain.end_revision(), 145);
    assert_eq!(chain.end_time(), segment(4).closed);
}

#[test]
fn no_segment_is_a_chain_of_the_base_alone() {
    let chain = chain_of(&[]);
    assert_eq!((chain.end_revision(), chain.end_time(), chain.broken), (105, base().created(), None));
}

#[test]
fn each_break_stops_the_chain_where_it_is_and_is_named() {
    type Edit = fn(&mut Vec<SegmentManifest>);
    let cases: [(Edit, usize, &str); 5] = [
        (|s| drop(s.remove(2)), 2, "segment 3 of the chain from 20261122T060000Z-r100-8e9e05c52164694d is missing"),
        (|s| drop(s.remove(0)), 0, "segment 1 of the chain"),
        (
            |s| s[2].first_revision += 1,
            2,
            "segment 3 of the chain from 20261122T060000Z-r100-8e9e05c52164694d starts at revision 127, not at 126",
        ),
        (|s| s[1].previous_sha256 = s[2].previous_sha256.clone(), 1, "does not continue segment 1"),
        (|s| s[3].base_revision = 104, 3, "names base revision 104, not the snapshot's 105"),
    ];
    for (edit, kept, why) in cases {
        let mut found: Vec<SegmentManifest> = (1..=5).map(segment).collect();
        edit(&mut found);
        let chain = chain_of(&found);
        assert_eq!(chain.segments.len(), kept, "{why}");
        assert!(chain.broken.as_ref().unwrap().to_string().contains(why), "{}", chain.broken.unwrap());
    }
}

/// The body of segment 2 replaced (its manifest with it): segment 3 no longer continues it.
#[test]
fn a_replaced_segment_breaks_the_link_to_the_next() {
    let mut found: Vec<SegmentManifest> = (1..=3).map(segment).collect();
    found[1].body.sha256 = "ab".repeat(32);
    let chain = chain_of(&found);
    assert_eq!(chain.segments.len(), 2);
    assert!(matches!(chain.broken, Some(Break::Link { seq: 3, .. })));
}

#[test]
fn a_restore_needs_the_segments_up_to_the_one_holding_its_target() {
    let found: Vec<SegmentManifest> = (1..=3).map(segment).collect();
    let chain = chain_of(&found);
    let seqs = |t| chain.needs(t).map(|s| s.iter().map(|s| s.id.seq()).collect::<Vec<_>>());
    for (revision, needed) in [(105, vec![]), (106, vec![1]), (115, vec![1]), (116, vec![1, 2]), (135, vec![1, 2, 3])] {
        assert_eq!(seqs(Target::Revision(revision)), Ok(needed), "revision {revision}");
    }
    assert_eq!(seqs(Target::Revision(104)), Err(Uncovered::BeforeBase { target: 104, base_revision: 105 }));
    assert_eq!(seqs(Target::Revision(136)), Err(Uncovered::AfterEnd { target: 136, end: 135 }));
    let at = |s: i64| base().created() + chrono::Duration::seconds(s);
    for (second, needed) in
        [(0, vec![]), (59, vec![]), (60, vec![1]), (119, vec![1]), (120, vec![1, 2]), (195, vec![1, 2, 3])]
    {
        assert_eq!(seqs(Target::Time(at(second))), Ok(needed), "second {second}");
    }
    assert!(matches!(seqs(Target::Time(at(-1))), Err(Uncovered::TimeBeforeBase { .. })));
    assert!(matches!(seqs(Target::Time(at(196))), Err(Uncovered::TimeAfterEnd { .. })));
}

/// The old chain streamed on while the next base was taken and uploaded: for a time in between, the old
/// chain gets further than the new base alone.
#[test]
fn of_two_chains_holding_a_time_the_one_that_gets_further_is_ranked_higher() {
    let found: Vec<SegmentManifest> = (1..=3).map(segment).collect();
    let old = chain_of(&found);
    let at = |s: i64| base().created() + chrono::Duration::seconds(s);
    let needed = old.needs(Target::Time(at(150))).unwrap();
    assert_eq!(old.reach(needed, Target::Time(at(150))), 125, "segment 2 wholly received by then");
    let needed = old.needs(Target::Time(at(125))).unwrap();
    assert_eq!(old.reach(needed, Target::Time(at(125))), 116, "segment 2 partly: its first revision at least");
    let newer = follow(&base(), 130, std::iter::empty());
    assert_eq!(newer.reach(&[], Target::Time(at(150))), 130);
    assert_eq!(old.reach(&[], Target::Revision(120)), 120);
}

/// A quiet cluster: no change after the chain's last segment, and the next backup holds the revision
/// the chain ends at. A time in between is the chain's end; without such a backup it is held by none.
#[test]
fn a_time_after_a_chain_is_its_end_when_a_later_backup_shows_nothing_changed() {
    let found: Vec<SegmentManifest> = (1..=3).map(segment).collect();
    let chain = chain_of(&found);
    let at = |s: i64| base().created() + chrono::Duration::seconds(s);
    let needed = |later: &[(DateTime<Utc>, i64)]| chain.needs_until(Target::Time(at(500)), later).map(|s| s.len());
    assert_eq!(needed(&[(at(600), 135)]), Ok(3));
    assert_eq!(needed(&[(at(500), 135)]), Ok(3), "taken at that very time");
    assert!(matches!(needed(&[(at(600), 136)]), Err(Uncovered::TimeAfterEnd { .. })), "something changed");
    assert!(matches!(needed(&[(at(400), 135)]), Err(Uncovered::TimeAfterEnd { .. })), "taken before it");
    assert!(matches!(needed(&[]), Err(Uncovered::TimeAfterEnd { .. })));
    // Within the chain, and for revisions, as `needs`.
    let later = [(at(600), 135)];
    for target in [Target::Time(at(150)), Target::Time(at(-1)), Target::Revision(120), Target::Revision(136)] {
        assert_eq!(chain.needs_until(target, &later), chain.needs(target), "{target:?}");
    }
    assert_eq!(chain.reach(chain.needs_until(Target::Time(at(500)), &later).unwrap(), Target::Time(at(500))), 135);
    // A chain without segments: the base itself.
    let alone = chain_of(&[]);
    assert_eq!(alone.needs_until(Target::Time(at(500)), &[(at(600), 105)]).map(|s| s.len()), Ok(0));
}

/// A backup's id is its start, to the second; its snapshot is read after, by its end. A time before that
/// end may be before the snapshot's revision: the base does not hold it (an older chain that streamed
/// through it does), however far the base's revision reaches.
#[test]
fn a_base_holds_no_time_before_its_backup_ended() {
    let mut manifest = crate::manifest::tests::sample();
    manifest.id = base();
    manifest.created = base().created() + chrono::Duration::milliseconds(700);
    manifest.duration_ms = 90_000;
    let chain = follow(&base(), 105, std::iter::empty()).taken_by(&manifest);
    let at = |ms: i64| base().created() + chrono::Duration::milliseconds(ms);
    for before in [0, 500, 90_699] {
        assert!(matches!(chain.needs(Target::Time(at(before))), Err(Uncovered::TimeBeforeBase { .. })), "{before}");
    }
    assert_eq!(chain.needs(Target::Time(at(90_700))).map(|s| s.len()), Ok(0));
    assert_eq!(chain.end_time(), at(90_700));
    assert_eq!(chain.needs(Target::Revision(105)).map(|s| s.len()), Ok(0), "revisions are what they are");
    // A manifest read back from a store that says its backup never ended: it holds no time.
    manifest.duration_ms = u64::MAX;
    let chain = follow(&base(), 105, std::iter::empty()).taken_by(&manifest);
    assert_eq!(chain.base_taken, DateTime::<Utc>::MAX_UTC);
    assert!(matches!(chain.needs(Target::Time(at(10_000_000_000))), Err(Uncovered::TimeBeforeBase { .. })));
}
