//! `etcd-backupd run` as systemd runs it: a notify socket bound by the test, signals, the state file,
//! the metrics file, and the lock shared with one-shot backups.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

fn manifests(folder: &Path) -> usize {
    files(folder).iter().filter(|n| n.ends_with(".manifest.json")).count()
}

/// The daemon's config: the member, the setup's identity and local dir (keeping 100), `schedule` in
/// [schedule], a metrics textfile in the work dir, then `extra` tables.
fn write_config(setup: &Setup, etcd: &Etcd, schedule: &str, extra: &str) -> PathBuf {
    std::fs::create_dir_all(setup.work.path().join("metrics")).unwrap();
    let metrics = setup.work.path().join("metrics/etcd_backupd.prom");
    let tables = format!(
        "retention = {{ keep_last = 100 }}\n[schedule]\n{schedule}\n[metrics]\ntextfile = \"{}\"\n{extra}",
        metrics.display()
    );
    let config = setup.config(&etcd.config_table(), &tables);
    // A daemon with a run on record: the tests below drive it themselves (a new install backs up at
    // once, see `a_new_install_backs_up_at_once`).
    let state = state_dir_for(&config);
    std::fs::create_dir_all(&state).unwrap();
    let now = chrono::Utc::now().to_rfc3339();
    std::fs::write(state.join("state.json"), format!("{{\"last_attempt\": \"{now}\"}}")).unwrap();
    config
}

/// A daemon whose backup (SIGUSR1) is uploading, the lock held, to an S3 that answers each part
/// `part_delay_ms` late; `stop_grace` in its [schedule]. The etcd, S3, setup, config and daemon.
async fn uploading(part_delay_ms: u64, stop_grace: &str) -> (Etcd, S3, Setup, PathBuf, Daemon) {
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.seed(1200, 10_000).await;
    let s3 = S3::start().await;
    s3.faults.part_delay_ms.store(part_delay_ms, Ordering::SeqCst);
    let setup = Setup::new();
    let schedule = format!("cron = \"0 0 1 1 *\"\nstop_grace = \"{stop_grace}\"");
    let cfg = write_config(&setup, &etcd, &schedule, &s3.config_table(BUCKET, ""));
    let daemon = Daemon::start(&cfg).await;
    daemon.signal(Signal::SIGUSR1);
    daemon.wait_until("the upload to start", || s3.faults.parts_started.load(Ordering::SeqCst) >= 1).await;
    (etcd, s3, setup, cfg, daemon)
}

