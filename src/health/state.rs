//! Live health state: per endpoint (failure streaks, the current interval's
//! counts, ejection) and per balancer (how many are ejected, the clock).
//! Atomics only: recording an outcome and checking availability never lock.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;

use super::{HealthEvent, OutlierDetection};
use crate::endpoint::EndpointUrl;
use crate::outcome::Outcome;

/// Health settings and counts shared by all endpoints of a balancer.
#[derive(Debug)]
pub(crate) struct HealthShared {
    pub(crate) config: OutlierDetection,
    epoch: Instant,
    /// Endpoints ejected now (among the active ones).
    ejected: AtomicUsize,
    /// Endpoints taking requests, per the current snapshot.
    active: AtomicUsize,
}

impl Default for HealthShared {
    fn default() -> Self {
        HealthShared::new(OutlierDetection::default())
    }
}

impl HealthShared {
    pub(crate) fn new(config: OutlierDetection) -> Self {
        HealthShared {
            config,
            epoch: Instant::now(),
            ejected: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(crate) fn set_active(&self, active: usize) {
        self.active.store(active, Ordering::Relaxed);
    }

    /// Whether too few endpoints are healthy, so ejections are ignored.
    pub(crate) fn in_panic(&self) -> bool {
        let ejected = self.ejected.load(Ordering::Relaxed);
        let active = self.active.load(Ordering::Relaxed);
        ejected > 0
            && (active.saturating_sub(ejected) as f64) < self.config.panic_threshold * active as f64
    }

    /// `Some(now)` when picks must skip ejected endpoints: some are ejected
    /// and the balancer is not in panic mode. Reads no clock otherwise.
    pub(crate) fn filter_time(&self) -> Option<u64> {
        if self.ejected.load(Ordering::Relaxed) == 0 || self.in_panic() {
            return None;
        }
        Some(self.now_ms())
    }

    fn emit(&self, event: HealthEvent) {
        match &event {
            HealthEvent::Ejected {
                endpoint,
                times,
                duration,
            } => {
                tracing::warn!(%endpoint, times, duration_ms = duration.as_millis() as u64, "endpoint ejected")
            }
            HealthEvent::Readmitted { endpoint } => {
                tracing::info!(%endpoint, "endpoint readmitted")
            }
        }
        if let Some(sink) = &self.config.on_event {
            sink(&event);
        }
    }

    fn release_ejection_slot(&self) {
        let _ = self
            .ejected
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

/// Marks an ejection being decided, before its end time is known.
const CLAIMED: u64 = u64::MAX;

/// One endpoint's health.
#[derive(Debug, Default)]
pub(crate) struct EndpointHealth {
    consecutive_failures: AtomicU32,
    consecutive_gateway_failures: AtomicU32,
    window_start_ms: AtomicU64,
    window_requests: AtomicU32,
    window_failures: AtomicU32,
    /// 0 while in rotation; otherwise when the ejection ends.
    ejected_until_ms: AtomicU64,
    times_ejected: AtomicU32,
    /// When it last came back from an ejection.
    returned_ms: AtomicU64,
}

impl EndpointHealth {
    /// Whether the endpoint is ejected at `now`; re-admits it (once, with an
    /// event) when its time is up.
    pub(crate) fn is_ejected(&self, now: u64, shared: &HealthShared, url: &EndpointUrl) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if now < until {
            return true;
        }
        if self
            .ejected_until_ms
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.returned_ms.store(now, Ordering::Relaxed);
            shared.release_ejection_slot();
            shared.emit(HealthEvent::Readmitted {
                endpoint: url.as_str().to_owned(),
            });
        }
        false
    }

    /// Whether the endpoint is ejected now, and how many times in a row it
    /// has been, for stats.
    pub(crate) fn status(&self, shared: &HealthShared, url: &EndpointUrl) -> (bool, u32) {
        let ejected = self.is_ejected(shared.now_ms(), shared, url);
        (ejected, self.times_ejected.load(Ordering::Relaxed))
    }

    /// Clears an ejection when the endpoint leaves the active set (removed or
    /// drained), so that it does not hold an ejection slot.
    pub(crate) fn forget(&self, shared: &HealthShared) {
        let until = self.ejected_until_ms.swap(0, Ordering::Relaxed);
        if until != 0 && until != CLAIMED {
            shared.release_ejection_slot();
        }
    }

    /// Folds in one outcome and ejects the endpoint if a detector fires.
    pub(crate) fn record(
        &self,
        outcome: Outcome,
        status: Option<StatusCode>,
        shared: &HealthShared,
        url: &EndpointUrl,
    ) {
        let config = &shared.config;
        let failed = match (outcome, status) {
            (Outcome::ConnectError | Outcome::Timeout | Outcome::OtherError, _) => true,
            (_, Some(status)) => config.is_failure_status(status),
            (_, None) => outcome != Outcome::Success,
        };
        let gateway = matches!(outcome, Outcome::ConnectError | Outcome::Timeout)
            || status.is_some_and(|s| matches!(s.as_u16(), 502..=504));

        let streak = bump_or_reset(&self.consecutive_failures, failed);
        let gateway_streak = bump_or_reset(&self.consecutive_gateway_failures, gateway);
        let mut fire = config.consecutive_failures.is_some_and(|n| streak >= n)
            || config
                .consecutive_gateway_failures
                .is_some_and(|n| gateway_streak >= n);

        // The clock is read only when something needs it.
        if let Some((threshold, min_requests)) = config.failure_percentage {
            let now = shared.now_ms();
            fire |= self.close_window(now, config.interval, threshold, min_requests);
            self.window_requests.fetch_add(1, Ordering::Relaxed);
            if failed {
                self.window_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        if fire {
            self.eject(shared.now_ms(), shared, url);
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
        if now.saturating_sub(start) < interval.as_millis() as u64 {
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

    fn eject(&self, now: u64, shared: &HealthShared, url: &EndpointUrl) {
        let config = &shared.config;
        if self
            .ejected_until_ms
            .compare_exchange(0, CLAIMED, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return; // already ejected
        }
        let active = shared.active.load(Ordering::Relaxed);
        let allowed = (active * config.max_ejection_percent as usize / 100).max(1);
        let slot = shared
            .ejected
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < allowed).then_some(n + 1)
            });
        if slot.is_err() {
            self.ejected_until_ms.store(0, Ordering::Relaxed);
            return;
        }
        let max_ms = config.max_ejection_time.as_millis() as u64;
        let returned = self.returned_ms.load(Ordering::Relaxed);
        if returned > 0 && now.saturating_sub(returned) >= max_ms {
            self.times_ejected.store(0, Ordering::Relaxed);
        }
        let times = self.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
        let duration = config
            .base_ejection_time
            .saturating_mul(times)
            .min(config.max_ejection_time);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.consecutive_gateway_failures
            .store(0, Ordering::Relaxed);
        self.ejected_until_ms.store(
            now + (duration.as_millis() as u64).max(1),
            Ordering::Relaxed,
        );
        shared.emit(HealthEvent::Ejected {
            endpoint: url.as_str().to_owned(),
            times,
            duration,
        });
    }
}

/// Adds one to a streak, or ends it; the streak's new length.
fn bump_or_reset(streak: &AtomicU32, hit: bool) -> u32 {
    if hit {
        streak.fetch_add(1, Ordering::Relaxed).saturating_add(1)
    } else {
        streak.store(0, Ordering::Relaxed);
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_server_errors_in_a_row_eject() {
        let shared = HealthShared::new(OutlierDetection::default());
        shared.set_active(5);
        let url = EndpointUrl::parse("http://127.0.0.1:1").unwrap();
        let health = EndpointHealth::default();
        for i in 1..=5 {
            health.record(
                Outcome::ServerError,
                Some(StatusCode::SERVICE_UNAVAILABLE),
                &shared,
                &url,
            );
            let ejected = health.is_ejected(shared.now_ms(), &shared, &url);
            assert_eq!(ejected, i == 5, "after {i} failures");
        }
    }

    #[test]
    fn a_failure_share_above_the_threshold_ejects_when_the_interval_closes() {
        let config = OutlierDetection::disabled()
            .failure_percentage(0.5, 10)
            .interval(Duration::from_millis(30));
        let shared = HealthShared::new(config);
        shared.set_active(10);
        let url = EndpointUrl::parse("http://127.0.0.1:1").unwrap();
        let health = EndpointHealth::default();
        let record = |status: u16| {
            let status = StatusCode::from_u16(status).unwrap();
            health.record(Outcome::from_status(status), Some(status), &shared, &url);
        };
        // 6 failures in 10: not judged until the interval is over.
        for i in 0..10 {
            record(if i % 5 < 3 { 500 } else { 200 });
        }
        assert!(!health.is_ejected(shared.now_ms(), &shared, &url));
        std::thread::sleep(Duration::from_millis(40));
        record(200);
        assert!(health.is_ejected(shared.now_ms(), &shared, &url));

        // Too few requests in an interval: no verdict, however bad.
        let quiet = EndpointHealth::default();
        for _ in 0..5 {
            quiet.record(
                Outcome::ServerError,
                Some(StatusCode::BAD_GATEWAY),
                &shared,
                &url,
            );
        }
        std::thread::sleep(Duration::from_millis(40));
        quiet.record(Outcome::Success, Some(StatusCode::OK), &shared, &url);
        assert!(!quiet.is_ejected(shared.now_ms(), &shared, &url));
    }
}
