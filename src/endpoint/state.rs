//! Live per-endpoint state: request counters, the in-flight count, the one
//! response-time estimate and health, all atomics so that recording never
//! takes a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::rtt::{RttEstimate, RttModel};
use super::stats::{EndpointStats, FailureCounts};
use super::{Counters, EndpointUrl, Labels};
use crate::clock::Clock;
use crate::health::{EndpointHealth, HealthShared};
use crate::outcome::Outcome;
use crate::refresh::ConnectFailures;

/// One endpoint's live state. Shared (`Arc`) by every snapshot that lists the
/// endpoint and by the requests in flight to it, so counters survive weight
/// changes and a removed endpoint's last requests still record somewhere.
#[derive(Debug)]
pub(crate) struct EndpointState {
    pub(crate) url: EndpointUrl,
    /// Requests in flight over the whole balancer, kept with this
    /// endpoint's when the policy reads it.
    balancer_in_flight: Option<Arc<AtomicU64>>,
    rtt_model: Arc<RttModel>,
    /// Response-time estimate for the least-response-time policy.
    rtt: RttEstimate,
    health: Arc<EndpointHealth>,
    health_shared: Arc<HealthShared>,
    connect_failures: Arc<ConnectFailures>,
    clock: Clock,
    /// Requests in flight (low 32 bits) and a wrapping count of requests
    /// started (high 32 bits), in one word: starting a request is one
    /// atomic add that also tells which turn it took (whether it is timed).
    in_flight_and_turns: AtomicU64,
    succeeded: AtomicU64,
    server_errors: AtomicU64,
    connect_errors: AtomicU64,
    timeouts: AtomicU64,
    closed: AtomicU64,
    other_errors: AtomicU64,
    cancelled: AtomicU64,
    client_errors: AtomicU64,
}

/// One request more in flight and one more turn taken, in
/// `in_flight_and_turns`.
const START: u64 = (1 << 32) | 1;

/// The in-flight half of `in_flight_and_turns`.
fn in_flight_of(word: u64) -> u64 {
    word & u64::from(u32::MAX)
}

impl EndpointState {
    pub(crate) fn new(url: EndpointUrl, counters: &Counters) -> Self {
        let health = Arc::new(EndpointHealth::new(url.shared_name()));
        EndpointState {
            url,
            balancer_in_flight: counters.in_flight.clone(),
            rtt: RttEstimate::new(&counters.rtt),
            rtt_model: counters.rtt.clone(),
            health,
            health_shared: counters.health.clone(),
            connect_failures: counters.connect_failures.clone(),
            clock: counters.clock,
            in_flight_and_turns: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            other_errors: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            client_errors: AtomicU64::new(0),
        }
    }

    /// Requests sent to this endpoint: in flight or ended.
    pub(crate) fn requests_started(&self) -> u64 {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        self.in_flight()
            + [
                &self.succeeded,
                &self.server_errors,
                &self.connect_errors,
                &self.timeouts,
                &self.closed,
                &self.other_errors,
                &self.cancelled,
                &self.client_errors,
            ]
            .into_iter()
            .map(load)
            .sum::<u64>()
    }

    /// Requests sent to this endpoint and not finished yet.
    pub(crate) fn in_flight(&self) -> u64 {
        in_flight_of(self.in_flight_and_turns.load(Ordering::Relaxed))
    }

    /// Whether the endpoint is ejected at `now` (milliseconds of the
    /// balancer's clock). A pure read.
    pub(crate) fn is_ejected(&self, now: u64) -> bool {
        self.health.is_ejected(now)
    }

    /// Takes the endpoint out of health accounting when it leaves the
    /// active set (removed or drained): it gives back any ejection, and
    /// answers still on their way change nothing shared.
    pub(crate) fn retire(&self) {
        self.health_shared.retire(&self.health);
    }

    /// Brings a drained endpoint back into health accounting, with clean
    /// counts; nothing happens to one that is already in it.
    pub(crate) fn reinstate(&self) {
        self.health_shared.reinstate(&self.health);
    }

    /// The settings of the response-time estimate.
    pub(crate) fn rtt_model(&self) -> &RttModel {
        &self.rtt_model
    }

    /// The response-time estimate at stamp `now` (see
    /// [`RttModel::stamp_now`]), in nanoseconds.
    pub(crate) fn rtt_nanos_at(&self, now: u32) -> f64 {
        self.rtt.nanos_at(&self.rtt_model, now)
    }

