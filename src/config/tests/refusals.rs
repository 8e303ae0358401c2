//! Values a config may not hold, one row each: the tables appended to a minimal config, the key the one
//! refusal names, and words its message must contain.

use super::*;

const REFUSED: &[(&str, &str, &str)] = &[
    ("[backup]\ncluster = \"prod east\"\n", "backup.cluster", ""),
    ("[backup]\ncompression = \"gzip\"\n", "backup.compression", "\"zstd\" or \"none\""),
    ("[backup]\ncompression_level = 25\n", "backup.compression_level", ""),
    ("[backup]\nmax_rate = \"100KiB\"\n", "backup.max_rate", "below the least rate, 1.0 MiB"),
    ("[backup]\nmax_rate = \"fast\"\n", "backup.max_rate", "not a size"),
    ("[local]\ndir = \"backups\"\n", "local.dir", "\"/var/lib/etcd-backupd/backups\""),
    ("[s3]\nbucket = \"Etcd_Backups\"\n", "s3.bucket", "not a valid bucket name"),
    ("[s3]\nbucket = \"b-1\"\npart_size = \"1MiB\"\n", "s3.part_size", ""),
    ("[s3]\nbucket = \"b-1\"\npart_size = \"big\"\n", "s3.part_size", "not a size"),
    ("[s3]\nbucket = \"b-1\"\nsse_kms_key_id = \"k\"\n", "s3.sse_kms_key_id", ""),
    ("[s3]\nbucket = \"b-1\"\nserver_side_encryption = \"kms\"\n", "s3.server_side_encryption", ""),
    ("[s3]\nbucket = \"b-1\"\nchecksums = \"sometimes\"\n", "s3.checksums", ""),
    ("[s3]\nbucket = \"b-1\"\nendpoint = \"minio:9000\"\n", "s3.endpoint", ""),
    ("[s3]\nbucket = \"b-1\"\nprefix = \"/abs\"\n", "s3.prefix", ""),
    ("[s3]\nbucket = \"b-1\"\nstorage_class = \"cold\"\n", "s3.storage_class", ""),
    ("[s3]\nbucket = \"b-1\"\n[s3.retention]\n", "s3.retention", ""),
    ("[local.retention]\nkeep_within = \"2 fortnights\"\n", "local.retention.keep_within", ""),
    ("[local.retention]\nkeep_last = 1\nmax_total_size = \"lots\"\n", "local.retention.max_total_size", ""),
    ("[schedule]\njitter = \"soon\"\n", "schedule.jitter", ""),
    ("[schedule]\nmax_attempts = 0\n", "schedule.max_attempts", ""),
    ("[schedule]\ncatch_up = \"yes\"\n", "schedule.catch_up", ""),
    ("[metrics]\ntextfile = \"metrics.prom\"\n", "metrics.textfile", ""),
    ("[drill]\nidentity_file = \"/k\"\ncron = \"every sunday\"\n", "drill.cron", ""),
    ("[drill]\nidentity = \"/k\"\n", "drill.identity", ""),
    ("[coordination]\nmode = \"leader\"\n", "coordination.mode", "\"cluster\""),
    ("[coordination]\nprefix = \"etcd-backupd\"\n", "coordination.prefix", "starts with /"),
    ("[coordination]\nprefix = \"/a b/\"\n", "coordination.prefix", ""),
    ("[files]\npreset = \"openshift\"\n", "files.preset", "\"kubeadm\", \"k3s\" or \"rke2\""),
    ("[files]\npaths = [\"etc/kubernetes\"]\n", "files.paths[0]", "relative"),
    ("[files]\npaths = [\"/etc/kubernetes/../shadow\"]\n", "files.paths[0]", "'..'"),
    ("[files]\npaths = [\"/etc\"]\nexclude = [\"[\"]\n", "files.exclude[0]", "not a glob"),
    ("[files]\n", "files", "names nothing"),
    ("[files]\npreset = \"k3s\"\nrecipients = [\"AGE-SECRET-KEY-1X\"]\n", "files.recipients[0]", ""),
    ("[coordination]\nlease_ttl = \"1s\"\n", "coordination.lease_ttl", "minimum lease"),
    ("[coordination]\nleader_delay = \"soon\"\n", "coordination.leader_delay", ""),
    ("[deltas]\nenabled = true\nmax_interval = \"2h\"\n", "deltas.max_interval", "from 1s to 1h"),
    ("[deltas]\nmax_interval = \"500ms\"\n", "deltas.max_interval", "from 1s to 1h"),
    ("[deltas]\nmax_interval = \"0s\"\n", "deltas.max_interval", "longer than zero"),
    ("[deltas]\nmax_size = \"1KiB\"\n", "deltas.max_size", "from 64.0 KiB to 256.0 MiB"),
    ("[deltas]\nmax_size = \"1GiB\"\n", "deltas.max_size", "a restore reads one segment"),
    ("[deltas]\nmax_size = \"big\"\n", "deltas.max_size", "not a size"),
    ("[deltas]\nkeep_for = \"0s\"\n", "deltas.keep_for", "longer than zero"),
    ("[deltas]\nkeep_for = \"a while\"\n", "deltas.keep_for", ""),
    ("[deltas]\nenabled = \"yes\"\n", "deltas.enabled", ""),
    ("[deltas]\ninterval = \"1m\"\n", "deltas.interval", ""),
];

