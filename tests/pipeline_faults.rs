//! Faults a real etcd cannot be made to produce (a corrupted trailer, a stream that breaks, a runt
//! snapshot), fed through the whole pipeline into the real local directory and the in-process S3.
//! One test function: it sets the AWS credential variables before any runtime thread exists.

mod common;

use std::collections::VecDeque;
use std::path::Path;

use anyhow::{Result, anyhow};
use common::*;
use etcd_backupd::backup::{BackupRequest, take as write_backup};
use etcd_backupd::manifest::EtcdFacts;
use etcd_backupd::pipeline::SnapshotSource;
use etcd_backupd::store::Kind;
use sha2::Digest;

struct FakeSource {
    facts: EtcdFacts,
    chunks: VecDeque<Vec<u8>>,
    /// Fail instead of sending the chunk at this index.
    break_at: Option<usize>,
    sent: usize,
}

impl FakeSource {
    fn new(snapshot: Vec<u8>, revision: i64) -> Self {
        let facts = EtcdFacts {
            endpoint: "http://127.0.0.1:1".into(),
            cluster_id: "1".into(),
            member_id: "2".into(),
            member_name: "fake".into(),
            version: "3.5.1".into(),
            revision,
            raft_term: 1,
            raft_index: 1,
            db_size: snapshot.len() as u64,
            leader: "2".into(),
            alarms: vec![],
        };
        let chunks = snapshot.chunks(32 * 1024 + 7).map(<[u8]>::to_vec).collect();
        FakeSource { facts, chunks, break_at: None, sent: 0 }
    }
}

impl SnapshotSource for FakeSource {
    fn facts(&self) -> &EtcdFacts {
        &self.facts
    }

    async fn open(&mut self) -> Result<()> {
        Ok(())
    }

    async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        if self.break_at == Some(self.sent) {
            return Err(anyhow!("the snapshot stream from {} broke: injected", self.facts.endpoint));
        }
        self.sent += 1;
        Ok(self.chunks.pop_front())
    }
}

