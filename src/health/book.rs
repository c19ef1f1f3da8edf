//! The balancer's ejection book: which endpoints are ejected, until when,
//! and how many may be; re-admission, retirement, panic mode, and the
//! interval sweep that runs the statistical detectors. Each endpoint's own
//! detector is `detector.rs`, the statistics `statistics.rs`, and what
//! drives the sweep on the clock `sweeper.rs`.
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

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use super::active::{Checking, CHECKS};
use super::detector::{EndpointHealth, IN_ROTATION, RETIRED};
use super::events::EventQueue;
use super::statistics;
use super::{Detector, EjectionStats, HealthEvent, OutlierDetection};
use crate::clock::{millis, Clock};
use crate::random::SharedRng;
use crate::slow_start::Ramps;
#[cfg(feature = "metrics")]
use crate::telemetry::{BalancerMetrics, ReadmissionReason};

/// Health settings and the ejections of one balancer.
#[derive(Debug)]
pub(crate) struct HealthShared {
    pub(crate) config: OutlierDetection,
    pub(super) clock: Clock,
    rng: Arc<SharedRng>,
    /// How many endpoints are ejected: `book.len()`, readable without the lock.
    pub(super) ejected: AtomicUsize,
    /// Endpoints taking requests, per the current snapshot.
    active: AtomicUsize,
    /// The endpoints taking requests, for the interval sweep; taken by
    /// set changes and the sweep only.
    members: Mutex<Vec<Arc<EndpointHealth>>>,
    /// The earliest end of a current ejection not held out, in
    /// milliseconds; `u64::MAX` when none.
    next_expiry: AtomicU64,
    /// When the next interval sweep is due, in milliseconds; whoever moves
    /// it on (one compare-and-swap) runs the sweep.
    next_sweep: AtomicU64,
    /// The ejected endpoints and when each comes back.
    book: Mutex<Vec<Ejection>>,
    events: EventQueue,
    /// Ejections made, by detector (in [`Detector::ALL`] order).
    enforced: [AtomicU64; 8],
    not_enforced: AtomicU64,
    refused: AtomicU64,
    /// Whether a sweeper task runs for this balancer (see `sweeper.rs`);
    /// until one does, picks drive the sweep.
    pub(super) swept_by_task: AtomicBool,
    /// Wakes the sweeper: a new ejection, a release, or this being dropped.
    pub(super) wake: Arc<Notify>,
    /// This, for starting the sweeper from a pick.
    pub(super) this: Weak<HealthShared>,
    /// The balancer's metric series: endpoints by state, panic mode,
    /// ejections by detector, refused ejections and re-admissions by
    /// reason (no-ops unless set).
    #[cfg(feature = "metrics")]
    metrics: Arc<BalancerMetrics>,
    /// Active health checks, once started (see `active.rs`).
    pub(super) checking: Checking,
    /// Slow start, told when an endpoint comes back from an ejection.
    ramps: OnceLock<Arc<Ramps>>,
}

/// Health with default settings and no sweeper (for counters that serve
/// no requests: a custom policy's trial build, tests): picks sweep.
impl Default for HealthShared {
    fn default() -> Self {
        Self::with(
            OutlierDetection::default(),
            Clock::default(),
            Arc::default(),
            Weak::new(),
        )
    }
}

#[derive(Debug)]
struct Ejection {
    endpoint: Weak<EndpointHealth>,
    until: u64,
    /// Why: an outlier detector, or [`CHECKS`] (failing active checks,
    /// which the maximum ejection percentage does not limit).
    detector: Detector,
}

impl Ejection {
    /// Whether the maximum ejection percentage counts it.
    fn limited(&self) -> bool {
        self.detector != CHECKS
    }
}

impl HealthShared {
    /// The balancer's health, with its sweeper started if a tokio runtime
    /// is at hand (else the first pick in one starts it).
    /// With metrics on, the builder calls `reporting` instead.
    #[cfg_attr(all(feature = "metrics", not(test)), allow(dead_code))]
    pub(crate) fn new(config: OutlierDetection, clock: Clock, rng: Arc<SharedRng>) -> Arc<Self> {
        let shared = Arc::new_cyclic(|this| Self::with(config, clock, rng, this.clone()));
        shared.start_sweeper();
        shared
    }

