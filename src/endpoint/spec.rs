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

/// An endpoint's labels: key-value pairs in key order, cheap to clone.
///
/// ```
/// let endpoint = tower_lb::Endpoint::new("http://10.0.0.1:80")
///     .with_label("version", "2")
///     .with_label("zone", "a");
/// let labels = endpoint.labels();
/// assert_eq!(labels.get("zone"), Some("a"));
/// assert_eq!(labels.iter().collect::<Vec<_>>(), [("version", "2"), ("zone", "a")]);
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
