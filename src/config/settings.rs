//! Validated, typed settings built from the raw config. Pure: no file system, no network.

use std::path::PathBuf;
use std::time::Duration;

use super::raw::{RawConfig, RawDrill, RawEtcd, RawNotify, RawRetention, RawS3};
use super::units::{parse_duration, parse_size};
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
    pub drill: DrillSettings,
    pub notify: NotifySettings,
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

fn validate_notify(raw: RawNotify, issues: &mut Vec<Issue>) -> NotifySettings {
    let mut urls = |list: Option<Vec<String>>, key: &str| -> Vec<String> {
        let list = list.unwrap_or_default();
        for (i, url) in list.iter().enumerate() {
            let ok = (url.starts_with("https://") || url.starts_with("http://")) && !url.contains(char::is_whitespace);
            if !ok {
                issues.push(Issue::new(
                    format!("{key}[{i}]"),
                    "is not a URL: expected https://HOST/PATH (http:// for a host on this network)",
                ));
            }
        }
        list.into_iter().map(|u| u.trim_end_matches('/').to_string()).collect()
    };
    let healthchecks = urls(raw.healthchecks, "notify.healthchecks");
    let webhooks = urls(raw.webhooks, "notify.webhooks");
    let drill_healthchecks = urls(raw.drill_healthchecks, "notify.drill_healthchecks");
    NotifySettings {
        healthchecks,
        webhooks,
        drill_healthchecks,
        timeout: duration_key(raw.timeout, "notify.timeout", DEFAULT_NOTIFY_TIMEOUT, issues),
    }
}

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
    pub recipients: Vec<String>,
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

