//! Active health checks, the health side: their settings
//! ([`ActiveHealthCheck`]), each endpoint's check counts, and what a check's
//! outcome does to the endpoint's place in the ejection book. The task that
//! sends the checks is in `active_checks.rs`, above the balancer; this module never sends
//! anything.
//!
//! How checks combine with outlier detection (Envoy's semantics, where
//! they differ it is said):
//!
//! - an endpoint that fails `unhealthy_threshold` checks in a row is taken
//!   out, with [`Detector::ActiveCheck`], until `healthy_threshold` checks
//!   pass in a row; such an ejection is never refused by
//!   `max_ejection_percent` and counts toward panic mode (Envoy: hosts
//!   failing active checks are excluded whatever the outlier limits, and
//!   panic mode covers every unhealthy host);
//! - once checks run, every ejection is held past its time until a check
//!   passes after it (the book's `hold`/`release`), so an ejected endpoint
//!   never comes back blind into a dead backend; a check that fails while
//!   it is out holds it again;
//! - an endpoint not yet checked (at the start of checks, or joining the
//!   set later) is out until its first check passes, one pass being enough
//!   (Envoy marks new hosts `FAILED_ACTIVE_HC` until their first check, and
//!   bypasses the healthy threshold for it); it counts as unhealthy for
//!   panic mode (Envoy's default, `ignore_new_hosts_until_first_hc: false`).

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use tokio::sync::Notify;

use super::book::HealthShared;
use super::detector::{EndpointHealth, IN_ROTATION, RETIRED};
use super::Detector;
use crate::Error;

/// Active health-check settings: an HTTP request per endpoint on an
/// interval, given to [`Balancer::health_checks`](crate::Balancer::health_checks)
/// (one inner service for every endpoint) or
/// [`PerEndpointService::health_checks`](crate::PerEndpointService::health_checks)
/// (each endpoint's own).
///
/// Defaults beside Envoy's (which requires most of them):
///
/// | setting | default | Envoy |
/// |---|---|---|
/// | `path` | given | `http_health_check.path` (required) |
/// | `method` | `GET` | `GET` |
/// | `expected_statuses` | 200..=299 | 200 only |
/// | `interval` | 10 s | required |
/// | `interval_jitter` | a tenth of the interval | 0 |
/// | `timeout` | 1 s | required |
/// | `unhealthy_threshold` | 3 | required |
/// | `healthy_threshold` | 2 | required (1 for a new host's first check, as here) |
/// | `concurrency` | 8 checks at once | no limit |
///
/// ```
/// use std::time::Duration;
/// use tower_lb::ActiveHealthCheck;
///
/// let check = ActiveHealthCheck::new("/healthz")
///     .interval(Duration::from_secs(5))
///     .timeout(Duration::from_millis(500))
///     .unhealthy_threshold(2)
///     .expected_statuses([200..=204]);
/// # let _ = check;
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct ActiveHealthCheck {
    pub(crate) path: String,
    pub(crate) method: Method,
    pub(crate) expected: Vec<RangeInclusive<u16>>,
    pub(crate) interval: Duration,
    pub(crate) jitter: Option<Duration>,
    pub(crate) timeout: Duration,
    pub(crate) unhealthy_threshold: u32,
    pub(crate) healthy_threshold: u32,
    pub(crate) concurrency: usize,
    /// The service a gRPC health check asks about (`""`: the server as a
    /// whole); `None` for an HTTP check.
    pub(crate) grpc_service: Option<String>,
}

impl ActiveHealthCheck {
    /// Checks `path` (appended to each endpoint's URL, its base path
    /// included) with the default settings.
    pub fn new(path: impl Into<String>) -> Self {
        ActiveHealthCheck {
            path: path.into(),
            method: Method::GET,
            expected: vec![200..=299],
            interval: Duration::from_secs(10),
            jitter: None,
            timeout: Duration::from_secs(1),
            unhealthy_threshold: 3,
            healthy_threshold: 2,
            concurrency: 8,
            grpc_service: None,
        }
    }

