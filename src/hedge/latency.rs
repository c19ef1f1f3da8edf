//! A cheap, lock-free estimate of a percentile of the set's recent response
//! times, for the hedging delay (Finagle's backup requests read theirs from
//! a histogram too).
//!
//! Latencies are counted in a histogram of atomic counters with four
//! buckets per power of two (each bucket about 19% wide), in two slots of
//! `PERIOD` each: a slot is cleared when its period comes round again, and
//! the estimate reads the current and the previous one, so it follows the
//! last 5 to 10 seconds. Recording is one clock read and one atomic add;
//! the percentile is recomputed from the counters every `REFRESH_EVERY`
//! records and kept in one atomic, so a request reads one load. A record
//! racing with a slot being cleared may be lost: an estimate, not a ledger.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::Clock;

/// How long one slot counts.
const PERIOD: Duration = Duration::from_secs(5);
/// Buckets: 0 to 3 µs exactly, then four per power of two up to 2^36 µs.
const BUCKETS: usize = 144;
/// Below this many latencies in the window the percentile is not known.
pub(crate) const MIN_SAMPLES: u32 = 20;
/// The percentile is recomputed every this many records.
const REFRESH_EVERY: u64 = 16;

#[derive(Debug)]
pub(crate) struct Latencies {
    clock: Clock,
    /// The fraction of latencies at or below the estimate (0.95 for p95).
    quantile: f64,
    slots: [Slot; 2],
    records: AtomicU64,
    /// The last estimate in µs plus one; 0 while not known.
    estimate: AtomicU64,
}

#[derive(Debug)]
struct Slot {
    /// The period (since the clock's epoch) this slot counts, plus one.
    period: AtomicU64,
    counts: Box<[AtomicU32]>,
}

impl Slot {
    fn new() -> Self {
        Slot {
            period: AtomicU64::new(0),
            counts: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}

/// The bucket of a latency of `micros`.
fn bucket(micros: u64) -> usize {
    let micros = micros.min((1 << 37) - 1);
    if micros < 4 {
        return micros as usize;
    }
    let log = 63 - u64::from(micros.leading_zeros());
    let sub = (micros >> (log - 2)) & 3;
    (4 * (log - 1) + sub) as usize
}

/// The largest latency, in µs, that falls in bucket `index`.
fn upper_bound(index: usize) -> u64 {
    if index < 4 {
        return index as u64;
    }
    let (log, sub) = (index as u64 / 4 + 1, index as u64 % 4);
    ((5 + sub) << (log - 2)) - 1
}

impl Latencies {
    /// An estimate of the `quantile` (0 to 1) of latencies on `clock`.
    pub(crate) fn new(clock: Clock, quantile: f64) -> Self {
        Latencies {
            clock,
            quantile,
            slots: [Slot::new(), Slot::new()],
            records: AtomicU64::new(0),
            estimate: AtomicU64::new(0),
        }
    }

    fn period(&self, now: Instant) -> u64 {
        self.clock.elapsed(now).as_millis() as u64 / PERIOD.as_millis() as u64 + 1
    }

    /// Counts one latency, of a request answered (or still waiting) at `now`.
    pub(crate) fn record(&self, latency: Duration, now: Instant) {
        let period = self.period(now);
        let slot = &self.slots[period as usize % 2];
        let seen = slot.period.load(Ordering::Relaxed);
        if seen != period
            && slot
                .period
                .compare_exchange(seen, period, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            slot.counts
                .iter()
                .for_each(|c| c.store(0, Ordering::Relaxed));
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        if let Some(count) = slot.counts.get(bucket(micros)) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        if self
            .records
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(REFRESH_EVERY)
        {
            self.refresh(period);
        }
    }

    /// Recomputes the estimate from the slots of `period` and the one before.
    fn refresh(&self, period: u64) {
        let live = |slot: &&Slot| {
            let p = slot.period.load(Ordering::Relaxed);
            p != 0 && period.saturating_sub(p) <= 1
        };
        let mut counts = [0u64; BUCKETS];
        for slot in self.slots.iter().filter(live) {
            for (sum, count) in counts.iter_mut().zip(slot.counts.iter()) {
                *sum += u64::from(count.load(Ordering::Relaxed));
            }
        }
        let total: u64 = counts.iter().sum();
        if total < u64::from(MIN_SAMPLES) {
            self.estimate.store(0, Ordering::Relaxed);
            return;
        }
        let rank = ((self.quantile * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (index, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                self.estimate
                    .store(upper_bound(index) + 1, Ordering::Relaxed);
                return;
            }
        }
    }

    /// The percentile of recent latencies, `None` until enough were counted
    /// (and after a quiet spell, until the window fills again).
    pub(crate) fn estimate(&self) -> Option<Duration> {
        match self.estimate.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(Duration::from_micros(micros - 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_latency_in_order() {
        let mut last = 0;
        for micros in (0..5_000).chain([1 << 20, 1 << 30, u64::MAX]) {
            let index = bucket(micros);
            assert!(index < BUCKETS);
            assert!(index >= last || micros > 5_000);
            assert!(micros.min((1 << 37) - 1) <= upper_bound(index));
            if index > 0 {
                assert!(micros > upper_bound(index - 1), "{micros} in {index}");
            }
            last = index;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_estimate_is_the_percentile_within_a_bucket() {
        let latencies = Latencies::new(Clock::default(), 0.95);
        let now = Clock::default().now();
        for i in 0..(u64::from(MIN_SAMPLES) - 1) {
            latencies.record(Duration::from_millis(1 + i % 2), now);
        }
        assert_eq!(latencies.estimate(), None, "too few to tell");
        for i in 0..1_000 {
            let ms = if i % 100 < 94 { 2 } else { 200 };
            latencies.record(Duration::from_millis(ms), now);
        }
        let estimate = latencies.estimate().unwrap();
        assert!(estimate >= Duration::from_millis(200), "{estimate:?}");
        assert!(estimate < Duration::from_millis(240), "{estimate:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn old_latencies_leave_the_estimate() {
        let clock = Clock::default();
        let latencies = Latencies::new(clock, 0.5);
        for _ in 0..100 {
            latencies.record(Duration::from_millis(100), clock.now());
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        for _ in 0..100 {
            latencies.record(Duration::from_millis(2), clock.now());
        }
        let estimate = latencies.estimate().unwrap();
        assert!(estimate < Duration::from_millis(3), "{estimate:?}");
    }
}