    /// The same, reporting to `metrics` (from the first change on: the
    /// sweeper's re-admissions too).
    #[cfg(feature = "metrics")]
    pub(crate) fn reporting(
        config: OutlierDetection,
        clock: Clock,
        rng: Arc<SharedRng>,
        metrics: Arc<BalancerMetrics>,
    ) -> Arc<Self> {
        let shared = Arc::new_cyclic(|this| {
            let mut health = Self::with(config, clock, rng, this.clone());
            health.metrics = metrics;
            health
        });
        shared.start_sweeper();
        shared
    }

    fn with(
        config: OutlierDetection,
        clock: Clock,
        rng: Arc<SharedRng>,
        this: Weak<HealthShared>,
    ) -> Self {
        let events = EventQueue::start(config.on_event.clone());
        let first_sweep = millis(config.interval);
        HealthShared {
            config,
            clock,
            rng,
            ejected: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            members: Mutex::new(Vec::new()),
            next_expiry: AtomicU64::new(u64::MAX),
            next_sweep: AtomicU64::new(first_sweep),
            book: Mutex::new(Vec::new()),
            events,
            enforced: Default::default(),
            not_enforced: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            swept_by_task: AtomicBool::new(false),
            wake: Arc::new(Notify::new()),
            this,
            #[cfg(feature = "metrics")]
            metrics: Arc::default(),
            checking: Checking::default(),
            ramps: OnceLock::new(),
        }
    }

    /// Endpoints readmitted from now on ramp up under `ramps`.
    pub(crate) fn ramp_returns(&self, ramps: Arc<Ramps>) {
        let _ = self.ramps.set(ramps);
    }

