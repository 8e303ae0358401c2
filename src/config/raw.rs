//! The config file as written: every key optional, unknown keys rejected. Validation lives in `settings`.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub etcd: Option<RawEtcd>,
    #[serde(default)]
    pub backup: RawBackup,
    #[serde(default)]
    pub encryption: RawEncryption,
    #[serde(default)]
    pub local: RawLocal,
    pub s3: Option<RawS3>,
    pub schedule: Option<RawSchedule>,
    pub metrics: Option<RawMetrics>,
    pub drill: Option<RawDrill>,
    pub notify: Option<RawNotify>,
    pub coordination: Option<RawCoordination>,
    pub files: Option<RawFiles>,
    pub deltas: Option<RawDeltas>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeltas {
    pub enabled: Option<bool>,
    pub max_interval: Option<String>,
    pub max_size: Option<String>,
    pub keep_for: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFiles {
    pub preset: Option<String>,
    pub paths: Option<Vec<String>>,
    pub exclude: Option<Vec<String>>,
    pub recipients: Option<Vec<String>>,
    pub recipients_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    pub healthchecks: Option<Vec<String>>,
    pub webhooks: Option<Vec<String>>,
    pub drill_healthchecks: Option<Vec<String>>,
    pub timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCoordination {
    pub mode: Option<String>,
    pub prefix: Option<String>,
    pub lease_ttl: Option<String>,
    pub leader_delay: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDrill {
    pub identity_file: Option<String>,
    pub cron: Option<String>,
    pub etcd_bin: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    pub cron: Option<String>,
    pub timezone: Option<String>,
    pub jitter: Option<String>,
    pub catch_up: Option<bool>,
    pub skip_unchanged: Option<bool>,
    pub max_attempts: Option<u32>,
    pub retry_delay: Option<String>,
    pub stop_grace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub textfile: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    pub keep_within: Option<String>,
    pub max_total_size: Option<String>,
    pub min_keep: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEtcd {
    pub endpoints: Option<Vec<String>>,
    pub cacert: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub username: Option<String>,
    pub password_file: Option<String>,
    pub dial_timeout: Option<String>,
    pub snapshot_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackup {
    pub cluster: Option<String>,
    pub compression: Option<String>,
    pub compression_level: Option<i64>,
    pub leftover_grace: Option<String>,
    pub max_rate: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEncryption {
    pub recipients: Option<Vec<String>>,
    pub recipients_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLocal {
    pub dir: Option<String>,
    pub retention: Option<RawRetention>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawS3 {
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub force_path_style: Option<bool>,
    pub storage_class: Option<String>,
    pub server_side_encryption: Option<String>,
    pub sse_kms_key_id: Option<String>,
    pub checksums: Option<String>,
    pub ca_file: Option<String>,
    pub part_size: Option<String>,
    pub timeout: Option<String>,
    pub proxy: Option<String>,
    pub retention: Option<RawRetention>,
}