/// Checks the raw config and builds settings, or lists every problem found.
pub fn validate(raw: RawConfig) -> Result<Settings, Vec<Issue>> {
    let mut issues = Vec::new();
    let etcd = validate_etcd(raw.etcd, &mut issues);

    let cluster = match raw.backup.cluster {
        None => ClusterName::default(),
        Some(name) => ClusterName::parse(&name).unwrap_or_else(|e| {
            issues.push(Issue::new("backup.cluster", e));
            ClusterName::default()
        }),
    };

    let level = match raw.backup.compression_level {
        None => DEFAULT_ZSTD_LEVEL,
        Some(l) if (1..=19).contains(&l) => l as i32,
        Some(l) => {
            issues.push(Issue::new(
                "backup.compression_level",
                format!(
                    "{l} is out of range: expected a zstd level from 1 (fastest) to 19 (smallest); 3 is the default"
                ),
            ));
            DEFAULT_ZSTD_LEVEL
        }
    };
    let compression = match raw.backup.compression.as_deref() {
        None | Some("zstd") => Compression::Zstd { level },
        Some("none") => Compression::None,
        Some(other) => {
            issues.push(Issue::new(
                "backup.compression",
                format!("\"{other}\" is not supported: expected \"zstd\" or \"none\""),
            ));
            Compression::Zstd { level }
        }
    };

    let encryption = EncryptionSettings {
        recipients: raw.encryption.recipients.unwrap_or_default().into_iter().map(|r| r.trim().to_string()).collect(),
        recipients_file: path_key(raw.encryption.recipients_file, "encryption.recipients_file", &mut issues),
    };
    for (i, r) in encryption.recipients.iter().enumerate() {
        if let Err(e) = crate::crypto::parse_recipient(r) {
            issues.push(Issue::new(format!("encryption.recipients[{i}]"), e));
        }
    }

    let local = LocalSettings {
        dir: path_key(raw.local.dir, "local.dir", &mut issues).unwrap_or_else(|| PathBuf::from(DEFAULT_LOCAL_DIR)),
        retention: retention(raw.local.retention, "local.retention", Policy::local_default(), &mut issues),
    };

    let s3 = raw.s3.map(|s3| validate_s3(s3, &mut issues));

    let raw_schedule = raw.schedule.unwrap_or_default();
    let timezone = match raw_schedule.timezone {
        None => chrono_tz::Tz::UTC,
        Some(name) => name.parse().unwrap_or_else(|_| {
            issues.push(Issue::new(
                "schedule.timezone",
                format!("\"{name}\" is not an IANA time zone: expected a name like \"UTC\", \"Europe/Berlin\" or \"America/New_York\""),
            ));
            chrono_tz::Tz::UTC
        }),
    };
    let jitter = match raw_schedule.jitter.as_deref().map(parse_duration) {
        None => Duration::ZERO,
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            issues.push(Issue::new("schedule.jitter", e));
            Duration::ZERO
        }
    };
    let cron = raw_schedule.cron.unwrap_or_else(|| DEFAULT_CRON.to_string());
    let schedule = crate::schedule::Schedule::parse(&cron, timezone, jitter).unwrap_or_else(|e| {
        issues.push(Issue::new("schedule.cron", e));
        crate::schedule::Schedule::default_for(timezone)
    });
    // Over a year of fires from a fixed date (DST changes and month ends included).
    let probe = chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default(); // 2026-01-01
    if !jitter.is_zero()
        && let Some(shortest) = schedule.shortest_interval(probe, 2000)
        && jitter >= shortest
    {
        issues.push(Issue::new(
            "schedule.jitter",
            format!(
                "{} is not shorter than the schedule's shortest interval ({}): a delayed run would reach the next fire time; make the jitter shorter than that",
                humantime::format_duration(jitter),
                humantime::format_duration(shortest)
            ),
        ));
    }
    let max_attempts = match raw_schedule.max_attempts {
        None => 3,
        Some(n) if (1..=20).contains(&n) => n,
        Some(n) => {
            issues.push(Issue::new(
                "schedule.max_attempts",
                format!("{n} is out of range: expected 1 (no retries) to 20"),
            ));
            3
        }
    };
    let schedule = ScheduleSettings {
        schedule,
        catch_up: raw_schedule.catch_up.unwrap_or(true),
        skip_unchanged: raw_schedule.skip_unchanged.unwrap_or(false),
        max_attempts,
        retry_delay: duration_key(
            raw_schedule.retry_delay,
            "schedule.retry_delay",
            Duration::from_secs(30),
            &mut issues,
        ),
        stop_grace: duration_key(raw_schedule.stop_grace, "schedule.stop_grace", Duration::from_secs(60), &mut issues),
    };
    let metrics_textfile = raw.metrics.and_then(|m| path_key(m.textfile, "metrics.textfile", &mut issues));
    let leftover_grace =
        duration_key(raw.backup.leftover_grace, "backup.leftover_grace", DEFAULT_LEFTOVER_GRACE, &mut issues);
    let drill = raw.drill.map(|d| validate_drill(d, timezone, &mut issues)).unwrap_or_default();
    let notify = raw.notify.map(|n| validate_notify(n, &mut issues)).unwrap_or_default();

    if !issues.is_empty() {
        return Err(issues);
    }
    Ok(Settings {
        etcd,
        cluster,
        compression,
        encryption,
        local,
        s3,
        timezone,
        schedule,
        metrics_textfile,
        leftover_grace,
        drill,
        notify,
    })
}

fn validate_drill(raw: RawDrill, timezone: chrono_tz::Tz, issues: &mut Vec<Issue>) -> DrillSettings {
    let identity_file = path_key(raw.identity_file, "drill.identity_file", issues);
    let schedule = raw.cron.and_then(|cron| match crate::schedule::Schedule::parse(&cron, timezone, Duration::ZERO) {
        Ok(s) => Some(s),
        Err(e) => {
            issues.push(Issue::new("drill.cron", e));
            None
        }
    });
    if schedule.is_some() && identity_file.is_none() && !issues.iter().any(|i| i.key == "drill.identity_file") {
        issues.push(Issue::new(
            "drill.cron",
            "scheduled drills need drill.identity_file: the age identity (private key) that can decrypt the backups. Keep it off the etcd hosts: run drills on a separate verification host",
        ));
    }
    DrillSettings { identity_file, schedule, etcd_bin: path_key(raw.etcd_bin, "drill.etcd_bin", issues) }
}

