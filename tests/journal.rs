//! The backup history in a real journal: systemd-journald runs in a private mount namespace with temp
//! dirs bound over /run/systemd and /run/log; `journalctl -o json` then finds the committed and failed
//! entries by SYSLOG_IDENTIFIER and MESSAGE_ID, with their fields.

mod common;

use std::ffi::OsStr;
use std::process::Command;

use common::*;
use etcd_backupd::telemetry::{
    MESSAGE_BACKUP_COMMITTED, MESSAGE_BACKUP_FAILED, MESSAGE_CHAIN_ENDED, MESSAGE_DELTA_COMMITTED,
    MESSAGE_DRILL_FAILED, MESSAGE_DRILL_PASSED,
};

/// Mounts temp dirs over /run/systemd and /run/log (in the private namespace) and starts journald there.
const JOURNALD: &str = r#"
set -eu
T=$1; BIN=$2
mkdir -p /run/systemd /run/log
mount --bind "$T/systemd" /run/systemd
mount --bind "$T/log" /run/log
mkdir -p /run/systemd/journal
/lib/systemd/systemd-journald &
journald=$!
for i in $(seq 100); do [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done
export ETCD_BACKUPD_LOG_TARGET=journal
"#;

/// Flushes the journal and stops journald.
const FLUSH: &str = r#"
sleep 0.5
journalctl -D /run/log/journal --sync >/dev/null 2>&1 || true
kill $journald
wait $journald || true
"#;

const BACKUPS: &str = r#"
GOOD=$3; BAD=$4
"$BIN" --config "$GOOD" backup --label journal-test > "$T/good.out" 2>&1 || echo "good exit $?" >> "$T/good.out"
"$BIN" --config "$BAD" backup > "$T/bad.out" 2>&1 || true
"$BIN" --config "$GOOD" drill latest > "$T/drill.out" 2>&1 || echo "drill exit $?" >> "$T/drill.out"
"$BIN" --config "$GOOD" drill 20200101T000000Z-r1-abc > /dev/null 2>&1 || true
"#;

/// The daemon with deltas on, while keys are put, until a segment is committed; then SIGTERM.
const STREAM: &str = r#"
CONFIG=$3; ETCDCTL=$4; ENDPOINT=$5; COMMITTED=$6
"$BIN" --config "$CONFIG" run > "$T/daemon.out" 2>&1 &
daemon=$!
for i in $(seq 300); do
    ETCDCTL_API=3 "$ETCDCTL" --endpoints "$ENDPOINT" put "/journal/$i" x > /dev/null
    journalctl -D /run/log/journal -q --no-pager "MESSAGE_ID=$COMMITTED" | grep -q . && break
    sleep 0.1
done
kill -TERM $daemon
wait $daemon || echo "daemon exit $?" >> "$T/daemon.out"
"#;

/// Runs `body` between `JOURNALD` and `FLUSH` in a private mount namespace: `$1` is `work`, `$2` the
/// binary, then `args`.
fn in_journald(work: &std::path::Path, body: &str, args: &[&OsStr]) {
    let script = format!("{JOURNALD}{body}{FLUSH}");
    let status = Command::new("unshare")
        .args(["-m", "--propagation", "private", "bash", "-c", &script, "bash"])
        .arg(work)
        .arg(env!("CARGO_BIN_EXE_etcd-backupd"))
        .args(args)
        .env("STATE_DIRECTORY", work.join("state"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .status()
        .expect("unshare");
    assert!(status.success());
}

fn entries(dir: &std::path::Path, message_id: &str) -> Vec<serde_json::Value> {
    let out = Command::new("journalctl")
        .arg("-D")
        .arg(dir.join("log/journal"))
        .args(["-o", "json", "--no-pager", "SYSLOG_IDENTIFIER=etcd-backupd", &format!("MESSAGE_ID={message_id}")])
        .output()
        .expect("journalctl");
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_holds_the_backup_history() {
    let etcd = Etcd::start(EtcdVersion::V34);
    let revision = etcd.seed(20, 100).await;
    let Setup { work, identity: id } = Setup::new();
    for d in ["systemd", "log", "state"] {
        std::fs::create_dir_all(work.path().join(d)).unwrap();
    }
    let drill = format!(
        "[drill]\nidentity_file = \"{}\"\netcd_bin = \"{}\"\n",
        id.file.display(),
        etcd_bin_dir(EtcdVersion::V34).display()
    );
    let body = |endpoint: &str| {
        let etcd_table = format!("[etcd]\nendpoints = [\"{endpoint}\"]\ndial_timeout = \"2s\"\n");
        config_text(work.path(), &etcd_table, &[&id.recipient], "", &drill)
    };
    let good = work.path().join("good.toml");
    std::fs::write(&good, body(&etcd.endpoint)).unwrap();
    let bad = work.path().join("bad.toml");
    let dead = format!("http://127.0.0.1:{}", free_port());
    std::fs::write(&bad, body(&dead)).unwrap();

    in_journald(work.path(), BACKUPS, &[good.as_os_str(), bad.as_os_str()]);
    let good_out = std::fs::read_to_string(work.path().join("good.out")).unwrap();
    assert!(!good_out.contains("good exit"), "{good_out}");
    assert!(!good_out.contains("INFO"), "logs went to the journal, not stderr: {good_out}");

    let committed = entries(work.path(), MESSAGE_BACKUP_COMMITTED);
    assert_eq!(committed.len(), 1, "{committed:?}");
    let e = &committed[0];
    assert_eq!(e["REVISION"], revision.to_string());
    assert!(e["BACKUP_ID"].as_str().unwrap().contains(&format!("-r{revision}-")), "{e}");
    assert_eq!(e["DESTINATIONS"], "local");
    assert_eq!(e["LABEL"], "journal-test");
    for field in ["DB_SIZE", "ARTIFACT_SIZE", "DURATION_MS", "TOTAL_KEYS", "LIVE_KEYS", "SNAPSHOT_REVISION"] {
        assert!(e[field].as_str().unwrap().parse::<u64>().is_ok(), "{field} in {e}");
    }
    // In hex, as `etcdutl snapshot status` prints it.
    assert!(u32::from_str_radix(e["SNAPSHOT_HASH"].as_str().unwrap(), 16).is_ok(), "SNAPSHOT_HASH in {e}");
    assert_eq!(e["PRIORITY"], "5", "notice: tracing-journald maps INFO to 5");
    assert!(e["MESSAGE"].as_str().unwrap().starts_with("backup "), "{e}");

    let failed = entries(work.path(), MESSAGE_BACKUP_FAILED);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0]["ERROR"].as_str().unwrap().contains(&dead), "{}", failed[0]);
    assert_eq!(failed[0]["PRIORITY"], "3");

    let drill_out = std::fs::read_to_string(work.path().join("drill.out")).unwrap();
    assert!(!drill_out.contains("drill exit"), "{drill_out}");
    let passed = entries(work.path(), MESSAGE_DRILL_PASSED);
    assert_eq!(passed.len(), 1, "{passed:?}");
    assert_eq!(passed[0]["BACKUP_ID"], e["BACKUP_ID"]);
    assert_eq!(passed[0]["LIVE_KEYS"], "20");
    assert_eq!(passed[0]["SOURCE"], "local");
    let failed = entries(work.path(), MESSAGE_DRILL_FAILED);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0]["ERROR"].as_str().unwrap().contains("no destination holds a backup"), "{}", failed[0]);
    assert_eq!(failed[0]["PRIORITY"], "3");
}

