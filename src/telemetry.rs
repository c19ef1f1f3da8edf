//! Metrics through the [`metrics`](::metrics) facade (feature `metrics`):
//! OpenTelemetry's HTTP client metrics per endpoint, and the balancer's own
//! under `tower_lb.`; the table of names is docs/metrics.md.
//!
//! **Handles, not macros, on the request path.** Every series is
//! registered once with the recorder in effect where it is made, and the
//! handle kept: the balancer's when it is built, an endpoint's when it
//! joins the set (held by the endpoint's core), a duration series the
//! first time an endpoint sees its combination of method, status and
//! error. A request then does an atomic add or a histogram record on a
//! handle it already holds: no labels built, no lookup in the recorder,
//! no lock. So the recorder must be installed before the balancer is
//! built (as an exporter's `install` does at start-up); a balancer built
//! before it records nothing.
//!
//! **Bounded labels.** An endpoint's series carry its host and port (never
//! the base path of its URL, nor any part of a request's path, query,
//! headers, cookies or session key) and the balancer's name; a duration
//! series adds one of ten method values, the status and the error type,
//! and an endpoint holds at most [`DURATION_SERIES`] of those (a further
//! combination is recorded on one overflow series). The number of series
//! is therefore at most a constant times the number of endpoints that
//! have been in the set.
//!
//! **A removed endpoint's series** stay with the recorder at their last
//! values (its active requests fall to 0 as its last requests end):
//! the facade has no way to unregister. An exporter that forgets idle
//! series drops them (metrics-exporter-prometheus: `idle_timeout`). An
//! endpoint added again at the same address continues the same series.
//!
//! The default handles (of `Counters::default()`, of a custom policy's
//! trial build, of unit tests) are no-ops and register nothing.

use std::fmt;
use std::sync::Arc;

use ::metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Unit};
use arc_swap::ArcSwap;
use http::{Method, StatusCode};

use crate::outcome::Outcome;
use crate::overload::HoldReason;

/// `http.client.request.duration`: seconds per attempt (OpenTelemetry).
pub(crate) const REQUEST_DURATION: &str = "http.client.request.duration";
/// `http.client.active_requests`: requests in flight per endpoint
/// (OpenTelemetry).
pub(crate) const ACTIVE_REQUESTS: &str = "http.client.active_requests";
/// Attempts sent, by `http.request.resend_count`.
pub(crate) const ATTEMPTS: &str = "tower_lb.attempts";
/// Hedges sent.
pub(crate) const HEDGES: &str = "tower_lb.hedges";
/// Requests a hedge answered first.
pub(crate) const HEDGES_WON: &str = "tower_lb.hedges.won";
/// Extra attempts the retry budget refused, by `kind`: retry, hedge.
pub(crate) const BUDGET_REFUSALS: &str = "tower_lb.retry_budget.refusals";
/// Endpoints by `state`: active, ejected, draining.
pub(crate) const ENDPOINTS: &str = "tower_lb.endpoints";
/// Ejections by `detector`.
pub(crate) const EJECTIONS: &str = "tower_lb.ejections";
/// Ejections a detector asked for that the maximum ejection percent
/// refused, by `detector`.
pub(crate) const EJECTIONS_REFUSED: &str = "tower_lb.ejections.refused";
/// Ejections a detector asked for that the enforcement draw skipped, by
/// `detector`.
pub(crate) const EJECTIONS_NOT_ENFORCED: &str = "tower_lb.ejections.not_enforced";
/// Re-admissions by `reason`.
pub(crate) const READMISSIONS: &str = "tower_lb.readmissions";
/// Endpoints held off by an overload signal (a hold beginning), by
/// `reason`.
pub(crate) const HOLDS: &str = "tower_lb.holds";
/// 1 in panic mode, else 0.
pub(crate) const PANIC_MODE: &str = "tower_lb.panic_mode";
/// Endpoint sets applied from discovery.
pub(crate) const DISCOVERY_REFRESHES: &str = "tower_lb.discovery.refreshes";
/// Discovery answers that kept the last good set (errors, empty sets).
pub(crate) const DISCOVERY_ERRORS: &str = "tower_lb.discovery.errors";
/// Endpoints discovery skipped as invalid.
pub(crate) const DISCOVERY_SKIPPED: &str = "tower_lb.discovery.skipped";
/// Sessions in the learned-affinity table.
pub(crate) const LEARNED_SESSIONS: &str = "tower_lb.affinity.learned_sessions";

