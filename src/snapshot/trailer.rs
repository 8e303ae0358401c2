//! etcd appends the sha256 of the database to the end of the snapshot stream. This checks it while
//! streaming, keeping only the last 32 bytes seen, whatever the chunk boundaries.

use sha2::{Digest, Sha256};

pub const TRAILER_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrailerError {
    #[error("the snapshot is only {0} bytes: too short to hold etcd's sha256 trailer")]
    TooShort(u64),
    #[error(
        "the snapshot's sha256 trailer does not match its contents (trailer {expected}, computed {actual}): the stream was corrupted"
    )]
    Mismatch { expected: String, actual: String },
}

/// Streaming checker: feed every chunk with `update`, then `finish`.
#[derive(Clone, Default)]
pub struct TrailerCheck {
    hasher: Sha256,
    tail: Vec<u8>,
    total: u64,
}

impl TrailerCheck {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes seen so far, trailer included.
    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        if self.tail.len() + chunk.len() <= TRAILER_LEN {
            self.tail.extend_from_slice(chunk);
            return;
        }
        // Everything but the last TRAILER_LEN bytes of (tail ++ chunk) is database content.
        let excess = self.tail.len() + chunk.len() - TRAILER_LEN;
        let from_tail = excess.min(self.tail.len());
        self.hasher.update(&self.tail[..from_tail]);
        self.tail.drain(..from_tail);
        let from_chunk = excess - from_tail;
        self.hasher.update(&chunk[..from_chunk]);
        self.tail.extend_from_slice(&chunk[from_chunk..]);
        debug_assert_eq!(self.tail.len(), TRAILER_LEN);
    }

    /// Checks the trailer; returns it (the database's sha256) as lower-case hex.
    pub fn finish(self) -> Result<String, TrailerError> {
        if self.tail.len() < TRAILER_LEN || self.total == TRAILER_LEN as u64 {
            return Err(TrailerError::TooShort(self.total));
        }
        let actual = hex::encode(self.hasher.finalize());
        let expected = hex::encode(&self.tail);
        if actual == expected { Ok(actual) } else { Err(TrailerError::Mismatch { expected, actual }) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(body: &[u8]) -> Vec<u8> {
        let mut out = body.to_vec();
        out.extend_from_slice(&Sha256::digest(body));
        out
    }

    fn check_in_chunks(data: &[u8], chunk: usize) -> Result<String, TrailerError> {
        let mut c = TrailerCheck::new();
        for piece in data.chunks(chunk) {
            c.update(piece);
        }
        assert_eq!(c.total(), data.len() as u64);
        c.finish()
    }

    #[test]
    fn good_snapshot_passes_with_every_chunk_size() {
        for body_len in [1usize, 7, 31, 32, 33, 64, 100, 257] {
            let body: Vec<u8> = (0..body_len).map(|i| (i * 31 % 251) as u8).collect();
            let data = snapshot(&body);
            let want = hex::encode(Sha256::digest(&body));
            for chunk in 1..=data.len() {
                assert_eq!(check_in_chunks(&data, chunk), Ok(want.clone()), "body {body_len} chunk {chunk}");
            }
        }
    }

    #[test]
    fn uneven_chunks_pass() {
        let body: Vec<u8> = (0..1000u32).map(|i| (i % 256) as u8).collect();
        let data = snapshot(&body);
        // Chunk sizes cycling through a pattern that straddles the trailer in many ways.
        for pattern in [[1usize, 40, 3], [33, 1, 31], [500, 2, 530], [31, 32, 33]] {
            let mut c = TrailerCheck::new();
            let (mut at, mut i) = (0, 0);
            while at < data.len() {
                let n = pattern[i % 3].min(data.len() - at);
                c.update(&data[at..at + n]);
                at += n;
                i += 1;
            }
            assert!(c.finish().is_ok(), "{pattern:?}");
        }
    }

    #[test]
    fn every_flipped_byte_is_caught_with_every_chunk_size() {
        let body: Vec<u8> = (0..80u8).collect();
        let good = snapshot(&body);
        for pos in 0..good.len() {
            let mut bad = good.clone();
            bad[pos] ^= 0x01;
            for chunk in 1..=bad.len() {
                assert!(
                    matches!(check_in_chunks(&bad, chunk), Err(TrailerError::Mismatch { .. })),
                    "flip at {pos}, chunk {chunk}"
                );
            }
        }
    }

    #[test]
    fn truncated_and_extended_streams_fail() {
        let good = snapshot(b"some database pages");
        assert!(check_in_chunks(&good[..good.len() - 1], 5).is_err());
        let mut longer = good.clone();
        longer.push(0);
        assert!(check_in_chunks(&longer, 5).is_err());
    }

    #[test]
    fn too_short_streams_are_named() {
        assert_eq!(TrailerCheck::new().finish(), Err(TrailerError::TooShort(0)));
        assert_eq!(check_in_chunks(&[0u8; 20], 3), Err(TrailerError::TooShort(20)));
        // Exactly a trailer and no database: the sha of nothing, but no database either.
        assert_eq!(check_in_chunks(&snapshot(b""), 4), Err(TrailerError::TooShort(32)));
    }

    #[test]
    fn message_names_both_hashes() {
        let mut bad = snapshot(b"abc");
        bad[0] = b'x';
        let msg = check_in_chunks(&bad, 2).unwrap_err().to_string();
        assert!(msg.contains("trailer") && msg.contains("computed"), "{msg}");
    }
}
