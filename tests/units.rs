//! The systemd units in systemd/: `systemd-analyze verify` is silent on them, every service's sandbox
//! scores at most 1.2 in `systemd-analyze security`, and the one-shot and drill units share the service's
//! sandbox.

use std::path::{Path, PathBuf};
use std::process::Command;

const UNITS: [&str; 5] = [
    "etcd-backupd.service",
    "etcd-backupd-once.service",
    "etcd-backupd.timer",
    "etcd-backupd-drill.service",
    "etcd-backupd-drill.timer",
];

/// The units, with ExecStart pointing at the binary under test (verify checks that it exists).
fn staged() -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let paths = UNITS
        .iter()
        .map(|u| {
            let text = std::fs::read_to_string(src.join(u))
                .unwrap()
                .replace("/usr/bin/etcd-backupd", env!("CARGO_BIN_EXE_etcd-backupd"));
            let p = dir.path().join(u);
            std::fs::write(&p, text).unwrap();
            p
        })
        .collect();
    (dir, paths)
}

#[test]
fn systemd_analyze_verify_is_silent() {
    let (_dir, paths) = staged();
    // The man pages ship with the packages; --man=no keeps verify from looking them up here.
    let out =
        Command::new("systemd-analyze").arg("verify").arg("--man=no").args(&paths).output().expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify:\n{stderr}");
}

#[test]
fn every_service_sandbox_is_tight() {
    let (_dir, paths) = staged();
    for path in paths.iter().filter(|p| p.extension().is_some_and(|e| e == "service")) {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true"])
            .arg(path)
            .output()
            .expect("systemd-analyze");
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_else(|| panic!("no score in:\n{text}"));
        let score: f64 =
            line.split(": ").nth(1).and_then(|s| s.split_whitespace().next()).and_then(|s| s.parse().ok()).unwrap();
        println!("systemd-analyze security --offline=true: {line}");
        assert!(score <= 1.2, "{line}\n{text}");
    }
}

#[test]
fn the_one_shot_unit_shares_the_service_sandbox() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let sandbox = |unit: &str| -> Vec<String> {
        let text = std::fs::read_to_string(src.join(unit)).unwrap();
        let from = text.find("User=etcd-backupd").unwrap();
        text[from..]
            .lines()
            .take_while(|l| !l.starts_with("[Install]"))
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    };
    assert_eq!(sandbox("etcd-backupd-once.service"), sandbox("etcd-backupd.service"));
    assert_eq!(sandbox("etcd-backupd-drill.service"), sandbox("etcd-backupd.service"));
    // Below etcd in CPU and disk: nice, idle-ish I/O priority and cgroup weights under etcd's 100.
    let service = sandbox("etcd-backupd.service");
    for want in ["Nice=10", "IOSchedulingPriority=7", "CPUWeight=20", "IOWeight=20"] {
        assert!(service.iter().any(|l| l == want), "etcd-backupd.service lacks {want}");
    }
}

#[test]
fn the_drill_runs_weekly_with_its_identity_as_a_credential() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let service = std::fs::read_to_string(src.join("etcd-backupd-drill.service")).unwrap();
    let timer = std::fs::read_to_string(src.join("etcd-backupd-drill.timer")).unwrap();
    assert!(service.contains("Type=oneshot"));
    assert!(service.contains("LoadCredential=identity:/etc/etcd-backupd/drill-identity.txt"));
    assert!(
        service.contains("ExecStart=/usr/bin/etcd-backupd drill latest --identity ${CREDENTIALS_DIRECTORY}/identity")
    );
    assert!(
        timer.contains("OnCalendar=weekly")
            && timer.contains("Persistent=true")
            && timer.contains("Unit=etcd-backupd-drill.service")
            && timer.contains("WantedBy=timers.target")
    );
}

#[test]
fn daemon_and_timer_modes_exclude_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let service = std::fs::read_to_string(src.join("etcd-backupd.service")).unwrap();
    let once = std::fs::read_to_string(src.join("etcd-backupd-once.service")).unwrap();
    let timer = std::fs::read_to_string(src.join("etcd-backupd.timer")).unwrap();
    assert!(service.contains("Type=notify") && service.contains("WatchdogSec=") && service.contains("ExecReload="));
    // The daemon and the timer exclude each other; an ad-hoc one-shot never stops the daemon (it waits
    // for the run lock instead, for less than its start timeout).
    assert!(service.contains("Conflicts=etcd-backupd.timer"));
    assert!(!once.lines().any(|l| l.starts_with("Conflicts=")), "the one-shot conflicts with nothing:\n{once}");
    assert!(once.contains("Type=oneshot") && once.contains("ExecStart=/usr/bin/etcd-backupd backup --wait 45min"));
    assert!(once.contains("TimeoutStartSec=1h"));
    assert!(
        timer.contains("Persistent=true")
            && timer.contains("RandomizedDelaySec=")
            && timer.contains("Unit=etcd-backupd-once.service")
    );
}

#[test]
fn the_message_catalog_explains_every_message_id() {
    use etcd_backupd::telemetry::{
        MESSAGE_BACKUP_COMMITTED, MESSAGE_BACKUP_FAILED, MESSAGE_CHAIN_ENDED, MESSAGE_DELTA_COMMITTED,
        MESSAGE_DRILL_FAILED, MESSAGE_DRILL_PASSED, MESSAGE_PRUNED,
    };
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/etcd-backupd.catalog")).unwrap();
    let ids: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("-- ")).collect();
    assert_eq!(
        ids,
        vec![
            MESSAGE_BACKUP_COMMITTED,
            MESSAGE_BACKUP_FAILED,
            MESSAGE_PRUNED,
            MESSAGE_DRILL_PASSED,
            MESSAGE_DRILL_FAILED,
            MESSAGE_DELTA_COMMITTED,
            MESSAGE_CHAIN_ENDED
        ]
    );
    for id in &ids {
        assert!(id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
        let entry = text.split(&format!("-- {id}")).nth(1).unwrap();
        assert!(entry.lines().nth(1).unwrap().starts_with("Subject: "), "{id}");
    }
}

/// The opt-in drop-in for `[files]` adds exactly one capability, CAP_DAC_READ_SEARCH (read, never
/// write), and the service with it still scores low in `systemd-analyze security`.
#[test]
fn the_control_plane_files_drop_in_grants_reading_only() {
    let (dir, _) = staged();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let drop_in = std::fs::read_to_string(root.join("packaging/control-plane-files.conf")).unwrap();
    let service = std::fs::read_to_string(dir.path().join("etcd-backupd.service")).unwrap();
    // systemd applies a drop-in's lines after the unit's: appended, they are the same unit.
    let combined = dir.path().join("etcd-backupd-files.service");
    std::fs::write(&combined, format!("{service}\n{drop_in}")).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg("--man=no").arg(&combined).output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stderr).trim().is_empty(), "{out:?}");
    let out = Command::new("systemd-analyze").args(["security", "--offline=true"]).arg(&combined).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let caps: Vec<&str> = text.lines().filter(|l| l.contains("CAP_") && l.starts_with('✗')).collect();
    // The one capability falls in the DAC group; nothing else is flagged.
    assert!(caps.len() == 1 && caps[0].contains("DAC_"), "{caps:#?}");
    let line = text.lines().find(|l| l.contains("Overall exposure level")).unwrap();
    let score: f64 =
        line.split(": ").nth(1).and_then(|s| s.split_whitespace().next()).and_then(|s| s.parse().ok()).unwrap();
    println!("with the [files] drop-in: {line}");
    assert!(score <= 2.5, "{line}\n{text}");
}
