//! The command line: parse, dispatch, print, and map outcomes to exit codes
//! (0 ok, 1 failure, 2 usage, 78 bad config).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::units::format_size;
use crate::config::{self, ConfigError, DEFAULT_CONFIG_PATH, Settings};
use crate::daemon::{Outcome, record, run_once};
use crate::manifest::{BackupId, Manifest, check_label};
use crate::pipeline::{BackupRequest, policy_for};
use crate::prune::{PruneOptions, PruneReport, prune};
use crate::restore::{MemberFlags, Selector};
use crate::store::Destination;

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_CONFIG: u8 = 78;

/// Prints a line of a command's output. A reader that stopped reading (`etcd-backupd list | head -1`)
/// ends the command quietly, as other command-line tools do, instead of a panic. (SIGPIPE stays ignored:
/// a socket whose peer went away must give an error, not kill the process.)
macro_rules! out {
    ($($arg:tt)*) => {
        print_line(format_args!($($arg)*))
    };
}

/// Prints a value as pretty JSON on stdout.
fn print_json(value: &impl Serialize) -> Result<(), Failure> {
    out!("{}", serde_json::to_string_pretty(value).map_err(anyhow::Error::from)?);
    Ok(())
}

fn print_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        tracing::warn!(error = %e, "cannot write the output");
    }
}

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
    /// Take one backup now, then prune each destination that committed it; exit 0 only when it is
    /// committed in every configured destination.
    Backup {
        /// A label kept in the manifest, such as pre-upgrade-1.31.
        #[arg(long, value_parser = parse_label)]
        label: Option<String>,
        /// Pin the backup: retention never removes it (until `unpin`).
        #[arg(long)]
        pin: bool,
        /// If another backup is running (the service's, or another `backup`), wait this long for it.
        #[arg(long, default_value = "10m", value_parser = parse_wait)]
        wait: std::time::Duration,
        /// Print JSON instead of text (the shape is in README, "JSON output").
        #[arg(long)]
        json: bool,
    },
    /// Run as a daemon: back up on the [schedule], prune, report to systemd and the journal.
    Run,
    /// Check a backup in every destination: the artifact's size and sha256 against its manifest; with
    /// --identity also decrypt, decompress and check etcd's sha256 trailer.
    Verify {
        /// A backup id, or `latest`.
        #[arg(default_value = "latest", value_parser = parse_selector)]
        backup: Selector,
        /// An age identity file (or unencrypted SSH private key) that can decrypt the backups.
        #[arg(long)]
        identity: Option<PathBuf>,
        /// Print JSON instead of text (the shape is in README, "JSON output").
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup: into a NEW data dir with etcd's own `snapshot restore`, or as a plain snapshot file.
    ///
    /// A cluster of several members is restored from one backup: the same ID on every member, with the
    /// same --initial-cluster and --initial-cluster-token, and each member's own --name and
    /// --initial-advertise-peer-urls.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["data_dir", "output"])))]
    Restore {
        /// A backup id, or `latest`.
        #[arg(default_value = "latest", value_parser = parse_selector, conflicts_with = "before")]
        backup: Selector,
        /// The newest backup taken before this time (RFC 3339).
        #[arg(long, value_parser = parse_time)]
        before: Option<DateTime<Utc>>,
        /// An age identity file (or unencrypted SSH private key) that can decrypt the backup.
        #[arg(long)]
        identity: PathBuf,
        /// Restore into this data dir; it must not exist or be empty.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Write the plain snapshot (as `etcdctl snapshot save` would) to this file instead.
        #[arg(long)]
        output: Option<PathBuf>,
        /// This member's name, as in etcd's --name.
        #[arg(long)]
        name: Option<String>,
        /// Every member of the restored cluster: `name=peer-url,...`, the same on every member.
        #[arg(long)]
        initial_cluster: Option<String>,
        /// This member's peer URL, as listed in --initial-cluster.
        #[arg(long)]
        initial_advertise_peer_urls: Option<String>,
        /// A new token for the restored cluster, the same on every member.
        #[arg(long)]
        initial_cluster_token: Option<String>,
        /// The folder holding etcdutl / etcdctl, or one of them (default: PATH).
        #[arg(long)]
        etcd_bin: Option<PathBuf>,
    },
    /// Prove a backup restores: decrypt it, restore it into a temporary data dir, start a throwaway etcd
    /// on loopback, and check that it serves the revision and key count the manifest recorded; then
    /// remove everything and record the result (state file, journal, metrics).
    Drill {
        /// A backup id, or `latest`.
        #[arg(default_value = "latest", value_parser = parse_selector)]
        backup: Selector,
        /// An age identity file (or unencrypted SSH private key); default: drill.identity_file.
        #[arg(long)]
        identity: Option<PathBuf>,
        /// The folder holding `etcd` and `etcdutl` (3.5+) or `etcdctl` (3.4), or one of them; default: drill.etcd_bin, then PATH.
        #[arg(long)]
        etcd_bin: Option<PathBuf>,
        /// Print JSON instead of text (the shape is in README, "JSON output").
        #[arg(long)]
        json: bool,
    },
    /// Show the last success and failure, the next run and the backups per destination; exit 1 if the
    /// last success is older than twice the schedule's interval.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List committed backups, local and remote, newest first.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Apply each destination's retention policy and clean what crashed runs left behind.
    Prune {
        /// Show what would be kept and removed, and why, without removing anything.
        #[arg(long)]
        dry_run: bool,
        /// Plan as if it were this time (RFC 3339), for the leftover grace period.
        #[arg(long, value_parser = parse_time)]
        now: Option<DateTime<Utc>>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// How long to wait for a running backup (which holds the lock) to finish.
        #[arg(long, default_value = "10m", value_parser = parse_wait)]
        wait: std::time::Duration,
    },
    /// Remove one backup from every destination.
    Delete {
        /// The backup id, as `list` shows it.
        #[arg(value_parser = parse_id)]
        id: BackupId,
        /// Remove it even if it is pinned.
        #[arg(long)]
        force: bool,
        /// How long to wait for a running backup (which holds the lock) to finish.
        #[arg(long, default_value = "10m", value_parser = parse_wait)]
        wait: std::time::Duration,
    },
    /// Pin a backup in every destination that holds it: retention never removes it.
    Pin {
        /// The backup id, as `list` shows it.
        #[arg(value_parser = parse_id)]
        id: BackupId,
        /// How long to wait for a running backup (which holds the lock) to finish.
        #[arg(long, default_value = "10m", value_parser = parse_wait)]
        wait: std::time::Duration,
    },
    /// Unpin a backup: retention applies to it again.
    Unpin {
        /// The backup id, as `list` shows it.
        #[arg(value_parser = parse_id)]
        id: BackupId,
        /// How long to wait for a running backup (which holds the lock) to finish.
        #[arg(long, default_value = "10m", value_parser = parse_wait)]
        wait: std::time::Duration,
    },
    /// Write the man pages and shell completions into DIR (for packaging).
    #[command(hide = true)]
    Generate { dir: PathBuf },
}

