//! `[backup] max_rate`: when the snapshot stream may read on, so that it averages at most the rate
//! from its start. The reader waits instead of reading ahead: etcd's sender blocks on the connection's
//! flow control, nothing is buffered. Pure: time is a duration since the stream began.

use std::num::NonZeroU64;
use std::time::Duration;

/// The schedule of a paced stream.
#[derive(Debug, Clone)]
pub struct Pace {
    rate: NonZeroU64,
    read: u64,
}

impl Pace {
    pub fn new(bytes_per_second: NonZeroU64) -> Self {
        Pace { rate: bytes_per_second, read: 0 }
    }

    /// Having just read `bytes` more, the time since the stream began before which it must not read
    /// again: everything read so far, at the rate. The wait after the last piece is what makes a
    /// stream of `size` bytes last at least `size / rate`.
    pub fn read(&mut self, bytes: u64) -> Duration {
        self.read = self.read.saturating_add(bytes);
        let rate = u128::from(self.rate.get());
        let nanos = u128::from(self.read) * 1_000_000_000 / rate;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// How long a stream of `size` bytes takes at the rate, at least.
    pub fn least_time(&self, size: u64) -> Duration {
        Pace::new(self.rate).read(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream read through `pace` on a fake clock: each piece takes `transfer` to arrive, then the
    /// reader sleeps until the pace allows the next read. Returns when the stream is done.
    fn run(pace: &mut Pace, pieces: &[u64], transfer: Duration) -> Duration {
        let mut now = Duration::ZERO;
        for &piece in pieces {
            now += transfer;
            now = now.max(pace.read(piece));
        }
        now
    }

    fn rate(bytes: u64) -> NonZeroU64 {
        NonZeroU64::new(bytes).unwrap()
    }

    #[test]
    fn a_paced_stream_takes_at_least_size_over_rate() {
        let mib = 1u64 << 20;
        // Pieces of etcd's sizes (32 KiB), of odd sizes, of one byte; fast and slow transfers.
        let shapes: [(Vec<u64>, u64); 4] = [
            (vec![32 * 1024; 3200], 10 * mib),
            (vec![1, 7, 65_536, 1_000_003, 5, 32_768, 999_999], mib),
            (vec![1; 10_000], 3_000),
            (vec![mib; 64], 50 * mib),
        ];
        for (pieces, bytes_per_s) in shapes {
            let size: u64 = pieces.iter().sum();
            let least = Duration::from_nanos((u128::from(size) * 1_000_000_000 / u128::from(bytes_per_s)) as u64);
            for transfer in [Duration::ZERO, Duration::from_micros(10), Duration::from_millis(20)] {
                let mut pace = Pace::new(rate(bytes_per_s));
                let took = run(&mut pace, &pieces, transfer);
                assert!(took >= least, "{size} bytes at {bytes_per_s}/s took {took:?}, less than {least:?}");
                assert_eq!(pace.least_time(size), least);
                // Never slower than the rate or the transfer itself, whichever is slower, allows.
                let transfers = transfer * pieces.len() as u32;
                assert!(took <= least.max(transfers) + transfer, "{took:?} for {size} bytes, {transfer:?} each");
            }
        }
    }

    #[test]
    fn a_slow_source_is_not_slowed_further() {
        // Pieces arrive slower than the rate allows: the pace never adds a wait.
        let mut pace = Pace::new(rate(1 << 30));
        let mut now = Duration::ZERO;
        for _ in 0..100 {
            now += Duration::from_millis(10);
            assert!(pace.read(1 << 20) <= now);
        }
    }

    #[test]
    fn extremes_do_not_overflow() {
        let mut pace = Pace::new(rate(1));
        assert_eq!(pace.read(u64::MAX), Duration::from_nanos(u64::MAX));
        assert_eq!(pace.read(1), Duration::from_nanos(u64::MAX), "saturates");
        let mut fast = Pace::new(rate(u64::MAX));
        assert_eq!(fast.read(u64::MAX), Duration::from_secs(1));
    }
}
