//! One endpoint's live state: its core (address, the one response-time
//! estimate, health) and its request counters, in lanes (see
//! [`lane`](super::lane)); and the guard that counts one request in flight.
//! All atomics, so that recording never takes a lock.

use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::core::EndpointCore;
use super::lane::{Lane, LaneCounts, Ticket};
use super::stats::{EndpointStats, FailureCounts};
use super::{Counters, EndpointUrl, Labels};
use crate::lanes::{lane_count, this_threads_lane, MAX_LANES};
use crate::outcome::Outcome;

/// One endpoint's live state. Shared (`Arc`) by every snapshot that lists the
/// endpoint, so counters survive weight changes; a request in flight holds
/// only its lane (which holds the core), so a removed endpoint's last
/// requests still record somewhere, and a request writes no reference
/// count that another core's requests write too.
#[derive(Debug)]
pub(crate) struct EndpointState {
    core: Arc<EndpointCore>,
    /// The lanes, [`MAX_LANES`] entries in place (one pointer away): the
    /// [`lane_count`] distinct ones, repeated.
    lanes: [Arc<Lane>; MAX_LANES],
    /// How many of `lanes` are distinct: the first ones.
    distinct_lanes: usize,
}

impl Deref for EndpointState {
    type Target = EndpointCore;

    fn deref(&self) -> &EndpointCore {
        &self.core
    }
}

impl EndpointState {
    pub(crate) fn new(url: EndpointUrl, counters: &Counters) -> Self {
        let core = Arc::new(EndpointCore::new(url, counters));
        let distinct: Vec<Arc<Lane>> = (0..lane_count())
            .map(|_| Arc::new(Lane::new(core.clone())))
            .collect();
        EndpointState {
            lanes: std::array::from_fn(|i| distinct[i % distinct.len()].clone()),
            distinct_lanes: distinct.len(),
            core,
        }
    }

    /// A hold on the lane of this endpoint's counters that this thread
    /// writes: one request more in flight there until it is dropped.
    pub(crate) fn ticket(&self) -> Ticket {
        Ticket::new(&self.lanes[this_threads_lane()])
    }

    /// The endpoint's core: what tells it apart from other endpoints.
    #[cfg(test)]
    pub(crate) fn core(&self) -> &Arc<EndpointCore> {
        &self.core
    }

    /// Whether `core` is this endpoint's.
    pub(crate) fn has_core(&self, core: &Arc<EndpointCore>) -> bool {
        Arc::ptr_eq(&self.core, core)
    }

    /// The counters summed over the lanes.
    fn counts(&self) -> LaneCounts {
        self.distinct()
            .map(|lane| lane.counts(self.lane_in_flight(lane)))
            .fold(LaneCounts::default(), |sum, lane| sum + lane)
    }

    /// Requests in flight in `lane`, one of this endpoint's: its tickets,
    /// the references beyond the ones `lanes` holds (each distinct lane
    /// fills `MAX_LANES / distinct_lanes` of its entries).
    fn lane_in_flight(&self, lane: &Arc<Lane>) -> u64 {
        let held_here = MAX_LANES / self.distinct_lanes;
        Arc::strong_count(lane).saturating_sub(held_here) as u64
    }

    /// Requests sent to this endpoint: in flight or ended.
    pub(crate) fn requests_started(&self) -> u64 {
        self.counts().started()
    }

    /// Requests sent to this endpoint and not finished yet.
    pub(crate) fn in_flight(&self) -> u64 {
        self.distinct().map(|lane| self.lane_in_flight(lane)).sum()
    }

    fn distinct(&self) -> impl Iterator<Item = &Arc<Lane>> {
        self.lanes.iter().take(self.distinct_lanes)
    }

