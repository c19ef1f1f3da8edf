//! One endpoint's outlier detector: failure streaks, the current
//! interval's counts for the statistical detectors, its ejection and its
//! epoch.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use http::StatusCode;

use super::active::EndpointChecks;
use super::book::HealthShared;
use super::Detector;
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
    pub(super) consecutive_local_failures: AtomicU32,
    /// The current interval's counts, for the statistical detectors (kept
    /// only when one is on).
    pub(super) window: Window,
    /// [`IN_ROTATION`], [`RETIRED`], or when the ejection ends.
    pub(super) ejected_until: AtomicU64,
    /// When the current ejection began.
    pub(super) ejected_at: AtomicU64,
    /// The detector behind the current ejection: its index in
    /// [`Detector::ALL`] plus one; 0 when in rotation.
    pub(super) ejected_by: AtomicU8,
    /// Held out past its ejection time until released (see
    /// [`HealthShared::hold`]).
    pub(super) held: AtomicBool,
    /// The ejection multiplier: up at each ejection, down by one for every
    /// interval in rotation.
    pub(super) times_ejected: AtomicU32,
    /// When it last came back from an ejection; 0 if never.
    pub(super) returned_ms: AtomicU64,
    /// Its active checks.
    pub(crate) checks: EndpointChecks,
}

/// One interval's outcomes of one endpoint.
#[derive(Debug, Default)]
pub(super) struct Window {
    /// Outcomes counted (client errors never are).
    pub(super) requests: AtomicU32,
    /// Of those, answers (a status came back); kept in split mode only.
    pub(super) answered: AtomicU32,
    /// Answers with a failure status (or an outcome without a status that
    /// failed).
    pub(super) status_failures: AtomicU32,
    /// Local-origin failures: no answer came.
    pub(super) local_failures: AtomicU32,
}

/// One interval's counts, taken at the sweep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct WindowCounts {
    pub(crate) requests: u32,
    pub(crate) answered: u32,
    pub(crate) status_failures: u32,
    pub(crate) local_failures: u32,
}

impl Window {
    /// The counts so far, and a fresh interval.
    pub(super) fn take(&self) -> WindowCounts {
        WindowCounts {
            requests: self.requests.swap(0, Ordering::Relaxed),
            answered: self.answered.swap(0, Ordering::Relaxed),
            status_failures: self.status_failures.swap(0, Ordering::Relaxed),
            local_failures: self.local_failures.swap(0, Ordering::Relaxed),
        }
    }
}

impl EndpointHealth {
    pub(crate) fn new(name: Arc<str>) -> Self {
        EndpointHealth {
            name,
            epoch: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            consecutive_gateway_failures: AtomicU32::new(0),
            consecutive_local_failures: AtomicU32::new(0),
            window: Window::default(),
            ejected_until: AtomicU64::new(IN_ROTATION),
            ejected_at: AtomicU64::new(0),
            ejected_by: AtomicU8::new(0),
            held: AtomicBool::new(false),
            times_ejected: AtomicU32::new(0),
            returned_ms: AtomicU64::new(0),
            checks: EndpointChecks::default(),
        }
    }

    /// When it last came back from an ejection, in milliseconds of the
    /// balancer's clock; 0 if never (slow start begins its window then).
    pub(crate) fn returned_ms(&self) -> u64 {
        self.returned_ms.load(Ordering::Relaxed)
    }

    /// The epoch a request sent now belongs to.
    pub(crate) fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// Whether the endpoint is ejected at `now`. A pure read: an ejection
    /// whose time is up reads as over even before the sweeper or a pick
    /// re-admits it, unless something holds it out.
    pub(crate) fn is_ejected(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != IN_ROTATION
            && until != RETIRED
            && (now < until || self.held.load(Ordering::Relaxed))
    }

    /// Whether the endpoint is ejected at `now`, the ejection multiplier,
    /// and the detector behind the ejection, for stats.
    pub(crate) fn status(&self, now: u64) -> (bool, u32, Option<Detector>) {
        let ejected = self.is_ejected(now);
        let by = ejected
            .then(|| self.ejected_by.load(Ordering::Relaxed))
            .and_then(|i| Detector::ALL.get(usize::from(i).checked_sub(1)?).copied());
        (ejected, self.times_ejected.load(Ordering::Relaxed), by)
    }

