//! Live health state: per endpoint (failure streaks, the current interval's
//! counts, ejection) and per balancer (which endpoints are ejected, until
//! when, and how many may be).
//!
//! Recording an outcome and checking availability are atomics only. The
//! balancer's list of ejections sits behind a mutex taken only when an
//! endpoint is ejected or re-admitted, or the set changes: a few times a
//! minute at most, never once per request. It is the one record of who is
//! out, so the ejected count cannot drift from the ejected endpoints.
//!
//! Each endpoint's health has an epoch, bumped when it is ejected, comes
//! back, or leaves or rejoins the set. A request remembers the epoch it was
//! sent in, and its outcome feeds the detectors only if the epoch is still
//! the same: failures of requests sent before an ejection do not count
//! toward the next one, an endpoint back from ejection needs the full
//! threshold of fresh failures, and a removed endpoint's late answers change
//! nothing shared.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, Weak};
use std::time::Duration;

use http::StatusCode;

use super::events::EventQueue;
use super::{HealthEvent, OutlierDetection};
use crate::clock::Clock;
use crate::outcome::Outcome;

/// `ejected_until` of an endpoint in rotation.
const IN_ROTATION: u64 = 0;
/// `ejected_until` of an endpoint that is not in the active set (removed or
/// drained): it holds no ejection and cannot be ejected.
const RETIRED: u64 = u64::MAX;

/// Health settings and the ejections of one balancer.
#[derive(Debug)]
pub(crate) struct HealthShared {
    pub(crate) config: OutlierDetection,
    clock: Clock,
    /// How many endpoints are ejected: `book.len()`, readable without the lock.
    ejected: AtomicUsize,
    /// Endpoints taking requests, per the current snapshot.
    active: AtomicUsize,
    /// The earliest end of a current ejection, in milliseconds; `u64::MAX`
    /// when none.
    next_expiry: AtomicU64,
    /// The ejected endpoints and when each comes back.
    book: Mutex<Vec<Ejection>>,
    events: EventQueue,
}

#[derive(Debug)]
struct Ejection {
    endpoint: Weak<EndpointHealth>,
    until: u64,
}

impl Default for HealthShared {
    fn default() -> Self {
        HealthShared::new(OutlierDetection::default(), Clock::default())
    }
}

