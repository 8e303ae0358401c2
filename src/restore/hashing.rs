//! The artifact as read for a restore, verify or drill: hashed and counted as it passes, never more
//! than its manifest's size (an artifact that was replaced by a larger one stops there), with progress.

use std::io::{BufRead, Read};

use sha2::{Digest, Sha256};

use crate::manifest::Manifest;
use crate::progress::Progress;

pub struct HashingReader<'p, R> {
    pub inner: R,
    hasher: Sha256,
    pub size: u64,
    limit: u64,
    progress: &'p Progress,
}

impl<'p, R: BufRead> HashingReader<'p, R> {
    /// Reads `inner`, which must hold at most `limit` bytes.
    pub fn new(inner: R, limit: u64, progress: &'p Progress) -> Self {
        HashingReader { inner, hasher: Sha256::new(), size: 0, limit, progress }
    }

    /// The sha256 (hex) of what was read so far.
    pub fn sha256(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }

    /// The artifact read so far is the one `manifest` recorded: size and sha256.
    pub fn matches(&self, manifest: &Manifest) -> anyhow::Result<()> {
        let sha256 = self.sha256();
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
        assert_eq!(exact.sha256(), hex::encode(Sha256::digest(b"0123456789")));

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