    /// A gRPC health check (feature `tonic`): the health-checking
    /// protocol's `grpc.health.v1.Health/Check` for `service` (`""` asks
    /// about the server as a whole), passing when the answer is `SERVING`;
    /// for [`BalancedChannel::health_checks`](crate::BalancedChannel::health_checks).
    /// The other settings are [`ActiveHealthCheck::new`]'s; the path,
    /// method and expected statuses are the protocol's.
    ///
    /// ```
    /// let check = tower_lb::ActiveHealthCheck::grpc("shop.Catalog").unhealthy_threshold(2);
    /// # let _ = check;
    /// ```
    #[cfg(feature = "tonic")]
    pub fn grpc(service: impl Into<String>) -> Self {
        ActiveHealthCheck {
            grpc_service: Some(service.into()),
            method: Method::POST,
            ..ActiveHealthCheck::new("/grpc.health.v1.Health/Check")
        }
    }

    /// Whether this is a gRPC health check.
    pub(crate) fn is_grpc(&self) -> bool {
        self.grpc_service.is_some()
    }

    /// The check's method. Default `GET`.
    pub fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }

    /// The statuses that pass, as ranges (`[200..=200]` for Envoy's
    /// default). Default `[200..=299]`. Anything else fails, as do connect
    /// errors and timeouts.
    pub fn expected_statuses(
        mut self,
        ranges: impl IntoIterator<Item = RangeInclusive<u16>>,
    ) -> Self {
        self.expected = ranges.into_iter().collect();
        self
    }

    /// How often each endpoint is checked. Default 10 s.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// A random wait up to this is added to each check's time, drawn from
    /// the balancer's generator. Default a tenth of the interval.
    pub fn interval_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = Some(jitter);
        self
    }

    /// A check with no answer by then fails. Default 1 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Failed checks in a row that take an endpoint out. Default 3.
    pub fn unhealthy_threshold(mut self, n: u32) -> Self {
        self.unhealthy_threshold = n;
        self
    }

    /// Passed checks in a row that bring an endpoint out for failing
    /// checks back. Default 2. (An endpoint not checked yet needs one; one
    /// ejected by outlier detection needs one after its time.)
    pub fn healthy_threshold(mut self, n: u32) -> Self {
        self.healthy_threshold = n;
        self
    }

    /// Checks in flight at once, at most. Default 8.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// The jitter's upper bound, in milliseconds.
    pub(crate) fn jitter_ms(&self) -> u64 {
        crate::clock::millis(self.jitter.unwrap_or(self.interval / 10))
    }

    /// Whether an answer with `status` passes.
    pub(crate) fn passes(&self, status: StatusCode) -> bool {
        self.expected.iter().any(|r| r.contains(&status.as_u16()))
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        let invalid = |reason: &str| {
            Err(Error::InvalidPolicy {
                reason: format!("active health check: {reason}"),
            })
        };
        if !self.path.starts_with('/') {
            return invalid(&format!(
                "the path must start with '/', not {:?}",
                self.path
            ));
        }
        if self.path.parse::<http::uri::PathAndQuery>().is_err() {
            return invalid(&format!("{:?} is not a valid path", self.path));
        }
        if self.interval.is_zero() || self.timeout.is_zero() {
            return invalid("the interval and the timeout must be above zero");
        }
        if self.unhealthy_threshold == 0 || self.healthy_threshold == 0 {
            return invalid("the thresholds must be at least 1");
        }
        if self.concurrency == 0 {
            return invalid("the concurrency must be at least 1");
        }
        if self.expected.is_empty()
            || self
                .expected
                .iter()
                .any(|r| r.is_empty() || *r.start() < 100 || *r.end() > 999)
        {
            return invalid("expected statuses must be non-empty ranges within 100..=999");
        }
        Ok(())
    }
}

