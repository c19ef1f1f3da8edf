//! The part of an endpoint that every request reads and few write: its
//! address, its response-time estimate and its health. Shared (`Arc`) by
//! the endpoint's entry in the set and by each of its counter lanes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::rtt::{RttEstimate, RttModel};
use super::served::{ServedBy, ServedSlot};
use super::{Counters, EndpointUrl, Labels};
use crate::clock::{millis, Clock};
use crate::health::{CheckStats, Detector, EndpointHealth, HealthEvent, HealthShared};
use crate::outcome::Outcome;
use crate::overload::{Holds, Overload, Signal};
use crate::refresh::ConnectFailures;

/// An endpoint's address, estimate and health.
#[derive(Debug)]
pub(crate) struct EndpointCore {
    pub(crate) url: EndpointUrl,
    /// Requests in flight over the whole balancer, kept with this
    /// endpoint's when the policy reads it.
    pub(crate) balancer_in_flight: Option<Arc<AtomicU64>>,
    rtt_model: Arc<RttModel>,
    /// Response-time estimate for the least-response-time policy.
    rtt: RttEstimate,
    health: Arc<EndpointHealth>,
    health_shared: Arc<HealthShared>,
    connect_failures: Arc<ConnectFailures>,
    /// Whether its last failure was a connect failure (written on failures
    /// only): an endpoint ejected after refusing connections may be gone
    /// from its registry, which discovery should look up again.
    refused: AtomicBool,
    pub(crate) clock: Clock,
    /// What a response names as its endpoint: the URL and current labels.
    served: ServedSlot,
    /// The endpoint's metric series, registered as it joined the set.
    #[cfg(feature = "metrics")]
    pub(crate) metrics: crate::telemetry::EndpointMetrics,
    /// The balancer's overload settings and its flag of running holds.
    holds: Arc<Holds>,
    /// Held off until then (milliseconds of the balancer's clock; 0 when
    /// it never was): no new requests before, unless every endpoint is.
    held_until: AtomicU64,
    /// When it last joined the takers (added, or back from drained), in
    /// milliseconds of the clock, for slow start; 0 when it was there from
    /// the start.
    joined_ms: AtomicU64,
}

impl EndpointCore {
    pub(crate) fn new(url: EndpointUrl, counters: &Counters) -> Self {
        let health = Arc::new(EndpointHealth::new(url.shared_name()));
        EndpointCore {
            #[cfg(feature = "metrics")]
            metrics: counters.metrics.endpoint(&url.server_address(), url.port()),
            served: ServedSlot::new(url.shared_name()),
            url,
            balancer_in_flight: counters.in_flight.clone(),
            rtt: RttEstimate::new(&counters.rtt),
            rtt_model: counters.rtt.clone(),
            health,
            health_shared: counters.health.clone(),
            connect_failures: counters.connect_failures.clone(),
            refused: AtomicBool::new(false),
            clock: counters.clock,
            joined_ms: AtomicU64::new(0),
            holds: counters.holds.clone(),
            held_until: AtomicU64::new(0),
        }
    }

    /// The balancer's overload settings.
    pub(crate) fn overload(&self) -> &Overload {
        &self.holds.config
    }

    /// Whether the endpoint is held off at `now` (milliseconds of the
    /// balancer's clock). A pure read.
    pub(crate) fn is_held(&self, now: u64) -> bool {
        self.held_until.load(Ordering::Relaxed) > now
    }

    /// When its hold ends (milliseconds; at or before now when it is not
    /// held).
    pub(crate) fn held_until_ms(&self) -> u64 {
        self.held_until.load(Ordering::Relaxed)
    }

    /// The end of its current hold, `None` when it is not held.
    pub(crate) fn held_off_until(&self) -> Option<Instant> {
        let until = self.held_until_ms();
        (until > self.clock.now_ms()).then(|| self.clock.at_ms(until))
    }