fn parse_selector(s: &str) -> Result<Selector, String> {
    Selector::parse(s)
}

fn parse_wait(s: &str) -> Result<std::time::Duration, String> {
    crate::config::units::parse_duration(s)
}

fn parse_id(s: &str) -> Result<BackupId, String> {
    BackupId::parse(s)
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("\"{s}\" is not a time: {e}; expected RFC 3339, like 2026-11-22T10:00:00Z"))
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
    let config_path = cli.config.clone();
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(e)) => {
            eprintln!("etcd-backupd: the config is not usable:\n{e}");
            eprintln!(
                "etcd-backupd: fill these in (or fix them) in {}, then run `etcd-backupd check-config` again; every key is described in etcd-backupd.toml(5)",
                config_path.display()
            );
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Other(e)) => {
            eprintln!("etcd-backupd: error: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    if let Command::Generate { dir } = &cli.command {
        crate::manpages::generate(dir)?;
        return Ok(());
    }
    let settings = config::load(&cli.config).map_err(Failure::Config)?;
    if matches!(cli.command, Command::Backup { .. } | Command::Run)
        && let Err(e) = settings.etcd()
    {
        let problem = config::Located { line: None, column: None, key: "etcd".into(), message: e.to_string() };
        return Err(Failure::Config(ConfigError { file: cli.config.clone(), problems: vec![problem] }));
    }
    if let Some(name) = service_writer(&cli.command) {
        refuse_root_in_service_dirs(name, &[crate::host::state_dir(), settings.local.dir.clone()])?;
    }
    if matches!(cli.command, Command::Backup { .. } | Command::Run) {
        for w in config::secret_warnings(&settings) {
            tracing::warn!(key = %w.key, "{}", w.message);
        }
    }
    match cli.command {
        Command::CheckConfig => {
            print_summary(&cli.config, &settings);
            Ok(())
        }
        Command::Backup { label, pin, wait, json } => {
            let cancel = crate::interrupt::on_signals();
            backup(&settings, BackupRequest { label, pin, cancel, ..BackupRequest::default() }, wait, json).await
        }
        Command::Run => crate::daemon::run(cli.config.clone(), settings).await.map_err(Failure::Other),
        Command::Status { json } => status(&settings, json),
        Command::Verify { backup, identity, json } => {
            verify(&settings, &backup, identity.as_deref(), &crate::interrupt::on_signals(), json).await
        }
        Command::Restore {
            backup,
            before,
            identity,
            data_dir,
            output,
            name,
            initial_cluster,
            initial_advertise_peer_urls,
            initial_cluster_token,
            etcd_bin,
        } => {
            let selector = before.map(Selector::Before).unwrap_or(backup);
            let flags = MemberFlags { name, initial_cluster, initial_advertise_peer_urls, initial_cluster_token };
            let target = match (data_dir, output) {
                (Some(dir), _) => RestoreTarget::DataDir(dir, flags, etcd_bin),
                (None, Some(file)) => RestoreTarget::File(file),
                (None, None) => unreachable!("clap requires one"),
            };
            restore(&settings, &selector, &identity, target, &crate::interrupt::on_signals()).await
        }
        Command::Drill { backup, identity, etcd_bin, json } => {
            let cancel = crate::interrupt::on_signals();
            drill(&settings, &backup, identity.as_deref(), etcd_bin.as_deref(), &cancel, json).await
        }
        Command::List { json } => list(&settings, json).await,
        Command::Prune { dry_run, now, json, wait } => {
            // A prune that removes takes the run lock: it never judges the upload of a backup that is
            // running on this host, nor removes while a backup's own prune does.
            let _lock = match dry_run {
                true => None,
                false => Some(crate::state::Lock::take(&crate::host::state_dir(), wait).await?),
            };
            // A prune that removes, planned at a later time than the clock's, would take every leftover
            // for stale (aborting uploads in progress) and no backup for future-dated.
            if let Some(t) = now.filter(|t| !dry_run && *t > Utc::now() + crate::retention::FUTURE_TOLERANCE) {
                return Err(anyhow::anyhow!(
                    "--now {t} is later than this host's clock: a prune that removes plans at the clock's time or earlier; use --dry-run to see a later plan"
                )
                .into());
            }
            prune_all(&settings, dry_run, now.unwrap_or_else(Utc::now), json).await
        }
        // Removing and pinning wait for a running backup, whose prune would otherwise plan with what
        // was listed before the change.
        Command::Delete { id, force, wait } => {
            let _lock = crate::state::Lock::take(&crate::host::state_dir(), wait).await?;
            delete(&settings, &id, force).await
        }
        Command::Pin { id, wait } => {
            let _lock = crate::state::Lock::take(&crate::host::state_dir(), wait).await?;
            set_pin(&settings, &id, true).await
        }
        Command::Unpin { id, wait } => {
            let _lock = crate::state::Lock::take(&crate::host::state_dir(), wait).await?;
            set_pin(&settings, &id, false).await
        }
        Command::Generate { .. } => Ok(()),
    }
}

