use std::time::Duration;

use super::*;

const KEY: &str = "age129n4cdkqnnw0ufcsz5av60my25tehpq9mlsxr3jfs68hzl2nqf4qpfwa0s";

fn minimal() -> String {
    format!("[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n\n[encryption]\nrecipients = [\"{KEY}\"]\n")
}

fn problems(text: &str) -> Vec<Located> {
    parse(text).expect_err("config should be refused")
}

fn one(text: &str) -> Located {
    let mut p = problems(text);
    assert_eq!(p.len(), 1, "{p:?}");
    p.remove(0)
}

#[test]
fn minimal_config_gets_defaults() {
    let s = parse(&minimal()).unwrap();
    assert_eq!(s.etcd().unwrap().endpoints, vec!["http://127.0.0.1:2379"]);
    assert_eq!(s.etcd().unwrap().dial_timeout, Duration::from_secs(10));
    assert_eq!(s.etcd().unwrap().snapshot_timeout, Duration::from_secs(1800));
    assert_eq!(s.cluster.as_str(), "default");
    assert_eq!(s.compression, crate::manifest::Compression::Zstd { level: 3 });
    assert_eq!(s.local.dir, PathBuf::from("/var/lib/etcd-backupd/backups"));
    assert!(s.s3.is_none());
    assert!(s.etcd().unwrap().client_cert.is_none() && s.etcd().unwrap().auth.is_none());
}

