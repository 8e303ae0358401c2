//! The fault suite: the release binary's paths driven through the faults of real fleets (a process
//! killed at each stage, etcd down, paused or with the wrong TLS, S3 refusing, resetting, overloaded,
//! hanging or denying, a full disk, clocks moved, planted manifests) against real etcd and a real S3
//! server. After each fault, the next ordinary run; then the figures that must hold: committed backups
//! lost 0, broken backups visible to `list` 0, plaintext left on disk 0, the newest backup restorable.
//! The table is written to target/fault-table.md (CI prints it; the README carries a copy).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

/// One world per fault: a seeded etcd, an S3 server, and one committed backup before the fault.
struct World {
    s: Setup,
    etcd: Etcd,
    s3: S3,
    config: PathBuf,
}

impl World {
    async fn new() -> World {
        let s = Setup::new();
        let etcd = Etcd::start(EtcdVersion::V35);
        // ~12 MiB of random values: three 5 MiB parts, slow enough to be interrupted.
        etcd.seed(1200, 10_000).await;
        let s3 = S3::start().await;
        let config = s.config(&etcd.config_table(), &s3.config_table(BUCKET, ""));
        let out = run(&config, &["backup"]).await;
        assert!(out.status.success(), "the baseline backup: {}", stderr(&out));
        World { s, etcd, s3, config }
    }

    /// The config with `from` replaced by `to` (a fault that lives in the config), as another file.
    fn config_with(&self, from: &str, to: &str) -> PathBuf {
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(text.contains(from), "{from} not in the config");
        let path = self.s.work.path().join("faulty.toml");
        std::fs::write(&path, text.replace(from, to)).unwrap();
        path
    }

    /// The command, as `run` starts it, not yet started.
    fn command(&self, config: &Path, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_etcd-backupd"));
        cmd.arg("--config").arg(config).args(args);
        aws_env(&mut cmd);
        cmd.env("STATE_DIRECTORY", state_dir_for(&self.config));
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        cmd
    }

    /// Starts `args`, waits until `ready`, then SIGKILLs it.
    async fn kill_when(&self, args: &[&str], what: &str, ready: impl Fn() -> bool) -> Output {
        let mut child = self.command(&self.config, args).spawn().unwrap();
        for _ in 0..600 {
            if ready() {
                child.start_kill().unwrap();
                return child.wait_with_output().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("never reached: {what}");
    }

    /// `id destination` of every committed backup `list` shows.
    async fn committed(&self) -> Vec<String> {
        let out = run(&self.config, &["list", "--json"]).await;
        let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let mut all = Vec::new();
        for b in listed {
            for d in b["destinations"].as_array().unwrap() {
                all.push(format!("{} {}", b["id"].as_str().unwrap(), d.as_str().unwrap()));
            }
        }
        all
    }
}

/// Files under `dir` that hold a plain etcd database (bbolt's magic in the first meta page).
fn plaintext_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() && !path.is_symlink() {
            found.extend(plaintext_files(&path));
        } else if let Ok(mut f) = std::fs::File::open(&path) {
            use std::io::Read;
            let mut head = [0u8; 20];
            if f.read_exact(&mut head).is_ok() && head[16..20] == 0xED0C_DAEDu32.to_le_bytes() {
                found.push(path);
            }
        }
    }
    found
}

/// What the command said as its error, on one line, without what changes from run to run (temp paths,
/// ports, backup ids), cut to a table cell.
fn first_error(stderr: &str) -> String {
    let Some(at) = stderr.find("etcd-backupd: error: ") else { return "-".to_string() };
    let mut out = String::new();
    for word in stderr[at + "etcd-backupd: error: ".len()..].split_whitespace() {
        let bare = word.trim_matches(|c: char| !c.is_ascii_alphanumeric());
        let word = if word.contains("/tmp/") {
            "…".to_string()
        } else if let Some(i) = word.find("127.0.0.1:") {
            word[..i + "127.0.0.1".len()].to_string()
        } else if etcd_backupd::manifest::BackupId::parse(bare).is_ok() {
            word.replace(bare, "ID")
        } else {
            word.to_string()
        };
        out += &word;
        out.push(' ');
        if out.chars().count() > 110 {
            out.push('…');
            break;
        }
    }
    out.trim().to_string()
}

/// One row of the table.
struct Row {
    fault: &'static str,
    exit: String,
    message: String,
    lost: usize,
    broken: usize,
    plaintext: usize,
    restorable: bool,
}