/// The name of a command that writes state, locks or backups into the state dir or the local backup
/// dir; `None` for the others.
fn service_writer(command: &Command) -> Option<&'static str> {
    match command {
        Command::Backup { .. } => Some("backup"),
        Command::Run => Some("run"),
        Command::Drill { .. } => Some("drill"),
        Command::Prune { dry_run: false, .. } => Some("prune"),
        Command::Delete { .. } => Some("delete"),
        Command::Pin { .. } => Some("pin"),
        Command::Unpin { .. } => Some("unpin"),
        _ => None,
    }
}

/// Root writing into dirs the service user owns (`sudo etcd-backupd backup` on a packaged host) would
/// leave a lock, a state file and backups there that the service cannot open: refused, with the way to
/// run command `name` as the service instead.
fn refuse_root_in_service_dirs(name: &str, dirs: &[std::path::PathBuf]) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let owned =
        dirs.iter().find_map(|dir| std::fs::metadata(dir).ok().filter(|m| m.uid() != 0).map(|m| (dir, m.uid())));
    let Some((dir, uid)) = owned else { return Ok(()) };
    let user = nix::unistd::User::from_uid(uid.into()).ok().flatten().map_or_else(|| uid.to_string(), |u| u.name);
    let mut fix = format!("run it as {user}: `sudo -u {user} etcd-backupd {name} ...`");
    if name == "backup" {
        fix.push_str(
            ", or as the one-shot service (which also gets the etcd client key through its credentials): \
             `systemctl start etcd-backupd-once.service`, then `journalctl -u etcd-backupd-once`",
        );
    }
    anyhow::bail!(
        "'{}' belongs to {user}, and files root writes there (the lock, the state, backups) would keep the service from using them; {fix}",
        dir.display()
    )
}

