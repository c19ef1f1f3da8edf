//! Outlier detection as configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{duration, invalid, table, Checked};
use crate::error::Error;
use crate::health::{Detector, FailurePercentage, OutlierDetection, SuccessRate};
use crate::percent::Percent;

/// Outlier detection ([`OutlierDetection`]); each setting left out keeps
/// its default (the builder's, Envoy's values), or the preset's.
/// Percentages are on the 0 to 100 scale.
///
/// ```toml
/// [outlier]
/// preset = "envoy"                    # start from OutlierDetection::envoy()
/// consecutive_failures = 5            # 0: this detector off
/// consecutive_gateway_failures = 3    # off unless set (or the preset); 0: off
/// consecutive_local_origin_failures = 5  # with split_local_origin_errors; 0: off
/// split_local_origin_errors = false
/// success_rate = { stdev_factor = 1.9, request_volume = 100, minimum_hosts = 5 }
/// failure_percentage = { percent = 85, min_requests = 50, minimum_hosts = 5 }
/// enforcing = { success_rate = 100, failure_percentage = 0 }
/// interval = "10s"
/// base_ejection = "30s"
/// max_ejection = "5m"
/// max_ejection_jitter = "1s"
/// max_ejection_percent = 10
/// always_eject_one = true
/// panic_threshold = 50
/// gateway_statuses_only = false
/// ```
///
/// `enabled = false` is [`OutlierDetection::disabled`]: nothing is ever
/// ejected, and setting a detector (or a preset) beside it is an error.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::OutlierConfig;
///
/// let mut outlier = OutlierConfig::default();
/// outlier.base_ejection = Some(Duration::from_secs(10));
/// outlier.max_ejection = Some(Duration::from_secs(5));
/// let error = outlier.to_outlier_detection().unwrap_err();
/// assert_eq!(
///     error.to_string(),
///     "max_ejection: the maximum ejection time is below the base ejection time"
/// );
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct OutlierConfig {
    /// `false`: no detection at all ([`OutlierDetection::disabled`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The settings to start from: `"envoy"` is
    /// [`OutlierDetection::envoy`]; left out,
    /// [`OutlierDetection::default`]. The other settings apply on top.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<OutlierPreset>,
    /// Eject after this many failures in a row
    /// ([`OutlierDetection::consecutive_failures`]); default 5, 0 turns
    /// this detector off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// Eject after this many gateway failures in a row
    /// ([`OutlierDetection::consecutive_gateway_failures`]); off by
    /// default (5 with the Envoy preset), 0 turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_failures: Option<u32>,
    /// Eject after this many local-origin failures in a row, once they are
    /// split from answers
    /// ([`OutlierDetection::consecutive_local_origin_failures`]); default
    /// 5, 0 turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_local_origin_failures: Option<u32>,
    /// `true`: local-origin failures (no answer came) counted apart from
    /// answers ([`OutlierDetection::split_local_origin_errors`]); default
    /// `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_local_origin_errors: Option<bool>,
    /// Eject below the fleet's success rate
    /// ([`OutlierDetection::success_rate`]); off by default (on with the
    /// Envoy preset). `success_rate = {}` turns it on with Envoy's values.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "table::option"
    )]
    pub success_rate: Option<SuccessRateConfig>,
    /// Eject above a failure percentage over an interval
    /// ([`OutlierDetection::failure_percentage_with`]); off by default (on
    /// with the Envoy preset).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "table::option"
    )]
    pub failure_percentage: Option<FailurePercentageConfig>,
    /// The share of the times each detector fires that it ejects
    /// ([`OutlierDetection::enforcing`]); default 100 for every detector
    /// (Envoy's with the Envoy preset).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "table::option"
    )]
    pub enforcing: Option<EnforcingConfig>,
    /// How often the statistical detectors judge
    /// ([`OutlierDetection::interval`]); default `"10s"`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::option"
    )]
    pub interval: Option<Duration>,
    /// The first ejection's length
    /// ([`OutlierDetection::base_ejection_time`]); default `"30s"`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::option"
    )]
    pub base_ejection: Option<Duration>,
    /// The longest ejection ([`OutlierDetection::max_ejection_time`]);
    /// default `"5m"`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::option"
    )]
    pub max_ejection: Option<Duration>,
    /// A random time up to this added to each ejection
    /// ([`OutlierDetection::max_ejection_time_jitter`]); default `"0s"`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::option"
    )]
    pub max_ejection_jitter: Option<Duration>,
    /// At most this percentage ejected at once
    /// ([`OutlierDetection::max_ejection_percent`]); default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<f64>,
    /// Whether one endpoint may always be ejected, however small
    /// `max_ejection_percent` of the set is
    /// ([`OutlierDetection::always_eject_one`]); default `true` (`false`
    /// with the Envoy preset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub always_eject_one: Option<bool>,
    /// Panic mode below this percentage healthy
    /// ([`OutlierDetection::panic_threshold`]); default 50, 0 turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panic_threshold: Option<f64>,
    /// `true`: only 502, 503 and 504 count as failure statuses
    /// ([`OutlierDetection::gateway_statuses_only`]); default every 5xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_statuses_only: Option<bool>,
}

