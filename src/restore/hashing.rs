//! The artifact as read for a restore, verify or drill: hashed and counted as it passes, never more
//! than its manifest's size (an artifact that was replaced by a larger one stops there), with progress.
//! The hash is computed on a thread of its own: the thread that reads the artifact also decrypts and
//! decompresses it, and is what a restore waits for.

use std::io::{BufRead, Read};

use sha2::{Digest, Sha256};

use crate::manifest::Manifest;
use crate::progress::Progress;

pub struct HashingReader<'p, R> {
    pub inner: R,
    hasher: Hasher,
    pub size: u64,
    limit: u64,
    progress: &'p Progress,
}

impl<'p, R: BufRead> HashingReader<'p, R> {
    /// Reads `inner`, which must hold at most `limit` bytes.
    pub fn new(inner: R, limit: u64, progress: &'p Progress) -> Self {
        HashingReader { inner, hasher: Hasher::start(), size: 0, limit, progress }
    }

    /// The sha256 (hex) of what was read so far; `Err` only if the hashing thread failed (a bug).
    pub fn sha256(&mut self) -> anyhow::Result<String> {
        self.hasher.so_far()
    }

    /// The artifact read so far is the one `manifest` recorded: size and sha256.
    pub fn matches(&mut self, manifest: &Manifest) -> anyhow::Result<()> {
        let sha256 = self.sha256()?;
        if self.size != manifest.artifact.size || sha256 != manifest.artifact.sha256 {
            anyhow::bail!(
                "the artifact of {} does not match its manifest: {} bytes with sha256 {sha256}, the manifest says {} bytes with sha256 {}; it is damaged or was replaced",
                manifest.id,
                self.size,
                manifest.artifact.size,
                manifest.artifact.sha256
            );
        }
        Ok(())
    }

    fn over_limit(&mut self) -> std::io::Result<()> {
        if self.size >= self.limit && !self.inner.fill_buf()?.is_empty() {
            return Err(std::io::Error::other(format!(
                "the artifact holds more than the {} bytes its manifest records; it is damaged or was replaced",
                self.limit
            )));
        }
        Ok(())
    }

    fn count(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
        self.progress.advance(bytes.len() as u64);
    }
}

impl<R: BufRead> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.over_limit()?;
        let room = usize::try_from(self.limit.saturating_sub(self.size)).unwrap_or(usize::MAX).max(1);
        let take = buf.len().min(room);
        let n = self.inner.read(&mut buf[..take])?;
        self.count(&buf[..n]);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for HashingReader<'_, R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.over_limit()?;
        // Never past the limit (and one byte, to tell that there is more).
        let room = usize::try_from(self.limit.saturating_sub(self.size)).unwrap_or(usize::MAX).saturating_add(1);
        let buf = self.inner.fill_buf()?;
        Ok(&buf[..buf.len().min(room)])
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

/// What the hashing thread is given at a time.
const PIECE: usize = 256 << 10;

/// A sha256 computed on a thread of its own from copies of what it is given, in pieces of at least
/// `PIECE` (a larger read is one piece): four queued, one hashed and one filling at most. Hashed in
/// place where no thread can be started. The thread ends when this is dropped. Hashed pieces come back
/// to be filled again (fresh ones cost page faults).
struct Hasher {
    piece: Vec<u8>,
    worker: Worker,
}

enum Worker {
    Thread {
        tx: Option<std::sync::mpsc::SyncSender<Message>>,
        spare: std::sync::mpsc::Receiver<Vec<u8>>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
    Inline(Sha256),
}

enum Message {
    Bytes(Vec<u8>),
    /// Reply with the hash of every piece before this one.
    SoFar(std::sync::mpsc::SyncSender<String>),
}

impl Hasher {
    fn start() -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Message>(4);
        let (back, spare) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
        let spawned = std::thread::Builder::new().name("artifact-hash".into()).spawn(move || {
            let mut sha = Sha256::new();
            for message in rx {
                match message {
                    Message::Bytes(mut bytes) => {
                        sha.update(&bytes);
                        bytes.clear();
                        let _ = back.try_send(bytes);
                    }
                    Message::SoFar(reply) => {
                        let _ = reply.send(hex::encode(sha.clone().finalize()));
                    }
                }
            }
        });
        let worker = match spawned {
            Ok(thread) => Worker::Thread { tx: Some(tx), spare, thread: Some(thread) },
            Err(_) => Worker::Inline(Sha256::new()),
        };
        Hasher { piece: Vec::new(), worker }
    }

