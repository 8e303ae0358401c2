//! The shape of what etcd-backupd asks S3, checked on the requests a real S3 server received:
//! DeleteObjects in batches of at most 1000 keys, every artifact before its manifest, a per-object
//! error that keeps the manifest and is reported; storage class and SSE headers where they belong.

mod common;

use std::collections::HashMap;

use chrono::{Duration, Utc};
use common::*;
use etcd_backupd::manifest::BackupId;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_are_batched_artifacts_first_and_per_object_errors_keep_the_manifest() {
    let s = Setup::new();
    let s3 = S3::start().await;
    let remote = s3.root.join(BUCKET).join("default");
    let start = Utc::now() - Duration::days(30);
    let ids: Vec<BackupId> = (0..1500).map(|i| BackupId::new(start + Duration::minutes(i), i + 1, "a1")).collect();
    for id in &ids {
        plant(&remote, id, 10, false);
    }
    let table = s3.config_table_with(BUCKET, "", "{ keep_last = 10 }");
    let config = s.config("[etcd]\nendpoints = [\"http://127.0.0.1:9\"]\n", &table);
    // The oldest backup's artifact cannot be deleted.
    let refused = ids[0].artifact_name(etcd_backupd::manifest::Compression::Zstd { level: 3 });
    *s3.faults.refuse_delete.lock().unwrap() = Some(format!("default/{refused}"));

    let out = run(&config, &["prune"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "the refused object is reported: {err}");
    assert!(err.contains("AccessDenied") && err.contains(&ids[0].to_string()), "{err}");

    let deletes: Vec<Logged> =
        s3.faults.log.lock().unwrap().iter().filter(|r| !r.delete_keys.is_empty()).cloned().collect();
    assert!(deletes.iter().all(|d| d.delete_keys.len() <= 1000), "batches of at most 1000 keys");
    // Where each key was asked to go: the request's position.
    let mut asked: HashMap<&str, usize> = HashMap::new();
    for (i, d) in deletes.iter().enumerate() {
        for k in &d.delete_keys {
            asked.insert(k.as_str(), i);
        }
    }
    let doomed = &ids[..1490];
    for id in &doomed[1..] {
        let artifact = format!("default/{}", id.artifact_name(etcd_backupd::manifest::Compression::Zstd { level: 3 }));
        let manifest = format!("default/{}", id.manifest_name());
        assert!(asked[artifact.as_str()] < asked[manifest.as_str()], "{id}: the artifact goes before the manifest");
    }
    assert!(!asked.contains_key(format!("default/{}", ids[0].manifest_name()).as_str()), "its manifest is kept");
    let left: Vec<String> = files(&remote);
    assert!(left.contains(&ids[0].manifest_name()) && left.contains(&refused), "{:?}", &left[..4]);
    assert_eq!(left.len(), 2 + 10 * 2, "the refused backup and the ten kept");
    assert!(deletes.len() >= 5, "1489 artifacts and 2978 markers take five batches: {}", deletes.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_class_and_sse_go_on_the_artifact_and_sse_on_the_manifest() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.seed(5, 10).await;
    let s3 = S3::start().await;
    let table = s3
        .config_table(BUCKET, "")
        .replace("part_size", "storage_class = \"STANDARD_IA\"\nserver_side_encryption = \"AES256\"\npart_size");
    let config = s.config(&etcd.config_table(), &table);
    let out = run(&config, &["backup"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let log = s3.faults.log.lock().unwrap().clone();
    let create = log
        .iter()
        .find(|r| r.method == "POST" && r.query.contains("uploads") && r.path.ends_with(".db.zst.age"))
        .expect("CreateMultipartUpload");
    assert_eq!(create.amz.get("x-amz-storage-class").map(String::as_str), Some("STANDARD_IA"), "{create:?}");
    assert_eq!(create.amz.get("x-amz-server-side-encryption").map(String::as_str), Some("AES256"), "{create:?}");
    let manifest =
        log.iter().find(|r| r.method == "PUT" && r.path.ends_with(".manifest.json")).expect("the manifest's PUT");
    assert_eq!(manifest.amz.get("x-amz-server-side-encryption").map(String::as_str), Some("AES256"), "{manifest:?}");
    assert_eq!(manifest.amz.get("x-amz-storage-class"), None, "manifests stay in the default class: {manifest:?}");
}

/// A listing downloads only the manifests it has not read before: the second `list` of a folder reads
/// none; a manifest that changed in the store (another ETag) is read again and checked again; a cache
/// planted with other bytes under the right ETag is checked like the store's bytes and cannot add a
/// backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_are_read_once_and_again_when_they_change() {
    let s = Setup::new();
    let s3 = S3::start().await;
    let remote = s3.root.join(BUCKET).join("default");
    let start = Utc::now() - Duration::days(1);
    let ids: Vec<BackupId> = (0..5).map(|i| BackupId::new(start + Duration::minutes(i), i + 1, "a1")).collect();
    for id in &ids {
        plant(&remote, id, 10, false);
    }
    let config = s.config("[etcd]\nendpoints = [\"http://127.0.0.1:9\"]\n", &s3.config_table(BUCKET, ""));
    let manifest_gets = || {
        s3.faults.log.lock().unwrap().iter().filter(|r| r.method == "GET" && r.path.ends_with(".manifest.json")).count()
    };
    let listed = |out: &std::process::Output| ids.iter().filter(|id| stdout(out).contains(&id.to_string())).count();

    let out = run(&config, &["list"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!((listed(&out), manifest_gets()), (5, 5));
    let out = run(&config, &["list"]).await;
    assert_eq!((listed(&out), manifest_gets()), (5, 5), "the second listing reads no manifest");

    // One manifest changes in the store: it alone is read again, and checked (another cluster's is not
    // this folder's backup).
    let changed = remote.join(ids[2].manifest_name());
    let text = std::fs::read_to_string(&changed).unwrap();
    std::fs::write(&changed, text.replace("\"cluster\": \"default\"", "\"cluster\": \"other\"")).unwrap();
    let out = run(&config, &["list"]).await;
    assert_eq!(manifest_gets(), 6, "{}", stderr(&out));
    assert_eq!(listed(&out), 4, "the changed manifest is checked: {}", stdout(&out));

    // The cache is untrusted input: other bytes under a listed ETag go through the same checks.
    let state = state_dir_for(&config);
    let cache = std::fs::read_dir(state.join("s3-manifests")).unwrap().next().unwrap().unwrap().path();
    let planted = std::fs::read_to_string(&cache)
        .unwrap()
        .replace(&format!("\\\"id\\\": \\\"{}\\\"", ids[0]), &format!("\\\"id\\\": \\\"{}\\\"", ids[1]));
    std::fs::write(&cache, planted).unwrap();
    let out = run(&config, &["list"]).await;
    assert_eq!(listed(&out), 3, "a cached manifest naming another id is refused: {}", stdout(&out));
    assert!(stderr(&out).contains(&ids[0].manifest_name()), "and named: {}", stderr(&out));
}