fn print_summary(path: &std::path::Path, s: &Settings) {
    out!("{}: OK", path.display());
    match &s.etcd {
        Some(etcd) => {
            let auth = match (&etcd.client_cert, &etcd.auth) {
                (Some(_), _) => " (TLS client certificate)",
                (None, Some(_)) => " (user and password)",
                (None, None) => "",
            };
            out!("  etcd:       {}{auth}", etcd.endpoints.join(", "));
        }
        None => out!(
            "  etcd:       none: a verification host (verify, restore, drill, list and prune work; backup and run need [etcd])"
        ),
    }
    out!("  cluster:    {}", s.cluster);
    out!("  local:      {}", s.local.dir.join(s.cluster.as_str()).display());
    match &s.s3 {
        Some(s3) => out!(
            "  s3:         s3://{}/{}{}/{}",
            s3.bucket,
            s3.prefix,
            s.cluster,
            s3.endpoint.as_deref().map(|e| format!(" at {e}")).unwrap_or_default()
        ),
        None => out!("  s3:         not configured (backups stay on this host)"),
    }
    out!("  recipients: {}", s.encryption.recipients.len());
    for w in config::secret_warnings(s) {
        out!("warning: {}: {}", w.key, w.message);
    }
}

async fn backup(
    settings: &Settings,
    request: BackupRequest,
    wait: std::time::Duration,
    json: bool,
) -> Result<(), Failure> {
    let state_dir = crate::host::state_dir();
    let mut alerts = crate::alerts::Pending::default();
    let (started, outcome) = run_once(settings, &request, &state_dir, wait, 1, &mut alerts).await;
    record(settings, &state_dir, started, &outcome).await;
    // The notifications are sent before the process ends (each bounded by notify.timeout).
    alerts.wait().await;
    if json {
        let shape = match &outcome {
            Outcome::Committed(report) => crate::json::Backup::committed(report),
            Outcome::Unchanged { revision } => crate::json::Backup::unchanged(*revision),
            Outcome::Failed(e) => crate::json::Backup::not_committed("failed", format!("{e:#}")),
            Outcome::Skipped(why) => crate::json::Backup::not_committed("skipped", why.clone()),
        };
        print_json(&shape)?;
    }
    let report = match outcome {
        Outcome::Committed(report) => *report,
        Outcome::Unchanged { revision } => {
            if !json {
                out!("etcd's revision {revision} has not changed since the last backup: nothing to do");
            }
            return Ok(());
        }
        Outcome::Failed(e) => return Err(e.into()),
        Outcome::Skipped(why) => return Err(anyhow::anyhow!(why).into()),
    };
    let m = &report.manifest;
    if !json {
        out!(
            "backup {} (revision {}, {} → {}) committed in: {}",
            m.id,
            m.etcd.revision,
            format_size(m.snapshot.size),
            format_size(m.artifact.size),
            report.committed.join(", ")
        );
    }
    if report.failed.is_empty() {
        Ok(())
    } else {
        let lines: Vec<String> = report.failed.iter().map(|(d, e)| format!("{d}: {e}")).collect();
        let every = settings.s3.is_none() || report.committed.len() == 2;
        let what =
            if every { "is committed, but not everything went well" } else { "is NOT committed in every destination" };
        Err(anyhow::anyhow!("backup {} {what}:\n  {}", m.id, lines.join("\n  ")).into())
    }
}

