//! The selection policy as configuration: its name, and its options.

use std::time::Duration;

use serde::de::{self, MapAccess};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::named::{self, needs_value, no_options, serialize_name, serialize_with, Named};
use super::table::Table;
use super::{duration, invalid, within, Checked};
use crate::affinity::RequestKey;
use crate::error::Error;
use crate::policy::{ConsistentHash, LeastResponseTime, Policy};

/// A built-in policy and its options (see [`Policy`]). A policy without
/// options is its name; one with options is a table under its name:
///
/// ```toml
/// policy = "round_robin"
/// # or
/// [policy.least_response_time]
/// decay = "5s"
/// # or
/// [policy.maglev]
/// key = ["session", { header = "x-user-id" }]
/// bounded_loads = true
/// fallback = "round_robin"
/// ```
///
/// ```
/// use tower_lb::{HashConfig, KeySourceConfig, PolicyConfig};
///
/// let mut hash = HashConfig::default();
/// hash.key = vec![KeySourceConfig::Header("x-user-id".into())];
/// hash.bounded_loads = Some(true);
/// let policy = PolicyConfig::Maglev(hash).to_policy()?;
/// assert!(policy.is_hash());
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum PolicyConfig {
    /// [`Policy::weighted_round_robin`], the default.
    WeightedRoundRobin,
    /// [`Policy::round_robin`].
    RoundRobin,
    /// [`Policy::random`].
    Random,
    /// [`Policy::least_response_time`] with its options.
    LeastResponseTime(LeastTimeConfig),
    /// [`Policy::ring_hash`] with its options.
    RingHash(HashConfig),
    /// [`Policy::maglev`] with its options.
    Maglev(HashConfig),
}

impl PolicyConfig {
    /// The [`Policy`] this describes.
    ///
    /// Errors: [`Error::InvalidConfig`] naming the field from the policy's
    /// name down (`maglev.table_size`).
    ///
    /// ```
    /// let policy: tower_lb::PolicyConfig = serde_json::from_str(r#""round_robin""#)?;
    /// assert!(!policy.to_policy()?.is_hash());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn to_policy(&self) -> Result<Policy, Error> {
        Ok(match self {
            PolicyConfig::WeightedRoundRobin => Policy::weighted_round_robin(),
            PolicyConfig::RoundRobin => Policy::round_robin(),
            PolicyConfig::Random => Policy::random(),
            PolicyConfig::LeastResponseTime(least) => least
                .to_least_time()
                .map_err(|e| within("least_response_time", e))?
                .into(),
            PolicyConfig::RingHash(hash) => hash
                .to_hash(Policy::ring_hash())
                .map_err(|e| within("ring_hash", e))?
                .into(),
            PolicyConfig::Maglev(hash) => hash
                .to_hash(Policy::maglev())
                .map_err(|e| within("maglev", e))?
                .into(),
        })
    }
}

/// The policy for requests without a key under a hashing policy: any
/// policy that does not hash ([`ConsistentHash::fallback`]), written as a
/// [`PolicyConfig`] is.
///
/// ```
/// let hash: tower_lb::HashConfig =
///     serde_json::from_str(r#"{ "fallback": { "least_response_time": { "exact": true } } }"#)?;
/// assert!(matches!(hash.fallback, Some(tower_lb::FallbackConfig::LeastResponseTime(_))));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum FallbackConfig {
    /// [`Policy::weighted_round_robin`], the default.
    WeightedRoundRobin,
    /// [`Policy::round_robin`].
    RoundRobin,
    /// [`Policy::random`].
    Random,
    /// [`Policy::least_response_time`] with its options.
    LeastResponseTime(LeastTimeConfig),
}

impl FallbackConfig {
    fn to_policy(&self) -> Result<Policy, Error> {
        match self {
            FallbackConfig::WeightedRoundRobin => Ok(Policy::weighted_round_robin()),
            FallbackConfig::RoundRobin => Ok(Policy::round_robin()),
            FallbackConfig::Random => Ok(Policy::random()),
            FallbackConfig::LeastResponseTime(least) => least
                .to_least_time()
                .map(Policy::from)
                .map_err(|e| within("least_response_time", e)),
        }
    }
}

