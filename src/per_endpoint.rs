//! The Tower service front end with an inner service per endpoint, for
//! clients that hold a connection per backend (a hyper HTTP/2 client, a
//! tonic `Channel`).
//!
//! Each endpoint's service is made on its first request by the user's
//! function, or comes with the endpoint from discovery (a stream of
//! `Change<url, service>`), and is kept in a map that requests read without
//! a lock; a new endpoint takes the writers' lock once. When an endpoint
//! leaves the set, the balancer tells the map (`OnRemoval`) and its service
//! is dropped then, so its connections close once the requests still on
//! them end, and a re-added address gets a new one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use tower::discover::{Change, Discover};
use tower_service::Service;

use crate::balancer::{Balancer, LaneHandles, OnRemoval};
use crate::endpoint::{EndpointState, EndpointUrl};
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
///
/// The endpoints' services sit in a map that every request reads without a
/// lock, from any thread, so `S` must be `Clone + Send + Sync`: hyper's
/// and tonic's clients are; to box one, use
/// `tower::util::BoxCloneSyncService` (`BoxCloneService` is not `Sync`).
pub struct PerEndpointService<S> {
    balancer: Balancer,
    /// What a request that may be retried holds the balancer by.
    handles: Arc<LaneHandles<S>>,
    services: Arc<Services<S>>,
    /// `services` as the response future asks it.
    service_for: ServiceFor<S>,
}

impl<S> Clone for PerEndpointService<S> {
    fn clone(&self) -> Self {
        PerEndpointService {
            balancer: self.balancer.clone(),
            handles: self.handles.clone(),
            services: self.services.clone(),
            service_for: self.service_for.clone(),
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
        let mut trip = Trip::new(&self.balancer).with_hedging();
        match trip.start(&self.balancer, &mut request, None, true) {
            Ok(attempt) => {
                let balancer = trip
                    .may_retry()
                    .then(|| self.handles.hold(&self.balancer, None));
                ResponseFuture::readying(request, attempt, trip, self.service_for.clone(), balancer)
            }
            Err(error) => ResponseFuture::failed(error),
        }
    }
}

/// The user's function that makes an endpoint's service from its URL.
type MakeService<S> = Box<dyn Fn(&str) -> S + Send + Sync>;

/// Each endpoint's service, by the address of the endpoint's state.
pub(crate) struct Services<S> {
    /// Makes a service from an endpoint's URL; `None` when services come
    /// only from discovery.
    make: Option<MakeService<S>>,
    /// Read by every request without a lock.
    by_endpoint: ArcSwap<HashMap<usize, (Weak<EndpointState>, S)>>,
    /// Taken to add or remove an endpoint's service.
    writer: Mutex<()>,
}

impl<S: Clone> Services<S> {
    /// Services made by `make` from an endpoint's URL on its first request.
    pub(crate) fn made_by(make: impl Fn(&str) -> S + Send + Sync + 'static) -> Self {
        Services {
            make: Some(Box::new(make)),
            ..Services::discovered()
        }
    }

    /// Services that come only with their endpoints, from discovery.
    fn discovered() -> Self {
        Services {
            make: None,
            by_endpoint: ArcSwap::from_pointee(HashMap::new()),
            writer: Mutex::new(()),
        }
    }

    /// The service of `endpoint`: the one it came with, else made on its
    /// first request; `None` when there is neither.
    pub(crate) fn get(&self, endpoint: &Arc<EndpointState>) -> Option<S> {
        // A weak reference keeps its allocation, so an address in the map
        // names one endpoint for as long as the entry exists.
        if let Some((_, service)) = self.by_endpoint.load().get(&key(endpoint)) {
            return Some(service.clone());
        }
        let make = self.make.as_ref()?;
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, service)) = self.by_endpoint.load().get(&key(endpoint)) {
            return Some(service.clone());
        }
        let service = make(endpoint.url.as_str());
        self.edit(|map| {
            map.insert(key(endpoint), (Arc::downgrade(endpoint), service.clone()));
        });
        Some(service)
    }

    /// Runs `change` on a copy of the map without the entries of endpoints
    /// that are gone, and publishes it. The caller holds `writer`.
    fn edit(&self, change: impl FnOnce(&mut HashMap<usize, (Weak<EndpointState>, S)>)) {
        let mut next: HashMap<usize, (Weak<EndpointState>, S)> = self
            .by_endpoint
            .load()
            .iter()
            .filter(|(_, (weak, _))| weak.strong_count() > 0)
            .map(|(k, (weak, s))| (*k, (weak.clone(), s.clone())))
            .collect();
        change(&mut next);
        self.by_endpoint.store(Arc::new(next));
    }
}

fn key(endpoint: &Arc<EndpointState>) -> usize {
    Arc::as_ptr(endpoint) as usize
}

impl<S: Clone + Send + Sync> OnRemoval for Services<S> {
    /// Drops the services of the endpoints that left the set (their
    /// states are alive here, so their addresses name them).
    fn removed(&self, gone: &[Arc<EndpointState>]) {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let held = self.by_endpoint.load();
        if !gone
            .iter()
            .any(|endpoint| held.contains_key(&key(endpoint)))
        {
            return;
        }
        drop(held);
        self.edit(|map| {
            for endpoint in gone {
                map.remove(&key(endpoint));
            }
        });
    }
}