#[test]
fn full_config_from_the_docs_parses() {
    let text = format!(
        r#"
[etcd]
endpoints = ["https://127.0.0.1:2379", "https://10.0.0.2:2379"]
cacert = "/etc/kubernetes/pki/etcd/ca.crt"
cert = "/etc/kubernetes/pki/etcd/healthcheck-client.crt"
key  = "/etc/kubernetes/pki/etcd/healthcheck-client.key"
username = "backup"
password_file = "/etc/etcd-backupd/etcd-password"
dial_timeout = "5s"
snapshot_timeout = "1h"

[backup]
cluster = "prod-east"
compression = "zstd"
compression_level = 9

[encryption]
recipients = ["{KEY}", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHS95VBVaLPmudeOW9aEVTrqx9kr85m1tzlEzwEJFKwE ops@example"]
recipients_file = "/etc/etcd-backupd/recipients.txt"

[local]
dir = "/srv/backups"

[s3]
bucket = "etcd-backups"
prefix = "prod/"
region = "eu-west-1"
endpoint = "https://minio.internal:9000"
force_path_style = true
storage_class = "STANDARD_IA"
server_side_encryption = "aws:kms"
sse_kms_key_id = "arn:aws:kms:eu-west-1:1:key/x"
checksums = "when_required"
ca_file = "/etc/etcd-backupd/s3-ca.pem"
part_size = "16MiB"
"#
    );
    let s = parse(&text).unwrap();
    assert_eq!(s.etcd().unwrap().endpoints.len(), 2);
    assert_eq!(
        s.etcd().unwrap().client_cert,
        Some(ClientCert {
            cert: "/etc/kubernetes/pki/etcd/healthcheck-client.crt".into(),
            key: "/etc/kubernetes/pki/etcd/healthcheck-client.key".into()
        })
    );
    assert_eq!(s.etcd().unwrap().auth.as_ref().map(|a| a.username.as_str()), Some("backup"));
    assert_eq!(s.etcd().unwrap().dial_timeout, Duration::from_secs(5));
    assert_eq!(s.etcd().unwrap().snapshot_timeout, Duration::from_secs(3600));
    assert_eq!(s.cluster.as_str(), "prod-east");
    assert_eq!(s.compression, crate::manifest::Compression::Zstd { level: 9 });
    assert_eq!(s.encryption.recipients.len(), 2);
    assert_eq!(s.local.dir, PathBuf::from("/srv/backups"));
    let s3 = s.s3.unwrap();
    assert_eq!(s3.bucket, "etcd-backups");
    assert_eq!(s3.prefix, "prod/");
    assert_eq!(s3.region.as_deref(), Some("eu-west-1"));
    assert!(s3.force_path_style);
    assert_eq!(s3.storage_class.as_deref(), Some("STANDARD_IA"));
    assert_eq!(s3.sse, Some(ServerSideEncryption::Kms { key_id: Some("arn:aws:kms:eu-west-1:1:key/x".into()) }));
    assert_eq!(s3.checksums, ChecksumMode::WhenRequired);
    assert_eq!(s3.part_size, 16 * 1024 * 1024);
}

#[test]
fn unknown_key_names_line_column_and_key() {
    let text = minimal().replace("[encryption]", "[encryption]\nrecipient = \"x\"");
    let p = one(&text);
    assert_eq!((p.line, p.column), (Some(5), Some(1)));
    assert_eq!(p.key, "encryption.recipient");
    assert!(p.message.contains("unknown field `recipient`"), "{}", p.message);
    assert!(p.message.contains("recipients"), "lists the expected keys: {}", p.message);
}

#[test]
fn unknown_table_is_refused() {
    let p = one(&format!("{}\n[s4]\nbucket = \"x\"\n", minimal()));
    assert!(p.message.contains("unknown field `s4`"), "{}", p.message);
    assert_eq!(p.line, Some(7));
}

#[test]
fn bad_duration_names_line_and_key() {
    let text = minimal().replace("endpoints", "dial_timeout = \"10x\"\nendpoints");
    let p = one(&text);
    assert_eq!(p.key, "etcd.dial_timeout");
    assert_eq!(p.line, Some(2));
    assert!(p.message.contains("\"10x\" is not a duration"), "{}", p.message);
    let p = one(&minimal().replace("endpoints", "snapshot_timeout = \"30\"\nendpoints"));
    assert!(p.message.contains("\"30s\""), "{}", p.message);
    let p = one(&minimal().replace("endpoints", "dial_timeout = \"0s\"\nendpoints"));
    assert!(p.message.contains("longer than zero"));
}

#[test]
fn wrong_type_names_the_key() {
    let p = one(&minimal().replace("[encryption]", "[backup]\ncompression_level = \"high\"\n[encryption]"));
    assert_eq!(p.key, "backup.compression_level");
    assert_eq!(p.line, Some(5));
    assert_eq!(p.message, "expected a whole number, like 3, found the text \"high\"");
}

/// Every kind of value, written wrong, is said in the user's words: what to write and what was found.
#[test]
fn wrong_types_are_said_in_the_users_words() {
    let cases = [
        (
            "[schedule]\nmax_attempts = \"3\"",
            "schedule.max_attempts",
            "expected a whole number, 0 or more, like 3, found the text \"3\"",
        ),
        (
            "[schedule]\nmax_attempts = -2",
            "schedule.max_attempts",
            "expected a whole number, 0 or more, like 3, found -2, which is below 0",
        ),
        (
            "[schedule]\nmax_attempts = 5000000000",
            "schedule.max_attempts",
            "expected a whole number, 0 or more, like 3, found 5000000000, which is too large",
        ),
        (
            "[schedule]\nmax_attempts = 1.5",
            "schedule.max_attempts",
            "expected a whole number, 0 or more, like 3, found the number 1.5",
        ),
        (
            "[schedule]\ncatch_up = \"yes\"",
            "schedule.catch_up",
            "expected true or false, without quotes, found the text \"yes\"",
        ),
        (
            "[schedule]\njitter = 30",
            "schedule.jitter",
            "expected a duration in quotes, like \"30s\", \"10m\" or \"6h\", found the number 30",
        ),
        (
            "[s3]\nbucket = \"bkt\"\npart_size = 8",
            "s3.part_size",
            "expected a size in quotes, like \"8MiB\" or \"2GiB\", found the number 8",
        ),
        ("[s3]\nbucket = [\"b\"]", "s3.bucket", "expected text in quotes, found a list"),
        (
            "[notify]\nwebhooks = \"https://x\"",
            "notify.webhooks",
            "expected a list of texts in quotes, like [\"a\", \"b\"], found the text \"https://x\"",
        ),
        (
            "[notify]\nwebhooks = [\"https://x\", 2]",
            "notify.webhooks",
            "expected a list of texts in quotes, like [\"a\", \"b\"], found the number 2 as item 2",
        ),
        ("[local]\nretention = 3", "local.retention", "expected a table of its own, found the number 3"),
        ("metrics = \"/x\"", "metrics", "expected a table, written [metrics] on its own line, found the text \"/x\""),
        ("[drill]\ncron = 2026-01-01", "drill.cron", "expected text in quotes, found the date 2026-01-01"),
    ];
    for (extra, key, message) in cases {
        // A top-level value must come before the first table.
        let text =
            if extra.starts_with('[') { format!("{}{extra}\n", minimal()) } else { format!("{extra}\n{}", minimal()) };
        let p = one(&text);
        assert_eq!((p.key.as_str(), p.message.as_str()), (key, message), "{extra}");
        assert!(p.line.is_some(), "{extra}: no line");
    }
}

/// Every problem of a file comes at once, in the order of its lines, whether a type, an unknown key or a
/// value; one does not hide the next, and a removed key does not add a follow-on complaint.
#[test]
fn every_problem_at_once_sorted_by_line() {
    let text = format!(
        "[schedule]\ncatch_up = \"no\"\ncron = \"every day\"\n{}[local.retention]\nkeep_last = \"3\"\nkeep_lats = 2\n[backup]\ncompresion = \"zstd\"\ncompression_level = \"high\"\n",
        minimal()
    );
    let p = problems(&text);
    let got: Vec<(Option<usize>, &str)> = p.iter().map(|p| (p.line, p.key.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (Some(2), "schedule.catch_up"),
            (Some(3), "schedule.cron"),
            (Some(10), "local.retention.keep_last"),
            (Some(11), "local.retention.keep_lats"),
            (Some(13), "backup.compresion"),
            (Some(14), "backup.compression_level"),
        ]
    );
}

/// The reference's kinds are the parser's types: a value of each key's documented kind is read, a value
/// of another kind is refused by the parser itself (so the check before it cannot drift from it).
#[test]
fn the_reference_kinds_are_the_parsers_types() {
    use super::reference::{Kind, TABLES};
    fn sample(kind: Kind) -> &'static str {
        match kind {
            Kind::Text | Kind::Duration | Kind::Size => "\"x\"",
            Kind::Count | Kind::Integer => "3",
            Kind::Bool => "true",
            Kind::List => "[\"x\"]",
            Kind::SubTable => "{}",
        }
    }
    for table in TABLES {
        for key in table.keys {
            let doc = |value: &str| {
                let (parent, name) = table.name.rsplit_once('.').unwrap_or(("", table.name));
                let inner = format!("{{ {} = {value} }}", key.name);
                if parent.is_empty() {
                    format!("{name} = {inner}\n")
                } else {
                    format!("{parent} = {{ {name} = {inner} }}\n")
                }
            };
            let read = |value: &str| toml::from_str::<RawConfig>(&doc(value)).map(|_| ()).map_err(|e| e.to_string());
            assert!(read(sample(key.kind)).is_ok(), "[{}] {}: {:?}", table.name, key.name, read(sample(key.kind)));
            let other = if key.kind == Kind::Bool { "\"x\"" } else { "true" };
            assert!(read(other).is_err(), "[{}] {} accepts {other}", table.name, key.name);
        }
    }
}

