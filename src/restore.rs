//! Getting a backup back: check an artifact against its manifest, decrypt and decompress it into the
//! plain snapshot etcd sent (trailer checked), and restore that into a new data dir with etcd's own tool.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};

use tokio_util::sync::CancellationToken;

use crate::interrupt::Interrupted;
use crate::manifest::{BackupId, Compression, Manifest};
use crate::progress::Progress;
use crate::snapshot::TrailerCheck;
use crate::store::{Destination, Stored};

/// Which backup: an id, the newest, or the newest before a time.
#[derive(Debug, Clone)]
pub enum Selector {
    Id(BackupId),
    Latest,
    Before(chrono::DateTime<chrono::Utc>),
}

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, String> {
        if text == "latest" { Ok(Selector::Latest) } else { BackupId::parse(text).map(Selector::Id) }
    }

    /// The id this selector picks among every destination's backups at `now`. `latest` and `--before`
    /// never pick a backup dated in the future (a wrong clock when it was taken) while another exists:
    /// its date says nothing about how new its data is.
    pub fn pick(&self, backups: &[&Stored], now: chrono::DateTime<chrono::Utc>) -> Option<BackupId> {
        let ids = backups.iter().map(|b| &b.manifest.id);
        let newest = |ids: Vec<&BackupId>| -> Option<BackupId> {
            let (present, future): (Vec<&BackupId>, Vec<&BackupId>) =
                ids.into_iter().partition(|id| !crate::retention::is_future_dated(id, now));
            present.into_iter().max().or_else(|| future.into_iter().max()).cloned()
        };
        match self {
            Selector::Id(id) => ids.into_iter().find(|i| *i == id).cloned(),
            Selector::Latest => newest(ids.collect()),
            Selector::Before(t) => newest(ids.filter(|id| id.created() < *t).collect()),
        }
    }
}

/// The chosen backup and the destinations that hold it, local first, each with its own manifest: every
/// copy is checked against the manifest stored beside it, so one damaged manifest condemns one copy.
pub struct Found<'a> {
    /// The first holder's manifest, for messages.
    pub manifest: Manifest,
    pub holders: Vec<(&'a Destination, Stored)>,
}

/// Lists every destination and picks the backup among all of them (the newest of any destination is
/// `latest`): what was found (local first), and the destinations that could not be listed.
pub async fn locate<'a>(destinations: &'a [Destination], selector: &Selector) -> (Option<Found<'a>>, Vec<String>) {
    let mut listings = Vec::new();
    let mut errors = Vec::new();
    for d in destinations {
        match d.list().await {
            Ok(listing) => listings.push((d, listing)),
            Err(e) => errors.push(format!("{}: {e:#}", d.kind())),
        }
    }
    let all: Vec<&Stored> = listings.iter().flat_map(|(_, l)| l.backups.iter()).collect();
    let Some(id) = selector.pick(&all, chrono::Utc::now()) else { return (None, errors) };
    let holders: Vec<(&Destination, Stored)> = listings
        .into_iter()
        .filter_map(|(d, l)| l.backups.into_iter().find(|b| b.manifest.id == id).map(|s| (d, s)))
        .collect();
    let found = holders.first().map(|(_, s)| s.manifest.clone()).map(|manifest| Found { manifest, holders });
    (found, errors)
}

/// What no destination holds, for the error.
pub fn not_found(selector: &Selector) -> String {
    match selector {
        Selector::Id(id) => format!("no destination holds a backup {id}"),
        Selector::Latest => "no destination holds any backup".to_string(),
        Selector::Before(t) => format!("no backup was taken before {t}"),
    }
}

/// Finds a backup in the destinations (local first); a destination that cannot be listed matters only
/// when no other holds it.
pub async fn find<'a>(destinations: &'a [Destination], selector: &Selector) -> Result<Found<'a>> {
    let (found, errors) = locate(destinations, selector).await;
    found.ok_or_else(|| {
        let what = not_found(selector);
        if errors.is_empty() {
            anyhow!("{what} (see etcd-backupd list)")
        } else {
            anyhow!("{what}; also: {}", errors.join("; "))
        }
    })
}

