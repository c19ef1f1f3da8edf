//! A hint from the request path to discovery: endpoints refuse
//! connections, so the set may be stale and worth looking up again.
//!
//! Recording costs one atomic add, and only on a connect error; requests
//! that succeed never touch it.

use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::Notify;

/// Connect failures since the last look-up that make a burst.
pub(crate) const BURST: u32 = 3;

/// Connect failures since discovery last looked, and a wake-up for it.
#[derive(Debug, Default)]
pub(crate) struct ConnectFailures {
    since_refresh: AtomicU32,
    burst: Notify,
}

impl ConnectFailures {
    /// Counts one connect failure; the [`BURST`]th since the last refresh
    /// wakes a waiting source.
    pub(crate) fn record(&self) {
        if self.since_refresh.fetch_add(1, Ordering::Relaxed) + 1 == BURST {
            self.burst.notify_one();
        }
    }

    /// The source looked up the set: counting starts again.
    pub(crate) fn refreshed(&self) {
        self.since_refresh.store(0, Ordering::Relaxed);
    }

    /// Whether any connect failure came since the last refresh.
    pub(crate) fn any_since_refresh(&self) -> bool {
        self.since_refresh.load(Ordering::Relaxed) > 0
    }

    /// Waits for a burst of connect failures (returns at once if one came
    /// since the last wait).
    pub(crate) async fn burst(&self) {
        self.burst.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_third_failure_wakes_the_waiter_and_a_refresh_starts_the_count_again() {
        let failures = ConnectFailures::default();
        failures.record();
        failures.record();
        let early = tokio::time::timeout(Duration::from_secs(1), failures.burst()).await;
        assert!(early.is_err(), "two failures are no burst");
        failures.record();
        tokio::time::timeout(Duration::from_secs(1), failures.burst())
            .await
            .expect("the third failure is a burst");
        failures.refreshed();
        failures.record();
        let again = tokio::time::timeout(Duration::from_secs(1), failures.burst()).await;
        assert!(again.is_err(), "the count started again");
    }
}