/// The options of least response time ([`LeastResponseTime`]); each left
/// out keeps its default.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::{LeastTimeConfig, PolicyConfig};
///
/// let mut least = LeastTimeConfig::default();
/// least.decay = Some(Duration::from_secs(5));
/// let policy = PolicyConfig::LeastResponseTime(least).to_policy()?;
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LeastTimeConfig {
    /// [`LeastResponseTime::decay`]: above zero; default `"10s"`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::option"
    )]
    pub decay: Option<Duration>,
    /// [`LeastResponseTime::default_rtt`]: default `"30ms"`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::option"
    )]
    pub default_rtt: Option<Duration>,
    /// [`LeastResponseTime::failure_penalty`]: default `"1s"`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::option"
    )]
    pub failure_penalty: Option<Duration>,
    /// [`LeastResponseTime::exact`] when `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<bool>,
}

impl LeastTimeConfig {
    fn to_least_time(&self) -> Result<LeastResponseTime, Error> {
        let check = |least: &LeastResponseTime| least.validate();
        Checked::new(Policy::least_response_time(), check)
            .set("decay", self.decay, LeastResponseTime::decay)
            .set(
                "default_rtt",
                self.default_rtt,
                LeastResponseTime::default_rtt,
            )
            .set(
                "failure_penalty",
                self.failure_penalty,
                LeastResponseTime::failure_penalty,
            )
            .set("exact", self.exact.filter(|&exact| exact), |least, _| {
                least.exact()
            })
            .finish()
    }
}

/// The options of a consistent-hash policy ([`ConsistentHash`]), ring or
/// Maglev; each left out keeps its default.
///
/// ```
/// use tower_lb::{HashConfig, PolicyConfig};
///
/// let mut hash = HashConfig::default();
/// hash.virtual_nodes = Some(200);
/// assert!(PolicyConfig::RingHash(hash.clone()).to_policy().is_ok());
/// let error = PolicyConfig::Maglev(hash).to_policy().unwrap_err();
/// assert_eq!(error.to_string(), "maglev.virtual_nodes: virtual_nodes applies to the ring, not to Maglev");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HashConfig {
    /// Where a request's key comes from, the first source that has one
    /// winning ([`ConsistentHash::key`]); left out, `["session"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key: Vec<KeySourceConfig>,
    /// Ring only: points per unit of weight, 1 to 65,536
    /// ([`ConsistentHash::virtual_nodes`]); default 2,048.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_nodes: Option<u32>,
    /// Maglev only: the table size, a prime up to 16,777,216
    /// ([`ConsistentHash::table_size`]); default 65,537.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u64>,
    /// `true`: bounded loads at the default factor, 1.25
    /// ([`ConsistentHash::bounded_loads`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounded_loads: Option<bool>,
    /// Bounded loads at this factor, at least 1
    /// ([`ConsistentHash::load_factor`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_factor: Option<f64>,
    /// The policy for requests without a key
    /// ([`ConsistentHash::fallback`]); default weighted round robin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FallbackConfig>,
}

impl HashConfig {
    fn to_hash(&self, table: ConsistentHash) -> Result<ConsistentHash, Error> {
        if self.bounded_loads == Some(false) && self.load_factor.is_some() {
            return Err(invalid(
                "bounded_loads",
                "false, but load_factor bounds loads: leave one of them out",
            ));
        }
        let key = self.request_key()?;
        let fallback = match &self.fallback {
            Some(fallback) => Some(fallback.to_policy().map_err(|e| within("fallback", e))?),
            None => None,
        };
        let check = |hash: &ConsistentHash| hash.validate();
        Checked::new(table, check)
            .set("key", key, ConsistentHash::key)
            .set(
                "virtual_nodes",
                self.virtual_nodes,
                ConsistentHash::virtual_nodes,
            )
            .set("table_size", self.table_size, ConsistentHash::table_size)
            .set(
                "bounded_loads",
                self.bounded_loads.filter(|&on| on),
                |hash, _| hash.bounded_loads(),
            )
            .set("load_factor", self.load_factor, ConsistentHash::load_factor)
            .set("fallback", fallback, ConsistentHash::fallback)
            .finish()
    }

