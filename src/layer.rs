//! The Tower layer that puts a balancer in front of a service.

use std::marker::PhantomData;

use tower_layer::Layer;

use crate::balancer::Balancer;
use crate::service::{BalanceService, NoRetries, WithRetries};

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
pub struct BalanceLayer<M = WithRetries> {
    balancer: Balancer,
    mode: PhantomData<M>,
}

impl<M> Clone for BalanceLayer<M> {
    fn clone(&self) -> Self {
        BalanceLayer {
            balancer: self.balancer.clone(),
            mode: PhantomData,
        }
    }
}

impl<M> std::fmt::Debug for BalanceLayer<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalanceLayer")
            .field("balancer", &self.balancer)
            .field("mode", &crate::service::mode_name::<M>())
            .finish()
    }
}

impl BalanceLayer {
    /// A layer over `balancer`; same as [`Balancer::layer`].
    pub fn new(balancer: Balancer) -> Self {
        BalanceLayer {
            balancer,
            mode: PhantomData,
        }
    }

    /// The same layer, sending every request once: the inner service need
    /// not be `Clone`, and the balancer's retry settings do not apply.
    ///
    /// ```
    /// use tower::{Layer, Service};
    ///
    /// /// A service that cannot be cloned.
    /// struct Unique;
    /// impl Service<http::Request<()>> for Unique {
    ///     type Response = http::Response<()>;
    ///     type Error = std::convert::Infallible;
    ///     type Future = std::future::Ready<Result<http::Response<()>, std::convert::Infallible>>;
    ///     fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
    ///         std::task::Poll::Ready(Ok(()))
    ///     }
    ///     fn call(&mut self, _: http::Request<()>) -> Self::Future {
    ///         std::future::ready(Ok(http::Response::new(())))
    ///     }
    /// }
    ///
    /// let balancer = tower_lb::Balancer::builder().endpoint("http://127.0.0.1:8081").build()?;
    /// let mut service = balancer.layer().without_retries().layer(Unique);
    /// let _future = service.call(http::Request::new(()));
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    pub fn without_retries(self) -> BalanceLayer<NoRetries> {
        BalanceLayer {
            balancer: self.balancer,
            mode: PhantomData,
        }
    }
}

impl<S> Layer<S> for BalanceLayer<WithRetries> {
    type Service = BalanceService<S>;

    fn layer(&self, inner: S) -> BalanceService<S> {
        BalanceService::new(inner, self.balancer.clone())
    }
}

impl<S> Layer<S> for BalanceLayer<NoRetries> {
    type Service = BalanceService<S, NoRetries>;

    fn layer(&self, inner: S) -> BalanceService<S, NoRetries> {
        BalanceService::without_retries(inner, self.balancer.clone())
    }
}

impl Balancer {
    /// A [`BalanceLayer`] that sends requests through this balancer.
    pub fn layer(&self) -> BalanceLayer {
        BalanceLayer::new(self.clone())
    }
}
