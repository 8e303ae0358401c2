//! What is read back from a store, a manifest or a clock is untrusted: a planted manifest never picks a
//! file to remove or a place to write; a backup dated in the future never pushes out a real one;
//! `latest` is the newest of every destination; each copy is checked against its own manifest, by its
//! sha256 before anything decrypts it; an interrupted upload never blocks later backups; an interrupted
//! drill leaves no etcd running and no plaintext behind.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use common::*;
use etcd_backupd::manifest::BackupId;

/// A backup id of the planted kind: at `created`, revision 7, member `a`.
fn planted_id(created: chrono::DateTime<Utc>) -> BackupId {
    BackupId::new(created, 7, "a")
}

/// Plants a backup whose manifest names `artifact_name` as its artifact (the real artifact of its id is
/// there too, with the size the manifest records).
fn plant_hostile(folder: &Path, id: &BackupId, artifact_name: &str) {
    std::fs::create_dir_all(folder).unwrap();
    let mut m = synthetic_manifest(id, "default", 10);
    std::fs::write(folder.join(&m.artifact.name), [7u8; 10]).unwrap();
    m.artifact.name = artifact_name.to_string();
    std::fs::write(folder.join(id.manifest_name()), m.to_json()).unwrap();
}

fn ids_in(folder: &Path) -> Vec<String> {
    files(folder).into_iter().filter_map(|n| n.strip_suffix(".manifest.json").map(str::to_string)).collect()
}