fn status(settings: &Settings, json: bool) -> Result<(), Failure> {
    let state_dir = crate::host::state_dir();
    let state = crate::state::State::load(&state_dir);
    let now = Utc::now();
    let interval = state
        .schedule_interval_secs
        .map(std::time::Duration::from_secs)
        .or_else(|| settings.schedule.schedule.interval_around(now));
    // A success dated in the future (the clock was wrong then, or is now) proves nothing about how
    // fresh the backups are: it counts as overdue, never as "fresh until that date".
    let future_success = state.last_success.as_ref().is_some_and(|s| s.time > now + crate::retention::FUTURE_TOLERANCE);
    let overdue = match (&state.last_success, interval) {
        _ if future_success => true,
        (Some(s), Some(i)) => (now - s.time).to_std().unwrap_or_default() > 2 * i,
        (None, _) => true,
        (Some(_), None) => false,
    };
    if json {
        let value = serde_json::json!({ "state": state, "overdue": overdue, "state_dir": state_dir });
        out!("{}", serde_json::to_string_pretty(&value).map_err(anyhow::Error::from)?);
    } else {
        out!("{}", crate::daemon::status_line(&state, false));
        if let Some(f) = &state.last_failure {
            out!("last failure: {} {}", f.time.format("%Y-%m-%d %H:%M:%S UTC"), f.error);
        }
        for (destination, n) in &state.backups {
            out!("{destination}: {n} backups");
        }
        out!(
            "runs: {} ok, {} failed, {} unchanged, {} skipped",
            state.runs.ok,
            state.runs.failed,
            state.runs.unchanged,
            state.runs.skipped
        );
        match &state.last_proven {
            Some(p) => out!(
                "last proven restorable: {} (drill at {}: revision {}, {} keys)",
                p.id,
                p.time.format("%Y-%m-%d %H:%M:%S UTC"),
                p.revision,
                p.keys
            ),
            None => out!("last proven restorable: never (run `etcd-backupd drill`)"),
        }
        if let Some(f) = &state.last_drill_failure {
            out!("last failed drill: {} {}", f.time.format("%Y-%m-%d %H:%M:%S UTC"), f.error);
        }
        if !state.future_dated.is_empty() {
            out!(
                "warning: {} backups are dated in the future (a clock was wrong when they were taken): {}; they are kept and count for no retention rule: check the clocks, then delete them once newer backups exist",
                state.future_dated.len(),
                state.future_dated.join(", ")
            );
        }
    }
    if future_success {
        return Err(anyhow::anyhow!(
            "backups may be overdue: the last success is dated {}, in the future (the clock was wrong then, or is now): check the clock",
            state.last_success.as_ref().map_or(String::new(), |s| s.time.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        )
        .into());
    }
    if overdue {
        let why = match (&state.last_success, interval) {
            (None, _) => "no backup has succeeded yet".to_string(),
            (Some(s), Some(i)) => format!(
                "the last success was at {}, more than twice the schedule's interval ({}) ago",
                s.time.format("%Y-%m-%d %H:%M:%S UTC"),
                humantime::format_duration(i)
            ),
            (Some(s), None) => format!("the last success was at {}", s.time.format("%Y-%m-%d %H:%M:%S UTC")),
        };
        return Err(anyhow::anyhow!("backups are overdue: {why}").into());
    }
    Ok(())
}

/// A backup and the destinations that hold it.
#[derive(Debug, Serialize)]
struct Listed {
    destinations: Vec<&'static str>,
    pinned: bool,
    #[serde(flatten)]
    manifest: Manifest,
}

async fn list(settings: &Settings, json: bool) -> Result<(), Failure> {
    let mut merged: BTreeMap<BackupId, Listed> = BTreeMap::new();
    let (destinations, mut errors) = destinations(settings).await;
    for destination in &destinations {
        match destination.list().await {
            Ok(listing) => {
                for stored in listing.backups {
                    let entry = merged.entry(stored.manifest.id.clone()).or_insert_with(|| Listed {
                        destinations: Vec::new(),
                        pinned: false,
                        manifest: stored.manifest,
                    });
                    entry.destinations.push(destination.name());
                    entry.pinned |= stored.pinned;
                }
            }
            Err(e) => errors.push(format!("{}: {e:#}", destination.name())),
        }
    }
    let rows: Vec<&Listed> = merged.values().rev().collect();
    if json {
        let text = serde_json::to_string_pretty(&rows).map_err(anyhow::Error::from)?;
        out!("{text}");
    } else {
        out!(
            "{:<44} {:<20} {:>10} {:>9} {:>11} {:>11}  {:<20} STORED IN",
            "ID",
            "CREATED (UTC)",
            "REVISION",
            "KEYS",
            "DB SIZE",
            "SIZE",
            "LABEL"
        );
        for r in &rows {
            let m = &r.manifest;
            let pinned = if r.pinned { " (pinned)" } else { "" };
            let status = m.snapshot.status;
            out!(
                "{:<44} {:<20} {:>10} {:>9} {:>11} {:>11}  {:<20} {}{pinned}",
                m.id.to_string(),
                m.created.format("%Y-%m-%d %H:%M:%S").to_string(),
                status.map_or(m.etcd.revision, |s| s.revision),
                status.map_or("-".to_string(), |s| s.live_keys.to_string()),
                format_size(status.map_or(m.etcd.db_size, |s| s.total_size)),
                format_size(m.artifact.size),
                m.label.as_deref().unwrap_or("-"),
                r.destinations.join(","),
            );
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!("cannot list every destination:\n  {}", errors.join("\n  ")).into())
    }
}

/// Every configured destination; an S3 store that cannot even be set up is reported, not fatal.
pub(crate) async fn destinations(settings: &Settings) -> (Vec<Destination>, Vec<String>) {
    let (out, errors) = crate::store::open_all(settings).await;
    (out, errors.iter().map(|(name, e)| format!("{name}: {e:#}")).collect())
}

fn fail_if(errors: Vec<String>, what: &str) -> Result<(), Failure> {
    if errors.is_empty() { Ok(()) } else { Err(anyhow::anyhow!("{what}:\n  {}", errors.join("\n  ")).into()) }
}

async fn prune_all(settings: &Settings, dry_run: bool, now: DateTime<Utc>, json: bool) -> Result<(), Failure> {
    let (destinations, mut errors) = destinations(settings).await;
    let mut reports = Vec::new();
    for destination in &destinations {
        let options = PruneOptions {
            policy: policy_for(settings, destination).clone(),
            timezone: settings.timezone,
            now,
            leftover_grace: settings.leftover_grace,
            dry_run,
            this_run: None,
        };
        match prune(destination, &options).await {
            Ok(report) => {
                errors.extend(report.errors.iter().map(|e| format!("{}: {e}", destination.name())));
                reports.push(report);
            }
            Err(e) => errors.push(format!("{}: {e:#}", destination.name())),
        }
    }
    if json {
        out!("{}", serde_json::to_string_pretty(&reports).map_err(anyhow::Error::from)?);
    } else {
        for r in &reports {
            print_prune(r, settings.leftover_grace);
        }
    }
    fail_if(errors, "pruning did not finish everywhere")
}

fn print_prune(r: &PruneReport, grace: std::time::Duration) {
    let kept = r.decisions.iter().filter(|d| d.keep).count();
    out!("{} ({}): {} backups, keep {kept}, remove {}", r.destination, r.place, r.decisions.len(), r.removed());
    for d in &r.decisions {
        let reasons: Vec<String> = d.reasons.iter().map(ToString::to_string).collect();
        out!("  {:<8} {:<44} {}", if d.keep { "keep" } else { "remove" }, d.id.to_string(), reasons.join(", "));
    }
    for l in &r.leftovers {
        let action = if l.clean { "clean" } else { "leave" };
        let age =
            if l.clean { String::new() } else { format!(" (younger than {})", humantime::format_duration(grace)) };
        out!("  {action:<8} {:<44} {} since {}{age}", l.name, l.kind, l.time.format("%Y-%m-%d %H:%M:%S UTC"));
    }
    for i in &r.ignored {
        out!("  {:<8} {:<44} {}", "ignored", i.name, i.why);
    }
    if r.dry_run {
        out!("  (dry run: nothing was removed)");
    }
}

/// The destinations holding backup `id`, with how each holds it. Listing errors go to `errors`, and so
/// does "not found" when no destination holds it and none failed to list.
async fn holding<'a>(
    destinations: &'a [Destination],
    id: &BackupId,
    errors: &mut Vec<String>,
) -> Vec<(&'a Destination, crate::store::Stored)> {
    let selector = Selector::Id(id.clone());
    let (found, unlisted) = crate::restore::locate(destinations, &selector).await;
    errors.extend(unlisted);
    let holders = found.map(|f| f.holders).unwrap_or_default();
    if holders.is_empty() && errors.is_empty() {
        errors.push(format!("{} (see etcd-backupd list)", crate::restore::not_found(&selector)));
    }
    holders
}

