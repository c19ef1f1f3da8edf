//! An endpoint as configuration or discovery describes it: its URL, its
//! weight and its labels.

use std::fmt;
use std::sync::Arc;

use super::{EndpointUrl, MAX_WEIGHT};
use crate::error::Error;

/// An endpoint to put in the set: a URL, a weight (1 unless set) and labels
/// such as zone or version, which policies and [`Stats`](crate::Stats) see.
///
/// Anything that names a URL (`&str`, `String`, `&String`, `Arc<str>`,
/// `Box<str>`, `Cow<str>`) converts into one, so the builder and
/// [`Balancer::insert`](crate::Balancer::insert) take any of them.
///
/// ```
/// use tower_lb::{Balancer, Endpoint};
///
/// let balancer = Balancer::builder()
///     .endpoint("http://127.0.0.1:8081")
///     .endpoint(
///         Endpoint::new("http://127.0.0.1:8082")
///             .with_weight(3)
///             .with_label("zone", "eu-west-1a")
///             .with_label("canary", "true"),
///     )
///     .build()?;
/// let stats = balancer.stats();
/// let canary = stats.endpoint("http://127.0.0.1:8082").ok_or("listed")?;
/// assert_eq!(canary.labels.get("zone"), Some("eu-west-1a"));
/// assert_eq!(canary.weight, 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    url: String,
    weight: u32,
    labels: Labels,
}

impl Endpoint {
    /// An endpoint at `url` (`&str`, `String`, `Arc<str>`, anything that
    /// reads as a URL) with weight 1 and no labels. The URL is checked when
    /// the endpoint is added.
    pub fn new(url: impl AsRef<str>) -> Self {
        Endpoint {
            url: url.as_ref().to_owned(),
            weight: 1,
            labels: Labels::default(),
        }
    }

    /// Sets the weight: 0 (drained) to [`MAX_WEIGHT`](crate::MAX_WEIGHT).
    #[must_use]
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the label `key` to `value`, replacing an earlier value. Both
    /// are anything that reads as text (`&str`, `String`, `Arc<str>`).
    ///
    /// ```
    /// let zone = String::from("eu-west-1a");
    /// let endpoint = tower_lb::Endpoint::new(String::from("http://10.0.0.1:80"))
    ///     .with_label(String::from("zone"), &zone)
    ///     .with_label("tier", zone);
    /// assert_eq!(endpoint.labels().get("zone"), Some("eu-west-1a"));
    /// ```
    #[must_use]
    pub fn with_label(mut self, key: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        let (key, value) = (key.as_ref(), value.as_ref());
        let mut pairs: Vec<(Box<str>, Box<str>)> = self
            .labels
            .0
            .iter()
            .filter(|(k, _)| &**k != key)
            .cloned()
            .collect();
        pairs.push((key.into(), value.into()));
        pairs.sort();
        self.labels = Labels(pairs.into());
        self
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The weight.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Sets the labels, replacing any set before: anything that converts
    /// into [`Labels`] (an array or a map of pairs, or a `Labels`).
    ///
    /// ```
    /// use std::collections::HashMap;
    ///
    /// let from_discovery: HashMap<String, String> =
    ///     HashMap::from([("zone".into(), "a".into()), ("version".into(), "2".into())]);
    /// let endpoint = tower_lb::Endpoint::new("http://10.0.0.1:80").with_labels(from_discovery);
    /// assert_eq!(endpoint.labels().len(), 2);
    /// let endpoint = endpoint.with_labels([("zone", "b")]);
    /// assert_eq!(endpoint.labels().iter().collect::<Vec<_>>(), [("zone", "b")]);
    /// ```
    #[must_use]
    pub fn with_labels(mut self, labels: impl Into<Labels>) -> Self {
        self.labels = labels.into();
        self
    }

    /// The labels.
    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    /// Checks the URL and the weight.
    pub(crate) fn parse(self) -> Result<(EndpointUrl, u32, Labels), Error> {
        let url = EndpointUrl::parse(&self.url)?;
        if self.weight > MAX_WEIGHT {
            return Err(Error::InvalidWeight {
                url: url.as_str().to_owned(),
                weight: self.weight,
                max: MAX_WEIGHT,
            });
        }
        Ok((url, self.weight, self.labels))
    }
}

impl From<&str> for Endpoint {
    fn from(url: &str) -> Self {
        Endpoint::new(url)
    }
}

impl From<&&str> for Endpoint {
    fn from(url: &&str) -> Self {
        Endpoint::new(*url)
    }
}

impl From<String> for Endpoint {
    fn from(url: String) -> Self {
        Endpoint::new(url)
    }
}

impl From<&String> for Endpoint {
    fn from(url: &String) -> Self {
        Endpoint::new(url)
    }
}

impl From<Arc<str>> for Endpoint {
    fn from(url: Arc<str>) -> Self {
        Endpoint::new(url)
    }
}

impl From<&Arc<str>> for Endpoint {
    fn from(url: &Arc<str>) -> Self {
        Endpoint::new(url)
    }
}

impl From<Box<str>> for Endpoint {
    fn from(url: Box<str>) -> Self {
        Endpoint::new(url)
    }
}

impl From<std::borrow::Cow<'_, str>> for Endpoint {
    fn from(url: std::borrow::Cow<'_, str>) -> Self {
        Endpoint::new(url)
    }
}