/// One endpoint's active checks, in
/// [`EndpointStats::checks`](crate::EndpointStats::checks). Checks are not
/// requests: they never count in the endpoint's request counters.
///
/// ```
/// let balancer = tower_lb::Balancer::builder().endpoint("http://127.0.0.1:8081").build()?;
/// let checks = balancer.stats().endpoints[0].checks.clone();
/// assert_eq!((checks.sent, checks.passed, checks.failed), (0, 0, 0));
/// assert!(!checks.failing);
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckStats {
    /// Checks sent.
    pub sent: u64,
    /// Checks answered with an expected status.
    pub passed: u64,
    /// Checks that failed: another status, an error, no answer in time.
    pub failed: u64,
    /// Out for failing its checks, until `healthy_threshold` pass in a
    /// row (or not checked yet).
    pub failing: bool,
}

/// The balancer's side of its checks: whether they run, and their
/// thresholds.
#[derive(Debug, Default)]
pub(crate) struct Checking {
    on: AtomicBool,
    /// Which start of the checks is the current one.
    generation: AtomicU64,
    healthy_threshold: AtomicU32,
    unhealthy_threshold: AtomicU32,
    /// Wakes the checker: the set changed.
    pub(crate) wake: Arc<Notify>,
}

/// One endpoint's checks.
#[derive(Debug, Default)]
pub(crate) struct EndpointChecks {
    /// A check has answered since it joined the set (or checks started).
    answered: AtomicBool,
    /// Out until it passes `healthy_threshold` checks in a row.
    failing: AtomicBool,
    /// In the book, held out for its first check: no events for that.
    pub(super) awaiting_first: AtomicBool,
    /// When it began waiting for its first check, in milliseconds.
    since: AtomicU64,
    passes: AtomicU32,
    failures: AtomicU32,
    sent: AtomicU64,
    passed: AtomicU64,
    failed: AtomicU64,
}

impl EndpointChecks {
    /// Whether a check has answered since it joined the set (or checks
    /// started): a release then is a check's, not the checks' stopping.
    #[cfg(feature = "metrics")]
    pub(super) fn answered(&self) -> bool {
        self.answered.load(Ordering::Relaxed)
    }

    /// When it joined the set (or checks started), if no check has
    /// answered since: its first check counts from then.
    pub(crate) fn waiting_since(&self) -> Option<u64> {
        (!self.answered.load(Ordering::Relaxed)).then(|| self.since.load(Ordering::Relaxed))
    }

    pub(crate) fn stats(&self) -> CheckStats {
        CheckStats {
            sent: self.sent.load(Ordering::Relaxed),
            passed: self.passed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            failing: self.failing.load(Ordering::Relaxed)
                || self.awaiting_first.load(Ordering::Relaxed),
        }
    }

    /// Forgets the endpoint's check state (it left the set): back in it,
    /// it waits for a first check again. The counts stay.
    pub(super) fn reset(&self) {
        self.reset_state();
        self.awaiting_first.store(false, Ordering::Relaxed);
    }

    /// Forgets the streaks and the verdict, keeping `awaiting_first` (the
    /// book's readmission reads it).
    fn reset_state(&self) {
        self.answered.store(false, Ordering::Relaxed);
        self.failing.store(false, Ordering::Relaxed);
        self.passes.store(0, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
    }
}

impl HealthShared {
    /// Turns the checks' side of the book on with `check`'s thresholds:
    /// every endpoint not checked yet is out until its first check passes,
    /// and every ejection running now needs a passing check to end.
    /// Returns this start's generation, for [`stop_checks`](Self::stop_checks).
    pub(crate) fn start_checks(&self, check: &ActiveHealthCheck) -> u64 {
        let checking = &self.checking;
        let generation = checking.generation.fetch_add(1, Ordering::SeqCst) + 1;
        checking
            .healthy_threshold
            .store(check.healthy_threshold, Ordering::Relaxed);
        checking
            .unhealthy_threshold
            .store(check.unhealthy_threshold, Ordering::Relaxed);
        checking.on.store(true, Ordering::SeqCst);
        let members = self.members_now();
        let now = self.now_ms();
        for member in &members {
            let until = member.ejected_until.load(Ordering::Relaxed);
            if until != IN_ROTATION && until != RETIRED {
                // Out already: back only once a check passes.
                self.hold(member);
            } else {
                self.await_first_check(member, now);
            }
        }
        checking.wake.notify_one();
        generation
    }

