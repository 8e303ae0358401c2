use chrono::TimeZone;

use super::*;

fn t(h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, h, m, 0).unwrap()
}

fn keys() -> Keys {
    Keys::new("/etcd-backupd/prod/")
}

fn record(slot: DateTime<Utc>) -> Record {
    Record {
        slot,
        member_id: "8e9e05c52164694d".into(),
        member_name: "m2".into(),
        backup_id: BackupId::new(slot, 48211, "8e9e05c52164694d"),
        revision: 48211,
        time: slot,
    }
}

#[test]
fn keys_sort_by_time_and_only_records_of_this_prefix_are_read_as_slots() {
    let k = keys();
    assert_eq!(k.lock(t(6, 0)), "/etcd-backupd/prod/lock/20261122T060000Z");
    assert_eq!(k.record(t(6, 0)), "/etcd-backupd/prod/slots/20261122T060000Z");
    assert_eq!(k.slot_of(k.record(t(6, 0)).as_bytes()), Some(t(6, 0)));
    for stranger in [
        "/etcd-backupd/prod/lock/20261122T060000Z",
        "/etcd-backupd/other/slots/20261122T060000Z",
        "/etcd-backupd/prod/slots/20261122T060000Z/x",
        "/etcd-backupd/prod/slots/2026-11-22T06:00:00Z",
        "/etcd-backupd/prod/slots/20261122T060000",
        "/registry/pods/x",
    ] {
        assert_eq!(k.slot_of(stranger.as_bytes()), None, "{stranger}");
    }
    assert_eq!(k.slot_of(b"\xff\xfe"), None);
    assert!(k.record(t(6, 0)) < k.record(t(12, 0)));
}

#[test]
fn a_record_round_trips_and_an_untrue_one_is_refused() {
    let good = record(t(6, 0));
    assert_eq!(Record::parse(&good.to_json(), t(6, 0), t(6, 1)), Ok(good.clone()));
    let cases: [(&str, Record, DateTime<Utc>, &str); 4] = [
        ("kept under another slot", good.clone(), t(12, 0), "kept as"),
        ("a backup of another member", Record { member_id: "1".into(), ..good.clone() }, t(6, 0), "not of member"),
        ("not a member id", Record { member_id: "../x".into(), ..good.clone() }, t(6, 0), "member id"),
        ("a name with a newline", Record { member_name: "m\nforged".into(), ..good.clone() }, t(6, 0), "member name"),
    ];
    for (what, r, slot, words) in cases {
        let err = Record::parse(&r.to_json(), slot, t(12, 1)).expect_err(what);
        assert!(err.contains(words), "{what}: {err}");
    }
    assert!(Record::parse(&vec![b' '; MAX_RECORD_BYTES + 1], t(6, 0), t(6, 1)).unwrap_err().contains("bytes"));
    assert!(Record::parse(b"{\"slot\": 1}", t(6, 0), t(6, 1)).is_err());
    let extra = String::from_utf8(good.to_json()).unwrap().replacen('{', "{\"delete\": \"/registry\",", 1);
    assert!(Record::parse(extra.as_bytes(), t(6, 0), t(6, 1)).is_err(), "unknown fields are refused");
}

fn healthy() -> Health {
    Health {
        is_learner: false,
        is_leader: false,
        has_leader: true,
        alarm: false,
        revision: 10,
        cluster_revision: 10,
        voters: Some(3),
    }
}

