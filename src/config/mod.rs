//! A balancer from configuration (feature `serde`): [`BalancerConfig`]
//! holds every setting the [`BalancerBuilder`] takes in code, as data that
//! serde reads from TOML, YAML, JSON or any other format, and writes back.
//!
//! - **The builder decides.** A config is turned into builder calls
//!   (`BalancerBuilder`, [`Policy`](crate::Policy),
//!   [`OutlierDetection`](crate::OutlierDetection),
//!   [`Retries`](crate::Retries), [`Hedging`](crate::Hedging),
//!   [`Overload`](crate::Overload), [`DnsSource`](crate::DnsSource),
//!   [`EtcdSource`](crate::EtcdSource)); defaults and rules are theirs.
//!   Active health checks need the service they go through, so code
//!   starts them: [`BalancerConfig::health_checks`] gives the
//!   [`ActiveHealthCheck`](crate::ActiveHealthCheck).
//!   A setting left out is a builder method not called.
//! - **Every mistake names its field.** Reading goes through
//!   `serde_path_to_error` ([`BalancerConfig::from_deserializer`]), so a
//!   bad value in any format reports its path (`outlier.base_ejection:
//!   invalid duration "3x" ...`); unknown fields are refused with theirs.
//!   What only building finds (an unusable URL, a percentage above 100, a
//!   maximum below a minimum) is reported at the field the builder's check
//!   first fails on, as [`Error::InvalidConfig`].
//! - **No format crate here.** A service reads the balancer's settings
//!   with the rest of its own, in its format and with its version of the
//!   format crate; `BalancerConfig` is a `Deserialize` value like any
//!   other, and [`BalancerConfig::from_deserializer`] takes any
//!   deserializer.
//! - **Round trip.** Serializing a config and reading it back gives an
//!   equal config (`PartialEq`): durations are written as humantime text
//!   (`"1m 30s"`), settings left out stay left out.
//!
//! docs/configuration.md has the whole schema.

mod checks;
mod discovery;
mod duration;
mod endpoint;
mod hedge;
mod named;
mod outlier;
mod overload;
mod policy;
mod retry;
mod slow_start;
mod table;

use std::collections::HashSet;
use std::fmt::Display;

use serde::de::DeserializeSeed;
use serde::{Deserialize, Deserializer, Serialize};

pub use checks::{HealthCheckConfig, StatusRange};
pub use discovery::{DiscoveryConfig, DnsConfig, EtcdConfig, IpFamily};
pub use endpoint::EndpointConfig;
pub use hedge::HedgeConfig;
pub use outlier::{
    EnforcingConfig, FailurePercentageConfig, OutlierConfig, OutlierPreset, SuccessRateConfig,
};
pub use overload::OverloadConfig;
pub use policy::{FallbackConfig, HashConfig, KeySourceConfig, LeastTimeConfig, PolicyConfig};
pub use retry::{RetryBudgetConfig, RetryConfig};
pub use slow_start::SlowStartConfig;

use crate::balancer::{Balancer, BalancerBuilder};
use crate::discovery::Discovery;
use crate::error::Error;
use crate::health::ActiveHealthCheck;