/// The label naming the balancer, when it was given a name.
pub(crate) const BALANCER_LABEL: &str = "tower_lb.balancer";

/// Duration series one endpoint holds at most; past them, attempts are
/// recorded on one overflow series (method and error type `_OTHER`, no
/// status).
pub(crate) const DURATION_SERIES: usize = 64;

/// `http.request.method` values: the methods of RFC 9110 and PATCH, and
/// `_OTHER` for any other, as OpenTelemetry asks.
const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "_OTHER",
];
const OTHER_METHOD: u8 = 9;

/// `error.type` values for attempts with no error status (an attempt
/// answered with a status of 400 or more takes the status as its error
/// type, as OpenTelemetry asks).
const ERROR_TYPES: [&str; 9] = [
    "",
    "connect_error",
    "timeout",
    "closed",
    "client_error",
    "_OTHER",
    "cancelled",
    "server_error",
    "overloaded",
];
const NO_ERROR: u8 = 0;
const OTHER_ERROR: u8 = 5;
const CANCELLED: u8 = 6;
/// The error type is the status.
const STATUS_ERROR: u8 = 9;

/// Why an endpoint came back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadmissionReason {
    /// Its ejection time was up (noticed by the sweeper task, a pick, or
    /// a set change), or its active checks stopped holding it (their
    /// runtime ended).
    TimeUp = 0,
    /// The set shrank below what the current ejections may hold, and its
    /// ejection was among those ending soonest.
    SetShrank = 1,
    /// Held out for its active checks, a passing check let it back (its
    /// ejection time, if any, was up).
    CheckPassed = 2,
}

const READMISSION_REASONS: [&str; 3] = ["time_up", "set_shrank", "check_passed"];
/// The `reason` values of [`HOLDS`], in [`HoldReason`] order.
const HOLD_REASONS: [&str; 4] = [
    "too_many_requests",
    "service_unavailable",
    "resource_exhausted",
    "grpc_unavailable",
];

/// The `kind` label of the budget's refusals, by `Extra`'s order.
const EXTRA_KINDS: [&str; 2] = ["retry", "hedge"];

/// An attempt's `http.request.method`, one of ten values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct MethodClass(u8);

impl MethodClass {
    /// The class of `method`: itself when standard, else `_OTHER`.
    pub(crate) fn of(method: &Method) -> Self {
        let index = match method.as_str() {
            "GET" => 0,
            "POST" => 1,
            "PUT" => 2,
            "DELETE" => 3,
            "PATCH" => 4,
            "HEAD" => 5,
            "OPTIONS" => 6,
            "CONNECT" => 7,
            "TRACE" => 8,
            _ => OTHER_METHOD,
        };
        MethodClass(index)
    }
}

/// One attempt's duration series: method, status (0 when none) and error
/// type, packed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SeriesKey(u32);

impl SeriesKey {
    /// The overflow series.
    const OVERFLOW: SeriesKey = SeriesKey(u32::MAX);

    fn new(method: MethodClass, status: Option<StatusCode>, error: u8) -> Self {
        let status = status.map_or(0, |s| u32::from(s.as_u16()));
        SeriesKey(u32::from(method.0) << 24 | status << 8 | u32::from(error))
    }

