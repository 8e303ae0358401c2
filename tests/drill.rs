//! `drill`: a backup is restored into a temporary dir, served by a throwaway etcd on loopback and
//! compared with its manifest; the result lands in the state file and the metrics; nothing is left.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// Every drill test's config also writes the metrics, beside the config.
fn drill_config(s: &Setup, etcd_table: &str, extra: &str) -> PathBuf {
    s.config(etcd_table, &format!("[metrics]\ntextfile = \"{}\"\n{extra}", metrics(s).display()))
}

fn metrics(s: &Setup) -> PathBuf {
    s.work.path().join("etcd_backupd.prom")
}

fn read_state(config: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(state_dir_for(config).join("state.json")).unwrap()).unwrap()
}

fn newest_id(folder: &Path) -> String {
    let mut ids: Vec<String> =
        files(folder).into_iter().filter_map(|n| n.strip_suffix(".manifest.json").map(str::to_string)).collect();
    ids.sort();
    ids.pop().expect("a committed backup")
}

/// Nothing of the drill is left in the state dir: no scratch folder, no data dir, no snapshot.
fn assert_nothing_left(config: &Path) {
    let left: Vec<String> =
        files(&state_dir_for(config)).into_iter().filter(|n| n.starts_with(".etcd-backupd-scratch")).collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_proves_a_backup_and_records_it_35() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V35);
    etcd.seed(200, 500).await;
    let s3 = S3::start().await;
    let config = drill_config(&s, &etcd.config_table(), &s3.config_table(BUCKET, "p"));
    let out = run(&config, &["backup"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let id = newest_id(&s.folder());
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(s.folder().join(format!("{id}.manifest.json"))).unwrap()).unwrap();
    let status = &manifest["snapshot"]["status"];

    let bin = etcd_bin_dir(EtcdVersion::V35);
    let args =
        ["drill", "latest", "--identity", s.identity.file.to_str().unwrap(), "--etcd-bin", bin.to_str().unwrap()];
    let out = run(&config, &args).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(&format!("drill passed: {id} (from local)")), "{text}");
    // Its duration to the millisecond (a drill of a small backup takes under a few seconds).
    let took = text.trim_end().rsplit('(').next().unwrap();
    assert!(took.ends_with("ms)") && took != "0s)", "{text}");
    assert!(text.contains(&format!("revision {} with {} keys", status["revision"], status["live_keys"])), "{text}");
    assert_eq!(status["live_keys"], 200, "the seeded keys");

    let state = read_state(&config);
    assert_eq!(state["last_proven"]["id"], id.as_str());
    assert_eq!(state["last_proven"]["keys"], 200);
    assert_eq!(state["drills"]["ok"], 1);
    let metrics = std::fs::read_to_string(metrics(&s)).unwrap();
    assert!(
        metrics.contains(&format!("etcd_backupd_last_proven_revision{{cluster=\"default\"}} {}\n", status["revision"]))
    );
    assert!(metrics.contains("etcd_backupd_drills_total{cluster=\"default\",result=\"ok\"} 1\n"), "{metrics}");
    assert_nothing_left(&config);

    // The same backup from S3 alone, with the identity and tools from the [drill] table.
    std::fs::remove_dir_all(s.folder()).unwrap();
    let drill_table =
        format!("[drill]\nidentity_file = \"{}\"\netcd_bin = \"{}\"\n", s.identity.file.display(), bin.display());
    let config = drill_config(&s, &etcd.config_table(), &format!("{}{drill_table}", s3.config_table(BUCKET, "p")));
    let out = run(&config, &["drill", &id]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("drill passed: {id} (from s3)")), "{}", stdout(&out));
    assert_eq!(read_state(&config)["drills"]["ok"], 2);
    assert_nothing_left(&config);
    let status = run(&config, &["status"]).await;
    assert!(stdout(&status).contains(&format!("last proven restorable: {id}")), "{}", stdout(&status));
}