    /// Health with default settings, for tests.
    #[cfg(test)]
    pub(crate) fn with_defaults() -> Arc<Self> {
        Self::new(
            OutlierDetection::default(),
            Clock::default(),
            Arc::new(SharedRng::new(1)),
        )
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Whether requests count their outcomes per interval: a statistical
    /// detector is on.
    pub(super) fn counts_windows(&self) -> bool {
        self.config.has_statistics()
    }

    fn book(&self) -> MutexGuard<'_, Vec<Ejection>> {
        // A panic elsewhere while holding the lock leaves a consistent list
        // (every change to it is one push, retain or remove).
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn members(&self) -> MutexGuard<'_, Vec<Arc<EndpointHealth>>> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The endpoints taking requests now.
    pub(super) fn members_now(&self) -> Vec<Arc<EndpointHealth>> {
        self.members().clone()
    }

    /// The balancer's generator.
    pub(super) fn rng(&self) -> &SharedRng {
        &self.rng
    }

    /// Runs the sweeps due by now over the set as it stands. Called before
    /// the set changes: a sweep due before the change judges the members of
    /// before it (an endpoint drained since does not miss its multiplier's
    /// step down, and one that joins since does not take one early), even
    /// when the sweeper had no timer set for it.
    pub(crate) fn sweep_due(&self) {
        self.sweep(self.now_ms());
    }

    /// Sets the endpoints taking requests (at a change of the set, off the
    /// request path). If the set shrank below what the current ejections
    /// may hold, those ending soonest end now.
    pub(crate) fn set_active(&self, active: Vec<Arc<EndpointHealth>>) {
        let count = active.len();
        *self.members() = active.clone();
        self.active.store(count, Ordering::SeqCst);
        let allowed = self.allowed(count);
        let mut book = self.book();
        book.retain(|e| e.endpoint.strong_count() > 0);
        let limited = book.iter().filter(|e| e.limited()).count();
        if limited > allowed {
            // Those ending soonest end now; ejections for failing checks
            // are not the limit's to end.
            book.sort_by_key(|e| (!e.limited(), e.until));
            let now = self.now_ms();
            let extra = limited - allowed;
            for ejection in book.drain(..extra) {
                if let Some(endpoint) = ejection.endpoint.upgrade() {
                    let _readmitted = self.readmit(&endpoint, now);
                    #[cfg(feature = "metrics")]
                    if _readmitted {
                        self.metrics.readmitted(ReadmissionReason::SetShrank);
                    }
                }
            }
        }
        self.publish(&book);
        drop(book);
        // With checks on, a newcomer is out until its first check passes.
        if self.checks_on() {
            let now = self.now_ms();
            for member in &active {
                self.await_first_check(member, now);
            }
            self.checking.wake.notify_one();
        }
        // A returning member may bring a multiplier the sweeps must bring
        // down.
        self.wake.notify_one();
    }

    /// How many endpoints of `active` may be ejected at once.
    fn allowed(&self, active: usize) -> usize {
        // Exact for whole percentages: `active × percent` is a whole number
        // and the quotient's rounding never crosses an integer.
        let allowed = (active as f64 * self.config.max_ejection_percent.get() / 100.0).floor();
        let allowed = allowed as usize;
        if self.config.always_eject_one {
            allowed.max(1)
        } else {
            allowed
        }
    }

    /// Whether too few endpoints are healthy, so ejections are ignored.
    pub(crate) fn in_panic(&self) -> bool {
        self.panic_with(self.ejected.load(Ordering::Relaxed))
    }

    fn panic_with(&self, ejected: usize) -> bool {
        let active = self.active.load(Ordering::Relaxed);
        ejected > 0
            && (active.saturating_sub(ejected) as f64)
                < self.config.panic_threshold.fraction() * active as f64
    }

    /// Whether the balancer is in panic mode at `now`, counting only
    /// ejections still running. A pure read, for stats.
    pub(crate) fn in_panic_at(&self, now: u64) -> bool {
        if self.ejected.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.panic_with(self.running(now))
    }

    /// Ejections still running at `now` (held ones included).
    fn running(&self, now: u64) -> usize {
        self.book()
            .iter()
            .filter(|e| {
                e.until > now
                    || e.endpoint
                        .upgrade()
                        .is_some_and(|h| h.held.load(Ordering::Relaxed))
            })
            .count()
    }

    /// Logs `event` and queues it for the callback (an event from outside
    /// the book: an endpoint held off for overload).
    pub(crate) fn announce(&self, event: HealthEvent) {
        self.events.send(event);
    }

    /// Health events dropped because the callback's queue was full.
    pub(crate) fn events_dropped(&self) -> u64 {
        self.events.dropped()
    }

    /// The balancer's ejection counts at `now`. A pure read.
    pub(crate) fn ejection_stats(&self, now: u64) -> EjectionStats {
        let by_detector: Vec<(Detector, u64)> = Detector::ALL
            .iter()
            .zip(&self.enforced)
            .map(|(d, n)| (*d, n.load(Ordering::Relaxed)))
            .collect();
        EjectionStats {
            active: if self.ejected.load(Ordering::Relaxed) == 0 {
                0
            } else {
                self.running(now) as u64
            },
            total: by_detector.iter().map(|(_, n)| n).sum(),
            by_detector,
            not_enforced: self.not_enforced.load(Ordering::Relaxed),
            refused_by_max_percent: self.refused.load(Ordering::Relaxed),
        }
    }

    /// `Some(now)` when picks must skip ejected endpoints: some are ejected
    /// and the balancer is not in panic mode. Re-admits endpoints whose time
    /// is up first, in panic mode too. Reads no clock when none is ejected
    /// and the sweeper task runs.
    pub(crate) fn filter_time(&self) -> Option<u64> {
        if !self.swept_by_task.load(Ordering::Relaxed) {
            self.sweep_from_pick();
        }
        if self.ejected.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let now = self.now_ms();
        if now >= self.next_expiry.load(Ordering::Relaxed) {
            self.readmit_expired(now, None);
            if self.ejected.load(Ordering::Relaxed) == 0 {
                return None;
            }
        }
        (!self.in_panic()).then_some(now)
    }

    /// Without a sweeper task (no tokio runtime was at hand yet): start
    /// one if there is a runtime now, else run the interval sweep here
    /// when it is due.
    #[cold]
    fn sweep_from_pick(&self) {
        if self.start_sweeper() {
            return;
        }
        if self.counts_windows() {
            let now = self.now_ms();
            if now >= self.next_sweep.load(Ordering::Relaxed) {
                self.sweep(now);
            }
        }
    }

    /// When the sweeper must next look, in milliseconds: the earliest end
    /// of an ejection, or the next interval when a statistical detector or
    /// an ejection multiplier needs one; `None` when nothing is pending.
    pub(super) fn next_deadline(&self) -> Option<u64> {
        let expiry = self.next_expiry.load(Ordering::SeqCst);
        let interval = self
            .needs_intervals()
            .then(|| self.next_sweep.load(Ordering::SeqCst));
        let next = interval.map_or(expiry, |at| at.min(expiry));
        (next != u64::MAX).then_some(next)
    }

    /// Whether interval sweeps have work: a statistical detector is on, or
    /// an endpoint's ejection multiplier has to come down.
    fn needs_intervals(&self) -> bool {
        self.counts_windows()
            || self
                .members()
                .iter()
                .any(|m| m.times_ejected.load(Ordering::Relaxed) > 0)
    }

    /// Ends the ejections whose time is up at `now`, and runs the interval
    /// sweep if it is due: the statistical detectors over the interval's
    /// counts, and the multipliers of endpoints that stayed in rotation
    /// come down by one. One caller runs each interval's sweep.
    pub(super) fn sweep(&self, now: u64) {
        if now >= self.next_expiry.load(Ordering::Relaxed) {
            self.readmit_expired(now, None);
        }
        let due = self.next_sweep.load(Ordering::SeqCst);
        if now < due {
            return;
        }
        // The sweeps due since `due` (more than one when the sweeper ran
        // late), run as one: one judgement over the counts since the last,
        // and the multipliers come down as many times as were due.
        let interval = millis(self.config.interval).max(1);
        let sweeps = (now - due) / interval + 1;
        let next = due.saturating_add(sweeps.saturating_mul(interval));
        if self
            .next_sweep
            .compare_exchange(due, next, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return;
        }
        let members = self.members().clone();
        let statistics = self.counts_windows();
        let mut judged = Vec::new();
        for member in &members {
            let in_rotation = member.ejected_until.load(Ordering::Relaxed) == IN_ROTATION;
            let counts = if statistics {
                member.window.take()
            } else {
                Default::default()
            };
            if !in_rotation {
                continue;
            }
            // Envoy: at every sweep an interval or more after its return,
            // the multiplier comes down by one. The sweeps here are at
            // `due + j × interval` for `j < sweeps`.
            let returned = member.returned_ms.load(Ordering::Relaxed);
            let times = member.times_ejected.load(Ordering::Relaxed);
            if times > 0 && returned > 0 {
                let first = returned
                    .saturating_add(interval)
                    .saturating_sub(due)
                    .div_ceil(interval);
                let down = sweeps.saturating_sub(first).min(u64::from(times)) as u32;
                if down > 0 {
                    member.times_ejected.store(times - down, Ordering::Relaxed);
                }
            }
            if statistics {
                judged.push((member, member.epoch(), counts));
            }
        }
        if judged.is_empty() {
            return;
        }
        let counts: Vec<_> = judged.iter().map(|(_, _, c)| *c).collect();
        for (i, detector) in statistics::outliers(&self.config, &counts) {
            if let Some((member, epoch, _)) = judged.get(i) {
                self.eject(member, *epoch, now, detector);
            }
        }
    }

    /// Ends every ejection whose time is up at `now` and that nothing
    /// holds out. Another caller doing the same at the same moment is
    /// enough: this one does not wait.
    /// `released`: the endpoint a passing check has just released, if any
    /// (read for metrics only).
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    fn readmit_expired(&self, now: u64, released: Option<&EndpointHealth>) {
        let mut book = match self.book.try_lock() {
            Ok(book) => book,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        book.retain(|ejection| {
            let Some(endpoint) = ejection.endpoint.upgrade() else {
                return false;
            };
            if ejection.until > now || endpoint.held.load(Ordering::Relaxed) {
                return true;
            }
            let _readmitted = self.readmit(&endpoint, now);
            // Back as a check passed (its time was up, the check's release
            // let it in), or as its time came (the check had passed).
            #[cfg(feature = "metrics")]
            if _readmitted {
                let by_check = released.is_some_and(|r| std::ptr::eq(r, &*endpoint))
                    && endpoint.checks.answered();
                self.metrics.readmitted(if by_check {
                    ReadmissionReason::CheckPassed
                } else {
                    ReadmissionReason::TimeUp
                });
            }
            false
        });
        self.publish(&book);
    }

    /// Publishes the book's count and earliest end for lock-free readers.
    fn publish(&self, book: &[Ejection]) {
        self.ejected.store(book.len(), Ordering::SeqCst);
        let next = book
            .iter()
            .filter(|e| {
                !e.endpoint
                    .upgrade()
                    .is_some_and(|h| h.held.load(Ordering::Relaxed))
            })
            .map(|e| e.until)
            .min()
            .unwrap_or(u64::MAX);
        self.next_expiry.store(next, Ordering::SeqCst);
        #[cfg(feature = "metrics")]
        self.metrics.health(
            self.active.load(Ordering::Relaxed),
            book.len(),
            self.panic_with(book.len()),
        );
    }

    /// Puts `endpoint` back in rotation, with clean counts (the caller has
    /// taken it out of the book); whether that ended an ejection (not an
    /// endpoint's wait for its first check).
    fn readmit(&self, endpoint: &EndpointHealth, now: u64) -> bool {
        let until = endpoint.ejected_until.load(Ordering::Relaxed);
        if until == IN_ROTATION || until == RETIRED {
            return false;
        }
        endpoint.start_new_epoch();
        // Back at its time, whoever noticed (the sweeper, a pick), or now
        // if it ends early (the set shrank) or late (it was held).
        let quiet = endpoint
            .checks
            .awaiting_first
            .swap(false, Ordering::Relaxed);
        let returned = if endpoint.held.load(Ordering::Relaxed) {
            now
        } else {
            until.min(now)
        };
        endpoint
            .returned_ms
            .store(returned.max(1), Ordering::Relaxed);
        if let Some(ramps) = self.ramps.get() {
            ramps.begin(returned.max(1));
        }
        endpoint.ejected_until.store(IN_ROTATION, Ordering::Relaxed);
        endpoint.ejected_by.store(0, Ordering::Relaxed);
        let began = endpoint.ejected_at.load(Ordering::Relaxed);
        if quiet {
            // In for its first passing check: it was never ejected.
            return false;
        }
        self.events.send(HealthEvent::Readmitted {
            endpoint: endpoint.name.to_string(),
            after: Duration::from_millis(returned.saturating_sub(began)),
        });
        true
    }

    /// Ejects `endpoint` for `detector`'s verdict on outcomes of epoch
    /// `sent_in`, if it is still in that epoch and in rotation, the
    /// ejection limit allows and the enforcement draw says so; a refused
    /// or unenforced ejection clears its counts, as Envoy does.
    pub(super) fn eject(
        &self,
        endpoint: &Arc<EndpointHealth>,
        sent_in: u32,
        now: u64,
        detector: Detector,
    ) {
        let mut book = self.book();
        // Re-checked under the lock: a return or retirement may have begun
        // a new epoch since the failure was counted.
        if endpoint.epoch() != sent_in
            || endpoint.ejected_until.load(Ordering::Relaxed) != IN_ROTATION
        {
            return;
        }
        let config = &self.config;
        let active = self.active.load(Ordering::Relaxed);
        if book.iter().filter(|e| e.limited()).count() >= self.allowed(active) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            #[cfg(feature = "metrics")]
            self.metrics.ejection_refused(detector.index());
            endpoint.clear_counts();
            return;
        }
        let enforcing = config.enforcing_of(detector).get();
        if enforcing < 100.0 && (self.rng.below(10_000) as f64) >= enforcing * 100.0 {
            self.not_enforced.fetch_add(1, Ordering::Relaxed);
            #[cfg(feature = "metrics")]
            self.metrics.ejection_not_enforced(detector.index());
            endpoint.clear_counts();
            return;
        }
        // Envoy: the multiplier goes up while `base × multiplier` is below
        // the maximum.
        let base = config.base_ejection_time;
        let previous = endpoint.times_ejected.load(Ordering::Relaxed);
        let times = if base.saturating_mul(previous) < config.max_ejection_time {
            previous.saturating_add(1)
        } else {
            previous.max(1)
        };
        endpoint.times_ejected.store(times, Ordering::Relaxed);
        let jitter_ms = millis(config.max_ejection_time_jitter);
        let jitter = if jitter_ms == 0 {
            0
        } else {
            self.rng.below(jitter_ms.saturating_add(1))
        };
        let duration = base
            .saturating_mul(times)
            .min(config.max_ejection_time)
            .saturating_add(Duration::from_millis(jitter));
        let until = now.saturating_add(millis(duration).max(1)).min(RETIRED - 1);
        endpoint.ejected_until.store(until, Ordering::Relaxed);
        endpoint.ejected_at.store(now, Ordering::Relaxed);
        endpoint
            .ejected_by
            .store(detector.index() as u8 + 1, Ordering::Relaxed);
        endpoint.start_new_epoch();
        // With active checks on, it comes back only once a check passes.
        if self.checks_on() {
            endpoint.held.store(true, Ordering::Relaxed);
        }
        book.push(Ejection {
            endpoint: Arc::downgrade(endpoint),
            until,
            detector,
        });
        self.publish(&book);
        drop(book);
        if let Some(count) = self.enforced.get(detector.index()) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        #[cfg(feature = "metrics")]
        self.metrics.ejected(detector.index());
        self.wake.notify_one();
        self.events.send(HealthEvent::Ejected {
            endpoint: endpoint.name.to_string(),
            times,
            duration,
            detector,
        });
    }

    /// Holds `endpoint` out past its ejection time, until
    /// [`release`](Self::release): the seam for an active health check
    /// that lets an ejected endpoint back only once a check passes
    /// (Envoy's `successful_active_health_check_uneject_host`). Holding an
    /// endpoint in rotation keeps it in until it is next ejected, then out
    /// until released.
    pub(crate) fn hold(&self, endpoint: &EndpointHealth) {
        let book = self.book();
        endpoint.held.store(true, Ordering::Relaxed);
        self.publish(&book);
    }

    /// Lets `endpoint` come back: at once if its ejection time is up, else
    /// when it is.
    pub(crate) fn release(&self, endpoint: &EndpointHealth) {
        {
            let book = self.book();
            endpoint.held.store(false, Ordering::Relaxed);
            self.publish(&book);
        }
        self.readmit_expired(self.now_ms(), Some(endpoint));
        self.wake.notify_one();
    }

    /// Takes `endpoint` out for its active checks, held until a check
    /// passes: an endpoint in rotation is ejected with [`CHECKS`] (whatever
    /// the maximum ejection percentage; `quiet` when it only waits for its
    /// first check: no event, no count); one already out stays out, as
    /// its ejection says.
    pub(super) fn take_out_for_checks(
        &self,
        endpoint: &Arc<EndpointHealth>,
        now: u64,
        quiet: bool,
    ) {
        let mut book = self.book();
        let until = endpoint.ejected_until.load(Ordering::Relaxed);
        if until == RETIRED {
            return;
        }
        endpoint.held.store(true, Ordering::Relaxed);
        let news = if until == IN_ROTATION {
            let until = now.max(1);
            endpoint.ejected_until.store(until, Ordering::Relaxed);
            endpoint.ejected_at.store(now, Ordering::Relaxed);
            endpoint
                .ejected_by
                .store(CHECKS.index() as u8 + 1, Ordering::Relaxed);
            endpoint
                .checks
                .awaiting_first
                .store(quiet, Ordering::Relaxed);
            endpoint.start_new_epoch();
            book.push(Ejection {
                endpoint: Arc::downgrade(endpoint),
                until,
                detector: CHECKS,
            });
            !quiet
        } else {
            // Out for its first check, and that check failed: now an
            // ejection of its own.
            !quiet
                && endpoint
                    .checks
                    .awaiting_first
                    .swap(false, Ordering::Relaxed)
        };
        self.publish(&book);
        drop(book);
        self.wake.notify_one();
        if news {
            if let Some(count) = self.enforced.get(CHECKS.index()) {
                count.fetch_add(1, Ordering::Relaxed);
            }
            #[cfg(feature = "metrics")]
            self.metrics.ejected(CHECKS.index());
            self.events.send(HealthEvent::Ejected {
                endpoint: endpoint.name.to_string(),
                times: endpoint.times_ejected.load(Ordering::Relaxed),
                duration: Duration::ZERO,
                detector: CHECKS,
            });
        }
    }

    /// Takes `endpoint` out of health accounting when it leaves the active
    /// set (removed or drained): it gives back any ejection slot, and
    /// answers still on their way change nothing.
    pub(crate) fn retire(&self, endpoint: &Arc<EndpointHealth>) {
        let mut book = self.book();
        if endpoint.ejected_until.swap(RETIRED, Ordering::Relaxed) == RETIRED {
            return;
        }
        endpoint.ejected_by.store(0, Ordering::Relaxed);
        endpoint.held.store(false, Ordering::Relaxed);
        endpoint.checks.reset();
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

impl Drop for HealthShared {
    fn drop(&mut self) {
        // The sweeper wakes, finds nothing to upgrade, and ends.
        self.wake.notify_one();
    }
}