    /// The key of an attempt that ended with `outcome` (`None`: cancelled),
    /// answered with `status` if it was.
    fn of(method: MethodClass, outcome: Option<Outcome>, status: Option<StatusCode>) -> Self {
        let error = match (outcome, status) {
            (None, _) => CANCELLED,
            (_, Some(status)) if status.as_u16() >= 400 => STATUS_ERROR,
            (Some(Outcome::Success), _) => NO_ERROR,
            (Some(Outcome::ConnectError), _) => 1,
            (Some(Outcome::Timeout), _) => 2,
            (Some(Outcome::Closed), _) => 3,
            (Some(Outcome::ClientError), _) => 4,
            (Some(Outcome::OtherError), _) => OTHER_ERROR,
            (Some(Outcome::ServerError), _) => 7,
            (Some(Outcome::Overloaded), _) => 8,
        };
        SeriesKey::new(method, status, error)
    }

    /// The labels this key adds to an endpoint's.
    fn labels(self) -> Vec<Label> {
        if self == SeriesKey::OVERFLOW {
            return vec![
                Label::from_static_parts("http.request.method", "_OTHER"),
                Label::from_static_parts("error.type", "_OTHER"),
            ];
        }
        let method = METHODS[usize::from((self.0 >> 24) as u8).min(METHODS.len() - 1)];
        let status = (self.0 >> 8) & 0xffff;
        let error = (self.0 & 0xff) as u8;
        let mut labels = vec![Label::from_static_parts("http.request.method", method)];
        if status != 0 {
            labels.push(Label::new("http.response.status_code", status.to_string()));
        }
        match error {
            NO_ERROR => {}
            STATUS_ERROR => labels.push(Label::new("error.type", status.to_string())),
            _ => labels.push(Label::from_static_parts(
                "error.type",
                ERROR_TYPES
                    .get(usize::from(error))
                    .copied()
                    .unwrap_or("_OTHER"),
            )),
        }
        labels
    }
}

fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()))
}

fn counter(name: &'static str, labels: Vec<Label>) -> Counter {
    let key = Key::from_parts(name, labels);
    ::metrics::with_recorder(|recorder| recorder.register_counter(&key, &metadata()))
}

fn gauge(name: &'static str, labels: Vec<Label>) -> Gauge {
    let key = Key::from_parts(name, labels);
    ::metrics::with_recorder(|recorder| recorder.register_gauge(&key, &metadata()))
}

fn histogram(name: &'static str, labels: Vec<Label>) -> Histogram {
    let key = Key::from_parts(name, labels);
    ::metrics::with_recorder(|recorder| recorder.register_histogram(&key, &metadata()))
}

/// Describes every metric to the recorder (units, help texts); repeated
/// descriptions are harmless.
fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Duration of one attempt of an HTTP request to one endpoint."
    );
    describe_gauge!(ACTIVE_REQUESTS, "HTTP requests in flight to one endpoint.");
    describe_counter!(
        ATTEMPTS,
        "Attempts sent, by http.request.resend_count (0: first attempts; 1 and up: retries)."
    );
    describe_counter!(HEDGES, "Hedges sent (also counted in tower_lb.attempts).");
    describe_counter!(HEDGES_WON, "Requests whose answer came from a hedge.");
    describe_counter!(
        BUDGET_REFUSALS,
        "Extra attempts the retry budget refused, by kind: retry, hedge."
    );
    describe_gauge!(
        ENDPOINTS,
        "Endpoints in the set by state: active (taking requests), ejected, draining (weight 0)."
    );
    describe_counter!(EJECTIONS, "Endpoints ejected, by the detector that fired.");
    describe_counter!(
        EJECTIONS_REFUSED,
        "Ejections refused because max_ejection_percent was reached, by detector."
    );
    describe_counter!(
        EJECTIONS_NOT_ENFORCED,
        "Ejections a detector asked for that its enforcement percentage skipped, by detector."
    );
    describe_counter!(READMISSIONS, "Ejected endpoints taken back, by reason.");
    describe_counter!(
        HOLDS,
        "Endpoints held off by an overload signal (429, 503 with Retry-After, gRPC pushback), by reason."
    );
    describe_gauge!(
        PANIC_MODE,
        "1 while too few endpoints are healthy and ejections are ignored, else 0."
    );
    describe_counter!(DISCOVERY_REFRESHES, "Endpoint sets applied from discovery.");
    describe_counter!(
        DISCOVERY_ERRORS,
        "Discovery answers that kept the last good set: source errors, empty sets, panics."
    );
    describe_counter!(DISCOVERY_SKIPPED, "Endpoints discovery skipped as invalid.");
    describe_gauge!(
        LEARNED_SESSIONS,
        "Session cookies in the learned-affinity table."
    );
}

