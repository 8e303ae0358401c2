//! Every failure path: a clear message naming the thing, a non-zero exit, nothing half-written, and
//! nothing that looks like a backup where the backup did not complete.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;

use common::*;

fn assert_nothing_local(folder: &Path) {
    let names = files(folder);
    assert!(names.is_empty(), "nothing may be left in {}: {names:?}", folder.display());
}

fn assert_committed_locally(folder: &Path) {
    let names = files(folder);
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().any(|n| n.ends_with(".manifest.json")), "{names:?}");
    assert!(!names.iter().any(|n| n.ends_with(".part")), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_etcd_is_named_and_nothing_is_written() {
    let s = Setup::new();
    let s3 = S3::start().await;
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let config = s.config(
        &format!("[etcd]\nendpoints = [\"{endpoint}\"]\ndial_timeout = \"2s\"\n"),
        &s3.config_table(BUCKET, ""),
    );
    let out = run(&config, &["backup"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("cannot reach etcd"), "{err}");
    assert!(err.contains(&endpoint), "names the endpoint: {err}");
    assert!(err.contains("connection refused") || err.contains("no answer"), "{err}");
    // Said twice (the log line, the final error), each cause once within it.
    assert_eq!(err.matches("Connection refused (os error 111)").count(), 2, "{err}");
    assert_eq!(err.matches("tcp connect error").count(), 2, "{err}");
    assert_nothing_local(&s.folder());
    assert!(s3.keys(BUCKET).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_is_tried_in_order() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let config =
        s.config(&format!("[etcd]\nendpoints = [\"{dead}\", \"{}\"]\ndial_timeout = \"2s\"\n", etcd.endpoint), "");
    let out = run(&config, &["backup"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_committed_locally(&s.folder());
}

/// An `[etcd]` table with the given CA, client certificate and key.
fn tls_table(etcd: &Etcd, ca: &Path, cert: &Path, key: &Path) -> String {
    format!(
        "[etcd]\nendpoints = [\"{}\"]\ndial_timeout = \"3s\"\ncacert = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        etcd.endpoint,
        ca.display(),
        cert.display(),
        key.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_client_certificate_is_refused_clearly() {
    let s = Setup::new();
    let etcd = Etcd::start_tls(EtcdVersion::V34);
    let pki = etcd.pki.as_ref().unwrap();
    let table = tls_table(&etcd, &pki.ca, &pki.rogue_cert, &pki.rogue_key);
    let out = run(&s.config(&table, ""), &["backup"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&etcd.endpoint), "{err}");
    assert!(err.contains("etcd.cert") || err.contains("etcd.cacert"), "says which keys to check: {err}");
    assert_nothing_local(&s.folder());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_certificate_from_another_ca_is_refused_clearly() {
    let s = Setup::new();
    let etcd = Etcd::start_tls(EtcdVersion::V34);
    let pki = etcd.pki.as_ref().unwrap();
    // Trust the rogue CA's leaf instead of etcd's CA.
    let table = tls_table(&etcd, &pki.rogue_cert, &pki.client_cert, &pki.client_key);
    let out = run(&s.config(&table, ""), &["backup"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("etcd.cacert"), "{err}");
    assert_nothing_local(&s.folder());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_going_away_mid_upload_keeps_the_local_backup_and_leaves_s3_clean() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    // ~12 MiB of random values: the encrypted artifact needs three 5 MiB parts.
    etcd.seed(1200, 10_000).await;
    let s3 = S3::start().await;
    s3.faults.down_after_parts.store(1, Ordering::SeqCst);
    let config = s.config(&etcd.config_table(), &s3.config_table(BUCKET, ""));
    let out = run(&config, &["backup"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("NOT committed in every destination"), "{err}");
    assert!(err.contains("s3:") && err.contains(&s3.endpoint), "names the destination and endpoint: {err}");
    assert!(s3.faults.parts_seen.load(Ordering::SeqCst) >= 1, "the upload had started");
    assert_committed_locally(&s.folder());
    assert!(s3.keys(BUCKET).is_empty(), "no object and no manifest in S3: {:?}", s3.keys(BUCKET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_down_from_the_start_keeps_the_local_backup() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let table = format!(
        "[s3]\nbucket = \"{BUCKET}\"\nregion = \"us-east-1\"\nendpoint = \"{dead}\"\nforce_path_style = true\n"
    );
    let out = run(&s.config(&etcd.config_table(), &table), &["backup"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&dead) && err.contains("cannot reach the store"), "{err}");
    assert_committed_locally(&s.folder());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_s3_secret_is_named_and_s3_stays_empty() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    let s3 = S3::start().await;
    let config = s.config(&etcd.config_table(), &s3.config_table(BUCKET, ""));
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_etcd-backupd"));
    cmd.arg("--config").arg(&config).arg("backup");
    aws_env(&mut cmd);
    cmd.env("AWS_SECRET_ACCESS_KEY", "not-the-secret").env("STATE_DIRECTORY", state_dir_for(&config));
    let out = cmd.output().await.unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("rejected the credentials") || err.contains("access denied"), "{err}");
    assert!(err.contains(BUCKET) && err.contains(&s3.endpoint), "names bucket and endpoint: {err}");
    assert_committed_locally(&s.folder());
    assert!(s3.keys(BUCKET).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bucket_is_named() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    let s3 = S3::start().await;
    let config = s.config(&etcd.config_table(), &s3.config_table("no-such-bucket", ""));
    let out = run(&config, &["backup"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("bucket 'no-such-bucket' does not exist"), "{err}");
    assert!(err.contains(&s3.endpoint), "{err}");
    assert!(!s3.root.join("no-such-bucket").exists(), "the bucket was not created by accident");
    assert_committed_locally(&s.folder());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn earlier_backups_survive_a_failed_run() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    let config = s.config(&etcd.config_table(), "");
    assert!(run(&config, &["backup"]).await.status.success());
    let before = files(&s.folder());
    let contents: Vec<Vec<u8>> = before.iter().map(|n| std::fs::read(s.folder().join(n)).unwrap()).collect();
    drop(etcd);
    let out = run(&config, &["backup"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(files(&s.folder()), before);
    for (n, c) in before.iter().zip(contents) {
        assert_eq!(std::fs::read(s.folder().join(n)).unwrap(), c, "{n} untouched");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_local_dir_is_named() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    // A file where the backup folder should be.
    std::fs::write(s.local(), "not a directory").unwrap();
    let out = run(&s.config(&etcd.config_table(), ""), &["backup"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("local:") && err.contains(&s.local().display().to_string()), "{err}");
}

mod config_errors {
    use super::*;

    async fn refused(s: &Setup, body: &str) -> String {
        let path = s.work.path().join("bad.toml");
        std::fs::write(&path, body).unwrap();
        let out = run(&path, &["backup"]).await;
        assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
        assert_nothing_local(&s.folder());
        let check = run(&path, &["check-config"]).await;
        assert_eq!(check.status.code(), Some(78));
        assert_eq!(stderr(&check), stderr(&out), "check-config and backup report the same");
        stderr(&out)
    }

    #[tokio::test]
    async fn no_recipients() {
        let s = Setup::new();
        let err = refused(&s, "[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n").await;
        assert!(err.contains("bad.toml: encryption.recipients: no recipients"), "{err}");
    }

    #[tokio::test]
    async fn unreadable_recipients_file() {
        let s = Setup::new();
        let rf = s.work.path().join("recipients.txt");
        std::fs::write(&rf, &s.identity.recipient).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&rf, std::fs::Permissions::from_mode(0o000)).unwrap();
        // root reads anything: make it unreadable by making it a directory instead when running as root.
        let readable_anyway = std::fs::read(&rf).is_ok();
        if readable_anyway {
            std::fs::remove_file(&rf).unwrap();
            std::fs::create_dir(&rf).unwrap();
        }
        let body = format!(
            "[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n[encryption]\nrecipients_file = \"{}\"\n",
            rf.display()
        );
        let err = refused(&s, &body).await;
        assert!(
            err.contains(&format!("bad.toml:4:19: encryption.recipients_file: cannot read '{}'", rf.display())),
            "{err}"
        );
    }

    #[tokio::test]
    async fn unknown_key() {
        let s = Setup::new();
        let body = format!(
            "[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\ntimeout = \"5s\"\n[encryption]\nrecipients = [\"{}\"]\n",
            s.identity.recipient
        );
        let err = refused(&s, &body).await;
        assert!(err.contains("bad.toml:3:1: etcd.timeout: unknown field `timeout`, expected one of"), "{err}");
    }

    #[tokio::test]
    async fn bad_duration() {
        let s = Setup::new();
        let body = format!(
            "[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\nsnapshot_timeout = \"30 minuets\"\n[encryption]\nrecipients = [\"{}\"]\n",
            s.identity.recipient
        );
        let err = refused(&s, &body).await;
        assert!(err.contains("bad.toml:3:20: etcd.snapshot_timeout: \"30 minuets\" is not a duration"), "{err}");
    }

    /// A metrics file in a folder that does not exist is refused by check-config, not found at the first
    /// backup's end.
    #[tokio::test]
    async fn metrics_in_a_missing_folder() {
        let s = Setup::new();
        let body = format!(
            "[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n[encryption]\nrecipients = [\"{}\"]\n[metrics]\ntextfile = \"/nonexistent/collector/etcd.prom\"\n",
            s.identity.recipient
        );
        let err = refused(&s, &body).await;
        assert!(
            err.contains("bad.toml:6:12: metrics.textfile: the folder '/nonexistent/collector' does not exist"),
            "{err}"
        );
    }

    /// pin and unpin say what they take.
    #[tokio::test]
    async fn pin_and_unpin_have_help() {
        let s = Setup::new();
        let config = s.config("[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n", "");
        for command in ["pin", "unpin"] {
            let out = run(&config, &[command, "--help"]).await;
            assert!(stdout(&out).contains("The backup id, as `list` shows it"), "{}", stdout(&out));
        }
    }

    #[tokio::test]
    async fn missing_config_file() {
        let s = Setup::new();
        let out = run(&s.work.path().join("absent.toml"), &["check-config"]).await;
        assert_eq!(out.status.code(), Some(78));
        assert!(stderr(&out).contains("absent.toml: cannot read the config file"), "{}", stderr(&out));
        // It points at a file the package ships.
        assert!(
            stderr(&out).contains("/etc/etcd-backupd.toml") && !stderr(&out).contains("/usr/share/doc"),
            "{}",
            stderr(&out)
        );
    }

    /// `restore` without a target names both targets.
    #[tokio::test]
    async fn restore_without_a_target_names_both() {
        let s = Setup::new();
        let config = s.config("[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n", "");
        let out = run(&config, &["restore", "latest", "--identity", "k"]).await;
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains("--data-dir") && stderr(&out).contains("--output"), "{}", stderr(&out));
    }

    #[tokio::test]
    async fn good_config_is_summarised() {
        let s = Setup::new();
        let path = s.config("[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n", "");
        let out = run(&path, &["check-config"]).await;
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(text.contains(": OK") && text.contains("recipients: 1"), "{text}");
        assert!(text.contains("max rate:   none"), "{text}");
        // The pace an operator set, as the backup will apply it.
        let paced = s.config("[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n", "[backup]\nmax_rate = \"50MiB\"\n");
        let text = stdout(&run(&paced, &["check-config"]).await);
        assert!(text.contains("max rate:   50.0 MiB/s read from etcd ([backup] max_rate)"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_user_and_password_auth() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V35);
    etcd.seed(10, 10).await;
    let password = etcd.enable_auth();
    let pw_file = s.work.path().join("etcd-password");
    std::fs::write(&pw_file, format!("{password}\n")).unwrap();
    let table = |file: &Path| {
        format!(
            "[etcd]\nendpoints = [\"{}\"]\ndial_timeout = \"3s\"\nusername = \"backup\"\npassword_file = \"{}\"\n",
            etcd.endpoint,
            file.display()
        )
    };
    let out = run(&s.config(&table(&pw_file), ""), &["backup"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_committed_locally(&s.folder());

    let wrong = s.work.path().join("wrong-password");
    std::fs::write(&wrong, "nope").unwrap();
    let out = run(&s.config(&table(&wrong), ""), &["backup"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("etcd.username") && err.contains("etcd.password_file"), "{err}");

    // Without credentials at all, the error says auth is on and what to set.
    let none = format!("[etcd]\nendpoints = [\"{}\"]\ndial_timeout = \"3s\"\n", etcd.endpoint);
    let out = run(&s.config(&none, ""), &["backup"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("etcd.username"), "{err}");
    assert_committed_locally(&s.folder());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_alarm_is_a_warning_not_a_refusal() {
    let s = Setup::new();
    let etcd = Etcd::start_with_args(EtcdVersion::V34, false, &["--quota-backend-bytes", "1048576"]);
    let mut client = etcd.client().await;
    // etcd compares its quota with the backend size, which it updates at each batch commit (100 ms):
    // pace the writes so the quota is seen.
    for i in 0..200 {
        if client.put(format!("fill/{i}"), vec![b'x'; 100_000], None).await.is_err() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    // etcd raises the alarm through raft, a moment after it refuses the write.
    let raised = (0..50).any(|_| {
        let listed = String::from_utf8_lossy(&etcd.etcdctl(&["alarm", "list"]).stdout).contains("NOSPACE");
        if !listed {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        listed
    });
    assert!(raised, "the test needs the NOSPACE alarm raised");
    let out = run(&s.config(&etcd.config_table(), ""), &["backup"]).await;
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("active alarm") && err.contains("Nospace"), "{err}");
    assert_committed_locally(&s.folder());
    let names = files(&s.folder());
    let manifest = names.iter().find(|n| n.ends_with(".manifest.json")).unwrap();
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(s.folder().join(manifest)).unwrap()).unwrap();
    assert!(m["etcd"]["alarms"][0].as_str().unwrap().contains("Nospace"), "{m}");
}

/// Runs etcd-backupd with this config and `args` under `wrapper` (a command and its arguments that
/// ends by running the rest of its command line), with the tests' environment.
async fn wrapped(wrapper: &[&std::ffi::OsStr], config: &Path, args: &[&std::ffi::OsStr]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(wrapper[0]);
    cmd.args(&wrapper[1..]).arg(env!("CARGO_BIN_EXE_etcd-backupd")).arg("--config").arg(config).args(args);
    aws_env(&mut cmd);
    cmd.env("STATE_DIRECTORY", state_dir_for(config));
    cmd.output().await.unwrap()
}

/// Runs etcd-backupd with `args` and this config where `dir` is a 4 MiB tmpfs, mounted in a private
/// mount namespace (so nothing outside the command sees it).
async fn on_a_small_tmpfs(dir: &Path, config: &Path, args: &[&std::ffi::OsStr]) -> std::process::Output {
    let mount = "mount -t tmpfs -o size=4m tmpfs \"$1\" && shift && exec \"$@\"";
    let unshare = ["unshare", "-m", "--propagation", "private", "sh", "-c", mount, "sh"].map(std::ffi::OsStr::new);
    wrapped(&[&unshare[..], &[dir.as_os_str()]].concat(), config, args).await
}

/// An 8 MiB database of a fresh etcd 3.4, backed up to the local folder: its config, and the member.
async fn an_8_mib_backup(s: &Setup) -> (std::path::PathBuf, Etcd) {
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.seed(800, 10_000).await;
    let config = s.config(&etcd.config_table(), "");
    let out = run(&config, &["backup"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    (config, etcd)
}

/// A local folder on a 4 MiB tmpfs (in a private mount namespace) cannot take an 8 MiB database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_free_space_is_refused_before_streaming() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.seed(800, 10_000).await;
    std::fs::create_dir_all(s.local()).unwrap();
    let config = s.config(&etcd.config_table(), "");
    let out = on_a_small_tmpfs(&s.local(), &config, &["backup".as_ref()]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not enough free space") && err.contains(&s.folder().display().to_string()), "{err}");
    assert!(err.contains("needed for a"), "{err}");
    assert_nothing_local(&s.folder());
}

/// A restore whose output folder (a 4 MiB tmpfs in a private mount namespace) cannot hold the plain
/// snapshot is refused before anything is read, naming the folder and both sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_without_room_for_the_snapshot_is_refused_before_reading() {
    let s = Setup::new();
    let (config, _etcd) = an_8_mib_backup(&s).await;
    let small = s.work.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    let output = small.join("snapshot.db");
    let args = ["restore".as_ref(), "latest".as_ref(), "--identity".as_ref(), s.identity.file.as_os_str()];
    let out =
        on_a_small_tmpfs(&small, &config, &[&args[..], &["--output".as_ref(), output.as_os_str()]].concat()).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let named = format!("not enough free space in '{}' for the plain snapshot of", small.display());
    assert!(err.contains(&named) && err.contains("needed"), "{err}");
    assert!(!err.contains("decrypting: started"), "read before refusing: {err}");
}

/// A restore whose output cannot be written past 2 MiB (a file-size limit, with SIGXFSZ ignored so the
/// write fails rather than the process) names the file and why, and leaves neither the output nor a
/// `.part` of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_whose_write_fails_part_way_names_it_and_leaves_nothing() {
    let s = Setup::new();
    let (config, _etcd) = an_8_mib_backup(&s).await;
    let into = s.work.path().join("restored");
    std::fs::create_dir_all(&into).unwrap();
    let output = into.join("snapshot.db");
    let limit = ["sh", "-c", "trap '' XFSZ; exec prlimit --fsize=2097152 \"$@\"", "sh"].map(std::ffi::OsStr::new);
    let args = ["restore".as_ref(), "latest".as_ref(), "--identity".as_ref(), s.identity.file.as_os_str()];
    let out = wrapped(&limit, &config, &[&args[..], &["--output".as_ref(), output.as_os_str()]].concat()).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let named = format!("cannot write '{}", into.display());
    assert!(err.contains(&named) && err.contains("File too large"), "{err}");
    assert!(!err.contains("does not match its manifest"), "a failed write is not damage: {err}");
    let left: Vec<_> = std::fs::read_dir(&into).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "the failed restore left {left:?}");
}

/// A backup id that already exists in S3 is never overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_backup_in_s3_is_never_overwritten() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    let revision = etcd.seed(3, 10).await;
    let s3 = S3::start().await;
    let folder = s3.root.join(BUCKET).join("default");
    std::fs::create_dir_all(&folder).unwrap();
    let now = chrono::Utc::now();
    let mut planted = Vec::new();
    for ahead in 0..5 {
        let member = etcd.member_id_hex();
        let id = etcd_backupd::manifest::BackupId::new(now + chrono::Duration::seconds(ahead), revision, &member);
        let name = id.manifest_name();
        std::fs::write(folder.join(&name), format!("earlier backup {ahead}")).unwrap();
        planted.push(name);
    }
    let out = run(&s.config(&etcd.config_table(), &s3.config_table(BUCKET, "")), &["backup"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("already exists"), "{err}");
    for (ahead, name) in planted.iter().enumerate() {
        assert_eq!(std::fs::read_to_string(folder.join(name)).unwrap(), format!("earlier backup {ahead}"));
    }
    assert_eq!(s3.keys(BUCKET).len(), planted.len(), "{:?}", s3.keys(BUCKET));
}

/// Two backups of an idle etcd in quick succession both commit, under different ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_backups_get_distinct_ids() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    let config = s.config(&etcd.config_table(), "");
    for _ in 0..3 {
        let out = run(&config, &["backup"]).await;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let manifests = files(&s.folder()).into_iter().filter(|n| n.ends_with(".manifest.json")).count();
    assert_eq!(manifests, 3);
}

/// Part uploads fail but the store stays up: the multipart upload is aborted, leaving no parts behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upload_is_aborted_on_the_store() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.seed(1200, 10_000).await;
    let s3 = S3::start().await;
    s3.faults.fail_later_parts.store(true, Ordering::SeqCst);
    let out = run(&s.config(&etcd.config_table(), &s3.config_table(BUCKET, "")), &["backup"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("uploading part 2") && err.contains("s3:"), "{err}");
    assert!(err.contains("aborted the unfinished S3 upload"), "{err}");
    assert_committed_locally(&s.folder());
    assert!(s3.keys(BUCKET).is_empty(), "{:?}", s3.keys(BUCKET));
    let uploads: Vec<String> = files(&s3.root).into_iter().filter(|n| n.starts_with(".upload")).collect();
    assert!(uploads.is_empty(), "the multipart upload was not aborted: {uploads:?}");
}

/// The packaged example, untouched: exit 78, every key to fill in named with its line, and what to do.
#[test]
fn the_shipped_example_says_what_to_fill_in() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/etcd-backupd.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_etcd-backupd"))
        .arg("--config")
        .arg(&example)
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("encryption.recipients: no recipients"), "{err}");
    assert!(err.contains(&format!("fill these in (or fix them) in {}", example.display())), "{err}");
    assert!(err.contains("etcd-backupd.toml(5)"), "{err}");
}

/// `sudo etcd-backupd backup` on a host where the service user owns the state dir would leave a lock,
/// a state file and backups the service cannot open: refused before anything is written, saying how to
/// run it as the service. Reading commands still work as root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_is_refused_in_the_service_users_dirs() {
    let setup = Setup::new();
    let cfg = setup.config("[etcd]\nendpoints = [\"http://127.0.0.1:1\"]\n", "");
    let state = state_dir_for(&cfg);
    std::fs::create_dir_all(&state).unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().expect("the nobody user");
    nix::unistd::chown(&state, Some(nobody.uid), Some(nobody.gid)).unwrap();

    for args in
        [&["backup"][..], &["drill"], &["prune"], &["pin", "20261122T060000Z-r48211-8e9e05c52164694d"], &["run"]]
    {
        let out = run(&cfg, args).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("belongs to nobody") && err.contains("sudo -u nobody etcd-backupd"), "{args:?}: {err}");
    }
    let out = run(&cfg, &["backup"]).await;
    assert!(stderr(&out).contains("systemctl start etcd-backupd-once.service"), "{}", stderr(&out));
    assert!(files(&state).is_empty(), "nothing written: {:?}", files(&state));
    assert!(!setup.local().exists(), "no local dir");

    let out = run(&cfg, &["list"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&cfg, &["prune", "--dry-run"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A lock file the run cannot open is a failure, recorded as one, not a "skipped: another run holds it".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_that_cannot_be_opened_fails_the_run() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    let config = s.config(&etcd.config_table(), "");
    let state = state_dir_for(&config);
    std::fs::create_dir_all(state.join("lock")).unwrap();
    let out = run(&config, &["backup", "--wait", "1s"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot open the lock file") && !err.contains("another backup is running"), "{err}");
    assert!(!err.contains("backup skipped"), "{err}");
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(state.join("state.json")).unwrap()).unwrap();
    assert_eq!(saved["runs"]["failed"], 1, "{saved}");
    assert_nothing_local(&s.folder());
}

/// `etcd-backupd check-config | head -1`: a reader that stops reading ends the command quietly (exit
/// 0), never with a panic, and never by SIGPIPE (which would also kill it when an S3 or etcd socket
/// closes under a write).
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let s = Setup::new();
    let config = s.config("[etcd]\nendpoints = [\"http://127.0.0.1:1\"]\n", "");
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read); // the reader is gone before anything is written
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_etcd-backupd"))
        .arg("--config")
        .arg(&config)
        .arg("check-config")
        .env("STATE_DIRECTORY", state_dir_for(&config))
        .stdout(std::process::Stdio::from(write))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{:?} {err}", out.status);
}

/// A password file every user may read: check-config and a backup warn, naming the key and the fix
/// (as ssh does for keys); 0640 is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_world_readable_secret_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new();
    let pw = s.work.path().join("etcd-password");
    std::fs::write(&pw, "secret\n").unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let table = format!(
        "[etcd]\nendpoints = [\"http://127.0.0.1:1\"]\nusername = \"backup\"\npassword_file = \"{}\"\n",
        pw.display()
    );
    let config = s.config(&table, "");
    let out = run(&config, &["check-config"]).await;
    assert!(out.status.success(), "a warning, not a refusal: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("warning: etcd.password_file:") && text.contains("mode 0644"), "{text}");
    assert!(text.contains(&format!("chmod o-rwx {}", pw.display())), "{text}");
    let out = run(&config, &["backup"]).await;
    assert!(stderr(&out).contains("readable by every user"), "{}", stderr(&out));
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = run(&config, &["check-config"]).await;
    assert!(!stdout(&out).contains("warning"), "{}", stdout(&out));
}

/// A store that hangs on every part (it accepts the connection, then answers nothing for a minute):
/// each attempt is cut at s3.timeout, the upload is abandoned and aborted, the local copy commits, and
/// the error names s3.timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_store_is_bounded_by_s3_timeout() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.seed(600, 10_000).await;
    let s3 = S3::start().await;
    s3.faults.part_delay_ms.store(60_000, Ordering::SeqCst);
    let table = s3.config_table(BUCKET, "").replace("part_size", "timeout = \"1s\"\npart_size");
    let out = run(&s.config(&etcd.config_table(), &table), &["backup"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("s3.timeout"), "{err}");
    assert!(err.contains("aborted the unfinished S3 upload"), "{err}");
    assert_committed_locally(&s.folder());
    assert!(s3.keys(BUCKET).is_empty(), "{:?}", s3.keys(BUCKET));
}

/// `[backup] max_rate` that cannot finish within `etcd.snapshot_timeout` is refused before anything
/// begins, naming both keys; a rate that can backs up (paced) and commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_max_rate_too_slow_for_the_snapshot_timeout_is_refused_before_streaming() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V35);
    etcd.seed(800, 10_000).await;
    let etcd_table = format!("{}\nsnapshot_timeout = \"2s\"\n", etcd.config_table());
    let config = s.config(&etcd_table, "[backup]\nmax_rate = \"1MiB\"\n");
    let out = run(&config, &["backup"]).await;
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("at backup.max_rate = 1.0 MiB/s") && err.contains("etcd.snapshot_timeout (2s)"), "{err}");
    assert!(err.contains("raise max_rate or snapshot_timeout"), "{err}");
    assert_nothing_local(&s.folder());

    let config = s.config(&etcd_table, "[backup]\nmax_rate = \"64MiB\"\n");
    let out = run(&config, &["backup"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_committed_locally(&s.folder());
}