/// After the fault: the next ordinary run, then the figures.
async fn measure(w: &World, fault: &'static str, before: &[String], out: Output) -> Row {
    let exit = match out.status.code() {
        Some(c) => c.to_string(),
        None => "killed".to_string(),
    };
    let message = first_error(&stderr(&out));
    w.s3.faults.down_after_parts.store(0, Ordering::SeqCst);
    w.s3.faults.down.store(false, Ordering::SeqCst);
    w.s3.faults.part_status.store(0, Ordering::SeqCst);
    w.s3.faults.part_delay_ms.store(0, Ordering::SeqCst);
    let next = run(&w.config, &["backup"]).await;
    assert!(next.status.success(), "{fault}: the next run fails: {}", stderr(&next));
    let after = w.committed().await;
    let lost = before.iter().filter(|b| !after.contains(b)).count();
    let mut broken = 0;
    let ids: std::collections::BTreeSet<&str> = after.iter().filter_map(|a| a.split(' ').next()).collect();
    for id in ids {
        if !run(&w.config, &["verify", id]).await.status.success() {
            broken += 1;
        }
    }
    let plaintext = plaintext_files(w.s.work.path()).into_iter().filter(|p| !p.ends_with("restored.db")).count();
    let identity = w.s.identity.file.display().to_string();
    let restorable = run(&w.config, &["verify", "latest", "--identity", &identity]).await.status.success();
    Row { fault, exit, message, lost, broken, plaintext, restorable }
}

async fn fault(name: &'static str) -> Row {
    let w = World::new().await;
    let before = w.committed().await;
    let faults = &w.s3.faults;
    let out = match name {
        "backup SIGKILLed while streaming and uploading" => {
            faults.part_delay_ms.store(500, Ordering::SeqCst);
            w.kill_when(&["backup"], "an upload", || faults.parts_started.load(Ordering::SeqCst) >= 1).await
        }
        "backup SIGKILLed while committing" => {
            let local = w.s.folder();
            let two = move || files(&local).iter().filter(|n| n.ends_with(".manifest.json")).count() >= 2;
            faults.part_delay_ms.store(300, Ordering::SeqCst);
            w.kill_when(&["backup"], "the local commit", two).await
        }
        "daemon SIGKILLed mid-run" => {
            faults.part_delay_ms.store(500, Ordering::SeqCst);
            let cfg = w.config_with("[local]", "[schedule]\ncron = \"* * * * * *\"\n[local]");
            let mut child = w.command(&cfg, &["run"]).spawn().unwrap();
            for _ in 0..600 {
                if faults.parts_started.load(Ordering::SeqCst) >= 1 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            child.start_kill().unwrap();
            child.wait_with_output().await.unwrap()
        }
        "drill SIGKILLed with its etcd running" => {
            let bin = etcd_bin_dir(EtcdVersion::V35).display().to_string();
            let identity = w.s.identity.file.display().to_string();
            let state = state_dir_for(&w.config);
            let data_dir_exists = move || {
                files(&state)
                    .iter()
                    .any(|n| n.starts_with(".etcd-backupd-scratch") && state.join(n).join("data").exists())
            };
            w.kill_when(
                &["drill", "--identity", &identity, "--etcd-bin", &bin],
                "the drill's data dir",
                data_dir_exists,
            )
            .await
        }
        "restore --output SIGKILLed while decrypting" => {
            let identity = w.s.identity.file.display().to_string();
            let target = w.s.work.path().join("restored.db");
            let args = ["restore", "latest", "--identity", &identity, "--output", target.to_str().unwrap()];
            let mut child = w.command(&w.config, &args).spawn().unwrap();
            let fds = PathBuf::from(format!("/proc/{}/fd", child.id().unwrap()));
            let work = w.s.work.path().display().to_string();
            // The plaintext being written: a file in the work dir without a name.
            let writing = || {
                std::fs::read_dir(&fds).into_iter().flatten().flatten().any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|l| {
                        let l = l.display().to_string();
                        l.starts_with(&work) && l.ends_with("(deleted)")
                    })
                })
            };
            for _ in 0..2000 {
                if writing() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            child.start_kill().unwrap();
            child.wait_with_output().await.unwrap()
        }
        "etcd down" => {
            run(&w.config_with(&w.etcd.endpoint, &format!("http://127.0.0.1:{}", free_port())), &["backup"]).await
        }
        "etcd paused (SIGSTOP)" => {
            w.etcd.signal(Signal::SIGSTOP);
            let cfg = w.config_with("dial_timeout = \"5s\"", "dial_timeout = \"1s\"");
            let out = run(&cfg, &["backup"]).await;
            w.etcd.signal(Signal::SIGCONT);
            out
        }
        "etcd spoken to with TLS it does not have" => {
            let https = w.etcd.endpoint.replace("http://", "https://");
            run(&w.config_with(&w.etcd.endpoint, &https), &["backup"]).await
        }
        "S3 refuses every connection" => {
            faults.down.store(true, Ordering::SeqCst);
            run(&w.config, &["backup"]).await
        }
        "S3 resets mid-upload" => {
            faults.down_after_parts.store(1, Ordering::SeqCst);
            run(&w.config, &["backup"]).await
        }
        "S3 answers 503 to every part" => {
            faults.part_status.store(503, Ordering::SeqCst);
            run(&w.config, &["backup"]).await
        }
        "S3 answers 500 to every part" => {
            faults.part_status.store(500, Ordering::SeqCst);
            run(&w.config, &["backup"]).await
        }
        "S3 hangs on every part" => {
            faults.part_delay_ms.store(60_000, Ordering::SeqCst);
            run(&w.config_with("part_size", "timeout = \"1s\"\npart_size"), &["backup"]).await
        }
        "S3 denies (wrong secret)" => {
            let mut cmd = w.command(&w.config, &["backup"]);
            cmd.env("AWS_SECRET_ACCESS_KEY", "wrong");
            cmd.output().await.unwrap()
        }
        "local disk too small" => {
            let mut cmd = tokio::process::Command::new("unshare");
            cmd.args(["-m", "--propagation", "private", "sh", "-c"])
                .arg("mount -t tmpfs -o size=4m tmpfs \"$1\" && shift && exec \"$@\"")
                .arg("sh")
                .arg(w.s.local())
                .arg(env!("CARGO_BIN_EXE_etcd-backupd"))
                .arg("--config")
                .arg(&w.config)
                .arg("backup");
            aws_env(&mut cmd);
            cmd.env("STATE_DIRECTORY", state_dir_for(&w.config));
            cmd.output().await.unwrap()
        }
        "clock moved forward 3 years for one backup" | "clock moved back 2 years for one backup" => {
            let offset = if name.starts_with("clock moved forward") { "+3y" } else { "-2y" };
            let mut cmd = tokio::process::Command::new("faketime");
            cmd.arg("-f")
                .arg(offset)
                .arg(env!("CARGO_BIN_EXE_etcd-backupd"))
                .arg("--config")
                .arg(&w.config)
                .arg("backup");
            aws_env(&mut cmd);
            cmd.env("STATE_DIRECTORY", state_dir_for(&w.config)).env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
            cmd.output().await.unwrap()
        }
        "planted manifests naming files outside, local and S3" => {
            let victim = w.s.work.path().join("victim.txt");
            std::fs::write(&victim, "precious").unwrap();
            let id = etcd_backupd::manifest::BackupId::new(chrono::Utc::now() - chrono::Duration::days(400), 3, "b");
            for folder in [w.s.folder(), w.s3.root.join(BUCKET).join("default")] {
                let mut m = synthetic_manifest(&id, "default", 10);
                std::fs::write(folder.join(&m.artifact.name), [1u8; 10]).unwrap();
                m.artifact.name = format!("../../../../../../..{}", victim.display());
                std::fs::write(folder.join(id.manifest_name()), m.to_json()).unwrap();
            }
            let out = run(&w.config, &["delete", &id.to_string(), "--force"]).await;
            run(&w.config, &["prune"]).await;
            assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious", "{name}");
            out
        }
        other => panic!("no such fault: {other}"),
    };
    measure(&w, name, &before, out).await
}