/// etcd 3.4, a snapshot with auth enabled (the drill counts keys as the [etcd] user) whose newest
/// revision was a deletion compacted away (the member serves the compaction's revision).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_handles_auth_and_compaction_34() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.seed(20, 100).await;
    let mut client = etcd.client().await;
    client.put("doomed", "x", None).await.unwrap();
    let rev = client.delete("doomed", None).await.unwrap().header().unwrap().revision();
    client.compact(rev, Some(etcd_client::CompactionOptions::new().with_physical())).await.unwrap();
    let password = etcd.enable_auth();
    let pw_file = s.work.path().join("etcd-password");
    std::fs::write(&pw_file, format!("{password}\n")).unwrap();
    let table = format!(
        "[etcd]\nendpoints = [\"{}\"]\nusername = \"backup\"\npassword_file = \"{}\"\n",
        etcd.endpoint,
        pw_file.display()
    );
    let config = drill_config(&s, &table, "");
    let out = run(&config, &["backup"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let id = newest_id(&s.folder());
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(s.folder().join(format!("{id}.manifest.json"))).unwrap()).unwrap();
    assert_eq!(manifest["snapshot"]["status"]["compact_revision"], rev);
    assert!(manifest["snapshot"]["status"]["revision"].as_i64().unwrap() < rev, "{manifest}");

    let bin = etcd_bin_dir(EtcdVersion::V34);
    let args = ["drill", "--identity", s.identity.file.to_str().unwrap(), "--etcd-bin", bin.to_str().unwrap()];
    let out = run(&config, &args).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("revision {rev} with 20 keys")), "{}", stdout(&out));
    assert_nothing_left(&config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_of_a_tampered_backup_fails_and_is_recorded() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.seed(50, 2000).await;
    let config = drill_config(&s, &etcd.config_table(), "");
    assert!(run(&config, &["backup"]).await.status.success());
    let id = newest_id(&s.folder());
    let artifact = s.folder().join(format!("{id}.db.zst.age"));
    let mut bytes = std::fs::read(&artifact).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&artifact, bytes).unwrap();

    let bin = etcd_bin_dir(EtcdVersion::V34);
    let args = ["drill", &id, "--identity", s.identity.file.to_str().unwrap(), "--etcd-bin", bin.to_str().unwrap()];
    let out = run(&config, &args).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("the local copy of {id} cannot be restored")), "{}", stderr(&out));
    let state = read_state(&config);
    assert_eq!(state["drills"]["failed"], 1);
    assert_eq!(state["last_drill_failure"]["id"], id.as_str());
    assert!(state["last_proven"].is_null());
    let metrics = std::fs::read_to_string(metrics(&s)).unwrap();
    assert!(metrics.contains("etcd_backupd_drills_total{cluster=\"default\",result=\"failed\"} 1\n"), "{metrics}");
    assert!(metrics.contains("# TYPE etcd_backupd_last_proven_timestamp_seconds gauge"), "{metrics}");
    assert!(!metrics.contains("etcd_backupd_last_proven_timestamp_seconds{"), "{metrics}");
    assert_nothing_left(&config);

    // No identity anywhere: a clear error before anything is fetched.
    let out = run(&config, &["drill"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("pass --identity FILE or set drill.identity_file"), "{}", stderr(&out));
    // No etcd binary where it is told to look.
    let args = ["drill", "--identity", s.identity.file.to_str().unwrap(), "--etcd-bin", "/nonexistent"];
    let out = run(&config, &args).await;
    assert!(stderr(&out).contains("no etcd binary was found in '/nonexistent'"), "{}", stderr(&out));
}

/// On a terminal, download and decrypt show a progress bar; elsewhere (the journal, CI) plain log lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_a_bar_on_a_terminal_and_log_lines_elsewhere() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.seed(20, 100).await;
    let s3 = S3::start().await;
    let config = drill_config(&s, &etcd.config_table(), &s3.config_table(BUCKET, "p"));
    assert!(run(&config, &["backup"]).await.status.success());
    std::fs::remove_dir_all(s.folder()).unwrap(); // from S3: downloaded and decrypted in one pass

    let piped = s.work.path().join("piped.db");
    let out = run(
        &config,
        &["restore", "--identity", s.identity.file.to_str().unwrap(), "--output", piped.to_str().unwrap()],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("downloading and decrypting: started") && err.contains("downloading and decrypting: done"),
        "{err}"
    );
    assert!(!err.contains('\r') && !err.contains("\u{1b}["), "no terminal control on a pipe: {err:?}");

    // `script` gives the command a pseudo-terminal.
    let on_tty = s.work.path().join("tty.db");
    let command = format!(
        "{} --config {} restore --identity {} --output {}",
        env!("CARGO_BIN_EXE_etcd-backupd"),
        config.display(),
        s.identity.file.display(),
        on_tty.display()
    );
    let mut cmd = tokio::process::Command::new("script");
    cmd.args(["-qec", &command, "/dev/null"]);
    aws_env(&mut cmd);
    cmd.env("STATE_DIRECTORY", state_dir_for(&config));
    let out = cmd.output().await.unwrap();
    assert!(out.status.success(), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("downloading and decrypting") && text.contains("[====="), "{text:?}");
    assert!(!text.contains("decrypting: started"), "a bar, not log lines: {text:?}");
    assert_eq!(std::fs::read(&piped).unwrap(), std::fs::read(&on_tty).unwrap());
}

/// The shipped drill unit on a verification host: its own command line, with the identity handed over as
/// a systemd credential (`$CREDENTIALS_DIRECTORY/identity`) and a config that has no `[etcd]` table,
/// proves the newest backup; `backup` on that config says what it lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drill_unit_runs_on_a_verification_host_without_etcd() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V35);
    etcd.seed(20, 100).await;
    let out = run(&s.config(&etcd.config_table(), ""), &["backup"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    drop(etcd);

    let bin = etcd_bin_dir(EtcdVersion::V35);
    let config = s.config("", &format!("[drill]\netcd_bin = \"{}\"\n", bin.display()));
    let credentials = s.work.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::copy(&s.identity.file, credentials.join("identity")).unwrap();

    let unit =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/etcd-backupd-drill.service"))
            .unwrap();
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=/usr/bin/etcd-backupd ")).expect("ExecStart");
    let args: Vec<String> =
        exec.split_whitespace().map(|a| a.replace("${CREDENTIALS_DIRECTORY}", credentials.to_str().unwrap())).collect();
    assert!(unit.contains("LoadCredential=identity:"), "the unit hands the identity over as a credential");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&config, &args).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("drill passed"), "{}", stdout(&out));

    let out = run(&config, &["check-config"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("a verification host"), "{}", stdout(&out));
    let out = run(&config, &["backup"]).await;
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(stderr(&out).contains("etcd: the [etcd] table is missing, and backups need it"), "{}", stderr(&out));
    assert_nothing_left(&config);
}