/// The outlier-detection settings a config starts from, before its own.
///
/// ```
/// use tower_lb::{OutlierConfig, OutlierDetection, OutlierPreset};
///
/// let mut outlier = OutlierConfig::default();
/// outlier.preset = Some(OutlierPreset::Envoy);
/// let detection = outlier.to_outlier_detection()?;
/// assert_eq!(format!("{detection:?}"), format!("{:?}", OutlierDetection::envoy()));
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OutlierPreset {
    /// [`OutlierDetection::envoy`]: every detector as Envoy configures it.
    Envoy,
}

/// The success-rate detector's settings ([`SuccessRate`]); each left out
/// keeps its default (Envoy's: 1.9, 100, 5).
///
/// ```
/// use tower_lb::{OutlierConfig, SuccessRateConfig};
///
/// let mut success_rate = SuccessRateConfig::default();
/// success_rate.request_volume = Some(20);
/// let mut outlier = OutlierConfig::default();
/// outlier.success_rate = Some(success_rate);
/// assert!(outlier.to_outlier_detection().is_ok());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SuccessRateConfig {
    /// Eject below the mean by this many standard deviations
    /// ([`SuccessRate::stdev_factor`]); a finite number, 0 or more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdev_factor: Option<f64>,
    /// Requests an endpoint needs in the interval to be judged
    /// ([`SuccessRate::request_volume`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_volume: Option<u32>,
    /// Endpoints with enough requests the detector needs to judge any
    /// ([`SuccessRate::minimum_hosts`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_hosts: Option<u32>,
}

impl SuccessRateConfig {
    /// The [`SuccessRate`] this describes.
    fn to_success_rate(&self) -> SuccessRate {
        let mut settings = SuccessRate::default();
        if let Some(factor) = self.stdev_factor {
            settings = settings.stdev_factor(factor);
        }
        if let Some(requests) = self.request_volume {
            settings = settings.request_volume(requests);
        }
        if let Some(hosts) = self.minimum_hosts {
            settings = settings.minimum_hosts(hosts);
        }
        settings
    }
}

/// The failure-percentage detector's settings ([`FailurePercentage`]);
/// each left out keeps its default (Envoy's: 85, 50, 5).
///
/// ```
/// use tower_lb::{FailurePercentageConfig, OutlierConfig};
///
/// let mut outlier = OutlierConfig::default();
/// outlier.failure_percentage = Some(FailurePercentageConfig::new(50.0, 20));
/// assert!(outlier.to_outlier_detection().is_ok());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FailurePercentageConfig {
    /// Eject at or above this percentage of failed requests in an interval
    /// ([`FailurePercentage::threshold`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// ... if the endpoint had at least this many requests in it
    /// ([`FailurePercentage::request_volume`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u32>,
    /// ... and at least this many endpoints had
    /// ([`FailurePercentage::minimum_hosts`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_hosts: Option<u32>,
}

impl FailurePercentageConfig {
    /// Eject above `percent` failed, with at least `min_requests`.
    pub fn new(percent: f64, min_requests: u32) -> Self {
        FailurePercentageConfig {
            percent: Some(percent),
            min_requests: Some(min_requests),
            minimum_hosts: None,
        }
    }

