//! An endpoint as configuration writes it: a URL, or a table with a URL, a
//! weight and labels.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::invalid;
use crate::endpoint::{Endpoint, Labels};
use crate::error::Error;

/// One static endpoint: `url`, `weight` (0 drained, up to
/// [`MAX_WEIGHT`](crate::MAX_WEIGHT); 1 if left out) and `labels` (text
/// to text). Written as a table, or as the URL alone:
///
/// ```toml
/// endpoints = [
///     "http://10.0.0.1:8080",
///     { url = "http://10.0.0.2:8080", weight = 3, labels = { zone = "b" } },
/// ]
/// ```
///
/// ```
/// use tower_lb::EndpointConfig;
///
/// let endpoint = EndpointConfig::new("http://10.0.0.2:8080").with_weight(3).with_label("zone", "b");
/// let endpoint = endpoint.to_endpoint();
/// assert_eq!((endpoint.weight(), endpoint.labels().get("zone")), (3, Some("b")));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct EndpointConfig {
    /// The endpoint's URL, `http://` or `https://`, with an optional base
    /// path.
    pub url: String,
    /// Its weight; 1 if left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Its labels.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl EndpointConfig {
    /// An endpoint at `url`, weight and labels left out.
    pub fn new(url: impl Into<String>) -> Self {
        EndpointConfig {
            url: url.into(),
            weight: None,
            labels: BTreeMap::new(),
        }
    }

    /// Sets the weight.
    #[must_use]
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = Some(weight);
        self
    }

    /// Sets a label.
    #[must_use]
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// The [`Endpoint`] this describes (checked when it is added to a
    /// balancer).
    pub fn to_endpoint(&self) -> Endpoint {
        let endpoint = Endpoint::new(&self.url).with_labels(self.labels.iter().collect::<Labels>());
        match self.weight {
            Some(weight) => endpoint.with_weight(weight),
            None => endpoint,
        }
    }

    /// A builder's error about this endpoint, at its field.
    pub(crate) fn place(&self, error: Error) -> Error {
        match error {
            Error::InvalidWeight { .. } => invalid("weight", error.to_string()),
            other => invalid("url", other.to_string()),
        }
    }
}

/// The table form, read field by field (so that paths name the field).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    url: String,
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

impl<'de> Deserialize<'de> for EndpointConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(EndpointVisitor)
    }
}

struct EndpointVisitor;

impl<'de> Visitor<'de> for EndpointVisitor {
    type Value = EndpointConfig;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an endpoint: a URL, or a table with url, weight and labels")
    }

    fn visit_str<E: de::Error>(self, url: &str) -> Result<EndpointConfig, E> {
        Ok(EndpointConfig::new(url))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EndpointConfig, A::Error> {
        let table = Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(EndpointConfig {
            url: table.url,
            weight: table.weight,
            labels: table.labels,
        })
    }
}