    /// The sources in `key`, in order, each checked on its own.
    fn request_key(&self) -> Result<Option<RequestKey>, Error> {
        let mut key: Option<RequestKey> = None;
        for (i, source) in self.key.iter().enumerate() {
            let (field, one) = match source {
                KeySourceConfig::Session => ("session", RequestKey::session()),
                KeySourceConfig::Header(name) => ("header", RequestKey::header(name)),
                KeySourceConfig::Cookie(name) => ("cookie", RequestKey::cookie(name)),
                KeySourceConfig::Query(name) => ("query", RequestKey::query(name)),
                KeySourceConfig::Path => ("path", RequestKey::path()),
            };
            if let Some(reason) = one.error() {
                return Err(invalid(format!("key[{i}].{field}"), reason));
            }
            key = Some(match key {
                Some(key) => key.or(one),
                None => one,
            });
        }
        Ok(key)
    }
}

/// One place a request's key is read from ([`RequestKey`]): `"session"`,
/// `"path"`, or a table naming a header, a cookie or a query parameter.
///
/// ```toml
/// key = ["session", { cookie = "JSESSIONID" }, { header = "x-user-id" }, { query = "user" }, "path"]
/// ```
///
/// ```
/// use tower_lb::KeySourceConfig;
///
/// let key: Vec<KeySourceConfig> = serde_json::from_str(r#"["session", { "cookie": "JSESSIONID" }]"#)?;
/// assert_eq!(key, [KeySourceConfig::Session, KeySourceConfig::Cookie("JSESSIONID".into())]);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySourceConfig {
    /// The typed [`SessionKey`](crate::SessionKey) a request carries
    /// ([`RequestKey::session`]).
    Session,
    /// A header's value ([`RequestKey::header`]).
    Header(String),
    /// A cookie's value ([`RequestKey::cookie`]).
    Cookie(String),
    /// A query parameter's value ([`RequestKey::query`]).
    Query(String),
    /// The request path ([`RequestKey::path`]).
    Path,
}

impl Named for PolicyConfig {
    const WHAT: &'static str = "a policy";
    const NAMES: &'static [&'static str] = &[
        "weighted_round_robin",
        "round_robin",
        "random",
        "least_response_time",
        "ring_hash",
        "maglev",
    ];

    fn by_name<E: de::Error>(name: &str) -> Result<Self, E> {
        Ok(match name {
            "weighted_round_robin" => PolicyConfig::WeightedRoundRobin,
            "round_robin" => PolicyConfig::RoundRobin,
            "random" => PolicyConfig::Random,
            "least_response_time" => PolicyConfig::LeastResponseTime(LeastTimeConfig::default()),
            "ring_hash" => PolicyConfig::RingHash(HashConfig::default()),
            "maglev" => PolicyConfig::Maglev(HashConfig::default()),
            _ => return Err(E::unknown_variant(name, Self::NAMES)),
        })
    }

    fn with_options<'de, A: MapAccess<'de>>(name: &str, map: &mut A) -> Result<Self, A::Error> {
        Ok(match name {
            "least_response_time" => {
                PolicyConfig::LeastResponseTime(map.next_value_seed(Table::new())?)
            }
            "ring_hash" => PolicyConfig::RingHash(map.next_value_seed(Table::new())?),
            "maglev" => PolicyConfig::Maglev(map.next_value_seed(Table::new())?),
            "weighted_round_robin" | "round_robin" | "random" => return Err(no_options(name)),
            _ => return Err(de::Error::unknown_variant(name, Self::NAMES)),
        })
    }
}