    /// The [`FailurePercentage`] this describes.
    fn to_failure_percentage(&self) -> FailurePercentage {
        let mut settings = FailurePercentage::default();
        if let Some(percent) = self.percent {
            settings = settings.threshold(Percent::new(percent));
        }
        if let Some(requests) = self.min_requests {
            settings = settings.request_volume(requests);
        }
        if let Some(hosts) = self.minimum_hosts {
            settings = settings.minimum_hosts(hosts);
        }
        settings
    }
}

/// Enforcement percentages by detector ([`OutlierDetection::enforcing`]),
/// keyed by the [`Detector`]'s name in snake case (Envoy's names, as
/// [`Detector::envoy_name`] gives them, read too); each left out keeps its
/// default.
///
/// ```
/// let outlier: tower_lb::OutlierConfig = serde_json::from_str(
///     r#"{ "preset": "envoy", "enforcing": { "failure_percentage": 100, "consecutive_5xx": 50 } }"#,
/// )?;
/// let consecutive = outlier.enforcing.as_ref().and_then(|e| e.consecutive_failures);
/// assert_eq!(consecutive, Some(50.0));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct EnforcingConfig {
    /// [`Detector::ConsecutiveFailures`] (Envoy's `consecutive_5xx`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "consecutive_5xx"
    )]
    pub consecutive_failures: Option<f64>,
    /// [`Detector::ConsecutiveGatewayFailures`] (Envoy's
    /// `consecutive_gateway_failure`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "consecutive_gateway_failure"
    )]
    pub consecutive_gateway_failures: Option<f64>,
    /// [`Detector::ConsecutiveLocalOriginFailures`] (Envoy's
    /// `consecutive_local_origin_failure`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "consecutive_local_origin_failure"
    )]
    pub consecutive_local_origin_failures: Option<f64>,
    /// [`Detector::SuccessRate`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<f64>,
    /// [`Detector::FailurePercentage`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_percentage: Option<f64>,
    /// [`Detector::LocalOriginSuccessRate`] (Envoy's
    /// `success_rate_local_origin`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "success_rate_local_origin"
    )]
    pub local_origin_success_rate: Option<f64>,
    /// [`Detector::LocalOriginFailurePercentage`] (Envoy's
    /// `failure_percentage_local_origin`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "failure_percentage_local_origin"
    )]
    pub local_origin_failure_percentage: Option<f64>,
}

