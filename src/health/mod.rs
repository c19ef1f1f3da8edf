//! Passive health: outlier detection and ejection.
//!
//! The outcomes of real requests are the signal; nothing is probed. Two
//! kinds of detector, as in Envoy's outlier detection:
//!
//! - **streaks**, judged as each outcome lands: `consecutive_failures`
//!   failures in a row, `consecutive_gateway_failures` gateway failures in a
//!   row (connect errors, timeouts, 502/503/504), and, with local-origin
//!   errors split from answers, `consecutive_local_origin_failures`;
//! - **statistics**, judged over every endpoint at each `interval` (10 s):
//!   success rate (below the mean by `stdev_factor` standard deviations)
//!   and failure percentage (at or above a threshold), each only with
//!   enough requests per endpoint and enough endpoints.
//!
//! A detector that fires ejects the endpoint if its enforcement percentage
//! says so (a draw from the balancer's generator) and the share of ejected
//! endpoints allows. It gets no new requests for `base_ejection_time ×
//! multiplier`, capped at `max_ejection_time`, plus a random jitter up to
//! `max_ejection_time_jitter`; the multiplier goes up by one at each
//! ejection and down by one for every interval the endpoint stays in
//! rotation (Envoy).
//!
//! Two guards keep ejection from taking the fleet down with it: at most
//! `max_ejection_percent` of the active endpoints are ejected at once (one
//! may always be, unless `always_eject_one(false)`), and when fewer than
//! `panic_threshold` of them are healthy the balancer ignores ejections and
//! spreads over all of them ("panic mode", visible in stats) rather than
//! overload the few.
//!
//! Every policy skips ejected endpoints through one check,
//! `PickContext::available`, and spreads their share over the others in
//! proportion to weight.
//!
//! An ejection ends when its time is up: at that moment by the balancer's
//! sweeper (`sweeper.rs`, a small task holding only a weak reference), or
//! at the first pick after it, whichever comes first; never by reading
//! stats. An endpoint back from ejection starts with clean counts, and
//! outcomes of requests sent before its ejection do not count against it.
//! A removed or drained endpoint holds nothing: its ejection ends with its
//! membership.

mod active;
mod book;
mod budget;
mod detector;
mod ejections;
mod events;
mod retry;
mod statistics;
mod sweeper;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

pub use active::{ActiveHealthCheck, CheckStats};
pub(crate) use book::HealthShared;
pub(crate) use budget::Extra;
pub(crate) use detector::EndpointHealth;
pub use ejections::{Detector, EjectionStats};
pub(crate) use retry::{safe_to_send_twice, Retrying};
pub use retry::{Retries, Retryable};
pub use statistics::{FailurePercentage, SuccessRate};

use crate::percent::Percent;
use crate::Error;
use events::EventSink;

/// What happened to an endpoint's health, for [`OutlierDetection::on_event`]
/// callbacks (also logged with `tracing`).
///
/// The enum and its variants are `#[non_exhaustive]`: match with a `_` arm
/// and `..` in each variant's pattern.
///
/// ```
/// use tower_lb::{HealthEvent, OutlierDetection};
///
/// let detection = OutlierDetection::default().on_event(|event| match event {
///     HealthEvent::Ejected { endpoint, duration, detector, .. } => {
///         eprintln!("{endpoint} out for {duration:?} by {detector}")
///     }
///     HealthEvent::Readmitted { endpoint, .. } => eprintln!("{endpoint} back"),
///     _ => {}
/// });
/// # let _ = detection;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HealthEvent {
    /// The endpoint gets no new requests for `duration`.
    #[non_exhaustive]
    Ejected {
        /// The endpoint's canonical URL.
        endpoint: String,
        /// The ejection multiplier, this ejection included: up by one at
        /// each ejection, down by one for every interval the endpoint
        /// stays in rotation.
        times: u32,
        /// How long it is out: `base × times`, capped at the maximum, plus
        /// the jitter; zero for [`Detector::ActiveCheck`], out until its
        /// checks pass.
        duration: Duration,
        /// The detector that ejected it.
        detector: Detector,
    },
    /// The endpoint takes requests again.
    #[non_exhaustive]
    Readmitted {
        /// The endpoint's canonical URL.
        endpoint: String,
        /// How long it was out.
        after: Duration,
    },
    /// The endpoint signalled overload and gets no new requests for
    /// `duration` (unless every endpoint is held off): not an ejection, and
    /// not counted by any detector. Sent when a hold begins, not when a
    /// held endpoint's later answers extend it; nothing is sent when it
    /// ends. See [`Overload`](crate::Overload).
    #[non_exhaustive]
    HeldOff {
        /// The endpoint's canonical URL.
        endpoint: String,
        /// How long it is held off: the time its answer named, capped, or
        /// the default penalty.
        duration: Duration,
        /// The signal.
        reason: crate::HoldReason,
    },
}