#[test]
fn each_bad_value_is_refused_by_its_key() {
    for (tables, key, words) in REFUSED {
        let p = one(&format!("{}{tables}", minimal()));
        assert_eq!(p.key, *key, "{tables}");
        assert!(p.message.contains(words), "{tables}: {}", p.message);
    }
}

#[test]
fn coordination_defaults_to_cluster_mode_under_the_clusters_prefix() {
    let s = parse(&format!("{}[backup]\ncluster = \"prod\"\n", minimal())).unwrap();
    assert_eq!(s.coordination.mode, CoordinationMode::Cluster);
    assert_eq!(s.coordination.prefix, "/etcd-backupd/prod/");
    assert_eq!((s.coordination.lease_ttl, s.coordination.leader_delay), (DEFAULT_LEASE_TTL, DEFAULT_LEADER_DELAY));
    let s = parse(&format!("{}[coordination]\nmode = \"member\"\nprefix = \"/x/y\"\n", minimal())).unwrap();
    assert_eq!((s.coordination.mode, s.coordination.prefix.as_str()), (CoordinationMode::Member, "/x/y/"));
}

#[test]
fn deltas_are_off_unless_enabled_and_take_their_defaults() {
    assert_eq!(parse(&minimal()).unwrap().deltas, None);
    let off = parse(&format!("{}[deltas]\nmax_interval = \"30s\"\n", minimal())).unwrap();
    assert_eq!(off.deltas, None, "keys without enabled = true write nothing");
    let on = parse(&format!("{}[deltas]\nenabled = true\n", minimal())).unwrap().deltas.unwrap();
    assert_eq!(on, DeltasSettings { max_interval: Duration::from_secs(15), max_size: 8 << 20, keep_for: None });
    let set = "[deltas]\nenabled = true\nmax_interval = \"1s\"\nmax_size = \"64KiB\"\nkeep_for = \"2d\"\n";
    let set = parse(&format!("{}{set}", minimal())).unwrap().deltas.unwrap();
    assert_eq!(
        set,
        DeltasSettings {
            max_interval: Duration::from_secs(1),
            max_size: 64 << 10,
            keep_for: Some(Duration::from_secs(2 * 86400))
        }
    );
}

#[test]
fn deltas_need_the_etcd_table() {
    let text = format!("[encryption]\nrecipients = [\"{KEY}\"]\n[deltas]\nenabled = true\n");
    let p = one(&text);
    assert_eq!(p.key, "deltas.enabled");
    assert!(p.message.contains("needs [etcd]"), "{}", p.message);
}
