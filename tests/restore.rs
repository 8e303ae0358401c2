//! verify and restore: from the local dir or S3, into a new data dir with etcd's own tool (3.4 and 3.5)
//! or to a snapshot file; bad identities, damaged artifacts and busy targets leave nothing behind.

mod common;

use std::path::Path;

use common::*;

fn config(work: &Path, etcd: &Etcd, s3: &S3, recipient: &str) -> std::path::PathBuf {
    write_config(work, &etcd.config_table(), recipient, "", &s3.config_table(BUCKET, ""))
}

/// `restore latest` into `data_dir` as `member` of `cluster`, with the etcd tools of `version`.
async fn restore_as(
    cfg: &Path,
    identity: &Path,
    version: EtcdVersion,
    data_dir: &Path,
    member: &Member,
    cluster: &str,
    token: Option<&str>,
) -> std::process::Output {
    let (identity, data_dir, peer) =
        (identity.display().to_string(), data_dir.display().to_string(), member.peer_url());
    let bin = etcd_bin_dir(version).display().to_string();
    let mut args = vec!["restore", "latest", "--identity", &identity, "--data-dir", &data_dir, "--etcd-bin", &bin];
    args.extend(["--name", &member.name, "--initial-cluster", cluster, "--initial-advertise-peer-urls", &peer]);
    if let Some(token) = token {
        args.extend(["--initial-cluster-token", token]);
    }
    run(cfg, &args).await
}