/// An endpoint's labels: key-value pairs in key order, one value per key,
/// cheap to clone.
///
/// Built with [`Endpoint::with_label`], or from pairs of anything that reads
/// as text: an array, a `HashMap`, a `BTreeMap` (`Labels::from`), or any
/// iterator of pairs (`collect()`). When a key comes more than once, the
/// last value wins, as with [`Endpoint::with_label`].
///
/// ```
/// use std::collections::{BTreeMap, HashMap};
/// use tower_lb::Labels;
///
/// let endpoint = tower_lb::Endpoint::new("http://10.0.0.1:80")
///     .with_label("version", "2")
///     .with_label("zone", "a");
/// let labels = endpoint.labels();
/// assert_eq!(labels.get("zone"), Some("a"));
/// assert_eq!(labels.len(), 2);
/// assert_eq!(labels.iter().collect::<Vec<_>>(), [("version", "2"), ("zone", "a")]);
///
/// assert_eq!(Labels::from([("zone", "a"), ("version", "2")]), *labels);
/// let map = HashMap::from([(String::from("zone"), String::from("a")), ("version".into(), "2".into())]);
/// assert_eq!(Labels::from(map), *labels);
/// assert_eq!(Labels::from(BTreeMap::from([("zone", "a"), ("version", "2")])), *labels);
/// let collected: Labels = [("zone", "x"), ("version", "2"), ("zone", "a")].into_iter().collect();
/// assert_eq!(collected, *labels);
/// assert!(Labels::default().is_empty());
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels(Arc<[(Box<str>, Box<str>)]>);

impl Labels {
    /// The value of label `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    /// Every label, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many labels there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Labels {
    /// The pairs in key order; of a key given more than once, the last
    /// value.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let mut pairs: Vec<(Box<str>, Box<str>)> = pairs
            .into_iter()
            .map(|(k, v)| (k.as_ref().into(), v.as_ref().into()))
            .collect();
        // A stable sort keeps the pairs of one key in the order given; the
        // last of them is kept.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut kept: Vec<(Box<str>, Box<str>)> = Vec::with_capacity(pairs.len());
        for pair in pairs {
            match kept.last_mut() {
                Some(last) if last.0 == pair.0 => *last = pair,
                _ => kept.push(pair),
            }
        }
        Labels(kept.into())
    }
}

impl<K: AsRef<str>, V: AsRef<str>, const N: usize> From<[(K, V); N]> for Labels {
    fn from(pairs: [(K, V); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl<K: AsRef<str>, V: AsRef<str>, S> From<std::collections::HashMap<K, V, S>> for Labels {
    fn from(map: std::collections::HashMap<K, V, S>) -> Self {
        map.into_iter().collect()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> From<std::collections::BTreeMap<K, V>> for Labels {
    fn from(map: std::collections::BTreeMap<K, V>) -> Self {
        map.into_iter().collect()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> From<Vec<(K, V)>> for Labels {
    fn from(pairs: Vec<(K, V)>) -> Self {
        pairs.into_iter().collect()
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// A value in the service slot of a discovery
/// [`Change`](tower::discover::Change), whose key is the endpoint's URL: a
/// weight, or a whole [`Endpoint`].
pub trait IntoEndpoint {
    /// The endpoint that `key` (its URL) and this value describe.
    ///
    /// Errors: [`Error::InvalidUrl`] when an [`Endpoint`]'s own URL names
    /// another endpoint than `key`.
    fn into_endpoint(self, key: &str) -> Result<Endpoint, Error>;
}

impl IntoEndpoint for u32 {
    fn into_endpoint(self, key: &str) -> Result<Endpoint, Error> {
        Ok(Endpoint::new(key).with_weight(self))
    }
}

impl IntoEndpoint for Endpoint {
    fn into_endpoint(self, key: &str) -> Result<Endpoint, Error> {
        let named = EndpointUrl::parse(key)?;
        let own = EndpointUrl::parse(&self.url)?;
        if named != own {
            return Err(Error::InvalidUrl {
                url: key.to_owned(),
                reason: format!("the change's key names another endpoint than {own}"),
                source: None,
            });
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn labels_from_any_pairs_hold_each_key_once_in_key_order_with_its_last_value(
            pairs in proptest::collection::vec(("[a-d]{0,2}", "[a-z]{0,3}"), 0..12)
        ) {
            let labels: Labels = pairs.iter().map(|(k, v)| (k, v)).collect();
            let mut model = std::collections::BTreeMap::new();
            for (k, v) in &pairs {
                model.insert(k.as_str(), v.as_str());
            }
            prop_assert_eq!(labels.len(), model.len());
            prop_assert_eq!(labels.iter().collect::<Vec<_>>(), model.into_iter().collect::<Vec<_>>());
            let chained = pairs
                .iter()
                .fold(Endpoint::new("http://10.0.0.1:80"), |e, (k, v)| e.with_label(k, v));
            prop_assert_eq!(chained.labels(), &labels);
        }
    }
}
