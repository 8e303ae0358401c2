//! The command line: parse, dispatch, print, and map outcomes to exit codes
//! (0 ok, 1 failure, 2 usage, 78 bad config).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::config::units::format_size;
use crate::config::{self, ConfigError, DEFAULT_CONFIG_PATH, Settings};
use crate::manifest::{BackupId, Manifest, check_label};
use crate::pipeline::{BackupRequest, run_backup};
use crate::store::local::LocalStore;
use crate::store::s3::S3Store;

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_CONFIG: u8 = 78;

#[derive(Debug, Parser)]
#[command(
    name = "etcd-backupd",
    version,
    about = "Verified, compressed, age-encrypted etcd snapshots to a local directory and S3"
)]
pub struct Cli {
    /// Config file.
    #[arg(long, short = 'c', global = true, env = "ETCD_BACKUPD_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the config file and the files it names; exit 78 if it is not usable.
    CheckConfig,
    /// Take one backup now; exit 0 only when it is committed in every configured destination.
    Backup {
        /// A label kept in the manifest, such as pre-upgrade-1.31.
        #[arg(long, value_parser = parse_label)]
        label: Option<String>,
    },
    /// List committed backups, local and remote, newest first.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn parse_label(s: &str) -> Result<String, String> {
    check_label(s).map(|()| s.to_string())
}

enum Failure {
    Config(ConfigError),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

/// Keeps peak memory flat whatever the snapshot size: glibc raises its mmap threshold each time a
/// large block is freed, after which the 1–8 MiB pipeline buffers come from (and stay in) the heap.
/// A fixed threshold returns every such buffer to the system when it is freed.
fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a tunable; it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    crate::telemetry::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("etcd-backupd: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(e)) => {
            eprintln!("etcd-backupd: the config is not usable:\n{e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Other(e)) => {
            eprintln!("etcd-backupd: error: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let settings = config::load(&cli.config).map_err(Failure::Config)?;
    match cli.command {
        Command::CheckConfig => {
            print_summary(&cli.config, &settings);
            Ok(())
        }
        Command::Backup { label } => backup(&settings, label).await,
        Command::List { json } => list(&settings, json).await,
    }
}

fn print_summary(path: &std::path::Path, s: &Settings) {
    println!("{}: OK", path.display());
    let auth = match (&s.etcd.client_cert, &s.etcd.auth) {
        (Some(_), _) => " (TLS client certificate)",
        (None, Some(_)) => " (user and password)",
        (None, None) => "",
    };
    println!("  etcd:       {}{auth}", s.etcd.endpoints.join(", "));
    println!("  cluster:    {}", s.cluster);
    println!("  local:      {}", s.local.dir.join(s.cluster.as_str()).display());
    match &s.s3 {
        Some(s3) => println!(
            "  s3:         s3://{}/{}{}/{}",
            s3.bucket,
            s3.prefix,
            s.cluster,
            s3.endpoint.as_deref().map(|e| format!(" at {e}")).unwrap_or_default()
        ),
        None => println!("  s3:         not configured (backups stay on this host)"),
    }
    println!("  recipients: {}", s.encryption.recipients.len());
}

async fn backup(settings: &Settings, label: Option<String>) -> Result<(), Failure> {
    let report = run_backup(settings, &BackupRequest { label }).await?;
    let m = &report.manifest;
    println!(
        "backup {} (revision {}, {} → {}) committed in: {}",
        m.id,
        m.etcd.revision,
        format_size(m.snapshot.size),
        format_size(m.artifact.size),
        report.committed.join(", ")
    );
    if report.failed.is_empty() {
        Ok(())
    } else {
        let lines: Vec<String> = report.failed.iter().map(|(d, e)| format!("{d}: {e}")).collect();
        Err(anyhow::anyhow!("backup {} is NOT committed in every destination:\n  {}", m.id, lines.join("\n  ")).into())
    }
}

/// A backup and the destinations that hold it.
#[derive(Debug, Serialize)]
struct Listed {
    destinations: Vec<&'static str>,
    #[serde(flatten)]
    manifest: Manifest,
}

async fn list(settings: &Settings, json: bool) -> Result<(), Failure> {
    let mut merged: BTreeMap<BackupId, Listed> = BTreeMap::new();
    let mut errors = Vec::new();
    let mut add = |destination: &'static str, listing: crate::store::Listing| {
        for stored in listing.backups {
            merged
                .entry(stored.manifest.id.clone())
                .or_insert_with(|| Listed { destinations: Vec::new(), manifest: stored.manifest })
                .destinations
                .push(destination);
        }
    };
    match LocalStore::new(&settings.local.dir, &settings.cluster).list().await {
        Ok(l) => add("local", l),
        Err(e) => errors.push(format!("local: {e:#}")),
    }
    if let Some(s3) = &settings.s3 {
        let listing = async { S3Store::new(s3, &settings.cluster).await?.list().await }.await;
        match listing {
            Ok(l) => add("s3", l),
            Err(e) => errors.push(format!("s3: {e:#}")),
        }
    }
    let rows: Vec<&Listed> = merged.values().rev().collect();
    if json {
        let text = serde_json::to_string_pretty(&rows).map_err(anyhow::Error::from)?;
        println!("{text}");
    } else {
        println!("{:<26} {:<20} {:>10} {:>11}  {:<20} STORED IN", "ID", "CREATED (UTC)", "REVISION", "SIZE", "LABEL");
        for r in &rows {
            let m = &r.manifest;
            println!(
                "{:<26} {:<20} {:>10} {:>11}  {:<20} {}",
                m.id.to_string(),
                m.created.format("%Y-%m-%d %H:%M:%S").to_string(),
                m.etcd.revision,
                format_size(m.artifact.size),
                m.label.as_deref().unwrap_or("-"),
                r.destinations.join(",")
            );
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!("cannot list every destination:\n  {}", errors.join("\n  ")).into())
    }
}