async fn restores_into_a_new_data_dir(version: EtcdVersion) {
    let etcd = Etcd::start(version);
    let revision = etcd.seed(150, 300).await;
    let s3 = S3::start().await;
    let Setup { work, identity: id } = Setup::new();
    let cfg = config(work.path(), &etcd, &s3, &id.recipient);
    assert!(run(&cfg, &["backup"]).await.status.success());

    let out = run(&cfg, &["verify", "latest"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("local") && stdout(&out).contains("s3"), "{}", stdout(&out));
    let id_arg = id.file.display().to_string();
    let out = run(&cfg, &["verify", "--identity", &id_arg]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("database structure check out"), "{}", stdout(&out));
    assert!(stdout(&out).contains(&format!("revision {revision}")), "{}", stdout(&out));

    // The local copy is gone: restore comes from S3.
    for f in files(&work.path().join("backups/default")) {
        std::fs::remove_file(work.path().join("backups/default").join(f)).unwrap();
    }
    drop(etcd);
    let data_dir = work.path().join("restored");
    let member = &Member::several(1)[0];
    let out = restore_as(&cfg, &id.file, version, &data_dir, member, &Member::initial_cluster([member]), None).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("next steps"), "{}", stdout(&out));
    let restored = Etcd::start_on(version, &data_dir, member);
    let mut client = restored.client().await;
    let resp = client.get("seed/", Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(resp.kvs().len(), 150);
    assert_eq!(resp.header().unwrap().revision(), revision);
    let scratch: Vec<String> =
        files(&state_dir_for(&cfg)).into_iter().filter(|n| n.starts_with(".etcd-backupd-scratch")).collect();
    assert!(scratch.is_empty(), "scratch downloads are removed: {scratch:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_34_restores_into_a_new_data_dir() {
    restores_into_a_new_data_dir(EtcdVersion::V34).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_35_restores_into_a_new_data_dir_with_etcdutl() {
    restores_into_a_new_data_dir(EtcdVersion::V35).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_to_a_file_and_every_bad_input() {
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.seed(20, 50).await;
    let s3 = S3::start().await;
    let Setup { work, identity: id } = Setup::new();
    let stranger = age_identity(work.path(), "stranger");
    let cfg = config(work.path(), &etcd, &s3, &id.recipient);
    assert!(run(&cfg, &["backup"]).await.status.success());
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&run(&cfg, &["list", "--json"]).await.stdout).unwrap();
    let backup_id = listed[0]["id"].as_str().unwrap().to_string();
    let id_arg = id.file.display().to_string();

    // To a file: exactly what etcd sent, 0600, accepted by etcdctl.
    let file = work.path().join("snapshot.db");
    let out = run(&cfg, &["restore", &backup_id, "--identity", &id_arg, "--output", &file.display().to_string()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let status = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "json"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));

    // Wrong identity: a clear error, nothing written.
    let target = work.path().join("nope");
    let stranger_arg = stranger.file.display().to_string();
    let out = run(&cfg, &["restore", "--identity", &stranger_arg, "--data-dir", &target.display().to_string()]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is the identity one of the backup's recipients"), "{}", stderr(&out));
    assert!(!target.exists());
    let out = run(&cfg, &["verify", "--identity", &stranger_arg]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));

    // --before picks the newest backup taken before a time; before the first one there is none.
    let later_file = work.path().join("later.db");
    let soon = (chrono::Utc::now() + chrono::Duration::minutes(1)).to_rfc3339();
    let out = run(
        &cfg,
        &["restore", "--before", &soon, "--identity", &id_arg, "--output", &later_file.display().to_string()],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&backup_id), "{}", stdout(&out));
    let out = run(
        &cfg,
        &[
            "restore",
            "--before",
            "2020-01-01T00:00:00Z",
            "--identity",
            &id_arg,
            "--output",
            &work.path().join("none.db").display().to_string(),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no backup was taken before 2020-01-01"), "{}", stderr(&out));

    // A manifest whose recorded stats disagree with the database is caught by verify --identity.
    let folder = work.path().join("backups/default");
    let manifest_name = files(&folder).into_iter().find(|n| n.ends_with(".manifest.json")).unwrap();
    let original = std::fs::read(folder.join(&manifest_name)).unwrap();
    let mut m: serde_json::Value = serde_json::from_slice(&original).unwrap();
    m["snapshot"]["status"]["hash"] = serde_json::json!(12345);
    std::fs::write(folder.join(&manifest_name), serde_json::to_vec(&m).unwrap()).unwrap();
    let out = run(&cfg, &["verify", "--identity", &id_arg]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("differs from its manifest"), "{}", stderr(&out));
    std::fs::write(folder.join(&manifest_name), original).unwrap();

    // A non-empty target is refused before anything is fetched.
    let busy = work.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("member"), "x").unwrap();
    let out = run(&cfg, &["restore", "--identity", &id_arg, "--data-dir", &busy.display().to_string()]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is not empty"), "{}", stderr(&out));
    assert_eq!(files(&busy), vec!["member".to_string()]);

    // An unknown id.
    let out = run(
        &cfg,
        &[
            "restore",
            "20200101T000000Z-r1-a",
            "--identity",
            &id_arg,
            "--output",
            &work.path().join("x.db").display().to_string(),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no destination holds a backup 20200101T000000Z-r1-a"), "{}", stderr(&out));

    // A damaged artifact (same size, one byte flipped) fails verify and restore; nothing is written.
    let artifact = files(&folder).into_iter().find(|n| n.ends_with(".db.zst.age")).unwrap();
    let mut bytes = std::fs::read(folder.join(&artifact)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(folder.join(&artifact), bytes).unwrap();
    let out = run(&cfg, &["verify", &backup_id]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("local") && stderr(&out).contains("does not match its manifest"), "{}", stderr(&out));
    assert!(stdout(&out).contains("s3"), "the S3 copy still verifies: {}", stdout(&out));
    // Restore falls back to the S3 copy.
    let from_s3 = work.path().join("from-s3.db");
    let out =
        run(&cfg, &["restore", &backup_id, "--identity", &id_arg, "--output", &from_s3.display().to_string()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("this copy cannot be restored; trying the next"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&from_s3).unwrap(), std::fs::read(&file).unwrap());
    // With both copies damaged, nothing is written.
    let key = s3.keys(BUCKET).into_iter().find(|k| k.ends_with(".db.zst.age")).unwrap();
    let object = s3.root.join(BUCKET).join(&key);
    let mut bytes = std::fs::read(&object).unwrap();
    bytes[mid] ^= 0x01;
    std::fs::write(&object, bytes).unwrap();
    let damaged = work.path().join("damaged.db");
    let out =
        run(&cfg, &["restore", &backup_id, "--identity", &id_arg, "--output", &damaged.display().to_string()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("no copy of"), "{}", stderr(&out));
    assert!(!damaged.exists());
    assert!(files(work.path()).iter().all(|n| !n.ends_with(".part")), "{:?}", files(work.path()));
}

/// One backup restored three times (each member's own name and peer URL, one cluster and token) starts
/// as a three-member cluster: every member serves the seeded keys at the backup's revision and a new
/// write through one member is read on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_backup_restores_a_three_member_cluster() {
    let version = EtcdVersion::V35;
    let etcd = Etcd::start(version);
    let revision = etcd.seed(100, 200).await;
    let setup = Setup::new();
    let cfg = setup.config(&etcd.config_table(), "");
    let out = run(&cfg, &["backup"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    drop(etcd);

    let members = Member::several(3);
    let cluster = Member::initial_cluster(&members);
    let mut restored = Vec::new();
    for member in &members {
        let data_dir = setup.work.path().join(&member.name);
        let out =
            restore_as(&cfg, &setup.identity.file, version, &data_dir, member, &cluster, Some("restored-cluster"))
                .await;
        assert!(out.status.success(), "{}: {}", member.name, stderr(&out));
        assert!(stdout(&out).contains("the same --initial-cluster and --initial-cluster-token"), "{}", stdout(&out));
        restored.push((member.clone(), data_dir));
    }

    let running = Etcd::start_cluster(version, &restored);
    let out = running[0].etcdctl(&["member", "list", "-w", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut names: Vec<&str> =
        list["members"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["member-1", "member-2", "member-3"]);
    for etcd in &running {
        let mut client = etcd.client().await;
        let options = etcd_client::GetOptions::new().with_prefix().with_serializable();
        let resp = client.get("seed/", Some(options)).await.unwrap();
        assert_eq!(resp.kvs().len(), 100, "{}", etcd.endpoint);
        assert_eq!(resp.header().unwrap().revision(), revision, "{}", etcd.endpoint);
    }
    let mut second = running[1].client().await;
    second.put("after-restore", "written", None).await.unwrap();
    let mut third = running[2].client().await;
    let resp = third.get("after-restore", None).await.unwrap();
    assert_eq!(resp.kvs()[0].value(), b"written");
    assert_eq!(resp.header().unwrap().revision(), revision + 1);
}

/// `--output` onto a dangling symlink is refused like any existing name; the link stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_onto_a_dangling_symlink_is_refused() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    let config = s.config(&etcd.config_table(), "");
    assert!(run(&config, &["backup"]).await.status.success());
    let link = s.work.path().join("snapshot.db");
    std::os::unix::fs::symlink(s.work.path().join("nowhere/target.db"), &link).unwrap();
    let identity = s.identity.file.display().to_string();
    let out = run(&config, &["restore", "latest", "--identity", &identity, "--output", link.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink(), "the link was replaced");
    assert!(!s.work.path().join("nowhere").exists());
}

/// A restore writes the data dir beside its target and moves it into place only when the tool
/// succeeded; what a killed restore left there (a process that no longer runs) goes with the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_never_leaves_a_half_written_data_dir() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V35);
    etcd.seed(10, 10).await;
    let config = s.config(&etcd.config_table(), "");
    assert!(run(&config, &["backup"]).await.status.success());
    let data_dir = s.work.path().join("restored");
    let killed = s.work.path().join(".restored.restoring-4194999");
    std::fs::create_dir_all(killed.join("member/snap")).unwrap();
    std::fs::write(killed.join("member/snap/db"), "half").unwrap();
    let (identity, bin) = (s.identity.file.display().to_string(), etcd_bin_dir(EtcdVersion::V35).display().to_string());
    let args =
        ["restore", "latest", "--identity", &identity, "--data-dir", data_dir.to_str().unwrap(), "--etcd-bin", &bin];
    let out = run(&config, &args).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(data_dir.join("member/snap/db").exists());
    assert_eq!(
        files(s.work.path()).iter().filter(|n| n.contains(".restoring-")).count(),
        0,
        "{:?}",
        files(s.work.path())
    );
}

/// `verify` prints the database hash as etcd's own tools do (hex), so the two can be compared by eye.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_prints_the_hash_as_etcds_tools_do() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.seed(20, 10).await;
    let config = s.config(&etcd.config_table(), "");
    assert!(run(&config, &["backup"]).await.status.success());
    let identity = s.identity.file.display().to_string();
    let file = s.work.path().join("snapshot.db");
    assert!(
        run(&config, &["restore", "latest", "--identity", &identity, "--output", file.to_str().unwrap()])
            .await
            .status
            .success()
    );
    let table = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "table"])
        .arg(&file)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    // | HASH | REVISION | TOTAL KEYS | TOTAL SIZE |, then the values.
    let row = table.lines().find(|l| l.starts_with('|') && !l.contains("HASH")).expect(&table);
    let hash = row.split('|').nth(1).unwrap().trim().to_string();
    let out = run(&config, &["verify", "latest", "--identity", &identity]).await;
    assert!(stdout(&out).contains(&format!("hash {hash})")), "etcdctl says {hash}: {}", stdout(&out));
}

/// A wrapper around the real etcdutl 3.5.1 in its own folder: it records every call in `calls`, and
/// when `offers` its help lists the flags etcd 3.5.10 added (passed on to the real tool without them,
/// which does not know them).
fn etcdutl_wrapper(dir: &Path, offers: bool) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let real = etcd_bin_dir(EtcdVersion::V35).join("etcdutl");
    let extra = if offers {
        "printf '      --bump-revision uint   How much to increase the latest revision after restore\\n      --mark-compacted       Mark the latest revision after restore as the point of scheduled compaction\\n'"
    } else {
        ":"
    };
    let script = format!(
        r#"#!/bin/bash
echo "$*" >> '{calls}'
if [[ "$*" == "snapshot restore --help" ]]; then '{real}' "$@"; {extra}; exit 0; fi
args=(); skip=0
for a in "$@"; do
  if [[ $skip == 1 ]]; then skip=0; continue; fi
  case "$a" in --bump-revision) skip=1 ;; --mark-compacted) ;; *) args+=("$a") ;; esac
done
exec '{real}' "${{args[@]}}"
"#,
        calls = dir.join("calls").display(),
        real = real.display()
    );
    let tool = dir.join("etcdutl");
    std::fs::write(&tool, script).unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir.to_path_buf()
}

/// Kubernetes-safe restore: the revision is raised by 1,000,000,000 and marked compacted where the
/// tool's own help offers both flags; where it does not (etcd 3.5.1, 3.4), the restore still works and
/// says what the missing bump means; `--no-bump-revision` passes neither and says nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_revision_is_bumped_where_the_tool_offers_it_and_its_lack_is_explained() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V35);
    let revision = etcd.seed(10, 10).await;
    let config = s.config(&etcd.config_table(), "");
    assert!(run(&config, &["backup"]).await.status.success());
    let identity = s.identity.file.display().to_string();
    for (name, offers, extra) in [
        ("old", false, None),
        ("new", true, None),
        ("new-off", true, Some("--no-bump-revision")),
        ("new-small", true, Some("--bump-revision=5000")),
    ] {
        let bin = etcdutl_wrapper(&s.work.path().join(format!("bin-{name}")), offers);
        let data_dir = s.work.path().join(format!("restored-{name}"));
        let (data_arg, bin_arg) = (data_dir.display().to_string(), bin.display().to_string());
        let mut args =
            vec!["restore", "latest", "--identity", &identity, "--data-dir", &data_arg, "--etcd-bin", &bin_arg];
        args.extend(extra);
        let out = run(&config, &args).await;
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert!(data_dir.join("member/snap/db").exists(), "{name}");
        let text = stdout(&out);
        let calls = std::fs::read_to_string(bin.join("calls")).unwrap();
        let restore = calls.lines().find(|l| l.starts_with("snapshot restore /")).unwrap();
        match name {
            "old" => {
                assert!(!restore.contains("--bump-revision") && !restore.contains("--mark-compacted"), "{restore}");
                assert!(text.contains("does not offer --bump-revision and --mark-compacted"), "{text}");
                assert!(text.contains(&format!("the snapshot's, {revision}")), "{text}");
            }
            "new" => {
                assert!(restore.ends_with("--bump-revision 1000000000 --mark-compacted"), "{restore}");
                assert!(text.contains(&format!("raised by 1000000000 to {}", revision + 1_000_000_000)), "{text}");
            }
            "new-off" => {
                assert!(!calls.contains("--help") && !restore.contains("--bump-revision"), "{calls}");
                assert!(!text.contains("bump") && !text.contains("raised"), "{text}");
            }
            _ => assert!(restore.ends_with("--bump-revision 5000 --mark-compacted"), "{restore}"),
        }
    }
}

/// A restore from S3 reads a large artifact with ranged GETs that together cover it exactly once, and
/// decrypts as they arrive; a download that breaks off is named as such, and leaves no output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_from_s3_streams_ranged_gets_and_names_a_broken_download() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V35);
    etcd.seed(14, 1_000_000).await; // incompressible: an artifact of some 14 MB, several ranges
    let s3 = S3::start().await;
    let config = s.config(&etcd.config_table(), &s3.config_table(BUCKET, ""));
    assert!(run(&config, &["backup"]).await.status.success());
    std::fs::remove_dir_all(s.folder()).unwrap();
    let identity = s.identity.file.display().to_string();
    let artifact_size =
        s3.keys(BUCKET).iter().filter(|k| k.ends_with(".age")).map(|k| s3.object(BUCKET, k).len()).sum::<usize>();
    assert!(artifact_size > 12 << 20, "{artifact_size}");

    let target = s.work.path().join("out.db");
    let args = ["restore", "latest", "--identity", &identity, "--output", target.to_str().unwrap()];
    let out = run(&config, &args).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let ranges: Vec<(usize, usize)> = s3
        .faults
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(".age"))
        .map(|r| {
            let range = r.range.as_deref().unwrap_or_else(|| panic!("a GET without a range: {r:?}"));
            let (from, to) = range.trim_start_matches("bytes=").split_once('-').unwrap();
            (from.parse().unwrap(), to.parse::<usize>().unwrap() + 1)
        })
        .collect();
    let mut sorted = ranges.clone();
    sorted.sort();
    assert!(sorted.len() >= 3, "{sorted:?}");
    assert_eq!(sorted[0].0, 0);
    assert!(sorted.windows(2).all(|w| w[0].1 == w[1].0), "the ranges follow each other: {sorted:?}");
    assert_eq!(sorted.last().unwrap().1, artifact_size, "and end at the artifact's end");
    // etcd's own tool reads the snapshot.
    let status = std::process::Command::new(etcd_bin_dir(EtcdVersion::V35).join("etcdutl"))
        .args(["snapshot", "status", "-w", "json"])
        .arg(&target)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));

    // The server goes away after the first range.
    s3.faults.artifact_gets.store(0, std::sync::atomic::Ordering::SeqCst);
    s3.faults.artifact_gets_then_down.store(1, std::sync::atomic::Ordering::SeqCst);
    let broken = s.work.path().join("broken.db");
    let args = ["restore", "latest", "--identity", &identity, "--output", broken.to_str().unwrap()];
    let out = run(&config, &args).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("from s3://") && err.contains("failed: "), "the download is named: {err}");
    assert!(!err.contains("corrupt") && !err.contains("cannot decrypt"), "{err}");
    assert!(!broken.exists());
    let left: Vec<_> = std::fs::read_dir(s.work.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(!left.iter().any(|n| n.to_string_lossy().contains("broken")), "{left:?}");
}
