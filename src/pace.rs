//! `[backup] max_rate`: when the snapshot stream may read on, so that it reads at most the rate (with
//! a burst of a second's worth after it was held up). The reader waits instead of reading ahead: etcd's sender blocks on the connection's
//! flow control, nothing is buffered. Pure: time is a duration since the stream began.

use std::num::NonZeroU64;
use std::time::Duration;

/// The most a stream may catch up after it was held up (by etcd, by a slow destination): a second's
/// worth of bytes at the rate, never the whole time it lost.
pub const BURST: Duration = Duration::from_secs(1);

/// The schedule of a paced stream.
#[derive(Debug, Clone)]
pub struct Pace {
    rate: NonZeroU64,
    /// When, since the stream began, the bytes read so far may have been read at the rate.
    next: Duration,
}

impl Pace {
    pub fn new(bytes_per_second: NonZeroU64) -> Self {
        Pace { rate: bytes_per_second, next: Duration::ZERO }
    }

    /// Having just read `bytes` more at `now` (since the stream began), the time before which it must
    /// not read again. Each piece adds its time at the rate to the schedule, which never lags `now` by
    /// more than `BURST`: a stream of `size` bytes lasts at least `size / rate`, and after being held up
    /// it reads at most `BURST` of bytes faster than the rate.
    pub fn read(&mut self, bytes: u64, now: Duration) -> Duration {
        self.next = self.next.max(now.saturating_sub(BURST)).saturating_add(self.time_for(bytes));
        self.next
    }

    /// How long `bytes` take at the rate, rounded up to the nanosecond.
    pub fn time_for(&self, bytes: u64) -> Duration {
        let rate = u128::from(self.rate.get());
        let nanos = (u128::from(bytes) * 1_000_000_000).div_ceil(rate);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
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
            now = now.max(pace.read(piece, now));
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
                assert!(pace.time_for(size) >= least);
                // Never slower than the rate or the transfers, whichever is slower, allow.
                let transfers = transfer * pieces.len() as u32;
                let rounding = Duration::from_nanos(pieces.len() as u64);
                assert!(
                    took <= least.max(transfers) + transfer + rounding,
                    "{took:?} for {size} bytes, {transfer:?} each"
                );
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
            assert!(pace.read(1 << 20, now) <= now);
        }
    }

    #[test]
    fn after_a_stall_it_catches_up_one_burst_at_most() {
        let mib = 1u64 << 20;
        let mut pace = Pace::new(rate(mib));
        assert_eq!(pace.read(mib, Duration::ZERO), Duration::from_secs(1));
        // Held up for a minute: 60 MiB are not owed; one second's worth is.
        let now = Duration::from_secs(61);
        assert_eq!(pace.read(mib, now), Duration::from_secs(61), "the burst covers this piece: no wait");
        assert_eq!(pace.read(mib, now), Duration::from_secs(62), "the next waits at the rate");
        assert_eq!(pace.read(mib, now), Duration::from_secs(63));
    }

    #[test]
    fn extremes_do_not_overflow() {
        let mut pace = Pace::new(rate(1));
        assert_eq!(pace.read(u64::MAX, Duration::ZERO), Duration::from_nanos(u64::MAX));
        assert!(pace.read(u64::MAX, Duration::MAX) >= Duration::from_nanos(u64::MAX), "saturates");
        let fast = Pace::new(rate(u64::MAX));
        assert_eq!(fast.time_for(u64::MAX), Duration::from_secs(1));
        assert_eq!(fast.time_for(1), Duration::from_nanos(1), "rounded up");
    }
}
