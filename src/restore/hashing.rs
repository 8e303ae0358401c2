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
        let room = usize::try_from(self.limit - self.size).unwrap_or(usize::MAX).max(1);
        let take = buf.len().min(room);
        let n = self.inner.read(&mut buf[..take])?;
        self.count(&buf[..n]);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for HashingReader<'_, R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.over_limit()?;
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
        buffered.consume(n);
        assert_eq!(buffered.size, 13, "consume counts what the buffer gave");
        assert!(buffered.fill_buf().is_ok(), "nothing is left after it");
    }
}
