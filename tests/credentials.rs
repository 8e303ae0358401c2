//! The service runs as its own user, and kubeadm's etcd client key is root's (mode 0600). Run as an
//! unprivileged user (setpriv, as the tests run as root): the error names the file and the exact
//! LoadCredential= line to add; with the credential handed over ($CREDENTIALS_DIRECTORY, as systemd sets
//! it) the same config takes a real backup over TLS.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;

const NOBODY: u32 = 65534;

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
}

fn as_nobody(config: &Path, args: &[&str], credentials: Option<&Path>) -> std::process::Output {
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_etcd-backupd"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("STATE_DIRECTORY", config.parent().unwrap().join("state"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("JOURNAL_STREAM")
        .env_remove("CREDENTIALS_DIRECTORY");
    if let Some(dir) = credentials {
        cmd.env("CREDENTIALS_DIRECTORY", dir);
    }
    cmd.output().expect("setpriv (util-linux)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_only_client_key_is_explained_and_taken_from_a_systemd_credential() {
    let etcd = Etcd::start_tls(EtcdVersion::V35);
    etcd.seed(10, 100).await;
    let pki = etcd.pki.as_ref().unwrap();
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // kubeadm's layout: the CA and certificate world-readable, the key root's own.
    let kube = work.path().join("pki");
    std::fs::create_dir(&kube).unwrap();
    std::fs::set_permissions(&kube, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (ca, cert, key) =
        (kube.join("ca.crt"), kube.join("healthcheck-client.crt"), kube.join("healthcheck-client.key"));
    for (from, to, mode) in [(&pki.ca, &ca, 0o644), (&pki.client_cert, &cert, 0o644), (&pki.client_key, &key, 0o600)] {
        std::fs::copy(from, to).unwrap();
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let identity = age_identity(work.path(), "ops");
    let backups = work.path().join("backups");
    let state = work.path().join("state");
    for dir in [&backups, &state] {
        std::fs::create_dir(dir).unwrap();
        chown(dir, NOBODY);
    }
    let config = work.path().join("etcd-backupd.toml");
    let etcd_table = format!(
        "[etcd]\nendpoints = [\"{}\"]\ncacert = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        etcd.endpoint,
        ca.display(),
        cert.display(),
        key.display()
    );
    std::fs::write(&config, config_text(work.path(), &etcd_table, &[&identity.recipient], "", "")).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();

    let out = as_nobody(&config, &["check-config"], None);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("etcd.key") && err.contains(&format!("cannot read '{}'", key.display())), "{err}");
    assert!(err.contains("runs as user nobody"), "{err}");
    assert!(err.contains(&format!("LoadCredential=healthcheck-client.key:{}", key.display())), "{err}");

    // What systemd does for LoadCredential=: a private copy the service user can read.
    let credentials = work.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::copy(&key, credentials.join("healthcheck-client.key")).unwrap();
    for p in [&credentials, &credentials.join("healthcheck-client.key")] {
        chown(p, NOBODY);
    }
    let out = as_nobody(&config, &["check-config"], Some(&credentials));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = as_nobody(&config, &["backup"], Some(&credentials));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(files(&backups.join("default")).iter().any(|n| n.ends_with(".manifest.json")));
}
