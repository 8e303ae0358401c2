//! One copy of a backup made plain in one pass as its bytes arrive: decrypted, decompressed, its
//! trailer and structure checked as they stream, and the artifact's size and sha256 compared with the
//! manifest before the plain snapshot is given a name. Or one copy's artifact checked alone.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};

use super::hashing::HashingReader;

use tokio_util::sync::CancellationToken;

use crate::config::units::format_size;
use crate::interrupt::Interrupted;
use crate::manifest::{Compression, Manifest};
use crate::progress::Progress;
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
    let stop = StopOnCancel::new(&reader, cancel);
    let (manifest, place, cancel) = (manifest.clone(), holder.place(), cancel.clone());
    let checked = tokio::task::spawn_blocking(move || {
        let progress = Progress::start("checking", manifest.artifact.size);
        let mut hashed = HashingReader::new(std::io::BufReader::new(reader), manifest.artifact.size, &progress);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match hashed.read(&mut buf) {
                Ok(n) => n,
                Err(_) if cancel.is_cancelled() => return Err(Interrupted.into()),
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
        crate::interrupt::check(&cancel)?;
        progress.finish();
        let want = (manifest.artifact.size, manifest.artifact.sha256.as_str());
        let sha256 = hashed.sha256()?;
        matches(&format!("{name} in {place}"), (hashed.size, &sha256), want, "artifact")
    })
    .await?;
    drop(stop);
    checked
}

/// What the plain snapshot a copy is decrypted into is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// The operator's file (`restore --output`): on disk before it is given its name.
    Durable,
    /// Read once (by etcdutl, a drill, a check) and removed: not flushed, which would only slow what reads it.
    Scratch,
}

/// A download stopped when the command is interrupted: a reader waiting for its next piece then sees
/// the end at once. Dropped when the read is over.
struct StopOnCancel(Option<tokio::task::JoinHandle<()>>);

impl StopOnCancel {
    fn new(reader: &ArtifactReader, cancel: &CancellationToken) -> Self {
        StopOnCancel(reader.abort_handle().map(|download| {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                cancel.cancelled().await;
                download.abort();
            })
        }))
    }
}

impl Drop for StopOnCancel {
    fn drop(&mut self) {
        if let Some(watch) = self.0.take() {
            watch.abort();
        }
    }
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
    keep: Keep,
    cancel: &CancellationToken,
) -> Result<Plain> {
    let name = manifest.artifact_name();
    let reader = tokio::select! {
        got = holder.artifact_reader(&name, manifest.artifact.size) => got?,
        () = cancel.cancelled() => return Err(Interrupted.into()),
    };
    room_for_plain(manifest, scratch, output)?;
    let spill = crate::encode::check_spill(scratch, manifest.snapshot.size)?;
    let (manifest, output, identities, cancel) =
        (manifest.clone(), output.to_path_buf(), identities.clone(), cancel.clone());
    let place = holder.place();
    let what = match holder.kind() {
        crate::store::Kind::Local => "decrypting",
        crate::store::Kind::S3 => "downloading and decrypting",
    };
    let stop = StopOnCancel::new(&reader, &cancel);
    let plain = tokio::task::spawn_blocking(move || {
        let progress = Progress::start(what, manifest.artifact.size);
        decrypt_from(reader, &place, &manifest, &identities, spill, (&output, keep), &progress, &cancel)
    })
    .await?;
    drop(stop);
    plain
}