/// A balancer's own series and what its endpoints' series share.
pub(crate) struct BalancerMetrics {
    /// The balancer's name, when given: on every series.
    name: Option<Label>,
    /// Whether the handles are registered (else no-ops, and endpoints get
    /// no-ops too).
    registered: bool,
    /// Attempts by resend count: index 0 first attempts, 1 and up retries.
    attempts: Box<[Counter]>,
    hedges: Counter,
    hedges_won: Counter,
    /// By kind, in [`EXTRA_KINDS`] order.
    budget_refusals: [Counter; 2],
    endpoints_active: Gauge,
    endpoints_ejected: Gauge,
    endpoints_draining: Gauge,
    panic_mode: Gauge,
    /// By detector, in the order of the names given to
    /// [`BalancerMetrics::register`].
    ejections: Box<[Counter]>,
    ejections_refused: Box<[Counter]>,
    ejections_not_enforced: Box<[Counter]>,
    readmissions: [Counter; 3],
    /// By reason, in [`HOLD_REASONS`] order.
    holds: [Counter; 4],
    discovery_refreshes: Counter,
    discovery_errors: Counter,
    discovery_skipped: Counter,
    learned_sessions: Gauge,
}

impl fmt::Debug for BalancerMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalancerMetrics")
            .field("name", &self.name.as_ref().map(Label::value))
            .field("registered", &self.registered)
            .finish_non_exhaustive()
    }
}

impl Default for BalancerMetrics {
    /// No-op handles: nothing registered, nothing recorded.
    fn default() -> Self {
        BalancerMetrics {
            name: None,
            registered: false,
            attempts: Box::new([Counter::noop()]),
            hedges: Counter::noop(),
            hedges_won: Counter::noop(),
            budget_refusals: std::array::from_fn(|_| Counter::noop()),
            endpoints_active: Gauge::noop(),
            endpoints_ejected: Gauge::noop(),
            endpoints_draining: Gauge::noop(),
            panic_mode: Gauge::noop(),
            ejections: Box::new([]),
            ejections_refused: Box::new([]),
            ejections_not_enforced: Box::new([]),
            readmissions: std::array::from_fn(|_| Counter::noop()),
            holds: std::array::from_fn(|_| Counter::noop()),
            discovery_refreshes: Counter::noop(),
            discovery_errors: Counter::noop(),
            discovery_skipped: Counter::noop(),
            learned_sessions: Gauge::noop(),
        }
    }
}

