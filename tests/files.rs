//! `[files]`: the control-plane files archived beside every snapshot, with the real `age`, `zstd` and
//! `tar`, in the local dir and S3.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// A fake control-plane tree: nested folders, a 0600 key, a symlink, an encryption config.
fn control_plane(root: &Path) -> PathBuf {
    let k = root.join("etc/kubernetes");
    std::fs::create_dir_all(k.join("pki/etcd")).unwrap();
    std::fs::create_dir_all(k.join("manifests")).unwrap();
    std::fs::create_dir_all(k.join("enc")).unwrap();
    std::fs::write(k.join("pki/ca.crt"), "-----BEGIN CERTIFICATE-----\nca\n").unwrap();
    std::fs::write(k.join("pki/ca.key"), "-----BEGIN PRIVATE KEY-----\nsecret\n").unwrap();
    std::fs::set_permissions(k.join("pki/ca.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(k.join("pki/etcd/server.key"), vec![7u8; 70_000]).unwrap();
    std::fs::set_permissions(k.join("pki/etcd/server.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("ca.crt", k.join("pki/current.crt")).unwrap();
    std::fs::write(k.join("pki/scratch.tmp"), "left out").unwrap();
    std::fs::write(k.join("enc/enc.yaml"), "kind: EncryptionConfiguration\n").unwrap();
    std::fs::write(
        k.join("manifests/kube-apiserver.yaml"),
        format!("    - --encryption-provider-config={}\n", k.join("enc/enc.yaml").display()),
    )
    .unwrap();
    k
}

fn files_table(paths: &[&Path]) -> String {
    let list: Vec<String> = paths.iter().map(|p| format!("\"{}\"", p.display())).collect();
    format!("[files]\npaths = [{}]\nexclude = [\"*.tmp\"]\n", list.join(", "))
}

fn manifest_of(folder: &Path) -> Value {
    let name = files(folder).into_iter().find(|n| n.ends_with(".manifest.json")).expect("a manifest");
    serde_json::from_slice(&std::fs::read(folder.join(name)).unwrap()).unwrap()
}

/// `age -d | zstd -d | tar -x` into `into`; the names `tar -t` lists.
fn open_archive(archive: &Path, identity: &Path, into: &Path) -> Vec<String> {
    std::fs::create_dir_all(into).unwrap();
    let script = format!(
        "age -d -i '{}' '{}' | zstd -d > '{}/a.tar' && tar -tf '{}/a.tar' && tar -xpf '{}/a.tar' -C '{}'",
        identity.display(),
        archive.display(),
        into.display(),
        into.display(),
        into.display(),
        into.display()
    );
    let out = std::process::Command::new("sh").arg("-c").arg(&script).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// The archive decrypts with the age CLI, decompresses with zstd and lists and extracts with tar: the
/// same bytes, modes and symlink; the manifest lists every file with its sha256; S3 holds it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_files_are_archived_beside_the_snapshot() {
    let etcd = Etcd::start(EtcdVersion::V35);
    etcd.seed(5, 10).await;
    let s3 = S3::start().await;
    let setup = Setup::new();
    let tree = control_plane(&setup.work.path().join("host"));
    let extra = format!("{}\n{}", s3.config_table(BUCKET, ""), files_table(&[&tree]));
    let cfg = setup.config(&etcd.config_table(), &extra);
    let out = run(&cfg, &["backup"]).await;
    assert!(out.status.success(), "{}", stderr(&out));

    let folder = setup.folder();
    let m = manifest_of(&folder);
    assert_eq!(m["format_version"], 2);
    let id = m["id"].as_str().unwrap().to_string();
    let archive = folder.join(format!("{id}.files.tar.zst.age"));
    assert_eq!(m["files"]["size"], std::fs::metadata(&archive).unwrap().len());
    assert!(s3.keys(BUCKET).iter().any(|k| k.ends_with(&format!("{id}.files.tar.zst.age"))), "{:?}", s3.keys(BUCKET));

    let into = setup.work.path().join("opened");
    let listed = open_archive(&archive, &setup.identity.file, &into);
    let rel = |p: &str| tree.join(p).display().to_string().trim_start_matches('/').to_string();
    for name in ["pki/ca.crt", "pki/ca.key", "pki/etcd/server.key", "pki/current.crt", "enc/enc.yaml"] {
        assert!(listed.iter().any(|l| l.trim_end_matches('/') == rel(name)), "{name} not in {listed:?}");
    }
    assert!(!listed.iter().any(|l| l.ends_with("scratch.tmp")), "excluded: {listed:?}");
    let extracted = |p: &str| into.join(rel(p));
    for name in ["pki/ca.crt", "pki/ca.key", "pki/etcd/server.key", "enc/enc.yaml"] {
        assert_eq!(std::fs::read(extracted(name)).unwrap(), std::fs::read(tree.join(name)).unwrap(), "{name}");
        let (a, b) = (std::fs::metadata(extracted(name)).unwrap(), std::fs::metadata(tree.join(name)).unwrap());
        assert_eq!(a.mode() & 0o7777, b.mode() & 0o7777, "{name}");
    }
    assert_eq!(std::fs::read_link(extracted("pki/current.crt")).unwrap(), Path::new("ca.crt"));

    let entries = m["files"]["entries"].as_array().unwrap();
    let key = entries.iter().find(|e| e["path"] == tree.join("pki/ca.key").display().to_string()).unwrap();
    assert_eq!(key["mode"], 0o600);
    assert_eq!(key["kind"], "file");
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(std::fs::read(tree.join("pki/ca.key")).unwrap()));
    assert_eq!(key["sha256"], sha);
    let link = entries.iter().find(|e| e["kind"] == "symlink").unwrap();
    assert_eq!(link["target"], "ca.crt");

    // Listing accepts the backup in both stores and says it has its files.
    let out = run(&cfg, &["list"]).await;
    let line = stdout(&out).lines().find(|l| l.starts_with(&id)).map(str::to_string).unwrap_or_default();
    assert!(line.contains("local,s3") && line.contains("files)"), "{}", stdout(&out));
    // Deleting removes the archive with its backup (as pruning does: the same removal).
    assert!(run(&cfg, &["backup"]).await.status.success());
    let out = run(&cfg, &["delete", &id]).await;
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(!archive.exists(), "the archive went with its backup");
    assert!(!s3.keys(BUCKET).iter().any(|k| k.contains(&id)), "{:?}", s3.keys(BUCKET));
}

/// A configured path that cannot be read fails the backup, naming it; nothing is committed anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_that_cannot_be_read_fails_the_backup_with_nothing_committed() {
    let etcd = Etcd::start(EtcdVersion::V35);
    let s3 = S3::start().await;
    let setup = Setup::new();
    let missing = setup.work.path().join("host/etc/kubernetes/pki");
    let extra = format!("{}\n{}", s3.config_table(BUCKET, ""), files_table(&[&missing]));
    let cfg = setup.config(&etcd.config_table(), &extra);
    let out = run(&cfg, &["backup"]).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&missing.display().to_string()) && err.contains("nothing was committed"), "{err}");
    assert!(files(&setup.folder()).is_empty(), "{:?}", files(&setup.folder()));
    assert!(s3.keys(BUCKET).is_empty(), "{:?}", s3.keys(BUCKET));
}