/// Every setting of a [`Balancer`], as data: read it with serde from a
/// configuration file (TOML, YAML, JSON, ...), then
/// [`build`](BalancerConfig::build) the balancer.
///
/// Each field left out keeps the builder's default. The same balancer in
/// TOML and in code:
///
/// ```
/// use std::time::Duration;
/// use tower_lb::{Balancer, BalancerConfig, Endpoint, OutlierDetection, Policy, RequestKey};
///
/// let text = r#"
///     [[endpoints]]
///     url = "http://127.0.0.1:8081"
///     weight = 3
///     labels = { zone = "a" }
///
///     [[endpoints]]
///     url = "http://127.0.0.1:8082"
///
///     [policy.maglev]
///     key = [{ header = "x-user-id" }]
///     bounded_loads = true
///
///     [outlier]
///     consecutive_failures = 3
///     base_ejection = "10s"
/// "#;
/// let config = BalancerConfig::from_deserializer(toml::Deserializer::parse(text)?)?;
/// let from_file = config.build()?;
///
/// let in_code = Balancer::builder()
///     .endpoint(Endpoint::new("http://127.0.0.1:8081").with_weight(3).with_label("zone", "a"))
///     .endpoint("http://127.0.0.1:8082")
///     .policy(Policy::maglev().key(RequestKey::header("x-user-id")).bounded_loads())
///     .outlier_detection(
///         OutlierDetection::default()
///             .consecutive_failures(3)
///             .base_ejection_time(Duration::from_secs(10)),
///     )
///     .build()?;
/// assert_eq!(format!("{from_file:?}"), format!("{in_code:?}"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// A config can be part of a service's own settings: it is a `Deserialize`
/// value like any other (wrap the whole read in `serde_path_to_error` to
/// get paths from the top of the document).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BalancerConfig {
    /// Seeds the balancer's random choices ([`BalancerBuilder::seed`]):
    /// for tests and replays. (TOML integers stop at 2⁶³ − 1.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The static endpoints ([`BalancerBuilder::endpoint`]); with
    /// discovery, they serve until its first set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointConfig>,
    /// The selection policy ([`BalancerBuilder::policy`]); left out,
    /// smooth weighted round robin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyConfig>,
    /// Outlier detection ([`BalancerBuilder::outlier_detection`]); left
    /// out, Envoy's defaults.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "table::option"
    )]
    pub outlier: Option<OutlierConfig>,
    /// Retries and their budget ([`BalancerBuilder::retry`]); left out,
    /// connect errors and closed connections within a 20% budget.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "table::option"
    )]
    pub retry: Option<RetryConfig>,
    /// Slow start ([`BalancerBuilder::slow_start`]); left out, off.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "table::option"
    )]
    pub slow_start: Option<SlowStartConfig>,
    /// Where endpoints come from at runtime ([`Balancer::discover`]): DNS
    /// (feature `dns`) or etcd (feature `etcd`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "table::option"
    )]
    pub discovery: Option<DiscoveryConfig>,
    /// Hedged requests ([`BalancerBuilder::hedge`]); left out, none.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "table::option"
    )]
    pub hedge: Option<HedgeConfig>,
    /// Overload signals ([`BalancerBuilder::overload`]); left out, on with
    /// a 5 s penalty and a 5 min cap.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "table::option"
    )]
    pub overload: Option<OverloadConfig>,
    /// Active health checks, started by code with the service they go
    /// through: see [`BalancerConfig::health_checks`].
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "table::option"
    )]
    pub health_checks: Option<HealthCheckConfig>,
}

impl BalancerConfig {
    /// Reads a config from any serde deserializer, naming the path of the
    /// first bad or unknown field in the error:
    /// [`Error::InvalidConfig`], whose reason is the format's own message
    /// (a format that reads text adds where: `at line 3 column 17`).
    ///
    /// ```
    /// use tower_lb::{BalancerConfig, Error};
    ///
    /// let json = serde_json::json!({ "outlier": { "base_ejection": "3x" } });
    /// let error = BalancerConfig::from_deserializer(json).unwrap_err();
    /// assert!(matches!(&error, Error::InvalidConfig { path, .. } if path == "outlier.base_ejection"));
    /// assert!(error.to_string().starts_with(r#"outlier.base_ejection: invalid duration "3x""#));
    /// ```
    pub fn from_deserializer<'de, D>(deserializer: D) -> Result<Self, Error>
    where
        D: Deserializer<'de>,
        D::Error: Display,
    {
        let mut track = serde_path_to_error::Track::new();
        let tracked = serde_path_to_error::Deserializer::new(deserializer, &mut track);
        table::Table::new().deserialize(tracked).map_err(|error| {
            let path = track.path().to_string();
            let reason = without_path(error.to_string(), &path);
            Error::InvalidConfig { path, reason }
        })
    }