impl BalancerMetrics {
    /// Registers the balancer's series with the recorder in effect now,
    /// named `name` if given: attempts up to `max_resends` after the first,
    /// ejections by each of `detectors` (their names, in the order their
    /// indices will be given).
    pub(crate) fn register(
        name: Option<&str>,
        max_resends: u32,
        detectors: &[&'static str],
    ) -> Self {
        describe();
        let name = name.map(|name| Label::new(BALANCER_LABEL, name.to_owned()));
        let labels = |extra: &[(&'static str, &'static str)]| -> Vec<Label> {
            name.iter()
                .cloned()
                .chain(
                    extra
                        .iter()
                        .map(|&(key, value)| Label::from_static_parts(key, value)),
                )
                .collect()
        };
        let attempts = (0..=max_resends)
            .map(|resend| {
                let mut labels = labels(&[]);
                labels.push(Label::new("http.request.resend_count", resend.to_string()));
                counter(ATTEMPTS, labels)
            })
            .collect();
        let state = |state| gauge(ENDPOINTS, labels(&[("state", state)]));
        let by_detector = |name| {
            detectors
                .iter()
                .map(|&detector| counter(name, labels(&[("detector", detector)])))
                .collect()
        };
        BalancerMetrics {
            registered: true,
            attempts,
            hedges: counter(HEDGES, labels(&[])),
            hedges_won: counter(HEDGES_WON, labels(&[])),
            budget_refusals: EXTRA_KINDS
                .map(|kind| counter(BUDGET_REFUSALS, labels(&[("kind", kind)]))),
            endpoints_active: state("active"),
            endpoints_ejected: state("ejected"),
            endpoints_draining: state("draining"),
            panic_mode: gauge(PANIC_MODE, labels(&[])),
            ejections: by_detector(EJECTIONS),
            ejections_refused: by_detector(EJECTIONS_REFUSED),
            ejections_not_enforced: by_detector(EJECTIONS_NOT_ENFORCED),
            readmissions: READMISSION_REASONS
                .map(|reason| counter(READMISSIONS, labels(&[("reason", reason)]))),
            holds: HOLD_REASONS.map(|reason| counter(HOLDS, labels(&[("reason", reason)]))),
            discovery_refreshes: counter(DISCOVERY_REFRESHES, labels(&[])),
            discovery_errors: counter(DISCOVERY_ERRORS, labels(&[])),
            discovery_skipped: counter(DISCOVERY_SKIPPED, labels(&[])),
            learned_sessions: gauge(LEARNED_SESSIONS, labels(&[])),
            name,
        }
    }

    /// The series of an endpoint at `host` and `port` joining the set:
    /// registered now, held by the endpoint.
    pub(crate) fn endpoint(self: &Arc<Self>, host: &str, port: u16) -> EndpointMetrics {
        if !self.registered {
            return EndpointMetrics {
                active: Gauge::noop(),
                durations: None,
                balancer: self.clone(),
            };
        }
        let mut labels = vec![
            Label::new("server.address", host.to_owned()),
            Label::new("server.port", port.to_string()),
        ];
        labels.extend(self.name.iter().cloned());
        EndpointMetrics {
            active: gauge(ACTIVE_REQUESTS, labels.clone()),
            durations: Some(DurationSeries {
                labels: labels.into(),
                seen: ArcSwap::from_pointee(Vec::new()),
            }),
            balancer: self.clone(),
        }
    }

    /// Counts an attempt sent after `resend_count` earlier ones of the
    /// same request.
    pub(crate) fn attempt(&self, resend_count: usize) {
        if let Some(counter) = self.attempts.get(resend_count) {
            counter.increment(1);
        }
    }

    /// Counts a retry the budget refused.
    pub(crate) fn retry_refused(&self) {
        self.budget_refusals[0].increment(1);
    }

    /// Counts a hedge the budget refused.
    pub(crate) fn hedge_refused(&self) {
        self.budget_refusals[1].increment(1);
    }

    /// Counts a hedge sent (its attempt is counted by [`Self::attempt`]).
    pub(crate) fn hedged(&self) {
        self.hedges.increment(1);
    }

    /// Counts a request a hedge answered first.
    pub(crate) fn hedge_won(&self) {
        self.hedges_won.increment(1);
    }

    /// Sets the endpoint gauges from the ejection book: `active` endpoints
    /// take requests, `ejected` of them are out; whether in panic mode.
    pub(crate) fn health(&self, active: usize, ejected: usize, panic: bool) {
        self.endpoints_active
            .set(active.saturating_sub(ejected) as f64);
        self.endpoints_ejected.set(ejected as f64);
        self.panic_mode.set(if panic { 1.0 } else { 0.0 });
    }

    /// Sets the number of drained endpoints (weight 0) in the set.
    pub(crate) fn draining(&self, draining: usize) {
        self.endpoints_draining.set(draining as f64);
    }

    /// Counts an ejection by the detector at `detector` (its index in the
    /// names given at registration).
    pub(crate) fn ejected(&self, detector: usize) {
        if let Some(counter) = self.ejections.get(detector) {
            counter.increment(1);
        }
    }

    /// Counts an ejection the maximum ejection percent refused.
    pub(crate) fn ejection_refused(&self, detector: usize) {
        if let Some(counter) = self.ejections_refused.get(detector) {
            counter.increment(1);
        }
    }

    /// Counts an ejection the enforcement draw skipped.
    pub(crate) fn ejection_not_enforced(&self, detector: usize) {
        if let Some(counter) = self.ejections_not_enforced.get(detector) {
            counter.increment(1);
        }
    }

    /// Counts a re-admission.
    pub(crate) fn readmitted(&self, reason: ReadmissionReason) {
        self.readmissions[reason as usize].increment(1);
    }

    /// Counts an endpoint held off by an overload signal (a hold that
    /// begins; one that extends a running hold is not counted).
    pub(crate) fn held_off(&self, reason: HoldReason) {
        let index = match reason {
            HoldReason::TooManyRequests => 0,
            HoldReason::ServiceUnavailable => 1,
            HoldReason::ResourceExhausted => 2,
            HoldReason::GrpcUnavailable => 3,
        };
        if let Some(counter) = self.holds.get(index) {
            counter.increment(1);
        }
    }

    /// Adds what discovery did since the last call: sets applied, answers
    /// that kept the last set, endpoints skipped.
    pub(crate) fn discovery(&self, refreshes: u64, errors: u64, skipped: u64) {
        self.discovery_refreshes.increment(refreshes);
        self.discovery_errors.increment(errors);
        self.discovery_skipped.increment(skipped);
    }

    /// Moves the learned-affinity table's size by `change` sessions.
    pub(crate) fn learned_sessions(&self, change: isize) {
        match change {
            0 => {}
            up if up > 0 => self.learned_sessions.increment(up as f64),
            down => self.learned_sessions.decrement(down.unsigned_abs() as f64),
        }
    }
}

/// One endpoint's series, held by the endpoint from the moment it joins
/// the set.
pub(crate) struct EndpointMetrics {
    active: Gauge,
    /// `None` when no-op.
    durations: Option<DurationSeries>,
    balancer: Arc<BalancerMetrics>,
}

impl fmt::Debug for EndpointMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointMetrics")
            .field("registered", &self.durations.is_some())
            .finish_non_exhaustive()
    }
}

