//! A test's work dir, identity and config; the runner of the etcd-backupd binary; planted backups.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::*;

/// An age identity made with the `age-keygen` CLI.
pub struct Identity {
    pub file: PathBuf,
    pub recipient: String,
}

pub fn age_identity(dir: &Path, name: &str) -> Identity {
    let file = dir.join(format!("{name}.txt"));
    let out =
        Command::new("age-keygen").arg("-o").arg(&file).output().expect("age-keygen (Debian package age) is required");
    assert!(out.status.success(), "age-keygen failed: {}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new("age-keygen").arg("-y").arg(&file).output().unwrap();
    Identity { file, recipient: String::from_utf8(out.stdout).unwrap().trim().to_string() }
}

/// Runs the etcd-backupd binary with a config and a clean, loopback-only AWS environment.
pub async fn run(config: &Path, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_etcd-backupd"));
    cmd.arg("--config").arg(config).args(args);
    aws_env(&mut cmd);
    cmd.env("STATE_DIRECTORY", state_dir_for(config));
    cmd.output().await.unwrap()
}

/// Each test's state dir (lock, state file) lives beside its config.
pub fn state_dir_for(config: &Path) -> PathBuf {
    config.parent().unwrap().join("state")
}

pub fn aws_env(cmd: &mut tokio::process::Command) {
    cmd.env_remove("JOURNAL_STREAM")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        .env("NO_COLOR", "1");
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Files in a directory, sorted, or nothing if it does not exist.
pub fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// `age -d -i IDENTITY FILE | zstd -d` with the real CLIs; returns the plain snapshot.
pub fn decrypt_with_cli(artifact: &Path, identity: &Path, out: &Path) {
    let status = Command::new("bash")
        .arg("-c")
        .arg("set -o pipefail; age -d -i \"$1\" \"$2\" | zstd -d -q -o \"$3\"")
        .arg("bash")
        .arg(identity)
        .arg(artifact)
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success(), "age -d | zstd -d failed for {}", artifact.display());
}

/// A manifest for a synthetic committed backup whose artifact has `artifact_size` bytes.
pub fn synthetic_manifest(
    id: &etcd_backupd::manifest::BackupId,
    cluster: &str,
    artifact_size: u64,
) -> etcd_backupd::manifest::Manifest {
    use etcd_backupd::manifest::*;
    Manifest {
        format_version: FORMAT_VERSION,
        id: id.clone(),
        created: id.created(),
        duration_ms: 10,
        cluster: ClusterName::parse(cluster).unwrap(),
        label: None,
        host: "test".into(),
        tool_version: "0.0.0".into(),
        etcd: EtcdFacts {
            endpoint: "http://127.0.0.1:2379".into(),
            cluster_id: "1".into(),
            member_id: id.member().into(),
            member_name: "m".into(),
            version: "3.5.1".into(),
            revision: id.revision(),
            raft_term: 1,
            raft_index: 1,
            db_size: 1,
            leader: id.member().into(),
            alarms: vec![],
        },
        snapshot: SnapshotFacts { size: 1, sha256: "00".repeat(32), status: None },
        artifact: ArtifactFacts {
            name: id.artifact_name(Compression::Zstd { level: 3 }),
            size: artifact_size,
            sha256: "00".repeat(32),
            compression: CompressionName::Zstd,
            compression_level: Some(3),
            encryption: "age".into(),
            recipients: vec![],
        },
        files: None,
    }
}

/// Writes a synthetic committed backup (artifact, manifest, and a pin if asked) into `folder`.
pub fn plant(folder: &Path, id: &etcd_backupd::manifest::BackupId, size: usize, pinned: bool) {
    std::fs::create_dir_all(folder).unwrap();
    let m = synthetic_manifest(id, "default", size as u64);
    std::fs::write(folder.join(&m.artifact.name), vec![7u8; size]).unwrap();
    std::fs::write(folder.join(id.manifest_name()), m.to_json()).unwrap();
    if pinned {
        std::fs::write(folder.join(id.pin_name()), "pinned").unwrap();
    }
}

/// `len` bytes that do not compress (xorshift64 from `seed`).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    // splitmix64 spreads small seeds over the whole state, so the output is random from the first byte.
    let mut z = seed.wrapping_add(0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    let mut state = (z ^ (z >> 31)) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A test's work dir with an age identity, and a config whose local backups go to `work/backups`.
pub struct Setup {
    pub work: tempfile::TempDir,
    pub identity: Identity,
}

impl Setup {
    pub fn new() -> Setup {
        let work = tempfile::tempdir().unwrap();
        let identity = age_identity(work.path(), "ops");
        Setup { work, identity }
    }

    pub fn local(&self) -> PathBuf {
        self.work.path().join("backups")
    }

    /// The default cluster's folder of local backups.
    pub fn folder(&self) -> PathBuf {
        self.local().join("default")
    }

    /// Writes `etcd-backupd.toml`: the `[etcd]` table given, this identity as recipient, the local
    /// dir, then `extra` tables.
    pub fn config(&self, etcd_table: &str, extra: &str) -> PathBuf {
        write_config(self.work.path(), etcd_table, &self.identity.recipient, "", extra)
    }
}

/// Writes `work/etcd-backupd.toml` with `config_text`.
pub fn write_config(work: &Path, etcd_table: &str, recipient: &str, local: &str, extra: &str) -> PathBuf {
    let path = work.join("etcd-backupd.toml");
    std::fs::write(&path, config_text(work, etcd_table, &[recipient], local, extra)).unwrap();
    path
}

/// The one shape of every test's config: the `[etcd]` table given, the recipients, the local dir
/// `work/backups` with `local` lines (e.g. `retention = { keep_last = 3 }`), then `extra` tables.
pub fn config_text(work: &Path, etcd_table: &str, recipients: &[&str], local: &str, extra: &str) -> String {
    let recipients = recipients.iter().map(|r| format!("\"{r}\"")).collect::<Vec<_>>().join(", ");
    format!(
        "{etcd_table}\n[encryption]\nrecipients = [{recipients}]\n\n[local]\ndir = \"{}\"\n{local}\n\n{extra}",
        work.join("backups").display()
    )
}