    /// A [`BalancerBuilder`] with every setting of this config but
    /// discovery and health checks, for code to add what a file cannot say (a
    /// policy of its own, a health-event callback) before building.
    ///
    /// Errors: [`Error::InvalidConfig`] naming the first unusable field.
    ///
    /// ```
    /// use tower_lb::{BalancerConfig, EndpointConfig, OutlierConfig};
    ///
    /// let mut config = BalancerConfig::default();
    /// config.endpoints.push(EndpointConfig::new("http://127.0.0.1:8081"));
    /// let mut outlier = OutlierConfig::default();
    /// outlier.consecutive_failures = Some(3);
    /// config.outlier = Some(outlier.clone());
    /// let balancer = config
    ///     .builder()?
    ///     .outlier_detection(outlier.to_outlier_detection()?.on_event(|e| eprintln!("{e:?}")))
    ///     .build()?;
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    pub fn builder(&self) -> Result<BalancerBuilder, Error> {
        let mut builder = Balancer::builder();
        let mut seen = HashSet::with_capacity(self.endpoints.len());
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let (url, ..) = endpoint
                .to_endpoint()
                .parse()
                .map_err(|error| within(&format!("endpoints[{i}]"), endpoint.place(error)))?;
            if !seen.insert(url.as_str().to_owned()) {
                let twice = Error::DuplicateEndpoint {
                    url: url.as_str().to_owned(),
                };
                return Err(invalid(format!("endpoints[{i}].url"), twice.to_string()));
            }
            builder = builder.endpoint(endpoint.to_endpoint());
        }
        if let Some(policy) = &self.policy {
            let policy = policy.to_policy().map_err(|e| within("policy", e))?;
            builder = builder.policy(policy);
        }
        if let Some(outlier) = &self.outlier {
            let detection = outlier
                .to_outlier_detection()
                .map_err(|e| within("outlier", e))?;
            builder = builder.outlier_detection(detection);
        }
        if let Some(retry) = &self.retry {
            let retries = retry.to_retries().map_err(|e| within("retry", e))?;
            builder = builder.retry(retries);
        }
        if let Some(hedge) = &self.hedge {
            let hedging = hedge.to_hedging().map_err(|e| within("hedge", e))?;
            builder = builder.hedge(hedging);
        }
        if let Some(overload) = &self.overload {
            let overload = overload.to_overload().map_err(|e| within("overload", e))?;
            builder = builder.overload(overload);
        }
        if let Some(slow_start) = &self.slow_start {
            let slow_start = (slow_start.to_slow_start()).map_err(|e| within("slow_start", e))?;
            builder = builder.slow_start(slow_start);
        }
        if let Some(seed) = self.seed {
            builder = builder.seed(seed);
        }
        Ok(builder)
    }

    /// Builds the balancer, and starts its discovery if the config has
    /// one (which needs a tokio runtime: [`Error::NoRuntime`] outside
    /// one). [`BalancerConfig::build_with_discovery`] also returns the
    /// [`Discovery`] handle, to wait for the first set.
    ///
    /// Errors: [`Error::InvalidConfig`] naming the first unusable field,
    /// including a discovery source whose cargo feature this build lacks
    /// (`discovery.dns: DNS discovery needs tower-lb's cargo feature "dns"`).
    ///
    /// ```
    /// let config: tower_lb::BalancerConfig = serde_json::from_str(
    ///     r#"{ "endpoints": [{ "url": "http://127.0.0.1:8081" }], "policy": "round_robin" }"#,
    /// )?;
    /// let balancer = config.build()?;
    /// assert_eq!(balancer.stats().endpoints.len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn build(&self) -> Result<Balancer, Error> {
        self.build_with_discovery().map(|(balancer, _)| balancer)
    }

    /// [`BalancerConfig::build`], returning the handle of the discovery it
    /// started (`None` without one), whose [`Discovery::ready_within`]
    /// waits for the first set.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let text = std::fs::read_to_string("balancer.toml")?;
    /// let config = tower_lb::BalancerConfig::from_deserializer(toml::Deserializer::parse(&text)?)?;
    /// let (balancer, discovery) = config.build_with_discovery()?;
    /// if let Some(discovery) = discovery {
    ///     discovery.ready_within(Duration::from_secs(5)).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn build_with_discovery(&self) -> Result<(Balancer, Option<Discovery>), Error> {
        if let Some(discovery) = &self.discovery {
            discovery.check().map_err(|e| within("discovery", e))?;
        }
        // Started by code, but a mistake in them is found with the rest.
        self.health_checks()?;
        let balancer = self.builder()?.build().map_err(|error| match error {
            Error::InvalidPolicy { reason } => invalid("policy", reason),
            Error::InvalidConfig { .. } | Error::NoRuntime => error,
            other => invalid("endpoints", other.to_string()),
        })?;
        let discovery = match &self.discovery {
            Some(discovery) => discovery.start(&balancer)?,
            None => None,
        };
        Ok((balancer, discovery))
    }

    /// The config's active health check (`None` without a
    /// `[health_checks]` section), for code to start with the service the
    /// checks go through, which a file cannot name:
    /// [`Balancer::health_checks`] (one inner service for every endpoint),
    /// [`PerEndpointService::health_checks`](crate::PerEndpointService::health_checks),
    /// or, for a gRPC check, `BalancedChannel::health_checks`.
    /// [`BalancerConfig::build`] checks this section too, without starting
    /// anything.
    ///
    /// Errors: [`Error::InvalidConfig`] naming the field
    /// (`health_checks.interval: the interval and the timeout must be above
    /// zero`).
    ///
    /// ```
    /// # #[cfg(feature = "reqwest")]
    /// use tower_lb::{BalancerConfig, HttpToReqwest};
    ///
    /// # #[cfg(not(feature = "reqwest"))]
    /// # fn main() {}
    /// # #[cfg(feature = "reqwest")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let text = r#"
    ///     endpoints = ["http://127.0.0.1:8081", "http://127.0.0.1:8082"]
    ///
    ///     [health_checks]
    ///     path = "/healthz"
    ///     interval = "5s"
    /// "#;
    /// let config = BalancerConfig::from_deserializer(toml::Deserializer::parse(text)?)?;
    /// let balancer = config.build()?;
    /// let inner = HttpToReqwest::new(reqwest::Client::new());
    /// if let Some(check) = config.health_checks()? {
    ///     balancer.health_checks::<_, reqwest::Body>(check, inner.clone())?;
    /// }
    /// let client = tower::ServiceBuilder::new().layer(balancer.layer()).service(inner);
    /// # let _ = client;
    /// # Ok(())
    /// # }
    /// ```
    pub fn health_checks(&self) -> Result<Option<ActiveHealthCheck>, Error> {
        (self.health_checks.as_ref())
            .map(|section| (section.to_health_check()).map_err(|e| within("health_checks", e)))
            .transpose()
    }
}