/// An endpoint's duration series, one per combination of method, status
/// and error type it has seen: read without a lock; a new combination
/// registers its series and publishes a longer list (copy on write).
struct DurationSeries {
    /// The endpoint's labels: address, port, the balancer's name.
    labels: Box<[Label]>,
    seen: ArcSwap<Vec<(SeriesKey, Histogram)>>,
}

impl EndpointMetrics {
    /// The balancer's series.
    pub(crate) fn balancer(&self) -> &BalancerMetrics {
        &self.balancer
    }

    /// Whether attempts are timed for these series.
    pub(crate) fn is_recording(&self) -> bool {
        self.durations.is_some()
    }

    /// A request to the endpoint started.
    pub(crate) fn started(&self) {
        self.active.increment(1.0);
    }

    /// A request to the endpoint ended (with an outcome, or dropped).
    pub(crate) fn ended(&self) {
        self.active.decrement(1.0);
    }

    /// Records an attempt of `method` that took `seconds` and ended with
    /// `outcome` (`None`: dropped before it ended), answered with `status`
    /// if it was.
    pub(crate) fn record(
        &self,
        method: MethodClass,
        outcome: Option<Outcome>,
        status: Option<StatusCode>,
        seconds: f64,
    ) {
        let Some(durations) = &self.durations else {
            return;
        };
        let key = SeriesKey::of(method, outcome, status);
        let seen = durations.seen.load();
        if let Some((_, histogram)) = seen.iter().find(|(k, _)| *k == key) {
            histogram.record(seconds);
            return;
        }
        drop(seen);
        durations.add(key).record(seconds);
    }
}

