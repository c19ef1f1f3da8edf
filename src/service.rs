//! The balancing service and its response future: pick an endpoint, point
//! the request at it, call the wrapped service, time and classify the
//! outcome, record it on the endpoint, and retry on another endpoint when
//! that is safe and the budget allows.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tower_service::Service;

use crate::affinity::LearnedHomes;
use crate::endpoint::{EndpointState, InFlight};
use crate::outcome::Outcome;
use crate::{BalanceRequest, BalanceResponse, Balancer, BoxError, Error};

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
pub struct Balance<S> {
    inner: S,
    balancer: Balancer,
}

impl<S> Balance<S> {
    /// Wraps `inner`; usually made through [`Balancer::layer`].
    pub fn new(inner: S, balancer: Balancer) -> Self {
        Balance { inner, balancer }
    }

    /// The balancer this service sends through.
    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }
}

impl<S, R> Service<R> for Balance<S>
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

    fn call(&mut self, request: R) -> Self::Future {
        let retry = self.balancer.retrying().and_then(|retrying| {
            retrying.budget.deposit();
            // A copy to send again, made now: the original is consumed.
            let copy = request.try_clone()?;
            Some(Retry {
                service: self.inner.clone(),
                copy: Some(copy),
                next: None,
                tried: Vec::new(),
                balancer: self.balancer.clone(),
                retries_left: retrying.policy.max_retries,
            })
        });
        let learned = self.balancer.learned().cloned();
        let sent = prepare(&self.balancer, request, &[])
            .map(|(request, endpoint)| call(&mut self.inner, request, endpoint));
        match sent {
            Ok((future, in_flight, span)) => ResponseFuture {
                state: State::Calling { future },
                in_flight: Some(in_flight),
                span,
                learned,
                retry,
            },
            Err(error) => ResponseFuture::failed(error),
        }
    }
}

/// Picks an endpoint (none of `tried`) and points `request` at it.
fn prepare<R: BalanceRequest>(
    balancer: &Balancer,
    mut request: R,
    tried: &[Arc<EndpointState>],
) -> Result<(R, Arc<EndpointState>), Error> {
    let Some(endpoint) = balancer.pick(&request, tried) else {
        tracing::debug!("no endpoint available");
        return Err(Error::NoEndpointAvailable);
    };
    request.route_to(&endpoint.url)?;
    Ok((request, endpoint))
}

/// Sends a prepared request, counting it in flight on its endpoint.
fn call<S, R>(
    service: &mut S,
    request: R,
    endpoint: Arc<EndpointState>,
) -> (S::Future, InFlight, tracing::Span)
where
    S: Service<R>,
{
    let span = tracing::debug_span!("tower_lb", endpoint = %endpoint.url);
    let in_flight = InFlight::start(endpoint);
    let future = span.in_scope(|| service.call(request));
    (future, in_flight, span)
}

/// What a response future needs to try another endpoint.
#[derive(Debug)]
struct Retry<S, R> {
    /// A clone of the wrapped service, to call again.
    service: S,
    /// The request to send next time.
    copy: Option<R>,
    /// The next attempt, pointed at its endpoint, while the service gets ready.
    next: Option<(R, Arc<EndpointState>)>,
    /// Endpoints already tried.
    tried: Vec<Arc<EndpointState>>,
    balancer: Balancer,
    retries_left: u32,
}

impl<S, R: BalanceRequest> Retry<S, R> {
    /// Prepares the next attempt after one on `endpoint` ended with
    /// `outcome`: if a retry is safe and the budget allows it, and another
    /// endpoint is available. Otherwise the answer stands.
    fn prepare_next(&mut self, outcome: Outcome, endpoint: &Arc<EndpointState>) -> bool {
        let Some(copy) = self.copy.take() else {
            return false;
        };
        let allowed = self
            .balancer
            .retrying()
            .is_some_and(|r| r.allows(outcome, copy.info().method(), self.retries_left));
        if !allowed {
            return false;
        }
        self.tried.push(endpoint.clone());
        self.retries_left -= 1;
        // An unrouted copy for a further retry, if one may follow.
        if self.retries_left > 0 {
            self.copy = copy.try_clone();
        }
        match prepare(&self.balancer, copy, &self.tried) {
            Ok(next) => {
                self.next = Some(next);
                true
            }
            Err(_) => false,
        }
    }
}