/// Makes the artifact available as a local file, checked against `manifest` (size and sha256) before
/// anything decrypts it: the local copy, or a download from S3 into `scratch` (hashed as it arrives; a
/// download that does not match is removed). A bar on a terminal shows the download.
pub async fn fetch(
    holder: &Destination,
    manifest: &Manifest,
    scratch: &Path,
    cancel: &CancellationToken,
) -> Result<PathBuf> {
    let name = manifest.artifact_name();
    match holder {
        Destination::Local(l) => {
            let path = l.folder().join(&name);
            let (checked, m) = (path.clone(), manifest.clone());
            tokio::task::spawn_blocking(move || check_artifact(&checked, &m)).await??;
            Ok(path)
        }
        Destination::S3(s3) => {
            let path = scratch.join(format!(".{name}.download"));
            let progress = Progress::start("downloading", manifest.artifact.size);
            let downloaded = tokio::select! {
                downloaded = s3.download(&name, &path, &progress) => downloaded,
                () = cancel.cancelled() => Err(Interrupted.into()),
            };
            let (size, sha) = match downloaded {
                Ok(done) => done,
                Err(e) => {
                    let _ = std::fs::remove_file(&path);
                    return Err(e);
                }
            };
            progress.finish();
            if let Err(e) = matches_manifest(&format!("{name} in {}", s3.place()), size, &sha, manifest) {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
            Ok(path)
        }
    }
}

/// Fetches one copy of a backup (downloading it into `scratch` if it is remote) and decrypts it into
/// `output` with every check of `decrypt_to`, on a blocking thread.
pub async fn fetch_and_decrypt(
    holder: &Destination,
    manifest: &Manifest,
    identities: &std::sync::Arc<Vec<Box<dyn age::Identity + Send + Sync>>>,
    scratch: &Path,
    output: &Path,
    cancel: &CancellationToken,
) -> Result<Plain> {
    let artifact = fetch(holder, manifest, scratch, cancel).await?;
    let (manifest, output, identities, cancel) =
        (manifest.clone(), output.to_path_buf(), identities.clone(), cancel.clone());
    tokio::task::spawn_blocking(move || {
        let progress = Progress::start("decrypting", manifest.artifact.size);
        decrypt_to(&artifact, &manifest, &identities, &output, &progress, &cancel)
    })
    .await?
}

/// Checks that an artifact file is the one the manifest recorded: size and sha256.
pub fn check_artifact(path: &Path, manifest: &Manifest) -> Result<()> {
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot open '{}'", path.display()))?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher).with_context(|| format!("cannot read '{}'", path.display()))?;
    matches_manifest(&format!("'{}'", path.display()), size, &hex::encode(hasher.finalize()), manifest)
}

/// An artifact of `size` bytes with `sha` is the one `manifest` recorded, or an error naming `what`.
fn matches_manifest(what: &str, size: u64, sha: &str, manifest: &Manifest) -> Result<()> {
    if size != manifest.artifact.size || sha != manifest.artifact.sha256 {
        bail!(
            "{what} does not match its manifest: {size} bytes with sha256 {sha}, the manifest says {} bytes with sha256 {}; the artifact is damaged or was replaced",
            manifest.artifact.size,
            manifest.artifact.sha256
        );
    }
    Ok(())
}

/// What decrypting found.
#[derive(Debug)]
pub struct Plain {
    pub size: u64,
    pub sha256: String,
    /// The database's structure checked, and its status as etcd's tools print it.
    pub status: crate::snapshot::bbolt::Status,
}

/// Decrypts and decompresses `artifact` into `output` (0600, written as `.part` and renamed only when
/// every check passed): the artifact's sha256 and size must match the manifest, and the plain snapshot's
/// trailer, size and sha256 too. Runs on the calling thread: call it from a blocking task.
pub fn decrypt_to(
    artifact: &Path,
    manifest: &Manifest,
    identities: &[Box<dyn age::Identity + Send + Sync>],
    output: &Path,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<Plain> {
    let part = output.with_file_name(format!(
        ".{}.part",
        output.file_name().and_then(|n| n.to_str()).context("the output needs a file name")?
    ));
    // The plain snapshot is written to a file without a name in the output's folder, named only when
    // every check passed: an interrupted or killed restore leaves no plaintext. Where the file system
    // has no unnamed files, a named `.part` (removed on every error path) does.
    let (mut out, named) = match crate::files::unnamed_in(folder_of(output)) {
        Ok(file) => (file, false),
        Err(_) => (crate::files::create_private(&part)?, true),
    };
    let result = (|| {
        let file = std::fs::File::open(artifact).with_context(|| format!("cannot open '{}'", artifact.display()))?;
        let mut hashed =
            HashingReader { inner: std::io::BufReader::new(file), hasher: Sha256::new(), size: 0, progress };
        let decryptor = age::Decryptor::new_buffered(&mut hashed)
            .map_err(|e| anyhow!("'{}' is not an age file: {e}", artifact.display()))?;
        let decrypted =
            decryptor.decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity)).map_err(|e| {
                anyhow!(
                    "cannot decrypt {}: {e} (is the identity one of the backup's recipients? the manifest lists them)",
                    manifest.id
                )
            })?;
        let mut plain: Box<dyn Read> = match manifest.compression() {
            Compression::Zstd { .. } => {
                Box::new(zstd::stream::read::Decoder::new(decrypted).context("cannot start zstd")?)
            }
            Compression::None => Box::new(decrypted),
        };
        let mut check = TrailerCheck::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = plain.read(&mut buf).map_err(|e| anyhow!("the artifact of {} is corrupt: {e}", manifest.id))?;
            if n == 0 {
                break;
            }
            crate::interrupt::check(cancel)?;
            check.update(&buf[..n]);
            out.write_all(&buf[..n]).with_context(|| format!("cannot write '{}'", part.display()))?;
        }
        drop(plain);
        let size = check.total();
        let sha256 = check.finish().map_err(|e| anyhow!("{}: {e}", manifest.id))?;
        // Read whatever the decoder left, so the artifact hash covers the whole file.
        std::io::copy(&mut hashed, &mut std::io::sink())?;
        let artifact_sha = hex::encode(hashed.hasher.finalize_reset());
        if hashed.size != manifest.artifact.size || artifact_sha != manifest.artifact.sha256 {
            bail!(
                "the artifact of {} does not match its manifest (size or sha256): it is damaged or was replaced",
                manifest.id
            );
        }
        if size != manifest.snapshot.size || sha256 != manifest.snapshot.sha256 {
            bail!("the snapshot in {} does not match its manifest (size or sha256)", manifest.id);
        }
        out.sync_all()?;
        let status = crate::snapshot::bbolt::status(&out)
            .map_err(|e| anyhow!("the snapshot in {} is not a sound etcd database: {e}", manifest.id))?;
        if let Some(recorded) = &manifest.snapshot.status
            && *recorded != status
        {
            bail!("the database in {} differs from its manifest: recorded {recorded:?}, found {status:?}", manifest.id);
        }
        status.check_not_older_than(manifest.etcd.revision).map_err(|e| anyhow!("{}: {e}", manifest.id))?;
        progress.finish();
        Ok(Plain { size, sha256, status })
    })();
    match (result, named) {
        (Ok(plain), false) => {
            crate::files::link_unnamed(&out, output)
                .with_context(|| format!("cannot create '{}'", output.display()))?;
            Ok(plain)
        }
        (Ok(plain), true) => {
            std::fs::rename(&part, output).with_context(|| format!("cannot rename '{}'", part.display()))?;
            Ok(plain)
        }
        (Err(e), named) => {
            if named {
                let _ = std::fs::remove_file(&part);
            }
            Err(e)
        }
    }
}