    /// Holds the endpoint off for the time `signal` asks (capped; the
    /// default penalty where it names none): a longer hold than the current
    /// one extends it, a shorter one changes nothing. A hold that begins
    /// (the endpoint was not held) is announced as a health event.
    pub(crate) fn hold_off(&self, signal: Signal) {
        let wait = self.holds.config.hold_for(signal.asked);
        if wait.is_zero() {
            return;
        }
        let now = self.clock.now_ms();
        let until = now.saturating_add(millis(wait).max(1));
        let before = self.held_until.fetch_max(until, Ordering::Relaxed);
        self.holds.note(until);
        if before <= now {
            #[cfg(feature = "metrics")]
            self.metrics.balancer().held_off(signal.reason);
            self.health_shared.announce(HealthEvent::HeldOff {
                endpoint: self.url.as_str().to_owned(),
                duration: Duration::from_millis(until - now),
                reason: signal.reason,
            });
        }
    }

    /// Begins its slow-start window at `at_ms` (it joined the takers).
    pub(crate) fn joined_at(&self, at_ms: u64) {
        self.joined_ms.store(at_ms.max(1), Ordering::Relaxed);
    }

    /// When its slow-start window began: when it last joined the takers
    /// or came back from an ejection; 0 when neither happened.
    pub(crate) fn ramp_start_ms(&self) -> u64 {
        (self.joined_ms.load(Ordering::Relaxed)).max(self.health.returned_ms())
    }

    /// The endpoint as a response names it (one reference count).
    pub(crate) fn served_by(&self) -> ServedBy {
        self.served.get()
    }

    /// Keeps what responses name in step with the endpoint's labels in the
    /// set; called by the set's writers.
    pub(crate) fn set_labels(&self, labels: &Labels) {
        self.served.set_labels(labels);
    }

    /// Whether the endpoint is ejected at `now` (milliseconds of the
    /// balancer's clock). A pure read.
    pub(crate) fn is_ejected(&self, now: u64) -> bool {
        self.health.is_ejected(now)
    }

    /// Whether it is ejected now and its last failure was a connect
    /// failure: the address may have left its registry.
    pub(crate) fn ejected_after_connect_failures(&self) -> bool {
        self.refused.load(Ordering::Relaxed) && self.health_status().0
    }

    /// Whether it is ejected now, its ejection multiplier, and the detector
    /// behind the ejection.
    pub(crate) fn health_status(&self) -> (bool, u32, Option<Detector>) {
        self.health.status(self.clock.now_ms())
    }

    /// The endpoint's active checks, for stats.
    pub(crate) fn check_stats(&self) -> CheckStats {
        self.health.checks.stats()
    }

    /// The endpoint's health, for the balancer's interval sweep.
    pub(crate) fn health(&self) -> &Arc<EndpointHealth> {
        &self.health
    }

    /// The endpoint's health epoch: answers to requests sent in an earlier
    /// one feed no detector.
    pub(crate) fn health_epoch(&self) -> u32 {
        self.health.epoch()
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

    /// What an answer tells beyond the counters: the estimate (when the
    /// request was timed: its latency and the time it ended), the detector,
    /// the discovery hint. A client error tells nothing of the endpoint.
    pub(crate) fn learn(
        &self,
        outcome: Outcome,
        status: Option<http::StatusCode>,
        timing: Option<(Duration, Instant)>,
        sent_in: u32,
    ) {
        // A client error tells nothing of the endpoint; an overload signal
        // is neither a failure nor a response time (a fast 429 is no fast
        // answer): its hold is what it tells.
        if matches!(outcome, Outcome::ClientError | Outcome::Overloaded) {
            return;
        }
        if outcome == Outcome::ConnectError {
            self.connect_failures.record();
            self.refused.store(true, Ordering::Relaxed);
        } else if outcome != Outcome::Success {
            self.refused.store(false, Ordering::Relaxed);
        }
        if let Some((latency, now)) = timing {
            let failed = outcome != Outcome::Success;
            self.rtt.record(&self.rtt_model, latency, failed, now);
        }
        self.health
            .record(outcome, status, sent_in, &self.health_shared);
    }
}
