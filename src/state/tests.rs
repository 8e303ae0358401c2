use super::*;

#[tokio::test]
async fn state_round_trips_and_survives_garbage() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(State::load(dir.path()), State::default());
    let s = State {
        runs: Runs { ok: 3, ..Runs::default() },
        last_failure: Some(Failure { time: Utc::now(), error: "etcd down".into() }),
        ..State::default()
    };
    s.save(dir.path()).await.unwrap();
    assert_eq!(State::load(dir.path()), s);
    std::fs::write(dir.path().join(STATE_FILE), r#"{"last_attempt": "2026-11-22T06:00:00Z", "future_field": 1}"#)
        .unwrap();
    assert_eq!(State::load(dir.path()).last_attempt.map(|t| t.timestamp()), Some(1_795_327_200), "partial files load");
    std::fs::write(dir.path().join(STATE_FILE), "{not json").unwrap();
    assert_eq!(State::load(dir.path()), State::default());
    // A field this version cannot read (an id of an older format, a destination it does not know)
    // is reset alone; the rest of the file stays.
    let other_version = r#"{
        "runs": {"ok": 7, "failed": 1, "unchanged": 0, "skipped": 0},
        "last_success": {"time": "2026-11-22T06:00:00Z", "id": "20261122T060000Z-r48211", "revision": 48211,
                         "artifact_size": 1, "duration_ms": 1, "destinations": ["local"]},
        "backups": {"local": 3, "gcs": 2},
        "last_attempt": "2026-11-22T06:00:00Z"
    }"#;
    std::fs::write(dir.path().join(STATE_FILE), other_version).unwrap();
    let loaded = State::load(dir.path());
    assert_eq!(loaded.runs.ok, 7);
    assert_eq!(loaded.last_attempt.map(|t| t.timestamp()), Some(1_795_327_200));
    assert_eq!(loaded.last_success, None, "an id without its member part is not an id any more");
    assert!(loaded.backups.is_empty(), "a destination this version does not know");
}

/// Writers in separate threads (as the daemon and a one-shot command are separate processes; flock
/// locks are per open file, so threads contend the same way) never lose each other's changes.
#[test]
fn concurrent_changes_are_never_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (writers, changes): (u64, u64) = (6, 15);
    std::thread::scope(|scope| {
        for _ in 0..writers {
            scope.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async {
                    for _ in 0..changes {
                        let _lock = StateLock::take(dir.path()).await.unwrap();
                        let mut state = State::load(dir.path());
                        state.runs.ok += 1;
                        state.save(dir.path()).await.unwrap();
                    }
                });
            });
        }
    });
    assert_eq!(State::load(dir.path()).runs.ok, writers * changes);
}

#[tokio::test]
async fn the_lock_is_exclusive_and_released_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let first = Lock::try_take(dir.path()).unwrap().expect("free");
    assert!(Lock::try_take(dir.path()).unwrap().is_none(), "held");
    let err = Lock::take(dir.path(), std::time::Duration::from_millis(300)).await.err().unwrap();
    assert!(err.to_string().contains("another backup is running"), "{err}");
    assert!(err.downcast_ref::<LockHeld>().is_some(), "held is a type, not a text");
    // A signal ends the wait at once, typed as an interruption.
    let cancel = tokio_util::sync::CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        stop.cancel();
    });
    let err = Lock::take_unless(dir.path(), std::time::Duration::from_secs(3600), &cancel).await.err().unwrap();
    assert!(err.downcast_ref::<crate::interrupt::Interrupted>().is_some(), "{err}");
    drop(first);
    assert!(Lock::try_take(dir.path()).unwrap().is_some());
}

#[test]
fn freshness_by_state_interval_and_clock() {
    use chrono::TimeZone;
    let now = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
    let six_hours = Some(std::time::Duration::from_secs(6 * 3600));
    let ago = |h: i64| Some(now - chrono::Duration::hours(h));
    assert_eq!(Freshness::of(None, six_hours, now), Freshness::NeverBackedUp);
    assert_eq!(Freshness::of(None, None, now), Freshness::NeverBackedUp);
    assert_eq!(Freshness::of(ago(1), six_hours, now), Freshness::Fresh);
    assert_eq!(Freshness::of(ago(12), six_hours, now), Freshness::Fresh, "exactly twice the interval");
    assert!(matches!(Freshness::of(ago(13), six_hours, now), Freshness::Overdue { .. }));
    assert_eq!(Freshness::of(ago(1000), None, now), Freshness::Fresh, "no interval: nothing to be late for");
    let soon = Some(now + chrono::Duration::minutes(4));
    assert_eq!(Freshness::of(soon, six_hours, now), Freshness::Fresh, "within the clock tolerance");
    let later = Some(now + chrono::Duration::hours(1));
    assert!(matches!(Freshness::of(later, six_hours, now), Freshness::FutureDated { .. }));
    assert!(matches!(Freshness::of(later, None, now), Freshness::FutureDated { .. }));
    assert_eq!(Freshness::Fresh.problem(), None);
    let words = Freshness::of(ago(13), six_hours, now).problem().unwrap();
    assert_eq!(
        words,
        "backups are overdue: the last success was at 2026-11-23 23:00:00 UTC, more than twice the schedule's interval (6h) ago"
    );
    assert!(Freshness::of(later, six_hours, now).problem().unwrap().contains("in the future"));
}

#[test]
fn the_ownership_fix_names_the_owner_and_the_chown() {
    let fix = ownership_fix("/var/lib/etcd-backupd/lock", "root", "etcd-backupd", "/var/lib/etcd-backupd");
    assert!(fix.contains("'/var/lib/etcd-backupd/lock' belongs to root, not to etcd-backupd"), "{fix}");
    assert!(fix.contains("`chown -R etcd-backupd: /var/lib/etcd-backupd`"), "{fix}");
}

/// A lock file that cannot be opened is an error of its own, never "held by another run".
#[tokio::test]
async fn a_lock_that_cannot_be_opened_is_not_held() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(LOCK_FILE)).unwrap();
    let err = Lock::take(dir.path(), std::time::Duration::from_millis(10)).await.err().unwrap();
    assert!(err.downcast_ref::<LockHeld>().is_none(), "{err:#}");
    assert!(format!("{err:#}").contains("cannot open the lock file"), "{err:#}");
}