fn validate_etcd(raw: Option<RawEtcd>, issues: &mut Vec<Issue>) -> Option<EtcdSettings> {
    let raw = raw?;
    let endpoints = raw.endpoints.unwrap_or_default();
    if endpoints.is_empty() {
        issues.push(Issue::new(
            "etcd.endpoints",
            "no endpoints: list the local member, for example endpoints = [\"https://127.0.0.1:2379\"]",
        ));
    }
    let mut any_https = false;
    for (i, ep) in endpoints.iter().enumerate() {
        match endpoint_scheme(ep) {
            Ok(https) => any_https |= https,
            Err(e) => issues.push(Issue::new(format!("etcd.endpoints[{i}]"), e)),
        }
    }

    let cacert = path_key(raw.cacert, "etcd.cacert", issues);
    let cert = path_key(raw.cert, "etcd.cert", issues);
    let key = path_key(raw.key, "etcd.key", issues);
    let client_cert = match (cert, key) {
        (Some(cert), Some(key)) => Some(ClientCert { cert, key }),
        (Some(_), None) => {
            issues.push(Issue::new(
                "etcd.key",
                "etcd.cert is set but etcd.key is not: a client certificate needs its private key",
            ));
            None
        }
        (None, Some(_)) => {
            issues.push(Issue::new(
                "etcd.cert",
                "etcd.key is set but etcd.cert is not: a client key needs its certificate",
            ));
            None
        }
        (None, None) => None,
    };
    if !any_https && !endpoints.is_empty() && (cacert.is_some() || client_cert.is_some()) {
        issues.push(Issue::new(
            "etcd.endpoints",
            "TLS files are configured but no endpoint uses https://: write the endpoints as https://HOST:PORT",
        ));
    }

    let auth = match (raw.username, path_key(raw.password_file, "etcd.password_file", issues)) {
        (Some(username), Some(password_file)) if !username.is_empty() => Some(EtcdAuth { username, password_file }),
        (Some(_), Some(_)) => {
            issues.push(Issue::new(
                "etcd.username",
                "is empty: name the etcd user, or remove username and password_file",
            ));
            None
        }
        (Some(_), None) => {
            issues.push(Issue::new(
                "etcd.password_file",
                "etcd.username is set but etcd.password_file is not: put the password in a file readable only by etcd-backupd and name it here",
            ));
            None
        }
        (None, Some(_)) => {
            issues.push(Issue::new("etcd.username", "etcd.password_file is set but etcd.username is not"));
            None
        }
        (None, None) => None,
    };

    let dial_timeout = duration_key(raw.dial_timeout, "etcd.dial_timeout", DEFAULT_DIAL_TIMEOUT, issues);
    let snapshot_timeout =
        duration_key(raw.snapshot_timeout, "etcd.snapshot_timeout", DEFAULT_SNAPSHOT_TIMEOUT, issues);

    Some(EtcdSettings { endpoints, cacert, client_cert, auth, dial_timeout, snapshot_timeout })
}

/// Returns whether the endpoint uses https, or why it is not an endpoint.
fn endpoint_scheme(ep: &str) -> Result<bool, String> {
    let (https, rest) = if let Some(rest) = ep.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = ep.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(format!("\"{ep}\" is not an endpoint URL: expected https://HOST:PORT or http://HOST:PORT"));
    };
    let authority = rest.trim_end_matches('/');
    let port = authority.rsplit_once(':').map(|(_, p)| p);
    match port {
        Some(p) if !authority.starts_with(':') && p.parse::<u16>().is_ok() => Ok(https),
        _ => Err(format!("\"{ep}\" has no host and port: expected a URL like https://127.0.0.1:2379")),
    }
}

