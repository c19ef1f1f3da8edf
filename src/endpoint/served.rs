//! Which endpoint answered a request, put in the response's extensions by
//! every front end that returns a response, so that a caller can log it,
//! count by it or tell a canary's answer apart without a lookup.
//!
//! Made once per endpoint (and again when its labels change, off the
//! request path); a response takes a reference count on it, never a copy.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::Labels;

/// The endpoint that answered: its canonical URL and its labels, in the
/// extensions of every response the balancer returns (the layer over
/// `http::Request` or `reqwest::Request`, [`PerEndpointService`], the
/// `reqwest-middleware` front end), and from [`Selection::served_by`].
/// Cheap to clone: one reference count.
///
/// [`PerEndpointService`]: crate::PerEndpointService
/// [`Selection::served_by`]: crate::Selection::served_by
///
/// ```
/// use tower::{Layer, ServiceExt};
/// use tower_lb::{Balancer, Endpoint, ServedBy};
///
/// # async fn run() -> Result<(), tower_lb::BoxError> {
/// let balancer = Balancer::builder()
///     .endpoint(Endpoint::new("http://127.0.0.1:8081").with_label("zone", "a"))
///     .build()?;
/// let inner = tower::service_fn(|_: http::Request<()>| async {
///     Ok::<_, tower_lb::BoxError>(http::Response::new(()))
/// });
/// let response = balancer.layer().layer(inner).oneshot(http::Request::new(())).await?;
/// let served_by = response.extensions().get::<ServedBy>().ok_or("set")?;
/// assert_eq!(served_by.url(), "http://127.0.0.1:8081");
/// assert_eq!(served_by.labels().get("zone"), Some("a"));
/// # Ok(())
/// # }
/// # tokio::runtime::Builder::new_current_thread().build()?.block_on(run())?;
/// # Ok::<(), tower_lb::BoxError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ServedBy(Arc<Served>);

/// What a [`ServedBy`] shares.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Served {
    url: Arc<str>,
    labels: Labels,
}

impl ServedBy {
    /// The endpoint's canonical URL, `scheme://host:port/base`, as in
    /// [`Stats`](crate::Stats).
    pub fn url(&self) -> &str {
        &self.0.url
    }

    /// The endpoint's labels when the request was sent.
    pub fn labels(&self) -> &Labels {
        &self.0.labels
    }
}

impl fmt::Debug for ServedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServedBy")
            .field("url", &self.url())
            .field("labels", self.labels())
            .finish()
    }
}

/// An endpoint's current [`ServedBy`], replaced when its labels change.
#[derive(Debug)]
pub(crate) struct ServedSlot(ArcSwap<Served>);

impl ServedSlot {
    /// The slot of the endpoint at `url`, with no labels yet.
    pub(crate) fn new(url: Arc<str>) -> Self {
        ServedSlot(ArcSwap::from_pointee(Served {
            url,
            labels: Labels::default(),
        }))
    }

    /// The endpoint as a response names it: a reference count, no copy.
    pub(crate) fn get(&self) -> ServedBy {
        ServedBy(self.0.load_full())
    }

    /// Takes `labels`, if they differ from the ones held. For writers
    /// only (the set's updates), never on the request path.
    pub(crate) fn set_labels(&self, labels: &Labels) {
        let current = self.0.load();
        if current.labels != *labels {
            self.0.store(Arc::new(Served {
                url: current.url.clone(),
                labels: labels.clone(),
            }));
        }
    }
}
