//! The Tower layer that puts a balancer in front of a service.

use tower_layer::Layer;

use crate::balancer::Balancer;
use crate::service::BalanceService;

/// Wraps a service in [`BalanceService`], sending each request to an endpoint
/// chosen by a [`Balancer`]. Made by [`Balancer::layer`].
///
/// ```
/// use tower::ServiceBuilder;
///
/// let balancer = tower_lb::Balancer::builder()
///     .endpoint("http://127.0.0.1:8081")
///     .build()?;
/// let client = ServiceBuilder::new()
///     .layer(balancer.layer())
///     .service(reqwest::Client::new());
/// # drop(client);
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct BalanceLayer {
    balancer: Balancer,
}

impl BalanceLayer {
    /// A layer over `balancer`; same as [`Balancer::layer`].
    pub fn new(balancer: Balancer) -> Self {
        BalanceLayer { balancer }
    }
}

impl<S> Layer<S> for BalanceLayer {
    type Service = BalanceService<S>;

    fn layer(&self, inner: S) -> BalanceService<S> {
        BalanceService::new(inner, self.balancer.clone())
    }
}

impl Balancer {
    /// A [`BalanceLayer`] that sends requests through this balancer.
    pub fn layer(&self) -> BalanceLayer {
        BalanceLayer::new(self.clone())
    }
}