    pub(super) fn start_new_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::Relaxed);
        self.clear_counts();
    }

    pub(super) fn clear_counts(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.consecutive_gateway_failures
            .store(0, Ordering::Relaxed);
        self.consecutive_local_failures.store(0, Ordering::Relaxed);
        self.window.take();
    }

    /// Folds in the outcome of a request sent in epoch `sent_in`, and ejects
    /// the endpoint if a streak detector fires. Outcomes of an earlier epoch
    /// are left out.
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
        // Local origin: no answer came (Envoy's local-origin errors).
        let local = matches!(
            outcome,
            Outcome::ConnectError | Outcome::Timeout | Outcome::Closed | Outcome::OtherError
        );
        let status_failed = !local
            && match status {
                Some(status) => config.is_failure_status(status),
                None => outcome != Outcome::Success,
            };
        let gateway_status = status.is_some_and(|s| matches!(s.as_u16(), 502..=504));
        let split = config.split_local_origin;

        let fired = if split {
            // Answers and local-origin failures apart: a local failure
            // leaves the answer streaks alone, and any answer (the
            // connection worked) ends the local streak.
            let (streak, gateway_streak) = if local {
                (0, 0)
            } else {
                (
                    bump_or_reset(&self.consecutive_failures, status_failed),
                    bump_or_reset(&self.consecutive_gateway_failures, gateway_status),
                )
            };
            let local_streak = bump_or_reset(&self.consecutive_local_failures, local);
            first_fired([
                (
                    config.consecutive_failures,
                    streak,
                    Detector::ConsecutiveFailures,
                ),
                (
                    config.consecutive_gateway_failures,
                    gateway_streak,
                    Detector::ConsecutiveGatewayFailures,
                ),
                (
                    config.consecutive_local_origin_failures,
                    local_streak,
                    Detector::ConsecutiveLocalOriginFailures,
                ),
            ])
        } else {
            let failed = local || status_failed;
            let gateway = gateway_status
                || matches!(
                    outcome,
                    Outcome::ConnectError | Outcome::Timeout | Outcome::Closed
                );
            let streak = bump_or_reset(&self.consecutive_failures, failed);
            let gateway_streak = bump_or_reset(&self.consecutive_gateway_failures, gateway);
            first_fired([
                (
                    config.consecutive_failures,
                    streak,
                    Detector::ConsecutiveFailures,
                ),
                (
                    config.consecutive_gateway_failures,
                    gateway_streak,
                    Detector::ConsecutiveGatewayFailures,
                ),
                (None, 0, Detector::ConsecutiveLocalOriginFailures),
            ])
        };

        if shared.counts_windows() {
            let window = &self.window;
            window.requests.fetch_add(1, Ordering::Relaxed);
            if split && !local {
                window.answered.fetch_add(1, Ordering::Relaxed);
            }
            if status_failed {
                window.status_failures.fetch_add(1, Ordering::Relaxed);
            } else if local {
                window.local_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Only an endpoint in rotation can be ejected: checked before the
        // lock, so that failures of an endpoint already out (in panic
        // mode) never take it.
        if let Some(detector) = fired {
            if self.ejected_until.load(Ordering::Relaxed) == IN_ROTATION {
                shared.eject(self, sent_in, shared.now_ms(), detector);
            }
        }
    }
}

