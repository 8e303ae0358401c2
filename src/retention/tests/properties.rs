//! The guarantees of `plan`, over random backups, policies, clocks and time zones.

use proptest::prelude::*;

use super::*;

fn arb_backups() -> impl Strategy<Value = Vec<Candidate>> {
    // Up to 80 backups over two years, some pinned, of varied sizes.
    prop::collection::vec((0i64..(2 * 365 * 24 * 60), 1u64..1000, prop::bool::weighted(0.1)), 0..80).prop_map(|v| {
        let base = at(2025, 1, 1, 0, 0);
        v.into_iter()
            .enumerate()
            .map(|(i, (minutes, size, pinned))| Candidate {
                id: BackupId::new(base + chrono::Duration::minutes(minutes), i as i64, "a"),
                size,
                pinned,
                this_run: false,
                emergency: i % 7 == 3,
            })
            .collect()
    })
}

fn arb_policy() -> impl Strategy<Value = Policy> {
    (
        0u32..5,
        0u32..30,
        0u32..10,
        0u32..6,
        0u32..14,
        0u32..3,
        prop::option::of(0u64..2000),
        prop::option::of(0u64..40_000),
        0u32..6,
    )
        .prop_map(|(last, hourly, daily, weekly, monthly, yearly, within_h, max, min_keep)| Policy {
            keep_last: last,
            keep_hourly: hourly,
            keep_daily: daily,
            keep_weekly: weekly,
            keep_monthly: monthly,
            keep_yearly: yearly,
            keep_within: within_h.map(|h| std::time::Duration::from_secs(h * 3600)),
            max_total_size: max,
            min_keep,
        })
}

/// A moment anywhere in (or around) the two years of `arb_backups`: a clock that is right, or wrong.
fn arb_now() -> impl Strategy<Value = DateTime<Utc>> {
    (-30i64..(2 * 365 + 30)).prop_map(|days| at(2025, 1, 1, 0, 0) + chrono::Duration::days(days))
}

fn arb_tz() -> impl Strategy<Value = Tz> {
    prop::sample::select(vec![
        Tz::UTC,
        chrono_tz::Europe::Berlin,
        chrono_tz::America::New_York,
        chrono_tz::Australia::Lord_Howe,
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn newest_and_pinned_are_always_kept(b in arb_backups(), p in arb_policy(), tz in arb_tz()) {
        let d = plan(&b, &p, tz, LATER);
        prop_assert_eq!(d.len(), b.len());
        if let Some(first) = d.first() {
            prop_assert!(first.keep);
            prop_assert_eq!(Some(&first.id), b.iter().map(|c| &c.id).max());
        }
        for c in b.iter().filter(|c| c.pinned) {
            prop_assert!(d.iter().any(|x| x.id == c.id && x.keep));
        }
    }

    #[test]
    fn never_fewer_than_min_keep(b in arb_backups(), p in arb_policy(), tz in arb_tz()) {
        let kept = plan(&b, &p, tz, LATER).iter().filter(|d| d.keep).count();
        prop_assert!(kept >= (p.min_keep as usize).min(b.len()));
    }

    #[test]
    fn independent_of_input_order(b in arb_backups(), p in arb_policy(), tz in arb_tz(), seed in any::<u64>()) {
        let mut shuffled = b.clone();
        // A deterministic shuffle from the seed.
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        prop_assert_eq!(plan(&b, &p, tz, LATER), plan(&shuffled, &p, tz, LATER));
    }

    #[test]
    fn planning_the_kept_set_again_removes_nothing(b in arb_backups(), p in arb_policy(), tz in arb_tz()) {
        let first = plan(&b, &p, tz, LATER);
        let kept: Vec<Candidate> = b.iter().filter(|c| first.iter().any(|d| d.keep && d.id == c.id)).cloned().collect();
        let again = plan(&kept, &p, tz, LATER);
        prop_assert!(again.iter().all(|d| d.keep), "{:?}", again.iter().filter(|d| !d.keep).collect::<Vec<_>>());
    }

    /// Whatever the clock says: backups dated after `now` are kept and never push a real one out; the
    /// backup of this run is kept; the newest of the rest is kept.
    #[test]
    fn a_wrong_clock_never_costs_a_backup(
        b in arb_backups(), p in arb_policy(), tz in arb_tz(), now in arb_now(), pick in any::<prop::sample::Index>()
    ) {
        let mut b = b;
        if !b.is_empty() {
            let i = pick.index(b.len());
            b[i].this_run = true;
        }
        let d = plan(&b, &p, tz, now);
        prop_assert_eq!(d.len(), b.len());
        for c in &b {
            let decision = d.iter().find(|x| x.id == c.id).unwrap();
            if c.this_run || is_future_dated(&c.id, now) {
                prop_assert!(decision.keep, "{:?}", decision);
            }
        }
        let present: Vec<Candidate> = b.iter().filter(|c| !is_future_dated(&c.id, now)).cloned().collect();
        if let Some(newest) = present.iter().map(|c| &c.id).max() {
            let decision = d.iter().find(|x| &x.id == newest).unwrap();
            prop_assert!(decision.keep && decision.reasons.contains(&Reason::Newest));
        }
        // The rules over the present backups are as if the future-dated ones did not exist.
        let without: Vec<Decision> = plan(&present, &p, tz, now);
        let same: Vec<Decision> = d.into_iter().filter(|x| !x.reasons.contains(&Reason::FutureDated)).collect();
        prop_assert_eq!(same, without);
    }

    #[test]
    fn every_decision_has_a_reason(b in arb_backups(), p in arb_policy(), tz in arb_tz()) {
        prop_assert!(plan(&b, &p, tz, LATER).iter().all(|d| !d.reasons.is_empty()));
    }
}