pin_project! {
    /// The response future of [`Balance`].
    ///
    /// Dropping it before it completes counts the request as cancelled and
    /// releases its in-flight slot.
    pub struct ResponseFuture<F, S, R> {
        #[pin]
        state: State<F>,
        in_flight: Option<InFlight>,
        span: tracing::Span,
        // Set when the policy learns which endpoint issued a session cookie.
        learned: Option<Arc<LearnedHomes>>,
        // Set when this request may be retried on another endpoint.
        retry: Option<Retry<S, R>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Failed { error: Option<Error> },
        Calling {
            #[pin]
            future: F,
        },
        // Waiting for the wrapped service to be ready for a retry.
        Readying,
    }
}

impl<F, S, R> ResponseFuture<F, S, R> {
    fn failed(error: Error) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
            in_flight: None,
            span: tracing::Span::none(),
            learned: None,
            retry: None,
        }
    }
}

impl<F, S, R, T, E> Future for ResponseFuture<F, S, R>
where
    F: Future<Output = Result<T, E>>,
    S: Service<R, Future = F, Response = T, Error = E>,
    R: BalanceRequest,
    T: BalanceResponse,
    E: Into<BoxError>,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                // `None` only if polled again after completion, which the
                // `Future` contract leaves open; never completing is the
                // harmless answer.
                StateProj::Failed { error } => {
                    return error.take().map_or(Poll::Pending, |e| Poll::Ready(Err(e)))
                }
                StateProj::Calling { future } => {
                    let result = {
                        let _entered = this.span.enter();
                        ready!(future.poll(cx))
                    };
                    let (outcome, status, result) = match result {
                        Ok(response) => {
                            let status = response.status();
                            (Outcome::from_status(status), Some(status), Ok(response))
                        }
                        Err(error) => {
                            let error: BoxError = error.into();
                            (Outcome::from_error(error.as_ref()), None, Err(error))
                        }
                    };
                    let endpoint = this.in_flight.as_ref().map(|f| f.endpoint().clone());
                    if let (Ok(response), Some(learned), Some(endpoint)) =
                        (&result, this.learned.as_ref(), &endpoint)
                    {
                        learned.learn(response.headers(), endpoint);
                    }
                    if let Some(in_flight) = this.in_flight.take() {
                        let latency = in_flight.finish(outcome, status);
                        let _entered = this.span.enter();
                        tracing::debug!(
                            ?outcome,
                            latency_us = latency.as_micros() as u64,
                            "request finished"
                        );
                    }
                    if let (Some(retry), Some(endpoint)) = (this.retry.as_mut(), &endpoint) {
                        if retry.prepare_next(outcome, endpoint) {
                            tracing::debug!(?outcome, "retrying on another endpoint");
                            this.state.set(State::Readying);
                            continue;
                        }
                    }
                    return Poll::Ready(result.map_err(|source| Error::Upstream {
                        endpoint: endpoint.map_or_else(String::new, |e| e.url.as_str().to_owned()),
                        source,
                    }));
                }
                StateProj::Readying => {
                    let Some(retry) = this.retry.as_mut() else {
                        return Poll::Pending;
                    };
                    if let Err(error) = ready!(retry.service.poll_ready(cx)) {
                        return Poll::Ready(Err(Error::NotReady(error.into())));
                    }
                    let Some((request, endpoint)) = retry.next.take() else {
                        return Poll::Pending;
                    };
                    let (future, in_flight, span) = call(&mut retry.service, request, endpoint);
                    *this.in_flight = Some(in_flight);
                    *this.span = span;
                    this.state.set(State::Calling { future });
                }
            }
        }
    }
}
