//! The Tower service front end with an inner service per endpoint, for
//! clients that hold a connection per backend (a hyper HTTP/2 client, a
//! tonic `Channel`).
//!
//! Each endpoint's service is made on its first request by the user's
//! function and kept in a map that requests read without a lock; a new
//! endpoint takes the writers' lock once. The map holds each endpoint
//! weakly: when an endpoint leaves the set, its service is dropped at the
//! next insertion (so its connections close) and a re-added address gets a
//! new one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use tower_service::Service;

use crate::balancer::Balancer;
use crate::endpoint::EndpointState;
use crate::error::{BoxError, Error};
use crate::pipeline::Trip;
use crate::request::{BalanceRequest, BalanceResponse};
use crate::response::{ResponseFuture, ServiceFor};

/// A service that sends each request to an endpoint chosen by a
/// [`Balancer`], through that endpoint's own inner service, made by
/// [`Balancer::per_endpoint`].
///
/// `poll_ready` is always ready: the endpoint is chosen in `call`, and the
/// response future then waits for that endpoint's service to be ready.
/// Requests are rewritten to the endpoint's URL as with
/// [`BalanceService`](crate::BalanceService); retries go through the next
/// endpoint's service. Clones share the balancer and the services.
pub struct PerEndpointService<S> {
    balancer: Balancer,
    services: ServiceFor<S>,
}

impl<S> Clone for PerEndpointService<S> {
    fn clone(&self) -> Self {
        PerEndpointService {
            balancer: self.balancer.clone(),
            services: self.services.clone(),
        }
    }
}

impl<S> std::fmt::Debug for PerEndpointService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerEndpointService")
            .field("balancer", &self.balancer)
            .finish_non_exhaustive()
    }
}

impl<S, R> Service<R> for PerEndpointService<S>
where
    R: BalanceRequest,
    S: Service<R>,
    S::Response: BalanceResponse,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future, S, R>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: R) -> Self::Future {
        let mut trip = Trip::new(&self.balancer);
        match trip.start(&self.balancer, &mut request, None) {
            Ok(attempt) => ResponseFuture::readying(request, attempt, trip, self.services.clone()),
            Err(error) => ResponseFuture::failed(error),
        }
    }
}

/// Each endpoint's service, by the address of the endpoint's state.
struct Services<S, M> {
    make: M,
    /// Read by every request without a lock.
    by_endpoint: ArcSwap<HashMap<usize, (Weak<EndpointState>, S)>>,
    /// Taken to add an endpoint's service.
    writer: Mutex<()>,
}

impl<S, M> Services<S, M>
where
    S: Clone,
    M: Fn(&str) -> S,
{
    /// The service of `endpoint`, made on its first request.
    fn get(&self, endpoint: &Arc<EndpointState>) -> S {
        let key = Arc::as_ptr(endpoint) as usize;
        // A weak reference keeps its allocation, so an address in the map
        // names one endpoint for as long as the entry exists.
        if let Some((_, service)) = self.by_endpoint.load().get(&key) {
            return service.clone();
        }
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.by_endpoint.load_full();
        if let Some((_, service)) = current.get(&key) {
            return service.clone();
        }
        let service = (self.make)(endpoint.url.as_str());
        let mut next: HashMap<usize, (Weak<EndpointState>, S)> = current
            .iter()
            .filter(|(_, (weak, _))| weak.strong_count() > 0)
            .map(|(k, (weak, s))| (*k, (weak.clone(), s.clone())))
            .collect();
        next.insert(key, (Arc::downgrade(endpoint), service.clone()));
        self.by_endpoint.store(Arc::new(next));
        service
    }
}

impl Balancer {
    /// A balanced service whose inner service is one per endpoint, made by
    /// `make` from the endpoint's canonical URL on the endpoint's first
    /// request: for clients that hold a connection per backend, such as a
    /// hyper HTTP/2 client or a tonic `Channel`. The shared-client mode
    /// ([`Balancer::layer`]) stays the usual choice.
    ///
    /// The service of an endpoint that leaves the set is dropped at the
    /// next endpoint's first request; an address added again gets a new
    /// one.
    ///
    /// ```
    /// use tower::ServiceExt;
    ///
    /// # async fn run() -> Result<(), tower_lb::BoxError> {
    /// let balancer = tower_lb::Balancer::builder()
    ///     .endpoint("http://127.0.0.1:8081")
    ///     .endpoint("http://127.0.0.1:8082")
    ///     .build()?;
    /// // Each endpoint's service answers with its own URL.
    /// let service = balancer.per_endpoint(|url: &str| {
    ///     let url = url.to_owned();
    ///     tower::service_fn(move |_: http::Request<()>| {
    ///         let url = url.clone();
    ///         async move { Ok::<_, tower_lb::BoxError>(http::Response::new(url)) }
    ///     })
    /// });
    /// let response = service.oneshot(http::Request::new(())).await?;
    /// assert_eq!(response.body(), "http://127.0.0.1:8081");
    /// # Ok(())
    /// # }
    /// # let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    /// # runtime.block_on(run())?;
    /// # Ok::<(), tower_lb::BoxError>(())
    /// ```
    pub fn per_endpoint<S, M>(&self, make: M) -> PerEndpointService<S>
    where
        S: Clone + Send + Sync + 'static,
        M: Fn(&str) -> S + Send + Sync + 'static,
    {
        let services = Arc::new(Services {
            make,
            by_endpoint: ArcSwap::from_pointee(HashMap::new()),
            writer: Mutex::new(()),
        });
        PerEndpointService {
            balancer: self.clone(),
            services: Arc::new(move |endpoint: &Arc<EndpointState>| services.get(endpoint)),
        }
    }
}
