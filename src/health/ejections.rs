//! Why an endpoint is out: the detector that ejected it, and the
//! balancer's ejection counts by detector (what `HealthEvent`s and
//! `Stats` report).

use std::fmt;

/// The detector behind an ejection, named as in Envoy's outlier detection.
///
/// `#[non_exhaustive]`: later detectors add variants, so match with a `_`
/// arm.
///
/// ```
/// use tower_lb::{Detector, OutlierDetection};
///
/// // Envoy's `enforcing_success_rate: 50`.
/// let detection = OutlierDetection::envoy().enforcing(Detector::SuccessRate, 50);
/// # let _ = detection;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Detector {
    /// Failures in a row (Envoy's `consecutive_5xx`); with local-origin
    /// errors split, failure statuses only.
    ConsecutiveFailures,
    /// Gateway failures in a row (Envoy's `consecutive_gateway_failure`):
    /// connect errors, timeouts, 502, 503, 504; with local-origin errors
    /// split, the three statuses only.
    ConsecutiveGatewayFailures,
    /// Local-origin failures in a row, with local-origin errors split
    /// (Envoy's `consecutive_local_origin_failure`).
    ConsecutiveLocalOriginFailures,
    /// Success rate below the fleet's mean by `stdev_factor` standard
    /// deviations in an interval (Envoy's `success_rate`); over answers
    /// only, with local-origin errors split.
    SuccessRate,
    /// Failure percentage at or above the threshold in an interval
    /// (Envoy's `failure_percentage`); over answers only, with local-origin
    /// errors split.
    FailurePercentage,
    /// Success rate over local-origin outcomes, with local-origin errors
    /// split (Envoy's `success_rate_local_origin`).
    LocalOriginSuccessRate,
    /// Failure percentage over local-origin outcomes, with local-origin
    /// errors split (Envoy's `failure_percentage_local_origin`).
    LocalOriginFailurePercentage,
    /// Active health checks: `unhealthy_threshold` checks failed in a row
    /// (see [`ActiveHealthCheck`](crate::ActiveHealthCheck)). Out until
    /// `healthy_threshold` checks pass in a row; never refused by the
    /// maximum ejection percentage, and no enforcement draw (Envoy's
    /// `FAILED_ACTIVE_HC`, which is not an outlier ejection).
    ActiveCheck,
}

impl Detector {
    /// Every detector, in the order of the variants.
    pub(crate) const ALL: [Detector; 8] = [
        Detector::ConsecutiveFailures,
        Detector::ConsecutiveGatewayFailures,
        Detector::ConsecutiveLocalOriginFailures,
        Detector::SuccessRate,
        Detector::FailurePercentage,
        Detector::LocalOriginSuccessRate,
        Detector::LocalOriginFailurePercentage,
        Detector::ActiveCheck,
    ];

    /// The detector's place in [`Detector::ALL`], for counters.
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Envoy's name for the detector (as in its `ejections_enforced_*`
    /// statistics; `active_health_check` for [`Detector::ActiveCheck`],
    /// which Envoy counts as `health_check.failure`).
    pub fn envoy_name(self) -> &'static str {
        match self {
            Detector::ConsecutiveFailures => "consecutive_5xx",
            Detector::ConsecutiveGatewayFailures => "consecutive_gateway_failure",
            Detector::ConsecutiveLocalOriginFailures => "consecutive_local_origin_failure",
            Detector::SuccessRate => "success_rate",
            Detector::FailurePercentage => "failure_percentage",
            Detector::LocalOriginSuccessRate => "success_rate_local_origin",
            Detector::LocalOriginFailurePercentage => "failure_percentage_local_origin",
            Detector::ActiveCheck => "active_health_check",
        }
    }

    /// Envoy's default enforcement percentage for the detector.
    pub(super) fn envoy_enforcing(self) -> f64 {
        match self {
            Detector::ConsecutiveGatewayFailures
            | Detector::FailurePercentage
            | Detector::LocalOriginFailurePercentage => 0.0,
            _ => 100.0,
        }
    }
}

impl fmt::Display for Detector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.envoy_name())
    }
}

/// The balancer's ejection counts, in [`Stats::ejections`](crate::Stats::ejections)
/// (Envoy's `ejections_active`, `ejections_enforced_*` and
/// `ejections_overflow`).
///
/// ```
/// use tower_lb::{Balancer, Detector};
///
/// let balancer = Balancer::builder().endpoint("http://127.0.0.1:8081").build()?;
/// let ejections = balancer.stats().ejections;
/// assert_eq!(ejections.active, 0);
/// assert_eq!(ejections.enforced(Detector::SuccessRate), 0);
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EjectionStats {
    /// Endpoints ejected now.
    pub active: u64,
    /// Ejections made since the balancer was built, every detector.
    pub total: u64,
    /// Ejections made, by detector, in [`Detector`] order; read them with
    /// [`EjectionStats::enforced`].
    pub by_detector: Vec<(Detector, u64)>,
    /// Times a detector fired and the enforcement draw said no (Envoy
    /// counts `ejections_detected_*` minus `ejections_enforced_*`).
    pub not_enforced: u64,
    /// Ejections refused because the maximum share of ejected endpoints
    /// was reached (Envoy's `ejections_overflow`).
    pub refused_by_max_percent: u64,
}

impl EjectionStats {
    /// Ejections `detector` made.
    pub fn enforced(&self, detector: Detector) -> u64 {
        self.by_detector
            .iter()
            .find(|(d, _)| *d == detector)
            .map_or(0, |(_, n)| *n)
    }
}