fn validate_s3(raw: RawS3, issues: &mut Vec<Issue>) -> S3Settings {
    let bucket = raw.bucket.unwrap_or_default();
    if let Err(e) = check_bucket_name(&bucket) {
        issues.push(Issue::new("s3.bucket", e));
    }
    let prefix = match raw.prefix {
        None => String::new(),
        Some(p) if p.starts_with('/') => {
            issues.push(Issue::new(
                "s3.prefix",
                format!(
                    "\"{p}\" starts with '/': S3 keys have no leading slash; write \"{}\"",
                    p.trim_start_matches('/')
                ),
            ));
            String::new()
        }
        Some(p) if p.split('/').any(|seg| seg == ".." || seg == ".") || p.contains("//") => {
            issues.push(Issue::new(
                "s3.prefix",
                format!(
                    "\"{p}\" has an empty, \".\" or \"..\" part: S3 keys are not paths, and stores that treat them as paths would put backups elsewhere; write the prefix without them"
                ),
            ));
            String::new()
        }
        Some(p) if p.is_empty() || p.ends_with('/') => p,
        Some(p) => format!("{p}/"),
    };
    if let Some(endpoint) = &raw.endpoint
        && !(endpoint.starts_with("https://") || endpoint.starts_with("http://"))
    {
        issues.push(Issue::new("s3.endpoint", format!("\"{endpoint}\" is not a URL: expected https://HOST[:PORT]")));
    }
    if let Some(class) = &raw.storage_class
        && (class.is_empty() || !class.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
    {
        issues.push(Issue::new(
            "s3.storage_class",
            format!("\"{class}\" is not a storage class: expected a name like \"STANDARD\", \"STANDARD_IA\" or \"GLACIER_IR\""),
        ));
    }
    let sse = match raw.server_side_encryption.as_deref() {
        None => None,
        Some("AES256") => Some(ServerSideEncryption::S3),
        Some("aws:kms") => Some(ServerSideEncryption::Kms { key_id: raw.sse_kms_key_id.clone() }),
        Some(other) => {
            issues.push(Issue::new(
                "s3.server_side_encryption",
                format!("\"{other}\" is not supported: expected \"AES256\" (SSE-S3) or \"aws:kms\" (SSE-KMS)"),
            ));
            None
        }
    };
    if raw.sse_kms_key_id.is_some() && !matches!(sse, Some(ServerSideEncryption::Kms { .. })) {
        issues.push(Issue::new(
            "s3.sse_kms_key_id",
            "is set but s3.server_side_encryption is not \"aws:kms\": set server_side_encryption = \"aws:kms\" or remove the key id",
        ));
    }
    let checksums = match raw.checksums.as_deref() {
        None | Some("when_supported") => ChecksumMode::WhenSupported,
        Some("when_required") => ChecksumMode::WhenRequired,
        Some(other) => {
            issues.push(Issue::new(
                "s3.checksums",
                format!("\"{other}\" is not supported: expected \"when_supported\" (default) or \"when_required\" (older MinIO, Ceph, R2)"),
            ));
            ChecksumMode::WhenSupported
        }
    };
    let part_size = match raw.part_size.as_deref().map(parse_size) {
        None => DEFAULT_PART_SIZE,
        Some(Ok(size)) if (MIN_PART_SIZE..=MAX_PART_SIZE).contains(&size) => size,
        Some(Ok(_)) => {
            issues.push(Issue::new("s3.part_size", "must be between 5MiB and 5GiB (the S3 multipart limits)"));
            DEFAULT_PART_SIZE
        }
        Some(Err(e)) => {
            issues.push(Issue::new("s3.part_size", e));
            DEFAULT_PART_SIZE
        }
    };
    S3Settings {
        bucket,
        prefix,
        region: raw.region.filter(|r| !r.is_empty()),
        endpoint: raw.endpoint,
        force_path_style: raw.force_path_style.unwrap_or(false),
        storage_class: raw.storage_class,
        sse,
        checksums,
        ca_file: path_key(raw.ca_file, "s3.ca_file", issues),
        part_size,
        timeout: duration_key(raw.timeout, "s3.timeout", DEFAULT_S3_TIMEOUT, issues),
        proxy: match raw.proxy {
            None => Proxy::Environment,
            Some(p) if p.is_empty() => Proxy::None,
            Some(p) if (p.starts_with("http://") || p.starts_with("https://")) && p.len() > "https://".len() => {
                Proxy::Url(p)
            }
            Some(p) => {
                issues.push(Issue::new(
                    "s3.proxy",
                    format!("\"{p}\" is not a proxy URL: expected http://HOST:PORT (or \"\" for no proxy)"),
                ));
                Proxy::Environment
            }
        },
        retention: retention(raw.retention, "s3.retention", Policy::remote_default(), issues),
    }
}

/// A retention table: absent means the destination's default; present replaces it entirely.
fn retention(raw: Option<RawRetention>, key: &str, default: Policy, issues: &mut Vec<Issue>) -> Policy {
    let Some(raw) = raw else { return default };
    let keep_within = raw.keep_within.map(|text| match parse_duration(&text) {
        Ok(d) => d,
        Err(e) => {
            issues.push(Issue::new(format!("{key}.keep_within"), e));
            Duration::ZERO
        }
    });
    let max_total_size = raw.max_total_size.map(|text| match parse_size(&text) {
        Ok(0) => {
            issues.push(Issue::new(format!("{key}.max_total_size"), "must be larger than zero"));
            0
        }
        Ok(size) => size,
        Err(e) => {
            issues.push(Issue::new(format!("{key}.max_total_size"), e));
            0
        }
    });
    let policy = Policy {
        keep_last: raw.keep_last.unwrap_or(0),
        keep_hourly: raw.keep_hourly.unwrap_or(0),
        keep_daily: raw.keep_daily.unwrap_or(0),
        keep_weekly: raw.keep_weekly.unwrap_or(0),
        keep_monthly: raw.keep_monthly.unwrap_or(0),
        keep_yearly: raw.keep_yearly.unwrap_or(0),
        keep_within,
        max_total_size,
        min_keep: raw.min_keep.unwrap_or(0),
    };
    if !policy.has_rule() && !issues.iter().any(|i| i.key.starts_with(key)) {
        issues.push(Issue::new(
            key,
            "keeps nothing: set at least one of keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly or keep_within (without a rule, pruning would remove every backup but the newest); remove the table to get the default",
        ));
    }
    policy
}

/// The S3 bucket naming rules that matter for a clear early error.
fn check_bucket_name(bucket: &str) -> Result<(), String> {
    if bucket.is_empty() {
        return Err("is missing: name the bucket, for example bucket = \"etcd-backups\"".into());
    }
    let ok_chars = bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    let ok_ends = bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !(3..=63).contains(&bucket.len()) || !ok_chars || !ok_ends {
        return Err(format!(
            "\"{bucket}\" is not a valid bucket name: 3 to 63 lowercase letters, digits, '-' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn path_key(value: Option<String>, key: &str, issues: &mut Vec<Issue>) -> Option<PathBuf> {
    match value {
        Some(v) if v.is_empty() => {
            issues.push(Issue::new(key, "is empty: give an absolute path or remove the key"));
            None
        }
        Some(v) if !v.starts_with('/') => {
            // Somewhere the service may use: it writes only under its state dir, and reads its files
            // from /etc.
            let base = if key == "local.dir" { "/var/lib/etcd-backupd" } else { "/etc/etcd-backupd" };
            issues.push(Issue::new(
                key,
                format!("\"{v}\" is a relative path: give an absolute path, such as \"{base}/{v}\""),
            ));
            None
        }
        other => other.map(PathBuf::from),
    }
}

fn duration_key(value: Option<String>, key: &str, default: Duration, issues: &mut Vec<Issue>) -> Duration {
    match value.as_deref().map(parse_duration) {
        None => default,
        Some(Ok(d)) if d.is_zero() => {
            issues.push(Issue::new(key, "must be longer than zero"));
            default
        }
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            issues.push(Issue::new(key, e));
            default
        }
    }
}