/// The first detector whose threshold its streak reached.
fn first_fired(streaks: [(Option<u32>, u32, Detector); 3]) -> Option<Detector> {
    streaks
        .into_iter()
        .find(|(threshold, streak, _)| threshold.is_some_and(|n| *streak >= n))
        .map(|(_, _, detector)| detector)
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
    use std::time::Duration;

    use super::*;
    use crate::clock::Clock;
    use crate::health::{FailurePercentage, OutlierDetection};
    use crate::random::SharedRng;

    fn endpoint() -> Arc<EndpointHealth> {
        Arc::new(EndpointHealth::new("http://127.0.0.1:1".into()))
    }

    /// `n` endpoints in the active set of `shared`.
    fn active(shared: &HealthShared, n: usize) -> Vec<Arc<EndpointHealth>> {
        let endpoints: Vec<_> = (0..n).map(|_| endpoint()).collect();
        shared.set_active(endpoints.clone());
        endpoints
    }

    fn health(config: OutlierDetection) -> Arc<HealthShared> {
        HealthShared::new(config, Clock::default(), Arc::new(SharedRng::new(1)))
    }

    fn fail(health: &Arc<EndpointHealth>, shared: &HealthShared, sent_in: u32) {
        let status = StatusCode::SERVICE_UNAVAILABLE;
        health.record(Outcome::ServerError, Some(status), sent_in, shared);
    }

    #[tokio::test(start_paused = true)]
    async fn five_server_errors_in_a_row_eject() {
        let shared = HealthShared::with_defaults();
        let health = active(&shared, 5).remove(0);
        for i in 1..=5 {
            fail(&health, &shared, health.epoch());
            assert_eq!(
                health.is_ejected(shared.now_ms()),
                i == 5,
                "after {i} failures"
            );
        }
        let (_, times, by) = health.status(shared.now_ms());
        assert_eq!((times, by), (1, Some(Detector::ConsecutiveFailures)));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_of_requests_sent_before_an_ejection_do_not_count_after_it() {
        let shared = health(OutlierDetection::default().base_ejection_time(Duration::from_secs(1)));
        let health = active(&shared, 2).remove(0);
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
    async fn a_failure_share_at_the_threshold_ejects_at_the_interval_sweep() {
        let config = OutlierDetection::disabled()
            .failure_percentage_with(
                FailurePercentage::default()
                    .threshold(50)
                    .request_volume(10)
                    .minimum_hosts(4),
            )
            .max_ejection_percent(50)
            .interval(Duration::from_millis(30));
        let shared = health(config);
        let endpoints = active(&shared, 5);
        let record = |health: &Arc<EndpointHealth>, status: u16| {
            let status = StatusCode::from_u16(status).unwrap();
            health.record(
                Outcome::from_status(status),
                Some(status),
                health.epoch(),
                &shared,
            );
        };
        // Endpoint 0: 5 failures in 10, exactly the threshold; endpoint 1:
        // 5 failures in 5, too few requests to be judged; four judged.
        for (i, e) in endpoints.iter().enumerate() {
            for r in 0..10 {
                match i {
                    0 => record(e, if r % 2 == 0 { 500 } else { 200 }),
                    1 if r < 5 => record(e, 502),
                    1 => {}
                    _ => record(e, 200),
                }
            }
        }
        assert!(
            !endpoints[0].is_ejected(shared.now_ms()),
            "not before the sweep"
        );
        tokio::time::advance(Duration::from_millis(30)).await;
        shared.sweep(shared.now_ms());
        let now = shared.now_ms();
        let ejected: Vec<bool> = endpoints.iter().map(|e| e.is_ejected(now)).collect();
        assert_eq!(ejected, [true, false, false, false, false]);
        assert_eq!(
            endpoints[0].status(now).2,
            Some(Detector::FailurePercentage)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_retired_endpoint_gives_back_its_slot_and_late_failures_change_nothing() {
        let shared = HealthShared::with_defaults();
        let mut set = active(&shared, 3);
        let gone = set.remove(0);
        let sent_in = gone.epoch();
        shared.retire(&gone);
        for _ in 0..10 {
            fail(&gone, &shared, sent_in);
            fail(&gone, &shared, gone.epoch());
        }
        assert!(!gone.is_ejected(shared.now_ms()));
        assert_eq!(shared.ejected.load(Ordering::Relaxed), 0);
        // The one slot (10% of 2, at least one) is there for the next.
        shared.set_active(set.clone());
        let next = &set[0];
        for _ in 0..5 {
            fail(next, &shared, next.epoch());
        }
        assert!(next.is_ejected(shared.now_ms()));
    }

    #[tokio::test(start_paused = true)]
    async fn split_mode_keeps_local_origin_failures_apart_from_answers() {
        let config = OutlierDetection::default()
            .split_local_origin_errors(true)
            .consecutive_local_origin_failures(3);
        let shared = health(config);
        let endpoints = active(&shared, 2);
        let (a, b) = (&endpoints[0], &endpoints[1]);
        // Four 503s and three refused connections, interleaved: neither
        // streak reaches its threshold of the other's kind.
        for _ in 0..3 {
            fail(a, &shared, a.epoch());
            a.record(Outcome::ConnectError, None, a.epoch(), &shared);
        }
        assert!(!a.is_ejected(shared.now_ms()));
        // Any answer (a 503 too) ends the local streak; three refusals in
        // a row eject for local origin.
        for _ in 0..3 {
            b.record(Outcome::Timeout, None, b.epoch(), &shared);
        }
        let now = shared.now_ms();
        assert_eq!(
            b.status(now).2,
            Some(Detector::ConsecutiveLocalOriginFailures)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_endpoint_stays_out_past_its_time_until_released() {
        let shared = health(OutlierDetection::default().base_ejection_time(Duration::from_secs(1)));
        let endpoints = active(&shared, 4);
        let e = &endpoints[0];
        shared.hold(e);
        for _ in 0..5 {
            fail(e, &shared, e.epoch());
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(shared.filter_time().is_some(), "still out");
        assert!(e.is_ejected(shared.now_ms()));
        shared.release(e);
        assert_eq!(shared.filter_time(), None);
        assert!(!e.is_ejected(shared.now_ms()));
    }
}
