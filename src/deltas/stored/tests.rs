//! Segments written to a real local folder, listed, chained and read back; and what a damaged,
//! replaced, missing or planted segment does.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::*;
use crate::crypto::PublicKey;
use crate::deltas::chain::{Break, follow};
use crate::deltas::manifest::tests::{base, segment};
use crate::deltas::manifest::{BodyFacts, SegmentId};
use crate::deltas::segment::{Event, Writer};
use crate::manifest::Compression;
use crate::store::local::LocalStore;

type Identities = Arc<Vec<Box<dyn age::Identity + Send + Sync>>>;

fn at(seconds: i64) -> chrono::DateTime<chrono::Utc> {
    base().created() + chrono::Duration::seconds(seconds)
}

/// Segment `seq` (revisions 106 + 10 (seq - 1) …, ten each) sealed to `public`, chained to `previous`.
fn sealed(
    seq: u32,
    previous: Option<&SegmentManifest>,
    public: &PublicKey,
) -> (Sealed, SegmentManifest, Vec<Revision>) {
    let mut m = segment(seq);
    let revisions: Vec<Revision> = (m.first_revision..=m.last_revision)
        .map(|r| Revision {
            revision: r,
            received: at(60 * i64::from(seq)),
            events: vec![Event::put(format!("/k{r}").as_bytes(), b"v", r, r, 1, 0)],
            leases: vec![],
        })
        .collect();
    let mut writer = Writer::default();
    for r in &revisions {
        writer.push(r).unwrap();
    }
    let (body, summary) = writer.finish().unwrap();
    let compression = Compression::Zstd { level: 3 };
    let sealed = seal::seal(&body, compression, std::slice::from_ref(public)).unwrap();
    m.events = summary.events;
    (m.first_received, m.last_received, m.closed) =
        (summary.first_received, summary.last_received, summary.last_received);
    m.body = BodyFacts { size: body.len() as u64, sha256: hex::encode(Sha256::digest(&body)) };
    m.previous_sha256 = previous.map(|p| p.body.sha256.clone());
    m.artifact.size = sealed.artifact.len() as u64;
    m.artifact.sha256 = sealed.sha256.clone();
    (sealed, m, revisions)
}

struct Folder {
    _dir: tempfile::TempDir,
    store: LocalStore,
    identities: Identities,
    written: Vec<(SegmentManifest, Vec<Revision>)>,
}

async fn three_segments() -> Folder {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path(), &ClusterName::default());
    let identity = age::x25519::Identity::generate();
    let public = PublicKey::parse(&identity.to_public().to_string()).unwrap();
    let mut written: Vec<(SegmentManifest, Vec<Revision>)> = Vec::new();
    for seq in 1..=3 {
        let (sealed, m, revisions) = sealed(seq, written.last().map(|(m, _)| m), &public);
        write(&store, &sealed, &m, &CancellationToken::new()).await.unwrap();
        written.push((m, revisions));
    }
    let identities: Identities = Arc::new(vec![Box::new(identity)]);
    Folder { _dir: dir, store, identities, written }
}

async fn listed(store: &LocalStore) -> (Vec<SegmentManifest>, Vec<Ignored>) {
    let listing = store.list().await.unwrap();
    assert!(listing.ignored.is_empty(), "{:?}", listing.ignored);
    read_all(store, &listing.segments, &ClusterName::default()).await
}

#[tokio::test]
async fn written_segments_list_chain_and_read_back_as_they_were() {
    let folder = three_segments().await;
    let (committed, ignored) = listed(&folder.store).await;
    assert!(ignored.is_empty());
    assert_eq!(committed, folder.written.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>());
    let chain = follow(&base(), 105, &committed);
    assert_eq!((chain.segments.len(), chain.broken.clone(), chain.end_revision()), (3, None, 135));
    for (m, revisions) in &folder.written {
        assert_eq!(&read(&folder.store, m, folder.identities.clone()).await.unwrap(), revisions);
    }
    // A committed segment is never written over; written again with the same body, it is done.
    let other = Sealed { artifact: vec![1], sha256: String::new() };
    let mut changed = folder.written[0].0.clone();
    changed.body.sha256 = "cd".repeat(32);
    let again = write(&folder.store, &other, &changed, &CancellationToken::new()).await;
    assert_eq!(crate::errors::cause_of(&again.unwrap_err()), Some(crate::errors::Cause::Exists));
    write(&folder.store, &other, &folder.written[0].0, &CancellationToken::new()).await.expect("the same body");
    assert_eq!(listed(&folder.store).await.0[0], folder.written[0].0, "untouched");
}

#[tokio::test]
async fn a_missing_segment_breaks_the_chain_where_it_was() {
    let folder = three_segments().await;
    let second = &folder.written[1].0;
    for name in [second.artifact_name(), second.id.manifest_name()] {
        std::fs::remove_file(folder.store.folder().join(name)).unwrap();
    }
    let (committed, _) = listed(&folder.store).await;
    let chain = follow(&base(), 105, &committed);
    assert_eq!(chain.segments.len(), 1);
    assert_eq!(chain.broken, Some(Break::Missing { base: base(), seq: 2 }));
}

/// An artifact replaced by another of the same size, or by a whole other segment sealed for the same
/// manifest's place: read back, it is damage, named.
#[tokio::test]
async fn a_changed_or_replaced_segment_is_named_as_damage() {
    let folder = three_segments().await;
    let (second, _) = &folder.written[1];
    let path = folder.store.folder().join(second.artifact_name());
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    match read(&folder.store, second, folder.identities.clone()).await {
        Err(ReadError::Damaged(why)) => {
            assert!(why.contains(&second.id.to_string()) && why.contains("damaged or replaced"), "{why}")
        }
        other => panic!("{:?}", other.map(|r| r.len())),
    }
    // A manifest edited to match a planted artifact keeps its chain's record of it: the next segment
    // no longer continues it.
    let mut planted = second.clone();
    planted.body.sha256 = "ab".repeat(32);
    std::fs::write(folder.store.folder().join(second.id.manifest_name()), planted.to_json()).unwrap();
    let (committed, _) = listed(&folder.store).await;
    let chain = follow(&base(), 105, &committed);
    assert!(matches!(chain.broken, Some(Break::Link { seq: 3, .. })), "{:?}", chain.broken);
}

#[tokio::test]
async fn a_planted_manifest_is_ignored_with_why() {
    let folder = three_segments().await;
    let (first, _) = &folder.written[0];
    let id = SegmentId::new(base(), 7);
    let mut planted = first.clone();
    planted.artifact.name = "../../../etc/shadow".into();
    std::fs::write(folder.store.folder().join(id.manifest_name()), planted.to_json()).unwrap();
    std::fs::copy(
        folder.store.folder().join(first.artifact_name()),
        folder.store.folder().join(id.artifact_name(first.compression())),
    )
    .unwrap();
    let listing = folder.store.list().await.unwrap();
    let (committed, ignored) = read_all(&folder.store, &listing.segments, &ClusterName::default()).await;
    assert_eq!(committed.len(), 3);
    assert_eq!(ignored.len(), 1);
    assert!(ignored[0].1.contains("stored as"), "{:?}", ignored);
}