/// The delta stream in the journal: a chain that cannot go on (etcd compacted the history after its
/// base while the daemon was stopped) is said once, with why; each committed segment with its
/// revisions, events and size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_holds_the_delta_stream() {
    let etcd = Etcd::start(EtcdVersion::V35);
    let Setup { work, identity: id } = Setup::new();
    for d in ["systemd", "log", "state"] {
        std::fs::create_dir_all(work.path().join(d)).unwrap();
    }
    let tables = "[schedule]\ncron = \"0 0 1 1 *\"\n[coordination]\nmode = \"member\"\n[deltas]\nenabled = true\nmax_interval = \"1s\"\n";
    let config = write_config(work.path(), &etcd.config_table(), &id.recipient, "", tables);
    let mut backup = tokio::process::Command::new(env!("CARGO_BIN_EXE_etcd-backupd"));
    backup.arg("--config").arg(&config).arg("backup").env("STATE_DIRECTORY", work.path().join("state"));
    aws_env(&mut backup);
    assert!(backup.status().await.unwrap().success());
    let compacted = etcd.seed(3, 10).await;
    let out = etcd.etcdctl(&["compact", &compacted.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let etcdctl = etcd_bin_dir(EtcdVersion::V35).join("etcdctl");
    let (endpoint, committed_id) = (OsStr::new(&etcd.endpoint), OsStr::new(MESSAGE_DELTA_COMMITTED));
    let args = [config.as_os_str(), etcdctl.as_os_str(), endpoint, committed_id];
    in_journald(work.path(), STREAM, &args);
    let said = std::fs::read_to_string(work.path().join("daemon.out")).unwrap();
    assert!(!said.contains("daemon exit"), "{said}");

    let ended = entries(work.path(), MESSAGE_CHAIN_ENDED);
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert!(ended[0]["WHY"].as_str().unwrap().contains("compacted"), "{}", ended[0]);
    assert_eq!(ended[0]["PRIORITY"], "4");
    let committed = entries(work.path(), MESSAGE_DELTA_COMMITTED);
    assert!(!committed.is_empty());
    let e = &committed[0];
    assert!(e["SEGMENT"].as_str().unwrap().ends_with(".d00000001"), "the new chain's first: {e}");
    let first: i64 = e["FIRST_REVISION"].as_str().unwrap().parse().unwrap();
    let last: i64 = e["LAST_REVISION"].as_str().unwrap().parse().unwrap();
    assert!(first > compacted && last >= first, "{e}");
    for field in ["EVENTS", "BYTES"] {
        assert!(e[field].as_str().unwrap().parse::<u64>().unwrap() > 0, "{field} in {e}");
    }
}
