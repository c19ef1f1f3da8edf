//! A peak-sensitive, time-decayed estimate of an endpoint's response time,
//! the signal of the least-response-time policy (Finagle's and tower's
//! PeakEWMA, with a failure penalty).
//!
//! A sample above the estimate replaces it at once, so a backend that turns
//! slow is avoided after one slow answer. A lower sample pulls the estimate
//! down by `1 − exp(−elapsed / decay)`, where `elapsed` is the time since
//! the last sample, and by at least [`MIN_SAMPLE_WEIGHT`]: a backend must
//! stay fast for a while, or for a few dozen answers, to look fast again.
//! A failure counts as at least the penalty, so a backend that fails in one
//! millisecond does not look like the fastest.
//!
//! The floor is where this departs from Finagle's and tower's PeakEWMA. With
//! time alone, a busy endpoint that answered one request slowly (a pause in
//! the client, a GC in the server) keeps that peak for about the decay time,
//! whatever the thousands of fast answers since; its cost then sits near a
//! truly slow endpoint's, which gets traffic it should not.
//!
//! The estimate and the time of the last sample share one atomic word (the
//! estimate as an `f32` of nanoseconds, the time in milliseconds since the
//! balancer started), so reading it takes no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Settings of the estimate, the same for every endpoint of a balancer.
#[derive(Clone, Debug)]
pub(crate) struct RttModel {
    /// Time zero of the packed timestamps.
    epoch: Instant,
    /// Decay time, in nanoseconds.
    decay_nanos: f64,
    /// The estimate a new endpoint starts from, in nanoseconds.
    initial_nanos: f64,
    /// The least a failure counts as, in nanoseconds.
    penalty_nanos: f64,
}

/// Defaults as in Finagle and tower: 30 ms to start from, 10 s decay; a
/// failure counts as at least one second.
pub(crate) const DEFAULT_RTT: Duration = Duration::from_millis(30);
pub(crate) const DEFAULT_DECAY: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_PENALTY: Duration = Duration::from_secs(1);
/// The least share of the way a lower sample moves the estimate.
pub(crate) const MIN_SAMPLE_WEIGHT: f64 = 1.0 / 8.0;

impl Default for RttModel {
    fn default() -> Self {
        RttModel::new(DEFAULT_RTT, DEFAULT_DECAY, DEFAULT_PENALTY)
    }
}

impl RttModel {
    pub(crate) fn new(initial: Duration, decay: Duration, penalty: Duration) -> Self {
        RttModel {
            epoch: Instant::now(),
            decay_nanos: decay.as_nanos() as f64,
            initial_nanos: initial.as_nanos() as f64,
            penalty_nanos: penalty.as_nanos() as f64,
        }
    }

    /// Milliseconds since the epoch, as stored (wraps after 49 days; a gap
    /// that long decays the estimate fully either way).
    fn millis(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.epoch).as_millis() as u32
    }
}

/// One endpoint's estimate.
#[derive(Debug)]
pub(crate) struct RttEstimate {
    packed: AtomicU64,
}

fn pack(estimate_nanos: f64, millis: u32) -> u64 {
    (u64::from((estimate_nanos as f32).to_bits()) << 32) | u64::from(millis)
}

fn unpack(packed: u64) -> (f64, u32) {
    (
        f64::from(f32::from_bits((packed >> 32) as u32)),
        packed as u32,
    )
}

impl RttEstimate {
    /// A new endpoint's estimate: the model's starting value.
    pub(crate) fn new(model: &RttModel) -> Self {
        RttEstimate {
            packed: AtomicU64::new(pack(model.initial_nanos, model.millis(Instant::now()))),
        }
    }

    /// The current estimate, in nanoseconds.
    pub(crate) fn nanos(&self) -> f64 {
        unpack(self.packed.load(Ordering::Relaxed)).0
    }

    /// Folds in one answer's latency; `failed` applies the penalty.
    pub(crate) fn record(&self, model: &RttModel, latency: Duration, failed: bool, now: Instant) {
        let mut sample = latency.as_nanos() as f64;
        if failed {
            sample = sample.max(model.penalty_nanos);
        }
        let now_millis = model.millis(now);
        let _ = self
            .packed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                let (estimate, then) = unpack(old);
                let next = if sample > estimate {
                    sample
                } else {
                    let elapsed = f64::from(now_millis.wrapping_sub(then)) * 1e6;
                    let keep = (-elapsed / model.decay_nanos)
                        .exp()
                        .min(1.0 - MIN_SAMPLE_WEIGHT);
                    estimate * keep + sample * (1.0 - keep)
                };
                Some(pack(next, now_millis))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 1e6;

    #[test]
    fn starts_from_the_initial_value_jumps_up_at_once_and_decays_down_slowly() {
        let model = RttModel::new(
            Duration::from_millis(30),
            Duration::from_secs(10),
            Duration::from_secs(1),
        );
        let start = model.epoch;
        let rtt = RttEstimate::new(&model);
        assert!((rtt.nanos() - 30.0 * MS).abs() < 0.01 * MS);

        // A slow answer replaces the estimate at once.
        rtt.record(
            &model,
            Duration::from_millis(200),
            false,
            start + Duration::from_secs(1),
        );
        assert!((rtt.nanos() - 200.0 * MS).abs() < 0.01 * MS);

        // A fast one three seconds later moves it 1 - e^(-0.3) = 26% of the way.
        rtt.record(
            &model,
            Duration::from_millis(2),
            false,
            start + Duration::from_secs(4),
        );
        let keep = (-0.3f64).exp();
        let expected = 200.0 * keep + 2.0 * (1.0 - keep);
        assert!(
            (rtt.nanos() / MS - expected).abs() < 0.01,
            "{}",
            rtt.nanos() / MS
        );

        // Many fast answers close together: each still moves it an eighth.
        let before = rtt.nanos();
        let soon = start + Duration::from_secs(4);
        rtt.record(&model, Duration::from_millis(2), false, soon);
        let expected = before * (1.0 - MIN_SAMPLE_WEIGHT) + 2.0 * MS * MIN_SAMPLE_WEIGHT;
        assert!((rtt.nanos() - expected).abs() < 0.01 * MS);
        for _ in 0..100 {
            rtt.record(&model, Duration::from_millis(2), false, soon);
        }
        assert!(rtt.nanos() < 2.1 * MS, "{}", rtt.nanos() / MS);

        // After a long quiet spell, a fast answer is almost all that counts.
        rtt.record(
            &model,
            Duration::from_millis(2),
            false,
            start + Duration::from_secs(300),
        );
        assert!(rtt.nanos() < 2.01 * MS);
    }

    #[test]
    fn a_fast_failure_counts_as_the_penalty() {
        let model = RttModel::new(
            Duration::from_millis(30),
            Duration::from_secs(10),
            Duration::from_millis(500),
        );
        let rtt = RttEstimate::new(&model);
        rtt.record(&model, Duration::from_millis(1), true, model.epoch);
        assert!((rtt.nanos() - 500.0 * MS).abs() < 0.01 * MS);
    }
}