#[test]
fn toml_syntax_error_has_a_line() {
    let p = one("[etcd\nendpoints = 1");
    assert_eq!(p.line, Some(1));
}

#[test]
fn a_verification_host_needs_no_etcd_table_but_a_backup_says_what_to_add() {
    let s = parse(&format!("[encryption]\nrecipients = [\"{KEY}\"]\n")).expect("a verification host's config");
    let e = s.etcd().expect_err("no [etcd]").to_string();
    assert!(e.contains("add [etcd] with endpoints = ["), "{e}");
}

#[test]
fn endpoints_are_checked() {
    let p = one(&minimal().replace("[\"http://127.0.0.1:2379\"]", "[]"));
    assert_eq!(p.key, "etcd.endpoints");
    let p = one(&minimal().replace("http://127.0.0.1:2379", "127.0.0.1:2379"));
    assert_eq!(p.key, "etcd.endpoints[0]");
    assert_eq!(p.line, Some(2));
    let p = one(&minimal().replace("\"http://127.0.0.1:2379\"", "\"http://a:1\", \"https://host\""));
    assert_eq!(p.key, "etcd.endpoints[1]");
    assert_eq!((p.line, p.column), (Some(2), Some(28)));
}

#[test]
fn tls_pairs_and_schemes() {
    let p = one(&minimal().replace("endpoints", "cert = \"/c.pem\"\nendpoints").replace("http:", "https:"));
    assert_eq!(p.key, "etcd.key");
    let p = one(&minimal().replace("endpoints", "key = \"/k.pem\"\nendpoints").replace("http:", "https:"));
    assert_eq!(p.key, "etcd.cert");
    let p = one(&minimal().replace("endpoints", "cacert = \"/ca.pem\"\nendpoints"));
    assert!(p.message.contains("no endpoint uses https://"), "{}", p.message);
    let p = one(&minimal().replace("endpoints", "cacert = \"ca.pem\"\nendpoints").replace("http:", "https:"));
    assert!(p.message.contains("relative path") && p.message.contains("\"/etc/etcd-backupd/ca.pem\""), "{}", p.message);
    // The local dir is suggested where the service may write.
    let p = one(&format!("{}[local]\ndir = \"backups\"\n", minimal()));
    assert!(p.message.contains("\"/var/lib/etcd-backupd/backups\""), "{}", p.message);
}