async fn delete(settings: &Settings, id: &BackupId, force: bool) -> Result<(), Failure> {
    let (destinations, mut errors) = destinations(settings).await;
    for (destination, stored) in holding(&destinations, id, &mut errors).await {
        if stored.pinned && !force {
            errors.push(format!(
                "{}: {id} is pinned; unpin it first (etcd-backupd unpin {id}) or pass --force",
                destination.name()
            ));
            continue;
        }
        match destination.remove(&[&stored]).await.pop() {
            Some((_, why)) => errors.push(format!("{}: {why}", destination.name())),
            None => {
                tracing::info!(destination = destination.name(), id = %id, "deleted backup");
                out!("deleted {id} from {}", destination.name());
            }
        }
    }
    fail_if(errors, "delete did not finish")
}

async fn set_pin(settings: &Settings, id: &BackupId, pinned: bool) -> Result<(), Failure> {
    let (destinations, mut errors) = destinations(settings).await;
    for (destination, _) in holding(&destinations, id, &mut errors).await {
        match destination.set_pin(id, pinned).await {
            Ok(()) => out!("{} {id} in {}", if pinned { "pinned" } else { "unpinned" }, destination.name()),
            Err(e) => errors.push(format!("{}: {e:#}", destination.name())),
        }
    }
    fail_if(errors, if pinned { "pin did not finish" } else { "unpin did not finish" })
}