impl EnforcingConfig {
    /// Each detector, with the path of its field and its setting.
    fn by_detector(&self) -> [(&'static str, Detector, Option<f64>); 7] {
        [
            (
                "enforcing.consecutive_failures",
                Detector::ConsecutiveFailures,
                self.consecutive_failures,
            ),
            (
                "enforcing.consecutive_gateway_failures",
                Detector::ConsecutiveGatewayFailures,
                self.consecutive_gateway_failures,
            ),
            (
                "enforcing.consecutive_local_origin_failures",
                Detector::ConsecutiveLocalOriginFailures,
                self.consecutive_local_origin_failures,
            ),
            (
                "enforcing.success_rate",
                Detector::SuccessRate,
                self.success_rate,
            ),
            (
                "enforcing.failure_percentage",
                Detector::FailurePercentage,
                self.failure_percentage,
            ),
            (
                "enforcing.local_origin_success_rate",
                Detector::LocalOriginSuccessRate,
                self.local_origin_success_rate,
            ),
            (
                "enforcing.local_origin_failure_percentage",
                Detector::LocalOriginFailurePercentage,
                self.local_origin_failure_percentage,
            ),
        ]
    }
}

/// A streak threshold: `0` turns the detector off, as the builder has no
/// value for.
fn streak(detection: OutlierDetection, n: u32, detector: Detector) -> OutlierDetection {
    match (n, detector) {
        (0, _) => detection.without_streak(detector),
        (n, Detector::ConsecutiveGatewayFailures) => detection.consecutive_gateway_failures(n),
        (n, Detector::ConsecutiveLocalOriginFailures) => {
            detection.consecutive_local_origin_failures(n)
        }
        (n, _) => detection.consecutive_failures(n),
    }
}

impl OutlierConfig {
    /// The [`OutlierDetection`] this describes.
    ///
    /// Errors: [`Error::InvalidConfig`] naming the field (`max_ejection`).
    ///
    /// ```
    /// let outlier: tower_lb::OutlierConfig = serde_json::from_str(r#"{ "panic_threshold": 150 }"#)?;
    /// let error = outlier.to_outlier_detection().unwrap_err();
    /// assert_eq!(error.to_string(), "panic_threshold: panic_threshold must be 0 to 100 percent, not 150%");
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn to_outlier_detection(&self) -> Result<OutlierDetection, Error> {
        if self.enabled == Some(false) {
            let detector = [
                ("preset", self.preset.is_some()),
                ("consecutive_failures", self.consecutive_failures.is_some()),
                (
                    "consecutive_gateway_failures",
                    self.consecutive_gateway_failures.is_some(),
                ),
                (
                    "consecutive_local_origin_failures",
                    self.consecutive_local_origin_failures.is_some(),
                ),
                ("success_rate", self.success_rate.is_some()),
                ("failure_percentage", self.failure_percentage.is_some()),
            ];
            if let Some((field, _)) = detector.iter().find(|(_, set)| *set) {
                return Err(invalid(
                    *field,
                    "set while outlier detection is off (enabled = false)",
                ));
            }
        }
        let base = match (self.enabled, self.preset) {
            (Some(false), _) => OutlierDetection::disabled(),
            (_, Some(OutlierPreset::Envoy)) => OutlierDetection::envoy(),
            (_, None) => OutlierDetection::default(),
        };
        let mut checked = Checked::new(base, OutlierDetection::validate)
            .set("consecutive_failures", self.consecutive_failures, |d, n| {
                streak(d, n, Detector::ConsecutiveFailures)
            })
            .set(
                "consecutive_gateway_failures",
                self.consecutive_gateway_failures,
                |d, n| streak(d, n, Detector::ConsecutiveGatewayFailures),
            )
            .set(
                "consecutive_local_origin_failures",
                self.consecutive_local_origin_failures,
                |d, n| streak(d, n, Detector::ConsecutiveLocalOriginFailures),
            )
            .set(
                "split_local_origin_errors",
                self.split_local_origin_errors,
                OutlierDetection::split_local_origin_errors,
            )
            .set(
                "success_rate.stdev_factor",
                self.success_rate.as_ref(),
                |d, s| d.success_rate(s.to_success_rate()),
            )
            .set(
                "failure_percentage.percent",
                self.failure_percentage.as_ref(),
                |d, p| d.failure_percentage_with(p.to_failure_percentage()),
            );
        let enforcing = self.enforcing.as_ref().map(EnforcingConfig::by_detector);
        for (field, detector, percent) in enforcing.into_iter().flatten() {
            checked = checked.set(field, percent, |d, p| {
                d.enforcing(detector, Percent::new(p))
            });
        }
        checked
            .set("interval", self.interval, OutlierDetection::interval)
            .set(
                "base_ejection",
                self.base_ejection,
                OutlierDetection::base_ejection_time,
            )
            .set(
                "max_ejection",
                self.max_ejection,
                OutlierDetection::max_ejection_time,
            )
            .set(
                "max_ejection_jitter",
                self.max_ejection_jitter,
                OutlierDetection::max_ejection_time_jitter,
            )
            .set("max_ejection_percent", self.max_ejection_percent, |d, p| {
                d.max_ejection_percent(Percent::new(p))
            })
            .set(
                "always_eject_one",
                self.always_eject_one,
                OutlierDetection::always_eject_one,
            )
            .set("panic_threshold", self.panic_threshold, |d, p| {
                d.panic_threshold(Percent::new(p))
            })
            .set(
                "gateway_statuses_only",
                self.gateway_statuses_only.filter(|&only| only),
                |d, _| d.gateway_statuses_only(),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enforcing_names_every_passive_detector_once_in_order() {
        let detectors = EnforcingConfig::default()
            .by_detector()
            .map(|(_, detector, _)| detector);
        // An active check's verdict is always enforced: it has no share.
        let passive: Vec<Detector> = Detector::ALL
            .into_iter()
            .filter(|&d| d != Detector::ActiveCheck)
            .collect();
        assert_eq!(detectors.to_vec(), passive);
    }
}
