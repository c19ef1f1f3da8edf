//! A peak-sensitive, time-decayed estimate of an endpoint's response time,
//! the signal of the least-response-time policy (Finagle's and tower's
//! PeakEWMA, with a failure penalty).
//!
//! A sample above the estimate replaces it at once, so a backend that turns
//! slow is avoided after one slow answer. A lower sample pulls the estimate
//! down by `1 − exp(−elapsed / decay)`, where `elapsed` is the time since
//! the last sample, and by at least [`MIN_SAMPLE_WEIGHT`]: a backend must
//! stay fast for a while, or for a few dozen answers, to look fast again.
//! "The estimate" is always the one picks read at that moment (below), so a
//! sample after a long silence starts from the decayed value.
//! A failure counts as at least the penalty, so a backend that fails in one
//! millisecond does not look like the fastest.
//!
//! Reading the estimate decays it with the time since its last sample, as
//! tower's and Finagle's do, without writing anything: by
//! `exp(−steps / 8)` for every whole eighth of the decay time that has
//! passed (1.25 s with the defaults). An endpoint that gets no requests
//! because its estimate is high therefore looks cheaper and cheaper until it
//! is tried again: one slow answer cannot keep it out for good. From
//! estimate `e` against endpoints at `f`, it is back in contention within
//! `decay × ln(e / f)` plus one step (10 s × ln(1 s / 2 ms) ≈ 62 s for a
//! failure against 2 ms answers, with the defaults). The steps keep
//! estimates sampled within the same step equal when their samples were, so
//! equally fast endpoints tie, and a tie goes to the candidate drawn first,
//! in proportion to weight.
//!
//! The floor is where this departs from Finagle's and tower's PeakEWMA. With
//! time alone, a busy endpoint that answered one request slowly (a pause in
//! the client, a GC in the server) keeps that peak for about the decay time,
//! whatever the thousands of fast answers since; its cost then sits near a
//! truly slow endpoint's, which gets traffic it should not.
//!
//! The estimate and the time of the last sample share one atomic word (the
//! estimate as an `f32` of nanoseconds, the time in milliseconds of the
//! balancer's clock, wrapping), so reading it takes no lock. Two answers
//! recorded at once may carry times out of order; a time up to a minute
//! before the stored one counts as no time elapsed, so the clock of the
//! estimate never runs backwards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::Clock;

/// Settings of the estimate, the same for every endpoint of a balancer.
#[derive(Clone, Debug)]
pub(crate) struct RttModel {
    clock: Clock,
    /// Decay time, in nanoseconds.
    decay_nanos: f64,
    /// The estimate a new endpoint starts from, in nanoseconds.
    initial_nanos: f64,
    /// The least a failure counts as, in nanoseconds.
    penalty_nanos: f64,
    /// The length of one read-decay step, in milliseconds.
    read_step_ms: f64,
    /// The share left after `i` whole read-decay steps, for the first
    /// [`READ_STEPS_TABULATED`]: picks read estimates without `exp()`.
    read_keep: [f64; READ_STEPS_TABULATED + 1],
    /// One request in this many per endpoint and lane is timed: 1 when the
    /// policy reads the estimate, [`TIMED_ONE_IN`] when only stats do.
    timed_one_in: u32,
}

/// For a policy that does not read the estimate, one request in this many
/// per endpoint and lane (see `lanes.rs`) is timed, its first included:
/// enough for the estimate in stats, and the others skip two clock reads
/// and the estimate's update.
pub(crate) const TIMED_ONE_IN: u32 = 16;

/// Read-decay steps whose share is tabulated (8 decay times: e^-8 of the
/// estimate is left after them).
const READ_STEPS_TABULATED: usize = 64;

/// Defaults as in Finagle and tower: 30 ms to start from, 10 s decay; a
/// failure counts as at least one second.
pub(crate) const DEFAULT_RTT: Duration = Duration::from_millis(30);
pub(crate) const DEFAULT_DECAY: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_PENALTY: Duration = Duration::from_secs(1);
/// The least share of the way a lower sample moves the estimate.
pub(crate) const MIN_SAMPLE_WEIGHT: f64 = 1.0 / 8.0;
/// Steps per decay time in which a read estimate decays.
const READ_DECAY_STEPS: f64 = 8.0;

impl Default for RttModel {
    fn default() -> Self {
        RttModel::new(
            Clock::default(),
            DEFAULT_RTT,
            DEFAULT_DECAY,
            DEFAULT_PENALTY,
        )
    }
}