/// `restore --files-only` gives back the same tree (bytes, modes, owners, mtimes, the symlink), never
/// over an existing file without --force; `verify --identity` checks every file; a tampered archive
/// fails both, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_files_gives_back_the_tree_and_a_tampered_archive_is_refused() {
    let etcd = Etcd::start(EtcdVersion::V35);
    let setup = Setup::new();
    let tree = control_plane(&setup.work.path().join("host"));
    std::fs::write(tree.join("pki/helper"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(tree.join("pki/helper"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    let cfg = setup.config(&etcd.config_table(), &files_table(&[&tree]));
    assert!(run(&cfg, &["backup"]).await.status.success());
    let identity = setup.identity.file.display().to_string();
    let into = setup.work.path().join("restored-files");
    let into_arg = into.display().to_string();
    let restore = ["restore", "latest", "--identity", &identity, "--files", &into_arg, "--files-only"];
    let out = run(&cfg, &restore).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("extracted 6 files"), "{}", stdout(&out));
    let back = |p: &str| into.join(tree.join(p).strip_prefix("/").unwrap());
    for name in ["pki/ca.crt", "pki/ca.key", "pki/etcd/server.key", "enc/enc.yaml", "manifests/kube-apiserver.yaml"] {
        assert_eq!(std::fs::read(back(name)).unwrap(), std::fs::read(tree.join(name)).unwrap(), "{name}");
        let (a, b) = (std::fs::metadata(back(name)).unwrap(), std::fs::metadata(tree.join(name)).unwrap());
        assert_eq!((a.mode(), a.uid(), a.gid(), a.mtime()), (b.mode(), b.uid(), b.gid(), b.mtime()), "{name}");
    }
    assert_eq!(std::fs::read_link(back("pki/current.crt")).unwrap(), Path::new("ca.crt"));
    assert!(!back("pki/scratch.tmp").exists());
    let helper = std::fs::metadata(back("pki/helper")).unwrap().mode() & 0o7777;
    assert_eq!(helper, 0o755, "never setuid or setgid on restore");

    let out = run(&cfg, &restore).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("exists") && stderr(&out).contains("--force"), "{}", stderr(&out));
    let mut forced = restore.to_vec();
    forced.push("--force");
    let out = run(&cfg, &forced).await;
    assert!(out.status.success(), "{}", stderr(&out));

    let out = run(&cfg, &["verify", "latest", "--identity", &identity]).await;
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));

    let archive = files(&setup.folder()).into_iter().find(|n| n.ends_with(".files.tar.zst.age")).unwrap();
    let path = setup.folder().join(&archive);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 20;
    bytes[last] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let out = run(&cfg, &["verify", "latest", "--identity", &identity]).await;
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        format!("{}{}", stdout(&out), stderr(&out)).contains("does not match its manifest"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let elsewhere = setup.work.path().join("again").display().to_string();
    let out = run(&cfg, &["restore", "latest", "--identity", &identity, "--files", &elsewhere, "--files-only"]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&archive) && stderr(&out).contains("does not match its manifest"),
        "{}",
        stderr(&out)
    );
}