#[test]
fn auth_needs_both_keys() {
    let p = one(&minimal().replace("endpoints", "username = \"backup\"\nendpoints"));
    assert_eq!(p.key, "etcd.password_file");
    let p = one(&minimal().replace("endpoints", "password_file = \"/p\"\nendpoints"));
    assert_eq!(p.key, "etcd.username");
}

#[test]
fn cluster_and_compression() {
    let p = one(&format!("{}[backup]\ncluster = \"prod east\"\n", minimal()));
    assert_eq!(p.key, "backup.cluster");
    assert_eq!(p.line, Some(7));
    let p = one(&format!("{}[backup]\ncompression = \"gzip\"\n", minimal()));
    assert!(p.message.contains("\"zstd\" or \"none\""));
    let p = one(&format!("{}[backup]\ncompression_level = 25\n", minimal()));
    assert_eq!(p.key, "backup.compression_level");
    let s = parse(&format!("{}[backup]\ncompression = \"none\"\n", minimal())).unwrap();
    assert_eq!(s.compression, crate::manifest::Compression::None);
}

#[test]
fn bad_recipient_points_at_the_item() {
    let text = minimal().replace(&format!("[\"{KEY}\"]"), &format!("[\"{KEY}\",\n  \"AGE-SECRET-KEY-1XYZ\"]"));
    let p = one(&text);
    assert_eq!(p.key, "encryption.recipients[1]");
    assert_eq!(p.line, Some(6));
    assert!(p.message.contains("secret key"));
}

#[test]
fn s3_table_is_checked() {
    let base = minimal();
    let p = one(&format!("{base}[s3]\nprefix = \"x/\"\n"));
    assert_eq!(p.key, "s3.bucket");
    assert_eq!(p.line, Some(6), "missing key points at its table");
    let p = one(&format!("{base}[s3]\nbucket = \"Etcd_Backups\"\n"));
    assert!(p.message.contains("not a valid bucket name"));
    let p = one(&format!("{base}[s3]\nbucket = \"b-1\"\npart_size = \"1MiB\"\n"));
    assert_eq!(p.key, "s3.part_size");
    let p = one(&format!("{base}[s3]\nbucket = \"b-1\"\npart_size = \"big\"\n"));
    assert!(p.message.contains("not a size"));
    let p = one(&format!("{base}[s3]\nbucket = \"b-1\"\nsse_kms_key_id = \"k\"\n"));
    assert_eq!(p.key, "s3.sse_kms_key_id");
    let p = one(&format!("{base}[s3]\nbucket = \"b-1\"\nserver_side_encryption = \"kms\"\n"));
    assert_eq!(p.key, "s3.server_side_encryption");
    let p = one(&format!("{base}[s3]\nbucket = \"b-1\"\nchecksums = \"sometimes\"\n"));
    assert_eq!(p.key, "s3.checksums");
    let p = one(&format!("{base}[s3]\nbucket = \"b-1\"\nendpoint = \"minio:9000\"\n"));
    assert_eq!(p.key, "s3.endpoint");
    let p = one(&format!("{base}[s3]\nbucket = \"b-1\"\nprefix = \"/abs\"\n"));
    assert_eq!(p.key, "s3.prefix");
    let p = one(&format!("{base}[s3]\nbucket = \"b-1\"\nstorage_class = \"cold\"\n"));
    assert_eq!(p.key, "s3.storage_class");
}

