//! S3 through a real forwarding proxy (Debian's tinyproxy on loopback): HTTPS_PROXY with a CONNECT
//! tunnel to an HTTPS store and its private CA; `[s3] proxy` to a plain-HTTP store; NO_PROXY and
//! `proxy = ""` going direct past a proxy that does not exist.

mod common;

use std::path::Path;

use common::*;

async fn backup_with(config: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_etcd-backupd"));
    cmd.arg("--config").arg(config).arg("backup");
    aws_env(&mut cmd);
    for v in
        ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"]
    {
        cmd.env_remove(v);
    }
    cmd.env("STATE_DIRECTORY", state_dir_for(config)).envs(env.iter().copied());
    cmd.output().await.unwrap()
}

fn manifests_in(s3: &S3) -> usize {
    s3.keys(BUCKET).iter().filter(|k| k.ends_with(".manifest.json")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_proxy_tunnels_to_an_https_store() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.seed(5, 10).await;
    let s3 = S3::start_tls().await;
    let proxy = Tinyproxy::start();
    let ca = s3.pki.as_ref().unwrap().ca.display().to_string();
    let table = s3.config_table(BUCKET, "").replace("part_size", &format!("ca_file = \"{ca}\"\npart_size"));
    let config = s.config(&etcd.config_table(), &table);
    let out = backup_with(&config, &[("HTTPS_PROXY", &proxy.url)]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(manifests_in(&s3), 1);
    let port = s3.endpoint.rsplit(':').next().unwrap();
    assert!(
        proxy.log().contains(&format!("CONNECT 127.0.0.1:{port}")),
        "the tunnel went through the proxy:\n{}",
        proxy.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_proxy_forwards_to_a_plain_http_store_and_no_proxy_or_empty_go_direct() {
    let s = Setup::new();
    let etcd = Etcd::start(EtcdVersion::V34);
    etcd.seed(5, 10).await;
    let s3 = S3::start().await;
    let proxy = Tinyproxy::start();
    let table = s3.config_table(BUCKET, "").replace("part_size", &format!("proxy = \"{}\"\npart_size", proxy.url));
    let config = s.config(&etcd.config_table(), &table);
    // s3.proxy wins over the environment's (dead) proxy.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let out = backup_with(&config, &[("HTTP_PROXY", &dead), ("HTTPS_PROXY", &dead)]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let port = s3.endpoint.rsplit(':').next().unwrap();
    assert!(
        proxy.log().contains(&format!("http://127.0.0.1:{port}/")),
        "requests went through the proxy:\n{}",
        proxy.log()
    );
    assert_eq!(manifests_in(&s3), 1);

    // NO_PROXY bypasses a proxy (here a dead one from the environment).
    let direct = s.config(&etcd.config_table(), &s3.config_table(BUCKET, ""));
    etcd.seed(1, 1).await;
    let out = backup_with(&direct, &[("HTTP_PROXY", &dead), ("NO_PROXY", "127.0.0.1")]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    // Without NO_PROXY the dead proxy is used, and named.
    etcd.seed(1, 1).await;
    let out = backup_with(&direct, &[("HTTP_PROXY", &dead)]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // proxy = "" goes direct whatever the environment says.
    let none =
        s.config(&etcd.config_table(), &s3.config_table(BUCKET, "").replace("part_size", "proxy = \"\"\npart_size"));
    etcd.seed(1, 1).await;
    let out = backup_with(&none, &[("HTTP_PROXY", &dead)]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(manifests_in(&s3), 4, "the one the dead proxy kept from S3 was caught up");
}