impl RttModel {
    pub(crate) fn new(clock: Clock, initial: Duration, decay: Duration, penalty: Duration) -> Self {
        let decay_nanos = decay.as_nanos().max(1) as f64;
        let mut read_keep = [1.0; READ_STEPS_TABULATED + 1];
        for (steps, keep) in read_keep.iter_mut().enumerate() {
            *keep = (-(steps as f64) / READ_DECAY_STEPS).exp();
        }
        RttModel {
            clock,
            decay_nanos,
            initial_nanos: initial.as_nanos() as f64,
            penalty_nanos: penalty.as_nanos() as f64,
            read_step_ms: decay_nanos / 1e6 / READ_DECAY_STEPS,
            read_keep,
            timed_one_in: 1,
        }
    }

    /// The same model, timing every request (`every`, for a policy that
    /// reads the estimate) or one in [`TIMED_ONE_IN`] per endpoint and lane.
    pub(crate) fn timing_every_request(self, every: bool) -> Self {
        RttModel {
            timed_one_in: if every { 1 } else { TIMED_ONE_IN },
            ..self
        }
    }

    /// Whether every request is timed (the policy reads the estimate).
    pub(crate) fn times_every_request(&self) -> bool {
        self.timed_one_in == 1
    }

    /// Whether the request whose turn (a count per endpoint and lane) is
    /// `turn` is timed.
    pub(crate) fn times_turn(&self, turn: u32) -> bool {
        turn.is_multiple_of(self.timed_one_in)
    }

    /// The stamp of `at`: milliseconds of the clock, wrapping after 49 days.
    pub(crate) fn stamp(&self, at: Instant) -> u32 {
        self.clock.ms(at) as u32
    }

    /// The stamp of now.
    pub(crate) fn stamp_now(&self) -> u32 {
        self.stamp(self.clock.now())
    }

    /// The share of an estimate left after `elapsed_ms`.
    fn keep(&self, elapsed_ms: u32) -> f64 {
        // Answers within the same millisecond, the common case under load,
        // skip the exponential.
        if elapsed_ms == 0 {
            return 1.0;
        }
        (-(f64::from(elapsed_ms) * 1e6) / self.decay_nanos).exp()
    }

    /// The share of an estimate left when read `elapsed_ms` after its last
    /// sample: decayed by whole eighths of the decay time only.
    fn keep_when_read(&self, elapsed_ms: u32) -> f64 {
        // Within the first step, the common case, no division and no
        // `floor` (a libm call without SSE4.1).
        let elapsed = f64::from(elapsed_ms);
        if elapsed < self.read_step_ms {
            return 1.0;
        }
        let steps = (elapsed / self.read_step_ms).floor();
        match self.read_keep.get(steps as usize) {
            Some(keep) => *keep,
            None => (-steps / READ_DECAY_STEPS).exp(),
        }
    }
}

/// How far back an answer may be stamped before the last one and still
/// count as recorded out of order (two completions racing), not as time
/// that wrapped round.
const OUT_OF_ORDER_MS: u32 = 60_000;

/// Milliseconds from stamp `then` to stamp `now`; 0 if `now` is up to a
/// minute earlier (two answers recorded out of order). Stamps wrap after
/// 49.7 days, so a gap that long reads short again; by then a read has
/// long decayed the estimate to nothing and a sample replaces it.
fn elapsed_ms(now: u32, then: u32) -> u32 {
    let delta = now.wrapping_sub(then);
    if delta > u32::MAX - OUT_OF_ORDER_MS {
        0
    } else {
        delta
    }
}

/// Whether stamp `now` is not before stamp `then` (see [`elapsed_ms`]).
fn forward(now: u32, then: u32) -> bool {
    now.wrapping_sub(then) <= u32::MAX - OUT_OF_ORDER_MS
}

/// One endpoint's estimate, on cache lines of its own: every answer
/// writes it, and the lines beside it (address, health) are read by every
/// pick and start on every core.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct RttEstimate {
    packed: AtomicU64,
}

