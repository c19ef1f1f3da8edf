//! One endpoint's outlier detector: failure streaks, the current
//! interval's counts, its ejection and its epoch.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use super::book::HealthShared;
use crate::outcome::Outcome;

/// `ejected_until` of an endpoint in rotation.
pub(super) const IN_ROTATION: u64 = 0;
/// `ejected_until` of an endpoint that is not in the active set (removed or
/// drained): it holds no ejection and cannot be ejected.
pub(super) const RETIRED: u64 = u64::MAX;

/// One endpoint's health.
#[derive(Debug)]
pub(crate) struct EndpointHealth {
    /// The endpoint's canonical URL, for events.
    pub(super) name: Arc<str>,
    /// Bumped at every ejection, return, retirement and reinstatement.
    pub(super) epoch: AtomicU32,
    pub(super) consecutive_failures: AtomicU32,
    pub(super) consecutive_gateway_failures: AtomicU32,
    pub(super) window_start_ms: AtomicU64,
    pub(super) window_requests: AtomicU32,
    pub(super) window_failures: AtomicU32,
    /// [`IN_ROTATION`], [`RETIRED`], or when the ejection ends.
    pub(super) ejected_until: AtomicU64,
    pub(super) times_ejected: AtomicU32,
    /// When it last came back from an ejection; 0 if never.
    pub(super) returned_ms: AtomicU64,
}

impl EndpointHealth {
    pub(crate) fn new(name: Arc<str>) -> Self {
        EndpointHealth {
            name,
            epoch: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            consecutive_gateway_failures: AtomicU32::new(0),
            window_start_ms: AtomicU64::new(0),
            window_requests: AtomicU32::new(0),
            window_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(IN_ROTATION),
            times_ejected: AtomicU32::new(0),
            returned_ms: AtomicU64::new(0),
        }
    }

    /// The epoch a request sent now belongs to.
    pub(crate) fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// Whether the endpoint is ejected at `now`. A pure read: an ejection
    /// whose time is up reads as over even before a pick re-admits it.
    pub(crate) fn is_ejected(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != IN_ROTATION && until != RETIRED && now < until
    }

    /// Whether the endpoint is ejected at `now`, and how many times in a row
    /// it has been, for stats.
    pub(crate) fn status(&self, now: u64) -> (bool, u32) {
        (
            self.is_ejected(now),
            self.times_ejected.load(Ordering::Relaxed),
        )
    }