#[test]
fn followers_ask_first_the_leader_sick_and_lagging_defer_learners_never() {
    let delay = Duration::from_secs(120);
    let cases = [
        (healthy(), Role::Follower, Some(Duration::ZERO)),
        (Health { is_leader: true, ..healthy() }, Role::Deferring(Defer::Leader), Some(delay)),
        (Health { alarm: true, ..healthy() }, Role::Deferring(Defer::Alarm), Some(delay)),
        (Health { revision: 10 - LAG_TOLERANCE - 1, ..healthy() }, Role::Deferring(Defer::Lagging), Some(delay)),
        (Health { revision: 10 - LAG_TOLERANCE, ..healthy() }, Role::Follower, Some(Duration::ZERO)),
        (Health { voters: None, ..healthy() }, Role::Follower, Some(Duration::ZERO)),
        (Health { is_learner: true, is_leader: false, ..healthy() }, Role::Learner, None),
        (Health { voters: Some(1), is_leader: true, ..healthy() }, Role::Alone, Some(Duration::ZERO)),
        (Health { is_learner: true, voters: Some(1), ..healthy() }, Role::Learner, None),
        (Health { has_leader: false, ..healthy() }, Role::Leaderless, Some(Duration::ZERO)),
        (Health { has_leader: false, voters: None, alarm: true, ..healthy() }, Role::Leaderless, Some(Duration::ZERO)),
        (Health { has_leader: false, is_learner: true, ..healthy() }, Role::Learner, None),
        (Health { alarm: true, is_leader: true, ..healthy() }, Role::Deferring(Defer::Alarm), Some(delay)),
    ];
    for (health, want, wait) in cases {
        assert_eq!(role(health), want, "{health:?}");
        assert_eq!(wait_before_asking(want, delay), wait, "{health:?}");
    }
}

#[test]
fn only_the_newest_records_stay_and_strangers_are_never_deleted() {
    let k = keys();
    let mut found: Vec<Vec<u8>> = (0..10).map(|h| k.record(t(h, 0)).into_bytes()).collect();
    found.push(b"/etcd-backupd/prod/slots/not-a-slot".to_vec());
    found.reverse();
    let now = t(10, 0);
    let stale = stale_records(&k, &found, 3, now);
    let want: Vec<Vec<u8>> = (0..7).map(|h| k.record(t(h, 0)).into_bytes()).collect();
    assert_eq!(stale, want);
    assert!(stale_records(&k, &found, 64, now).is_empty());
    assert_eq!(stale_records(&k, &found, 0, now).len(), 10);
}

/// Records planted for slots that have not begun never push real ones out: they go first.
#[test]
fn records_of_future_slots_are_stale_at_once() {
    let k = keys();
    let now = t(10, 0);
    let mut found: Vec<Vec<u8>> = (0..3).map(|h| k.record(t(h, 0)).into_bytes()).collect();
    let planted: Vec<Vec<u8>> = (0..64).map(|d| k.record(now + chrono::TimeDelta::days(d + 1)).into_bytes()).collect();
    found.extend(planted.iter().cloned());
    assert_eq!(stale_records(&k, &found, 64, now), planted);
    let soon = k.record(now + CLOCK_SKEW).into_bytes();
    assert!(stale_records(&k, &[soon], 64, now).is_empty(), "a slot within the clocks' skew is kept");
}

/// A record planted ahead of its slot, or dated far ahead to keep freshness green, is refused.
#[test]
fn a_record_must_be_of_its_slot_and_not_of_the_future() {
    let slot = t(6, 0);
    let now = t(6, 5);
    let good = record(slot);
    assert!(Record::parse(&good.to_json(), slot, now).is_ok());
    let early = Record { backup_id: BackupId::new(t(5, 0), 48211, "8e9e05c52164694d"), ..good.clone() };
    assert!(Record::parse(&early.to_json(), slot, now).unwrap_err().contains("not taken in slot"));
    let ahead = Record { backup_id: BackupId::new(t(7, 0), 48211, "8e9e05c52164694d"), ..good.clone() };
    assert!(Record::parse(&ahead.to_json(), slot, now).unwrap_err().contains("not taken in slot"));
    let forever = Record { time: Utc.with_ymd_and_hms(9999, 1, 1, 0, 0, 0).unwrap(), ..good.clone() };
    assert!(Record::parse(&forever.to_json(), slot, now).unwrap_err().contains("outside its slot"));
    let skewed = Record {
        time: slot - CLOCK_SKEW,
        backup_id: BackupId::new(slot - CLOCK_SKEW, 48211, "8e9e05c52164694d"),
        ..good
    };
    assert!(Record::parse(&skewed.to_json(), slot, now).is_ok(), "clocks a minute apart still agree");
}