impl Serialize for PolicyConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            PolicyConfig::WeightedRoundRobin => serialize_name(serializer, "weighted_round_robin"),
            PolicyConfig::RoundRobin => serialize_name(serializer, "round_robin"),
            PolicyConfig::Random => serialize_name(serializer, "random"),
            PolicyConfig::LeastResponseTime(least) => {
                serialize_with(serializer, "least_response_time", least)
            }
            PolicyConfig::RingHash(hash) => serialize_with(serializer, "ring_hash", hash),
            PolicyConfig::Maglev(hash) => serialize_with(serializer, "maglev", hash),
        }
    }
}

impl<'de> Deserialize<'de> for PolicyConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        named::deserialize(deserializer)
    }
}

impl Named for FallbackConfig {
    const WHAT: &'static str = "a policy that does not hash";
    const NAMES: &'static [&'static str] = &[
        "weighted_round_robin",
        "round_robin",
        "random",
        "least_response_time",
    ];

    fn by_name<E: de::Error>(name: &str) -> Result<Self, E> {
        Ok(match name {
            "weighted_round_robin" => FallbackConfig::WeightedRoundRobin,
            "round_robin" => FallbackConfig::RoundRobin,
            "random" => FallbackConfig::Random,
            "least_response_time" => FallbackConfig::LeastResponseTime(LeastTimeConfig::default()),
            _ => return Err(E::unknown_variant(name, Self::NAMES)),
        })
    }

    fn with_options<'de, A: MapAccess<'de>>(name: &str, map: &mut A) -> Result<Self, A::Error> {
        match name {
            "least_response_time" => Ok(FallbackConfig::LeastResponseTime(
                map.next_value_seed(Table::new())?,
            )),
            "weighted_round_robin" | "round_robin" | "random" => Err(no_options(name)),
            _ => Err(de::Error::unknown_variant(name, Self::NAMES)),
        }
    }
}

impl Serialize for FallbackConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            FallbackConfig::WeightedRoundRobin => {
                serialize_name(serializer, "weighted_round_robin")
            }
            FallbackConfig::RoundRobin => serialize_name(serializer, "round_robin"),
            FallbackConfig::Random => serialize_name(serializer, "random"),
            FallbackConfig::LeastResponseTime(least) => {
                serialize_with(serializer, "least_response_time", least)
            }
        }
    }
}

impl<'de> Deserialize<'de> for FallbackConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        named::deserialize(deserializer)
    }
}

impl Named for KeySourceConfig {
    const WHAT: &'static str = "a key source";
    const NAMES: &'static [&'static str] = &["session", "header", "cookie", "query", "path"];

    fn by_name<E: de::Error>(name: &str) -> Result<Self, E> {
        match name {
            "session" => Ok(KeySourceConfig::Session),
            "path" => Ok(KeySourceConfig::Path),
            "header" | "cookie" | "query" => Err(needs_value(name)),
            _ => Err(E::unknown_variant(name, Self::NAMES)),
        }
    }

    fn with_options<'de, A: MapAccess<'de>>(name: &str, map: &mut A) -> Result<Self, A::Error> {
        match name {
            "header" => Ok(KeySourceConfig::Header(map.next_value()?)),
            "cookie" => Ok(KeySourceConfig::Cookie(map.next_value()?)),
            "query" => Ok(KeySourceConfig::Query(map.next_value()?)),
            "session" | "path" => Err(no_options(name)),
            _ => Err(de::Error::unknown_variant(name, Self::NAMES)),
        }
    }
}

impl Serialize for KeySourceConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            KeySourceConfig::Session => serialize_name(serializer, "session"),
            KeySourceConfig::Path => serialize_name(serializer, "path"),
            KeySourceConfig::Header(name) => serialize_with(serializer, "header", name),
            KeySourceConfig::Cookie(name) => serialize_with(serializer, "cookie", name),
            KeySourceConfig::Query(name) => serialize_with(serializer, "query", name),
        }
    }
}

impl<'de> Deserialize<'de> for KeySourceConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        named::deserialize(deserializer)
    }
}