async fn verify(
    settings: &Settings,
    selector: &Selector,
    identity: Option<&std::path::Path>,
    cancel: &CancellationToken,
    json: bool,
) -> Result<(), Failure> {
    let identities = match identity {
        Some(path) => Some(std::sync::Arc::new(crate::crypto::read_identities(path).map_err(|e| anyhow::anyhow!(e))?)),
        None => None,
    };
    let (destinations, setup_errors) = destinations(settings).await;
    let mut errors = setup_errors.clone();
    let found = crate::restore::find(&destinations, selector).await?;
    let scratch = crate::scratch::scratch_dir()?;
    let checked_as = if identities.is_some() { "decrypted" } else { "sha256" };
    let mut copies = Vec::new();
    // Each copy is checked against its own manifest.
    for (holder, stored) in &found.holders {
        let m = &stored.manifest;
        let checked = async {
            if let Some(ids) = &identities {
                // Decrypting checks the artifact's size and sha256 too.
                let plain = scratch.path().join("plain.db");
                let checked = crate::restore::fetch_and_decrypt(holder, m, ids, scratch.path(), &plain, cancel).await;
                let _ = std::fs::remove_file(&plain);
                return anyhow::Ok(Some(checked?.status));
            }
            // Fetching checks the artifact's size and sha256 against the manifest.
            let artifact = crate::restore::fetch(holder, m, scratch.path(), cancel).await?;
            if !matches!(holder, Destination::Local(_)) {
                let _ = std::fs::remove_file(&artifact);
            }
            anyhow::Ok(None)
        }
        .await;
        let mut copy = crate::json::Copy {
            destination: holder.name(),
            ok: checked.is_ok(),
            checked: checked_as,
            revision: None,
            keys: None,
            hash: None,
            error: None,
        };
        match checked {
            Ok(Some(s)) => {
                (copy.revision, copy.keys, copy.hash) =
                    (Some(s.served_revision()), Some(s.live_keys), Some(format!("{:x}", s.hash)));
                if !json {
                    out!(
                        "{} {}: OK (decrypted, decompressed, trailer, sizes and database structure check out; revision {}, {} keys ({} with history), hash {:x})",
                        holder.name(),
                        m.id,
                        s.served_revision(),
                        s.live_keys,
                        s.total_key,
                        s.hash
                    );
                }
            }
            Ok(None) if !json => out!("{} {}: OK (artifact size and sha256 match the manifest)", holder.name(), m.id),
            Ok(None) => {}
            Err(e) => {
                copy.error = Some(format!("{e:#}"));
                errors.push(format!("{}: {e:#}", holder.name()));
            }
        }
        copies.push(copy);
    }
    if json {
        let ok = errors.is_empty();
        print_json(&crate::json::Verify { ok, id: found.manifest.id.to_string(), copies, errors: setup_errors })?;
    }
    fail_if(errors, &format!("backup {} did not verify", found.manifest.id))
}

async fn drill(
    settings: &Settings,
    selector: &Selector,
    identity: Option<&std::path::Path>,
    etcd_bin: Option<&std::path::Path>,
    cancel: &CancellationToken,
    json: bool,
) -> Result<(), Failure> {
    let started = Utc::now();
    let (id, result) = crate::drill::drill(settings, selector, identity, etcd_bin, cancel).await;
    // An interrupted drill proved nothing either way: it is not recorded as a failure.
    let interrupted = result.as_ref().is_err_and(|e| e.downcast_ref::<crate::interrupt::Interrupted>().is_some());
    if !interrupted {
        crate::drill::record(settings, &crate::host::state_dir(), started, id.as_deref(), &result).await;
        let mut alerts = crate::alerts::Pending::default();
        crate::drill::notify(settings, id.as_deref(), &result, &mut alerts);
        alerts.wait().await;
    }
    if json {
        print_json(&crate::json::Drill::of(id.as_deref(), &result))?;
    }
    let report = result?;
    if json {
        return Ok(());
    }
    out!(
        "drill passed: {} (from {}) restored, and a throwaway etcd served revision {} with {} keys, as the manifest says ({})",
        report.id,
        report.from,
        report.observed.revision,
        report.observed.keys,
        humantime::format_duration(std::time::Duration::from_millis(report.duration.as_millis() as u64))
    );
    Ok(())
}

