//! Active health checks as configuration.
//!
//! A check needs the service it is sent through, which a file cannot
//! give: [`BalancerConfig::health_checks`](super::BalancerConfig::health_checks)
//! turns the section into an [`ActiveHealthCheck`] for code to start.

use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

use http::Method;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{duration, invalid, Checked};
use crate::error::Error;
use crate::health::ActiveHealthCheck;

/// Active health checks ([`ActiveHealthCheck`]): an HTTP request to each
/// endpoint's `path` on an interval, or, with `grpc_service` (feature
/// `tonic`), gRPC's health-checking protocol. Each setting left out keeps
/// the builder's default.
///
/// ```toml
/// [health_checks]
/// path = "/healthz"                        # required, unless grpc_service
/// method = "GET"
/// expected_statuses = [200, "300-399"]     # codes and "first-last" ranges; default ["200-299"]
/// interval = "10s"
/// interval_jitter = "1s"                   # default a tenth of the interval
/// timeout = "1s"
/// unhealthy_threshold = 3
/// healthy_threshold = 2
/// concurrency = 8
/// ```
///
/// The checks go through a service of the caller's, so building a
/// balancer does not start them: get the check with
/// [`BalancerConfig::health_checks`](super::BalancerConfig::health_checks)
/// and start it.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::{ActiveHealthCheck, HealthCheckConfig};
///
/// let section: HealthCheckConfig =
///     serde_json::from_str(r#"{ "path": "/healthz", "interval": "5s", "expected_statuses": [200, "204-206"] }"#)?;
/// let in_code = ActiveHealthCheck::new("/healthz")
///     .expected_statuses([200..=200, 204..=206])
///     .interval(Duration::from_secs(5));
/// assert_eq!(format!("{:?}", section.to_health_check()?), format!("{in_code:?}"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HealthCheckConfig {
    /// The path checked, appended to each endpoint's URL
    /// ([`ActiveHealthCheck::new`]); required for an HTTP check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The check's method ([`ActiveHealthCheck::method`]); default `"GET"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The statuses that pass ([`ActiveHealthCheck::expected_statuses`]):
    /// codes (`200`) and ranges (`"200-299"`, both ends included); default
    /// `["200-299"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_statuses: Option<Vec<StatusRange>>,
    /// How often each endpoint is checked ([`ActiveHealthCheck::interval`]);
    /// default `"10s"`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::option"
    )]
    pub interval: Option<Duration>,
    /// A random wait up to this added to each check's time
    /// ([`ActiveHealthCheck::interval_jitter`]); default a tenth of the
    /// interval.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::option"
    )]
    pub interval_jitter: Option<Duration>,
    /// A check with no answer by then fails
    /// ([`ActiveHealthCheck::timeout`]); default `"1s"`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::option"
    )]
    pub timeout: Option<Duration>,
    /// Failed checks in a row that take an endpoint out
    /// ([`ActiveHealthCheck::unhealthy_threshold`]); default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
    /// Passed checks in a row that bring it back
    /// ([`ActiveHealthCheck::healthy_threshold`]); default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    /// Checks in flight at once, at most
    /// ([`ActiveHealthCheck::concurrency`]); default 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// A gRPC health check of this service (`""`: the server as a whole),
    /// `ActiveHealthCheck::grpc` (feature `tonic`), started with
    /// `BalancedChannel::health_checks`; its path, method and statuses are
    /// the protocol's, so none of them is given beside it. In a build
    /// without `tonic`, an error naming the feature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_service: Option<String>,
}

/// Statuses that pass a check, both ends included: written as a code
/// (`200`) when it is one, else as text, `"200-299"`.
///
/// ```
/// use tower_lb::{HealthCheckConfig, StatusRange};
///
/// let section: HealthCheckConfig =
///     serde_json::from_str(r#"{ "path": "/", "expected_statuses": [204, "200-202"] }"#)?;
/// assert_eq!(
///     section.expected_statuses,
///     Some(vec![StatusRange::code(204), StatusRange::new(200, 202)])
/// );
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusRange {
    /// The first status that passes.
    pub first: u16,
    /// The last status that passes.
    pub last: u16,
}

impl StatusRange {
    /// The statuses `first` to `last`, both included.
    pub fn new(first: u16, last: u16) -> Self {
        StatusRange { first, last }
    }

    /// One status.
    pub fn code(code: u16) -> Self {
        StatusRange::new(code, code)
    }

    fn range(self) -> RangeInclusive<u16> {
        self.first..=self.last
    }
}

/// What a status range looks like, for error messages.
const EXPECTED_STATUS: &str = "a status code, as 200, or a range, as \"200-299\"";