#[test]
fn s3_prefix_gets_a_trailing_slash() {
    let s = parse(&format!("{}[s3]\nbucket = \"b-1\"\nprefix = \"prod\"\n", minimal())).unwrap();
    assert_eq!(s.s3.unwrap().prefix, "prod/");
    let s = parse(&format!("{}[s3]\nbucket = \"b-1\"\n", minimal())).unwrap();
    let s3 = s.s3.unwrap();
    assert_eq!(s3.prefix, "");
    assert_eq!(s3.checksums, ChecksumMode::WhenSupported);
    assert_eq!(s3.part_size, DEFAULT_PART_SIZE);
}

#[test]
fn several_problems_are_all_reported() {
    let text = "[etcd]\nendpoints = []\ndial_timeout = \"x\"\n[backup]\ncompression = \"lz4\"\n";
    let p = problems(text);
    let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, vec!["etcd.endpoints", "etcd.dial_timeout", "backup.compression"]);
}

#[test]
fn display_names_file_line_and_key() {
    let e = ConfigError {
        file: "/etc/etcd-backupd.toml".into(),
        problems: vec![
            Located { line: Some(3), column: Some(16), key: "etcd.dial_timeout".into(), message: "bad".into() },
            Located { line: None, column: None, key: "encryption.recipients".into(), message: "none".into() },
        ],
    };
    assert_eq!(
        e.to_string(),
        "/etc/etcd-backupd.toml:3:16: etcd.dial_timeout: bad\n/etc/etcd-backupd.toml: encryption.recipients: none"
    );
}

mod files {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::File::create(&p).unwrap().write_all(text.as_bytes()).unwrap();
        p
    }

    #[test]
    fn load_reads_the_recipients_file() {
        let dir = tempfile::tempdir().unwrap();
        let rf = write(
            dir.path(),
            "recipients.txt",
            &format!(
                "# team\n{KEY}\n\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHS95VBVaLPmudeOW9aEVTrqx9kr85m1tzlEzwEJFKwE ops\n"
            ),
        );
        let cfg = write(
            dir.path(),
            "c.toml",
            &format!(
                "[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n[encryption]\nrecipients = [\"{KEY}\"]\nrecipients_file = \"{}\"\n",
                rf.display()
            ),
        );
        let s = load(&cfg).unwrap();
        assert_eq!(s.encryption.recipients.len(), 2, "duplicates are merged");
    }

    #[test]
    fn no_recipients_at_all_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write(dir.path(), "c.toml", "[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n");
        let e = load(&cfg).unwrap_err();
        assert_eq!(e.problems.len(), 1);
        assert_eq!(e.problems[0].key, "encryption.recipients");
        assert!(e.to_string().contains("age-keygen"), "{e}");
    }

    #[test]
    fn unreadable_files_are_named_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = write(dir.path(), "ca.crt", "hello");
        let cfg = write(
            dir.path(),
            "c.toml",
            &format!(
                "[etcd]\nendpoints = [\"https://127.0.0.1:2379\"]\ncacert = \"{}\"\ncert = \"/nonexistent/c.crt\"\nkey = \"/nonexistent/c.key\"\n[encryption]\nrecipients_file = \"/nonexistent/recipients.txt\"\n",
                not_pem.display()
            ),
        );
        let e = load(&cfg).unwrap_err();
        let text = e.to_string();
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, vec!["etcd.cacert", "etcd.cert", "etcd.key", "encryption.recipients_file"], "{text}");
        assert!(text.contains("does not hold a PEM certificate"), "{text}");
        assert!(text.contains("cannot read '/nonexistent/recipients.txt'"), "{text}");
        assert!(text.contains(":3:10: etcd.cacert"), "{text}");
    }

    #[test]
    fn bad_line_in_recipients_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let rf = write(dir.path(), "r.txt", &format!("{KEY}\nnonsense\n"));
        let cfg = write(
            dir.path(),
            "c.toml",
            &format!(
                "[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n[encryption]\nrecipients_file = \"{}\"\n",
                rf.display()
            ),
        );
        let e = load(&cfg).unwrap_err();
        assert!(e.to_string().contains(&format!("{}:2: ", rf.display())), "{e}");
    }

    #[test]
    fn missing_config_file_says_how_to_proceed() {
        let e = load(Path::new("/nonexistent/etcd-backupd.toml")).unwrap_err();
        assert!(e.to_string().contains("--config"), "{e}");
    }
}

