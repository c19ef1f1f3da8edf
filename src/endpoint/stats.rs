//! Read-only copies of the balancer's counters, for tests, dashboards and
//! the demo.

use std::time::Duration;

use super::{EndpointUrl, Labels};
use crate::health::{CheckStats, Detector, EjectionStats};

/// The state of every endpoint in the set, in the order they were added.
///
/// ```
/// let balancer = tower_lb::Balancer::builder()
///     .endpoint("http://127.0.0.1:8081")
///     .build()?;
/// let stats = balancer.stats();
/// assert_eq!(stats.endpoints[0].url, "http://127.0.0.1:8081");
/// assert_eq!(stats.in_flight(), 0);
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// One entry per endpoint, drained ones included.
    pub endpoints: Vec<EndpointStats>,
    /// Too few endpoints are healthy, so ejections are being ignored and
    /// requests spread over all active endpoints.
    pub panic_mode: bool,
    /// What discovery did, once [`Balancer::discover`](crate::Balancer::discover)
    /// was called; `None` before.
    pub discovery: Option<DiscoveryStats>,
    /// Health events not handed to the
    /// [`on_event`](crate::OutlierDetection::on_event) callback because its
    /// queue was full (the callback was slower than events came).
    pub health_events_dropped: u64,
    /// Ejections: how many now, how many each detector made, how many the
    /// maximum share refused.
    pub ejections: EjectionStats,
    /// Extra attempts (retries and hedges) the budget granted and refused.
    pub extra: ExtraAttempts,
}

/// Extra attempts of the balancer's requests, all drawn from one budget
/// (see [`Retries::budget`](crate::Retries::budget)): retries after a
/// failure, and hedges beside a slow attempt (see
/// [`Hedging`](crate::Hedging)). A refused one was not sent.
///
/// ```
/// let balancer = tower_lb::Balancer::builder()
///     .endpoint("http://127.0.0.1:8081")
///     .build()?;
/// let extra = balancer.stats().extra;
/// assert_eq!(extra.retries + extra.hedges, 0);
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExtraAttempts {
    /// Retries sent.
    pub retries: u64,
    /// Hedges sent.
    pub hedges: u64,
    /// Retries the budget refused.
    pub retries_refused: u64,
    /// Hedges the budget refused (the attempt waiting went on alone).
    pub hedges_refused: u64,
    /// Requests whose answer came from a hedge, not the first attempt.
    pub hedges_won: u64,
}

impl Stats {
    /// A copy of the entry of the endpoint at `url`, spelled any way
    /// [`Balancer::add`](crate::Balancer::add) accepts (`HTTP://Host:80/`
    /// finds `http://host:80`); `None` for an unknown or invalid URL.
    ///
    /// The entry is a copy, not a borrow, so it can be taken straight from
    /// a temporary: `balancer.stats().endpoint(&url)`.
    ///
    /// ```
    /// let balancer = tower_lb::Balancer::builder()
    ///     .endpoint("http://LocalHost:8081/api/")
    ///     .build()?;
    /// let url = String::from("http://localhost:8081/api");
    /// // One line, from the temporary `Stats`; `&url`, `url` or a `&str`.
    /// let entry = balancer.stats().endpoint(&url).ok_or("listed")?;
    /// assert_eq!(entry.requests, 0);
    /// assert!(balancer.stats().endpoint(url).is_some());
    /// assert!(balancer.stats().endpoint("not a url").is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn endpoint(&self, url: impl AsRef<str>) -> Option<EndpointStats> {
        let url = url.as_ref();
        let exact = self.endpoints.iter().find(|e| e.url == url);
        exact
            .or_else(|| {
                let canonical = EndpointUrl::parse(url).ok()?;
                self.endpoints.iter().find(|e| e.url == canonical.as_str())
            })
            .cloned()
    }

    /// Requests in flight over all endpoints.
    pub fn in_flight(&self) -> u64 {
        self.endpoints.iter().map(|e| e.in_flight).sum()
    }

    /// Requests started over all endpoints.
    pub fn requests(&self) -> u64 {
        self.endpoints.iter().map(|e| e.requests).sum()
    }
}