impl Serialize for StatusRange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.first == self.last {
            serializer.serialize_u16(self.first)
        } else {
            serializer.collect_str(&format_args!("{}-{}", self.first, self.last))
        }
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StatusVisitor)
    }
}

struct StatusVisitor;

impl Visitor<'_> for StatusVisitor {
    type Value = StatusRange;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTED_STATUS)
    }

    fn visit_u64<E: de::Error>(self, code: u64) -> Result<StatusRange, E> {
        u16::try_from(code).map(StatusRange::code).map_err(|_| {
            E::custom(format!(
                "invalid status {code} (expected {EXPECTED_STATUS})"
            ))
        })
    }

    fn visit_i64<E: de::Error>(self, code: i64) -> Result<StatusRange, E> {
        u64::try_from(code)
            .map_err(|_| {
                E::custom(format!(
                    "invalid status {code} (expected {EXPECTED_STATUS})"
                ))
            })
            .and_then(|code| self.visit_u64(code))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<StatusRange, E> {
        let code = |part: &str| part.trim().parse::<u16>().ok();
        let parsed = match text.split_once('-') {
            Some((first, last)) => code(first).zip(code(last)),
            None => code(text).map(|c| (c, c)),
        };
        parsed
            .map(|(first, last)| StatusRange::new(first, last))
            .ok_or_else(|| {
                E::custom(format!(
                    "invalid status {text:?} (expected {EXPECTED_STATUS})"
                ))
            })
    }
}

impl HealthCheckConfig {
    /// The [`ActiveHealthCheck`] this describes.
    ///
    /// Errors: [`Error::InvalidConfig`] naming the field (`interval`), a
    /// missing `path`, or `grpc_service` in a build without feature
    /// `tonic`.
    ///
    /// ```
    /// let section: tower_lb::HealthCheckConfig =
    ///     serde_json::from_str(r#"{ "path": "/healthz", "unhealthy_threshold": 0 }"#)?;
    /// let error = section.to_health_check().unwrap_err();
    /// assert_eq!(error.to_string(), "unhealthy_threshold: the thresholds must be at least 1");
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn to_health_check(&self) -> Result<ActiveHealthCheck, Error> {
        let start = match (&self.grpc_service, &self.path) {
            (Some(service), _) => self.grpc(service)?,
            (None, Some(path)) => ActiveHealthCheck::new(path.clone()),
            (None, None) => {
                return Err(invalid(
                    "path",
                    "required: give path (an HTTP check) or grpc_service (a gRPC check)",
                ))
            }
        };
        let method = match &self.method {
            Some(name) => Some(
                Method::from_bytes(name.as_bytes())
                    .map_err(|_| invalid("method", format!("{name:?} is not an HTTP method")))?,
            ),
            None => None,
        };
        let statuses = (self.expected_statuses.as_ref())
            .map(|ranges| ranges.iter().map(|r| r.range()).collect::<Vec<_>>());
        Checked::new(start, ActiveHealthCheck::validate)
            // The path is the check's own; blamed if the check fails at once.
            .set("path", self.path.as_ref().map(|_| ()), |check, _| check)
            .set("method", method, ActiveHealthCheck::method)
            .set(
                "expected_statuses",
                statuses,
                ActiveHealthCheck::expected_statuses,
            )
            .set("interval", self.interval, ActiveHealthCheck::interval)
            .set(
                "interval_jitter",
                self.interval_jitter,
                ActiveHealthCheck::interval_jitter,
            )
            .set("timeout", self.timeout, ActiveHealthCheck::timeout)
            .set(
                "unhealthy_threshold",
                self.unhealthy_threshold,
                ActiveHealthCheck::unhealthy_threshold,
            )
            .set(
                "healthy_threshold",
                self.healthy_threshold,
                ActiveHealthCheck::healthy_threshold,
            )
            .set(
                "concurrency",
                self.concurrency,
                ActiveHealthCheck::concurrency,
            )
            .finish()
    }

    /// A gRPC check of `service`, the protocol's path, method and statuses
    /// left alone.
    fn grpc(&self, service: &str) -> Result<ActiveHealthCheck, Error> {
        let protocols = [
            ("path", self.path.is_some()),
            ("method", self.method.is_some()),
            ("expected_statuses", self.expected_statuses.is_some()),
        ];
        if let Some((field, _)) = protocols.iter().find(|(_, set)| *set) {
            return Err(invalid(
                *field,
                "a gRPC check's path, method and statuses are the protocol's: leave it out with grpc_service",
            ));
        }
        #[cfg(feature = "tonic")]
        return Ok(ActiveHealthCheck::grpc(service));
        #[cfg(not(feature = "tonic"))]
        {
            let _ = service;
            Err(invalid(
                "grpc_service",
                "gRPC health checks need tower-lb's cargo feature \"tonic\", which this build does not have",
            ))
        }
    }
}