/// Defect 1: a manifest's `artifact.name` decided which file `prune` and `delete` removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_manifest_never_decides_what_is_removed() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.seed(5, 10).await;
    let config = s.config(&etcd.config_table(), "");
    let config_text =
        std::fs::read_to_string(&config).unwrap().replace("[local]\n", "[local]\nretention = { keep_last = 1 }\n");
    std::fs::write(&config, config_text).unwrap();
    let victims: Vec<PathBuf> = (0..3).map(|i| s.work.path().join(format!("victim-{i}.txt"))).collect();
    for v in &victims {
        std::fs::write(v, "precious").unwrap();
    }
    let old = Utc::now() - chrono::Duration::days(30);
    let hostile = [
        (planted_id(old), victims[0].display().to_string()),
        (planted_id(old + chrono::Duration::hours(1)), "../../victim-1.txt".to_string()),
        (planted_id(old + chrono::Duration::hours(2)), format!("../../../../../../..{}", victims[2].display())),
    ];
    for (id, name) in &hostile {
        plant_hostile(&s.folder(), id, name);
    }

    // `list` does not show them, `prune --dry-run` names them as ignored, with why.
    let out = run(&config, &["list"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    for (id, _) in &hostile {
        assert!(!stdout(&out).contains(&id.to_string()), "{}", stdout(&out));
    }
    let out = run(&config, &["prune", "--dry-run", "--json"]).await;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ignored = report[0]["ignored"].to_string();
    assert!(ignored.contains("names its artifact"), "{ignored}");

    // A backup (whose own prune keeps one) and an explicit prune and delete: nothing outside is touched.
    let out = run(&config, &["backup"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&config, &["prune"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    for (id, _) in &hostile {
        let out = run(&config, &["delete", &id.to_string(), "--force"]).await;
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains("no destination holds a backup"), "{}", stderr(&out));
    }
    for v in &victims {
        assert_eq!(std::fs::read_to_string(v).unwrap(), "precious", "{} was removed", v.display());
    }
    // The planted files are never ours to touch either.
    for (id, _) in &hostile {
        assert!(s.folder().join(id.manifest_name()).exists());
    }
}

/// Defect 2: a manifest in S3 decided where `verify`, `restore` and `drill` wrote the download.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_manifest_in_s3_never_decides_where_a_download_goes() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.seed(5, 10).await;
    let s3 = S3::start().await;
    let config = s.config(&etcd.config_table(), &s3.config_table(BUCKET, ""));
    assert!(run(&config, &["backup"]).await.status.success());
    let real = ids_in(&s.folder()).pop().unwrap();
    std::fs::remove_dir_all(s.folder()).unwrap();

    let escape = s.work.path().join("escaped");
    std::fs::write(&escape, "precious").unwrap();
    let id = planted_id(Utc::now() + chrono::Duration::seconds(5));
    let folder = s3.root.join(BUCKET).join("default");
    plant_hostile(&folder, &id, &format!("../../../../../../..{}", escape.display()));

    let out = run(&config, &["verify", &id.to_string()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no destination holds a backup"), "{}", stderr(&out));
    let identity = s.identity.file.display().to_string();
    let target = s.work.path().join("out.db").display().to_string();
    let out = run(&config, &["restore", &id.to_string(), "--identity", &identity, "--output", &target]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&escape).unwrap(), "precious");

    // `latest` is the real backup, not the planted (newer) one.
    let out = run(&config, &["verify", "latest"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("s3 {real}: OK")), "{}", stdout(&out));
}

/// Defect 3: with `keep_last = 1`, one backup dated years ahead made every new backup remove itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_dated_in_the_future_never_makes_new_ones_delete_themselves() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.seed(5, 10).await;
    let s3 = S3::start().await;
    let metrics = s.work.path().join("metrics.prom");
    let extra = format!(
        "[metrics]\ntextfile = \"{}\"\n{}",
        metrics.display(),
        s3.config_table_with(BUCKET, "", "{ keep_last = 1 }")
    );
    let config = s.config(&etcd.config_table(), &extra);
    let config_text =
        std::fs::read_to_string(&config).unwrap().replace("[local]\n", "[local]\nretention = { keep_last = 1 }\n");
    std::fs::write(&config, config_text).unwrap();
    let future = planted_id(Utc::now() + chrono::Duration::days(5 * 365));
    plant(&s.folder(), &future, 10, false);
    plant(&s3.root.join(BUCKET).join("default"), &future, 10, false);

    let mut taken = Vec::new();
    for run_no in 0..3 {
        let out = run(&config, &["backup"]).await;
        assert!(out.status.success(), "run {run_no}: {}", stderr(&out));
        let ids = ids_in(&s.folder());
        let newest_real = ids.iter().filter(|i| **i != future.to_string()).max().cloned().unwrap();
        assert!(!taken.contains(&newest_real), "run {run_no} committed nothing new: {ids:?}");
        taken.push(newest_real.clone());
        // The new backup and the future-dated one stay; older real ones go by keep_last = 1.
        let mut want = vec![newest_real.clone(), future.to_string()];
        want.sort();
        assert_eq!(ids, want, "run {run_no}");
        let remote: Vec<String> = s3.keys(BUCKET).into_iter().filter(|k| k.ends_with(".manifest.json")).collect();
        assert_eq!(remote.len(), 2, "{remote:?}");
        assert!(stderr(&out).contains("dated in the future"), "warned: {}", stderr(&out));
    }
    let out = run(&config, &["prune", "--dry-run"]).await;
    assert!(stdout(&out).contains("dated in the future"), "{}", stdout(&out));
    // Reported where an operator looks: status and the metrics.
    let out = run(&config, &["status"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out)
            .contains(&format!("1 backups are dated in the future (a clock was wrong when they were taken): {future}")),
        "{}",
        stdout(&out)
    );
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(text.contains("etcd_backupd_future_dated_backups{cluster=\"default\"} 1\n"), "{text}");
    // A last success dated in the future never reads as fresh.
    let state_file = state_dir_for(&config).join("state.json");
    let mut state: serde_json::Value = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    state["last_success"]["time"] = serde_json::json!((Utc::now() + chrono::Duration::days(900)).to_rfc3339());
    std::fs::write(&state_file, serde_json::to_vec(&state).unwrap()).unwrap();
    let out = run(&config, &["status"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("in the future"), "{}", stderr(&out));
    // `latest` is the newest real backup, not the one the wrong clock dated last.
    let out = run(&config, &["verify", "latest"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("local {}: OK", taken[2])), "{}", stdout(&out));
}

/// Defect 4: `latest` looked only at the first destination that had any backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_is_the_newest_of_every_destination() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V35);
    etcd.seed(5, 10).await;
    let s3 = S3::start().await;
    let config = s.config(&etcd.config_table(), &s3.config_table(BUCKET, ""));
    assert!(run(&config, &["backup"]).await.status.success());
    let mut client = etcd.client().await;
    client.put("newer", "data", None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await; // ids have whole seconds; `--before` needs two
    assert!(run(&config, &["backup"]).await.status.success());
    let ids = ids_in(&s.folder());
    let (older, newer) = (&ids[0], &ids[1]);
    // The newest is in S3 only (its local commit failed, or another member took it).
    for name in files(&s.folder()).into_iter().filter(|n| n.starts_with(newer.as_str())) {
        std::fs::remove_file(s.folder().join(name)).unwrap();
    }
    let identity = s.identity.file.display().to_string();
    let target = s.work.path().join("latest.db");
    let out = run(&config, &["restore", "latest", "--identity", &identity, "--output", target.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("wrote the snapshot of {newer}")), "{}", stdout(&out));
    let before = ids[1].split('-').next().unwrap();
    let before = chrono::NaiveDateTime::parse_from_str(before, "%Y%m%dT%H%M%SZ").unwrap().and_utc().to_rfc3339();
    let out = run(&config, &["verify", "latest"]).await;
    assert!(stdout(&out).contains(&format!("s3 {newer}: OK")), "{}", stdout(&out));
    let target = s.work.path().join("before.db");
    let args = ["restore", "--before", &before, "--identity", &identity, "--output", target.to_str().unwrap()];
    let out = run(&config, &args).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("wrote the snapshot of {older}")), "{}", stdout(&out));
}

/// Defect 5: the first holder's manifest was used to check every copy, and a damaged artifact was
/// reported as a decryption error (its sha256 was not checked first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_copy_is_checked_against_its_own_manifest_and_its_sha256_first() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.seed(50, 100).await;
    let s3 = S3::start().await;
    let config = s.config(&etcd.config_table(), &s3.config_table(BUCKET, ""));
    assert!(run(&config, &["backup"]).await.status.success());
    let id = ids_in(&s.folder()).pop().unwrap();
    let manifest_path = s.folder().join(format!("{id}.manifest.json"));
    let good = std::fs::read_to_string(&manifest_path).unwrap();
    let sha =
        serde_json::from_str::<serde_json::Value>(&good).unwrap()["artifact"]["sha256"].as_str().unwrap().to_string();
    std::fs::write(&manifest_path, good.replace(&sha, &"0".repeat(64))).unwrap();

    let identity = s.identity.file.display().to_string();
    for args in [vec!["verify", "latest"], vec!["verify", "latest", "--identity", &identity]] {
        let out = run(&config, &args).await;
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stdout(&out).contains(&format!("s3 {id}: OK")), "the intact S3 copy passes: {}", stdout(&out));
        assert!(
            stderr(&out).contains("local: ") && stderr(&out).contains("does not match its manifest"),
            "{}",
            stderr(&out)
        );
    }
    // A restore falls back to the S3 copy.
    let target = s.work.path().join("out.db");
    let out = run(&config, &["restore", "latest", "--identity", &identity, "--output", target.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", stderr(&out));

    // A flipped byte in the artifact is a sha256 mismatch, found before decrypting.
    std::fs::write(&manifest_path, &good).unwrap();
    let artifact = s.folder().join(format!("{id}.db.zst.age"));
    let mut bytes = std::fs::read(&artifact).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&artifact, bytes).unwrap();
    let out = run(&config, &["verify", "latest", "--identity", &identity]).await;
    let err = stderr(&out);
    assert!(err.contains("does not match its manifest") && err.contains("sha256"), "{err}");
    assert!(!err.contains("cannot decrypt") && !err.contains("corrupt"), "the sha256 is checked first: {err}");
}

