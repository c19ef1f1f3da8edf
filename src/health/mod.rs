//! Passive health: outlier detection and ejection.
//!
//! The outcomes of real requests are the signal; nothing is probed. An
//! endpoint that fails `consecutive_failures` times in a row (or
//! `consecutive_gateway_failures` times with a connect error, a timeout or
//! 502/503/504, or above a failure percentage over an interval) is ejected:
//! it gets no new requests for `base_ejection_time × times ejected`, capped at
//! `max_ejection_time`, then comes back by itself. A clean spell as long as
//! `max_ejection_time` resets the multiplier. Defaults follow Envoy's outlier
//! detection.
//!
//! Two guards keep ejection from taking the fleet down with it: at most
//! `max_ejection_percent` of the active endpoints are ejected at once (always
//! at least one may be), and when fewer than `panic_threshold` of them are
//! healthy the balancer ignores ejections and spreads over all of them
//! ("panic mode", visible in stats) rather than overload the few.
//!
//! Every policy skips ejected endpoints through one check,
//! `PickContext::available`, and spreads their share over the others in
//! proportion to weight.
//!
//! An ejection ends when its time is up, noticed by the next pick (in panic
//! mode too), never by reading stats. An endpoint back from ejection starts
//! with clean counts, and outcomes of requests sent before its ejection do
//! not count against it. A removed or drained endpoint holds nothing: its
//! ejection ends with its membership.

mod book;
mod budget;
mod detector;
mod events;
mod retry;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

pub(crate) use book::HealthShared;
pub(crate) use budget::Extra;
pub(crate) use detector::EndpointHealth;
pub(crate) use retry::{safe_to_send_twice, Retrying};
pub use retry::{Retries, Retryable};

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
///     HealthEvent::Ejected { endpoint, duration, .. } => eprintln!("{endpoint} out for {duration:?}"),
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
        /// How many times it has been ejected in a row, this one included.
        times: u32,
        /// How long it is out.
        duration: Duration,
    },
    /// The endpoint takes requests again.
    #[non_exhaustive]
    Readmitted {
        /// The endpoint's canonical URL.
        endpoint: String,
    },
}

type StatusFilter = dyn Fn(StatusCode) -> bool + Send + Sync;

/// Outlier-detection settings, given to
/// [`BalancerBuilder::outlier_detection`](crate::BalancerBuilder::outlier_detection).
/// On by default with [`OutlierDetection::default`].
///
/// ```
/// use std::time::Duration;
/// use tower_lb::{Balancer, OutlierDetection};
///
/// let balancer = Balancer::builder()
///     .endpoint("http://127.0.0.1:8081")
///     .endpoint("http://127.0.0.1:8082")
///     .outlier_detection(
///         OutlierDetection::default()
///             .consecutive_failures(3)
///             .base_ejection_time(Duration::from_secs(10))
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
    pub(crate) failure_percentage: Option<(Percent, u32)>,
    pub(crate) interval: Duration,
    pub(crate) base_ejection_time: Duration,
    pub(crate) max_ejection_time: Duration,
    pub(crate) max_ejection_percent: Percent,
    pub(crate) panic_threshold: Percent,
    failure_status: Option<Arc<StatusFilter>>,
    pub(crate) on_event: Option<Arc<EventSink>>,
}

impl Default for OutlierDetection {
    /// Envoy's defaults: eject after 5 consecutive failures (5xx, connect
    /// errors, timeouts) for 30 s × times ejected, at most 300 s; at most
    /// 10% of endpoints (at least one) ejected; panic below 50% healthy.
    fn default() -> Self {
        OutlierDetection {
            consecutive_failures: Some(5),
            consecutive_gateway_failures: None,
            failure_percentage: None,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: Percent::new(10.0),
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
            ..OutlierDetection::default()
        }
    }

    /// Eject after `n` failures in a row (any failure: a failure status, a
    /// connect error, a timeout, another error). Default 5.
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = Some(n);
        self
    }

    /// Eject after `n` gateway failures in a row: connect errors, timeouts,
    /// 502, 503, 504. Off by default.
    pub fn consecutive_gateway_failures(mut self, n: u32) -> Self {
        self.consecutive_gateway_failures = Some(n);
        self
    }

    /// Eject when more than `percent` (a [`Percent`], 0 to 100) of an
    /// endpoint's requests in one interval failed, if it had at least
    /// `min_requests` in it. Off by default.
    pub fn failure_percentage(mut self, percent: impl Into<Percent>, min_requests: u32) -> Self {
        self.failure_percentage = Some((percent.into(), min_requests));
        self
    }

    /// The failure-percentage interval. Default 10 s.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Ejection time for the first ejection; later ones multiply it. Default 30 s.
    pub fn base_ejection_time(mut self, time: Duration) -> Self {
        self.base_ejection_time = time;
        self
    }

    /// The longest ejection, and the clean spell that resets the multiplier.
    /// Default 300 s.
    pub fn max_ejection_time(mut self, time: Duration) -> Self {
        self.max_ejection_time = time;
        self
    }

    /// At most this percentage (a [`Percent`], 0 to 100) of the active
    /// endpoints is ejected at once; one endpoint always may be. Default 10.
    pub fn max_ejection_percent(mut self, percent: impl Into<Percent>) -> Self {
        self.max_ejection_percent = percent.into();
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

    /// Whether a response with `status` counts as a failure.
    pub(crate) fn is_failure_status(&self, status: StatusCode) -> bool {
        match &self.failure_status {
            Some(is_failure) => is_failure(status),
            None => status.is_server_error(),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        let invalid = |reason: &str| {
            Err(Error::InvalidPolicy {
                reason: format!("outlier detection: {reason}"),
            })
        };
        if self.consecutive_failures == Some(0) || self.consecutive_gateway_failures == Some(0) {
            return invalid("a consecutive-failure threshold must be at least 1");
        }
        if let Some((percent, _)) = self.failure_percentage {
            percent.check("outlier detection: failure_percentage", 100.0)?;
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
            .field("failure_percentage", &self.failure_percentage)
            .field("interval", &self.interval)
            .field("base_ejection_time", &self.base_ejection_time)
            .field("max_ejection_time", &self.max_ejection_time)
            .field("max_ejection_percent", &self.max_ejection_percent)
            .field("panic_threshold", &self.panic_threshold)
            .field("custom_failure_statuses", &self.failure_status.is_some())
            .finish()
    }
}
