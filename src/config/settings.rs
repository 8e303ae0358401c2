//! Validated, typed settings: what the program reads of its config. Built by `validate`.

use std::path::PathBuf;
use std::time::Duration;

use crate::manifest::{ClusterName, Compression};
use crate::retention::Policy;

pub const DEFAULT_LOCAL_DIR: &str = "/var/lib/etcd-backupd/backups";
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
pub const DEFAULT_PART_SIZE: u64 = 8 * 1024 * 1024;
/// One S3 request, a whole part included, gets this long per attempt.
pub const DEFAULT_S3_TIMEOUT: Duration = Duration::from_secs(120);
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
/// The least `[backup] max_rate`: slower, an 8 GiB database would take more than two hours.
pub const MIN_RATE: u64 = 1024 * 1024;
pub const DEFAULT_LEFTOVER_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Everything the program needs to know, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// None on a verification host, which verifies, restores, drills, lists and prunes but never backs up.
    pub etcd: Option<EtcdSettings>,
    pub cluster: ClusterName,
    pub compression: Compression,
    pub encryption: EncryptionSettings,
    pub local: LocalSettings,
    pub s3: Option<S3Settings>,
    /// Time zone of the schedule and of calendar retention buckets.
    pub timezone: chrono_tz::Tz,
    pub schedule: ScheduleSettings,
    /// Prometheus textfile to write after every run (node_exporter's textfile collector).
    pub metrics_textfile: Option<PathBuf>,
    /// Leftovers of crashed runs younger than this are left alone: their run may still be going.
    pub leftover_grace: Duration,
    /// `[backup] max_rate`: the snapshot stream averages at most this many bytes per second.
    pub max_rate: Option<std::num::NonZeroU64>,
    pub drill: DrillSettings,
    pub coordination: CoordinationSettings,
    pub notify: NotifySettings,
    /// The control-plane files archived beside each snapshot; `None`: the snapshot alone.
    pub files: Option<FilesSettings>,
    /// `[deltas]`, when enabled: the cluster's changes between snapshots, for point-in-time recovery.
    pub deltas: Option<DeltasSettings>,
}

/// `[deltas]`: how often and how large segments are closed, and how long they are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltasSettings {
    /// A segment is closed this long after its first change at the latest: the most a lost member's
    /// host can take with it.
    pub max_interval: Duration,
    /// A segment is closed once its body holds this many bytes (after the revision that crossed it).
    pub max_size: u64,
    /// Segments are removed this long after their base was taken, if their base is kept longer;
    /// `None`: as long as their base.
    pub keep_for: Option<Duration>,
}

pub const DEFAULT_DELTA_INTERVAL: Duration = Duration::from_secs(15);
pub const DEFAULT_DELTA_SIZE: u64 = 8 * 1024 * 1024;

/// `[files]`: what the companion archive holds and who can open it.
#[derive(Debug, Clone)]
pub struct FilesSettings {
    pub preset: Option<crate::archive::preset::Preset>,
    /// Absolute; may hold `*`.
    pub paths: Vec<PathBuf>,
    /// Paths matching any of these (and everything under a matching folder) are left out.
    pub exclude: Vec<glob::Pattern>,
    /// Who can decrypt the archive; empty (with no `recipients_file`): `[encryption]`'s.
    pub recipients: Vec<crate::crypto::PublicKey>,
    pub recipients_file: Option<PathBuf>,
}

/// Who is told how backups go: healthchecks.io-style ping URLs and JSON webhooks (none by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifySettings {
    /// Pinged `<url>/start` when a run starts, `<url>` when it succeeds, `<url>/fail` when it fails.
    pub healthchecks: Vec<String>,
    /// POSTed a JSON event when a backup run or a drill succeeds or fails.
    pub webhooks: Vec<String>,
    /// Pinged `<url>` when a drill passes, `<url>/fail` when it fails: drills are a check of their own.
    pub drill_healthchecks: Vec<String>,
    /// The longest one attempt may take (three attempts at most).
    pub timeout: Duration,
}

impl Default for NotifySettings {
    fn default() -> Self {
        NotifySettings {
            healthchecks: Vec::new(),
            webhooks: Vec::new(),
            drill_healthchecks: Vec::new(),
            timeout: DEFAULT_NOTIFY_TIMEOUT,
        }
    }
}

