//! End to end: a real etcd, a real S3 server, the real `age`, `zstd`, `etcdctl`/`etcdutl` and `aws` CLIs.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

fn manifest_in(dir: &Path) -> Value {
    let name = files(dir).into_iter().find(|n| n.ends_with(".manifest.json")).expect("a manifest");
    serde_json::from_slice(&std::fs::read(dir.join(name)).unwrap()).unwrap()
}

/// Backs up a seeded etcd to local + S3, then restores each copy with the standard tools and checks
/// that a member started on it serves the seeded keys at the recorded revision.
async fn backup_restores_everywhere(version: EtcdVersion, tls: bool) {
    let etcd = if tls { Etcd::start_tls(version) } else { Etcd::start(version) };
    let revision = etcd.seed(300, 200).await;
    let s3 = S3::start().await;
    let Setup { work, identity: id } = Setup::new();
    let other = age_identity(work.path(), "offline");
    let local = work.path().join("backups");
    let config = work.path().join("etcd-backupd.toml");
    let extra = format!("[backup]\ncluster = \"prod-east\"\n\n{}", s3.config_table(BUCKET, "prod/"));
    let text = config_text(work.path(), &etcd.config_table(), &[&id.recipient, &other.recipient], "", &extra);
    std::fs::write(&config, text).unwrap();

    let out = run(&config, &["backup", "--label", "pre-upgrade-1.31"]).await;
    assert!(out.status.success(), "backup failed: {}", stderr(&out));
    assert!(stdout(&out).contains("committed in: local, s3"), "{}", stdout(&out));

    // Local layout: <dir>/<cluster>/<id>.db.zst.age + manifest, 0700 folder, 0600 files, no leftovers.
    let folder = local.join("prod-east");
    let names = files(&folder);
    assert_eq!(names.len(), 2, "{names:?}");
    let artifact_name = names.iter().find(|n| n.ends_with(".db.zst.age")).unwrap().clone();
    assert!(artifact_name.contains(&format!("-r{revision}-")), "{artifact_name}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&folder).unwrap().permissions().mode() & 0o777, 0o700);
    for n in &names {
        assert_eq!(std::fs::metadata(folder.join(n)).unwrap().permissions().mode() & 0o777, 0o600, "{n}");
    }

    // S3 layout mirrors it under <prefix><cluster>/, byte for byte.
    let keys = s3.keys(BUCKET);
    let expected: Vec<String> = names.iter().map(|n| format!("prod/prod-east/{n}")).collect();
    assert_eq!(keys, expected);
    let local_artifact = std::fs::read(folder.join(&artifact_name)).unwrap();
    assert_eq!(s3.object(BUCKET, &format!("prod/prod-east/{artifact_name}")), local_artifact);

    // The manifest records what etcd reported.
    let m = manifest_in(&folder);
    let status = etcd.etcdctl(&["endpoint", "status", "-w", "json"]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let header = &status[0]["Status"]["header"];
    assert_eq!(m["format_version"], 1);
    assert_eq!(m["cluster"], "prod-east");
    assert_eq!(m["label"], "pre-upgrade-1.31");
    assert_eq!(m["etcd"]["cluster_id"], format!("{:x}", header["cluster_id"].as_u64().unwrap()));
    assert_eq!(m["etcd"]["member_id"], format!("{:x}", header["member_id"].as_u64().unwrap()));
    assert_eq!(m["etcd"]["member_name"], "test-member");
    assert_eq!(m["etcd"]["version"], status[0]["Status"]["version"]);
    assert_eq!(m["etcd"]["revision"], revision);
    assert_eq!(m["etcd"]["leader"], m["etcd"]["member_id"]);
    assert_eq!(m["artifact"]["size"], local_artifact.len() as u64);
    assert_eq!(m["artifact"]["compression"], "zstd");
    assert_eq!(m["artifact"]["encryption"], "age");
    assert_eq!(m["artifact"]["recipients"].as_array().unwrap().len(), 2);
    use sha2::Digest;
    assert_eq!(m["artifact"]["sha256"], hex::encode(sha2::Sha256::digest(&local_artifact)));
    assert_eq!(m["id"].as_str().unwrap(), artifact_name.trim_end_matches(".db.zst.age"));
    assert!(m["tool_version"].is_string() && m["host"].is_string() && m["duration_ms"].is_u64());

    // Both recipients can decrypt; the plain snapshot is exactly what etcd sent (trailer included).
    let snap = work.path().join("restored.db");
    decrypt_with_cli(&folder.join(&artifact_name), &other.file, &snap);
    std::fs::remove_file(&snap).unwrap();
    let from_s3 = work.path().join("from-s3.age");
    std::fs::write(&from_s3, s3.object(BUCKET, &format!("prod/prod-east/{artifact_name}"))).unwrap();
    decrypt_with_cli(&from_s3, &id.file, &snap);
    let plain = std::fs::read(&snap).unwrap();
    assert_eq!(m["snapshot"]["size"], plain.len() as u64);
    let (db, trailer) = plain.split_at(plain.len() - 32);
    assert_eq!(hex::encode(trailer), hex::encode(sha2::Sha256::digest(db)));
    assert_eq!(m["snapshot"]["sha256"], hex::encode(trailer));

    // The stats checked before the commit equal what etcd's own tool says of the snapshot.
    let tool = if version == EtcdVersion::V35 { "etcdutl" } else { "etcdctl" };
    let st = Command::new(etcd_bin_dir(version).join(tool))
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "json"])
        .arg(&snap)
        .output()
        .unwrap();
    let theirs: Value = serde_json::from_str(String::from_utf8_lossy(&st.stdout).lines().last().unwrap()).unwrap();
    let ours = &m["snapshot"]["status"];
    assert_eq!(ours["hash"], theirs["hash"]);
    assert_eq!(ours["revision"], theirs["revision"]);
    assert_eq!(ours["total_key"], theirs["totalKey"]);
    assert_eq!(ours["total_size"], theirs["totalSize"]);

    // Restore with the version's own tool (hash check on), start a member, read the keys back.
    drop(etcd);
    let restored = Etcd::start_restored(version, &snap);
    let mut client = restored.client().await;
    let resp = client.get("seed/", Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(resp.kvs().len(), 300);
    assert_eq!(resp.header().unwrap().revision(), revision);
    let one = client.get("seed/000042", None).await.unwrap();
    assert_eq!(one.kvs()[0].value().len(), 200);

    // The standard AWS CLI sees the same objects.
    let ls = Command::new("/usr/bin/aws")
        .args(["s3", "ls", "--recursive", &format!("s3://{BUCKET}/prod/"), "--endpoint-url", &s3.endpoint])
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.status.success(), "aws s3 ls: {}", String::from_utf8_lossy(&ls.stderr));
    assert!(listing.contains(&format!("prod/prod-east/{artifact_name}")), "{listing}");
    assert!(listing.contains(&format!("{} prod/prod-east/{artifact_name}", local_artifact.len())), "{listing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_34_with_tls_client_certs_backs_up_and_restores() {
    backup_restores_everywhere(EtcdVersion::V34, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_35_backs_up_and_restores_with_etcdutl() {
    backup_restores_everywhere(EtcdVersion::V35, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_json_shows_exactly_the_committed_backups() {
    let etcd = Etcd::start(EtcdVersion::V34);
    let s3 = S3::start().await;
    let Setup { work, identity: id } = Setup::new();
    let local = work.path().join("backups");
    let both = write_config(work.path(), &etcd.config_table(), &id.recipient, "", &s3.config_table(BUCKET, "p"));
    let mut ids = Vec::new();
    for i in 0..2 {
        etcd.seed(1 + i, 10).await; // a new revision, so a new id
        let out = run(&both, &["backup"]).await;
        assert!(out.status.success(), "{}", stderr(&out));
        ids.push(manifest_ids(&local.join("default")).pop().unwrap());
    }
    // A third backup whose S3 side fails: committed locally only.
    etcd.seed(5, 10).await;
    let local_only_cfg = work.path().join("local-only.toml");
    let local_only =
        config_text(work.path(), &etcd.config_table(), &[&id.recipient], "", &s3.config_table("missing-bucket", "p"));
    std::fs::write(&local_only_cfg, local_only).unwrap();
    assert_eq!(run(&local_only_cfg, &["backup"]).await.status.code(), Some(1));
    ids.push(manifest_ids(&local.join("default")).pop().unwrap());
    let mut client = etcd.client().await;
    let all = etcd_client::GetOptions::new().with_prefix().with_count_only();
    let live = client.get("", Some(all)).await.unwrap().count();

    // Leftovers and strangers that must not be listed.
    let folder = local.join("default");
    std::fs::write(folder.join("20200101T000000Z-r5-abc.db.zst.age.part"), "partial").unwrap();
    std::fs::write(folder.join("20200101T000000Z-r6-abc.db.zst.age"), "no manifest").unwrap();
    std::fs::write(folder.join("20200101T000000Z-r7-abc.manifest.json"), "{}").unwrap();
    std::fs::write(folder.join("20200101T000000Z-r8-abc.db.zst.age"), "x").unwrap();
    std::fs::write(folder.join("20200101T000000Z-r8-abc.manifest.json"), "not json").unwrap();
    std::fs::write(folder.join("notes.txt"), "mine").unwrap();
    let bucket_dir = s3.root.join(BUCKET);
    std::fs::create_dir_all(bucket_dir.join("p/other-cluster")).unwrap();
    for name in files(&bucket_dir.join("p/default")) {
        std::fs::copy(bucket_dir.join("p/default").join(&name), bucket_dir.join("p/other-cluster").join(&name))
            .unwrap();
    }
    std::fs::write(bucket_dir.join("p/default/20200101T000000Z-r9-abc.db.zst.age"), "orphan").unwrap();
    std::fs::write(bucket_dir.join("p/default/README"), "foreign").unwrap();

    let out = run(&both, &["list", "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = listed.as_array().unwrap();
    let got: Vec<(&str, Vec<&str>)> = rows
        .iter()
        .map(|r| {
            let d = r["destinations"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
            (r["id"].as_str().unwrap(), d)
        })
        .collect();
    let want = vec![
        (ids[2].as_str(), vec!["local"]),
        (ids[1].as_str(), vec!["local", "s3"]),
        (ids[0].as_str(), vec!["local", "s3"]),
    ];
    assert_eq!(got, want, "newest first, exactly the committed ones");
    assert!(rows[0]["etcd"]["revision"].is_i64() && rows[0]["artifact"]["sha256"].is_string());

    let status = &rows[0]["snapshot"]["status"];
    assert_eq!(status["live_keys"], live, "{status}");

    let table = run(&both, &["list"]).await;
    let text = stdout(&table);
    assert_eq!(text.lines().count(), 4, "{text}");
    let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header[..6], ["ID", "CREATED", "(UTC)", "REVISION", "KEYS", "DB"], "{text}");
    let newest: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(newest[0], ids[2], "{text}");
    assert_eq!(newest[3], status["revision"].to_string(), "{text}");
    assert_eq!(newest[4], live.to_string(), "{text}");
    assert!(text.contains("local,s3"), "{text}");
}

fn manifest_ids(folder: &Path) -> Vec<String> {
    files(folder).into_iter().filter_map(|n| n.strip_suffix(".manifest.json").map(str::to_string)).collect()
}

/// S3 over HTTPS with a private CA named by `s3.ca_file`, SSE-S3, a storage class and the
/// `when_required` checksum mode; without the CA the error names the endpoint and the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_over_tls_with_an_extra_ca_and_request_options() {
    let etcd = Etcd::start(EtcdVersion::V35);
    etcd.seed(50, 100).await;
    let s3 = S3::start_tls().await;
    let Setup { work, identity: id } = Setup::new();
    let base = config_text(work.path(), &etcd.config_table(), &[&id.recipient], "", &s3.config_table(BUCKET, "tls"));
    let without_ca = work.path().join("etcd-backupd.toml");
    std::fs::write(&without_ca, &base).unwrap();
    let out = run(&without_ca, &["backup"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&s3.endpoint) && err.to_lowercase().contains("certificate"), "{err}");
    assert!(s3.keys(BUCKET).is_empty());

    let ca = s3.pki.as_ref().unwrap().ca.display().to_string();
    for checksums in ["when_required", "when_supported"] {
        let with_ca = work.path().join("with-ca.toml");
        std::fs::write(
            &with_ca,
            format!(
                "{base}ca_file = \"{ca}\"\nchecksums = \"{checksums}\"\nserver_side_encryption = \"AES256\"\nstorage_class = \"STANDARD_IA\"\n"
            ),
        )
        .unwrap();
        etcd.seed(1, 10).await;
        s3.faults.part_checksums.lock().unwrap().clear();
        let out = run(&with_ca, &["backup"]).await;
        assert!(out.status.success(), "{checksums}: {}", stderr(&out));
        let sent = s3.faults.part_checksums.lock().unwrap().clone();
        assert!(!sent.is_empty());
        let want = (checksums == "when_supported").then(|| "x-amz-checksum-crc32".to_string());
        assert!(sent.iter().all(|c| *c == want), "{checksums}: parts carried {sent:?}");
    }
    // Three backups: the one that could not reach S3 without the CA was caught up by the next run.
    assert_eq!(s3.keys(BUCKET).len(), 6, "{:?}", s3.keys(BUCKET));
}

/// `compression = "none"`: the artifact is age alone (`.db.age`), `age -d` gives exactly what etcd sent,
/// and `verify --identity` and `restore --output` take it like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncompressed_backup_is_age_alone_and_restores() {
    let etcd = Etcd::start(EtcdVersion::V35);
    let revision = etcd.seed(40, 500).await;
    let setup = Setup::new();
    let cfg = setup.config(&etcd.config_table(), "[backup]\ncompression = \"none\"\n");
    let out = run(&cfg, &["backup"]).await;
    assert!(out.status.success(), "{}", stderr(&out));

    let artifact = files(&setup.folder()).into_iter().find(|n| n.ends_with(".db.age")).expect("a .db.age artifact");
    let plain = setup.work.path().join("plain.db");
    let status = std::process::Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&setup.identity.file)
        .arg("-o")
        .arg(&plain)
        .arg(setup.folder().join(&artifact))
        .status()
        .unwrap();
    assert!(status.success());
    let manifest = manifest_in(&setup.folder());
    assert_eq!(manifest["snapshot"]["size"], std::fs::metadata(&plain).unwrap().len());

    let id_arg = setup.identity.file.display().to_string();
    let out = run(&cfg, &["verify", "--identity", &id_arg]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("revision {revision}")), "{}", stdout(&out));
    let restored = setup.work.path().join("restored.db");
    let out = run(&cfg, &["restore", "--identity", &id_arg, "--output", &restored.display().to_string()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&restored).unwrap(), std::fs::read(&plain).unwrap());
}