    pub(super) fn start_new_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::Relaxed);
        self.clear_counts();
    }

    pub(super) fn clear_counts(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.consecutive_gateway_failures
            .store(0, Ordering::Relaxed);
        self.window_requests.store(0, Ordering::Relaxed);
        self.window_failures.store(0, Ordering::Relaxed);
    }

    /// Folds in the outcome of a request sent in epoch `sent_in`, and ejects
    /// the endpoint if a detector fires. Outcomes of an earlier epoch are
    /// left out.
    pub(crate) fn record(
        self: &Arc<Self>,
        outcome: Outcome,
        status: Option<StatusCode>,
        sent_in: u32,
        shared: &HealthShared,
    ) {
        if self.epoch() != sent_in {
            return;
        }
        let config = &shared.config;
        let failed = match (outcome, status) {
            (
                Outcome::ConnectError | Outcome::Timeout | Outcome::Closed | Outcome::OtherError,
                _,
            ) => true,
            (_, Some(status)) => config.is_failure_status(status),
            (_, None) => outcome != Outcome::Success,
        };
        let gateway = matches!(
            outcome,
            Outcome::ConnectError | Outcome::Timeout | Outcome::Closed
        ) || status.is_some_and(|s| matches!(s.as_u16(), 502..=504));

        let streak = bump_or_reset(&self.consecutive_failures, failed);
        let gateway_streak = bump_or_reset(&self.consecutive_gateway_failures, gateway);
        let mut fire = config.consecutive_failures.is_some_and(|n| streak >= n)
            || config
                .consecutive_gateway_failures
                .is_some_and(|n| gateway_streak >= n);

        // The clock is read only when something needs it.
        let mut now = None;
        if let Some((threshold, min_requests)) = config.failure_percentage {
            let at = *now.get_or_insert_with(|| shared.now_ms());
            let share = threshold.fraction();
            fire |= self.close_window(at, config.interval, share, min_requests);
            self.window_requests.fetch_add(1, Ordering::Relaxed);
            if failed {
                self.window_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Only an endpoint in rotation can be ejected: checked before the
        // lock, so that failures of an endpoint already out (in panic
        // mode) never take it.
        if fire && self.ejected_until.load(Ordering::Relaxed) == IN_ROTATION {
            let at = now.unwrap_or_else(|| shared.now_ms());
            let _ejected = shared.eject(self, sent_in, at);
            #[cfg(feature = "metrics")]
            if _ejected {
                use crate::telemetry::EjectionReason;
                shared.metrics.ejected(
                    if config.consecutive_failures.is_some_and(|n| streak >= n) {
                        EjectionReason::ConsecutiveFailures
                    } else if config
                        .consecutive_gateway_failures
                        .is_some_and(|n| gateway_streak >= n)
                    {
                        EjectionReason::ConsecutiveGatewayFailures
                    } else {
                        EjectionReason::FailurePercentage
                    },
                );
            }
        }
    }

    /// Closes the interval if it is over; whether its failure share was
    /// above `threshold` with enough requests.
    fn close_window(
        &self,
        now: u64,
        interval: Duration,
        threshold: f64,
        min_requests: u32,
    ) -> bool {
        let start = self.window_start_ms.load(Ordering::Relaxed);
        if now.saturating_sub(start) < crate::clock::millis(interval) {
            return false;
        }
        if self
            .window_start_ms
            .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        let requests = self.window_requests.swap(0, Ordering::Relaxed);
        let failures = self.window_failures.swap(0, Ordering::Relaxed);
        requests >= min_requests.max(1) && f64::from(failures) / f64::from(requests) > threshold
    }
}

/// Adds one to a streak, or ends it; the streak's new length.
fn bump_or_reset(streak: &AtomicU32, hit: bool) -> u32 {
    if hit {
        streak.fetch_add(1, Ordering::Relaxed).saturating_add(1)
    } else {
        // A streak already at zero is left unwritten: successes, the common
        // case, then only read the shared line.
        if streak.load(Ordering::Relaxed) != 0 {
            streak.store(0, Ordering::Relaxed);
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::health::OutlierDetection;

    fn endpoint() -> Arc<EndpointHealth> {
        Arc::new(EndpointHealth::new("http://127.0.0.1:1".into()))
    }

    fn fail(health: &Arc<EndpointHealth>, shared: &HealthShared, sent_in: u32) {
        let status = StatusCode::SERVICE_UNAVAILABLE;
        health.record(Outcome::ServerError, Some(status), sent_in, shared);
    }

    #[tokio::test(start_paused = true)]
    async fn five_server_errors_in_a_row_eject() {
        let shared = HealthShared::default();
        shared.set_active(5);
        let health = endpoint();
        for i in 1..=5 {
            fail(&health, &shared, health.epoch());
            assert_eq!(
                health.is_ejected(shared.now_ms()),
                i == 5,
                "after {i} failures"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failures_of_requests_sent_before_an_ejection_do_not_count_after_it() {
        let shared = HealthShared::new(
            OutlierDetection::default().base_ejection_time(Duration::from_secs(1)),
            Clock::default(),
        );
        shared.set_active(2);
        let health = endpoint();
        let early = health.epoch();
        for _ in 0..5 {
            fail(&health, &shared, early);
        }
        assert!(health.is_ejected(shared.now_ms()));
        // Five more sent before the ejection land while it is out.
        for _ in 0..5 {
            fail(&health, &shared, early);
        }
        tokio::time::advance(Duration::from_millis(1_001)).await;
        assert_eq!(shared.filter_time(), None, "back in rotation");
        assert!(!health.is_ejected(shared.now_ms()));
        // Back, it needs five fresh failures.
        for i in 1..=5 {
            fail(&health, &shared, health.epoch());
            assert_eq!(
                health.is_ejected(shared.now_ms()),
                i == 5,
                "after {i} failures"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_share_above_the_threshold_ejects_when_the_interval_closes() {
        let config = OutlierDetection::disabled()
            .failure_percentage(50, 10)
            .interval(Duration::from_millis(30));
        let shared = HealthShared::new(config, Clock::default());
        shared.set_active(10);
        let health = endpoint();
        let record = |health: &Arc<EndpointHealth>, status: u16| {
            let status = StatusCode::from_u16(status).unwrap();
            health.record(
                Outcome::from_status(status),
                Some(status),
                health.epoch(),
                &shared,
            );
        };
        // 6 failures in 10: not judged until the interval is over.
        for i in 0..10 {
            record(&health, if i % 5 < 3 { 500 } else { 200 });
        }
        assert!(!health.is_ejected(shared.now_ms()));
        tokio::time::advance(Duration::from_millis(40)).await;
        record(&health, 200);
        assert!(health.is_ejected(shared.now_ms()));

        // Too few requests in an interval: no verdict, however bad.
        let quiet = endpoint();
        for _ in 0..5 {
            record(&quiet, 502);
        }
        tokio::time::advance(Duration::from_millis(40)).await;
        record(&quiet, 200);
        assert!(!quiet.is_ejected(shared.now_ms()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retired_endpoint_gives_back_its_slot_and_late_failures_change_nothing() {
        let shared = HealthShared::default();
        shared.set_active(3);
        let gone = endpoint();
        let sent_in = gone.epoch();
        shared.retire(&gone);
        for _ in 0..10 {
            fail(&gone, &shared, sent_in);
            fail(&gone, &shared, gone.epoch());
        }
        assert!(!gone.is_ejected(shared.now_ms()));
        assert_eq!(shared.ejected.load(Ordering::Relaxed), 0);
        // The one slot (10% of 2, at least one) is there for the next.
        shared.set_active(2);
        let next = endpoint();
        for _ in 0..5 {
            fail(&next, &shared, next.epoch());
        }
        assert!(next.is_ejected(shared.now_ms()));
    }
}
