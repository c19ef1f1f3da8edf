//! The Tower service front end over one shared inner service: drives the
//! request pipeline (`pipeline`) from a service call; the response future
//! (`response`) drives the rest.

use std::task::{Context, Poll};

use tower_service::Service;

use crate::balancer::Balancer;
use crate::error::{BoxError, Error};
use crate::pipeline::Trip;
use crate::request::{BalanceRequest, BalanceResponse};
use crate::response::ResponseFuture;

/// A service that sends each request to an endpoint chosen by a
/// [`Balancer`], through the wrapped service `S`.
///
/// `S` takes the same request type: an [`http::Request<B>`] service (a
/// hyper client, or [`HttpToReqwest`](crate::HttpToReqwest)) or a
/// `reqwest::Client` with `reqwest::Request`. `poll_ready` is the wrapped
/// service's; clones share the balancer. Errors are [`Error`]: the wrapped
/// service's own stays reachable as [`Error::Upstream`]'s source. `S` is
/// cloned for retries, which call it again.
///
/// ```no_run
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let balancer = tower_lb::Balancer::builder()
///     .endpoint("http://127.0.0.1:8081")
///     .endpoint("http://127.0.0.1:8082")
///     .build()?;
/// let client = ServiceBuilder::new()
///     .layer(balancer.layer())
///     .service(reqwest::Client::new());
/// // The host is a placeholder: the balancer fills in the chosen endpoint.
/// let request = reqwest::Request::new(http::Method::GET, "http://backend/users/42".parse()?);
/// let response = client.oneshot(request).await?;
/// println!("{}", response.status());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct BalanceService<S> {
    inner: S,
    balancer: Balancer,
}

impl<S> BalanceService<S> {
    /// Wraps `inner`; usually made through [`Balancer::layer`].
    pub fn new(inner: S, balancer: Balancer) -> Self {
        BalanceService { inner, balancer }
    }

    /// The balancer this service sends through.
    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, R> Service<R> for BalanceService<S>
where
    R: BalanceRequest,
    S: Service<R> + Clone,
    S::Response: BalanceResponse,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future, S, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| Error::NotReady(e.into()))
    }

    fn call(&mut self, mut request: R) -> Self::Future {
        let mut trip = Trip::new(&self.balancer);
        match trip.start(&mut request, None) {
            Ok(attempt) => {
                let future = attempt.span().in_scope(|| self.inner.call(request));
                // The service is cloned only for a trip that may be retried.
                let retry_with = trip.may_retry().then(|| self.inner.clone());
                ResponseFuture::calling(future, attempt, trip, retry_with)
            }
            Err(error) => ResponseFuture::failed(error),
        }
    }
}
