//! Outlier detection as configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{duration, invalid, table, Checked};
use crate::error::Error;
use crate::health::OutlierDetection;
use crate::percent::Percent;

/// Outlier detection ([`OutlierDetection`]); each setting left out keeps
/// its default (Envoy's). Percentages are on the 0 to 100 scale.
///
/// ```toml
/// [outlier]
/// consecutive_failures = 5            # 0: this detector off
/// consecutive_gateway_failures = 3    # off unless set
/// failure_percentage = { percent = 50, min_requests = 20 }
/// interval = "10s"
/// base_ejection = "30s"
/// max_ejection = "5m"
/// max_ejection_percent = 10
/// panic_threshold = 50
/// gateway_statuses_only = false
/// ```
///
/// `enabled = false` is [`OutlierDetection::disabled`]: nothing is ever
/// ejected, and setting a detector beside it is an error.
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
    /// Eject after this many failures in a row
    /// ([`OutlierDetection::consecutive_failures`]); default 5, 0 turns
    /// this detector off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// Eject after this many gateway failures in a row
    /// ([`OutlierDetection::consecutive_gateway_failures`]); off by
    /// default, and 0 leaves it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_failures: Option<u32>,
    /// Eject above a failure percentage over an interval
    /// ([`OutlierDetection::failure_percentage`]); off by default.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "table::option"
    )]
    pub failure_percentage: Option<FailurePercentageConfig>,
    /// The failure-percentage interval ([`OutlierDetection::interval`]);
    /// default `"10s"`.
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
    /// At most this percentage ejected at once
    /// ([`OutlierDetection::max_ejection_percent`]); default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<f64>,
    /// Panic mode below this percentage healthy
    /// ([`OutlierDetection::panic_threshold`]); default 50, 0 turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panic_threshold: Option<f64>,
    /// `true`: only 502, 503 and 504 count as failure statuses
    /// ([`OutlierDetection::gateway_statuses_only`]); default every 5xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_statuses_only: Option<bool>,
}

/// The failure-percentage detector's two settings.
///
/// ```
/// use tower_lb::{FailurePercentageConfig, OutlierConfig};
///
/// let mut outlier = OutlierConfig::default();
/// outlier.failure_percentage = Some(FailurePercentageConfig::new(50.0, 20));
/// assert!(outlier.to_outlier_detection().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FailurePercentageConfig {
    /// Eject above this percentage of failed requests in an interval.
    pub percent: f64,
    /// ... if the endpoint had at least this many requests in it.
    pub min_requests: u32,
}

impl FailurePercentageConfig {
    /// Eject above `percent` failed, with at least `min_requests`.
    pub fn new(percent: f64, min_requests: u32) -> Self {
        FailurePercentageConfig {
            percent,
            min_requests,
        }
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
                ("consecutive_failures", self.consecutive_failures.is_some()),
                (
                    "consecutive_gateway_failures",
                    self.consecutive_gateway_failures.is_some(),
                ),
                ("failure_percentage", self.failure_percentage.is_some()),
            ];
            if let Some((field, _)) = detector.iter().find(|(_, set)| *set) {
                return Err(invalid(
                    *field,
                    "set while outlier detection is off (enabled = false)",
                ));
            }
        }
        let base = if self.enabled == Some(false) || self.consecutive_failures == Some(0) {
            OutlierDetection::disabled()
        } else {
            OutlierDetection::default()
        };
        let on = |n: &u32| *n > 0;
        let percentage = self.failure_percentage.as_ref();
        Checked::new(base, OutlierDetection::validate)
            .set(
                "consecutive_failures",
                self.consecutive_failures.filter(on),
                OutlierDetection::consecutive_failures,
            )
            .set(
                "consecutive_gateway_failures",
                self.consecutive_gateway_failures.filter(on),
                OutlierDetection::consecutive_gateway_failures,
            )
            .set("failure_percentage.percent", percentage, |d, p| {
                d.failure_percentage(Percent::new(p.percent), p.min_requests)
            })
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
            .set("max_ejection_percent", self.max_ejection_percent, |d, p| {
                d.max_ejection_percent(Percent::new(p))
            })
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