    /// A consistent-enough copy of the counters for [`crate::Stats`].
    pub(crate) fn stats(&self, weight: u32, labels: &Labels) -> EndpointStats {
        let (ejected, times_ejected, ejected_by) = self.health_status();
        let estimate = self.rtt_nanos_at(self.rtt_model().stamp_now());
        // Read while requests finish, the sum can be off by those finishing
        // at that moment; once traffic stops it is exact.
        let counts = self.counts();
        let failures = FailureCounts {
            server_error: counts.server_errors,
            connect: counts.connect_errors,
            timeout: counts.timeouts,
            closed: counts.closed,
            other: counts.other_errors,
        };
        let successes = counts.succeeded;
        EndpointStats {
            url: self.url.as_str().to_owned(),
            labels: labels.clone(),
            weight,
            in_flight: counts.in_flight,
            // Every request is in flight or has exactly one outcome.
            requests: counts.started(),
            successes,
            latency_ewma: (successes + failures.total() > 0)
                .then(|| Duration::from_nanos(estimate as u64)),
            failures,
            cancelled: counts.cancelled,
            client_errors: counts.client_errors,
            overloaded: counts.overloaded,
            held_off_until: self.held_off_until().map(Instant::into_std),
            ejected,
            times_ejected,
            ejected_by,
            checks: self.check_stats(),
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
    /// The lane of the thread the request started on: it is counted there
    /// to the end, wherever it ends, and in flight while this is held.
    lane: Ticket,
    /// When the request is timed, the clock reading it started at.
    started_at: Option<Instant>,
    /// The timing feeds the response-time estimate (its turn came, or the
    /// policy reads the estimate); a request timed only for the log does
    /// not, so that turning logging on changes no estimate.
    sampled: bool,
    /// The endpoint's health epoch when the request was sent.
    sent_in: u32,
    finished: bool,
    /// The request's method, for its duration series.
    #[cfg(feature = "metrics")]
    method: crate::telemetry::MethodClass,
    /// The answer's status on the wire, for its duration series (health
    /// reads a gRPC answer's status from its `grpc-status`).
    #[cfg(feature = "metrics")]
    answered: Option<http::StatusCode>,
}

impl InFlight {
    /// A request sent to `endpoint` now, from this thread.
    #[cfg(test)]
    pub(crate) fn start(endpoint: &EndpointState) -> Self {
        Self::start_at(endpoint.ticket(), None, false)
    }

    /// A request counted in flight in the lane `lane` holds, `picked_at`
    /// if the pick read the clock. It is timed (from that reading, else
    /// from a new one) when the policy reads response times, else when its
    /// turn in the lane comes: one request in
    /// [`TIMED_ONE_IN`](super::rtt::TIMED_ONE_IN), the first included; and
    /// whenever `logged` (its outcome event is enabled and will carry the
    /// latency) or metrics are recorded, without feeding the estimate then.
    pub(crate) fn start_at(lane: Ticket, picked_at: Option<Instant>, logged: bool) -> Self {
        let endpoint = &lane.core;
        #[cfg(feature = "metrics")]
        let logged = {
            endpoint.metrics.started();
            logged || endpoint.metrics.is_recording()
        };
        let model = endpoint.rtt_model();
        let sampled = model.times_every_request() || model.times_turn(lane.take_turn());
        let started_at =
            (sampled || logged).then(|| picked_at.unwrap_or_else(|| endpoint.clock.now()));
        if let Some(all) = &endpoint.balancer_in_flight {
            all.fetch_add(1, Ordering::Relaxed);
        }
        InFlight {
            started_at,
            sampled,
            sent_in: endpoint.health_epoch(),
            lane,
            finished: false,
            #[cfg(feature = "metrics")]
            method: Default::default(),
            #[cfg(feature = "metrics")]
            answered: None,
        }
    }

    /// Notes the answer's status on the wire, before [`InFlight::finish`].
    #[cfg(feature = "metrics")]
    pub(crate) fn answered(&mut self, status: Option<http::StatusCode>) {
        self.answered = status;
    }

    /// Names the request's method, for its duration series.
    #[cfg(feature = "metrics")]
    pub(crate) fn with_method(mut self, method: crate::telemetry::MethodClass) -> Self {
        self.method = method;
        self
    }

    /// The endpoint's address.
    pub(crate) fn url(&self) -> &EndpointUrl {
        &self.lane.core.url
    }

    /// The endpoint's core, to tell which endpoint this is.
    pub(crate) fn core(&self) -> &Arc<EndpointCore> {
        &self.lane.core
    }

    /// Records the outcome and, for a sampled request, the time since it
    /// started; returns that time for any timed request.
    pub(crate) fn finish(
        mut self,
        outcome: Outcome,
        status: Option<http::StatusCode>,
    ) -> Option<Duration> {
        let core = &self.lane.core;
        let timing = self.started_at.map(|started_at| {
            let now = core.clock.now();
            (now.saturating_duration_since(started_at), now)
        });
        self.lane.count(outcome);
        let sample = timing.filter(|_| self.sampled);
        core.learn(outcome, status, sample, self.sent_in);
        #[cfg(feature = "metrics")]
        if let Some((latency, _)) = timing {
            let seconds = latency.as_secs_f64();
            core.metrics
                .record(self.method, Some(outcome), self.answered, seconds);
        }
        self.finished = true;
        timing.map(|(latency, _)| latency)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.finished {
            self.lane.count_cancelled();
        }
        #[cfg(feature = "metrics")]
        {
            let core = &self.lane.core;
            let timed = self.started_at.filter(|_| core.metrics.is_recording());
            if let (false, Some(started_at)) = (self.finished, timed) {
                let latency = core.clock.now().saturating_duration_since(started_at);
                core.metrics
                    .record(self.method, None, None, latency.as_secs_f64());
            }
            core.metrics.ended();
        }
        if let Some(all) = &self.lane.core.balancer_in_flight {
            all.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::RttModel;

    fn endpoint() -> Arc<EndpointState> {
        Arc::new(EndpointState::new(
            EndpointUrl::parse("http://127.0.0.1:1").unwrap(),
            &Counters::default(),
        ))
    }

    #[test]
    fn every_request_ends_as_exactly_one_outcome() {
        let ep = endpoint();
        let a = InFlight::start(&ep);
        let b = InFlight::start(&ep);
        let c = InFlight::start(&ep);
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
                    open.push((InFlight::start(&ep), started));
                    started += 1;
                } else {
                    let (request, turn) = open.swap_remove(pick % open.len());
                    if drop_it {
                        drop(request);
                    } else {
                        let timed = request.finish(Outcome::Success, None).is_some();
                        proptest::prop_assert_eq!(timed, turn.is_multiple_of(u64::from(every)), "turn {}", turn);
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
                InFlight::start(&ep)
                    .finish(Outcome::Success, None)
                    .is_some()
            })
            .collect();
        assert_eq!(timed, [0, 16, 32]);
        let every = endpoint();
        assert!((0..40).all(|_| InFlight::start(&every)
            .finish(Outcome::Success, None)
            .is_some()));
    }

    /// With the outcome event enabled every request is timed for it, but
    /// only the sampled ones feed the estimate: logging changes no figure.
    #[tokio::test(start_paused = true)]
    async fn a_logged_request_is_timed_without_feeding_the_estimate() {
        let ep = sampled_endpoint();
        let mut timed = 0;
        for turn in 0..40 {
            let request = InFlight::start_at(ep.ticket(), None, true);
            // The sampled turns (0, 16, 32) answer in 10 ms, the others in 2 s.
            let took = if turn % 16 == 0 { 10 } else { 2_000 };
            tokio::time::advance(Duration::from_millis(took)).await;
            let latency = request.finish(Outcome::Success, None);
            assert_eq!(latency, Some(Duration::from_millis(took)), "turn {turn}");
            timed += 1;
        }
        assert_eq!(timed, 40);
        let estimate = ep.stats(1, &Labels::default()).latency_ewma.unwrap();
        assert!(
            estimate < Duration::from_millis(100),
            "the 2 s answers, timed only for the log, moved the estimate to {estimate:?}"
        );
        // The turns went on as without logging: the next sampled one is 48.
        let sampled: Vec<usize> = (40..70)
            .filter(|_| {
                InFlight::start(&ep)
                    .finish(Outcome::Success, None)
                    .is_some()
            })
            .collect();
        assert_eq!(sampled, [48, 64]);
    }

    /// Requests started on many threads (so in several lanes, some shared)
    /// and ended on others: the in-flight count is the tickets alive, and
    /// every started request is counted once.
    #[test]
    fn tickets_from_many_threads_count_in_flight_exactly() {
        let ep = endpoint();
        let started: Vec<InFlight> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..2 * MAX_LANES)
                .map(|_| scope.spawn(|| (0..5).map(|_| InFlight::start(&ep)).collect::<Vec<_>>()))
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect()
        });
        assert_eq!(ep.in_flight(), 80);
        let mut started = started.into_iter();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                let batch: Vec<InFlight> = started.by_ref().take(10).collect();
                scope.spawn(move || {
                    batch.into_iter().for_each(|r| {
                        r.finish(Outcome::Success, None);
                    })
                });
            }
        });
        assert_eq!(ep.in_flight(), 40);
        drop(started);
        let stats = ep.stats(1, &Labels::default());
        assert_eq!(
            (
                stats.in_flight,
                stats.requests,
                stats.successes,
                stats.cancelled
            ),
            (0, 80, 40, 40)
        );
    }
}