    /// Folds one answer into the response-time estimate only.
    #[cfg(test)]
    pub(crate) fn record_rtt(&self, latency: Duration, failed: bool, now: Instant) {
        self.rtt.record(&self.rtt_model, latency, failed, now);
    }

    /// Records how a request ended; `timing` is its latency and the time
    /// it ended, when it was timed.
    fn record(
        &self,
        outcome: Outcome,
        status: Option<http::StatusCode>,
        timing: Option<(Duration, Instant)>,
        sent_in: u32,
    ) {
        let counter = match outcome {
            Outcome::Success => &self.succeeded,
            Outcome::ServerError => &self.server_errors,
            Outcome::ConnectError => &self.connect_errors,
            Outcome::Timeout => &self.timeouts,
            Outcome::Closed => &self.closed,
            Outcome::OtherError => &self.other_errors,
            Outcome::ClientError => &self.client_errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if outcome == Outcome::ClientError {
            // The client's own failure says nothing of the endpoint.
            return;
        }
        if outcome == Outcome::ConnectError {
            self.connect_failures.record();
        }
        if let Some((latency, now)) = timing {
            let failed = outcome != Outcome::Success;
            self.rtt.record(&self.rtt_model, latency, failed, now);
        }
        self.health
            .record(outcome, status, sent_in, &self.health_shared);
    }

    /// A consistent-enough copy of the counters for [`crate::Stats`].
    pub(crate) fn stats(&self, weight: u32, labels: &Labels) -> EndpointStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (ejected, times_ejected) = self.health.status(self.clock.now_ms());
        let estimate = self.rtt_nanos_at(self.rtt_model.stamp_now());
        // Read while requests finish, the sum can be off by those finishing
        // at that moment; once traffic stops it is exact.
        let successes = load(&self.succeeded);
        let failures = FailureCounts {
            server_error: load(&self.server_errors),
            connect: load(&self.connect_errors),
            timeout: load(&self.timeouts),
            closed: load(&self.closed),
            other: load(&self.other_errors),
        };
        let cancelled = load(&self.cancelled);
        let client_errors = load(&self.client_errors);
        let in_flight = self.in_flight();
        EndpointStats {
            url: self.url.as_str().to_owned(),
            labels: labels.clone(),
            weight,
            in_flight,
            // Every request is in flight or has exactly one outcome.
            requests: successes + failures.total() + cancelled + client_errors + in_flight,
            successes,
            failures,
            cancelled,
            client_errors,
            latency_ewma: (successes + failures.total() > 0)
                .then(|| Duration::from_nanos(estimate as u64)),
            ejected,
            times_ejected,
        }
    }
}

/// One request in flight to one endpoint.
///
/// Counts the request as in flight when made, and as finished when dropped:
/// with its outcome if [`InFlight::finish`] was called, as cancelled if the
/// request's future was dropped first. So the in-flight count cannot drift.
#[derive(Debug)]
pub(crate) struct InFlight {
    endpoint: Arc<EndpointState>,
    /// When the request is timed, the clock reading it started at.
    started_at: Option<Instant>,
    /// The endpoint's health epoch when the request was sent.
    sent_in: u32,
    finished: bool,
}

impl InFlight {
    /// A request sent to `endpoint` now.
    #[cfg(test)]
    pub(crate) fn start(endpoint: Arc<EndpointState>) -> Self {
        Self::start_at(endpoint, None)
    }

    /// A request sent to `endpoint`, `picked_at` if the pick read the clock.
    /// It is timed (from that reading, else from a new one) when the
    /// policy reads response times, else when its turn comes: one request
    /// in [`TIMED_ONE_IN`](super::rtt::TIMED_ONE_IN), the first included.
    pub(crate) fn start_at(endpoint: Arc<EndpointState>, picked_at: Option<Instant>) -> Self {
        let before = endpoint
            .in_flight_and_turns
            .fetch_add(START, Ordering::Relaxed);
        let model = &endpoint.rtt_model;
        let timed = model.times_every_request() || model.times_turn(before >> 32);
        let started_at = timed.then(|| picked_at.unwrap_or_else(|| endpoint.clock.now()));
        if let Some(all) = &endpoint.balancer_in_flight {
            all.fetch_add(1, Ordering::Relaxed);
        }
        InFlight {
            started_at,
            sent_in: endpoint.health.epoch(),
            endpoint,
            finished: false,
        }
    }