type StatusFilter = dyn Fn(StatusCode) -> bool + Send + Sync;

/// Outlier-detection settings, given to
/// [`BalancerBuilder::outlier_detection`](crate::BalancerBuilder::outlier_detection).
/// On by default with [`OutlierDetection::default`]; Envoy's defaults,
/// every detector as Envoy configures it, with [`OutlierDetection::envoy`].
///
/// ```
/// use std::time::Duration;
/// use tower_lb::{Balancer, OutlierDetection, SuccessRate};
///
/// let balancer = Balancer::builder()
///     .endpoint("http://127.0.0.1:8081")
///     .endpoint("http://127.0.0.1:8082")
///     .outlier_detection(
///         OutlierDetection::default()
///             .consecutive_failures(3)
///             .success_rate(SuccessRate::default().minimum_hosts(3))
///             .base_ejection_time(Duration::from_secs(10))
///             .max_ejection_time_jitter(Duration::from_secs(1))
///             .on_event(|event| eprintln!("{event:?}")),
///     )
///     .build()?;
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Clone)]
#[must_use]
pub struct OutlierDetection {
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) consecutive_gateway_failures: Option<u32>,
    pub(crate) consecutive_local_origin_failures: Option<u32>,
    pub(crate) split_local_origin: bool,
    pub(crate) success_rate: Option<SuccessRate>,
    pub(crate) failure_percentage: Option<FailurePercentage>,
    /// Enforcement percentage by detector, in [`Detector::ALL`] order.
    pub(crate) enforcing: [Percent; 8],
    pub(crate) interval: Duration,
    pub(crate) base_ejection_time: Duration,
    pub(crate) max_ejection_time: Duration,
    pub(crate) max_ejection_time_jitter: Duration,
    pub(crate) max_ejection_percent: Percent,
    pub(crate) always_eject_one: bool,
    pub(crate) panic_threshold: Percent,
    failure_status: Option<Arc<StatusFilter>>,
    pub(crate) on_event: Option<Arc<EventSink>>,
}

impl Default for OutlierDetection {
    /// Eject after 5 consecutive failures (5xx, connect errors, timeouts)
    /// for 30 s × the multiplier, at most 300 s; at most 10% of endpoints
    /// (at least one) ejected; panic below 50% healthy. Envoy's values for
    /// these; the statistical detectors are off (turn them on one by one,
    /// or start from [`OutlierDetection::envoy`]).
    fn default() -> Self {
        OutlierDetection {
            consecutive_failures: Some(5),
            consecutive_gateway_failures: None,
            consecutive_local_origin_failures: Some(5),
            split_local_origin: false,
            success_rate: None,
            failure_percentage: None,
            enforcing: [Percent::new(100.0); 8],
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_time_jitter: Duration::ZERO,
            max_ejection_percent: Percent::new(10.0),
            always_eject_one: true,
            panic_threshold: Percent::new(50.0),
            failure_status: None,
            on_event: None,
        }
    }
}