/// One notification attempt gets this long.
pub const DEFAULT_NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// How the daemons of one etcd cluster share the schedule's slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoordinationMode {
    /// The daemons take each slot once, through etcd (a lease-bound lock and a record per slot).
    Cluster,
    /// Every member's daemon backs up on its own.
    Member,
}

#[derive(Debug, Clone)]
pub struct CoordinationSettings {
    pub mode: CoordinationMode,
    /// Where the locks and records live in etcd: `/etcd-backupd/<cluster>/` by default.
    pub prefix: String,
    /// How long a slot stays taken after its daemon stops renewing it (it died, or its host did).
    pub lease_ttl: Duration,
    /// How long the leader (or a sick or lagging member) leaves the slot to a follower.
    pub leader_delay: Duration,
}

pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);
pub const DEFAULT_LEADER_DELAY: Duration = Duration::from_secs(120);

/// Restore drills: where the identity is, and when the daemon runs them (never, by default).
#[derive(Debug, Clone, Default)]
pub struct DrillSettings {
    pub identity_file: Option<PathBuf>,
    /// In daemon mode, drill the newest backup on this schedule.
    pub schedule: Option<crate::schedule::Schedule>,
    /// The folder holding `etcd` and `etcdutl` (or 3.4's `etcdctl`); default: PATH.
    pub etcd_bin: Option<PathBuf>,
}

/// When the daemon takes backups.
#[derive(Debug, Clone)]
pub struct ScheduleSettings {
    pub schedule: crate::schedule::Schedule,
    pub catch_up: bool,
    pub skip_unchanged: bool,
    pub max_attempts: u32,
    /// The wait before the first retry; each further one doubles it.
    pub retry_delay: Duration,
    /// On SIGTERM, how long a running backup may take to finish before it is aborted cleanly.
    pub stop_grace: Duration,
}

pub const DEFAULT_CRON: &str = "0 */6 * * *";

#[derive(Debug, Clone)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    pub cacert: Option<PathBuf>,
    pub client_cert: Option<ClientCert>,
    pub auth: Option<EtcdAuth>,
    pub dial_timeout: Duration,
    pub snapshot_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdAuth {
    pub username: String,
    pub password_file: PathBuf,
}

#[derive(Debug, Clone, Default)]
pub struct EncryptionSettings {
    /// Recipients written inline in the config.
    pub recipients: Vec<crate::crypto::PublicKey>,
    pub recipients_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct LocalSettings {
    pub dir: PathBuf,
    pub retention: Policy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    pub bucket: String,
    /// Empty, or ends with `/`.
    pub prefix: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub force_path_style: bool,
    pub storage_class: Option<String>,
    pub sse: Option<ServerSideEncryption>,
    pub checksums: ChecksumMode,
    pub ca_file: Option<PathBuf>,
    pub part_size: u64,
    /// The longest one attempt of one request may take, a whole part's upload included.
    pub timeout: Duration,
    pub proxy: Proxy,
    pub retention: Policy,
}

/// How S3 is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proxy {
    /// HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY, as curl and the AWS CLI read them.
    Environment,
    /// Directly, whatever the environment says (`proxy = ""`).
    None,
    /// Through this proxy (`http://host:port`), whatever the environment says (NO_PROXY still applies).
    Url(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerSideEncryption {
    S3,
    Kms { key_id: Option<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumMode {
    /// Send a CRC32 with every part and carry it into the completed upload (AWS, recent MinIO).
    WhenSupported,
    /// Only checksums the API requires (older MinIO, Ceph, R2).
    WhenRequired,
}

/// One problem with one key of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Dotted key path, such as `etcd.dial_timeout`.
    pub key: String,
    pub message: String,
}

impl Issue {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Issue { key: key.into(), message: message.into() }
    }
}

/// A backup (or the daemon) asked of a config without `[etcd]`, which is fine for a verification host.
#[derive(Debug, thiserror::Error)]
#[error(
    "the [etcd] table is missing, and backups need it: add [etcd] with endpoints = [\"https://127.0.0.1:2379\"] (the local member). Without it a config serves a verification host, which verifies, restores, drills, lists and prunes"
)]
pub struct NoEtcdTable;

impl Settings {
    /// The etcd member to back up.
    pub fn etcd(&self) -> Result<&EtcdSettings, NoEtcdTable> {
        self.etcd.as_ref().ok_or(NoEtcdTable)
    }
}