    fn update(&mut self, bytes: &[u8]) {
        match &mut self.worker {
            Worker::Inline(sha) => sha.update(bytes),
            Worker::Thread { spare, .. } => {
                if self.piece.capacity() == 0 {
                    self.piece = spare.try_recv().unwrap_or_default();
                    self.piece.reserve_exact(PIECE.max(bytes.len()));
                }
                self.piece.extend_from_slice(bytes);
                if self.piece.len() >= PIECE {
                    self.send();
                }
            }
        }
    }

    fn send(&mut self) {
        if let Worker::Thread { tx: Some(tx), .. } = &self.worker
            && !self.piece.is_empty()
        {
            let _ = tx.send(Message::Bytes(std::mem::take(&mut self.piece)));
        }
    }

    fn so_far(&mut self) -> anyhow::Result<String> {
        self.send();
        let failed = || anyhow::anyhow!("the artifact's hashing thread failed; please report this as a bug");
        match &self.worker {
            Worker::Inline(sha) => Ok(hex::encode(sha.clone().finalize())),
            Worker::Thread { tx: Some(tx), .. } => {
                let (reply, answer) = std::sync::mpsc::sync_channel(1);
                tx.send(Message::SoFar(reply)).map_err(|_| failed())?;
                answer.recv().map_err(|_| failed())
            }
            Worker::Thread { tx: None, .. } => Err(failed()),
        }
    }
}