/// A real snapshot (trailer included) of an etcd holding ~12 MiB of random values.
async fn snapshot_bytes(work: &Path) -> Vec<u8> {
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.seed(1200, 10_000).await;
    let path = work.join("real.db");
    let out = etcd.etcdctl(&["snapshot", "save", &path.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::read(path).unwrap()
}

/// Random bytes with a valid trailer: etcd's checksum holds, but it is no database.
fn not_a_database() -> Vec<u8> {
    let mut body = pseudo_random(6 * 1024 * 1024, 0x2545f4914f6cdd1d);
    let sum = sha2::Sha256::digest(&body);
    body.extend_from_slice(&sum);
    body
}

fn settings(work: &Path, s3: &S3, recipient: &str) -> etcd_backupd::config::Settings {
    let etcd_table = "[etcd]\nendpoints = [\"http://127.0.0.1:1\"]\n";
    let text = config_text(work, etcd_table, &[recipient], "", &s3.config_table(BUCKET, ""));
    etcd_backupd::config::parse(&text).unwrap()
}

/// Nothing that looks like a backup, and no unfinished multipart upload, anywhere.
fn assert_clean(work: &Path, s3: &S3) {
    let local = files(&work.join("backups/default"));
    assert!(local.is_empty(), "local: {local:?}");
    assert!(s3.keys(BUCKET).is_empty(), "s3 objects: {:?}", s3.keys(BUCKET));
    let uploads: Vec<String> = files(&s3.root).into_iter().filter(|n| n.starts_with(".upload")).collect();
    assert!(uploads.is_empty(), "multipart uploads left behind: {uploads:?}");
}

#[test]
fn faults_in_the_snapshot_stream_commit_nothing_anywhere() {
    // SAFETY: set before any other thread of this test binary exists (this is its only test).
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        std::env::set_var("AWS_CONFIG_FILE", "/nonexistent/aws-config");
        std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials");
        std::env::set_var(
            "STATE_DIRECTORY",
            std::env::temp_dir().join(format!("etcd-backupd-faults-{}", std::process::id())),
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let scratch = tempfile::tempdir().unwrap();
        let good = snapshot_bytes(scratch.path()).await;
        let request = BackupRequest::default();

        // A good stream from the fake commits in both places (the fake itself is sound).
        let (s3, work) = (S3::start().await, tempfile::tempdir().unwrap());
        let id = age_identity(work.path(), "ops");
        let report =
            write_backup(&settings(work.path(), &s3, &id.recipient), &request, FakeSource::new(good.clone(), 10))
                .await
                .unwrap();
        assert_eq!(report.committed, vec![Kind::Local, Kind::S3]);
        assert_eq!(report.manifest.snapshot.sha256, hex::encode(&good[good.len() - 32..]));
        assert!(s3.faults.parts_seen.load(std::sync::atomic::Ordering::SeqCst) >= 2, "a real multipart upload");

        // Every flipped position class: first page, middle, last data byte, inside the trailer.
        for pos in [0, good.len() / 2, good.len() - 33, good.len() - 1] {
            let (s3, work) = (S3::start().await, tempfile::tempdir().unwrap());
            let mut bad = good.clone();
            bad[pos] ^= 0x40;
            let err = write_backup(&settings(work.path(), &s3, &id.recipient), &request, FakeSource::new(bad, 10))
                .await
                .unwrap_err();
            let text = format!("{err:#}");
            assert!(text.contains("sha256 trailer does not match"), "flip at {pos}: {text}");
            assert!(text.contains("nothing was committed"), "{text}");
            assert_clean(work.path(), &s3);
        }

        // The stream breaks after several parts went to S3.
        let (s3, work) = (S3::start().await, tempfile::tempdir().unwrap());
        let mut source = FakeSource::new(good.clone(), 10);
        source.break_at = Some(300);
        let err = write_backup(&settings(work.path(), &s3, &id.recipient), &request, source).await.unwrap_err();
        assert!(format!("{err:#}").contains("broke: injected"), "{err:#}");
        assert_clean(work.path(), &s3);

        // A runt: etcd sent less than a trailer.
        let (s3, work) = (S3::start().await, tempfile::tempdir().unwrap());
        let err =
            write_backup(&settings(work.path(), &s3, &id.recipient), &request, FakeSource::new(vec![1, 2, 3], 10))
                .await
                .unwrap_err();
        assert!(format!("{err:#}").contains("too short"), "{err:#}");
        assert_clean(work.path(), &s3);

        // A valid trailer over bytes that are not a database: refused before any commit.
        let (s3, work) = (S3::start().await, tempfile::tempdir().unwrap());
        let err =
            write_backup(&settings(work.path(), &s3, &id.recipient), &request, FakeSource::new(not_a_database(), 10))
                .await
                .unwrap_err();
        assert!(format!("{err:#}").contains("not a sound database"), "{err:#}");
        assert_clean(work.path(), &s3);

        // A sound database older than the revision its member reported (another member's, a stale
        // file): refused before any commit.
        let (s3, work) = (S3::start().await, tempfile::tempdir().unwrap());
        let err = write_backup(
            &settings(work.path(), &s3, &id.recipient),
            &request,
            FakeSource::new(good.clone(), 1_000_000),
        )
        .await
        .unwrap_err();
        assert!(format!("{err:#}").contains("older than the 1000000 etcd reported"), "{err:#}");
        assert_clean(work.path(), &s3);

        // Cancelled while S3 completes (the stream is done, a slow part is still uploading): the S3
        // upload is aborted at once, not left to finish.
        let (s3, work) = (S3::start().await, tempfile::tempdir().unwrap());
        s3.faults.part_delay_ms.store(5000, std::sync::atomic::Ordering::SeqCst);
        let request = BackupRequest::default();
        let cancel = request.cancel.clone();
        let faults = s3.faults.clone();
        tokio::spawn(async move {
            // Cancelled once a part is on its way (the store answers it 5 s late).
            while faults.parts_started.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            cancel.cancel();
        });
        let outcome =
            write_backup(&settings(work.path(), &s3, &id.recipient), &request, FakeSource::new(good.clone(), 11)).await;
        // The slow part never completed: the upload was aborted, not left to finish.
        assert_eq!(s3.faults.parts_seen.load(std::sync::atomic::Ordering::SeqCst), 0);
        if let Ok(report) = &outcome {
            assert!(!report.committed.contains(&Kind::S3), "{report:?}");
        }
        assert!(s3.keys(BUCKET).is_empty(), "no completed object: {:?}", s3.keys(BUCKET));
        let uploads: Vec<String> = files(&s3.root).into_iter().filter(|n| n.starts_with(".upload-")).collect();
        assert!(uploads.is_empty(), "the multipart upload was aborted before write_backup returned: {uploads:?}");
    });
}
