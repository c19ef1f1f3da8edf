//! Discovery as configuration: a DNS name or an etcd prefix.
//!
//! The types are always there (with `serde`), so that a config naming a
//! source reads the same in every build; building one whose cargo feature
//! is off is an error naming the field and the feature, never a silent
//! static set.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{duration, invalid, table, within};
use crate::balancer::Balancer;
use crate::discovery::Discovery;
use crate::error::Error;

/// Where endpoints come from at runtime ([`Balancer::discover`]): one of
/// `dns` (feature `dns`) and `etcd` (feature `etcd`). Each set the source
/// yields replaces the static `endpoints`.
///
/// ```toml
/// [discovery.dns]
/// name = "api.internal"
/// port = 8080
/// refresh_min = "1s"
/// refresh_max = "30s"
/// ```
///
/// ```
/// let config: tower_lb::BalancerConfig = serde_json::from_str(
///     r#"{ "discovery": { "dns": { "name": "api.internal", "port": 8080 } } }"#,
/// )?;
/// let dns = config.discovery.as_ref().and_then(|d| d.dns.as_ref());
/// assert_eq!(dns.and_then(|dns| dns.port), Some(8080));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DiscoveryConfig {
    /// Endpoints from DNS ([`DnsSource`](crate::DnsSource)).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "table::option"
    )]
    pub dns: Option<DnsConfig>,
    /// Endpoints from etcd ([`EtcdSource`](crate::EtcdSource)).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "table::option"
    )]
    pub etcd: Option<EtcdConfig>,
}

/// A DNS source: the A/AAAA records of `name` on `port`, or the SRV
/// records of `service`; each setting left out keeps its default.
///
/// ```
/// use tower_lb::{BalancerConfig, DiscoveryConfig, DnsConfig, Error};
///
/// let mut dns = DnsConfig::default();
/// dns.name = Some("api.internal".into()); // and no port
/// let mut discovery = DiscoveryConfig::default();
/// discovery.dns = Some(dns);
/// let mut config = BalancerConfig::default();
/// config.discovery = Some(discovery);
/// let error = config.build().unwrap_err();
/// assert!(matches!(&error, Error::InvalidConfig { path, .. } if path.starts_with("discovery.dns")));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DnsConfig {
    /// A name whose A and AAAA records are the endpoints, on `port`
    /// (`DnsSource::addresses`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The port of `name`'s addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// A name whose SRV records give the endpoints, their ports and
    /// weights (`DnsSource::service`), instead of `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// `true`: the endpoints are `https://` (`DnsSource::https`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https: Option<bool>,
    /// Which address records to ask for; default both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpFamily>,
    /// The shortest wait between look-ups (`DnsSource::refresh_between`);
    /// default `"1s"`, at least 100 ms.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::option"
    )]
    pub refresh_min: Option<Duration>,
    /// The longest wait between look-ups, whatever the TTL; default `"30s"`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::option"
    )]
    pub refresh_max: Option<Duration>,
    /// How long one query waits for an answer (`DnsSource::query_timeout`);
    /// default `"2s"`, kept within 10 ms to 1 hour.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::option"
    )]
    pub query_timeout: Option<Duration>,
    /// How many times a failed query is retried; default 2, at most 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_retries: Option<usize>,
    /// A name server to ask (`"127.0.0.1:53"`) instead of the system's
    /// (`DnsSource::name_server`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_server: Option<SocketAddr>,
}

/// Which address records a DNS source asks for: `"both"`, `"ipv4"` or
/// `"ipv6"`.
///
/// ```
/// let dns: tower_lb::DnsConfig =
///     serde_json::from_str(r#"{ "service": "_http._tcp.api.internal", "ip": "ipv4" }"#)?;
/// assert_eq!(dns.ip, Some(tower_lb::IpFamily::Ipv4));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum IpFamily {
    /// A and AAAA records (the default).
    Both,
    /// A records only (`DnsSource::ipv4_only`).
    Ipv4,
    /// AAAA records only (`DnsSource::ipv6_only`).
    Ipv6,
}

