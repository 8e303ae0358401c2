//! The encoder of a backup, on a blocking thread: plain snapshot chunks in; etcd's trailer checked, and
//! the database structure checked as it streams on a thread of its own (page summaries spilled to an
//! unnamed scratch file: no plain snapshot is written anywhere); compressed, encrypted once, hashed, and
//! fanned out in pieces to every destination still taking them.

use std::io::Write;

use anyhow::{Context, Result, anyhow};
use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::config::units::format_size;
use crate::errors::{Cause, classified};
use crate::manifest::Compression;
use crate::snapshot::bbolt::{BboltError, Status};
use crate::snapshot::stream::StreamCheck;
use crate::snapshot::{TrailerCheck, TrailerError};

/// Encrypted bytes are handed to destinations in pieces of this size.
pub const CHUNK: usize = 1 << 20;

/// Space the local folder needs for a database of `db_size` bytes: the artifact is at most the database
/// plus framing (zstd's worst case and age's 16 bytes per 64 KiB), and a margin for the file system.
pub fn required_local_space(db_size: u64) -> u64 {
    db_size + db_size / 64 + 16 * 1024 * 1024
}

/// What the encoder produced.
pub struct Encoded {
    pub plain_size: u64,
    /// The trailer, checked.
    pub snapshot_sha256: String,
    pub status: crate::snapshot::bbolt::Status,
    pub artifact_size: u64,
    pub artifact_sha256: String,
}

/// Runs on a blocking thread: plain chunks in, trailer checked, compressed, encrypted, fanned out.
pub fn encode(
    mut plain: mpsc::Receiver<Vec<u8>>,
    senders: Vec<mpsc::Sender<Bytes>>,
    compression: Compression,
    recipients: &[crate::crypto::PublicKey],
    spill: std::fs::File,
) -> Result<Encoded> {
    let mut structure = Checker::start(spill, None)?;
    let fanout = FanOut {
        senders: senders.into_iter().map(Some).collect(),
        buf: BytesMut::with_capacity(CHUNK),
        hasher: Sha256::new(),
        size: 0,
    };
    let encrypted = crate::crypto::encrypt_to(recipients, fanout).map_err(|e| anyhow!(e))?;
    let mut sealer = match compression {
        Compression::Zstd { level } => {
            Sealer::Zstd(zstd::stream::write::Encoder::new(encrypted, level).context("cannot start zstd")?)
        }
        Compression::None => Sealer::Age(encrypted),
    };
    while let Some(chunk) = plain.blocking_recv() {
        let chunk = Bytes::from(chunk);
        let _ = structure.feed(chunk.clone()); // writes nothing: it runs to the end
        sealer.write_all(&chunk).map_err(write_error)?;
    }
    let fanout = sealer.finish().map_err(write_error)?;
    let (artifact_size, artifact_sha256) = fanout.close().map_err(write_error)?;
    let checked = structure.finish()?;
    let snapshot_sha256 = checked.trailer?;
    // The database itself: every page reachable once, types and bounds sane, and its status.
    let status = checked.structure?.map_err(|e| anyhow!("etcd sent a snapshot that is not a sound database: {e}"))?;
    Ok(Encoded { plain_size: checked.size, snapshot_sha256, artifact_size, artifact_sha256, status })
}

/// What makes the artifact: zstd then age, or age alone.
enum Sealer<W: Write> {
    Zstd(zstd::stream::write::Encoder<'static, age::stream::StreamWriter<W>>),
    Age(age::stream::StreamWriter<W>),
}

impl<W: Write> Sealer<W> {
    fn write_all(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        match self {
            Sealer::Zstd(z) => z.write_all(chunk),
            Sealer::Age(a) => a.write_all(chunk),
        }
    }