impl DurationSeries {
    /// The series of `key`, registered and published on first use; past
    /// [`DURATION_SERIES`], the overflow series.
    fn add(&self, key: SeriesKey) -> Histogram {
        let current = self.seen.load();
        let key = if current.len() >= DURATION_SERIES {
            SeriesKey::OVERFLOW
        } else {
            key
        };
        if let Some((_, histogram)) = current.iter().find(|(k, _)| *k == key) {
            return histogram.clone();
        }
        drop(current);
        let mut labels = self.labels.to_vec();
        labels.extend(key.labels());
        // Registering the same key twice (two threads racing here) gives
        // the same series: the recorder keys them by name and labels.
        let histogram = histogram(REQUEST_DURATION, labels);
        self.seen.rcu(|current| {
            if current.iter().any(|(k, _)| *k == key) {
                return current.clone();
            }
            let mut next = Vec::with_capacity(current.len() + 1);
            next.extend(current.iter().cloned());
            next.push((key, histogram.clone()));
            Arc::new(next)
        });
        histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label_map(key: SeriesKey) -> Vec<(String, String)> {
        key.labels()
            .iter()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect()
    }

    #[test]
    fn an_error_status_is_the_error_type_and_a_failure_without_one_names_its_kind() {
        let get = MethodClass::of(&Method::GET);
        let key = SeriesKey::of(
            get,
            Some(Outcome::ServerError),
            StatusCode::from_u16(503).ok(),
        );
        assert_eq!(
            label_map(key),
            [
                ("http.request.method".into(), "GET".into()),
                ("http.response.status_code".into(), "503".into()),
                ("error.type".into(), "503".into()),
            ]
        );
        let key = SeriesKey::of(get, Some(Outcome::Success), Some(StatusCode::OK));
        assert_eq!(label_map(key).len(), 2, "no error type on a 200");
        let key = SeriesKey::of(get, Some(Outcome::ConnectError), None);
        assert_eq!(
            label_map(key)[1],
            ("error.type".into(), "connect_error".into())
        );
        let key = SeriesKey::of(get, None, None);
        assert_eq!(label_map(key)[1], ("error.type".into(), "cancelled".into()));
    }

    /// However many combinations of method and status an endpoint
    /// returns, it holds at most `DURATION_SERIES` duration series, and
    /// one overflow series takes the rest: the label set stays bounded.
    #[test]
    fn an_endpoint_holds_at_most_64_duration_series_then_one_overflow_series() {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let endpoint = ::metrics::with_local_recorder(&recorder, || {
            let balancer = Arc::new(BalancerMetrics::register(Some("b"), 0, &[]));
            let endpoint = balancer.endpoint("10.0.0.1", 80);
            for method in [Method::GET, Method::POST] {
                for status in 200..300 {
                    let status = StatusCode::from_u16(status).ok();
                    endpoint.record(
                        MethodClass::of(&method),
                        Some(Outcome::Success),
                        status,
                        0.001,
                    );
                }
            }
            endpoint
        });
        let durations: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| key.key().name() == REQUEST_DURATION)
            .collect();
        assert_eq!(durations.len(), DURATION_SERIES + 1);
        let recorded =
            |(_, _, _, value): &(_, _, _, metrics_util::debugging::DebugValue)| match value {
                metrics_util::debugging::DebugValue::Histogram(values) => values.len(),
                _ => 0,
            };
        assert_eq!(durations.iter().map(recorded).sum::<usize>(), 200);
        let overflow = durations
            .iter()
            .find(|(key, ..)| key.key().labels().any(|l| l.value() == "_OTHER"))
            .map(recorded);
        assert_eq!(overflow, Some(200 - DURATION_SERIES));
        drop(endpoint);
    }

    #[test]
    fn an_unknown_method_is_other() {
        let odd = Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(MethodClass::of(&odd), MethodClass(OTHER_METHOD));
        let key = SeriesKey::of(MethodClass::of(&odd), Some(Outcome::Success), None);
        assert_eq!(
            label_map(key)[0],
            ("http.request.method".into(), "_OTHER".into())
        );
    }
}