    pub(crate) fn endpoint(&self) -> &Arc<EndpointState> {
        &self.endpoint
    }

    /// Records the outcome and, for a timed request, the time since it
    /// started; returns that time.
    pub(crate) fn finish(
        mut self,
        outcome: Outcome,
        status: Option<http::StatusCode>,
    ) -> Option<Duration> {
        let timing = self.started_at.map(|started_at| {
            let now = self.endpoint.clock.now();
            (now.saturating_duration_since(started_at), now)
        });
        self.endpoint.record(outcome, status, timing, self.sent_in);
        self.finished = true;
        timing.map(|(latency, _)| latency)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.finished {
            self.endpoint.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        self.endpoint
            .in_flight_and_turns
            .fetch_sub(1, Ordering::Relaxed);
        if let Some(all) = &self.endpoint.balancer_in_flight {
            all.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Arc<EndpointState> {
        Arc::new(EndpointState::new(
            EndpointUrl::parse("http://127.0.0.1:1").unwrap(),
            &Counters::default(),
        ))
    }

    #[test]
    fn every_request_ends_as_exactly_one_outcome() {
        let ep = endpoint();
        let a = InFlight::start(ep.clone());
        let b = InFlight::start(ep.clone());
        let c = InFlight::start(ep.clone());
        assert_eq!(ep.stats(1, &Labels::default()).in_flight, 3);
        a.finish(Outcome::Success, None);
        b.finish(Outcome::ServerError, None);
        drop(c);
        let stats = ep.stats(1, &Labels::default());
        assert_eq!(stats.in_flight, 0);
        assert_eq!(stats.requests, 3);
        assert_eq!(stats.successes, 1);
        assert_eq!(stats.failures.server_error, 1);
        assert_eq!(stats.cancelled, 1);
    }

    fn sampled_endpoint() -> Arc<EndpointState> {
        let counters = Counters {
            rtt: Arc::new(RttModel::default().timing_every_request(false)),
            ..Counters::default()
        };
        Arc::new(EndpointState::new(
            EndpointUrl::parse("http://127.0.0.1:1").unwrap(),
            &counters,
        ))
    }

    proptest::proptest! {
        /// Requests are started, then finished or dropped, in any order:
        /// the in-flight count is always the started minus the ended, and
        /// exactly one request in `TIMED_ONE_IN`, the first included, is
        /// timed when the policy does not read the estimate.
        #[test]
        fn one_request_in_sixteen_is_timed_and_the_in_flight_count_never_drifts(
            steps in proptest::collection::vec((proptest::bool::ANY, 0usize..8, proptest::bool::ANY), 0..300)
        ) {
            let ep = sampled_endpoint();
            let every = super::super::rtt::TIMED_ONE_IN;
            // Each open request with its turn: the how-manyth it was.
            let mut open: Vec<(InFlight, u64)> = Vec::new();
            let mut started = 0u64;
            for (start, pick, drop_it) in steps {
                if start || open.is_empty() {
                    open.push((InFlight::start(ep.clone()), started));
                    started += 1;
                } else {
                    let (request, turn) = open.swap_remove(pick % open.len());
                    if drop_it {
                        drop(request);
                    } else {
                        let timed = request.finish(Outcome::Success, None).is_some();
                        proptest::prop_assert_eq!(timed, turn.is_multiple_of(every), "turn {}", turn);
                    }
                }
                proptest::prop_assert_eq!(ep.in_flight(), open.len() as u64);
                proptest::prop_assert_eq!(ep.requests_started(), started);
            }
            drop(open);
            proptest::prop_assert_eq!(ep.stats(1, &Labels::default()).in_flight, 0);
        }
    }

    #[test]
    fn the_first_request_and_every_sixteenth_are_timed() {
        let ep = sampled_endpoint();
        let timed: Vec<usize> = (0..40)
            .filter(|_| {
                InFlight::start(ep.clone())
                    .finish(Outcome::Success, None)
                    .is_some()
            })
            .collect();
        assert_eq!(timed, [0, 16, 32]);
        let every = endpoint();
        assert!((0..40).all(|_| InFlight::start(every.clone())
            .finish(Outcome::Success, None)
            .is_some()));
    }
}
