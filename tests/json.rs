//! `backup --json`, `verify --json` and `drill --json`: the documented shapes, on real runs.

mod common;

use common::*;
use serde_json::Value;

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(out)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_verify_and_drill_print_their_documented_json() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V35);
    etcd.seed(12, 10).await;
    let s3 = S3::start().await;
    let config = s.config(&etcd.config_table(), &s3.config_table(BUCKET, ""));

    let out = run(&config, &["backup", "--json", "--label", "json-test"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let b = json(&out);
    assert_eq!((b["ok"].as_bool(), b["outcome"].as_str()), (Some(true), Some("committed")), "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    assert_eq!(b["committed"], serde_json::json!(["local", "s3"]));
    assert_eq!(b["label"], "json-test");
    assert!(b["revision"].as_i64().unwrap() > 0 && b["artifact_bytes"].as_u64().unwrap() > 0, "{b}");
    assert_eq!(b["failed"], serde_json::json!([]));
    assert!(b["error"].is_null());

    let identity = s.identity.file.display().to_string();
    let out = run(&config, &["verify", "latest", "--identity", &identity, "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!((v["ok"].as_bool(), v["id"].as_str()), (Some(true), Some(id.as_str())), "{v}");
    let copies = v["copies"].as_array().unwrap();
    assert_eq!(copies.len(), 2);
    for c in copies {
        assert_eq!((c["ok"].as_bool(), c["checked"].as_str()), (Some(true), Some("decrypted")), "{c}");
        assert_eq!(c["keys"], 12);
        assert!(u32::from_str_radix(c["hash"].as_str().unwrap(), 16).is_ok(), "{c}");
    }
    // Without the identity: sha256 only; a damaged copy says why, and the run fails.
    let artifact = s.folder().join(format!("{id}.db.zst.age"));
    let good = std::fs::read(&artifact).unwrap();
    let mut bytes = good.clone();
    bytes[10] ^= 1;
    std::fs::write(&artifact, bytes).unwrap();
    let out = run(&config, &["verify", &id, "--json"]).await;
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["ok"], false);
    let local = v["copies"].as_array().unwrap().iter().find(|c| c["destination"] == "local").unwrap();
    assert_eq!((local["ok"].as_bool(), local["checked"].as_str()), (Some(false), Some("sha256")));
    assert!(local["error"].as_str().unwrap().contains("does not match its manifest"), "{local}");

    std::fs::write(&artifact, good).unwrap();
    let bin = etcd_bin_dir(EtcdVersion::V35).display().to_string();
    let out = run(&config, &["drill", &id, "--identity", &identity, "--etcd-bin", &bin, "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let d = json(&out);
    assert_eq!(
        (d["ok"].as_bool(), d["id"].as_str(), d["from"].as_str()),
        (Some(true), Some(id.as_str()), Some("local"))
    );
    assert_eq!(d["keys"], 12);
    assert!(d["duration_ms"].as_u64().is_some() && d["error"].is_null(), "{d}");

    // A run that commits nothing says so in the same shape.
    let dead =
        s.config(&format!("[etcd]\nendpoints = [\"http://127.0.0.1:{}\"]\ndial_timeout = \"1s\"\n", free_port()), "");
    let out = run(&dead, &["backup", "--json"]).await;
    assert_eq!(out.status.code(), Some(1));
    let b = json(&out);
    assert_eq!((b["ok"].as_bool(), b["outcome"].as_str()), (Some(false), Some("failed")), "{b}");
    assert!(b["error"].as_str().unwrap().contains("cannot reach etcd") && b["id"].is_null(), "{b}");
}
