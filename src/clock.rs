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

#[cfg(feature = "dns")]
/// The longest wait a deadline is given: about 30 years, as tokio's own
/// `sleep` caps it. A longer wait (`Duration::MAX`, the usual way to write
/// "never") cannot be added to an instant without overflowing, and no
/// process lives to see the difference.
pub(crate) const NEVER: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

#[cfg(feature = "dns")]
/// The instant `wait` after `from`, saturating: a wait longer than
/// [`NEVER`] gives the instant [`NEVER`] after `from`, never a panic.
pub(crate) fn deadline(from: Instant, wait: Duration) -> Instant {
    // 30 years after a monotonic clock reading (seconds since boot in an
    // `i64`) cannot overflow; `from` is only the answer of a clock beyond
    // any real one.
    from.checked_add(wait.min(NEVER)).unwrap_or(from)
}

#[cfg(any(feature = "dns", feature = "etcd"))]
/// A back-off's next wait: `wait` doubled, at most `max`; saturating, so a
/// `max` of `Duration::MAX` ("no ceiling") never overflows.
pub(crate) fn doubled_up_to(wait: Duration, max: Duration) -> Duration {
    wait.saturating_mul(2).min(max)
}

/// `duration` in whole milliseconds, saturating at `u64::MAX` (about 585
/// million years): `Duration::MAX` as an ejection time means "as long as
/// can be", not a truncated remainder.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

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

    /// The instant `ms` milliseconds after the epoch (saturating at about
    /// 30 years from it: a wait that long never ends in practice).
    pub(crate) fn at_ms(&self, ms: u64) -> Instant {
        const NEVER_MS: u64 = 30 * 365 * 24 * 60 * 60 * 1_000;
        let wait = Duration::from_millis(ms.min(NEVER_MS));
        self.epoch.checked_add(wait).unwrap_or(self.epoch)
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

#[cfg(all(test, feature = "dns"))]
mod tests {
    use super::*;

    #[test]
    fn waits_of_never_saturate_instead_of_overflowing() {
        let now = Instant::now();
        assert_eq!(deadline(now, Duration::MAX), now + NEVER);
        assert_eq!(
            deadline(now, Duration::from_secs(2)),
            now + Duration::from_secs(2)
        );
        let huge = Duration::MAX - Duration::from_secs(1);
        assert_eq!(doubled_up_to(huge, Duration::MAX), Duration::MAX);
        assert_eq!(
            doubled_up_to(Duration::from_secs(3), Duration::from_secs(5)),
            Duration::from_secs(5)
        );
    }
}