/// Positions of the notifications, in order of arrival.
fn position(notes: &[String], what: &str, after: usize) -> usize {
    notes
        .iter()
        .skip(after)
        .position(|n| n.contains(what))
        .map(|p| p + after)
        .unwrap_or_else(|| panic!("no {what} after #{after} in {notes:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_second_schedule_backs_up_and_notifies_systemd_in_order() {
    let etcd = Etcd::start(EtcdVersion::V34);
    let setup = Setup::new();
    let cfg = write_config(&setup, &etcd, "cron = \"* * * * * *\"", "");
    let daemon = Daemon::start(&cfg).await;
    let folder = setup.work.path().join("backups/default");
    daemon.wait_until("two scheduled backups", || manifests(&folder) >= 2).await;
    daemon.wait_until("a watchdog ping", || daemon.notes().iter().any(|n| n.contains("WATCHDOG=1"))).await;
    daemon.signal(Signal::SIGHUP);
    daemon.wait_until("reload", || daemon.log().contains("configuration reloaded")).await;
    let (status, _, notes, log) = daemon.stop().await;
    assert!(status.success(), "{log}");
    assert!(log.contains("etcd-backupd stopped"), "{log}");

    let ready = position(&notes, "READY=1", 0);
    assert!(notes[ready].contains("STATUS="), "READY carries a status: {notes:?}");
    let status_after = position(&notes, "STATUS=", ready + 1);
    let watchdog = position(&notes, "WATCHDOG=1", ready + 1);
    let reloading = position(&notes, "RELOADING=1", ready + 1);
    let ready_again = position(&notes, "READY=1", reloading + 1);
    let stopping = position(&notes, "STOPPING=1", ready_again + 1);
    assert!(status_after < stopping && watchdog < stopping, "{notes:?}");
    assert!(
        notes.iter().any(|n| n.contains("STATUS=last ok ") && n.contains(" rev ") && n.contains("; next ")),
        "{notes:?}"
    );

    // The state survives the daemon; `status` reads it.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state_dir_for(&cfg).join("state.json")).unwrap()).unwrap();
    assert!(state["runs"]["ok"].as_u64().unwrap() >= 2, "{state}");
    assert!(state["next_run"].is_string() && state["last_success"]["id"].is_string(), "{state}");
    let out = run(&cfg, &["status"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("last ok"), "{}", stdout(&out));

    // The metrics file is valid Prometheus text.
    let text = std::fs::read_to_string(setup.work.path().join("metrics/etcd_backupd.prom")).unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("parses as Prometheus text");
    let names: Vec<&str> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for want in [
        "etcd_backupd_last_success_timestamp_seconds",
        "etcd_backupd_last_duration_seconds",
        "etcd_backupd_last_artifact_bytes",
        "etcd_backupd_last_revision",
        "etcd_backupd_runs_total",
        "etcd_backupd_backups",
    ] {
        assert!(names.contains(&want), "{want} missing from:\n{text}");
    }
    assert!(files(&setup.work.path().join("metrics")).iter().all(|n| !n.ends_with(".part")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_backs_up_now_and_a_broken_reload_keeps_the_daemon_running() {
    let etcd = Etcd::start(EtcdVersion::V35);
    let setup = Setup::new();
    let cfg = write_config(&setup, &etcd, "cron = \"0 0 1 1 *\"", "");
    let daemon = Daemon::start(&cfg).await;
    let folder = setup.work.path().join("backups/default");
    daemon.loop_ran().await;
    assert_eq!(manifests(&folder), 0, "nothing is due yet");

    daemon.signal(Signal::SIGUSR1);
    daemon.wait_until("the SIGUSR1 backup", || manifests(&folder) == 1).await;

    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, good.replace("[schedule]", "[schedule]\ncronn = \"x\"")).unwrap();
    daemon.signal(Signal::SIGHUP);
    daemon.wait_until("the reload error", || daemon.log().contains("keeping the running one")).await;
    assert!(daemon.log().contains("schedule.cronn"), "names the bad key: {}", daemon.log());

    etcd.seed(1, 1).await;
    daemon.signal(Signal::SIGUSR1);
    daemon.wait_until("a backup after the failed reload", || manifests(&folder) == 2).await;
    let (status, _, notes, log) = daemon.stop().await;
    assert!(status.success(), "{log}");
    let reloading = position(&notes, "RELOADING=1", 0);
    position(&notes, "READY=1", reloading + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_an_upload_aborts_cleanly_within_the_grace_period() {
    let (_etcd, s3, setup, cfg, daemon) = uploading(4000, "1s").await;

    // A one-shot backup meanwhile is refused clearly: the daemon holds the lock.
    let oneshot = run(&cfg, &["backup", "--wait", "1s"]).await;
    assert_eq!(oneshot.status.code(), Some(1));
    assert!(stderr(&oneshot).contains("another backup is running"), "{}", stderr(&oneshot));

    let (status, took, _, log) = daemon.stop().await;
    assert!(status.success(), "{log}");
    // The part the store answers after 4 s never completed: the daemon did not wait for it.
    assert_eq!(
        s3.faults.parts_seen.load(Ordering::SeqCst),
        0,
        "stopped {took:?} after SIGTERM with a 1s grace:\n{log}"
    );
    assert!(log.contains("did not finish within stop_grace; cancelling it"), "{log}");
    let local = files(&setup.work.path().join("backups/default"));
    assert!(local.is_empty(), "no .part, no manifest: {local:?}");
    assert!(s3.keys(BUCKET).is_empty(), "no completed object: {:?}", s3.keys(BUCKET));
    let uploads: Vec<String> = files(&s3.root).into_iter().filter(|n| n.starts_with(".upload")).collect();
    assert!(uploads.is_empty(), "the multipart upload was aborted: {uploads:?}");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state_dir_for(&cfg).join("state.json")).unwrap()).unwrap();
    assert!(state["last_failure"]["error"].as_str().unwrap().contains("cancelled"), "{state}");
}

/// A one-shot backup waiting for the lock the daemon's backup holds: SIGINT ends the wait at once
/// (not at the end of `--wait`), and it exits 130, as an interrupted command does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_ends_a_one_shot_backups_wait_for_the_lock() {
    let (_etcd, _s3, _setup, cfg, daemon) = uploading(4000, "1s").await;

    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_etcd-backupd"));
    cmd.arg("--config").arg(&cfg).args(["backup", "--wait", "10m"]).env("STATE_DIRECTORY", state_dir_for(&cfg));
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    aws_env(&mut cmd);
    let oneshot = cmd.spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(oneshot.id().unwrap() as i32), Signal::SIGINT).unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), oneshot.wait_with_output())
        .await
        .expect("the wait for the lock ended with the signal, not with --wait")
        .unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted"), "{}", String::from_utf8_lossy(&out.stderr));
    daemon.stop().await;
}

/// The other half: SIGTERM while a backup uploads, within stop_grace. The backup finishes and commits
/// everywhere, the daemon exits 0, and the run is recorded as a success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_within_the_grace_period_lets_the_backup_commit_everywhere() {
    let (_etcd, s3, setup, cfg, daemon) = uploading(300, "5m").await;
    let (status, _, _, log) = daemon.stop().await;
    assert!(status.success(), "{log}");
    assert!(log.contains("waiting for the running backup to finish"), "{log}");
    assert!(!log.contains("cancelling it"), "{log}");
    let local = files(&setup.work.path().join("backups/default"));
    assert_eq!(local.iter().filter(|n| n.ends_with(".manifest.json")).count(), 1, "{local:?}");
    let remote = s3.keys(BUCKET);
    assert_eq!(remote.iter().filter(|n| n.ends_with(".manifest.json")).count(), 1, "{remote:?}");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state_dir_for(&cfg).join("state.json")).unwrap()).unwrap();
    assert_eq!(state["runs"]["ok"], 1, "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_fails_when_backups_are_overdue() {
    let etcd = Etcd::start(EtcdVersion::V34);
    let setup = Setup::new();
    let cfg = write_config(&setup, &etcd, "cron = \"0 */6 * * *\"", "");
    let out = run(&cfg, &["status"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("backups are overdue: no backup has succeeded yet\n"), "{}", stderr(&out));

    assert!(run(&cfg, &["backup"]).await.status.success());
    let out = run(&cfg, &["status", "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["overdue"], false);
    assert_eq!(v["state"]["runs"]["ok"], 1);

    // Pretend the last success was 13 hours ago: more than twice the 6-hour interval.
    let path = state_dir_for(&cfg).join("state.json");
    let mut state: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let old = (chrono::Utc::now() - chrono::Duration::hours(13)).to_rfc3339();
    state["last_success"]["time"] = serde_json::json!(old);
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    let out = run(&cfg, &["status"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("more than twice the schedule's interval (6h) ago"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_unchanged_uploads_nothing_when_the_revision_is_the_same() {
    let etcd = Etcd::start(EtcdVersion::V34);
    let setup = Setup::new();
    let cfg = write_config(&setup, &etcd, "skip_unchanged = true", "");
    let folder = setup.work.path().join("backups/default");
    assert!(run(&cfg, &["backup"]).await.status.success());
    let out = run(&cfg, &["backup"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("has not changed"), "{}", stdout(&out));
    assert_eq!(manifests(&folder), 1);
    etcd.seed(1, 1).await;
    assert!(run(&cfg, &["backup"]).await.status.success());
    assert_eq!(manifests(&folder), 2, "a new revision is backed up");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state_dir_for(&cfg).join("state.json")).unwrap()).unwrap();
    assert_eq!(state["runs"]["unchanged"], 1);
    assert_eq!(state["runs"]["ok"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_run_is_caught_up_on_start() {
    let etcd = Etcd::start(EtcdVersion::V34);
    for catch_up in [false, true] {
        let setup = Setup::new();
        let schedule = format!("cron = \"0 * * * *\"\ncatch_up = {catch_up}");
        let cfg = write_config(&setup, &etcd, &schedule, "");
        // The last attempt was three hours ago: at least two hourly runs were missed.
        let state_dir = state_dir_for(&cfg);
        std::fs::create_dir_all(&state_dir).unwrap();
        let last = (chrono::Utc::now() - chrono::Duration::hours(3)).to_rfc3339();
        std::fs::write(state_dir.join("state.json"), format!("{{\"last_attempt\": \"{last}\"}}")).unwrap();
        let daemon = Daemon::start(&cfg).await;
        let folder = setup.work.path().join("backups/default");
        if catch_up {
            daemon.wait_until("the catch-up backup", || manifests(&folder) == 1).await;
            assert!(daemon.log().contains("was missed"), "{}", daemon.log());
        } else {
            daemon.loop_ran().await;
            assert_eq!(manifests(&folder), 0, "catch_up = false waits for the schedule");
        }
        let (status, ..) = daemon.stop().await;
        assert!(status.success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_due_while_one_is_going_is_skipped() {
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.seed(700, 10_000).await;
    let s3 = S3::start().await;
    s3.faults.part_delay_ms.store(1500, Ordering::SeqCst);
    let setup = Setup::new();
    let cfg = write_config(&setup, &etcd, "cron = \"* * * * * *\"", &s3.config_table(BUCKET, ""));
    let daemon = Daemon::start(&cfg).await;
    daemon
        .wait_until("a skipped run", || daemon.log().contains("a backup is still running; skipping this scheduled run"))
        .await;
    daemon.wait_until("the slow backup to commit", || manifests(&setup.work.path().join("backups/default")) >= 1).await;
    let (status, _, _, log) = daemon.stop().await;
    assert!(status.success(), "{log}");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state_dir_for(&cfg).join("state.json")).unwrap()).unwrap();
    assert!(state["runs"]["skipped"].as_u64().unwrap() >= 1, "{state}");
}

/// `[drill] cron`: the daemon drills the newest backup on its own schedule and records the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_drills_prove_the_newest_backup() {
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.seed(30, 100).await;
    let setup = Setup::new();
    let drill = format!(
        "[drill]\nidentity_file = \"{}\"\ncron = \"*/2 * * * * *\"\netcd_bin = \"{}\"\n",
        setup.identity.file.display(),
        etcd_bin_dir(EtcdVersion::V34).display()
    );
    let cfg = write_config(&setup, &etcd, "cron = \"0 0 1 1 *\"", &drill);
    let daemon = Daemon::start(&cfg).await;
    let state = || -> serde_json::Value {
        std::fs::read(state_dir_for(&cfg).join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    };
    // No backup yet: the drill fails and says so.
    daemon.wait_until("a failed drill", || state()["drills"]["failed"].as_u64() >= Some(1)).await;
    assert!(state()["last_drill_failure"]["error"].as_str().unwrap().contains("no destination holds any backup"));

    daemon.signal(Signal::SIGUSR1);
    let folder = setup.work.path().join("backups/default");
    daemon.wait_until("the backup", || manifests(&folder) == 1).await;
    daemon.wait_until("a passing drill", || state()["drills"]["ok"].as_u64() >= Some(1)).await;
    let backup = files(&folder).into_iter().find_map(|n| n.strip_suffix(".manifest.json").map(str::to_string));
    assert_eq!(state()["last_proven"]["id"].as_str(), backup.as_deref());
    assert_eq!(state()["last_proven"]["keys"], 30);
    // The metrics are rewritten right after the state (the same persist step): wait for that write.
    let metrics = setup.work.path().join("metrics/etcd_backupd.prom");
    let proven =
        || std::fs::read_to_string(&metrics).is_ok_and(|m| m.contains("etcd_backupd_last_proven_timestamp_seconds{"));
    daemon.wait_until("the drill in the metrics", proven).await;
    let (status, _, _, log) = daemon.stop().await;
    assert!(status.success(), "{log}");
    let left: Vec<String> =
        files(&state_dir_for(&cfg)).into_iter().filter(|n| n.starts_with(".etcd-backupd-scratch")).collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A one-shot backup's record (state file and metrics) survives the daemon's own updates: the daemon
/// changes the state under its lock from what is on disk, never from a copy it loaded earlier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_shot_backups_record_survives_the_daemons_updates() {
    let etcd = Etcd::start(EtcdVersion::V35);
    let setup = Setup::new();
    let cfg = write_config(&setup, &etcd, "cron = \"0 0 1 1 *\"", "");
    let daemon = Daemon::start(&cfg).await;
    let state_file = state_dir_for(&cfg).join("state.json");
    let state = || -> serde_json::Value { serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap() };
    let metrics = || std::fs::read_to_string(setup.work.path().join("metrics/etcd_backupd.prom")).unwrap_or_default();

    let out = run(&cfg, &["backup"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let one_shot = state()["last_success"]["id"].as_str().expect("recorded").to_string();

    // A reload makes the daemon save its next run (and rewrite the metrics).
    daemon.signal(Signal::SIGHUP);
    daemon.wait_until("the reload", || daemon.log().contains("configuration reloaded")).await;
    assert_eq!(state()["last_success"]["id"], one_shot.as_str(), "{}", state());
    assert_eq!(state()["runs"]["ok"], 1);
    assert!(metrics().contains("result=\"ok\"} 1"), "{}", metrics());

    // The daemon's own run counts on top of the one-shot one.
    etcd.seed(1, 1).await;
    daemon.signal(Signal::SIGUSR1);
    daemon.wait_until("the daemon's backup", || state()["runs"]["ok"] == 2).await;
    assert_ne!(state()["last_success"]["id"], one_shot.as_str());
    let (status, _, _, log) = daemon.stop().await;
    assert!(status.success(), "{log}");
    assert!(metrics().contains("result=\"ok\"} 2"), "{}", metrics());
}

/// A transient failure (etcd paused: no answer within dial_timeout) is retried after retry_delay and
/// the run commits once; a permanent one (etcd wants a user, none is configured) is not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_and_permanent_ones_are_not() {
    let etcd = Etcd::start(EtcdVersion::V35);
    let setup = Setup::new();
    let cfg = write_config(&setup, &etcd, "cron = \"0 0 1 1 *\"\nmax_attempts = 3\nretry_delay = \"1s\"", "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let dial = text.lines().find(|l| l.starts_with("dial_timeout")).unwrap().to_string();
    std::fs::write(&cfg, text.replace(&dial, "dial_timeout = \"1s\"")).unwrap();
    let folder = setup.work.path().join("backups/default");
    let daemon = Daemon::start(&cfg).await;
    etcd.signal(Signal::SIGSTOP);
    daemon.signal(Signal::SIGUSR1);
    daemon.wait_until("a retry", || daemon.log().contains("backup failed; retrying")).await;
    etcd.signal(Signal::SIGCONT);
    daemon.wait_until("the retried backup", || manifests(&folder) == 1).await;
    let (status, _, _, log) = daemon.stop().await;
    assert!(status.success(), "{log}");
    assert_eq!(log.matches("backup failed; retrying").count(), 1, "{log}");
    assert_eq!(manifests(&folder), 1, "committed once");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state_dir_for(&cfg).join("state.json")).unwrap()).unwrap();
    assert_eq!((state["runs"]["ok"].as_u64(), state["runs"]["failed"].as_u64()), (Some(1), Some(0)), "{state}");

    // Permanent: auth is on and the config names no user. One attempt, recorded as a failure.
    etcd.enable_auth();
    let daemon = Daemon::start(&cfg).await;
    daemon.signal(Signal::SIGUSR1);
    let state_file = state_dir_for(&cfg).join("state.json");
    let failed = || {
        let state: serde_json::Value = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
        state["runs"]["failed"] == 1
    };
    daemon.wait_until("the failed run", failed).await;
    let (status, _, _, log) = daemon.stop().await;
    assert!(status.success(), "{log}");
    assert!(!log.contains("retrying"), "a permanent failure is not retried: {log}");
    assert!(log.contains("authentication"), "{log}");
}

/// Liveness: during a slow backup (parts answered slowly), the watchdog is pinged by the loop that runs
/// it, never more than WATCHDOG_USEC apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_is_fed_during_a_slow_backup() {
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.seed(1200, 10_000).await;
    let s3 = S3::start().await;
    s3.faults.part_delay_ms.store(1500, Ordering::SeqCst);
    let setup = Setup::new();
    let cfg = write_config(&setup, &etcd, "cron = \"0 0 1 1 *\"", &s3.config_table(BUCKET, ""));
    let watchdog = Duration::from_secs(2);
    let daemon = Daemon::start_with_watchdog(&cfg, watchdog).await;
    daemon.signal(Signal::SIGUSR1);
    daemon.wait_until("the upload to start", || s3.faults.parts_started.load(Ordering::SeqCst) >= 1).await;
    let during = Instant::now();
    let remote = || s3.keys(BUCKET).iter().any(|k| k.ends_with(".manifest.json"));
    daemon.wait_until("the slow backup", remote).await;
    let done = Instant::now();
    let pings: Vec<Instant> = daemon.pings().into_iter().filter(|t| *t >= during && *t <= done).collect();
    let (status, _, _, log) = daemon.stop().await;
    assert!(status.success(), "{log}");
    assert!(done - during >= watchdog, "the backup was slow enough to need pings: {:?}", done - during);
    let mut marks = vec![during];
    marks.extend(pings);
    marks.push(done);
    let gap = marks.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(gap < watchdog, "a {gap:?} gap between watchdog pings during the backup (WATCHDOG_USEC {watchdog:?})");
}

/// stop_grace is not overrun by what follows a commit: SIGTERM while the run catches up S3 (after its
/// own backup committed everywhere) stops the catch-up within the grace (its upload aborted) and leaves
/// pruning to the next run; the committed backup stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_catch_up_is_not_overrun() {
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.seed(1200, 10_000).await;
    let s3 = S3::start().await;
    let setup = Setup::new();
    let cfg = write_config(&setup, &etcd, "cron = \"0 0 1 1 *\"\nstop_grace = \"1s\"", &s3.config_table(BUCKET, ""));
    // Two backups only the local dir holds.
    s3.faults.down.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        etcd.seed(1, 1).await;
        assert_eq!(run(&cfg, &["backup"]).await.status.code(), Some(1));
    }
    s3.faults.down.store(false, Ordering::SeqCst);
    s3.faults.part_delay_ms.store(700, Ordering::SeqCst);
    etcd.seed(1, 1).await;
    let daemon = Daemon::start(&cfg).await;
    daemon.signal(Signal::SIGUSR1);
    let remote = || s3.keys(BUCKET).iter().filter(|k| k.ends_with(".manifest.json")).count();
    daemon.wait_until("the run's own backup in S3", || remote() == 1).await;
    let parts = s3.faults.parts_started.load(Ordering::SeqCst);
    daemon.wait_until("the catch-up upload", || s3.faults.parts_started.load(Ordering::SeqCst) > parts).await;
    let (status, _, _, log) = daemon.stop().await;
    assert!(status.success(), "{log}");
    assert!(log.contains("did not finish within stop_grace; cancelling it"), "{log}");
    assert_eq!(remote(), 1, "the catch-up stopped: {:?}", s3.keys(BUCKET));
    assert!(!log.contains("removed backup") && !log.contains("cleaned leftover"), "no prune after the stop: {log}");
    let uploads: Vec<String> = files(&s3.root).into_iter().filter(|n| n.starts_with(".upload")).collect();
    assert!(uploads.is_empty(), "the catch-up's upload was aborted: {uploads:?}");
    assert_eq!(manifests(&setup.work.path().join("backups/default")), 3, "every committed backup stays");
}

/// A new install (no run on record) backs up at once on its first start, instead of leaving the cluster
/// unprotected until the first fire time; then it waits for the schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_install_backs_up_at_once() {
    let etcd = Etcd::start(EtcdVersion::V34);
    let setup = Setup::new();
    let cfg = write_config(&setup, &etcd, "cron = \"0 0 1 1 *\"", "");
    std::fs::remove_file(state_dir_for(&cfg).join("state.json")).unwrap();
    let daemon = Daemon::start(&cfg).await;
    let folder = setup.work.path().join("backups/default");
    daemon.wait_until("the first backup", || manifests(&folder) == 1).await;
    assert!(daemon.log().contains("no backup run is on record"), "{}", daemon.log());
    let (status, _, _, log) = daemon.stop().await;
    assert!(status.success(), "{log}");
    // Started again, it has a run on record: it waits for the schedule.
    let daemon = Daemon::start(&cfg).await;
    daemon.loop_ran().await;
    let (status, _, _, log) = daemon.stop().await;
    assert!(status.success() && !log.contains("no backup run is on record"), "{log}");
    assert_eq!(manifests(&folder), 1);
}
