//! Every config key with its default and meaning: the source of etcd-backupd.toml(5). Tests check that
//! it names exactly the keys the parser accepts, so the manual cannot drift from the code.

pub struct Key {
    pub name: &'static str,
    pub kind: Kind,
    pub default: &'static str,
    pub meaning: &'static str,
}

pub struct Table {
    /// As written in the file, e.g. `s3.retention`.
    pub name: &'static str,
    pub about: &'static str,
    pub keys: &'static [Key],
}

/// What a key's value is, as TOML: checked before the value is read, so every mistyped key is reported at
/// once and in these words rather than serde's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Duration,
    Size,
    /// A whole number from 0 to 4294967295.
    Count,
    Integer,
    Bool,
    /// A list of texts.
    List,
    /// A sub-table, documented as its own `Table`.
    SubTable,
}

impl Kind {
    /// What the user should write, as said in an error.
    pub fn expected(self) -> &'static str {
        match self {
            Kind::Text => "text in quotes",
            Kind::Duration => "a duration in quotes, like \"30s\", \"10m\" or \"6h\"",
            Kind::Size => "a size in quotes, like \"8MiB\" or \"2GiB\"",
            Kind::Count => "a whole number, 0 or more, like 3",
            Kind::Integer => "a whole number, like 3",
            Kind::Bool => "true or false, without quotes",
            Kind::List => "a list of texts in quotes, like [\"a\", \"b\"]",
            Kind::SubTable => "a table of its own",
        }
    }
}

use Kind::*;

const fn key(name: &'static str, kind: Kind, default: &'static str, meaning: &'static str) -> Key {
    Key { name, kind, default, meaning }
}

const RETENTION: &[Key] = &[
    key("keep_last", Count, "0", "keep the N newest backups"),
    key("keep_hourly", Count, "0", "keep the newest backup of each of the last N hours that have backups"),
    key("keep_daily", Count, "0", "the same for days"),
    key("keep_weekly", Count, "0", "the same for ISO weeks"),
    key("keep_monthly", Count, "0", "the same for months"),
    key("keep_yearly", Count, "0", "the same for years"),
    key("keep_within", Duration, "none", "keep everything newer than the newest backup minus this duration"),
    key(
        "max_total_size",
        Size,
        "none",
        "after the rules, remove the oldest unpinned backups until the total is under this size; never the newest",
    ),
    key("min_keep", Count, "0", "never keep fewer committed backups than this"),
];