impl OutlierDetection {
    /// No detection: no endpoint is ever ejected.
    pub fn disabled() -> Self {
        OutlierDetection {
            consecutive_failures: None,
            consecutive_local_origin_failures: None,
            ..OutlierDetection::default()
        }
    }

    /// Envoy's outlier detection as Envoy configures it by default: 5
    /// consecutive 5xx, success rate ([`SuccessRate::default`]), 5
    /// consecutive gateway failures and failure percentage
    /// ([`FailurePercentage::default`]) detected but not enforced (Envoy's
    /// `enforcing_*` of 0: turn them on with [`OutlierDetection::enforcing`]),
    /// 5 consecutive local-origin failures once split, and no ejection at
    /// all when 10% of the set is less than one endpoint
    /// (`always_eject_one_host: false`).
    ///
    /// ```
    /// use tower_lb::{Detector, OutlierDetection};
    ///
    /// let detection = OutlierDetection::envoy().enforcing(Detector::FailurePercentage, 100);
    /// # let _ = detection;
    /// ```
    pub fn envoy() -> Self {
        OutlierDetection {
            consecutive_gateway_failures: Some(5),
            success_rate: Some(SuccessRate::default()),
            failure_percentage: Some(FailurePercentage::default()),
            enforcing: Detector::ALL.map(|d| Percent::new(d.envoy_enforcing())),
            always_eject_one: false,
            ..OutlierDetection::default()
        }
    }