/// An etcd source: the keys under `prefix` on the cluster at `endpoints`
/// ([`EtcdSource`](crate::EtcdSource)); each setting left out keeps its
/// default. Credentials and TLS are set in code
/// (`EtcdSource::connect_options`).
///
/// ```
/// let etcd: tower_lb::EtcdConfig = serde_json::from_str(
///     r#"{ "endpoints": ["http://127.0.0.1:2379"], "prefix": "/services/api/", "retry_max": "5s" }"#,
/// )?;
/// assert_eq!(etcd.retry_max, Some(std::time::Duration::from_secs(5)));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct EtcdConfig {
    /// The cluster's members, `http://host:2379` each; at least one.
    pub endpoints: Vec<String>,
    /// The key prefix the endpoints are kept under.
    pub prefix: String,
    /// The first wait after a failed attempt (`EtcdSource::retry_between`);
    /// default `"100ms"`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::option"
    )]
    pub retry_min: Option<Duration>,
    /// The longest wait between attempts; default `"1s"`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::option"
    )]
    pub retry_max: Option<Duration>,
    /// The largest message taken from etcd, in bytes
    /// (`EtcdSource::max_message_size`); default gRPC's 4 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_size: Option<usize>,
}

/// The reason for a source whose feature this build lacks.
fn feature_missing(what: &str, feature: &str) -> String {
    format!(
        "{what} discovery needs tower-lb's cargo feature {feature:?}, which this build does not have"
    )
}

/// `Err` naming the bound to blame when `max` is below `min` (each the
/// setting, or its default when left out).
#[cfg(any(feature = "dns", feature = "etcd"))]
fn check_bounds(
    (min_field, min, default_min): (&str, Option<Duration>, Duration),
    (max_field, max, default_max): (&str, Option<Duration>, Duration),
) -> Result<(), Error> {
    let (low, high) = (min.unwrap_or(default_min), max.unwrap_or(default_max));
    if high >= low {
        return Ok(());
    }
    let text = |d: Duration| humantime::format_duration(d).to_string();
    let field = if max.is_some() { max_field } else { min_field };
    Err(invalid(
        field,
        format!(
            "{max_field} ({}) is below {min_field} ({})",
            text(high),
            text(low)
        ),
    ))
}

impl DiscoveryConfig {
    /// Checks what can be checked before building: one source, its
    /// feature on, its settings consistent. Paths are relative to the
    /// discovery section.
    pub(crate) fn check(&self) -> Result<(), Error> {
        match (&self.dns, &self.etcd) {
            (Some(_), Some(_)) => Err(invalid(
                "",
                "one source at a time: give dns or etcd, not both",
            )),
            (Some(dns), None) => dns.check().map_err(|e| within("dns", e)),
            (None, Some(etcd)) => etcd.check().map_err(|e| within("etcd", e)),
            (None, None) => Ok(()),
        }
    }

    /// Starts following the source on `balancer`, if there is one.
    pub(crate) fn start(&self, balancer: &Balancer) -> Result<Option<Discovery>, Error> {
        self.check().map_err(|e| within("discovery", e))?;
        #[cfg(feature = "dns")]
        if let Some(dns) = &self.dns {
            return balancer.discover(dns.source()).map(Some);
        }
        #[cfg(feature = "etcd")]
        if let Some(etcd) = &self.etcd {
            return balancer.discover(etcd.source()).map(Some);
        }
        let _ = balancer;
        Ok(None)
    }
}

impl DnsConfig {
    fn check(&self) -> Result<(), Error> {
        self.check_in(cfg!(feature = "dns"))
    }

    /// [`DnsConfig::check`] in a build with (`built`) or without the
    /// `dns` feature.
    fn check_in(&self, built: bool) -> Result<(), Error> {
        if !built {
            return Err(invalid("", feature_missing("DNS", "dns")));
        }
        match (&self.name, &self.service, self.port) {
            (Some(_), Some(_), _) => {
                return Err(invalid(
                    "service",
                    "give name (with port) or service, not both",
                ))
            }
            (None, None, _) => {
                return Err(invalid(
                    "name",
                    "required: give name (with port) or service",
                ))
            }
            (Some(_), None, None) => {
                return Err(invalid(
                    "port",
                    "required with name: the port its addresses serve on",
                ))
            }
            (None, Some(_), Some(_)) => {
                return Err(invalid(
                    "port",
                    "SRV records carry their own ports: leave port out with service",
                ))
            }
            _ => {}
        }
        #[cfg(feature = "dns")]
        check_bounds(
            (
                "refresh_min",
                self.refresh_min,
                crate::discovery::DEFAULT_MIN_REFRESH,
            ),
            (
                "refresh_max",
                self.refresh_max,
                crate::discovery::DEFAULT_MAX_REFRESH,
            ),
        )?;
        Ok(())
    }