/// Defect 6: a crash between completing the multipart upload and writing the manifest left an artifact
/// without a manifest in S3, and every later backup failed ("already exists").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_without_its_manifest_does_not_block_later_backups() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.seed(5, 10).await;
    let s3 = S3::start().await;
    let config = s.config(&etcd.config_table(), &s3.config_table(BUCKET, ""));
    assert!(run(&config, &["backup"]).await.status.success());
    let id = ids_in(&s.folder()).pop().unwrap();
    // The state a crash right after CompleteMultipartUpload leaves: the artifact, no manifest.
    let remote = s3.root.join(BUCKET).join("default");
    std::fs::remove_file(remote.join(format!("{id}.manifest.json"))).unwrap();
    for round in 0..2 {
        let out = run(&config, &["backup"]).await;
        assert!(out.status.success(), "round {round}: {}", stderr(&out));
    }
    let remote_ids: Vec<String> =
        files(&remote).into_iter().filter_map(|n| n.strip_suffix(".manifest.json").map(str::to_string)).collect();
    assert_eq!(remote_ids.len(), 3, "the interrupted one was uploaded again: {remote_ids:?}");
    assert!(remote_ids.contains(&id));
    let out = run(&config, &["verify", &id]).await;
    assert!(out.status.success(), "{}", stderr(&out));
}

fn scratch_left(state: &Path) -> Vec<String> {
    files(state).into_iter().filter(|n| n.starts_with(".etcd-backupd-scratch")).collect()
}