fn pack(estimate_nanos: f64, stamp: u32) -> u64 {
    (u64::from((estimate_nanos as f32).to_bits()) << 32) | u64::from(stamp)
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
            packed: AtomicU64::new(pack(model.initial_nanos, model.stamp_now())),
        }
    }

    /// The estimate at stamp `now`, in nanoseconds: the last one decayed by
    /// the time since it was set. Writes nothing.
    pub(crate) fn nanos_at(&self, model: &RttModel, now: u32) -> f64 {
        let (estimate, then) = unpack(self.packed.load(Ordering::Relaxed));
        estimate * model.keep_when_read(elapsed_ms(now, then))
    }

    /// Folds in one answer's latency; `failed` applies the penalty.
    pub(crate) fn record(&self, model: &RttModel, latency: Duration, failed: bool, now: Instant) {
        // Through f64 seconds: a u128 of nanoseconds converts slowly.
        let mut sample = latency.as_secs_f64() * 1e9;
        if failed {
            sample = sample.max(model.penalty_nanos);
        }
        let now = model.stamp(now);
        let _ = self
            .packed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                let (stored, then) = unpack(old);
                let elapsed = elapsed_ms(now, then);
                // Start from the estimate as picks read it now.
                let estimate = stored * model.keep_when_read(elapsed);
                let next = if sample > estimate {
                    sample
                } else {
                    let keep = model.keep(elapsed).min(1.0 - MIN_SAMPLE_WEIGHT);
                    estimate * keep + sample * (1.0 - keep)
                };
                // An answer stamped before the last one leaves the stamp.
                Some(pack(next, if forward(now, then) { now } else { then }))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 1e6;

    fn model(initial_ms: u64, penalty_ms: u64) -> RttModel {
        RttModel::new(
            Clock::default(),
            Duration::from_millis(initial_ms),
            Duration::from_secs(10),
            Duration::from_millis(penalty_ms),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn starts_from_the_initial_value_jumps_up_at_once_and_decays_down_slowly() {
        let model = model(30, 1_000);
        let rtt = RttEstimate::new(&model);
        let now = || model.stamp_now();
        assert!((rtt.nanos_at(&model, now()) - 30.0 * MS).abs() < 0.01 * MS);

        // A slow answer replaces the estimate at once.
        tokio::time::advance(Duration::from_secs(1)).await;
        rtt.record(&model, Duration::from_millis(200), false, Instant::now());
        assert!((rtt.nanos_at(&model, now()) - 200.0 * MS).abs() < 0.01 * MS);

        // Three seconds later it reads two whole steps of 1.25 s lower, and
        // a fast answer moves that 1 - e^(-0.3) = 26% of the way.
        tokio::time::advance(Duration::from_secs(3)).await;
        let read = 200.0 * (-2.0f64 / 8.0).exp();
        assert!((rtt.nanos_at(&model, now()) / MS - read).abs() < 0.01);
        rtt.record(&model, Duration::from_millis(2), false, Instant::now());
        let keep = (-0.3f64).exp();
        let expected = read * keep + 2.0 * (1.0 - keep);
        let got = rtt.nanos_at(&model, now()) / MS;
        assert!((got - expected).abs() < 0.01, "{got}");

        // Many fast answers close together: each still moves it an eighth.
        let before = rtt.nanos_at(&model, now());
        rtt.record(&model, Duration::from_millis(2), false, Instant::now());
        let expected = before * (1.0 - MIN_SAMPLE_WEIGHT) + 2.0 * MS * MIN_SAMPLE_WEIGHT;
        assert!((rtt.nanos_at(&model, now()) - expected).abs() < 0.01 * MS);
        for _ in 0..100 {
            rtt.record(&model, Duration::from_millis(2), false, Instant::now());
        }
        assert!(rtt.nanos_at(&model, now()) < 2.1 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn an_estimate_nobody_updates_decays_when_read() {
        let model = model(30, 1_000);
        let rtt = RttEstimate::new(&model);
        rtt.record(&model, Duration::from_millis(1), true, Instant::now());
        let at = |secs: u64| model.stamp(Instant::now() + Duration::from_secs(secs));
        assert!((rtt.nanos_at(&model, at(0)) - 1_000.0 * MS).abs() < 0.01 * MS);
        // After ten decay times a failure weighs less than 0.05 ms.
        assert!(rtt.nanos_at(&model, at(100)) < 0.05 * MS);
        // Reading wrote nothing.
        assert!((rtt.nanos_at(&model, at(0)) - 1_000.0 * MS).abs() < 0.01 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_stamped_before_the_last_one_does_not_turn_the_clock_back() {
        let model = model(0, 1_000);
        let rtt = RttEstimate::new(&model);
        let start = Instant::now();
        tokio::time::advance(Duration::from_millis(5)).await;
        let late = Instant::now();
        rtt.record(&model, Duration::from_millis(100), false, late);
        // A completion read its clock a moment earlier, then lost the race.
        rtt.record(&model, Duration::from_millis(1), false, start);
        // Elapsed counted as zero: the fast answer moved it an eighth, no more.
        let got = rtt.nanos_at(&model, model.stamp(late)) / MS;
        let expected = 100.0 * (1.0 - MIN_SAMPLE_WEIGHT) + MIN_SAMPLE_WEIGHT;
        assert!((got - expected).abs() < 0.01, "{got}");
        assert_eq!(
            unpack(rtt.packed.load(Ordering::Relaxed)).1,
            model.stamp(late)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_failure_counts_as_the_penalty() {
        let model = model(30, 500);
        let rtt = RttEstimate::new(&model);
        rtt.record(&model, Duration::from_millis(1), true, Instant::now());
        assert!((rtt.nanos_at(&model, model.stamp_now()) - 500.0 * MS).abs() < 0.01 * MS);
    }
}
