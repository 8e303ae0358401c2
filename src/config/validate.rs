//! The raw config checked key by key into `Settings`, every problem named with its key. Pure: no file
//! system, no network.

use std::path::PathBuf;
use std::time::Duration;

use super::keys::{duration_key, path_key, retention};
use super::raw::{RawConfig, RawCoordination, RawDrill, RawEtcd, RawNotify};
use super::settings::*;
use super::units::{format_size, parse_duration, parse_size};
use super::validate_s3::validate_s3;
use crate::manifest::{ClusterName, Compression};
use crate::retention::Policy;

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

    let mut recipients = Vec::new();
    for (i, r) in raw.encryption.recipients.unwrap_or_default().iter().enumerate() {
        match crate::crypto::PublicKey::parse(r) {
            Ok(key) => recipients.push(key),
            Err(e) => issues.push(Issue::new(format!("encryption.recipients[{i}]"), e)),
        }
    }
    let encryption = EncryptionSettings {
        recipients,
        recipients_file: path_key(raw.encryption.recipients_file, "encryption.recipients_file", &mut issues),
    };

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
    let max_rate = match raw.backup.max_rate.as_deref().map(parse_size) {
        None => None,
        Some(Ok(rate)) if rate >= MIN_RATE => std::num::NonZeroU64::new(rate),
        Some(Ok(_)) => {
            issues.push(Issue::new(
                "backup.max_rate",
                format!(
                    "is below the least rate, {}: at such a rate a large database takes hours while etcd holds its read transaction open; leave it out for no limit",
                    format_size(MIN_RATE)
                ),
            ));
            None
        }
        Some(Err(e)) => {
            issues.push(Issue::new("backup.max_rate", e));
            None
        }
    };
    let drill = raw.drill.map(|d| validate_drill(d, timezone, &mut issues)).unwrap_or_default();
    let notify = raw.notify.map(|n| validate_notify(n, &mut issues)).unwrap_or_default();
    let coordination = validate_coordination(raw.coordination.unwrap_or_default(), &cluster, &mut issues);
    let files = raw.files.map(|f| super::validate_files::validate_files(f, &mut issues));
    let deltas = raw.deltas.and_then(|d| super::validate_deltas::validate_deltas(d, etcd.is_some(), &mut issues));

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
        max_rate,
        drill,
        notify,
        coordination,
        files,
        deltas,
    })
}

fn validate_coordination(raw: RawCoordination, cluster: &ClusterName, issues: &mut Vec<Issue>) -> CoordinationSettings {
    let mode = match raw.mode.as_deref() {
        None | Some("cluster") => CoordinationMode::Cluster,
        Some("member") => CoordinationMode::Member,
        Some(other) => {
            issues.push(Issue::new(
                "coordination.mode",
                format!("\"{}\" is not a mode: expected \"cluster\" (one backup per slot for the whole cluster) or \"member\" (every member on its own)", other.escape_debug()),
            ));
            CoordinationMode::Cluster
        }
    };
    let prefix = match raw.prefix {
        None => format!("/etcd-backupd/{cluster}/"),
        Some(p) if p.starts_with('/') && !p.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            if p.ends_with('/') { p } else { format!("{p}/") }
        }
        Some(p) => {
            issues.push(Issue::new(
                "coordination.prefix",
                format!("\"{}\" is not a key prefix: it starts with / and holds no spaces, like \"/etcd-backupd/{cluster}/\"", p.escape_debug()),
            ));
            String::new()
        }
    };
    let lease_ttl = duration_key(raw.lease_ttl, "coordination.lease_ttl", DEFAULT_LEASE_TTL, issues);
    if lease_ttl < Duration::from_secs(2) && !issues.iter().any(|i| i.key == "coordination.lease_ttl") {
        issues.push(Issue::new(
            "coordination.lease_ttl",
            "shorter than etcd's minimum lease (2s with its default election timeout); 30s is the default",
        ));
    }
    let leader_delay = duration_key(raw.leader_delay, "coordination.leader_delay", DEFAULT_LEADER_DELAY, issues);
    CoordinationSettings { mode, prefix, lease_ttl, leader_delay }
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