struct HashingReader<'p, R> {
    inner: R,
    hasher: Sha256,
    size: u64,
    progress: &'p Progress,
}

impl<R: std::io::BufRead> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

impl<R: std::io::BufRead> std::io::BufRead for HashingReader<'_, R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        if let Ok(buf) = self.inner.fill_buf() {
            let n = amt.min(buf.len());
            self.hasher.update(&buf[..n]);
            self.size += n as u64;
            self.progress.advance(n as u64);
        }
        self.inner.consume(amt);
    }
}

/// Member flags for `snapshot restore`.
#[derive(Debug, Clone, Default)]
pub struct MemberFlags {
    pub name: Option<String>,
    pub initial_cluster: Option<String>,
    pub initial_advertise_peer_urls: Option<String>,
    pub initial_cluster_token: Option<String>,
}

/// Where etcd's binaries are looked for: `etcd_bin` if given (a folder, or one of etcd's binaries in
/// it: `--etcd-bin /opt/etcd/etcd` means its folder), else every folder on PATH.
pub fn tool_dirs(etcd_bin: Option<&Path>) -> Vec<PathBuf> {
    match etcd_bin {
        Some(file) if file.is_file() => vec![file.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)],
        Some(dir) => vec![dir.to_path_buf()],
        None => std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default(),
    }
}

