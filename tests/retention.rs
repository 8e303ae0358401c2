//! Retention and pruning against the real local directory and the in-process S3 server.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::Ordering;

use chrono::{Duration, TimeZone, Utc};
use common::*;
use etcd_backupd::manifest::BackupId;
use etcd_backupd::retention::{Candidate, Policy, plan};

fn config(
    work: &Path,
    local_retention: &str,
    s3: Option<(&S3, &str)>,
    etcd_table: &str,
    recipient: &str,
) -> std::path::PathBuf {
    let s3_table = s3.map(|(s3, r)| s3.config_table_with(BUCKET, "p", r)).unwrap_or_default();
    write_config(work, etcd_table, recipient, &format!("retention = {local_retention}"), &s3_table)
}

const NO_ETCD: &str = "[etcd]\nendpoints = [\"http://127.0.0.1:9\"]\n";
const RECIPIENT: &str = "age129n4cdkqnnw0ufcsz5av60my25tehpq9mlsxr3jfs68hzl2nqf4qpfwa0s";

/// The names a set of kept backups leaves in a folder.
fn names_of(kept: &[(BackupId, bool)]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (id, pinned) in kept {
        out.insert(id.artifact_name(etcd_backupd::manifest::Compression::Zstd { level: 3 }));
        out.insert(id.manifest_name());
        if *pinned {
            out.insert(id.pin_name());
        }
    }
    out
}

