//! Cluster mode with real parts: three etcd members on loopback, one daemon per member, one bucket.
//! Each schedule slot is backed up once for the whole cluster, by a follower.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use etcd_backupd::manifest::BackupId;
use serde_json::Value;

/// One member's daemon config in `work/<member>`: that member's endpoint, its own local dir and state,
/// the shared bucket, a per-two-second schedule, short lease and leader delay.
fn member_config(setup: &Setup, etcd: &Etcd, name: &str, s3: &S3) -> PathBuf {
    let dir = setup.work.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let extra = format!(
        "{}\n[schedule]\ncron = \"*/2 * * * * *\"\n\n[coordination]\nlease_ttl = \"3s\"\nleader_delay = \"1s\"\n",
        s3.config_table(BUCKET, "")
    );
    let path = dir.join("etcd-backupd.toml");
    std::fs::write(&path, config_text(&dir, &etcd.config_table(), &[&setup.identity.recipient], "", &extra)).unwrap();
    path
}

/// The slot records in etcd: slot key → (member id, backup id).
async fn records(etcd: &Etcd) -> BTreeMap<String, (String, String)> {
    let mut client = etcd.client().await;
    let prefix = "/etcd-backupd/default/slots/";
    let found = client.get(prefix, Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
    found
        .kvs()
        .iter()
        .map(|kv| {
            let r: Value = serde_json::from_slice(kv.value()).unwrap();
            let key = String::from_utf8(kv.key().to_vec()).unwrap();
            (key, (r["member_id"].as_str().unwrap().to_string(), r["backup_id"].as_str().unwrap().to_string()))
        })
        .collect()
}

/// The ids of the backups committed in S3.
fn committed(s3: &S3) -> Vec<String> {
    s3.keys(BUCKET)
        .iter()
        .filter_map(|k| k.strip_suffix(".manifest.json"))
        .map(|k| k.rsplit('/').next().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_slot_is_backed_up_once_by_a_follower() {
    let setup = Setup::new();
    let members = Member::several(3);
    let dirs: Vec<(Member, PathBuf)> =
        members.iter().map(|m| (m.clone(), setup.work.path().join(format!("{}-data", m.name)))).collect();
    let cluster = Etcd::start_cluster(EtcdVersion::V35, &dirs);
    cluster[0].seed(20, 100).await;
    let s3 = S3::start().await;

    let mut daemons = Vec::new();
    for (etcd, member) in cluster.iter().zip(&members) {
        daemons.push(Daemon::start(&member_config(&setup, etcd, &member.name, &s3)).await);
    }
    // Long enough for at least five slots.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let leader = {
        let out = cluster[0].etcdctl(&["endpoint", "status", "-w", "json"]);
        let status: Value = serde_json::from_slice(&out.stdout).unwrap();
        format!("{:x}", status[0]["Status"]["leader"].as_u64().unwrap())
    };
    let mut logs = String::new();
    for d in daemons {
        let (status, _, _, log) = d.stop().await;
        assert!(status.success(), "{log}");
        logs.push_str(&log);
    }

    let recorded = records(&cluster[0]).await;
    assert!(recorded.len() >= 5, "{recorded:?}\n{logs}");
    let in_s3 = committed(&s3);
    let recorded_ids: Vec<&String> = recorded.values().map(|(_, id)| id).collect();
    for id in &recorded_ids {
        assert!(in_s3.contains(id), "the record names {id}, which S3 does not hold: {in_s3:?}\n{logs}");
    }
    // Every backup in S3 covers a recorded slot, one each; only the slot running at the stop may lack
    // its record.
    let last_slot = recorded.keys().last().unwrap().rsplit('/').next().unwrap().to_string();
    let unrecorded: Vec<&String> = in_s3.iter().filter(|id| !recorded_ids.contains(id)).collect();
    for id in &unrecorded {
        let created = BackupId::parse(id).unwrap().created().format("%Y%m%dT%H%M%SZ").to_string();
        assert!(created > last_slot, "backup {id} covers no slot: a second backup of a slot?\n{recorded:?}\n{logs}");
    }
    assert!(unrecorded.len() <= 1, "{unrecorded:?}\n{logs}");
    assert!(
        recorded.values().all(|(member, _)| *member != leader),
        "the leader {leader} took a slot while its followers were healthy: {recorded:?}"
    );
    assert!(logs.contains("covered by member"), "the others said who covered the slot:\n{logs}");
}