enum RestoreTarget {
    DataDir(PathBuf, MemberFlags, Option<PathBuf>),
    File(PathBuf),
}

async fn restore(
    settings: &Settings,
    selector: &Selector,
    identity: &std::path::Path,
    target: RestoreTarget,
    cancel: &CancellationToken,
) -> Result<(), Failure> {
    let identities = crate::crypto::read_identities(identity).map_err(|e| anyhow::anyhow!(e))?;
    // Refuse a bad target before fetching anything.
    match &target {
        RestoreTarget::DataDir(dir, _, etcd_bin) => {
            crate::restore::check_new_data_dir(dir)?;
            crate::restore::restore_tool(etcd_bin.as_deref())?;
        }
        // symlink_metadata: a dangling symlink exists too, and renaming over it would replace the link.
        RestoreTarget::File(file) if file.symlink_metadata().is_ok() => {
            return Err(anyhow::anyhow!("'{}' already exists: choose a new file", file.display()).into());
        }
        RestoreTarget::File(_) => {}
    }
    let (destinations, _) = destinations(settings).await;
    let found = crate::restore::find(&destinations, selector).await?;
    let m = found.manifest.clone();
    let scratch = crate::scratch::scratch_dir()?;
    let snapshot = match &target {
        RestoreTarget::File(file) => file.clone(),
        RestoreTarget::DataDir(..) => scratch.path().join("snapshot.db"),
    };
    let identities = std::sync::Arc::new(identities);
    // Local first; a damaged or unreadable copy falls back to the next destination that holds it.
    let mut failures = Vec::new();
    let mut plain = None;
    for (holder, stored) in &found.holders {
        tracing::info!(id = %m.id, from = holder.name(), "restoring");
        let attempt =
            crate::restore::fetch_and_decrypt(holder, &stored.manifest, &identities, scratch.path(), &snapshot, cancel)
                .await;
        match attempt {
            Ok(p) => {
                plain = Some(p);
                break;
            }
            Err(e) => {
                tracing::warn!(from = holder.name(), error = %format!("{e:#}"), "this copy cannot be restored; trying the next");
                failures.push(format!("{}: {e:#}", holder.name()));
            }
        }
    }
    let Some(plain) = plain else {
        if cancel.is_cancelled() {
            return Err(anyhow::Error::new(crate::interrupt::Interrupted).into());
        }
        return Err(anyhow::anyhow!("no copy of {} could be restored:\n  {}", m.id, failures.join("\n  ")).into());
    };
    match target {
        RestoreTarget::File(file) => {
            out!(
                "wrote the snapshot of {} (revision {}, {}) to {}",
                m.id,
                m.etcd.revision,
                format_size(plain.size),
                file.display()
            );
            out!("it is exactly what etcd sent: `etcdutl snapshot restore {}` checks its hash", file.display());
        }
        RestoreTarget::DataDir(dir, flags, etcd_bin) => {
            crate::restore::restore_into(&snapshot, &dir, &flags, etcd_bin.as_deref(), cancel)?;
            let _ = std::fs::remove_file(&snapshot);
            out!("restored {} (revision {}) into {}", m.id, m.etcd.revision, dir.display());
            out!("next steps, on every member:");
            if flags.initial_cluster.as_deref().is_some_and(|c| c.contains(',')) {
                out!(
                    "  0. restore {} the same way (done on this one): the same --initial-cluster and \
                     --initial-cluster-token, the member's own --name and --initial-advertise-peer-urls",
                    m.id
                );
            }
            out!(
                "  1. stop the Kubernetes API servers (kubeadm: move kube-apiserver.yaml out of /etc/kubernetes/manifests)"
            );
            out!("  2. stop etcd");
            out!("  3. move the old data dir aside and put {} in its place (keep owner and mode 0700)", dir.display());
            out!("  4. start etcd and check `etcdctl endpoint status`, then start the API servers");
        }
    }
    Ok(())
}