/// Counters of one endpoint since it joined the set.
///
/// Every started request is counted exactly once more when it ends, so once
/// traffic stops `requests == successes + failures.total() + cancelled +
/// client_errors + overloaded` and `in_flight == 0`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats {
    /// Canonical URL, `scheme://host:port/base`.
    pub url: String,
    /// Current weight; 0 means drained.
    pub weight: u32,
    /// The endpoint's labels.
    pub labels: Labels,
    /// Requests sent and not yet answered.
    pub in_flight: u64,
    /// Requests sent.
    pub requests: u64,
    /// Answers with a status below 500.
    pub successes: u64,
    /// Failed requests, by kind.
    pub failures: FailureCounts,
    /// Requests whose future was dropped before an answer came.
    pub cancelled: u64,
    /// Requests the client failed itself (a request it could not build,
    /// the caller's body stream failing): charged to no endpoint, so not
    /// failures, and left out of health and the response-time estimate.
    pub client_errors: u64,
    /// Answers that signalled overload (a 429, a 503 with `Retry-After`,
    /// gRPC RESOURCE_EXHAUSTED or UNAVAILABLE with pushback; see
    /// [`Overload`](crate::Overload)): neither successes nor failures, and
    /// left out of health and the response-time estimate.
    pub overloaded: u64,
    /// When the endpoint's current hold ends (on tokio's clock, the
    /// balancer's, as a `std` instant): until then it gets no new requests
    /// unless every endpoint is held. `None` when it is not held off.
    pub held_off_until: Option<std::time::Instant>,
    /// The endpoint's response-time estimate, the one the
    /// least-response-time policy reads: a moving average of the time to
    /// the response head that rises at once with a slower answer and decays
    /// with time; a failed request counts at least the failure penalty.
    /// Under a policy that does not read it (all but least time, and a
    /// hashing policy whose fallback is not least time), one request in 16
    /// per endpoint and core is timed, the first included. `None` before the first
    /// outcome.
    pub latency_ewma: Option<Duration>,
    /// Ejected by outlier detection: no new requests until its time is up.
    pub ejected: bool,
    /// The ejection multiplier: up by one at each ejection (while `base ×
    /// multiplier` is below the maximum), down by one for every interval
    /// the endpoint stays in rotation.
    pub times_ejected: u32,
    /// The detector behind the current ejection; `None` when not ejected.
    pub ejected_by: Option<Detector>,
    /// Its active health checks (all zero unless
    /// [`Balancer::health_checks`](crate::Balancer::health_checks) runs);
    /// never counted as requests.
    pub checks: CheckStats,
}

/// What the discovery task did: sets applied, endpoints skipped as
/// invalid, and the last failure (a source error, an empty set, a set with
/// no valid endpoint, a panic), after which the last good set kept serving.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiscoveryStats {
    /// Sets applied.
    pub refreshes: u64,
    /// When the last set was applied.
    pub last_refresh: Option<std::time::SystemTime>,
    /// Endpoints in the last set applied.
    pub endpoints: usize,
    /// Endpoints a source listed that were skipped as invalid (a bad URL or
    /// weight, a duplicate address): the others were applied. A source of
    /// whole sets (DNS, your own) counts each listing skipped in each set
    /// it hands over, so a bad record that stays counts at every look-up;
    /// etcd counts a bad key once, when it becomes bad (again when it is
    /// rewritten still bad).
    pub skipped: u64,
    /// Failures: source errors, empty sets, sets with no valid endpoint, a
    /// panic.
    pub errors: u64,
    /// The last failure, in words.
    pub last_error: Option<String>,
    /// When the last failure happened.
    pub last_error_at: Option<std::time::SystemTime>,
    /// The source ended, or panicked and was stopped: the set no longer
    /// follows it.
    pub ended: bool,
}

/// Failed requests of one endpoint, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailureCounts {
    /// Answers with a 5xx status.
    pub server_error: u64,
    /// Requests that never reached a server (refused, unreachable).
    pub connect: u64,
    /// Requests that timed out.
    pub timeout: u64,
    /// Connections closed or reset after the request may have been written
    /// and before a response came.
    pub closed: u64,
    /// Other errors of the wrapped service.
    pub other: u64,
}

impl FailureCounts {
    /// All failures together.
    pub fn total(&self) -> u64 {
        self.server_error + self.connect + self.timeout + self.closed + self.other
    }
}
