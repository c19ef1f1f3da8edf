//! The Tower service front end over one shared inner service: drives the
//! request pipeline (`pipeline`) from a service call; the response future
//! (`response`) drives the rest.

use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use crate::balancer::{Balancer, LaneHandle, LaneHandles};
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
/// service's own stays reachable as [`Error::Upstream`]'s source.
///
/// `S` is cloned for retries, which call it again, so it must be `Clone`
/// (Tower clients are). A request that may be retried holds no clone of
/// its own: the service and its clones keep a copy of `S` per lane (a few
/// per core; a lane's is made from the service that sends the lane's first
/// such request), and a retry that happens goes through a clone of that
/// copy. For an inner service that is not `Clone`, make the service
/// with [`BalanceLayer::without_retries`](crate::BalanceLayer::without_retries):
/// the mode `M` is then [`NoRetries`] and requests are sent once.
///
/// ```no_run
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[cfg(feature = "reqwest")]
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
pub struct BalanceService<S, M = WithRetries> {
    inner: S,
    balancer: Balancer,
    /// What a request that may be retried holds: the balancer and a copy
    /// of `inner`, per lane, made at the lane's first such request.
    handles: Arc<LaneHandles<S>>,
    mode: PhantomData<fn() -> M>,
}

/// [`BalanceService`]'s mode: failed requests are retried as the
/// balancer's [`Retries`](crate::Retries) say, through clones of the inner
/// service (which must be `Clone`). The default.
#[derive(Clone, Copy, Debug, Default)]
pub struct WithRetries;

/// [`BalanceService`]'s mode: every request is sent once, whatever the
/// balancer's [`Retries`](crate::Retries) say, so the inner service need
/// not be `Clone`. Made by
/// [`BalanceLayer::without_retries`](crate::BalanceLayer::without_retries).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoRetries;

/// `WithRetries` or `NoRetries`, for `Debug`.
pub(crate) fn mode_name<M>() -> &'static str {
    let name = std::any::type_name::<M>();
    name.rsplit("::").next().unwrap_or(name)
}

impl<S: Clone, M> Clone for BalanceService<S, M> {
    fn clone(&self) -> Self {
        BalanceService {
            inner: self.inner.clone(),
            balancer: self.balancer.clone(),
            handles: self.handles.clone(),
            mode: PhantomData,
        }
    }
}

impl<S: std::fmt::Debug, M> std::fmt::Debug for BalanceService<S, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalanceService")
            .field("inner", &self.inner)
            .field("balancer", &self.balancer)
            .field("mode", &mode_name::<M>())
            .finish()
    }
}

impl<S> BalanceService<S> {
    /// Wraps `inner`; usually made through [`Balancer::layer`].
    pub fn new(inner: S, balancer: Balancer) -> Self {
        BalanceService {
            inner,
            handles: Arc::default(),
            balancer,
            mode: PhantomData,
        }
    }
}

impl<S> BalanceService<S, NoRetries> {
    /// Wraps `inner`, which need not be `Clone`: requests are never retried.
    pub fn without_retries(inner: S, balancer: Balancer) -> Self {
        BalanceService {
            inner,
            handles: Arc::default(),
            balancer,
            mode: PhantomData,
        }
    }
}

impl<S, M> BalanceService<S, M> {
    /// The balancer this service sends through.
    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    ///
    /// This service then stops sharing its clones' copies of the wrapped
    /// service for retries (see the type's docs): its next requests that
    /// may be retried make new ones from the changed service.
    pub fn get_mut(&mut self) -> &mut S {
        self.handles = Arc::default();
        &mut self.inner
    }

    /// The wrapped service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, M> BalanceService<S, M> {
    fn poll_inner_ready<R>(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>>
    where
        S: Service<R>,
        S::Error: Into<BoxError>,
    {
        self.inner
            .poll_ready(cx)
            .map_err(|e| Error::NotReady(e.into()))
    }

    /// Starts `trip` for `request` and calls the inner service; when a
    /// retry may follow, `hold` gives what the response future keeps for it.
    #[inline]
    fn send<R>(
        &mut self,
        mut trip: Trip<R>,
        mut request: R,
        hold: impl FnOnce(&Self) -> Option<Arc<LaneHandle<S>>>,
    ) -> ResponseFuture<S::Future, S, R>
    where
        R: BalanceRequest,
        S: Service<R>,
    {
        match trip.start(&self.balancer, &mut request, None, false) {
            Ok(attempt) => {
                // Entered by hand: a closure would copy the request once more.
                let entered = attempt.span().enter();
                let future = self.inner.call(request);
                drop(entered);
                let held = if trip.may_retry() { hold(self) } else { None };
                ResponseFuture::calling(future, attempt, trip, held)
            }
            Err(error) => ResponseFuture::failed(error),
        }
    }
}

impl<S, R> Service<R> for BalanceService<S, WithRetries>
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
        self.poll_inner_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let trip = Trip::new(&self.balancer).with_hedging();
        self.send(trip, request, |service| {
            let inner = (&service.inner, S::clone as fn(&S) -> S);
            Some(service.handles.hold(&service.balancer, Some(inner)))
        })
    }
}

impl<S, R> Service<R> for BalanceService<S, NoRetries>
where
    R: BalanceRequest,
    S: Service<R>,
    S::Response: BalanceResponse,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future, S, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.poll_inner_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let trip = Trip::without_retries(&self.balancer);
        self.send(trip, request, |_| None)
    }
}