/// Starts `drill` and waits for its throwaway etcd to run; returns the drill process.
async fn drill_until_etcd_runs(config: &Path, s: &Setup) -> tokio::process::Child {
    drill_with(config, s, &etcd_bin_dir(EtcdVersion::V34), &[]).await
}

/// `drill_until_etcd_runs` with `--etcd-bin etcd_bin` and more environment.
async fn drill_with(config: &Path, s: &Setup, etcd_bin: &Path, env: &[(&str, &str)]) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_etcd-backupd"));
    cmd.arg("--config").arg(config).args(["drill", "latest", "--identity"]).arg(&s.identity.file);
    cmd.arg("--etcd-bin").arg(etcd_bin).env("STATE_DIRECTORY", state_dir_for(config));
    aws_env(&mut cmd);
    cmd.envs(env.iter().copied());
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let child = cmd.spawn().unwrap();
    let state = state_dir_for(config);
    for _ in 0..600 {
        if !etcd_children_in(&state).is_empty() {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the drill's etcd never started");
}

async fn until_gone(state: &Path) -> Vec<i32> {
    for _ in 0..200 {
        if etcd_children_in(state).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    etcd_children_in(state)
}

/// Defect 7: an interrupted drill left a live etcd serving the restored data and plaintext snapshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_or_killed_drill_leaves_no_etcd_and_no_plaintext() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.seed(20, 100).await;
    let config = s.config(&etcd.config_table(), "");
    assert!(run(&config, &["backup"]).await.status.success());
    let state = state_dir_for(&config);

    // SIGTERM: the drill stops its etcd and removes its scratch folder before it exits.
    let mut drill = drill_until_etcd_runs(&config, &s).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(drill.id().unwrap() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let status = drill.wait().await.unwrap();
    assert!(!status.success());
    assert!(etcd_children_in(&state).is_empty(), "etcd still runs after the drill ended");
    assert!(scratch_left(&state).is_empty(), "{:?}", scratch_left(&state));

    // SIGKILL: the etcd dies with the drill; the next run removes the scratch folder.
    let mut drill = drill_until_etcd_runs(&config, &s).await;
    drill.kill().await.unwrap();
    let _ = drill.wait().await;
    assert!(until_gone(&state).await.is_empty(), "etcd outlived a killed drill");
    assert_eq!(scratch_left(&state).len(), 1, "a killed drill cannot clean up itself");
    let out = run(&config, &["verify", "latest"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(scratch_left(&state).is_empty(), "the next run removes it: {:?}", scratch_left(&state));
}

/// A download of a multipart object from AWS carries a part-level checksum the SDK cannot check: it is
/// checked by the manifest's sha256 instead, without a warning on every download.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_are_checked_by_sha256_without_sdk_warnings() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.seed(20, 100).await;
    let s3 = S3::start().await;
    let config = s.config(&etcd.config_table(), &s3.config_table(BUCKET, ""));
    assert!(run(&config, &["backup"]).await.status.success());
    std::fs::remove_dir_all(s.folder()).unwrap();
    s3.faults.part_level_checksum_on_get.store(true, std::sync::atomic::Ordering::SeqCst);
    let identity = s.identity.file.display().to_string();
    let out = run(&config, &["verify", "latest", "--identity", &identity]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("part-level checksum"), "{}", stderr(&out));
}

/// The drill's etcd gets only the environment it needs: not systemd's NOTIFY_SOCKET (it would tell
/// systemd it is the service), not AWS credentials, not the operator's ETCD_* flags. And `--etcd-bin`
/// takes the etcd binary's path as well as its folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drills_etcd_inherits_nothing_it_must_not() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.seed(5, 10).await;
    let config = s.config(&etcd.config_table(), "");
    assert!(run(&config, &["backup"]).await.status.success());
    let state = state_dir_for(&config);
    let binary = etcd_bin_dir(EtcdVersion::V34).join("etcd");
    let env = [("NOTIFY_SOCKET", "/run/systemd/notify"), ("ETCD_NAME", "not-the-drill"), ("ETCDCTL_API", "2")];
    let mut drill = drill_with(&config, &s, &binary, &env).await;
    let pid = etcd_children_in(&state)[0];
    let environ = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap()).replace('\0', "\n");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(drill.id().unwrap() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    drill.wait().await.unwrap();
    for name in ["NOTIFY_SOCKET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "ETCD_NAME", "ETCDCTL_API"] {
        assert!(!environ.lines().any(|l| l.starts_with(&format!("{name}="))), "{name} reached etcd:\n{environ}");
    }
    assert!(environ.lines().any(|l| l.starts_with("PATH=")), "{environ}");
}
