//! The command line: parse, dispatch, print, and map outcomes to exit codes
//! (0 ok, 1 failure, 2 usage, 78 bad config).

use std::process::ExitCode;

use anyhow::Result;
use chrono::Utc;
use clap::Parser;
use serde::Serialize;

use crate::backup::BackupRequest;
use crate::config::{self, ConfigError, Settings};
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

pub mod args;
mod change;
mod point;
mod prove;
mod show;

use crate::restore::Target as RestoreTarget;
pub use args::{Cli, Command};
use change::{backup, delete, prune_all, set_pin};
use prove::{drill, restore, verify};
use show::{list, print_summary, status};

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
        Err(Failure::Other(e)) if crate::interrupt::was_interrupted(&e) => {
            eprintln!("etcd-backupd: {e:#}");
            ExitCode::from(crate::interrupt::EXIT_INTERRUPTED)
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
            show::check_coordination(&settings).await;
            Ok(())
        }
        Command::Backup { label, pin, wait, json } => {
            let cancel = crate::interrupt::on_signals();
            let slot = Some(crate::backup::SlotRun::now(&settings.schedule.schedule, chrono::Utc::now(), false));
            // The first SIGINT or SIGTERM stops a one-shot backup wherever it is: waiting for the lock,
            // streaming, or after its commit (catch-up uploads and pruning wait for the next run).
            let stopping = cancel.clone();
            let request = BackupRequest { label, pin, cancel, stopping, slot, ..BackupRequest::default() };
            backup(&settings, request, wait, json).await
        }
        Command::Run => crate::daemon::run(cli.config.clone(), settings).await.map_err(Failure::Other),
        Command::Status { json } => status(&settings, json),
        Command::Verify { backup, identity, json } => {
            verify(&settings, &backup, identity.as_deref(), &crate::interrupt::on_signals(), json).await
        }
        Command::Restore {
            backup,
            before,
            revision,
            at,
            identity,
            data_dir,
            output,
            name,
            initial_cluster,
            initial_advertise_peer_urls,
            initial_cluster_token,
            etcd_bin,
            bump_revision,
            no_bump_revision,
            files,
            force,
            files_only: _,
        } => {
            let selector = before.map(Selector::Before).unwrap_or(backup);
            let bump_revision = (!no_bump_revision).then_some(bump_revision);
            let flags = MemberFlags {
                name,
                initial_cluster,
                initial_advertise_peer_urls,
                initial_cluster_token,
                bump_revision,
            };
            let point = match (revision, at) {
                (Some(r), _) => Some(crate::deltas::chain::Target::Revision(r)),
                (None, Some(t)) => Some(crate::deltas::chain::Target::Time(t)),
                (None, None) => None,
            };
            let tools = etcd_bin.clone();
            let target = match (data_dir, output) {
                (Some(dir), _) => Some(RestoreTarget::DataDir(dir, flags, etcd_bin)),
                (None, Some(file)) => Some(RestoreTarget::File(file)),
                // clap requires one of the two unless --files-only.
                (None, None) => None,
            };
            let files = files.map(|dir| crate::restore::files::Into::Folder { dir, force });
            let cancel = crate::interrupt::on_signals();
            match (point, target) {
                (Some(point), Some(target)) => {
                    point::restore_point(&settings, point, &identity, target, tools.as_deref(), &cancel).await
                }
                (_, target) => restore(&settings, &selector, &identity, target, files, &cancel).await,
            }
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

/// Every configured destination; an S3 store that cannot even be set up is reported, not fatal.
pub(crate) async fn destinations(settings: &Settings) -> (Vec<Destination>, Vec<String>) {
    let (out, errors) = crate::store::open_all(settings).await;
    (out, errors.iter().map(|(name, e)| format!("{name}: {e:#}")).collect())
}

fn fail_if(errors: Vec<String>, what: &str) -> Result<(), Failure> {
    if errors.is_empty() { Ok(()) } else { Err(anyhow::anyhow!("{what}:\n  {}", errors.join("\n  ")).into()) }
}