    /// Ends the zstd frame (if any) and the age stream; returns what age wrote into.
    fn finish(self) -> std::io::Result<W> {
        match self {
            Sealer::Zstd(z) => z.finish()?.finish(),
            Sealer::Age(a) => a.finish(),
        }
    }
}

fn write_error(e: std::io::Error) -> anyhow::Error {
    anyhow!("cannot write the encrypted backup: {e}")
}

/// The checks of the plain snapshot, on a thread of their own, fed its chunks: etcd's sha256 trailer and
/// the database's structure; a restore's output is written there too. Joined when finished; told to
/// stop and joined when dropped (on every early exit of its owner).
pub struct Checker {
    chunks: Option<std::sync::mpsc::SyncSender<Bytes>>,
    /// Buffers the thread is done with, for the feeder to fill again (fresh ones cost page faults).
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Option<Found>>>,
}

/// What the check thread found: the trailer as it stood, the structure (unless a write failed first),
/// and how writing the output went.
type Found = (TrailerCheck, Option<Result<Status, BboltError>>, std::io::Result<()>);

/// What the checks of a plain snapshot found.
pub struct Checked {
    /// Bytes fed, etcd's trailer included.
    pub size: u64,
    /// The trailer, checked: the database's sha256.
    pub trailer: Result<String, TrailerError>,
    /// The database's status, or what is wrong with it; `Err` if the structure check itself could not
    /// run (its scratch file failed, a limit of the check), with the cause of an I/O failure, or was
    /// stopped by a failed write.
    pub structure: Result<Result<Status, BboltError>>,
    /// Writing the output (where there was one): a failure stopped the checks, so look at it first.
    pub written: std::io::Result<()>,
}

impl Checker {
    /// Starts the checks, the structure's page summaries spilled to `spill` (see `check_spill`); every
    /// chunk is also written to `output`, if any.
    pub fn start(spill: std::fs::File, mut output: Option<std::fs::File>) -> Result<Self> {
        use std::sync::atomic::Ordering;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(4);
        let (back, spare) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("snapshot-check".into())
            .spawn(move || {
                let mut trailer = TrailerCheck::new();
                let mut check = StreamCheck::new(std::io::BufWriter::with_capacity(1 << 20, spill));
                for chunk in rx {
                    if stopped.load(Ordering::Relaxed) {
                        return None;
                    }
                    trailer.update(&chunk);
                    check.update(&chunk);
                    if let Some(Err(e)) = output.as_mut().map(|out| out.write_all(&chunk)) {
                        return Some((trailer, None, Err(e))); // the feeder sees the channel closed
                    }
                    if chunk.is_unique() {
                        let _ = back.try_send(Vec::from(chunk)); // else a new one is made
                    }
                }
                // Dropped rather than finished: no walk over what was summarized.
                if stopped.load(Ordering::Relaxed) {
                    return None;
                }
                Some((trailer, Some(check.finish()), Ok(())))
            })
            .context("cannot start the snapshot check's thread")?;
        Ok(Checker { chunks: Some(tx), spare, stop, thread: Some(thread) })
    }

    /// A buffer of `len` bytes to fill and `feed`: one the checks are done with if there is one, its
    /// old content left in place to be overwritten.
    pub fn buffer(&self, len: usize) -> Vec<u8> {
        let mut buf = self.spare.try_recv().unwrap_or_default();
        buf.resize(len, 0);
        buf
    }

    /// Hands the next chunk to the checks; `false` once they stopped (a failed write, a bug): `finish`
    /// says why.
    pub fn feed(&mut self, chunk: Bytes) -> bool {
        if let Some(tx) = &self.chunks
            && tx.send(chunk).is_err()
        {
            self.chunks = None;
        }
        self.chunks.is_some()
    }