pub const TABLES: &[Table] = &[
    Table {
        name: "etcd",
        about: "The local etcd member. Required to back up; a verification host, which only verifies, restores and drills, leaves it out.",
        keys: &[
            key("endpoints", List, "required", "the local member, e.g. [\"https://127.0.0.1:2379\"]; tried in order"),
            key(
                "cacert",
                Text,
                "system roots",
                "CA that signed etcd's server certificate (kubeadm: /etc/kubernetes/pki/etcd/ca.crt)",
            ),
            key("cert", Text, "none", "client certificate (kubeadm: /etc/kubernetes/pki/etcd/healthcheck-client.crt)"),
            key(
                "key",
                Text,
                "none",
                "its private key (kubeadm: /etc/kubernetes/pki/etcd/healthcheck-client.key); a file the service user cannot read is taken from the systemd credential of the same base name (LoadCredential=)",
            ),
            key("username", Text, "none", "etcd user, with password_file"),
            key("password_file", Text, "none", "file holding the etcd user's password (a trailing newline is ignored)"),
            key("dial_timeout", Duration, "10s", "per endpoint, to connect and read the member's status"),
            key("snapshot_timeout", Duration, "30m", "the whole snapshot stream"),
        ],
    },
    Table {
        name: "backup",
        about: "What a backup is.",
        keys: &[
            key(
                "cluster",
                Text,
                "default",
                "names this cluster's backups (a folder locally and in S3); letters, digits, - _ .",
            ),
            key("compression", Text, "zstd", "\"zstd\" or \"none\""),
            key("compression_level", Integer, "3", "zstd level, 1 to 19"),
            key("leftover_grace", Duration, "24h", "leftovers of crashed runs younger than this are left alone"),
            key(
                "max_rate",
                Size,
                "none",
                "the most bytes per second read from etcd, at least 1MiB; the stream is paced, never buffered (README, \"Load on the member\")",
            ),
        ],
    },
    Table {
        name: "encryption",
        about: "Backups are always encrypted with age to public keys; at least one recipient is required.",
        keys: &[
            key(
                "recipients",
                List,
                "[]",
                "age public keys (age1...) and SSH public keys (ssh-ed25519 ..., ssh-rsa ...)",
            ),
            key("recipients_file", Text, "none", "a file with one recipient per line; # starts a comment"),
        ],
    },
    Table {
        name: "local",
        about: "The local copy.",
        keys: &[
            key("dir", Text, "/var/lib/etcd-backupd/backups", "created 0700; backups go in DIR/CLUSTER/"),
            key("retention", SubTable, "keep_last = 3", "a [local.retention] table replaces the default"),
        ],
    },
    Table { name: "local.retention", about: "Retention of the local copies (see RETENTION).", keys: RETENTION },
    Table {
        name: "s3",
        about: "The off-site copy in S3 or an S3-compatible store. Optional.",
        keys: &[
            key("bucket", Text, "required", "the bucket; it must exist"),
            key("prefix", Text, "\"\"", "key prefix; a trailing / is added if missing; no empty, . or .. parts"),
            key(
                "region",
                Text,
                "AWS chain",
                "the bucket's region; S3-compatible stores with an endpoint default to us-east-1",
            ),
            key("endpoint", Text, "AWS", "for S3-compatible stores, e.g. https://minio.internal:9000"),
            key("force_path_style", Bool, "false", "path-style addressing (most MinIO and Ceph setups)"),
            key(
                "storage_class",
                Text,
                "bucket default",
                "for the artifact, e.g. STANDARD_IA; manifests always use the default class",
            ),
            key("server_side_encryption", Text, "none", "\"AES256\" (SSE-S3) or \"aws:kms\" (SSE-KMS)"),
            key("sse_kms_key_id", Text, "bucket default key", "with aws:kms"),
            key(
                "checksums",
                Text,
                "when_supported",
                "CRC32 per part, carried into the completed upload; \"when_required\" for older MinIO, Ceph, R2",
            ),
            key("ca_file", Text, "none", "an extra trust root (PEM) for the endpoint"),
            key("part_size", Size, "8MiB", "multipart part size, 5MiB to 5GiB; memory use is about twice this"),
            key(
                "proxy",
                Text,
                "HTTPS_PROXY etc.",
                "http://HOST:PORT to reach the store through (overrides HTTPS_PROXY, HTTP_PROXY and ALL_PROXY; NO_PROXY still applies); \"\" for none",
            ),
            key(
                "timeout",
                Duration,
                "2m",
                "the longest one attempt of one request may take, a whole part included; each request is tried 3 times, so a hung store fails the upload after about 3 times this",
            ),
            key("retention", SubTable, "daily 7, weekly 4, monthly 6", "an [s3.retention] table replaces the default"),
        ],
    },
    Table { name: "s3.retention", about: "Retention of the S3 copies (see RETENTION).", keys: RETENTION },
    Table {
        name: "schedule",
        about: "When the daemon (etcd-backupd run) backs up; timezone also sets retention's calendar periods.",
        keys: &[
            key("cron", Text, "0 */6 * * *", "crontab: 5 fields, or 6 with seconds first"),
            key("timezone", Text, "UTC", "IANA time zone of the schedule and of retention's calendar periods"),
            key(
                "jitter",
                Duration,
                "0s",
                "a random delay up to this is added to each run, so a fleet does not hit S3 at once; shorter than the schedule's shortest interval",
            ),
            key("catch_up", Bool, "true", "on start, run at once if a scheduled run was missed"),
            key(
                "skip_unchanged",
                Bool,
                "false",
                "if etcd's revision equals the last backup's, record \"unchanged\" and upload nothing",
            ),
            key("max_attempts", Count, "3", "tries of a scheduled run on transient etcd or S3 errors"),
            key(
                "retry_delay",
                Duration,
                "30s",
                "the wait before the first retry; each further one doubles it (at most 10m)",
            ),
            key(
                "stop_grace",
                Duration,
                "60s",
                "on SIGTERM, how long a running backup may take before it is aborted cleanly",
            ),
        ],
    },
    Table {
        name: "metrics",
        about: "Prometheus metrics for node_exporter's textfile collector.",
        keys: &[key("textfile", Text, "none", "the file to rewrite (atomically) after every run")],
    },
    Table {
        name: "notify",
        about: "Who is told how backups go; a notification never fails, blocks or delays a backup.",
        keys: &[
            key(
                "healthchecks",
                List,
                "[]",
                "ping URLs in the healthchecks.io convention: URL/start when a run starts, URL on success, URL/fail (the error as the body) on failure",
            ),
            key(
                "webhooks",
                List,
                "[]",
                "URLs POSTed a JSON event on success and failure, and, in cluster mode, `covered` when another member backed up the slot (event, cluster, host, time, backup_id, revision, snapshot_bytes, artifact_bytes, committed, error, covered_by)",
            ),
            key(
                "drill_healthchecks",
                List,
                "[]",
                "ping URLs of a check of their own for restore drills: URL when a drill passes, URL/fail (the error as the body) when it fails; webhooks get drill_success and drill_failure events",
            ),
            key("timeout", Duration, "10s", "the longest one attempt may take; three attempts, not after a 4xx"),
        ],
    },
    Table {
        name: "coordination",
        about: "How the daemons of one etcd cluster share the schedule: in cluster mode each slot is backed up once, by a healthy follower, through a lease-bound lock in etcd.",
        keys: &[
            key(
                "mode",
                Text,
                "cluster",
                "\"cluster\" (one backup per slot for the whole cluster) or \"member\" (every member on its own)",
            ),
            key(
                "prefix",
                Text,
                "/etcd-backupd/<cluster>/",
                "where the slot locks and records live in etcd; the etcd user needs read and write on it",
            ),
            key(
                "lease_ttl",
                Duration,
                "30s",
                "how long a slot stays taken after its daemon stops renewing it (it died): then another member takes it",
            ),
            key(
                "leader_delay",
                Duration,
                "2m",
                "how long the leader (or a member with an alarm, or one that lags) leaves a slot to a follower",
            ),
        ],
    },
    Table {
        name: "files",
        about: "The control-plane files a node needs besides etcd's data (certificates and keys, static pod manifests, kubeconfigs, the encryption config), archived beside every snapshot as <id>.files.tar.zst.age and committed with it. Without this table, the snapshot alone.",
        keys: &[
            key(
                "preset",
                Text,
                "none",
                "\"kubeadm\", \"k3s\" or \"rke2\": the paths that distribution keeps them in (README, \"Control-plane files\")",
            ),
            key(
                "paths",
                List,
                "[]",
                "more files and folders (absolute; `*` matches within a name); a path that cannot be read fails the backup",
            ),
            key("exclude", List, "[]", "globs of paths to leave out (a matching folder with all it holds)"),
            key(
                "recipients",
                List,
                "[encryption]'s",
                "who can decrypt the archive (the CA keys may go to fewer people than the snapshots)",
            ),
            key("recipients_file", Text, "none", "a file of recipients, one per line, added to recipients"),
        ],
    },
    Table {
        name: "deltas",
        about: "Point-in-time recovery: between full snapshots, every change to the cluster is written out as encrypted delta segments (to every destination), so that `restore --revision` or `--at` can restore any point since the newest snapshot, with the original revision numbers. Off by default.",
        keys: &[
            key("enabled", Bool, "false", "write delta segments (needs [etcd], and read access to the whole keyspace)"),
            key(
                "max_interval",
                Duration,
                "15s",
                "a segment is closed this long after its first change at the latest: the most a lost host takes with it",
            ),
            key("max_size", Size, "8MiB", "a segment is closed once it holds this much (64KiB to 256MiB)"),
            key(
                "keep_for",
                Duration,
                "as long as its base",
                "segments are removed this long after their base snapshot was taken (never later than the base)",
            ),
        ],
    },
    Table {
        name: "drill",
        about: "Restore drills (etcd-backupd drill). Keep the identity off the etcd hosts: run drills on a verification host.",
        keys: &[
            key("identity_file", Text, "none", "the age identity (or unencrypted SSH private key) drills decrypt with"),
            key("cron", Text, "none", "in daemon mode, drill the newest backup on this schedule (needs identity_file)"),
            key(
                "etcd_bin",
                Text,
                "PATH",
                "the folder holding etcd and etcdutl (3.5+) or etcdctl (3.4), or the etcd binary in it",
            ),
        ],
    },
];

#[cfg(test)]
mod tests;
