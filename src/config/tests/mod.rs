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
max_rate = "100MiB"

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
    assert_eq!(s.max_rate.map(|r| r.get()), Some(100 << 20));
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

mod files;
mod refusals;
mod types;

#[test]
fn shipped_example_config_parses() {
    let s = parse(include_str!("../../../config/etcd-backupd.toml")).unwrap();
    assert_eq!(s.etcd().unwrap().endpoints, vec!["https://127.0.0.1:2379"]);
    assert!(s.etcd().unwrap().client_cert.is_some());
    assert!(s.encryption.recipients.is_empty(), "the operator fills these in");
    assert!(s.s3.is_none());
}

mod retention;

mod schedule;

mod drill;

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