/// A format's message without the path it starts with, if it does: YAML's
/// start with the path of the value being read, which is the field's own
/// (`retry.max_retries: invalid type ...`) or, for an unknown field, the
/// table holding it (`outlier: unknown field ...` at
/// `outlier.base_ejection_time`). `path` now says where.
fn without_path(reason: String, path: &str) -> String {
    let mut place = path;
    loop {
        if let Some(rest) = (reason.strip_prefix(place)).and_then(|r| r.strip_prefix(": ")) {
            return rest.to_owned();
        }
        // The table or list holding `place`, if there is one.
        match (place.rfind(['.', '['])).and_then(|end| place.get(..end)) {
            Some(holder) if !holder.is_empty() => place = holder,
            _ => return reason,
        }
    }
}

/// An [`Error::InvalidConfig`].
pub(crate) fn invalid(path: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::InvalidConfig {
        path: path.into(),
        reason: reason.into(),
    }
}

/// `error` seen from `prefix` up: a config error's path gets `prefix` in
/// front; other errors pass unchanged.
pub(crate) fn within(prefix: &str, error: Error) -> Error {
    match error {
        Error::InvalidConfig { path, reason } => {
            let path = if path.is_empty() || path == "." {
                prefix.to_owned()
            } else if path.starts_with('[') {
                format!("{prefix}{path}")
            } else {
                format!("{prefix}.{path}")
            };
            Error::InvalidConfig { path, reason }
        }
        other => other,
    }
}

/// The words of a builder's error, without the part the path now says.
fn reason_of(error: &Error) -> String {
    match error {
        Error::InvalidPolicy { reason } => [
            "outlier detection: ",
            "retry: ",
            "hedge: ",
            "active health check: ",
        ]
        .iter()
        .find_map(|prefix| reason.strip_prefix(prefix))
        .unwrap_or(reason)
        .to_owned(),
        other => other.to_string(),
    }
}

/// Settings applied to a builder value one at a time, its own check run
/// after each, so that a mistake is blamed on the field it first shows at.
///
/// The rules stay the builder's: nothing here knows what a valid value is.
/// If the whole fails, the field blamed is the first after which the check
/// failed for the same reason; when no single field did (two settings that
/// only clash together, caught after the last), it is the last of them.
pub(crate) struct Checked<T, C> {
    value: T,
    check: C,
    /// For each field applied, the check's reason when it failed then.
    seen: Vec<(&'static str, Option<String>)>,
}

impl<T, C> Checked<T, C>
where
    C: Fn(&T) -> Result<(), Error>,
{
    pub(crate) fn new(value: T, check: C) -> Self {
        Checked {
            value,
            check,
            seen: Vec::new(),
        }
    }

    /// Applies `set` with the value of `field`, if it is there.
    pub(crate) fn set<V>(
        mut self,
        field: &'static str,
        value: Option<V>,
        set: impl FnOnce(T, V) -> T,
    ) -> Self {
        if let Some(value) = value {
            self.value = set(self.value, value);
            let failed = (self.check)(&self.value).err().map(|e| reason_of(&e));
            self.seen.push((field, failed));
        }
        self
    }

    /// The value with every field applied, or the error at the field to
    /// blame.
    pub(crate) fn finish(self) -> Result<T, Error> {
        let Err(error) = (self.check)(&self.value) else {
            return Ok(self.value);
        };
        let reason = reason_of(&error);
        let field = (self.seen.iter())
            .find(|(_, failed)| failed.as_deref() == Some(reason.as_str()))
            .or(self.seen.last())
            .map_or("", |(field, _)| field);
        Err(invalid(field, reason))
    }
}
