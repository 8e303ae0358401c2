//! Point-in-time recovery against real etcd: the chain streamed from a member's watch while it takes
//! puts, deletes, transactions and leases; then, for revisions in the middle of segments, at their
//! edges and at the chain's end, the base snapshot restored into a throwaway member and the segments
//! replayed into it give exactly what `get --rev` showed on the original, revision numbers included.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use etcd_backupd::crypto::PublicKey;
use etcd_backupd::deltas::chain::{Target, follow};
use etcd_backupd::deltas::replay::{keep_leases_alive, replay};
use etcd_backupd::deltas::stored::{read, read_all};
use etcd_backupd::deltas::watch::{Ended, Next, Report, Sink, stream};
use etcd_backupd::manifest::{BackupId, ClusterName, Compression};
use etcd_backupd::store::local::LocalStore;
use etcd_backupd::store::{Destination, Store};
use etcd_client::{Client, PutOptions, Txn, TxnOp};
use tokio_util::sync::CancellationToken;

fn snapshot_revision(version: EtcdVersion, snapshot: &std::path::Path) -> i64 {
    let tool = match version {
        EtcdVersion::V34 => "etcdctl",
        EtcdVersion::V35 => "etcdutl",
    };
    let out = std::process::Command::new(etcd_bin_dir(version).join(tool))
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "json"])
        .arg(snapshot)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["revision"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_restores_every_revision_with_the_original_numbers_35() {
    a_chain_restores_every_revision_with_the_original_numbers(EtcdVersion::V35).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_restores_every_revision_with_the_original_numbers_34() {
    a_chain_restores_every_revision_with_the_original_numbers(EtcdVersion::V34).await;
}

async fn a_chain_restores_every_revision_with_the_original_numbers(version: EtcdVersion) {
    let work = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(version);
    etcd.seed(300, 20).await;
    let base_file = work.path().join("base.db");
    let saved = etcd.etcdctl(&["snapshot", "save", base_file.to_str().unwrap()]);
    assert!(saved.status.success(), "{}", String::from_utf8_lossy(&saved.stderr));
    let base_revision = snapshot_revision(version, &base_file);
    let base = BackupId::new(chrono::Utc::now(), base_revision, &etcd.member_id_hex());

    let identity = age::x25519::Identity::generate();
    let public = PublicKey::parse(&identity.to_public().to_string()).unwrap();
    let stores = vec![Destination::Local(LocalStore::new(&work.path().join("backups"), &ClusterName::default()))];
    // What the stream says it committed, to compare with what the store holds.
    let (reports, mut reported) = tokio::sync::mpsc::unbounded_channel();
    let sink = Sink {
        stores: &stores,
        cluster: ClusterName::default(),
        compression: Compression::Zstd { level: 3 },
        recipients: vec![public],
        host: "test".into(),
        member_id: etcd.member_id_hex(),
        cluster_id: cluster_id_hex(&etcd),
        max_interval: Duration::from_millis(300),
        max_size: 8 * 1024,
        report: Some(reports),
    };
    let cancel = CancellationToken::new();
    let streaming = {
        let (mut client, cancel, next) =
            (etcd.client().await, cancel.clone(), Next::first(base.clone(), base_revision));
        async move { stream(&mut client, next, &sink, &cancel, &CancellationToken::new()).await }
    };
    // The writes, with the revision each made.
    let writes = async {
        let mut client = etcd.client().await;
        let mut made = Vec::new();
        let lease = client.lease_grant(600, None).await.unwrap().id();
        for i in 0..40u32 {
            let header = match i % 8 {
                // One delete of more keys than etcd's default transaction allows operations (128).
                _ if i == 13 => client
                    .delete("seed/", Some(etcd_client::DeleteOptions::new().with_prefix()))
                    .await
                    .unwrap()
                    .take_header(),
                0 => client.put(format!("/app/{i}"), vec![b'x'; 1500], None).await.unwrap().take_header(),
                1 => client.put(format!("/app/{}", i - 1), "rewritten", None).await.unwrap().take_header(),
                2 => client.delete(format!("seed/{i:06}"), None).await.unwrap().take_header(),
                3 => {
                    let ops = [
                        TxnOp::put(format!("/txn/{i}/a"), "a", None),
                        TxnOp::put(format!("/txn/{i}/b"), "b", None),
                        TxnOp::delete(format!("/app/{}", i - 3), None),
                    ];
                    client.txn(Txn::new().and_then(ops)).await.unwrap().take_header()
                }
                4 => client
                    .put(format!("/leased/{i}"), "held", Some(PutOptions::new().with_lease(lease)))
                    .await
                    .unwrap()
                    .take_header(),
                5 => client
                    .delete("/txn/", Some(etcd_client::DeleteOptions::new().with_prefix()))
                    .await
                    .unwrap()
                    .take_header(),
                6 => client.put(format!("/bin/{i}"), vec![0u8, 255, 10, 13], None).await.unwrap().take_header(),
                _ => client.put("/app/hot", format!("v{i}"), None).await.unwrap().take_header(),
            };
            made.push(header.unwrap().revision());
            if i % 10 == 9 {
                tokio::time::sleep(Duration::from_millis(400)).await; // some segments close on time
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        cancel.cancel();
        made
    };
    let (ended, made) = tokio::join!(streaming, writes);
    assert!(matches!(ended, Ended::Cancelled), "{ended}");
    let end = *made.last().unwrap();
    let mut streamed = Vec::new();
    while let Ok(report) = reported.try_recv() {
        if let Report::Committed(m) = report {
            streamed.push(*m);
        }
    }
    assert!(streamed.len() >= 3, "closed on size and on time: {}", streamed.len());

    // Read back from the store as a restore does: listed, checked, chained.
    let listing = stores[0].list().await.unwrap();
    let (committed, ignored) = read_all(&*stores[0], &listing.segments, &ClusterName::default()).await;
    assert!(ignored.is_empty(), "{ignored:?}");
    assert_eq!(committed, streamed);
    let chain = follow(&base, base_revision, &committed);
    assert_eq!((chain.broken.clone(), chain.end_revision()), (None, end), "every revision up to the last write");
    let live_keys = committed.last().unwrap().live_keys;
    assert_eq!(live_keys, Some(everything(&mut etcd.client().await, Some(end)).await.1.len() as u64));

    let identities: Arc<Vec<Box<dyn age::Identity + Send + Sync>>> = Arc::new(vec![Box::new(identity)]);
    let middle = committed[1].first_revision + 1;
    let targets = [base_revision + 1, committed[0].last_revision, committed[1].first_revision, middle, made[17], end];
    let mut original = etcd.client().await;
    for target in targets {
        let expected = everything(&mut original, Some(target)).await.1;
        let limits: Vec<&str> = etcd_backupd::throwaway::REPLAY_LIMITS.iter().flat_map(|(f, v)| [*f, *v]).collect();
        let restored = Etcd::start_restored_with(version, &base_file, &limits);
        let mut client = restored.client().await;
        let stop = CancellationToken::new();
        let keeper = tokio::spawn(keep_leases_alive(client.clone(), stop.clone()));
        let mut granted = HashSet::new();
        let mut last = None;
        for segment in chain.needs(Target::Revision(target)).unwrap() {
            let revisions = read(&*stores[0], segment, identities.clone()).await.unwrap();
            last = replay(&mut client, &revisions, target, &mut granted).await.unwrap().or(last);
        }
        stop.cancel();
        keeper.await.unwrap();
        assert_eq!(last, Some(target).filter(|t| *t > base_revision));
        let (revision, got) = everything(&mut client, None).await;
        assert_eq!(revision, target, "the restored member is at the target revision");
        assert_eq!(
            got, expected,
            "at revision {target}, keys, values, revisions, versions and leases as on the original"
        );
    }
}

/// The chain from the newest base in the local folder: the base, its revision, the usable segments
/// and the break, if any.
async fn chain_in(
    work: &std::path::Path,
) -> Option<(BackupId, i64, Vec<etcd_backupd::deltas::manifest::SegmentManifest>, bool)> {
    let store = LocalStore::new(&work.join("backups"), &ClusterName::default());
    let listing = store.list().await.ok()?;
    let base = listing.backups.first()?;
    let base_revision = base.manifest.snapshot.status.as_ref()?.served_revision();
    let (committed, _) = read_all(&store, &listing.segments, &ClusterName::default()).await;
    let chain = follow(&base.manifest.id, base_revision, &committed);
    let segments = chain.segments.iter().map(|s| (*s).clone()).collect();
    Some((base.manifest.id.clone(), base_revision, segments, chain.broken.is_some()))
}

/// The `[schedule]` (no scheduled backup), `[coordination]` and `[deltas]` tables of a member that
/// streams segments closed every second.
const STREAMING: &str = "[schedule]\ncron = \"0 0 1 1 *\"\n[coordination]\nmode = \"member\"\n[deltas]\nenabled = true\nmax_interval = \"1s\"\n";

/// Asks the daemon for a full backup (SIGUSR1) and waits until the newest base is another than `old`.
async fn new_base(work: &std::path::Path, daemon: &Daemon, old: &BackupId) {
    daemon.signal(nix::sys::signal::Signal::SIGUSR1);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while chain_in(work).await.is_none_or(|(base, ..)| &base == old) {
        assert!(std::time::Instant::now() < deadline, "no new base; log:\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the newest base's chain reaches `revision`.
async fn chain_reaches(
    work: &std::path::Path,
    revision: i64,
    daemon: &Daemon,
) -> Vec<etcd_backupd::deltas::manifest::SegmentManifest> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((_, base_revision, segments, broken)) = chain_in(work).await {
            assert!(!broken, "the chain is unbroken");
            if segments.last().map_or(base_revision, |s| s.last_revision) >= revision {
                return segments;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the chain never reached revision {revision}; log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn put_some(etcd: &Etcd, prefix: &str, count: u32) -> i64 {
    let mut client = etcd.client().await;
    let mut last = 0;
    for i in 0..count {
        last = client.put(format!("/{prefix}/{i}"), format!("{i}"), None).await.unwrap().header().unwrap().revision();
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_streams_goes_on_after_sigkill_and_starts_a_new_chain_after_compaction() {
    let work = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(EtcdVersion::V35);
    etcd.seed(10, 100).await;
    let identity = age_identity(work.path(), "key");
    let tables = STREAMING;
    let cfg = write_config(work.path(), &etcd.config_table(), &identity.recipient, "", tables);

    // The first full backup (none on record) is the first chain's base.
    let daemon = Daemon::start(&cfg).await;
    let first = put_some(&etcd, "a", 10).await;
    let before_kill = chain_reaches(work.path(), first, &daemon).await;
    let (base, ..) = chain_in(work.path()).await.unwrap();

    // Killed with changes received but their segment not yet closed (max_interval is 1 s).
    let unsaved = put_some(&etcd, "b", 5).await;
    daemon.kill().await;
    let (_, _, after_kill, _) = chain_in(work.path()).await.unwrap();
    assert_eq!(after_kill[..before_kill.len()], before_kill[..], "no committed segment is lost");

    // Started again, the chain goes on from its last committed segment: the changes the killed daemon
    // had not committed are read again from etcd's history.
    let daemon = Daemon::start(&cfg).await;
    let resumed = chain_reaches(work.path(), unsaved, &daemon).await;
    assert_eq!(resumed[..after_kill.len()], after_kill[..]);
    assert_eq!(chain_in(work.path()).await.unwrap().0, base, "the same chain");

    // A compaction while the stream runs (as kube-apiserver's every five minutes) changes nothing: the
    // watch is past it.
    let out = etcd.etcdctl(&["compact", &unsaved.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after_compaction = put_some(&etcd, "e", 5).await;
    chain_reaches(work.path(), after_compaction, &daemon).await;
    assert_eq!(chain_in(work.path()).await.unwrap().0, base, "still the same chain");
    let (_, _, notes, log) = daemon.stop().await;
    assert!(notes.iter().any(|n| n.contains("STOPPING=1")), "{log}");

    // While it was stopped, etcd compacted the history the chain needs next: a new full backup, and a
    // new chain from it.
    let compacted = put_some(&etcd, "c", 5).await;
    let out = etcd.etcdctl(&["compact", &compacted.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let daemon = Daemon::start(&cfg).await;
    daemon
        .wait_until("a new base", || {
            std::fs::read_dir(work.path().join("backups/default"))
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".manifest.json"))
                .count()
                == 2
        })
        .await;
    let later = put_some(&etcd, "d", 3).await;
    let fresh = chain_reaches(work.path(), later, &daemon).await;
    let (new_base, new_base_revision, ..) = chain_in(work.path()).await.unwrap();
    assert_ne!(new_base, base);
    assert!(new_base_revision >= compacted, "the new base holds the compacted revisions");
    assert_eq!(fresh[0].id.seq(), 1);
    let log = daemon.log();
    assert!(log.contains("compacted") && log.contains("taking a full backup now"), "{log}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_backup_starts_a_new_chain_and_the_old_chain_goes_with_its_base() {
    let work = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(EtcdVersion::V35);
    let s3 = S3::start().await;
    let identity = age_identity(work.path(), "key");
    let tables = format!("{STREAMING}{}", s3.config_table_with(BUCKET, "", "{ keep_last = 1 }"));
    let cfg =
        write_config(work.path(), &etcd.config_table(), &identity.recipient, "retention = { keep_last = 1 }", &tables);
    let daemon = Daemon::start(&cfg).await;
    chain_reaches(work.path(), put_some(&etcd, "a", 5).await, &daemon).await;
    let (old_base, ..) = chain_in(work.path()).await.unwrap();
    let in_s3 = |id: &BackupId| s3.keys(BUCKET).into_iter().filter(|k| k.contains(&id.to_string())).collect::<Vec<_>>();
    assert!(in_s3(&old_base).iter().any(|k| k.ends_with(".segment.json")), "segments go to S3 too");

    // A new backup: the old one and its chain are pruned (keep_last = 1), and a new chain begins.
    new_base(work.path(), &daemon, &old_base).await;
    let fresh = chain_reaches(work.path(), put_some(&etcd, "b", 5).await, &daemon).await;
    let (new_base, ..) = chain_in(work.path()).await.unwrap();
    assert_eq!((fresh[0].id.base(), fresh[0].id.seq()), (&new_base, 1));
    daemon.stop().await;
    // A segment the old chain committed while the prune ran is an orphan: the next prune takes it.
    let pruned = run(&cfg, &["prune"]).await;
    assert!(pruned.status.success(), "{}", stderr(&pruned));
    let local: Vec<String> = files(&work.path().join("backups/default"));
    assert!(!local.iter().any(|f| f.contains(&old_base.to_string())), "{local:?}");
    assert_eq!(in_s3(&old_base), Vec::<String>::new());
    assert!(in_s3(&new_base).iter().any(|k| k.ends_with(".segment.json")));
}

fn cluster_id_hex(etcd: &Etcd) -> String {
    let out = etcd.etcdctl(&["endpoint", "status", "-w", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    format!("{:x}", status[0]["Status"]["header"]["cluster_id"].as_u64().unwrap())
}

/// A segment planted in the folder that claims a billion revisions past the base: followed naively, the
/// stream would watch from a revision etcd reaches in years and stall in silence. It is refused as
/// ahead of etcd's history, and a new full backup starts a new chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_segment_ahead_of_etcd_starts_a_new_chain_rather_than_stalling() {
    planted_segment_starts_a_new_chain(Planted::Ahead, "ahead of etcd's").await;
}

/// The same segment recording another cluster's id: a chain never goes on into another history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_of_another_cluster_starts_a_new_chain() {
    planted_segment_starts_a_new_chain(Planted::OtherCluster, "not this one").await;
}

/// A segment planted at the chain's end, within etcd's history, that is not that history: the keys it
/// says the cluster held at its last revision are not what etcd counts there. Continued after, it
/// would stand in every restore past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_segment_unlike_etcds_history_starts_a_new_chain() {
    planted_segment_starts_a_new_chain(Planted::WrongCount, "records 1000 keys at revision").await;
}

/// The same without a key count (as when etcd went down as the segment was committed): checked by the
/// revisions and events etcd's history holds over its range instead, which it does not match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_without_a_key_count_is_checked_by_its_events() {
    planted_segment_starts_a_new_chain(Planted::NoCount, "records 3 revisions and 7 events").await;
}

enum Planted {
    /// A billion revisions past etcd's.
    Ahead,
    /// Of another cluster id.
    OtherCluster,
    /// Three revisions etcd has, with a key count etcd does not give.
    WrongCount,
    /// Three revisions etcd has, with no key count and more events than they hold.
    NoCount,
}

async fn planted_segment_starts_a_new_chain(plant: Planted, said: &str) {
    use etcd_backupd::deltas::manifest::{BodyFacts, SegmentId, SegmentManifest};
    use sha2::Digest;
    let work = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(EtcdVersion::V35);
    let identity = age_identity(work.path(), "key");
    let tables = STREAMING;
    let cfg = write_config(work.path(), &etcd.config_table(), &identity.recipient, "", tables);
    let out = run(&cfg, &["backup"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let (base, base_revision, ..) = chain_in(work.path()).await.unwrap();
    // Revisions etcd has: three new keys.
    put_some(&etcd, "had", 3).await;
    let (last_revision, live_keys) = match plant {
        Planted::Ahead | Planted::OtherCluster => (base_revision + 1_000_000_000, None),
        Planted::WrongCount => (base_revision + 3, Some(1000)),
        Planted::NoCount => (base_revision + 3, None),
    };
    let folder = work.path().join("backups/default");
    let id = SegmentId::new(base.clone(), 1);
    let artifact = b"not a segment at all".to_vec();
    let now = chrono::Utc::now();
    let planted = SegmentManifest {
        format_version: 1,
        id: id.clone(),
        cluster: ClusterName::default(),
        host: "elsewhere".into(),
        tool_version: "0".into(),
        member_id: etcd.member_id_hex(),
        cluster_id: if matches!(plant, Planted::OtherCluster) { "0".into() } else { cluster_id_hex(&etcd) },
        base_revision,
        first_revision: base_revision + 1,
        last_revision,
        revisions: (last_revision - base_revision) as u64,
        events: (last_revision - base_revision) as u64 + if matches!(plant, Planted::NoCount) { 4 } else { 0 },
        first_received: now,
        last_received: now,
        closed: now,
        previous_sha256: None,
        live_keys,
        body: BodyFacts { size: 10, sha256: "00".repeat(32) },
        artifact: etcd_backupd::manifest::ArtifactFacts {
            name: id.artifact_name(Compression::Zstd { level: 3 }),
            size: artifact.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(&artifact)),
            compression: etcd_backupd::manifest::CompressionName::Zstd,
            compression_level: Some(3),
            encryption: "age".into(),
            recipients: vec![],
        },
    };
    std::fs::write(folder.join(id.artifact_name(Compression::Zstd { level: 3 })), &artifact).unwrap();
    std::fs::write(folder.join(id.manifest_name()), planted.to_json()).unwrap();

    let daemon = Daemon::start(&cfg).await;
    daemon
        .wait_until("a new base", || {
            std::fs::read_dir(&folder)
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".manifest.json"))
                .count()
                == 2
        })
        .await;
    let fresh = chain_reaches(work.path(), put_some(&etcd, "x", 3).await, &daemon).await;
    assert_ne!(fresh[0].id.base(), &base);
    let log = daemon.log();
    assert!(log.contains(said), "{log}");
    daemon.stop().await;
}

/// `restore --revision` and `--at`, as an operator runs them after the daemon streamed: a snapshot file
/// and a new data dir, each holding exactly what `get --rev` showed on the original at that point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_to_a_revision_or_a_time_gives_what_the_cluster_held_then() {
    let version = EtcdVersion::V35;
    let work = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(version);
    etcd.seed(20, 50).await;
    let identity = age_identity(work.path(), "key");
    let metrics = work.path().join("metrics.prom");
    let tables = format!(
        "[schedule]\ncron = \"0 0 1 1 *\"\n[coordination]\nmode = \"member\"\n[deltas]\nenabled = true\nmax_interval = \"1s\"\n[metrics]\ntextfile = \"{}\"\n",
        metrics.display()
    );
    let cfg = write_config(work.path(), &etcd.config_table(), &identity.recipient, "", &tables);
    let daemon = Daemon::start(&cfg).await;
    let mut client = etcd.client().await;
    let lease = client.lease_grant(3600, None).await.unwrap().id();
    client.put("/leased", "yes", Some(PutOptions::new().with_lease(lease))).await.unwrap();
    client.delete("seed/", Some(etcd_client::DeleteOptions::new().with_prefix())).await.unwrap();
    let first = put_some(&etcd, "a", 10).await;
    chain_reaches(work.path(), first, &daemon).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let between = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = put_some(&etcd, "b", 10).await;
    chain_reaches(work.path(), second, &daemon).await;
    let third = put_some(&etcd, "c", 5).await;
    let committed = chain_reaches(work.path(), third, &daemon).await;
    // The metrics follow the stream: how far it reaches, what it wrote.
    let reached = format!("etcd_backupd_delta_last_revision{{cluster=\"default\"}} {third}\n");
    daemon.wait_until("the metrics", || std::fs::read_to_string(&metrics).unwrap_or_default().contains(&reached)).await;
    let text = std::fs::read_to_string(&metrics).unwrap();
    let segments = format!("etcd_backupd_delta_segments_total{{cluster=\"default\"}} {}\n", committed.len());
    assert!(text.contains(&segments), "{text}");
    let chain =
        format!("etcd_backupd_delta_chain_info{{cluster=\"default\",chain=\"{}\"}} 1\n", committed[0].id.base());
    assert!(text.contains(&chain), "{text}");
    // Idle, the stream still says how far it covers: etcd, asked, says nothing changed.
    let covered = || -> f64 {
        let text = std::fs::read_to_string(&metrics).unwrap_or_default();
        let line = text.lines().find(|l| l.starts_with("etcd_backupd_delta_covered_until_timestamp_seconds{"));
        line.and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0.0)
    };
    let before = covered();
    let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    daemon.wait_until("the covered time to move while idle", || covered() > now + 1.0).await;
    assert!(covered() > before);
    daemon.stop().await;

    // `list` says how far each backup's chain reaches.
    let listed = run(&cfg, &["list"]).await;
    assert!(stdout(&listed).contains(&format!("restorable to any revision up to {third}")), "{}", stdout(&listed));
    let json = run(&cfg, &["list", "--json"]).await;
    let rows: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(rows[0]["chain"]["until_revision"], third, "{rows}");

    let bin = etcd_bin_dir(version).display().to_string();
    let key = identity.file.display().to_string();

    // A drill replays the chain to its end and checks the revision and the keys the stream counted.
    let drilled = run(&cfg, &["drill", "--identity", &key, "--etcd-bin", &bin, "--json"]).await;
    assert!(drilled.status.success(), "{}", stderr(&drilled));
    let report: serde_json::Value = serde_json::from_slice(&drilled.stdout).unwrap();
    let keys_then = everything(&mut client, Some(third)).await.1.len();
    assert_eq!(
        (report["chain"]["revision"].as_i64(), report["chain"]["keys"].as_u64()),
        (Some(third), Some(keys_then as u64)),
        "{report}"
    );
    let restored_file = |name: &str| work.path().join(name).display().to_string();
    let at = between.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    for (point, value, expected) in [
        ("--revision", (first - 4).to_string(), first - 4),
        ("--at", at, first),
        ("--revision", second.to_string(), second),
    ] {
        let file = restored_file(&format!("point-{expected}.db"));
        let out =
            run(&cfg, &["restore", point, &value, "--identity", &key, "--output", &file, "--etcd-bin", &bin]).await;
        assert!(out.status.success(), "{point} {value}: {}", stderr(&out));
        assert!(stdout(&out).contains(&format!("at revision {expected} ")), "{}", stdout(&out));
        let restored = Etcd::start_restored(version, std::path::Path::new(&file));
        let (revision, got) = everything(&mut restored.client().await, None).await;
        assert_eq!(revision, expected, "{point} {value}: the restored member is at the point's revision");
        assert_eq!(got, everything(&mut client, Some(expected)).await.1, "{point} {value}");
    }

    // Into a new data dir, as one member of the restored cluster, revision numbers kept.
    let member = &Member::several(1)[0];
    let data_dir = work.path().join("restored");
    let (dir, cluster, peer) = (data_dir.display().to_string(), Member::initial_cluster([member]), member.peer_url());
    let target = (first + 2).to_string();
    let args = ["restore", "--revision", &target, "--identity", &key, "--data-dir", &dir, "--etcd-bin", &bin];
    let more = [
        "--name",
        &member.name,
        "--initial-cluster",
        &cluster,
        "--initial-advertise-peer-urls",
        &peer,
        "--no-bump-revision",
    ];
    let out = run(&cfg, &[&args[..], &more[..]].concat()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let restored = Etcd::start_on(version, &data_dir, member);
    let (revision, got) = everything(&mut restored.client().await, None).await;
    assert_eq!(revision, first + 2);
    assert_eq!(got, everything(&mut client, Some(first + 2)).await.1);

    // A point no chain holds: said, with what the destinations hold.
    let beyond = (second + 1000).to_string();
    let file = restored_file("beyond.db");
    let out =
        run(&cfg, &["restore", "--revision", &beyond, "--identity", &key, "--output", &file, "--etcd-bin", &bin]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no backup and chain of delta segments holds revision"), "{}", stderr(&out));
    assert!(!std::path::Path::new(&file).exists());

    // A replaced segment is named as damaged; a segment removed from the chain stops it there, and the
    // refusal of a point past it names the missing segment.
    let folder = work.path().join("backups/default");
    let (_, _, segments, _) = chain_in(work.path()).await.unwrap();
    assert!(segments.len() >= 3, "{} segments", segments.len());
    let first_segment = &segments[0];
    let artifact = folder.join(first_segment.artifact_name());
    let good = std::fs::read(&artifact).unwrap();
    let mut bytes = good.clone();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&artifact, bytes).unwrap();
    let inside = first_segment.last_revision.to_string();
    let out =
        run(&cfg, &["restore", "--revision", &inside, "--identity", &key, "--output", &file, "--etcd-bin", &bin]).await;
    assert!(!out.status.success());
    let said = stderr(&out);
    assert!(said.contains(&first_segment.id.to_string()) && said.contains("damaged or replaced"), "{said}");
    std::fs::write(&artifact, good).unwrap();
    let gone = &segments[1];
    std::fs::remove_file(folder.join(gone.artifact_name())).unwrap();
    let last = segments.last().unwrap().last_revision.to_string();
    let out =
        run(&cfg, &["restore", "--revision", &last, "--identity", &key, "--output", &file, "--etcd-bin", &bin]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&format!("segment {} of the chain", gone.id.seq())), "{}", stderr(&out));
    assert!(!std::path::Path::new(&file).exists());
}

/// SIGTERM with a segment open (its interval far off): the segment is committed before the daemon
/// exits, and the next one started goes on after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_commits_the_open_segment() {
    let work = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(EtcdVersion::V35);
    let identity = age_identity(work.path(), "key");
    let tables = "[schedule]\ncron = \"0 0 1 1 *\"\n[coordination]\nmode = \"member\"\n[deltas]\nenabled = true\nmax_interval = \"30m\"\n";
    let cfg = write_config(work.path(), &etcd.config_table(), &identity.recipient, "", tables);
    let daemon = Daemon::start(&cfg).await;
    daemon.wait_until("the stream", || daemon.log().contains("streaming delta segments")).await;
    let written = put_some(&etcd, "open", 5).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // the watch delivers them
    let (_, base_revision, before, _) = chain_in(work.path()).await.unwrap();
    assert!(before.is_empty(), "nothing closed yet: the interval is half an hour");
    let (status, _, _, log) = daemon.stop().await;
    assert!(status.success(), "{log}");
    let (_, _, after, broken) = chain_in(work.path()).await.unwrap();
    assert!(!broken);
    assert_eq!(
        (after.len(), after[0].first_revision, after[0].last_revision),
        (1, base_revision + 1, written),
        "{log}"
    );
}

/// A pinned backup keeps its whole chain when retention removes the backups around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_backup_keeps_its_chain() {
    let work = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(EtcdVersion::V35);
    let identity = age_identity(work.path(), "key");
    let tables = STREAMING;
    let cfg =
        write_config(work.path(), &etcd.config_table(), &identity.recipient, "retention = { keep_last = 1 }", tables);
    let daemon = Daemon::start(&cfg).await;
    let kept = chain_reaches(work.path(), put_some(&etcd, "a", 5).await, &daemon).await;
    let pinned = kept[0].id.base().clone();
    let out = run(&cfg, &["pin", &pinned.to_string(), "--wait", "30s"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    new_base(work.path(), &daemon, &pinned).await;
    chain_reaches(work.path(), put_some(&etcd, "b", 5).await, &daemon).await;
    daemon.stop().await;
    let out = run(&cfg, &["prune"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let store = LocalStore::new(&work.path().join("backups"), &ClusterName::default());
    let listing = store.list().await.unwrap();
    let (segments, _) = read_all(&store, &listing.segments, &ClusterName::default()).await;
    // Every segment of the pinned chain (the stream may have added some before the new base was recorded).
    let still: Vec<_> = segments.iter().filter(|s| s.id.base() == &pinned).map(|s| s.id.clone()).collect();
    let before: Vec<_> = kept.iter().map(|s| s.id.clone()).collect();
    assert!(still.len() >= before.len() && still[..before.len()] == before[..], "{still:?}");
    let base = listing.backups.iter().find(|b| b.manifest.id == pinned).expect("the pinned backup stays");
    let chain = follow(&pinned, base.manifest.snapshot.status.as_ref().unwrap().served_revision(), &segments);
    assert_eq!((chain.segments.len(), chain.broken), (still.len(), None));
}

/// `restore POINT VALUE --output FILE` with the test's identity and etcd.
async fn restore_point(
    cfg: &std::path::Path,
    version: EtcdVersion,
    point: &str,
    value: &str,
    file: &std::path::Path,
) -> std::process::Output {
    let key = cfg.parent().unwrap().join("key.txt").display().to_string();
    let bin = etcd_bin_dir(version).display().to_string();
    let file = file.display().to_string();
    run(cfg, &["restore", point, value, "--identity", &key, "--output", &file, "--etcd-bin", &bin]).await
}

/// The snapshot at `file`, served, holds exactly what the original held at `revision`, at that revision.
async fn holds_what_was_at(version: EtcdVersion, file: &std::path::Path, original: &mut Client, revision: i64) {
    let restored = Etcd::start_restored(version, file);
    let (at, got) = everything(&mut restored.client().await, None).await;
    assert_eq!(at, revision, "the restored member is at the point's revision");
    assert_eq!(got, everything(original, Some(revision)).await.1, "the keys at revision {revision}");
}

/// A copy that fails falls back to the next: with a segment damaged in the local folder, the restore
/// goes through the same chain in S3, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_local_segment_falls_back_to_the_copy_in_s3() {
    let version = EtcdVersion::V34;
    let work = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(version);
    let s3 = S3::start().await;
    let identity = age_identity(work.path(), "key");
    let tables = format!("{STREAMING}{}", s3.config_table(BUCKET, ""));
    let cfg = write_config(work.path(), &etcd.config_table(), &identity.recipient, "", &tables);
    let daemon = Daemon::start(&cfg).await;
    chain_reaches(work.path(), put_some(&etcd, "a", 5).await, &daemon).await;
    let last = put_some(&etcd, "b", 5).await;
    let segments = chain_reaches(work.path(), last, &daemon).await;
    daemon.stop().await;
    // S3 is written first: it holds every segment the folder holds.
    let damaged = work.path().join("backups/default").join(segments[0].artifact_name());
    let mut bytes = std::fs::read(&damaged).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&damaged, bytes).unwrap();

    let file = work.path().join("point.db");
    let out = restore_point(&cfg, version, "--revision", &last.to_string(), &file).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(said.contains("could not restore through") && said.contains("in local"), "{said}");
    assert!(said.contains(&segments[0].id.to_string()) && said.contains("damaged or replaced"), "{said}");
    assert!(said.contains(&format!("at revision {last} ")) && said.contains("from s3"), "{said}");
    holds_what_was_at(version, &file, &mut etcd.client().await, last).await;
}

/// `[deltas] keep_for`: a prune removes the segments of a base older than that, keeps the base itself
/// (retention decides it) and the chain being written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_for_removes_an_old_chain_and_keeps_its_base() {
    let work = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(EtcdVersion::V35);
    let identity = age_identity(work.path(), "key");
    let tables = "[schedule]\ncron = \"0 0 1 1 *\"\n[coordination]\nmode = \"member\"\n[deltas]\nenabled = true\nmax_interval = \"1s\"\nkeep_for = \"1s\"\n";
    let cfg =
        write_config(work.path(), &etcd.config_table(), &identity.recipient, "retention = { keep_last = 5 }", tables);
    let daemon = Daemon::start(&cfg).await;
    let old = chain_reaches(work.path(), put_some(&etcd, "a", 5).await, &daemon).await;
    let old_base = old[0].id.base().clone();
    new_base(work.path(), &daemon, &old_base).await;
    let fresh = chain_reaches(work.path(), put_some(&etcd, "b", 5).await, &daemon).await;
    daemon.stop().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let out = run(&cfg, &["prune"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let left = files(&work.path().join("backups/default"));
    let segment = |f: &String| f.ends_with(".segment.json") || f.ends_with(".delta.zst.age");
    assert!(!left.iter().any(|f| f.contains(&old_base.to_string()) && segment(f)), "{left:?}");
    assert!(left.contains(&format!("{old_base}.manifest.json")), "the base stays: {left:?}");
    let (_, _, now, broken) = chain_in(work.path()).await.unwrap();
    assert!(!broken && now.len() >= fresh.len() && now[..fresh.len()] == fresh[..], "the chain being written stays");
}

/// `--at` between a base and its first segment restores the base; points before and after a new base
/// each go through the chain that holds them, a quiet time before the new base included; every one
/// equal to `get --rev` on the original.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_before_the_first_segment_and_across_a_new_base() {
    let version = EtcdVersion::V34;
    let work = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(version);
    etcd.seed(10, 20).await;
    let identity = age_identity(work.path(), "key");
    let tables = STREAMING;
    let cfg = write_config(work.path(), &etcd.config_table(), &identity.recipient, "", tables);
    let daemon = Daemon::start(&cfg).await;
    daemon.wait_until("the stream", || daemon.log().contains("streaming delta segments")).await;
    let (first_base, first_base_revision, ..) = chain_in(work.path()).await.unwrap();
    let before_segments = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let in_first = put_some(&etcd, "a", 5).await;
    chain_reaches(work.path(), in_first, &daemon).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A time is restorable once a segment closed after it (a chain holds every change until its last
    // segment's close): one more change after each time asked for.
    let between = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let end_of_first = put_some(&etcd, "later", 1).await;
    chain_reaches(work.path(), end_of_first, &daemon).await;
    // Then nothing changes until the next backup, which holds the revision the chain ends at: a time
    // after the chain's last segment closed is the chain's end.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let quiet = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    new_base(work.path(), &daemon, &first_base).await;
    let in_second = put_some(&etcd, "b", 5).await;
    let second = chain_reaches(work.path(), in_second, &daemon).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    chain_reaches(work.path(), put_some(&etcd, "later", 1).await, &daemon).await;
    daemon.stop().await;
    assert_ne!(second[0].id.base(), &first_base);

    let mut client = etcd.client().await;
    let time = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    for (point, value, expected, base) in [
        ("--at", time(before_segments), first_base_revision, &first_base),
        ("--revision", (in_first - 2).to_string(), in_first - 2, &first_base),
        ("--at", time(between), in_first, &first_base),
        ("--at", time(quiet), end_of_first, &first_base),
        ("--at", time(after), in_second, second[0].id.base()),
    ] {
        let file = work.path().join(format!("point-{expected}.db"));
        let out = restore_point(&cfg, version, point, &value, &file).await;
        assert!(out.status.success(), "{point} {value}: {}", stderr(&out));
        let said = stdout(&out);
        assert!(said.contains(&format!("at revision {expected} (backup {base} ")), "{point} {value}: {said}");
        holds_what_was_at(version, &file, &mut client, expected).await;
    }
}

/// A lease that expires in the original while the chain runs: a point before the expiry holds the key
/// with its lease, a point after holds neither. Into a data dir the revision is raised as for any
/// restore; where etcdutl cannot (before 3.5.10), that is said with what to do instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_expiring_mid_chain_and_the_revision_of_a_data_dir() {
    let version = EtcdVersion::V35;
    let work = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(version);
    let identity = age_identity(work.path(), "key");
    let tables = STREAMING;
    let cfg = write_config(work.path(), &etcd.config_table(), &identity.recipient, "", tables);
    let daemon = Daemon::start(&cfg).await;
    daemon.wait_until("the stream", || daemon.log().contains("streaming delta segments")).await;
    let mut client = etcd.client().await;
    let lease = client.lease_grant(6, None).await.unwrap().id();
    let leased = client
        .put("/ephemeral", "soon gone", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    put_some(&etcd, "a", 3).await;
    // etcd revokes the lease once its TTL passes: the key's deletion is a revision of its own.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !client.get("/ephemeral", None).await.unwrap().kvs().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let gone = client.get("/ephemeral", None).await.unwrap().header().unwrap().revision();
    let after = put_some(&etcd, "b", 3).await;
    chain_reaches(work.path(), after, &daemon).await;
    daemon.stop().await;

    for revision in [leased, gone] {
        let file = work.path().join(format!("point-{revision}.db"));
        let out = restore_point(&cfg, version, "--revision", &revision.to_string(), &file).await;
        assert!(out.status.success(), "{}", stderr(&out));
        holds_what_was_at(version, &file, &mut client, revision).await;
    }

    // Into a data dir, without --no-bump-revision.
    let member = &Member::several(1)[0];
    let data_dir = work.path().join("restored");
    let (dir, cluster, peer) = (data_dir.display().to_string(), Member::initial_cluster([member]), member.peer_url());
    let key = identity.file.display().to_string();
    let bin = etcd_bin_dir(version).display().to_string();
    let target = leased.to_string();
    let args = ["restore", "--revision", &target, "--identity", &key, "--data-dir", &dir, "--etcd-bin", &bin];
    let more = ["--name", &member.name, "--initial-cluster", &cluster, "--initial-advertise-peer-urls", &peer];
    let out = run(&cfg, &[&args[..], &more[..]].concat()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    // etcdutl 3.5.1 cannot raise the revision (3.5.10 can): said, with what to do instead.
    let said = stdout(&out);
    assert!(
        said.contains("does not offer --bump-revision") && said.contains(&format!("snapshot's, {leased},")),
        "{said}"
    );
    let restored = Etcd::start_on(version, &data_dir, member);
    let (revision, got) = everything(&mut restored.client().await, None).await;
    assert_eq!(revision, leased);
    assert_eq!(got, everything(&mut client, Some(leased)).await.1, "the keys and their own revisions");
}

/// SIGINT while the segments are replayed: the restore stops its throwaway etcd, writes nothing at
/// the output, leaves no scratch folder, and exits 130.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_during_a_point_restore_leaves_nothing() {
    use futures::StreamExt;
    let version = EtcdVersion::V34;
    let work = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(version);
    let identity = age_identity(work.path(), "key");
    let tables = STREAMING;
    let cfg = write_config(work.path(), &etcd.config_table(), &identity.recipient, "", tables);
    let daemon = Daemon::start(&cfg).await;
    daemon.wait_until("the stream", || daemon.log().contains("streaming delta segments")).await;
    // Enough revisions that the replay takes a while.
    let client = etcd.client().await;
    let last = futures::stream::iter(0..20_000u32)
        .map(|i| {
            let mut client = client.clone();
            async move {
                client
                    .put(format!("/many/{}", i % 500), format!("{i}"), None)
                    .await
                    .unwrap()
                    .header()
                    .unwrap()
                    .revision()
            }
        })
        .buffer_unordered(32)
        .fold(0, |a, b| async move { a.max(b) })
        .await;
    chain_reaches(work.path(), last, &daemon).await;
    daemon.stop().await;

    let state = state_dir_for(&cfg);
    let file = work.path().join("point.db");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_etcd-backupd"));
    cmd.arg("--config").arg(&cfg).args(["restore", "--revision", &last.to_string(), "--identity"]);
    cmd.arg(&identity.file).arg("--output").arg(&file).arg("--etcd-bin").arg(etcd_bin_dir(version));
    cmd.env("STATE_DIRECTORY", &state).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    aws_env(&mut cmd);
    let restore = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while etcd_children_in(&state).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the restore's etcd never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(restore.id().unwrap() as i32), nix::sys::signal::Signal::SIGINT)
        .unwrap();
    let out = restore.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(etcd_children_in(&state).is_empty(), "the throwaway etcd outlived the restore");
    assert!(!file.exists(), "nothing is named at the output");
    let left: Vec<String> = files(&state).into_iter().filter(|n| n.starts_with(".etcd-backupd-scratch")).collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Full backups slower than etcd keeps its history (an upload of minutes against kube-apiserver's
/// five-minute compaction): each new chain is compacted away before it can start. After the second in
/// a row the daemon says so, with what to change, and takes no more full backups for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_slower_than_etcds_history_do_not_take_one_backup_after_another() {
    let work = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(EtcdVersion::V35);
    let s3 = S3::start().await;
    // Every upload takes at least this long.
    s3.faults.part_delay_ms.store(1500, std::sync::atomic::Ordering::SeqCst);
    let identity = age_identity(work.path(), "key");
    let tables = format!("{STREAMING}{}", s3.config_table(BUCKET, ""));
    let cfg = write_config(work.path(), &etcd.config_table(), &identity.recipient, "", &tables);
    // etcd compacts its history as fast as it changes.
    let mut client = etcd.client().await;
    let compactor = AbortOnDrop(tokio::spawn(async move {
        for i in 0u64.. {
            let revision = client.put("/busy", i.to_string(), None).await.unwrap().header().unwrap().revision();
            client.compact(revision, None).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }));
    let daemon = Daemon::start(&cfg).await;
    daemon.wait_until("the second chain compacted away", || daemon.log().contains("twice in a row")).await;
    let bases = || files(&work.path().join("backups/default")).iter().filter(|f| f.ends_with(".manifest.json")).count();
    let then = bases();
    assert_eq!(then, 2, "the first backup, and one more taken at once for the chain");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(bases(), then, "no full backup after another; log:\n{}", daemon.log());
    let log = daemon.log();
    assert!(log.contains("--auto-compaction-retention") && log.contains("--etcd-compaction-interval"), "{log}");
    drop(compactor);
    daemon.stop().await;
}

/// Aborts a task when dropped (a test's background writer ends with the test, even when it fails).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// etcd restarts while a segment is open: the segment is committed as the watch is lost (etcd cannot
/// be asked for its key count then), and once etcd is back the same chain goes on after it, checked by
/// its revisions and events; no full backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_restart_mid_segment_goes_on_with_the_same_chain() {
    let version = EtcdVersion::V35;
    let work = tempfile::tempdir().unwrap();
    let member = &Member::several(1)[0];
    let data = work.path().join("etcd-data");
    let etcd = Etcd::start_on(version, &data, member);
    let identity = age_identity(work.path(), "key");
    let tables = "[schedule]\ncron = \"0 0 1 1 *\"\n[coordination]\nmode = \"member\"\n[deltas]\nenabled = true\nmax_interval = \"30m\"\n";
    let cfg = write_config(work.path(), &etcd.config_table(), &identity.recipient, "", tables);
    let daemon = Daemon::start(&cfg).await;
    daemon.wait_until("the stream", || daemon.log().contains("streaming delta segments")).await;
    let (base, ..) = chain_in(work.path()).await.unwrap();
    let before = put_some(&etcd, "before", 5).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // the watch delivers them
    drop(etcd);
    daemon.wait_until("the open segment committed", || daemon.log().contains("delta segment committed")).await;
    let etcd = Etcd::start_on(version, &data, member);
    daemon.wait_until("the stream again", || daemon.log().matches("streaming delta segments").count() == 2).await;
    let after = put_some(&etcd, "after", 5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _, _, log) = daemon.stop().await;
    assert!(status.success(), "{log}");
    let (still, _, segments, broken) = chain_in(work.path()).await.unwrap();
    assert_eq!(still, base, "the same chain: {log}");
    assert!(!broken && !log.contains("taking a full backup now"), "{log}");
    assert_eq!(segments[0].live_keys, None, "etcd was down as it was committed");
    assert_eq!((segments[0].last_revision, segments.last().unwrap().last_revision), (before, after));
}