/// "in 'DIR'" or "on PATH", for an error saying a tool was not found.
pub fn searched(etcd_bin: Option<&Path>) -> String {
    match etcd_bin {
        Some(d) => format!("in '{}'", d.display()),
        None => "on PATH".to_string(),
    }
}

/// The tool that restores: `etcdutl` (3.5+) if found, else `etcdctl` (3.4).
pub fn restore_tool(etcd_bin: Option<&Path>) -> Result<(PathBuf, bool)> {
    let dirs = tool_dirs(etcd_bin);
    for (tool, utl) in [("etcdutl", true), ("etcdctl", false)] {
        if let Some(path) = dirs.iter().map(|d| d.join(tool)).find(|p| p.is_file()) {
            return Ok((path, utl));
        }
    }
    bail!(
        "neither etcdutl (etcd 3.5+) nor etcdctl (3.4) was found {}: install etcd's tools or pass --etcd-bin DIR",
        searched(etcd_bin)
    )
}

/// The folder `path` is in (`.` for a bare name).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A restore goes into a new data dir: one that does not exist yet, or an empty one.
pub fn check_new_data_dir(data_dir: &Path) -> Result<()> {
    if data_dir.exists() && std::fs::read_dir(data_dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("'{}' is not empty: restore into a new data dir, then swap it in", data_dir.display());
    }
    Ok(())
}

/// Runs `snapshot restore` into `data_dir`, which must not exist or be empty. The tool writes into a
/// sibling folder owned by this process, renamed to `data_dir` only when it succeeded: an interrupted or
/// killed restore never leaves a half-written data dir where etcd would start from it (and the next
/// restore beside it removes what a killed one left).
pub fn restore_into(
    snapshot: &Path,
    data_dir: &Path,
    flags: &MemberFlags,
    etcd_bin: Option<&Path>,
    cancel: &CancellationToken,
) -> Result<()> {
    check_new_data_dir(data_dir)?;
    if data_dir.exists() {
        std::fs::remove_dir(data_dir).with_context(|| format!("cannot use '{}'", data_dir.display()))?;
    }
    let (tool, utl) = restore_tool(etcd_bin)?;
    let name = data_dir.file_name().context("the data dir needs a name")?.to_string_lossy();
    let parent = folder_of(data_dir);
    let prefix = format!(".{name}.restoring-");
    crate::scratch::sweep_owned(parent, &prefix);
    let work = parent.join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let mut cmd = std::process::Command::new(&tool);
    crate::interrupt::die_with_parent(&mut cmd);
    if !utl {
        cmd.env("ETCDCTL_API", "3");
    }
    cmd.args(["snapshot", "restore"]).arg(snapshot).arg("--data-dir").arg(&work);
    for (flag, value) in [
        ("--name", &flags.name),
        ("--initial-cluster", &flags.initial_cluster),
        ("--initial-advertise-peer-urls", &flags.initial_advertise_peer_urls),
        ("--initial-cluster-token", &flags.initial_cluster_token),
    ] {
        if let Some(v) = value {
            cmd.arg(flag).arg(v);
        }
    }
    let out = cmd.output().with_context(|| format!("cannot run '{}'", tool.display()))?;
    if cancel.is_cancelled() {
        let _ = std::fs::remove_dir_all(&work);
        return Err(Interrupted.into());
    }
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&work);
        bail!("{} snapshot restore failed: {}", tool.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    std::fs::rename(&work, data_dir).with_context(|| {
        let _ = std::fs::remove_dir_all(&work);
        format!("cannot move the restored data dir into place at '{}'", data_dir.display())
    })
}