    /// The source, once [`DnsConfig::check`] passed.
    #[cfg(feature = "dns")]
    fn source(&self) -> crate::discovery::DnsSource {
        use crate::discovery::{
            DnsSource, DEFAULT_MAX_REFRESH, DEFAULT_MIN_REFRESH, DEFAULT_QUERY_TIMEOUT,
            DEFAULT_RETRIES,
        };
        let mut source = match (&self.service, &self.name) {
            (Some(service), _) => DnsSource::service(service.as_str()),
            (None, name) => DnsSource::addresses(
                name.as_deref().unwrap_or_default(),
                self.port.unwrap_or_default(),
            ),
        };
        if self.https == Some(true) {
            source = source.https();
        }
        source = match self.ip {
            Some(IpFamily::Ipv4) => source.ipv4_only(),
            Some(IpFamily::Ipv6) => source.ipv6_only(),
            Some(IpFamily::Both) | None => source,
        };
        if self.refresh_min.is_some() || self.refresh_max.is_some() {
            source = source.refresh_between(
                self.refresh_min.unwrap_or(DEFAULT_MIN_REFRESH),
                self.refresh_max.unwrap_or(DEFAULT_MAX_REFRESH),
            );
        }
        if self.query_timeout.is_some() || self.query_retries.is_some() {
            source = source.query_timeout(
                self.query_timeout.unwrap_or(DEFAULT_QUERY_TIMEOUT),
                self.query_retries.unwrap_or(DEFAULT_RETRIES),
            );
        }
        if let Some(server) = self.name_server {
            source = source.name_server(server);
        }
        source
    }
}

impl EtcdConfig {
    fn check(&self) -> Result<(), Error> {
        self.check_in(cfg!(feature = "etcd"))
    }

    /// [`EtcdConfig::check`] in a build with (`built`) or without the
    /// `etcd` feature.
    fn check_in(&self, built: bool) -> Result<(), Error> {
        if !built {
            return Err(invalid("", feature_missing("etcd", "etcd")));
        }
        if self.endpoints.is_empty() {
            return Err(invalid("endpoints", "at least one etcd member is needed"));
        }
        #[cfg(feature = "etcd")]
        check_bounds(
            (
                "retry_min",
                self.retry_min,
                crate::discovery::DEFAULT_MIN_RETRY,
            ),
            (
                "retry_max",
                self.retry_max,
                crate::discovery::DEFAULT_MAX_RETRY,
            ),
        )?;
        Ok(())
    }

    /// The source, once [`EtcdConfig::check`] passed.
    #[cfg(feature = "etcd")]
    fn source(&self) -> crate::discovery::EtcdSource {
        use crate::discovery::{EtcdSource, DEFAULT_MAX_RETRY, DEFAULT_MIN_RETRY};
        let mut source = EtcdSource::new(self.endpoints.iter().cloned(), self.prefix.as_str());
        if self.retry_min.is_some() || self.retry_max.is_some() {
            source = source.retry_between(
                self.retry_min.unwrap_or(DEFAULT_MIN_RETRY),
                self.retry_max.unwrap_or(DEFAULT_MAX_RETRY),
            );
        }
        if let Some(bytes) = self.max_message_size {
            source = source.max_message_size(bytes);
        }
        source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What every build says of a source whose feature it lacks (the
    /// integration tests see it only in a build without the feature).
    #[test]
    fn a_source_whose_feature_is_off_is_an_error_naming_the_feature() {
        let dns = DnsConfig {
            name: Some("api.internal".into()),
            port: Some(8080),
            ..DnsConfig::default()
        };
        let error = within("discovery.dns", dns.check_in(false).unwrap_err());
        assert_eq!(
            error.to_string(),
            "discovery.dns: DNS discovery needs tower-lb's cargo feature \"dns\", which this build does not have"
        );
        let etcd = EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/services/api/".into(),
            ..EtcdConfig::default()
        };
        let error = within("discovery.etcd", etcd.check_in(false).unwrap_err());
        assert_eq!(
            error.to_string(),
            "discovery.etcd: etcd discovery needs tower-lb's cargo feature \"etcd\", which this build does not have"
        );
    }
}
