//! The balancer's ejection book: which endpoints are ejected, until when,
//! and how many may be; re-admission, retirement and panic mode. Each
//! endpoint's own detector is `detector.rs`.
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

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, Weak};

use super::detector::{EndpointHealth, IN_ROTATION, RETIRED};
use super::events::EventQueue;
use super::{HealthEvent, OutlierDetection};
use crate::clock::{millis, Clock};
#[cfg(feature = "metrics")]
use crate::telemetry::{BalancerMetrics, ReadmissionReason};

/// Health settings and the ejections of one balancer.
#[derive(Debug)]
pub(crate) struct HealthShared {
    pub(crate) config: OutlierDetection,
    clock: Clock,
    /// How many endpoints are ejected: `book.len()`, readable without the lock.
    pub(super) ejected: AtomicUsize,
    /// Endpoints taking requests, per the current snapshot.
    active: AtomicUsize,
    /// The earliest end of a current ejection, in milliseconds; `u64::MAX`
    /// when none.
    next_expiry: AtomicU64,
    /// The ejected endpoints and when each comes back.
    book: Mutex<Vec<Ejection>>,
    events: EventQueue,
    /// The balancer's metric series: endpoints by state, panic mode,
    /// ejections and re-admissions (no-ops unless set).
    #[cfg(feature = "metrics")]
    pub(super) metrics: Arc<BalancerMetrics>,
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
            #[cfg(feature = "metrics")]
            metrics: Arc::default(),
        }
    }

    /// The same, reporting to `metrics`.
    #[cfg(feature = "metrics")]
    pub(crate) fn with_metrics(mut self, metrics: Arc<BalancerMetrics>) -> Self {
        self.metrics = metrics;
        self
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
                    let _readmitted = self.readmit(&endpoint, now);
                    #[cfg(feature = "metrics")]
                    if _readmitted {
                        self.metrics.readmitted(ReadmissionReason::EjectionLimit);
                    }
                }
            }
        }
        self.publish(&book);
    }

    /// How many endpoints of `active` may be ejected at once.
    fn allowed(&self, active: usize) -> usize {
        // Exact for whole percentages: `active × percent` is a whole number
        // and the quotient's rounding never crosses an integer.
        let allowed = (active as f64 * self.config.max_ejection_percent.get() / 100.0).floor();
        (allowed as usize).max(1)
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
                let _readmitted = self.readmit(&endpoint, now);
                #[cfg(feature = "metrics")]
                if _readmitted {
                    self.metrics.readmitted(ReadmissionReason::TimeUp);
                }
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
        #[cfg(feature = "metrics")]
        self.metrics.health(
            self.active.load(Ordering::Relaxed),
            book.len(),
            self.panic_with(book.len()),
        );
    }

    /// Puts `endpoint` back in rotation, with clean counts (the caller has
    /// taken it out of the book); whether it was out.
    fn readmit(&self, endpoint: &EndpointHealth, now: u64) -> bool {
        let until = endpoint.ejected_until.load(Ordering::Relaxed);
        if until == IN_ROTATION || until == RETIRED {
            return false;
        }
        endpoint.start_new_epoch();
        endpoint.returned_ms.store(now.max(1), Ordering::Relaxed);
        endpoint.ejected_until.store(IN_ROTATION, Ordering::Relaxed);
        self.events.send(HealthEvent::Readmitted {
            endpoint: endpoint.name.to_string(),
        });
        true
    }

    /// Ejects `endpoint` for failures of requests sent in epoch `sent_in`,
    /// if it is still in that epoch and in rotation, and the ejection limit
    /// allows; a refused ejection clears its counts, as Envoy does. Whether
    /// it was ejected.
    pub(super) fn eject(&self, endpoint: &Arc<EndpointHealth>, sent_in: u32, now: u64) -> bool {
        let mut book = self.book();
        // Re-checked under the lock: a return or retirement may have begun
        // a new epoch since the failure was counted.
        if endpoint.epoch() != sent_in
            || endpoint.ejected_until.load(Ordering::Relaxed) != IN_ROTATION
        {
            return false;
        }
        let active = self.active.load(Ordering::Relaxed);
        if book.len() >= self.allowed(active) {
            endpoint.clear_counts();
            return false;
        }
        let config = &self.config;
        let returned = endpoint.returned_ms.load(Ordering::Relaxed);
        let max_ms = millis(config.max_ejection_time);
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
        let until = now.saturating_add(millis(duration).max(1)).min(RETIRED - 1);
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
        true
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