/// A drill restores the files archive too, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_restores_the_files_too() {
    let etcd = Etcd::start(EtcdVersion::V35);
    etcd.seed(5, 10).await;
    let setup = Setup::new();
    let tree = control_plane(&setup.work.path().join("host"));
    let cfg = setup.config(&etcd.config_table(), &files_table(&[&tree]));
    assert!(run(&cfg, &["backup"]).await.status.success());
    let (identity, bin) =
        (setup.identity.file.display().to_string(), etcd_bin_dir(EtcdVersion::V35).display().to_string());
    let out = run(&cfg, &["drill", "--identity", &identity, "--etcd-bin", &bin, "--json"]).await;
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["files"], 5, "{report}");
}

/// `etcd-backupd backup` as the service runs it: a user that is not root (`setpriv`), with or without
/// the one capability `packaging/control-plane-files.conf` grants.
async fn backup_as_service_user(cfg: &Path, read_any_file: bool) -> std::process::Output {
    let mut cmd = tokio::process::Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    if read_any_file {
        cmd.args(["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]);
    }
    cmd.arg(env!("CARGO_BIN_EXE_etcd-backupd")).arg("--config").arg(cfg).arg("backup");
    aws_env(&mut cmd);
    cmd.env("STATE_DIRECTORY", state_dir_for(cfg));
    cmd.output().await.unwrap()
}

/// The service user cannot read a root-only key: the backup fails naming the key and the drop-in, with
/// nothing committed. With CAP_DAC_READ_SEARCH (the drop-in) the same backup archives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_only_key_needs_the_drop_in() {
    let etcd = Etcd::start(EtcdVersion::V35);
    let setup = Setup::new();
    let tree = control_plane(&setup.work.path().join("host"));
    let cfg = setup.config(&etcd.config_table(), &files_table(&[&tree]));
    // What the service user owns (its state and backups) and may read (the config, the folders).
    let own = |p: &Path| {
        std::fs::create_dir_all(p).unwrap();
        nix::unistd::chown(p, Some(65534.into()), Some(65534.into())).unwrap();
    };
    own(&state_dir_for(&cfg));
    own(setup.folder().parent().unwrap());
    own(&setup.folder());
    std::fs::set_permissions(setup.work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&setup.identity.file, std::fs::Permissions::from_mode(0o600)).unwrap();

    let out = backup_as_service_user(&cfg, false).await;
    assert!(!out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("ca.key") && err.contains("CAP_DAC_READ_SEARCH") && err.contains("nothing was committed"),
        "{err}"
    );
    assert!(files(&setup.folder()).is_empty(), "{:?}", files(&setup.folder()));

    let out = backup_as_service_user(&cfg, true).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let m = manifest_of(&setup.folder());
    let key = tree.join("pki/ca.key").display().to_string();
    assert!(m["files"]["entries"].as_array().unwrap().iter().any(|e| e["path"] == key), "{m}");
}

/// Retention removes a backup's files archive with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_removes_the_archive_with_its_backup() {
    let etcd = Etcd::start(EtcdVersion::V35);
    let setup = Setup::new();
    let tree = control_plane(&setup.work.path().join("host"));
    let cfg = write_config(
        setup.work.path(),
        &etcd.config_table(),
        &setup.identity.recipient,
        "retention = { keep_last = 1 }",
        &files_table(&[&tree]),
    );
    assert!(run(&cfg, &["backup"]).await.status.success());
    let first: Vec<String> = files(&setup.folder());
    etcd.seed(3, 10).await;
    let out = run(&cfg, &["backup"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let now = files(&setup.folder());
    assert_eq!(now.iter().filter(|n| n.ends_with(".files.tar.zst.age")).count(), 1, "{now:?}");
    assert!(first.iter().all(|n| !now.contains(n)), "the first backup, archive included, is gone: {first:?} {now:?}");
}

/// A backup whose files came from a preset: `restore` prints that distribution's node procedure with
/// the paths it restored to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_prints_the_presets_node_procedure() {
    let etcd = Etcd::start(EtcdVersion::V35);
    let setup = Setup::new();
    let tree = control_plane(&setup.work.path().join("host"));
    let cfg = setup.config(&etcd.config_table(), &files_table(&[&tree]));
    assert!(run(&cfg, &["backup"]).await.status.success());
    // As a kubeadm preset would have recorded it (this host has no /etc/kubernetes to archive).
    let name = files(&setup.folder()).into_iter().find(|n| n.ends_with(".manifest.json")).unwrap();
    let path = setup.folder().join(name);
    let mut m: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m["files"]["preset"] = "kubeadm".into();
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let identity = setup.identity.file.display().to_string();
    let into = setup.work.path().join("files").display().to_string();
    let out = run(&cfg, &["restore", "latest", "--identity", &identity, "--files", &into, "--files-only"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("node procedure for kubeadm"), "{text}");
    assert!(text.contains(&format!("cp -a {into}/etc/kubernetes/. /etc/kubernetes/")), "{text}");
}

/// `[files] recipients` may be fewer people than the snapshots': the archive opens with theirs alone,
/// and the snapshots' key does not open it. A socket in a folder is left out, with a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_goes_to_its_own_recipients_and_skips_sockets() {
    let etcd = Etcd::start(EtcdVersion::V35);
    let setup = Setup::new();
    let tree = control_plane(&setup.work.path().join("host"));
    let _socket = std::os::unix::net::UnixListener::bind(tree.join("pki/agent.sock")).unwrap();
    let ca_keeper = age_identity(setup.work.path(), "ca-keeper");
    let table = format!("{}recipients = [\"{}\"]\n", files_table(&[&tree]), ca_keeper.recipient);
    let cfg = setup.config(&etcd.config_table(), &table);
    let out = run(&cfg, &["backup"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("a device, socket or fifo"), "{}", stderr(&out));
    let archive = files(&setup.folder()).into_iter().find(|n| n.ends_with(".files.tar.zst.age")).unwrap();
    let archive = setup.folder().join(archive);
    let listed = open_archive(&archive, &ca_keeper.file, &setup.work.path().join("opened"));
    assert!(
        listed.iter().any(|l| l.ends_with("ca.key")) && !listed.iter().any(|l| l.ends_with("agent.sock")),
        "{listed:?}"
    );
    let out =
        std::process::Command::new("age").arg("-d").arg("-i").arg(&setup.identity.file).arg(&archive).output().unwrap();
    assert!(!out.status.success(), "the snapshots' key opened the CA keys' archive");
}

/// A backup taken while S3 was down is caught up by the next one, its files archive with it (checked
/// against the manifest on the way): S3's listing then accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_uploads_the_archive_with_its_backup() {
    let etcd = Etcd::start(EtcdVersion::V35);
    let s3 = S3::start().await;
    let setup = Setup::new();
    let tree = control_plane(&setup.work.path().join("host"));
    let extra = format!("{}\n{}", s3.config_table(BUCKET, ""), files_table(&[&tree]));
    let cfg = setup.config(&etcd.config_table(), &extra);
    s3.faults.down.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(run(&cfg, &["backup"]).await.status.code(), Some(1));
    s3.faults.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let first = manifest_of(&setup.folder())["id"].as_str().unwrap().to_string();
    assert!(!s3.keys(BUCKET).iter().any(|k| k.contains(&first)), "{:?}", s3.keys(BUCKET));
    etcd.seed(2, 10).await;
    let out = run(&cfg, &["backup"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let keys = s3.keys(BUCKET);
    assert!(keys.iter().any(|k| k.ends_with(&format!("{first}.files.tar.zst.age"))), "{keys:?}");
    let out = run(&cfg, &["list", "--json"]).await;
    let rows: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let row = rows.as_array().unwrap().iter().find(|r| r["id"] == first.as_str()).unwrap();
    assert!(row["destinations"].as_array().unwrap().iter().any(|d| d == "s3"), "{row}");
}
