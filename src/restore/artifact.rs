//! One copy of a backup made plain: the artifact checked against its manifest (size and sha256), then
//! decrypted and decompressed into the snapshot etcd sent, its trailer checked on the way.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};

use tokio_util::sync::CancellationToken;

use crate::interrupt::Interrupted;
use crate::manifest::{Compression, Manifest};
use crate::progress::Progress;
use crate::snapshot::TrailerCheck;
use crate::store::{ArtifactFile, Destination};

/// A checked artifact as a file: the store's own (read it, never remove it) or a download into the
/// scratch dir.
pub struct Fetched {
    pub path: PathBuf,
    pub downloaded: bool,
}

/// Makes the artifact available as a local file, checked against `manifest` (size and sha256) before
/// anything decrypts it: the store's own file, or a download into `scratch` (hashed as it arrives; a
/// download that does not match is removed).
pub async fn fetch(
    holder: &Destination,
    manifest: &Manifest,
    scratch: &Path,
    cancel: &CancellationToken,
) -> Result<Fetched> {
    let name = manifest.artifact_name();
    let download = scratch.join(format!(".{name}.download"));
    let got = tokio::select! {
        got = holder.artifact_file(&name, manifest.artifact.size, &download) => got,
        () = cancel.cancelled() => Err(Interrupted.into()),
    };
    let checked = match got {
        Ok(ArtifactFile::InPlace(path)) => {
            let (checked, m) = (path.clone(), manifest.clone());
            tokio::task::spawn_blocking(move || check_artifact(&checked, &m))
                .await?
                .map(|()| Fetched { path, downloaded: false })
        }
        Ok(ArtifactFile::Downloaded { size, sha256 }) => {
            let want = (manifest.artifact.size, manifest.artifact.sha256.as_str());
            matches(&format!("{name} in {}", holder.place()), (size, &sha256), want, "artifact")
                .map(|()| Fetched { path: download.clone(), downloaded: true })
        }
        Err(e) => Err(e),
    };
    if checked.is_err() {
        let _ = std::fs::remove_file(&download);
    }
    checked
}

/// Fetches one copy of a backup (downloading it into `scratch` if it is remote) and decrypts it into
/// `output` with every check of `decrypt_to`, on a blocking thread.
pub async fn fetch_and_decrypt(
    holder: &Destination,
    manifest: &Manifest,
    identities: &super::Identities,
    scratch: &Path,
    output: &Path,
    cancel: &CancellationToken,
) -> Result<Plain> {
    let artifact = fetch(holder, manifest, scratch, cancel).await?.path;
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
    check_file(path, manifest.artifact.size, &manifest.artifact.sha256, "artifact")
}

/// Checks that the file at `path` (a backup's `what`: its artifact, its files archive) has the size and
/// sha256 its manifest recorded, read as a stream.
pub fn check_file(path: &Path, size: u64, sha256: &str, what: &str) -> Result<()> {
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot open '{}'", path.display()))?;
    let mut hasher = Sha256::new();
    let read = std::io::copy(&mut file, &mut hasher).with_context(|| format!("cannot read '{}'", path.display()))?;
    matches(&format!("'{}'", path.display()), (read, &hex::encode(hasher.finalize())), (size, sha256), what)
}

/// `got` (size, sha256) of `shown` is what its manifest recorded (`want`), or an error naming it.
fn matches(shown: &str, got: (u64, &str), want: (u64, &str), what: &str) -> Result<()> {
    if got != want {
        bail!(
            "{shown} does not match its manifest: {} bytes with sha256 {}, the manifest says {} bytes with sha256 {}; the {what} is damaged or was replaced",
            got.0,
            got.1,
            want.0,
            want.1
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
    let (mut out, named) = match crate::files::unnamed_in(crate::files::folder_of(output)) {
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