fn set(v: Vec<String>) -> BTreeSet<String> {
    v.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_of_ten_thousand_backups_leaves_exactly_the_planned_set() {
    let s3 = S3::start().await;
    let work = tempfile::tempdir().unwrap();
    let local = work.path().join("backups/default");
    let remote = s3.root.join(BUCKET).join("p/default");
    let start = Utc.with_ymd_and_hms(2024, 11, 23, 0, 0, 0).unwrap();
    let mut candidates = Vec::new();
    for i in 0..10_000i64 {
        let id = BackupId::new(start + Duration::minutes(105 * i), i + 1, "a1");
        let size = 10 + (i % 50) as usize;
        let pinned = i % 997 == 5;
        plant(&local, &id, size, pinned);
        plant(&remote, &id, size, pinned);
        candidates.push(Candidate { id, size: size as u64, pinned, this_run: false, emergency: false });
    }
    let now = candidates.last().unwrap().id.created() + Duration::hours(1);
    // Strangers that must survive: foreign names, and another cluster's backups in both places.
    std::fs::write(local.join("notes.txt"), "mine").unwrap();
    std::fs::write(remote.join("README"), "mine").unwrap();
    let other_id = BackupId::new(start, 1, "b2");
    plant(&work.path().join("backups/other"), &other_id, 5, false);
    plant(&s3.root.join(BUCKET).join("p/other"), &other_id, 5, false);
    plant(&s3.root.join(BUCKET).join("elsewhere"), &other_id, 5, false);

    let local_policy = Policy { keep_last: 5, keep_daily: 7, keep_weekly: 4, keep_monthly: 12, ..Policy::default() };
    let remote_policy = Policy { keep_daily: 30, keep_monthly: 24, keep_yearly: 2, min_keep: 3, ..Policy::default() };
    let cfg = config(
        work.path(),
        "{ keep_last = 5, keep_daily = 7, keep_weekly = 4, keep_monthly = 12 }",
        Some((&s3, "{ keep_daily = 30, keep_monthly = 24, keep_yearly = 2, min_keep = 3 }")),
        NO_ETCD,
        RECIPIENT,
    );
    let kept = |policy: &Policy| -> Vec<(BackupId, bool)> {
        plan(&candidates, policy, chrono_tz::Tz::UTC, now)
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| {
                let pinned = candidates.iter().any(|c| c.id == d.id && c.pinned);
                (d.id, pinned)
            })
            .collect()
    };
    let local_kept = kept(&local_policy);
    let remote_kept = kept(&remote_policy);
    assert!(local_kept.len() > 20 && local_kept.len() < 60, "{}", local_kept.len());

    let out = run(&cfg, &["prune", "--now", &now.to_rfc3339()]).await;
    assert!(out.status.success(), "{}", stderr(&out));

    let mut want_local = names_of(&local_kept);
    want_local.insert("notes.txt".into());
    assert_eq!(set(files(&local)), want_local);
    let mut want_remote: BTreeSet<String> =
        names_of(&remote_kept).into_iter().map(|n| format!("p/default/{n}")).collect();
    want_remote.insert("p/default/README".into());
    for folder in ["p/other", "elsewhere"] {
        want_remote.insert(format!(
            "{folder}/{}",
            other_id.artifact_name(etcd_backupd::manifest::Compression::Zstd { level: 3 })
        ));
        want_remote.insert(format!("{folder}/{}", other_id.manifest_name()));
    }
    assert_eq!(set(s3.keys(BUCKET)), want_remote);
    assert_eq!(files(&work.path().join("backups/other")).len(), 2, "the other cluster's local backups survive");

    // Requests: paginated listing (20,000 objects) and batched deletes.
    let counts = s3.faults.counts.lock().unwrap().clone();
    let objects = 20_000 + 2 * 10_000 / 997 + 2;
    assert!(counts["list"] <= objects / 1000 + 1, "{counts:?}");
    let removed = 10_000 - remote_kept.len();
    let batches = removed.div_ceil(1000) + (2 * removed).div_ceil(1000);
    assert!(counts["delete"] <= batches, "{counts:?}, {removed} removed");
    println!("S3 requests for pruning 10,000 backups: {counts:?}");

    // Pruning the pruned set removes nothing.
    let again = run(&cfg, &["prune", "--now", &now.to_rfc3339(), "--json"]).await;
    assert!(again.status.success(), "{}", stderr(&again));
    let reports: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    for r in reports.as_array().unwrap() {
        assert!(r["decisions"].as_array().unwrap().iter().all(|d| d["keep"] == true), "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upload_prunes_nothing_remote() {
    let etcd = Etcd::start(EtcdVersion::V34);
    let s3 = S3::start().await;
    let Setup { work, identity } = Setup::new();
    let local = work.path().join("backups/default");
    let remote = s3.root.join(BUCKET).join("p/default");
    for day in 1..=6 {
        let id = BackupId::new(Utc.with_ymd_and_hms(2026, 1, day, 0, 0, 0).unwrap(), day as i64, "a1");
        plant(&local, &id, 10, false);
        plant(&remote, &id, 10, false);
    }
    let cfg = config(
        work.path(),
        "{ keep_last = 2 }",
        Some((&s3, "{ keep_last = 2 }")),
        &etcd.config_table(),
        &identity.recipient,
    );
    let remote_before = s3.keys(BUCKET);

    s3.faults.down.store(true, Ordering::SeqCst);
    let out = run(&cfg, &["backup"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(files(&local).len(), 4, "local committed and pruned to 2: {:?}", files(&local));
    s3.faults.down.store(false, Ordering::SeqCst);
    assert_eq!(s3.keys(BUCKET), remote_before, "a failed upload prunes nothing remote");

    etcd.seed(1, 1).await;
    let out = run(&cfg, &["backup"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(s3.keys(BUCKET).len(), 4, "remote pruned after its own commit: {:?}", s3.keys(BUCKET));
    let err = stderr(&out);
    assert!(err.contains("removed backup") && err.contains("destination=s3"), "removals are logged: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_and_half_removed_backups_are_cleaned_after_the_grace_period() {
    let s3 = S3::start().await;
    let work = tempfile::tempdir().unwrap();
    let local = work.path().join("backups/default");
    let remote = s3.root.join(BUCKET).join("p/default");
    let now = Utc::now();
    let old = |d: i64, rev: i64| BackupId::new(now - Duration::days(d), rev, "a1");
    let committed: Vec<BackupId> = (1..=3).map(|i| old(10 + i, i)).collect();
    for folder in [&local, &remote] {
        for id in &committed {
            plant(folder, id, 10, false);
        }
        // A removal that stopped after the artifact: the manifest (and a pin) remain.
        let half = old(30, 40);
        std::fs::write(folder.join(half.manifest_name()), synthetic_manifest(&half, "default", 10).to_json()).unwrap();
        std::fs::write(folder.join(half.pin_name()), "pinned").unwrap();
        // A run that died between the artifact and its manifest, long ago and just now.
        std::fs::write(
            folder.join(old(3, 50).artifact_name(etcd_backupd::manifest::Compression::Zstd { level: 3 })),
            "x",
        )
        .unwrap();
        let fresh = BackupId::new(now - Duration::minutes(5), 60, "a1");
        std::fs::write(folder.join(fresh.artifact_name(etcd_backupd::manifest::Compression::Zstd { level: 3 })), "x")
            .unwrap();
        std::fs::write(folder.join("notes.txt"), "mine").unwrap();
        // The store's (file system's) clock agrees with the ids: the old leftovers were written long ago.
        for (name, days) in [(half.manifest_name(), 30), (half.pin_name(), 30)] {
            let when = std::time::SystemTime::now() - std::time::Duration::from_secs(days * 86400);
            std::fs::File::options().write(true).open(folder.join(name)).unwrap().set_modified(when).unwrap();
        }
        let stale_artifact = old(3, 50).artifact_name(etcd_backupd::manifest::Compression::Zstd { level: 3 });
        let when = std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 86400);
        std::fs::File::options().write(true).open(folder.join(stale_artifact)).unwrap().set_modified(when).unwrap();
    }
    // Unfinished local writes, one three days old, one fresh.
    let stale_part = local
        .join(format!("{}.part", old(3, 70).artifact_name(etcd_backupd::manifest::Compression::Zstd { level: 3 })));
    std::fs::write(&stale_part, "partial").unwrap();
    let three_days_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 86400);
    std::fs::File::options().write(true).open(&stale_part).unwrap().set_modified(three_days_ago).unwrap();
    let fresh_part = local.join(format!(
        "{}.part",
        BackupId::new(now, 80, "a1").artifact_name(etcd_backupd::manifest::Compression::Zstd { level: 3 })
    ));
    std::fs::write(&fresh_part, "partial").unwrap();

    let cfg = config(work.path(), "{ keep_last = 10 }", Some((&s3, "{ keep_last = 10 }")), NO_ETCD, RECIPIENT);
    let (local_before, remote_before) = (files(&local), s3.keys(BUCKET));

    let dry = run(&cfg, &["prune", "--dry-run"]).await;
    assert!(dry.status.success(), "{}", stderr(&dry));
    let text = stdout(&dry);
    assert_eq!(files(&local), local_before, "a dry run removes nothing");
    assert_eq!(s3.keys(BUCKET), remote_before);
    for needle in [
        "clean    ".to_string() + &old(30, 40).manifest_name(),
        "manifest without its artifact (an unfinished removal)".to_string(),
        "artifact without a manifest".to_string(),
        "(younger than 1day)".to_string(),
        "ignored  notes.txt".to_string(),
        "newest, last 10".to_string(),
        "(dry run: nothing was removed)".to_string(),
    ] {
        assert!(text.contains(&needle), "missing {needle:?} in:\n{text}");
    }

    let out = run(&cfg, &["prune"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let mut want: BTreeSet<String> = names_of(&committed.iter().map(|id| (id.clone(), false)).collect::<Vec<_>>());
    want.insert("notes.txt".into());
    want.insert(
        BackupId::new(now - Duration::minutes(5), 60, "a1")
            .artifact_name(etcd_backupd::manifest::Compression::Zstd { level: 3 }),
    );
    let mut want_local = want.clone();
    want_local.insert(fresh_part.file_name().unwrap().to_string_lossy().into_owned());
    assert_eq!(set(files(&local)), want_local);
    let want_remote: BTreeSet<String> = want.iter().map(|n| format!("p/default/{n}")).collect();
    assert_eq!(set(s3.keys(BUCKET)), want_remote);
    assert!(stderr(&out).contains("cleaned leftover"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_backups_survive_retention_and_explicit_delete_needs_force() {
    let etcd = Etcd::start(EtcdVersion::V35);
    let s3 = S3::start().await;
    let Setup { work, identity } = Setup::new();
    let cfg = config(
        work.path(),
        "{ keep_last = 1 }",
        Some((&s3, "{ keep_last = 1 }")),
        &etcd.config_table(),
        &identity.recipient,
    );

    let out = run(&cfg, &["backup", "--label", "pre-upgrade", "--pin"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let listed =
        |out: &std::process::Output| -> Vec<serde_json::Value> { serde_json::from_slice(&out.stdout).unwrap() };
    let first = listed(&run(&cfg, &["list", "--json"]).await);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["pinned"], true);
    let pinned_id = first[0]["id"].as_str().unwrap().to_string();

    for _ in 0..2 {
        etcd.seed(1, 1).await;
        let out = run(&cfg, &["backup"]).await;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let now = listed(&run(&cfg, &["list", "--json"]).await);
    let ids: Vec<&str> = now.iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2, "newest and the pinned one: {ids:?}");
    assert_eq!(ids[1], pinned_id);
    assert!(now.iter().all(|b| b["destinations"] == serde_json::json!(["local", "s3"])));

    let refused = run(&cfg, &["delete", &pinned_id]).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("is pinned; unpin it first"), "{}", stderr(&refused));
    assert_eq!(listed(&run(&cfg, &["list", "--json"]).await).len(), 2);

    let dry = run(&cfg, &["prune", "--dry-run"]).await;
    assert!(stdout(&dry).contains(&format!("keep     {pinned_id:<44} pinned")), "{}", stdout(&dry));

    assert!(run(&cfg, &["unpin", &pinned_id]).await.status.success());
    assert!(run(&cfg, &["prune"]).await.status.success());
    let after = listed(&run(&cfg, &["list", "--json"]).await);
    assert_eq!(after.len(), 1);
    assert_ne!(after[0]["id"].as_str().unwrap(), pinned_id);

    // Explicit delete of the newest works, everywhere; an unknown id is a clear error.
    let newest = after[0]["id"].as_str().unwrap().to_string();
    assert!(run(&cfg, &["pin", &newest]).await.status.success());
    let forced = run(&cfg, &["delete", &newest, "--force"]).await;
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert!(listed(&run(&cfg, &["list", "--json"]).await).is_empty());
    assert!(s3.keys(BUCKET).is_empty(), "{:?}", s3.keys(BUCKET));
    let missing = run(&cfg, &["delete", &newest]).await;
    assert!(stderr(&missing).contains("no destination holds a backup"), "{}", stderr(&missing));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_backup_survives_any_size_limit() {
    let s3 = S3::start().await;
    let work = tempfile::tempdir().unwrap();
    let remote = s3.root.join(BUCKET).join("p/default");
    let local = work.path().join("backups/default");
    for day in 1..=5 {
        let id = BackupId::new(Utc.with_ymd_and_hms(2026, 3, day, 0, 0, 0).unwrap(), day as i64, "a1");
        plant(&remote, &id, 1000, false);
        plant(&local, &id, 1000, false);
    }
    let cfg = config(
        work.path(),
        "{ keep_last = 5, max_total_size = \"1KiB\" }",
        Some((&s3, "{ keep_daily = 10, max_total_size = \"1B\" }")),
        NO_ETCD,
        RECIPIENT,
    );
    let out = run(&cfg, &["prune"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let newest = BackupId::new(Utc.with_ymd_and_hms(2026, 3, 5, 0, 0, 0).unwrap(), 5, "a1");
    assert_eq!(set(files(&local)), names_of(&[(newest.clone(), false)]));
    assert_eq!(s3.keys(BUCKET).len(), 2);
    assert!(s3.keys(BUCKET).iter().all(|k| k.contains(&newest.to_string())));
}

/// A backup committed locally while S3 was down is uploaded by the next run, oldest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_that_missed_s3_are_uploaded_by_the_next_run() {
    let etcd = Etcd::start(EtcdVersion::V34);
    let s3 = S3::start().await;
    let Setup { work, identity } = Setup::new();
    let cfg = config(
        work.path(),
        "{ keep_last = 10 }",
        Some((&s3, "{ keep_last = 10 }")),
        &etcd.config_table(),
        &identity.recipient,
    );

    s3.faults.down.store(true, Ordering::SeqCst);
    let mut missed = Vec::new();
    for pin in [true, false] {
        etcd.seed(1, 1).await;
        let args: &[&str] = if pin { &["backup", "--pin"] } else { &["backup"] };
        let out = run(&cfg, args).await;
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let listed: Vec<serde_json::Value> =
            serde_json::from_slice(&run(&cfg, &["list", "--json"]).await.stdout).unwrap_or_default();
        missed.push(listed.first().map(|b| b["id"].as_str().unwrap().to_string()).unwrap_or_default());
    }
    s3.faults.down.store(false, Ordering::SeqCst);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&run(&cfg, &["list", "--json"]).await.stdout).unwrap();
    assert!(listed.iter().all(|b| b["destinations"] == serde_json::json!(["local"])), "{listed:?}");

    etcd.seed(1, 1).await;
    let out = run(&cfg, &["backup"]).await;
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let first = err.find(&format!("uploaded a backup that only the local dir held id={}", missed[0]));
    let second = err.find(&format!("uploaded a backup that only the local dir held id={}", missed[1]));
    assert!(first.is_some() && second.is_some() && first < second, "oldest first:\n{err}");
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&run(&cfg, &["list", "--json"]).await.stdout).unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|b| b["destinations"] == serde_json::json!(["local", "s3"])), "{listed:?}");
    assert!(s3.keys(BUCKET).iter().any(|k| k.ends_with(&format!("{}.pinned", missed[0]))), "the pin travels too");
}

/// Catching up sends S3 only what S3's retention keeps: a local-only backup that S3's own prune would
/// remove in the same run is not uploaded at all (no upload, no delete).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_uploads_only_what_s3_retention_keeps() {
    let etcd = Etcd::start(EtcdVersion::V34);
    let s3 = S3::start().await;
    let Setup { work, identity } = Setup::new();
    let cfg = config(
        work.path(),
        "{ keep_last = 10 }",
        Some((&s3, "{ keep_last = 1 }")),
        &etcd.config_table(),
        &identity.recipient,
    );
    s3.faults.down.store(true, Ordering::SeqCst);
    etcd.seed(1, 1).await;
    assert_eq!(run(&cfg, &["backup"]).await.status.code(), Some(1));
    s3.faults.down.store(false, Ordering::SeqCst);
    s3.faults.counts.lock().unwrap().clear();

    etcd.seed(1, 1).await;
    let out = run(&cfg, &["backup"]).await;
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("S3's retention would remove it at once"), "{err}");
    assert!(!err.contains("uploaded a backup that only the local dir held"), "{err}");
    assert_eq!(s3.faults.counts.lock().unwrap().get("delete"), None, "nothing uploaded to be deleted");
    let manifests = s3.keys(BUCKET).into_iter().filter(|k| k.ends_with(".manifest.json")).count();
    assert_eq!(manifests, 1);
}

/// `prune` takes the run lock: while a backup runs (here: the lock is held), it waits, then gives up
/// naming the lock, and removes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_waits_for_a_running_backup() {
    let Setup { work, identity } = Setup::new();
    let cfg = config(work.path(), "{ keep_last = 1 }", None, NO_ETCD, &identity.recipient);
    let folder = work.path().join("backups/default");
    let start = chrono::Utc::now() - Duration::days(3);
    for i in 0..3 {
        plant(&folder, &BackupId::new(start + Duration::hours(i), i + 1, "a1"), 10, false);
    }
    let held = etcd_backupd::state::Lock::try_take(&state_dir_for(&cfg)).unwrap().expect("free");
    let out = run(&cfg, &["prune", "--wait", "1s"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("another backup is running"), "{}", stderr(&out));
    assert_eq!(files(&folder).len(), 6, "nothing removed");
    let out = run(&cfg, &["prune", "--dry-run"]).await;
    assert!(out.status.success(), "a dry run needs no lock: {}", stderr(&out));
    let oldest = BackupId::new(start, 1, "a1").to_string();
    for args in
        [["delete", &oldest, "--wait", "1s"], ["pin", &oldest, "--wait", "1s"], ["unpin", &oldest, "--wait", "1s"]]
    {
        let out = run(&cfg, &args).await;
        assert!(stderr(&out).contains("another backup is running"), "{args:?} waits for the lock: {}", stderr(&out));
    }
    assert_eq!(files(&folder).len(), 6, "nothing removed or pinned");
    // A prune that removes plans at the clock's time or earlier, never later.
    let later = (chrono::Utc::now() + Duration::days(30)).to_rfc3339();
    drop(held);
    let out = run(&cfg, &["prune", "--now", &later]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("later than this host's clock"), "{}", stderr(&out));
    assert!(run(&cfg, &["prune", "--dry-run", "--now", &later]).await.status.success());
    let out = run(&cfg, &["prune", "--wait", "1s"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(files(&folder).len(), 2);
}

/// `skip_unchanged` skips only a revision that reached every destination: one that missed S3 is backed
/// up again (and caught up) though etcd's revision did not change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_unchanged_never_skips_a_revision_s3_missed() {
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.seed(1, 1).await;
    let s3 = S3::start().await;
    let Setup { work, identity } = Setup::new();
    let cfg = config(
        work.path(),
        "{ keep_last = 10 }",
        Some((&s3, "{ keep_last = 10 }")),
        &etcd.config_table(),
        &identity.recipient,
    );
    let text = std::fs::read_to_string(&cfg).unwrap() + "\n[schedule]\nskip_unchanged = true\n";
    std::fs::write(&cfg, text).unwrap();
    s3.faults.down.store(true, Ordering::SeqCst);
    assert_eq!(run(&cfg, &["backup"]).await.status.code(), Some(1));
    s3.faults.down.store(false, Ordering::SeqCst);
    let out = run(&cfg, &["backup"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains("nothing to do"), "{}", stdout(&out));
    let remote = s3.keys(BUCKET).into_iter().filter(|k| k.ends_with(".manifest.json")).count();
    assert!(remote >= 1, "S3 got the revision: {:?}", s3.keys(BUCKET));
    let out = run(&cfg, &["backup"]).await;
    assert!(stdout(&out).contains("nothing to do"), "now it reached both: {}", stdout(&out));
}

/// Catching up: a backup whose id S3 holds under a manifest that does not check out is left alone (and
/// reported); a local copy that no longer matches its manifest's sha256 is not sent off-site; neither
/// holds back the backups after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_skips_what_cannot_go_and_sends_the_rest() {
    let etcd = Etcd::start(EtcdVersion::V34);
    let s3 = S3::start().await;
    let Setup { work, identity } = Setup::new();
    let cfg = config(
        work.path(),
        "{ keep_last = 10 }",
        Some((&s3, "{ keep_last = 10 }")),
        &etcd.config_table(),
        &identity.recipient,
    );
    s3.faults.down.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        etcd.seed(1, 1).await;
        assert_eq!(run(&cfg, &["backup"]).await.status.code(), Some(1));
    }
    s3.faults.down.store(false, Ordering::SeqCst);
    let local = work.path().join("backups/default");
    let ids: Vec<String> =
        files(&local).into_iter().filter_map(|n| n.strip_suffix(".manifest.json").map(str::to_string)).collect();
    let remote = s3.root.join(BUCKET).join("p/default");
    std::fs::create_dir_all(&remote).unwrap();
    std::fs::write(remote.join(format!("{}.manifest.json", ids[0])), "not a manifest").unwrap();
    std::fs::write(remote.join(format!("{}.db.zst.age", ids[0])), "x").unwrap();
    let damaged = local.join(format!("{}.db.zst.age", ids[1]));
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&damaged, bytes).unwrap();

    etcd.seed(1, 1).await;
    let out = run(&cfg, &["backup"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "the damaged copy is reported: {err}");
    assert!(err.contains("does not check out"), "{err}");
    assert!(err.contains("the local copy is damaged; it is not uploaded"), "{err}");
    assert!(err.contains(&format!("uploaded a backup that only the local dir held id={}", ids[2])), "{err}");
    let remote_ids: Vec<String> =
        files(&remote).into_iter().filter_map(|n| n.strip_suffix(".manifest.json").map(str::to_string)).collect();
    assert!(remote_ids.contains(&ids[2]) && !remote_ids.contains(&ids[1]), "{remote_ids:?}");
    assert_eq!(std::fs::read_to_string(remote.join(format!("{}.manifest.json", ids[0]))).unwrap(), "not a manifest");
}