    /// What the checks found (a failed write among them); `Err` only if the thread was stopped or
    /// panicked (a bug).
    pub fn finish(mut self) -> Result<Checked> {
        self.chunks = None;
        let thread = self.thread.take().ok_or_else(|| anyhow!("the snapshot check ran twice"))?;
        let (trailer, outcome, written) = thread
            .join()
            .map_err(|_| anyhow!("the snapshot check's thread panicked; please report this as a bug"))?
            .ok_or_else(|| anyhow!("the snapshot check was stopped"))?;
        let structure = match outcome {
            None => Err(anyhow!("the snapshot check stopped when the output could not be written")),
            Some(Err(BboltError::Scratch { what, kind, message })) => {
                let cause = crate::errors::io_cause(&std::io::Error::from(kind)).unwrap_or(Cause::Unreachable);
                Err(classified(cause, format!("{what} in the state dir failed: {message}")))
            }
            Some(Err(BboltError::Limit(why))) => Err(anyhow!("the snapshot cannot be checked: {why}")),
            Some(other) => Ok(other),
        };
        Ok(Checked { size: trailer.total(), trailer: trailer.finish(), structure, written })
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.chunks = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Space the structure check's scratch file may need for a database of `db_size` bytes: its page
/// summaries (a record of 25 bytes per key revision, where a revision takes at least some 45 bytes of a
/// page, and a few bytes per page) are less than three quarters of it.
pub fn required_check_space(db_size: u64) -> u64 {
    db_size / 4 * 3 + 16 * 1024 * 1024
}

/// An unnamed file in the state dir for the structure check's page summaries (digests and revisions,
/// never the snapshot's keys or values): it has no name, so nothing survives a crash, and it is gone
/// when closed.
pub fn check_spill(state_dir: &std::path::Path, db_size: u64) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .create(state_dir)
        .with_context(|| format!("cannot create the state dir '{}'", state_dir.display()))?;
    let free = crate::files::free_space(state_dir)?;
    let needed = required_check_space(db_size);
    if free < needed {
        return Err(classified(
            Cause::NoSpace,
            format!(
                "not enough free space in the state dir '{}' to check the snapshot: {} free, {} needed",
                state_dir.display(),
                format_size(free),
                format_size(needed)
            ),
        ));
    }
    crate::files::unnamed_in(state_dir)
        .or_else(|_| {
            // File systems without O_TMPFILE: a named file, unlinked at once.
            let path = state_dir.join(format!(".check-{}.index", std::process::id()));
            let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path)?;
            std::fs::remove_file(&path)?;
            Ok::<_, std::io::Error>(f)
        })
        .with_context(|| format!("cannot create the snapshot check's scratch file in '{}'", state_dir.display()))
}

/// Hashes the artifact and hands it, in `CHUNK` pieces, to every destination still taking it.
struct FanOut {
    senders: Vec<Option<mpsc::Sender<Bytes>>>,
    buf: BytesMut,
    hasher: Sha256,
    size: u64,
}

impl FanOut {
    fn send(&mut self) -> std::io::Result<()> {
        let piece = self.buf.split().freeze();
        for slot in &mut self.senders {
            if let Some(tx) = slot
                && tx.blocking_send(piece.clone()).is_err()
            {
                *slot = None; // that destination failed; it reports why
            }
        }
        if self.senders.iter().all(Option::is_none) {
            return Err(std::io::Error::other("every destination failed"));
        }
        Ok(())
    }

    fn close(mut self) -> std::io::Result<(u64, String)> {
        if !self.buf.is_empty() {
            self.send()?;
        }
        Ok((self.size, hex::encode(self.hasher.finalize_reset())))
    }
}

impl Write for FanOut {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(data);
        self.size += data.len() as u64;
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_space_covers_the_database_and_framing() {
        assert_eq!(required_local_space(0), 16 * 1024 * 1024);
        let gib = 1u64 << 30;
        assert!(required_local_space(gib) > gib + gib / 100);
        assert!(required_local_space(gib) < gib + gib / 10);
    }

    /// `body` followed by its sha256, as etcd ends a snapshot stream.
    fn with_trailer(body: &[u8]) -> Vec<u8> {
        let mut stream = body.to_vec();
        stream.extend_from_slice(&Sha256::digest(body));
        stream
    }