impl HealthShared {
    pub(crate) fn new(config: OutlierDetection, clock: Clock) -> Self {
        let events = EventQueue::start(config.on_event.clone());
        HealthShared {
            config,
            clock,
            ejected: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            next_expiry: AtomicU64::new(u64::MAX),
            book: Mutex::new(Vec::new()),
            events,
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    fn book(&self) -> MutexGuard<'_, Vec<Ejection>> {
        // A panic elsewhere while holding the lock leaves a consistent list
        // (every change to it is one push, retain or remove).
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the number of active endpoints (at a change of the set, off the
    /// request path). If the set shrank below what the current ejections
    /// may hold, those ending soonest end now.
    pub(crate) fn set_active(&self, active: usize) {
        self.active.store(active, Ordering::SeqCst);
        let allowed = self.allowed(active);
        let mut book = self.book();
        book.retain(|e| e.endpoint.strong_count() > 0);
        if book.len() > allowed {
            book.sort_by_key(|e| e.until);
            let now = self.now_ms();
            let extra = book.len() - allowed;
            for ejection in book.drain(..extra) {
                if let Some(endpoint) = ejection.endpoint.upgrade() {
                    self.readmit(&endpoint, now);
                }
            }
        }
        self.publish(&book);
    }

    /// How many endpoints of `active` may be ejected at once.
    fn allowed(&self, active: usize) -> usize {
        (active * self.config.max_ejection_percent as usize / 100).max(1)
    }

    /// Whether too few endpoints are healthy, so ejections are ignored.
    pub(crate) fn in_panic(&self) -> bool {
        self.panic_with(self.ejected.load(Ordering::Relaxed))
    }

    fn panic_with(&self, ejected: usize) -> bool {
        let active = self.active.load(Ordering::Relaxed);
        ejected > 0
            && (active.saturating_sub(ejected) as f64)
                < f64::from(self.config.panic_threshold) / 100.0 * active as f64
    }

    /// Whether the balancer is in panic mode at `now`, counting only
    /// ejections still running. A pure read, for stats.
    pub(crate) fn in_panic_at(&self, now: u64) -> bool {
        if self.ejected.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let running = self.book().iter().filter(|e| e.until > now).count();
        self.panic_with(running)
    }

    /// Health events dropped because the callback's queue was full.
    pub(crate) fn events_dropped(&self) -> u64 {
        self.events.dropped()
    }

    /// `Some(now)` when picks must skip ejected endpoints: some are ejected
    /// and the balancer is not in panic mode. Re-admits endpoints whose time
    /// is up first, in panic mode too. Reads no clock when none is ejected.
    pub(crate) fn filter_time(&self) -> Option<u64> {
        if self.ejected.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let now = self.now_ms();
        if now >= self.next_expiry.load(Ordering::Relaxed) {
            self.readmit_expired(now);
            if self.ejected.load(Ordering::Relaxed) == 0 {
                return None;
            }
        }
        (!self.in_panic()).then_some(now)
    }

    /// Ends every ejection whose time is up at `now`. Another request doing
    /// the same at the same moment is enough: this one does not wait.
    fn readmit_expired(&self, now: u64) {
        let mut book = match self.book.try_lock() {
            Ok(book) => book,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        book.retain(|ejection| {
            if ejection.until > now {
                return ejection.endpoint.strong_count() > 0;
            }
            if let Some(endpoint) = ejection.endpoint.upgrade() {
                self.readmit(&endpoint, now);
            }
            false
        });
        self.publish(&book);
    }

    /// Publishes the book's count and earliest end for lock-free readers.
    fn publish(&self, book: &[Ejection]) {
        self.ejected.store(book.len(), Ordering::SeqCst);
        let next = book.iter().map(|e| e.until).min().unwrap_or(u64::MAX);
        self.next_expiry.store(next, Ordering::SeqCst);
    }

    /// Puts `endpoint` back in rotation, with clean counts (the caller has
    /// taken it out of the book).
    fn readmit(&self, endpoint: &EndpointHealth, now: u64) {
        let until = endpoint.ejected_until.load(Ordering::Relaxed);
        if until == IN_ROTATION || until == RETIRED {
            return;
        }
        endpoint.start_new_epoch();
        endpoint.returned_ms.store(now.max(1), Ordering::Relaxed);
        endpoint.ejected_until.store(IN_ROTATION, Ordering::Relaxed);
        self.events.send(HealthEvent::Readmitted {
            endpoint: endpoint.name.to_string(),
        });
    }

    /// Ejects `endpoint` for failures of requests sent in epoch `sent_in`,
    /// if it is still in that epoch and in rotation, and the ejection limit
    /// allows; a refused ejection clears its counts, as Envoy does.
    fn eject(&self, endpoint: &Arc<EndpointHealth>, sent_in: u32, now: u64) {
        let mut book = self.book();
        // Re-checked under the lock: a return or retirement may have begun
        // a new epoch since the failure was counted.
        if endpoint.epoch() != sent_in
            || endpoint.ejected_until.load(Ordering::Relaxed) != IN_ROTATION
        {
            return;
        }
        let active = self.active.load(Ordering::Relaxed);
        if book.len() >= self.allowed(active) {
            endpoint.clear_counts();
            return;
        }
        let config = &self.config;
        let returned = endpoint.returned_ms.load(Ordering::Relaxed);
        let max_ms = config.max_ejection_time.as_millis() as u64;
        if returned > 0 && now.saturating_sub(returned) >= max_ms {
            endpoint.times_ejected.store(0, Ordering::Relaxed);
        }
        let times = endpoint
            .times_ejected
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let duration = config
            .base_ejection_time
            .saturating_mul(times)
            .min(config.max_ejection_time);
        let until = now
            .saturating_add((duration.as_millis() as u64).max(1))
            .min(RETIRED - 1);
        endpoint.ejected_until.store(until, Ordering::Relaxed);
        endpoint.start_new_epoch();
        book.push(Ejection {
            endpoint: Arc::downgrade(endpoint),
            until,
        });
        self.publish(&book);
        self.events.send(HealthEvent::Ejected {
            endpoint: endpoint.name.to_string(),
            times,
            duration,
        });
    }

    /// Takes `endpoint` out of health accounting when it leaves the active
    /// set (removed or drained): it gives back any ejection slot, and
    /// answers still on their way change nothing.
    pub(crate) fn retire(&self, endpoint: &Arc<EndpointHealth>) {
        let mut book = self.book();
        if endpoint.ejected_until.swap(RETIRED, Ordering::Relaxed) == RETIRED {
            return;
        }
        endpoint.start_new_epoch();
        book.retain(|e| !std::ptr::eq(e.endpoint.as_ptr(), Arc::as_ptr(endpoint)));
        self.publish(&book);
    }

    /// Brings a drained endpoint back into health accounting, with clean
    /// counts. Does nothing to an endpoint already in it.
    pub(crate) fn reinstate(&self, endpoint: &EndpointHealth) {
        if endpoint.ejected_until.load(Ordering::Relaxed) != RETIRED {
            return;
        }
        let _book = self.book();
        if endpoint.ejected_until.load(Ordering::Relaxed) == RETIRED {
            endpoint.start_new_epoch();
            endpoint.ejected_until.store(IN_ROTATION, Ordering::Relaxed);
        }
    }
}

/// One endpoint's health.
#[derive(Debug)]
pub(crate) struct EndpointHealth {
    /// The endpoint's canonical URL, for events.
    name: Arc<str>,
    /// Bumped at every ejection, return, retirement and reinstatement.
    epoch: AtomicU32,
    consecutive_failures: AtomicU32,
    consecutive_gateway_failures: AtomicU32,
    window_start_ms: AtomicU64,
    window_requests: AtomicU32,
    window_failures: AtomicU32,
    /// [`IN_ROTATION`], [`RETIRED`], or when the ejection ends.
    ejected_until: AtomicU64,
    times_ejected: AtomicU32,
    /// When it last came back from an ejection; 0 if never.
    returned_ms: AtomicU64,
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

    fn start_new_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::Relaxed);
        self.clear_counts();
    }

    fn clear_counts(&self) {
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
        let mut now = None;
        if let Some((threshold, min_requests)) = config.failure_percentage {
            let at = *now.get_or_insert_with(|| shared.now_ms());
            let share = f64::from(threshold) / 100.0;
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
            shared.eject(self, sent_in, at);
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