const FAULTS: [&str; 18] = [
    "backup SIGKILLed while streaming and uploading",
    "backup SIGKILLed while committing",
    "daemon SIGKILLed mid-run",
    "drill SIGKILLed with its etcd running",
    "restore --output SIGKILLed while decrypting",
    "etcd down",
    "etcd paused (SIGSTOP)",
    "etcd spoken to with TLS it does not have",
    "S3 refuses every connection",
    "S3 resets mid-upload",
    "S3 answers 503 to every part",
    "S3 answers 500 to every part",
    "S3 hangs on every part",
    "S3 denies (wrong secret)",
    "local disk too small",
    "clock moved forward 3 years for one backup",
    "clock moved back 2 years for one backup",
    "planted manifests naming files outside, local and S3",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_loses_nothing_and_leaves_nothing() {
    let mut rows = Vec::new();
    for name in FAULTS {
        rows.push(fault(name).await);
    }
    let mut table = String::from(
        "| fault | exit | first error | committed lost | broken in `list` | plaintext left | newest restorable |\n| --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for r in &rows {
        table += &format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.fault,
            r.exit,
            r.message.replace('|', "\\|"),
            r.lost,
            r.broken,
            r.plaintext,
            if r.restorable { "yes" } else { "NO" }
        );
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fault-table.md");
    std::fs::write(&path, &table).unwrap();
    println!("{table}");
    for r in &rows {
        assert_eq!((r.lost, r.broken, r.plaintext, r.restorable), (0, 0, 0, true), "{}:\n{table}", r.fault);
    }
}
