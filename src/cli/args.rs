//! The command line's grammar (clap): every command, its arguments and their help, which the man page
//! and the shell completions are generated from.

use crate::config::DEFAULT_CONFIG_PATH;
use crate::manifest::{BackupId, check_label};
use crate::restore::Selector;
use anyhow::Result;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

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

// Parsed once per run: the size of the largest command (restore's flags) costs nothing.
#[allow(clippy::large_enum_variant)]
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
    #[command(group(clap::ArgGroup::new("target").required(true).args(["data_dir", "output", "files_only"])))]
    Restore {
        /// A backup id, or `latest`.
        #[arg(default_value = "latest", value_parser = parse_selector, conflicts_with = "before")]
        backup: Selector,
        /// The newest backup taken before this time (RFC 3339).
        #[arg(long, value_parser = parse_time)]
        before: Option<DateTime<Utc>>,
        /// Restore the cluster as it was at this revision: a backup and its delta segments ([deltas]),
        /// replayed with the original revision numbers.
        #[arg(long, value_name = "REV", conflicts_with_all = ["backup", "before", "at", "files", "files_only"])]
        revision: Option<i64>,
        /// Restore the cluster as it was at this time (RFC 3339): the newest revision received by then.
        #[arg(long, value_name = "TIME", value_parser = parse_time, conflicts_with_all = ["backup", "before", "files", "files_only"])]
        at: Option<DateTime<Utc>>,
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
        /// Raise the restored revision by this much and mark it compacted, so that Kubernetes API
        /// servers and every watching client start over instead of serving stale caches (needs etcdutl
        /// 3.5.10 or newer; older tools restore without it, and say what that means).
        #[arg(long, value_name = "N", default_value_t = crate::restore::DEFAULT_BUMP, conflicts_with = "no_bump_revision")]
        bump_revision: u64,
        /// Keep the snapshot's revision (an etcd that no Kubernetes, and no client with a watch, uses).
        #[arg(long)]
        no_bump_revision: bool,
        /// Also extract the backup's control-plane files ([files]) into this folder, each checked against
        /// the sha256 its manifest lists, with their modes, mtimes and (as root) owners.
        #[arg(long, value_name = "DIR")]
        files: Option<PathBuf>,
        /// With --files: write over files that exist in DIR.
        #[arg(long, requires = "files")]
        force: bool,
        /// Only extract the files (--files DIR), not the snapshot.
        #[arg(long, requires = "files", conflicts_with_all = ["data_dir", "output"])]
        files_only: bool,
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

pub(super) fn parse_selector(s: &str) -> Result<Selector, String> {
    Selector::parse(s)
}

pub(super) fn parse_wait(s: &str) -> Result<std::time::Duration, String> {
    crate::config::units::parse_duration(s)
}

pub(super) fn parse_id(s: &str) -> Result<BackupId, String> {
    BackupId::parse(s)
}

pub(super) fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("\"{s}\" is not a time: {e}; expected RFC 3339, like 2026-11-22T10:00:00Z"))
}

pub(super) fn parse_label(s: &str) -> Result<String, String> {
    check_label(s).map(|()| s.to_string())
}