    /// Turns the checks' side of the book off, if `generation` is still the
    /// current start (their task ended with its runtime, not replaced):
    /// nothing is held for a check any more, and an endpoint waiting for
    /// its first check comes in. Without this, a balancer outliving its
    /// checks' runtime would keep endpoints out for checks that never come.
    pub(crate) fn stop_checks(&self, generation: u64) {
        let checking = &self.checking;
        if checking.generation.load(Ordering::SeqCst) != generation
            || !checking.on.swap(false, Ordering::SeqCst)
        {
            return;
        }
        for member in self.members_now() {
            member.checks.reset_state();
            if member.held.load(Ordering::Relaxed) {
                self.release(&member);
            }
        }
    }

    /// The instant `ms` milliseconds after the balancer's clock began.
    pub(crate) fn instant_at(&self, ms: u64) -> tokio::time::Instant {
        self.clock.at_ms(ms)
    }

    /// Whether active checks run.
    pub(super) fn checks_on(&self) -> bool {
        self.checking.on.load(Ordering::Relaxed)
    }

    /// The checker's wake-up: the set changed.
    pub(crate) fn checks_wake(&self) -> Arc<Notify> {
        self.checking.wake.clone()
    }

    /// A draw below `bound` from the balancer's generator (the checks'
    /// jitter).
    pub(crate) fn draw(&self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.rng().below(bound)
        }
    }

    /// With checks on, an endpoint in rotation that no check has answered
    /// yet (new in the set, or back in it) is held out for its first one.
    pub(super) fn await_first_check(&self, endpoint: &Arc<EndpointHealth>, now: u64) {
        if !self.checks_on() {
            return;
        }
        let until = endpoint.ejected_until.load(Ordering::Relaxed);
        if until == IN_ROTATION && !endpoint.checks.answered.load(Ordering::Relaxed) {
            endpoint.checks.since.store(now, Ordering::Relaxed);
            self.take_out_for_checks(endpoint, now, true);
        }
    }

    /// Counts a check sent to `endpoint`.
    pub(crate) fn check_sent(&self, endpoint: &EndpointHealth) {
        endpoint.checks.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Folds in a check's outcome: a pass brings an endpoint out for its
    /// checks back after `healthy_threshold` in a row (one for its first
    /// check) and lets an ejected one come back at its time; a failure
    /// holds an ejected endpoint out, and `unhealthy_threshold` in a row
    /// (or a first check failing) take it out.
    pub(crate) fn check_outcome(&self, endpoint: &Arc<EndpointHealth>, passed: bool) {
        let checks = &endpoint.checks;
        if passed {
            checks.passed.fetch_add(1, Ordering::Relaxed);
        } else {
            checks.failed.fetch_add(1, Ordering::Relaxed);
        }
        if endpoint.ejected_until.load(Ordering::Relaxed) == RETIRED {
            return;
        }
        let first = !checks.answered.swap(true, Ordering::Relaxed);
        if passed {
            checks.failures.store(0, Ordering::Relaxed);
            let passes = checks
                .passes
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            let needed = self.checking.healthy_threshold.load(Ordering::Relaxed);
            if checks.failing.load(Ordering::Relaxed) && passes < needed {
                return;
            }
            checks.failing.store(false, Ordering::Relaxed);
            if endpoint.held.load(Ordering::Relaxed) {
                self.release(endpoint);
            }
        } else {
            checks.passes.store(0, Ordering::Relaxed);
            let failures = checks
                .failures
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            let limit = self.checking.unhealthy_threshold.load(Ordering::Relaxed);
            if (first || failures >= limit) && !checks.failing.swap(true, Ordering::Relaxed) {
                self.take_out_for_checks(endpoint, self.now_ms(), false);
            } else if endpoint.ejected_until.load(Ordering::Relaxed) != IN_ROTATION {
                self.hold(endpoint);
            }
        }
    }
}

/// The detector of an ejection for failing checks, in the book.
pub(super) const CHECKS: Detector = Detector::ActiveCheck;