/// `services`, told by `balancer` when endpoints leave its set.
pub(crate) fn shared_with<S>(balancer: &Balancer, services: Services<S>) -> Arc<Services<S>>
where
    S: Clone + Send + Sync + 'static,
{
    let services = Arc::new(services);
    let listener: Weak<dyn OnRemoval> = Arc::downgrade(&services) as _;
    balancer.on_removal(listener);
    services
}

impl<S> PerEndpointService<S>
where
    S: Clone + Send + Sync + 'static,
{
    fn with(balancer: &Balancer, services: Services<S>) -> Self {
        let services = shared_with(balancer, services);
        let service_for = {
            let services = services.clone();
            Arc::new(move |endpoint: &Arc<EndpointState>| services.get(endpoint)) as ServiceFor<S>
        };
        PerEndpointService {
            balancer: balancer.clone(),
            handles: Arc::default(),
            services,
            service_for,
        }
    }

    /// The balancer and how an endpoint's service is found, for its
    /// active health checks.
    pub(crate) fn check_parts(&self) -> (&Balancer, &ServiceFor<S>) {
        (&self.balancer, &self.service_for)
    }

    /// Follows a discovery stream of `Change<url, service>` (any tower
    /// [`Discover`] with the endpoint's URL as the key; a `Stream` of
    /// `Result<Change<K, S>, E>` is one) until it ends:
    /// `Insert` adds the endpoint (weight 1; an endpoint already in the set
    /// keeps its weight) and sends its requests through the given service,
    /// which replaces any earlier one; `Remove` removes the endpoint and
    /// drops its service. An endpoint is never picked before its service is
    /// in place. An invalid URL is skipped and logged at `warn`; the
    /// stream's own error ends the loop and is returned.
    pub async fn follow<D, K, E>(&self, changes: D) -> Result<(), E>
    where
        D: Discover<Key = K, Service = S, Error = E>,
        K: AsRef<str>,
    {
        let mut discover = std::pin::pin!(changes);
        let mut changes = std::pin::pin!(futures_util::stream::poll_fn(move |cx| discover
            .as_mut()
            .poll_discover(cx)));
        while let Some(change) = changes.next().await {
            let result = match change? {
                Change::Insert(url, service) => {
                    let services = &self.services;
                    self.balancer.add_or_keep(url.as_ref(), |endpoint| {
                        let _writer = services.writer.lock().unwrap_or_else(|p| p.into_inner());
                        services.edit(|map| {
                            map.insert(key(endpoint), (Arc::downgrade(endpoint), service));
                        });
                    })
                }
                Change::Remove(url) => EndpointUrl::parse(url.as_ref()).map(|url| {
                    // Unknown or not, the endpoint is out of the set now.
                    let _ = self.balancer.remove(url.as_str());
                    let _writer = self
                        .services
                        .writer
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    self.services.edit(|map| {
                        map.retain(|_, (weak, _)| weak.upgrade().is_some_and(|e| e.url != url));
                    });
                }),
            };
            if let Err(error) = result {
                tracing::warn!(%error, "discovery change skipped");
            }
        }
        Ok(())
    }
}

impl Balancer {
    /// A balanced service whose inner service is one per endpoint, made by
    /// `make` from the endpoint's canonical URL on the endpoint's first
    /// request: for clients that hold a connection per backend, such as a
    /// hyper HTTP/2 client or a tonic `Channel`. The shared-client mode
    /// ([`Balancer::layer`]) stays the usual choice. Services given by
    /// discovery ([`PerEndpointService::follow`]) take precedence.
    ///
    /// The service of an endpoint that leaves the set is dropped when it
    /// leaves (requests still on it keep their clones until they end); an
    /// address added again gets a new one.
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
        PerEndpointService::with(self, Services::made_by(make))
    }

    /// A balanced service whose endpoints and their services both come from
    /// discovery: feed it with [`PerEndpointService::follow`] a stream of
    /// `Change<url, service>`, as a tower `Discover` yields. A request to an
    /// endpoint that has no service (one added to the balancer some other
    /// way) fails with [`Error::NotReady`].
    ///
    /// ```
    /// use tower::discover::{Change, Discover};
    /// use tower::ServiceExt;
    ///
    /// # async fn run() -> Result<(), tower_lb::BoxError> {
    /// let balancer = tower_lb::Balancer::builder().build()?;
    /// let service = balancer.per_endpoint_discovered();
    /// let answer = |name: &'static str| {
    ///     tower::service_fn(move |_: http::Request<()>| async move {
    ///         Ok::<_, tower_lb::BoxError>(http::Response::new(name))
    ///     })
    /// };
    /// let changes = futures::stream::iter([
    ///     Ok::<_, std::convert::Infallible>(Change::Insert("http://10.0.0.1:80", answer("a"))),
    /// ]);
    /// service.follow(changes).await?;
    /// let response = service.clone().oneshot(http::Request::new(())).await?;
    /// assert_eq!(*response.body(), "a");
    /// # Ok(())
    /// # }
    /// # let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    /// # runtime.block_on(run())?;
    /// # Ok::<(), tower_lb::BoxError>(())
    /// ```
    pub fn per_endpoint_discovered<S>(&self) -> PerEndpointService<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        PerEndpointService::with(self, Services::discovered())
    }
}