    /// Eject after `n` failures in a row (any failure: a failure status, a
    /// connect error, a timeout, another error; failure statuses only with
    /// [`split_local_origin_errors`](Self::split_local_origin_errors)).
    /// Default 5.
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = Some(n);
        self
    }

    /// Eject after `n` gateway failures in a row: connect errors, timeouts,
    /// 502, 503, 504 (the statuses only, once local-origin errors are
    /// split). Off by default.
    pub fn consecutive_gateway_failures(mut self, n: u32) -> Self {
        self.consecutive_gateway_failures = Some(n);
        self
    }

    /// Eject after `n` local-origin failures in a row (connect errors,
    /// timeouts, connections closed or reset, other errors of the wrapped
    /// service: whatever got no answer), once local-origin errors are split.
    /// Default 5.
    pub fn consecutive_local_origin_failures(mut self, n: u32) -> Self {
        self.consecutive_local_origin_failures = Some(n);
        self
    }

    /// Count local-origin failures (no answer: connect errors, timeouts,
    /// closed connections) apart from answers, as Envoy's
    /// `split_external_local_origin_errors` does: consecutive failures,
    /// success rate and failure percentage then judge answers only, and
    /// local-origin failures feed
    /// [`consecutive_local_origin_failures`](Self::consecutive_local_origin_failures)
    /// and the local-origin success rate and failure percentage. Off by
    /// default.
    ///
    /// ```
    /// use tower_lb::OutlierDetection;
    ///
    /// let detection = OutlierDetection::default()
    ///     .split_local_origin_errors(true)
    ///     .consecutive_local_origin_failures(3);
    /// # let _ = detection;
    /// ```
    pub fn split_local_origin_errors(mut self, split: bool) -> Self {
        self.split_local_origin = split;
        self
    }

    /// Turns the success-rate detector on, judged at every
    /// [`interval`](Self::interval). Off by default (on in
    /// [`OutlierDetection::envoy`]).
    pub fn success_rate(mut self, settings: SuccessRate) -> Self {
        self.success_rate = Some(settings);
        self
    }

    /// Eject when at least `percent` (a [`Percent`], 0 to 100) of an
    /// endpoint's requests in one interval failed, if it had at least
    /// `min_requests` in it, and at least 5 endpoints had (Envoy's
    /// `failure_percentage_minimum_hosts`; set it with
    /// [`failure_percentage_with`](Self::failure_percentage_with)). Off by
    /// default.
    pub fn failure_percentage(self, percent: impl Into<Percent>, min_requests: u32) -> Self {
        self.failure_percentage_with(
            FailurePercentage::default()
                .threshold(percent)
                .request_volume(min_requests),
        )
    }

    /// Turns the failure-percentage detector on with all its settings;
    /// `FailurePercentage::default()` is Envoy's (85%, 50 requests, 5
    /// endpoints).
    pub fn failure_percentage_with(mut self, settings: FailurePercentage) -> Self {
        self.failure_percentage = Some(settings);
        self
    }

    /// The share of the times `detector` fires that it ejects (a
    /// [`Percent`], 0 to 100; Envoy's `enforcing_*`), drawn from the
    /// balancer's generator (seeded with
    /// [`BalancerBuilder::seed`](crate::BalancerBuilder::seed)). Default 100
    /// for every detector; [`OutlierDetection::envoy`] has Envoy's. A
    /// failing active check ([`Detector::ActiveCheck`]) always takes its
    /// endpoint out: a share given for it is ignored.
    pub fn enforcing(mut self, detector: Detector, percent: impl Into<Percent>) -> Self {
        if let Some(slot) = self.enforcing.get_mut(detector.index()) {
            *slot = percent.into();
        }
        self
    }

    /// How often the statistical detectors judge, and the clean spell that
    /// brings the ejection multiplier down by one. Default 10 s.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Ejection time for a multiplier of one; later ejections multiply it.
    /// Default 30 s.
    pub fn base_ejection_time(mut self, time: Duration) -> Self {
        self.base_ejection_time = time;
        self
    }

    /// The longest ejection, jitter aside. Default 300 s.
    pub fn max_ejection_time(mut self, time: Duration) -> Self {
        self.max_ejection_time = time;
        self
    }

    /// A random time up to this is added to each ejection, drawn from the
    /// balancer's generator, so that endpoints ejected together do not all
    /// come back together. Default 0 (Envoy's).
    pub fn max_ejection_time_jitter(mut self, jitter: Duration) -> Self {
        self.max_ejection_time_jitter = jitter;
        self
    }

    /// At most this percentage (a [`Percent`], 0 to 100) of the active
    /// endpoints is ejected at once (one endpoint always may be, unless
    /// [`always_eject_one(false)`](Self::always_eject_one)). Default 10.
    pub fn max_ejection_percent(mut self, percent: impl Into<Percent>) -> Self {
        self.max_ejection_percent = percent.into();
        self
    }

    /// Whether one endpoint may always be ejected, however small
    /// `max_ejection_percent` of the set is (Envoy's
    /// `always_eject_one_host`). Default `true`: with 10% and fewer than
    /// ten endpoints, `false` ejects nothing. `false` in
    /// [`OutlierDetection::envoy`].
    pub fn always_eject_one(mut self, always: bool) -> Self {
        self.always_eject_one = always;
        self
    }

    /// Below this percentage (a [`Percent`], 0 to 100) of healthy active
    /// endpoints, ejections are ignored and requests spread over all.
    /// Default 50; 0 turns panic mode off.
    pub fn panic_threshold(mut self, percent: impl Into<Percent>) -> Self {
        self.panic_threshold = percent.into();
        self
    }

    /// Count only 502, 503 and 504 as failure statuses (connect errors and
    /// timeouts always count). The default counts every 5xx.
    pub fn gateway_statuses_only(self) -> Self {
        self.failure_statuses(|status| matches!(status.as_u16(), 502..=504))
    }

    /// Your own rule for which statuses count as failures.
    pub fn failure_statuses(
        mut self,
        is_failure: impl Fn(StatusCode) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.failure_status = Some(Arc::new(is_failure));
        self
    }

    /// Calls `sink` on every ejection and re-admission, in order, on a
    /// thread of the balancer's own: requests only queue the event, so a
    /// slow callback never slows them. Up to 1,024 events wait; beyond
    /// that, events are dropped and counted in
    /// [`Stats::health_events_dropped`](crate::Stats::health_events_dropped).
    /// Every event is also logged with `tracing` as it happens.
    pub fn on_event(mut self, sink: impl Fn(&HealthEvent) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(sink));
        self
    }

    /// Turns one streak detector off: the configuration's `0` (in code, a
    /// detector is off until set, or stops ejecting with
    /// [`enforcing`](Self::enforcing) at 0). The statistical detectors are
    /// left as they are.
    #[cfg(feature = "serde")]
    pub(crate) fn without_streak(mut self, detector: Detector) -> Self {
        match detector {
            Detector::ConsecutiveFailures => self.consecutive_failures = None,
            Detector::ConsecutiveGatewayFailures => self.consecutive_gateway_failures = None,
            Detector::ConsecutiveLocalOriginFailures => {
                self.consecutive_local_origin_failures = None
            }
            _ => {}
        }
        self
    }

    /// Whether a response with `status` counts as a failure.
    pub(crate) fn is_failure_status(&self, status: StatusCode) -> bool {
        match &self.failure_status {
            Some(is_failure) => is_failure(status),
            None => status.is_server_error(),
        }
    }

    /// Whether a detector judged at the interval is on.
    pub(crate) fn has_statistics(&self) -> bool {
        self.success_rate.is_some() || self.failure_percentage.is_some()
    }

    /// `detector`'s enforcement percentage.
    pub(crate) fn enforcing_of(&self, detector: Detector) -> Percent {
        self.enforcing
            .get(detector.index())
            .copied()
            .unwrap_or(Percent::new(100.0))
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        let invalid = |reason: &str| {
            Err(Error::InvalidPolicy {
                reason: format!("outlier detection: {reason}"),
            })
        };
        if [
            self.consecutive_failures,
            self.consecutive_gateway_failures,
            self.consecutive_local_origin_failures,
        ]
        .contains(&Some(0))
        {
            return invalid("a consecutive-failure threshold must be at least 1");
        }
        if let Some(settings) = self.failure_percentage {
            settings
                .threshold
                .check("outlier detection: failure_percentage", 100.0)?;
        }
        if let Some(settings) = self.success_rate {
            let factor = settings.stdev_factor;
            if !(factor.is_finite() && factor >= 0.0) {
                return invalid(&format!(
                    "success_rate stdev_factor must be a finite number of standard deviations, 0 or more, not {factor}"
                ));
            }
        }
        for detector in Detector::ALL {
            let setting = format!("outlier detection: enforcing {detector}");
            self.enforcing_of(detector).check(&setting, 100.0)?;
        }
        self.max_ejection_percent
            .check("outlier detection: max_ejection_percent", 100.0)?;
        self.panic_threshold
            .check("outlier detection: panic_threshold", 100.0)?;
        if self.interval.is_zero() || self.base_ejection_time.is_zero() {
            return invalid("the interval and the base ejection time must be above zero");
        }
        if self.max_ejection_time < self.base_ejection_time {
            return invalid("the maximum ejection time is below the base ejection time");
        }
        Ok(())
    }
}

impl fmt::Debug for OutlierDetection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutlierDetection")
            .field("consecutive_failures", &self.consecutive_failures)
            .field(
                "consecutive_gateway_failures",
                &self.consecutive_gateway_failures,
            )
            .field(
                "consecutive_local_origin_failures",
                &self.consecutive_local_origin_failures,
            )
            .field("split_local_origin", &self.split_local_origin)
            .field("success_rate", &self.success_rate)
            .field("failure_percentage", &self.failure_percentage)
            .field("enforcing", &self.enforcing)
            .field("interval", &self.interval)
            .field("base_ejection_time", &self.base_ejection_time)
            .field("max_ejection_time", &self.max_ejection_time)
            .field("max_ejection_time_jitter", &self.max_ejection_time_jitter)
            .field("max_ejection_percent", &self.max_ejection_percent)
            .field("always_eject_one", &self.always_eject_one)
            .field("panic_threshold", &self.panic_threshold)
            .field("custom_failure_statuses", &self.failure_status.is_some())
            .finish()
    }
}