/// Refuses, before the artifact is read, a folder for `output` with less free space than the plain
/// snapshot its manifest records, with the structure check's scratch file where that shares the file
/// system: found now rather than when the disk fills after a long download. The size is the
/// manifest's, and said as such (a damaged manifest can ask for any). A folder whose free space cannot
/// be read is left to the write, which names it.
fn room_for_plain(manifest: &Manifest, scratch: &Path, output: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let folder = crate::files::folder_of(output);
    let shared =
        matches!((std::fs::metadata(folder), std::fs::metadata(scratch)), (Ok(a), Ok(b)) if a.dev() == b.dev());
    let size = manifest.snapshot.size;
    let needed = if shared { size.saturating_add(crate::encode::required_check_space(size)) } else { size };
    let Ok(free) = crate::files::free_space(folder) else { return Ok(()) };
    if free < needed {
        return Err(crate::errors::classified(
            crate::errors::Cause::NoSpace,
            format!(
                "not enough free space in '{}' for the plain snapshot of {}: {} free, {} needed (its manifest records a snapshot of {}){}; free some space or restore elsewhere",
                folder.display(),
                manifest.id,
                format_size(free),
                format_size(needed),
                format_size(size),
                if shared { " (with the snapshot check's scratch file)" } else { "" }
            ),
        ));
    }
    Ok(())
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
/// unnamed until every check passed, then linked; flushed first if it is to be kept): the artifact's size and sha256 must match the
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
    (output, keep): (&Path, Keep),
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
    let mut hashed =
        HashingReader::new(std::io::BufReader::with_capacity(1 << 20, artifact), manifest.artifact.size, progress);
    let result = match decrypt_checked(&mut hashed, manifest, identities, spill, (&mut out, &part, keep), cancel) {
        Ok(plain) => Ok(plain),
        Err(Failed::Other(e)) => Err(e),
        Err(Failed::Artifact(e)) => Err(why_unreadable(&mut hashed, e, place, manifest, cancel)),
    };
    // A download stopped by the interruption ends in errors of its own: the interruption is the reason.
    let result = result.map_err(|e| if cancel.is_cancelled() { Interrupted.into() } else { e });
    match (result, named) {
        (Ok(plain), named) => {
            if named {
                std::fs::rename(&part, output).with_context(|| format!("cannot rename '{}'", part.display()))?;
            } else {
                crate::files::link_unnamed(&out, output)
                    .with_context(|| format!("cannot create '{}'", output.display()))?;
            }
            if keep == Keep::Durable {
                // Its name too: a restore said to have written it must not lose it to a power cut.
                let folder = crate::files::folder_of(output);
                std::fs::File::open(folder)
                    .and_then(|dir| dir.sync_all())
                    .with_context(|| format!("cannot fsync '{}'", folder.display()))?;
            }
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

/// Why a one-pass decryption failed.
enum Failed {
    /// Reading, decrypting or decompressing the artifact, or a snapshot longer than its manifest says:
    /// the artifact itself may not be the manifest's.
    Artifact(anyhow::Error),
    /// Anything else: writing the output, the check, a check made once the artifact matched, a wrong
    /// identity, an interruption.
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failed {
    fn from(e: E) -> Self {
        Failed::Other(e.into())
    }
}

fn decrypt_checked(
    hashed: &mut HashingReader<'_, std::io::BufReader<ArtifactReader>>,
    manifest: &Manifest,
    identities: &[Box<dyn age::Identity + Send + Sync>],
    spill: std::fs::File,
    (out, part, keep): (&mut std::fs::File, &Path, Keep),
    cancel: &CancellationToken,
) -> Result<Plain, Failed> {
    let id = &manifest.id;
    let left = std::cell::Cell::new(super::hashing::HEADER_BUDGET);
    let budget = super::hashing::Budget { inner: &mut *hashed, left: &left };
    let decryptor = age::Decryptor::new_buffered(budget)
        .map_err(|e| Failed::Artifact(anyhow!("the artifact of {id} is not an age file: {e}")))?;
    left.set(u64::MAX);
    let decrypted = decryptor.decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity)).map_err(|e| {
        // No identity fits: the operator's key (or a replaced artifact, which its hash tells apart only
        // at a cost the common case should not pay). Anything else is damage to the header.
        match e {
            age::DecryptError::NoMatchingKeys => Failed::Other(anyhow!(
                "cannot decrypt {id}: {e} (is the identity one of the backup's recipients? the manifest lists them)"
            )),
            e => Failed::Artifact(anyhow!("cannot decrypt {id}: {e}")),
        }
    })?;
    let mut plain: Box<dyn Read> = match manifest.compression() {
        Compression::Zstd { .. } => Box::new(zstd::stream::read::Decoder::new(decrypted).context("cannot start zstd")?),
        Compression::None => Box::new(decrypted),
    };
    // The checks, and writing the output, on a thread of their own.
    let written = out.try_clone().with_context(|| format!("cannot write '{}'", part.display()))?;
    let mut structure = crate::encode::Checker::start(spill, Some(written))?;
    let mut size = 0u64;
    loop {
        let mut buf = structure.buffer(1 << 20);
        let n = fill(&mut plain, &mut buf)
            .map_err(|e| Failed::Artifact(anyhow!("the artifact of {id} is corrupt: {e}")))?;
        if n == 0 {
            break;
        }
        crate::interrupt::check(cancel)?;
        buf.truncate(n);
        size += n as u64;
        if size > manifest.snapshot.size {
            return Err(Failed::Artifact(anyhow!(
                "the artifact of {id} holds more than the {} bytes of snapshot its manifest records",
                manifest.snapshot.size
            )));
        }
        if !structure.feed(buf.into()) {
            break; // `finish` says why
        }
    }
    drop(plain);
    // The checks did not run to their end (a bug, met on what this artifact holds): whether the
    // artifact is the manifest's is told first.
    let checked = structure.finish().map_err(Failed::Artifact)?;
    checked.written.with_context(|| format!("cannot write '{}'", part.display()))?;
    let sha256 = checked.trailer.map_err(|e| Failed::Artifact(anyhow!("{id}: {e}")))?;
    // Read whatever the decoder left, so the artifact hash covers the whole file.
    drain(hashed, cancel).map_err(Failed::Artifact)?;
    hashed.matches(manifest)?;
    // The artifact is the manifest's: what fails from here on is said as it is.
    if size != manifest.snapshot.size || sha256 != manifest.snapshot.sha256 {
        return Err(anyhow!("the snapshot in {id} does not match its manifest (size or sha256)").into());
    }
    let status = checked.structure?.map_err(|e| anyhow!("the snapshot in {id} is not a sound etcd database: {e}"))?;
    if keep == Keep::Durable {
        out.sync_all()?;
    }
    if let Some(recorded) = &manifest.snapshot.status
        && *recorded != status
    {
        return Err(
            anyhow!("the database in {id} differs from its manifest: recorded {recorded:?}, found {status:?}").into()
        );
    }
    status.check_not_older_than(manifest.etcd.revision).map_err(|e| anyhow!("{id}: {e}"))?;
    Ok(Plain { size, sha256, status })
}

/// Why the artifact could not be read: a download that broke is the reason, not what decryption made
/// of the missing bytes; an artifact that is not the manifest's is named as such, not by the error it
/// caused (the rest is read through the hash to tell); else `failed` itself.
fn why_unreadable(
    hashed: &mut HashingReader<'_, std::io::BufReader<ArtifactReader>>,
    failed: anyhow::Error,
    place: &str,
    manifest: &Manifest,
    cancel: &CancellationToken,
) -> anyhow::Error {
    let broke = |hashed: &HashingReader<'_, std::io::BufReader<ArtifactReader>>| {
        hashed.inner.get_ref().broke().map(|why| anyhow!("reading {} from {place} failed: {why}", manifest.id))
    };
    if let Some(e) = broke(hashed) {
        return e;
    }
    match drain(hashed, cancel) {
        Err(e) => broke(hashed).unwrap_or(e),
        Ok(()) => hashed.matches(manifest).err().unwrap_or(failed),
    }
}

/// Reads until `buf` is full or the end: fewer, fuller chunks for the checks (the decoder hands out
/// a block at a time).
fn fill(reader: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads the rest of the artifact through the hash (at most its manifest's size).
fn drain<R: std::io::BufRead>(hashed: &mut HashingReader<'_, R>, cancel: &CancellationToken) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    while hashed.read(&mut buf)? > 0 {
        crate::interrupt::check(cancel)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out at most `step` bytes a read and is interrupted before each.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
        interrupt: bool,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.interrupt = !self.interrupt;
            if self.interrupt {
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn fill_reads_until_the_buffer_is_full_or_the_end_and_retries_interruptions() {
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        for step in [1, 7, 100, 1000] {
            let mut reader = Trickle { data: &data, step, interrupt: false };
            let mut buf = [0u8; 300];
            assert_eq!(fill(&mut reader, &mut buf).unwrap(), 300, "step {step}");
            assert_eq!(buf[..], data[..300]);
            let mut rest = vec![0u8; 2000];
            assert_eq!(fill(&mut reader, &mut rest).unwrap(), 700, "the end, step {step}");
            assert_eq!(rest[..700], data[300..]);
            assert_eq!(fill(&mut reader, &mut buf).unwrap(), 0);
        }
    }
}
