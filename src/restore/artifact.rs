//! One copy of a backup made plain in one pass as its bytes arrive: decrypted, decompressed, its
//! trailer and structure checked as they stream, and the artifact's size and sha256 compared with the
//! manifest before the plain snapshot is given a name. Or one copy's artifact checked alone.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};

use tokio_util::sync::CancellationToken;

use crate::interrupt::Interrupted;
use crate::manifest::{Compression, Manifest};
use crate::progress::Progress;
use crate::snapshot::TrailerCheck;
use crate::store::Destination;
use crate::store::reader::ArtifactReader;

/// Reads one copy of a backup's artifact (where it lies, or downloaded as it is read) and checks its
/// size and sha256 against the manifest, keeping nothing.
pub async fn check_copy(holder: &Destination, manifest: &Manifest, cancel: &CancellationToken) -> Result<()> {
    let name = manifest.artifact_name();
    let reader = tokio::select! {
        got = holder.artifact_reader(&name, manifest.artifact.size) => got?,
        () = cancel.cancelled() => return Err(Interrupted.into()),
    };
    let (manifest, place, cancel) = (manifest.clone(), holder.place(), cancel.clone());
    tokio::task::spawn_blocking(move || {
        let progress = Progress::start("checking", manifest.artifact.size);
        let mut hashed = HashingReader {
            inner: std::io::BufReader::new(reader),
            hasher: Sha256::new(),
            size: 0,
            progress: &progress,
        };
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match hashed.read(&mut buf) {
                Ok(n) => n,
                Err(e) => match hashed.inner.get_ref().broke() {
                    Some(why) => bail!("reading {} from {place} failed: {why}", manifest.id),
                    None => bail!("cannot read {name} in {place}: {e}"),
                },
            };
            if n == 0 {
                break;
            }
            crate::interrupt::check(&cancel)?;
        }
        progress.finish();
        let sha256 = hex::encode(hashed.hasher.finalize_reset());
        let want = (manifest.artifact.size, manifest.artifact.sha256.as_str());
        matches(&format!("{name} in {place}"), (hashed.size, &sha256), want, "artifact")
    })
    .await?
}

