//! The bbolt reader computes exactly what `etcdctl snapshot status` (3.4) and `etcdutl snapshot status`
//! (3.5) print, on snapshots of several shapes, and rejects damaged files with a reason.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use etcd_backupd::snapshot::bbolt::{BboltError, Status, status};
use etcd_backupd::snapshot::stream::StreamCheck;

/// The streaming check's status of `bytes`, fed in pieces of `piece` bytes; it never holds more than
/// `MAX_HELD` of them.
fn streamed(bytes: &[u8], piece: usize) -> Result<Status, BboltError> {
    const MAX_HELD: usize = 4 << 20;
    let mut check = StreamCheck::new(Vec::new());
    for c in bytes.chunks(piece.max(1)) {
        check.update(c);
        assert!(check.held() <= MAX_HELD + piece, "{} bytes held", check.held());
    }
    check.finish()
}

fn save(etcd: &Etcd, dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let out = etcd.etcdctl(&["snapshot", "save", &path.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    path
}

/// The live keys the member serves, as etcd 3.6 counts TOTAL KEYS.
fn live_keys(etcd: &Etcd) -> u64 {
    let out = etcd.etcdctl(&["get", "", "--prefix", "--keys-only", "--limit=1", "-w", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["count"].as_u64().unwrap_or(0)
}

fn tool_status(version: EtcdVersion, snapshot: &Path) -> serde_json::Value {
    let tool = match version {
        EtcdVersion::V34 => "etcdctl",
        EtcdVersion::V35 => "etcdutl",
    };
    let out = Command::new(etcd_bin_dir(version).join(tool))
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "json"])
        .arg(snapshot)
        .output()
        .unwrap();
    assert!(out.status.success(), "{tool}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

fn assert_same(version: EtcdVersion, snapshot: &Path, live: u64) {
    let theirs = tool_status(version, snapshot);
    let file = std::fs::File::open(snapshot).unwrap();
    let ours = status(&file).unwrap_or_else(|e| panic!("{}: {e}", snapshot.display()));
    assert_eq!(u64::from(ours.hash), theirs["hash"].as_u64().unwrap(), "hash of {}", snapshot.display());
    assert_eq!(ours.revision, theirs["revision"].as_i64().unwrap(), "revision of {}", snapshot.display());
    assert_eq!(ours.total_key, theirs["totalKey"].as_u64().unwrap(), "totalKey of {}", snapshot.display());
    assert_eq!(ours.total_size, theirs["totalSize"].as_u64().unwrap(), "totalSize of {}", snapshot.display());
    assert_eq!(ours.live_keys, live, "live keys of {}", snapshot.display());
    let bytes = std::fs::read(snapshot).unwrap();
    for piece in [1 << 20, 4096, 1000, 65_537] {
        assert_eq!(streamed(&bytes, piece), Ok(ours), "streamed in {piece}-byte pieces: {}", snapshot.display());
    }
}

async fn shapes(version: EtcdVersion) {
    let etcd = Etcd::start(version);
    let dir = tempfile::tempdir().unwrap();
    let mut snapshots = vec![(save(&etcd, dir.path(), "empty.db"), live_keys(&etcd))];
    let mut client = etcd.client().await;
    for i in 0..3000 {
        client.put(format!("small/{i:05}"), format!("v{i}"), None).await.unwrap();
    }
    snapshots.push((save(&etcd, dir.path(), "small-keys.db"), live_keys(&etcd)));
    etcd.seed(30, 300_000).await; // values larger than a page: overflow pages
    snapshots.push((save(&etcd, dir.path(), "large-values.db"), live_keys(&etcd)));
    let lease = client.lease_grant(3600, None).await.unwrap();
    client.put("leased", "x", Some(etcd_client::PutOptions::new().with_lease(lease.id()))).await.unwrap();
    client.delete("small/", Some(etcd_client::DeleteOptions::new().with_prefix())).await.unwrap();
    let rev = client.put("after", "delete", None).await.unwrap().header().unwrap().revision();
    client.compact(rev, Some(etcd_client::CompactionOptions::new().with_physical())).await.unwrap();
    snapshots.push((save(&etcd, dir.path(), "compacted-with-lease.db"), live_keys(&etcd)));
    etcd.enable_auth();
    snapshots.push((save(&etcd, dir.path(), "auth.db"), live_keys(&etcd)));
    // Overwrites and deletions: live keys are not revisions.
    assert!(snapshots[3].1 < 3000, "{snapshots:?}");
    for (s, live) in &snapshots {
        assert_same(version, s, *live);
    }
    let compacted = |i: usize| status(&std::fs::File::open(&snapshots[i].0).unwrap()).unwrap().compact_revision;
    assert_eq!((compacted(0), compacted(3)), (0, rev), "the finished compaction is read from bucket meta");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_equals_etcdctl_34() {
    shapes(EtcdVersion::V34).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_equals_etcdutl_35() {
    shapes(EtcdVersion::V35).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_databases_are_rejected_with_a_reason() {
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.seed(500, 2000).await;
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(save(&etcd, dir.path(), "good.db")).unwrap();
    assert!(status(&good[..]).is_ok());
    // Truncated.
    let err = status(&good[..good.len() / 2]).unwrap_err();
    assert!(matches!(err, BboltError::Damaged(ref m) if m.contains("truncated")), "{err}");
    assert_eq!(streamed(&good[..good.len() / 2], 5000), Err(err));
    // A flipped page type on every branch or leaf page header in turn. (Bytes inside values are data:
    // only etcd's sha256 trailer can tell those are wrong.)
    let page = 4096;
    let mut flipped = 0;
    for id in 2..good.len() / page {
        let head = &good[id * page..id * page + 16];
        let is_node = u64::from_le_bytes(head[..8].try_into().unwrap()) == id as u64 && matches!(head[8], 1 | 2);
        if !is_node {
            continue;
        }
        let mut bad = good.clone();
        bad[id * page + 8] ^= 0x7f;
        let streaming = streamed(&bad, 1 << 16);
        match status(&bad[..]) {
            Err(BboltError::Damaged(m)) => {
                assert!(m.contains(&format!("page {id}")), "{m}");
                assert!(
                    matches!(streaming, Err(BboltError::Damaged(ref s)) if s.contains(&format!("page {id}"))),
                    "{streaming:?}"
                );
                flipped += 1;
            }
            Err(e) => panic!("page {id}: {e}"),
            // A freed page that is no longer reachable.
            Ok(s) => {
                assert_eq!(s, status(&good[..]).unwrap(), "page {id}");
                assert_eq!(streaming, Ok(s), "page {id}");
            }
        }
    }
    assert!(flipped > 3, "{flipped} reachable node pages were checked");
    // A bad page id in the header of the root page.
    let mut bad = good.clone();
    let root = u64::from_le_bytes(good[16 + 16..16 + 24].try_into().unwrap()) as usize;
    bad[root * page] ^= 0x01;
    assert!(matches!(status(&bad[..]), Err(BboltError::Damaged(_))));
    assert!(matches!(streamed(&bad, 4096), Err(BboltError::Damaged(_))));
    // Both meta pages broken.
    let mut bad = good.clone();
    bad[16] ^= 0xff;
    bad[page + 16] ^= 0xff;
    assert!(matches!(status(&bad[..]), Err(BboltError::NotBbolt(_))));
    assert!(matches!(streamed(&bad, 4096), Err(BboltError::NotBbolt(_))));
    for tiny in [0, 100, 2047, 2048, 4095, 4096, 8191] {
        assert_eq!(
            streamed(&good[..tiny], 7).is_err(),
            status(&good[..tiny]).is_err(),
            "a {tiny}-byte file: {:?}",
            streamed(&good[..tiny], 7)
        );
    }
}

/// What the fuzz target (`fuzz/`, nightly) checks, on stable and in every CI run: thousands of damaged
/// variants of a real snapshot (bytes flipped, page headers and element fields set to extremes, the file
/// cut short) each give a status or an error, never a panic; and the streaming check gives the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_variants_never_panic() {
    let etcd = Etcd::start(EtcdVersion::V35);
    etcd.seed(300, 700).await;
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(save(&etcd, dir.path(), "good.db")).unwrap();
    let good = &good[..good.len() - 32];
    let page = 4096;
    let pages = good.len() / page;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let extremes = [0u64, 1, 2, 0xff, 0xffff, 0xffff_ffff, u64::MAX, u64::MAX / 2, pages as u64, pages as u64 - 1];
    let mut errors = 0;
    for round in 0..4000 {
        let mut bad = good.to_vec();
        for _ in 0..1 + next() % 3 {
            let p = (next() as usize % (bad.len() / page).max(1)) * page;
            if p + 40 > bad.len() {
                continue;
            }
            match next() % 5 {
                0 => {
                    let at = next() as usize % bad.len();
                    bad[at] ^= 1 << (next() % 8);
                }
                // A page header field (id, flags+count, overflow) or an element's pos/size.
                1 | 2 => {
                    let at = p + [0, 8, 12, 16, 20, 24, 28, 32][next() as usize % 8];
                    let value = extremes[next() as usize % extremes.len()].to_le_bytes();
                    let width = if next() % 2 == 0 { 8 } else { 4 };
                    let end = (at + width).min(bad.len());
                    bad[at..end].copy_from_slice(&value[..end - at]);
                }
                3 => bad[p + 8] = [0x01, 0x02, 0x04, 0x10, 0x00, 0xff][next() as usize % 6],
                _ => {
                    let len = next() as usize % bad.len();
                    bad.truncate(len.max(1));
                }
            }
        }
        let piece = 1 + next() as usize % 70_000;
        match std::panic::catch_unwind(|| (status(&bad[..]), streamed(&bad, piece))) {
            // The streaming check agrees with the reader of the whole file on every variant.
            Ok((Ok(s), streaming)) => assert_eq!(streaming, Ok(s), "round {round}"),
            Ok((Err(_), streaming)) => {
                assert!(streaming.is_err(), "round {round}: the streaming check passed a damaged file: {streaming:?}");
                errors += 1;
            }
            Err(_) => {
                let path = dir.path().join("panic.db");
                std::fs::write(&path, &bad).unwrap();
                panic!("round {round}: the reader panicked; the input is kept at {}", path.display());
            }
        }
    }
    assert!(errors > 1000, "most variants are damaged: {errors} errors");
}