#[test]
fn shipped_example_config_parses() {
    let s = parse(include_str!("../../config/etcd-backupd.toml")).unwrap();
    assert_eq!(s.etcd().unwrap().endpoints, vec!["https://127.0.0.1:2379"]);
    assert!(s.etcd().unwrap().client_cert.is_some());
    assert!(s.encryption.recipients.is_empty(), "the operator fills these in");
    assert!(s.s3.is_none());
}

mod retention {
    use super::*;
    use crate::retention::Policy;

    #[test]
    fn defaults_per_destination() {
        let s = parse(&format!("{}[s3]\nbucket = \"b-1\"\n", minimal())).unwrap();
        assert_eq!(s.local.retention, Policy::local_default());
        assert_eq!(s.s3.unwrap().retention, Policy::remote_default());
        assert_eq!(s.timezone, chrono_tz::Tz::UTC);
        assert_eq!(s.leftover_grace, Duration::from_secs(86400));
    }

    #[test]
    fn a_table_replaces_the_default() {
        let text = format!(
            "{}[local.retention]\nkeep_daily = 2\n[s3]\nbucket = \"b-1\"\n[s3.retention]\nkeep_last = 4\nkeep_hourly = 24\nkeep_daily = 7\nkeep_weekly = 4\nkeep_monthly = 12\nkeep_yearly = 2\nkeep_within = \"2d\"\nmax_total_size = \"20GiB\"\nmin_keep = 2\n[schedule]\ntimezone = \"Europe/Berlin\"\n[backup]\nleftover_grace = \"6h\"\n",
            minimal()
        );
        let s = parse(&text).unwrap();
        assert_eq!(s.local.retention, Policy { keep_daily: 2, ..Policy::default() });
        assert_eq!(
            s.s3.unwrap().retention,
            Policy {
                keep_last: 4,
                keep_hourly: 24,
                keep_daily: 7,
                keep_weekly: 4,
                keep_monthly: 12,
                keep_yearly: 2,
                keep_within: Some(Duration::from_secs(2 * 86400)),
                max_total_size: Some(20 << 30),
                min_keep: 2,
            }
        );
        assert_eq!(s.timezone, chrono_tz::Europe::Berlin);
        assert_eq!(s.leftover_grace, Duration::from_secs(6 * 3600));
    }

    #[test]
    fn a_policy_that_keeps_nothing_is_refused() {
        let p = one(&format!("{}[local.retention]\nmin_keep = 2\nkeep_daily = 0\n", minimal()));
        assert_eq!(p.key, "local.retention");
        assert_eq!(p.line, Some(6));
        assert!(p.message.contains("keeps nothing"), "{}", p.message);
        let p = one(&format!("{}[s3]\nbucket = \"b-1\"\n[s3.retention]\n", minimal()));
        assert_eq!(p.key, "s3.retention");
    }

    #[test]
    fn bad_values_name_their_key() {
        let p = one(&format!("{}[local.retention]\nkeep_last = -1\n", minimal()));
        assert_eq!(p.key, "local.retention.keep_last");
        assert_eq!(p.line, Some(7));
        let p = one(&format!("{}[local.retention]\nkeep_within = \"2 fortnights\"\n", minimal()));
        assert_eq!(p.key, "local.retention.keep_within");
        let p = one(&format!("{}[local.retention]\nkeep_last = 1\nmax_total_size = \"lots\"\n", minimal()));
        assert_eq!(p.key, "local.retention.max_total_size");
        let p = one(&format!("{}[local.retention]\nkeep_lats = 1\n", minimal()));
        assert_eq!(p.key, "local.retention.keep_lats");
        assert!(p.message.contains("unknown field"));
        let p = one(&format!("{}[schedule]\ntimezone = \"Mars/Olympus\"\n", minimal()));
        assert_eq!(p.key, "schedule.timezone");
        assert!(p.message.contains("IANA"));
    }
}

