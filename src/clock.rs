//! The one clock of a balancer: latency, ejection, back-off and budget
//! windows all read it.
//!
//! It is tokio's clock (`tokio::time::Instant`), which is the system's
//! monotonic clock unless a test pauses it: under
//! `#[tokio::test(start_paused = true)]`, `tokio::time::advance` moves every
//! time the balancer sees, so ejection and re-admission can be tested
//! without sleeping.

use std::time::Duration;

use tokio::time::Instant;

/// A balancer's clock: tokio's, with the moment the balancer was built as
/// time zero, so that times fit in compact counters (milliseconds in a
/// `u64`, or wrapping in a `u32` for the response-time estimate).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    epoch: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            epoch: Instant::now(),
        }
    }
}

impl Clock {
    /// The time now.
    pub(crate) fn now(&self) -> Instant {
        Instant::now()
    }

    /// Time since the epoch.
    pub(crate) fn elapsed(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.epoch)
    }

    /// Milliseconds since the epoch, now.
    pub(crate) fn now_ms(&self) -> u64 {
        self.ms(self.now())
    }

    /// Milliseconds from the epoch to `at`.
    pub(crate) fn ms(&self, at: Instant) -> u64 {
        // In u64 arithmetic: `as_millis` divides a u128, on every request.
        let elapsed = self.elapsed(at);
        elapsed
            .as_secs()
            .saturating_mul(1_000)
            .saturating_add(u64::from(elapsed.subsec_millis()))
    }
}