/// Decrypts one copy of a backup into `output` with every check of `decrypt_from`, in one pass as its
/// bytes arrive (read where they lie, or downloaded with ranged GETs), on a blocking thread. The
/// structure check's page summaries go to an unnamed file in `scratch`.
pub async fn fetch_and_decrypt(
    holder: &Destination,
    manifest: &Manifest,
    identities: &super::Identities,
    scratch: &Path,
    output: &Path,
    cancel: &CancellationToken,
) -> Result<Plain> {
    let name = manifest.artifact_name();
    let reader = tokio::select! {
        got = holder.artifact_reader(&name, manifest.artifact.size) => got?,
        () = cancel.cancelled() => return Err(Interrupted.into()),
    };
    let spill = crate::encode::check_spill(scratch, manifest.snapshot.size)?;
    let (manifest, output, identities, cancel) =
        (manifest.clone(), output.to_path_buf(), identities.clone(), cancel.clone());
    let place = holder.place();
    let what = match holder.kind() {
        crate::store::Kind::Local => "decrypting",
        crate::store::Kind::S3 => "downloading and decrypting",
    };
    tokio::task::spawn_blocking(move || {
        let progress = Progress::start(what, manifest.artifact.size);
        decrypt_from(reader, &place, &manifest, &identities, spill, &output, &progress, &cancel)
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

/// Decrypts and decompresses the artifact read from `artifact` (a copy in `place`) into `output` (0600,
/// unnamed until every check passed, then linked): the artifact's size and sha256 must match the
/// manifest, and the plain snapshot's trailer, size, sha256 and status too. The database structure is
/// checked as it streams (page summaries to `spill`), so nothing reads the output back. Runs on the
/// calling thread: call it from a blocking task.
#[allow(clippy::too_many_arguments)]
pub fn decrypt_from(
    artifact: ArtifactReader,
    place: &str,
    manifest: &Manifest,
    identities: &[Box<dyn age::Identity + Send + Sync>],
    spill: std::fs::File,
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
    let mut hashed = HashingReader {
        inner: std::io::BufReader::with_capacity(1 << 20, artifact),
        hasher: Sha256::new(),
        size: 0,
        progress,
    };
    let result = decrypt_checked(&mut hashed, manifest, identities, spill, &mut out, &part, cancel);
    let result = match result {
        Ok(plain) => Ok(plain),
        Err(e) if e.downcast_ref::<Interrupted>().is_some() => Err(e),
        // A download that broke is the reason, not what decryption made of the missing bytes; and an
        // artifact that is not the manifest's is named as such, not by the decryption error it caused:
        // the rest is read through the hash to tell.
        Err(e) => match drain(&mut hashed, cancel) {
            Err(_) if hashed.inner.get_ref().broke().is_some() => {
                let why = hashed.inner.get_ref().broke().unwrap_or_default();
                Err(anyhow!("reading {} from {place} failed: {why}", manifest.id))
            }
            Err(drained) => Err(drained),
            Ok(()) => match artifact_matches(&mut hashed, manifest) {
                Ok(()) => Err(e),
                Err(mismatch) => Err(mismatch),
            },
        },
    };
    match (result, named) {
        (Ok(plain), false) => {
            crate::files::link_unnamed(&out, output)
                .with_context(|| format!("cannot create '{}'", output.display()))?;
            progress.finish();
            Ok(plain)
        }
        (Ok(plain), true) => {
            std::fs::rename(&part, output).with_context(|| format!("cannot rename '{}'", part.display()))?;
            progress.finish();
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

fn decrypt_checked(
    hashed: &mut HashingReader<'_, std::io::BufReader<ArtifactReader>>,
    manifest: &Manifest,
    identities: &[Box<dyn age::Identity + Send + Sync>],
    spill: std::fs::File,
    out: &mut std::fs::File,
    part: &Path,
    cancel: &CancellationToken,
) -> Result<Plain> {
    let decryptor = age::Decryptor::new_buffered(&mut *hashed)
        .map_err(|e| anyhow!("the artifact of {} is not an age file: {e}", manifest.id))?;
    let decrypted = decryptor.decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity)).map_err(|e| {
        anyhow!(
            "cannot decrypt {}: {e} (is the identity one of the backup's recipients? the manifest lists them)",
            manifest.id
        )
    })?;
    let mut plain: Box<dyn Read> = match manifest.compression() {
        Compression::Zstd { .. } => Box::new(zstd::stream::read::Decoder::new(decrypted).context("cannot start zstd")?),
        Compression::None => Box::new(decrypted),
    };
    let mut check = TrailerCheck::new();
    let mut structure = crate::encode::Checker::start(spill)?;
    loop {
        let mut buf = vec![0u8; 1 << 20];
        let n = plain.read(&mut buf).map_err(|e| anyhow!("the artifact of {} is corrupt: {e}", manifest.id))?;
        if n == 0 {
            break;
        }
        crate::interrupt::check(cancel)?;
        buf.truncate(n);
        check.update(&buf);
        out.write_all(&buf).with_context(|| format!("cannot write '{}'", part.display()))?;
        structure.feed(buf.into());
    }
    drop(plain);
    let size = check.total();
    let sha256 = check.finish().map_err(|e| anyhow!("{}: {e}", manifest.id))?;
    // Read whatever the decoder left, so the artifact hash covers the whole file.
    drain(hashed, cancel)?;
    artifact_matches(hashed, manifest)?;
    if size != manifest.snapshot.size || sha256 != manifest.snapshot.sha256 {
        bail!("the snapshot in {} does not match its manifest (size or sha256)", manifest.id);
    }
    let status = structure
        .finish()?
        .map_err(|e| anyhow!("the snapshot in {} is not a sound etcd database: {e}", manifest.id))?;
    out.sync_all()?;
    if let Some(recorded) = &manifest.snapshot.status
        && *recorded != status
    {
        bail!("the database in {} differs from its manifest: recorded {recorded:?}, found {status:?}", manifest.id);
    }
    status.check_not_older_than(manifest.etcd.revision).map_err(|e| anyhow!("{}: {e}", manifest.id))?;
    Ok(Plain { size, sha256, status })
}

/// Reads the rest of the artifact through the hash.
fn drain<R: std::io::BufRead>(hashed: &mut HashingReader<'_, R>, cancel: &CancellationToken) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    while hashed.read(&mut buf)? > 0 {
        crate::interrupt::check(cancel)?;
    }
    Ok(())
}

/// The artifact read whole is the one the manifest recorded: size and sha256.
fn artifact_matches<R: std::io::BufRead>(hashed: &mut HashingReader<'_, R>, manifest: &Manifest) -> Result<()> {
    let sha256 = hex::encode(hashed.hasher.finalize_reset());
    if hashed.size != manifest.artifact.size || sha256 != manifest.artifact.sha256 {
        bail!(
            "the artifact of {} does not match its manifest: {} bytes with sha256 {sha256}, the manifest says {} bytes with sha256 {}; it is damaged or was replaced",
            manifest.id,
            hashed.size,
            manifest.artifact.size,
            manifest.artifact.sha256
        );
    }
    Ok(())
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