mod schedule {
    use super::*;

    #[test]
    fn defaults() {
        let s = parse(&minimal()).unwrap();
        assert_eq!(s.schedule.schedule.text(), "0 */6 * * *");
        assert_eq!(s.schedule.schedule.jitter(), Duration::ZERO);
        assert!(s.schedule.catch_up);
        assert!(!s.schedule.skip_unchanged);
        assert_eq!(s.schedule.max_attempts, 3);
        assert!(s.metrics_textfile.is_none());
    }

    #[test]
    fn every_key() {
        let text = format!(
            "{}[schedule]\ncron = \"*/10 * * * * *\"\ntimezone = \"America/New_York\"\njitter = \"5s\"\ncatch_up = false\nskip_unchanged = true\nmax_attempts = 5\n[metrics]\ntextfile = \"/var/lib/node_exporter/textfile_collector/etcd_backupd.prom\"\n",
            minimal()
        );
        let s = parse(&text).unwrap();
        assert_eq!(s.schedule.schedule.text(), "*/10 * * * * *");
        assert_eq!(s.schedule.schedule.timezone(), chrono_tz::America::New_York);
        assert_eq!(s.schedule.schedule.jitter(), Duration::from_secs(5));
        assert!(!s.schedule.catch_up && s.schedule.skip_unchanged);
        assert_eq!(s.schedule.max_attempts, 5);
        assert!(s.metrics_textfile.unwrap().ends_with("etcd_backupd.prom"));
    }

    #[test]
    fn bad_values_name_their_key() {
        let p = one(&format!("{}[schedule]\ncron = \"every hour\"\n", minimal()));
        assert_eq!((p.key.as_str(), p.line), ("schedule.cron", Some(7)));
        let p = one(&format!("{}[schedule]\njitter = \"soon\"\n", minimal()));
        assert_eq!(p.key, "schedule.jitter");
        let p = one(&format!("{}[schedule]\nmax_attempts = 0\n", minimal()));
        assert_eq!(p.key, "schedule.max_attempts");
        let p = one(&format!("{}[schedule]\ncatch_up = \"yes\"\n", minimal()));
        assert_eq!(p.key, "schedule.catch_up");
        let p = one(&format!("{}[metrics]\ntextfile = \"metrics.prom\"\n", minimal()));
        assert_eq!(p.key, "metrics.textfile");
    }
}

mod drill {
    use super::*;

    #[test]
    fn off_by_default() {
        let s = parse(&minimal()).unwrap();
        assert!(s.drill.identity_file.is_none() && s.drill.schedule.is_none() && s.drill.etcd_bin.is_none());
    }

    #[test]
    fn a_full_table_parses() {
        let text = format!(
            "{}[drill]\nidentity_file = \"/etc/etcd-backupd/drill.key\"\ncron = \"30 3 * * 0\"\netcd_bin = \"/opt/etcd\"\n",
            minimal()
        );
        let s = parse(&text).unwrap();
        assert_eq!(s.drill.identity_file, Some(PathBuf::from("/etc/etcd-backupd/drill.key")));
        assert_eq!(s.drill.schedule.as_ref().map(|c| c.text()), Some("30 3 * * 0"));
        assert_eq!(s.drill.etcd_bin, Some(PathBuf::from("/opt/etcd")));
    }

    #[test]
    fn a_schedule_needs_an_identity() {
        let p = one(&format!("{}[drill]\ncron = \"30 3 * * 0\"\n", minimal()));
        assert_eq!((p.key.as_str(), p.line), ("drill.cron", Some(7)));
        assert!(p.message.contains("drill.identity_file") && p.message.contains("verification host"), "{}", p.message);
    }

    #[test]
    fn bad_values_name_their_key() {
        let p = one(&format!("{}[drill]\nidentity_file = \"/k\"\ncron = \"every sunday\"\n", minimal()));
        assert_eq!(p.key, "drill.cron");
        let p = one(&format!("{}[drill]\nidentity_file = \"drill.key\"\n", minimal()));
        assert_eq!(p.key, "drill.identity_file");
        assert!(p.message.contains("relative"), "{}", p.message);
        let p = one(&format!("{}[drill]\nidentity = \"/k\"\n", minimal()));
        assert_eq!(p.key, "drill.identity");
    }