impl Drop for Hasher {
    fn drop(&mut self) {
        if let Worker::Thread { tx, thread, .. } = &mut self.worker {
            *tx = None;
            if let Some(thread) = thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// The most an age header may take: age parses it line by line, again after every line, holding it
/// whole; ours hold a few recipients' stanzas (a few hundred bytes each).
pub const HEADER_BUDGET: u64 = 64 << 10;

/// A reader that gives at most `budget` bytes until the budget is lifted (set to `u64::MAX`): an
/// artifact that is not an age file cannot make the header parser hold or re-read all of it.
pub struct Budget<'b, R> {
    pub inner: R,
    pub left: &'b std::cell::Cell<u64>,
}

impl<R: BufRead> Budget<'_, R> {
    fn spent(&self) -> std::io::Error {
        std::io::Error::other(format!("its age header is longer than {} KiB", HEADER_BUDGET >> 10))
    }
}

impl<R: BufRead> Read for Budget<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.left.get();
        if left == 0 {
            return Err(self.spent());
        }
        let take = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..take])?;
        self.left.set(left.saturating_sub(n as u64));
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Budget<'_, R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        let left = self.left.get();
        if left == 0 {
            return Err(self.spent());
        }
        let buf = self.inner.fill_buf()?;
        Ok(&buf[..buf.len().min(usize::try_from(left).unwrap_or(usize::MAX))])
    }

    fn consume(&mut self, amt: usize) {
        self.left.set(self.left.get().saturating_sub(amt as u64));
        self.inner.consume(amt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_up_to_the_limit_and_refuses_more() {
        let progress = Progress::start("test", 10);
        let mut exact = HashingReader::new(&b"0123456789"[..], 10, &progress);
        let mut out = Vec::new();
        exact.read_to_end(&mut out).unwrap();
        assert_eq!((out.len(), exact.size), (10, 10));
        assert_eq!(exact.sha256().unwrap(), hex::encode(Sha256::digest(b"0123456789")));

        let mut longer = HashingReader::new(&b"0123456789abc"[..], 10, &progress);
        let err = longer.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("more than the 10 bytes"), "{err}");
        assert_eq!(longer.size, 10, "never past the limit");

        let mut buffered = HashingReader::new(&b"0123456789abc"[..], 10, &progress);
        let n = buffered.fill_buf().unwrap().len();
        assert_eq!(n, 11, "the buffer shows the limit and one byte more");
        buffered.consume(n);
        assert_eq!(buffered.size, 11);
        let err = buffered.fill_buf().unwrap_err();
        assert!(err.to_string().contains("more than the 10 bytes"), "{err}");
        assert!(buffered.read(&mut [0u8; 4]).is_err(), "and reading on does not underflow");
    }

    /// The hash, asked for at any point, is that of exactly what was read, in order, whatever the
    /// sizes of the reads and of the pieces handed to the hashing thread.
    #[test]
    fn the_hash_so_far_is_of_what_was_read_in_every_piece_size() {
        let data: Vec<u8> = (0..(2 * PIECE + 12_345)).map(|i| (i * 7 % 253) as u8).collect();
        let progress = Progress::start("test", data.len() as u64);
        for read in [1, 4096, 65_536, PIECE - 1, PIECE, PIECE + 1, 2 * PIECE + 3] {
            let mut hashed = HashingReader::new(std::io::BufReader::new(&data[..]), data.len() as u64, &progress);
            let mut buf = vec![0u8; read];
            let (mut seen, mut next) = (0, 1);
            loop {
                let n = hashed.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                seen += n;
                if seen >= next {
                    let so_far = hashed.sha256().unwrap();
                    assert_eq!(so_far, hex::encode(Sha256::digest(&data[..seen])), "read {read}, at {seen}");
                    next = seen * 2 + 1;
                }
            }
            assert_eq!(hashed.sha256().unwrap(), hex::encode(Sha256::digest(&data)), "read {read}");
            assert_eq!(hashed.size, data.len() as u64);
        }
    }

    #[test]
    fn a_hashed_piece_comes_back_empty_to_be_filled_again() {
        let mut hasher = Hasher::start();
        hasher.update(&[9u8; PIECE]);
        assert_eq!(hasher.so_far().unwrap(), hex::encode(Sha256::digest([9u8; PIECE])));
        let Worker::Thread { spare, .. } = &hasher.worker else { panic!("the hashing thread started") };
        let back = spare.try_recv().expect("the piece is back once hashed");
        assert!(back.is_empty() && back.capacity() >= PIECE);
    }

    /// Reads through the buffer (`fill_buf` and `consume`, as age reads its header) and plain reads,
    /// mixed, hash what was consumed; so does the in-place hasher used where no thread starts.
    #[test]
    fn buffered_and_plain_reads_mixed_hash_what_was_consumed_with_either_hasher() {
        let data: Vec<u8> = (0..(PIECE + 777)).map(|i| (i * 13 % 251) as u8).collect();
        let progress = Progress::start("test", data.len() as u64);
        for inline in [false, true] {
            let mut hashed = HashingReader::new(std::io::BufReader::new(&data[..]), data.len() as u64, &progress);
            if inline {
                hashed.hasher = Hasher { piece: Vec::new(), worker: Worker::Inline(Sha256::new()) };
            }
            let mut buf = [0u8; 1000];
            let mut seen = 0;
            while seen < data.len() {
                let n = if seen % 2 == 0 {
                    let n = hashed.fill_buf().unwrap().len().min(333);
                    hashed.consume(n);
                    n
                } else {
                    hashed.read(&mut buf).unwrap()
                };
                seen += n;
            }
            assert_eq!(hashed.sha256().unwrap(), hex::encode(Sha256::digest(&data)), "inline {inline}");
            assert_eq!(hashed.size, data.len() as u64);
        }
    }

    #[test]
    fn a_budget_stops_reading_until_lifted() {
        let left = std::cell::Cell::new(5);
        let mut r = Budget { inner: &b"0123456789"[..], left: &left };
        let mut line = Vec::new();
        let err = r.read_until(b'\n', &mut line).unwrap_err();
        assert!(err.to_string().contains("age header is longer"), "{err}");
        assert_eq!(line, b"01234");
        left.set(u64::MAX);
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"56789");
    }
}