    #[test]
    fn the_check_thread_checks_the_trailer_and_writes_every_chunk_to_the_output() {
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let stream = with_trailer(&body);
        let spill = tempfile::tempfile().unwrap();
        let output = tempfile::NamedTempFile::new().unwrap();
        let mut checker = Checker::start(spill, Some(output.as_file().try_clone().unwrap())).unwrap();
        for chunk in stream.chunks(65_537) {
            assert!(checker.feed(Bytes::copy_from_slice(chunk)));
        }
        let checked = checker.finish().unwrap();
        assert_eq!(checked.size, stream.len() as u64);
        assert_eq!(checked.trailer, Ok(hex::encode(Sha256::digest(&body))));
        assert!(checked.written.is_ok());
        // Not a database: the structure check ran and says so.
        assert!(matches!(checked.structure, Ok(Err(_))));
        assert!(std::fs::read(output.path()).unwrap() == stream, "the output is not what was fed");
    }

    #[test]
    fn buffers_come_back_to_be_filled_again_and_what_is_written_is_only_what_was_filled() {
        let body: Vec<u8> = (0..700_000u32).map(|i| (i % 241) as u8).collect();
        let stream = with_trailer(&body);
        let output = tempfile::NamedTempFile::new().unwrap();
        let mut checker =
            Checker::start(tempfile::tempfile().unwrap(), Some(output.as_file().try_clone().unwrap())).unwrap();
        // Long buffers filled short, then short ones filled long: a reused buffer's old bytes never leak.
        let mut lens = [200_000usize, 3, 150_000, 1, 65_536].into_iter().cycle();
        let mut rest = &stream[..];
        while !rest.is_empty() {
            let len = lens.next().unwrap().min(rest.len());
            let mut buf = checker.buffer(1 << 18);
            assert_eq!(buf.len(), 1 << 18);
            buf[..len].copy_from_slice(&rest[..len]);
            buf.truncate(len);
            rest = &rest[len..];
            assert!(checker.feed(buf.into()));
        }
        let back = checker.spare.recv_timeout(std::time::Duration::from_secs(30)).expect("a buffer comes back");
        assert!(back.capacity() >= 1 << 18, "the allocation itself, not a copy");
        let checked = checker.finish().unwrap();
        assert!(checked.written.is_ok());
        assert_eq!(checked.trailer, Ok(hex::encode(Sha256::digest(&body))));
        assert_eq!(std::fs::read(output.path()).unwrap(), stream);
    }

    #[test]
    fn a_failed_write_stops_the_checks_and_is_what_they_report() {
        let spill = tempfile::tempfile().unwrap();
        let file = tempfile::NamedTempFile::new().unwrap();
        let read_only = std::fs::File::open(file.path()).unwrap();
        let mut checker = Checker::start(spill, Some(read_only)).unwrap();
        // The thread stops at the first write; the queue takes a few chunks more, then refuses.
        let fed = (0..100).take_while(|_| checker.feed(Bytes::from(vec![7u8; 4096]))).count();
        assert!(fed < 100, "the checks went on after the output failed");
        let checked = checker.finish().unwrap();
        assert!(checked.written.is_err());
        let why = checked.structure.expect_err("no structure check after a failed write").to_string();
        assert!(why.contains("output could not be written"), "{why}");
    }

    #[test]
    fn without_an_output_the_checks_run_to_the_end_and_a_bad_trailer_is_named() {
        let mut stream = with_trailer(b"some bytes that are not a database");
        *stream.last_mut().unwrap() ^= 1;
        let mut checker = Checker::start(tempfile::tempfile().unwrap(), None).unwrap();
        assert!(checker.feed(Bytes::from(stream)));
        let checked = checker.finish().unwrap();
        assert!(matches!(checked.trailer, Err(TrailerError::Mismatch { .. })));
        assert!(checked.written.is_ok());
    }
}