    #[test]
    fn the_identity_file_is_read_when_the_config_is_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_key = dir.path().join("drill.key");
        std::fs::write(&not_a_key, "hello\n").unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, format!("{}[drill]\nidentity_file = \"{}\"\n", minimal(), not_a_key.display())).unwrap();
        let e = load(&cfg).unwrap_err().to_string();
        assert!(e.contains("drill.identity_file") && e.contains("drill.key"), "{e}");
        use age::secrecy::ExposeSecret;
        std::fs::write(&not_a_key, age::x25519::Identity::generate().to_string().expose_secret()).unwrap();
        assert!(load(&cfg).is_ok());
    }
}

#[test]
fn s3_prefix_with_dot_parts_is_refused() {
    for prefix in ["../other", "a/../b", "a/./b", "a//b", "..", "x/.."] {
        let p = one(&format!("{}[s3]\nbucket = \"b-1\"\nprefix = \"{prefix}\"\n", minimal()));
        assert_eq!(p.key, "s3.prefix", "{prefix}");
        assert!(p.message.contains("\"..\" part"), "{prefix}: {}", p.message);
        assert_eq!(p.line, Some(8), "{prefix}");
    }
    let s = parse(&format!("{}[s3]\nbucket = \"b-1\"\nprefix = \"a.b/..c/d..\"\n", minimal())).unwrap();
    assert_eq!(s.s3.unwrap().prefix, "a.b/..c/d../", "dots inside a part are fine");
}

#[test]
fn jitter_as_long_as_the_interval_is_refused() {
    let cases = [
        ("0 */6 * * *", "6h", Some("6h")),
        ("0 */6 * * *", "7h", Some("6h")),
        ("0 */6 * * *", "5h 59m", None),
        ("*/10 * * * * *", "10s", Some("10s")),
        // Uneven gaps: 01:00 and 03:00 fire two hours apart, 03:00 to 01:00 twenty-two.
        ("0 1,3 * * *", "3h", Some("2h")),
        ("0 1,3 * * *", "1h", None),
    ];
    for (cron, jitter, refused) in cases {
        let text = format!("{}[schedule]\ncron = \"{cron}\"\njitter = \"{jitter}\"\n", minimal());
        match refused {
            None => assert!(parse(&text).is_ok(), "{cron} / {jitter}: {:?}", parse(&text).err()),
            Some(shortest) => {
                let p = one(&text);
                assert_eq!(p.key, "schedule.jitter", "{cron} / {jitter}");
                assert!(p.message.contains(&format!("shortest interval ({shortest})")), "{}", p.message);
            }
        }
    }
}

#[test]
fn a_duplicate_table_or_key_is_named() {
    let p = one(&format!("{}[local]\ndir = \"/a\"\n[local]\ndir = \"/b\"\n", minimal()));
    assert_eq!((p.line, p.key.as_str()), (Some(8), "local"), "{p:?}");
    assert!(p.message.contains("duplicate"), "{p:?}");
    let p = one(&format!("{}[local]\ndir = \"/a\"\ndir = \"/b\"\n", minimal()));
    assert_eq!((p.line, p.key.as_str()), (Some(8), "dir"), "{p:?}");
}

#[test]
fn notify_urls_are_checked_and_named() {
    let s = parse(&format!("{}[notify]\nhealthchecks = [\"https://hc-ping.com/abc/\"]\n", minimal())).unwrap();
    assert_eq!(s.notify.healthchecks, vec!["https://hc-ping.com/abc"], "a trailing / is dropped");
    assert_eq!(s.notify.timeout, Duration::from_secs(10));
    let p = one(&format!("{}[notify]\nwebhooks = [\"https://ok\", \"hooks.example/x\"]\n", minimal()));
    assert_eq!((p.key.as_str(), p.line), ("notify.webhooks[1]", Some(7)), "{p:?}");
    assert!(p.message.contains("is not a URL"), "{}", p.message);
}
