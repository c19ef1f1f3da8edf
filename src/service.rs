//! The balancing service and its response future: pick an endpoint, point
//! the request at it, call the wrapped service, time and classify the
//! outcome, and record it on the endpoint.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tower_service::Service;

use crate::affinity::LearnedHomes;
use crate::endpoint::InFlight;
use crate::outcome::Outcome;
use crate::{BalanceRequest, BalanceResponse, Balancer, BoxError, Error};

/// A service that sends each request to an endpoint chosen by a
/// [`Balancer`], through the wrapped service `S`.
///
/// `S` takes the same request type: an [`http::Request<B>`] service (a
/// hyper client, or [`HttpToReqwest`](crate::HttpToReqwest)) or a
/// `reqwest::Client` with `reqwest::Request`. `poll_ready` is the wrapped
/// service's; clones share the balancer. Errors are [`Error`]: the wrapped
/// service's own stays reachable as [`Error::Upstream`]'s source.
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
    S: Service<R>,
    S::Response: BalanceResponse,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| Error::NotReady(e.into()))
    }

    fn call(&mut self, mut request: R) -> Self::Future {
        let endpoint = match self.balancer.pick(&request) {
            Some(endpoint) => endpoint,
            None => {
                tracing::debug!("no endpoint available");
                return ResponseFuture::failed(Error::NoEndpointAvailable);
            }
        };
        if let Err(error) = request.route_to(&endpoint.url) {
            return ResponseFuture::failed(error);
        }
        let span = tracing::debug_span!("tower_lb", endpoint = %endpoint.url);
        let in_flight = InFlight::start(endpoint);
        let future = span.in_scope(|| self.inner.call(request));
        ResponseFuture {
            state: State::Sent {
                future,
                in_flight: Some(in_flight),
                learned: self.balancer.learned().cloned(),
                span,
            },
        }
    }
}

pin_project! {
    /// The response future of [`Balance`].
    ///
    /// Dropping it before it completes counts the request as cancelled and
    /// releases its in-flight slot.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Failed { error: Option<Error> },
        Sent {
            #[pin]
            future: F,
            in_flight: Option<InFlight>,
            // Set when the policy learns which endpoint issued a session cookie.
            learned: Option<Arc<LearnedHomes>>,
            span: tracing::Span,
        },
    }
}

impl<F> ResponseFuture<F> {
    fn failed(error: Error) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    T: BalanceResponse,
    E: Into<BoxError>,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            // `None` only if polled again after completion, which the
            // `Future` contract leaves open; never completing is the
            // harmless answer.
            StateProj::Failed { error } => {
                error.take().map_or(Poll::Pending, |e| Poll::Ready(Err(e)))
            }
            StateProj::Sent {
                future,
                in_flight,
                learned,
                span,
            } => {
                let _entered = span.enter();
                let result = ready!(future.poll(cx));
                let mut status = None;
                let (outcome, result) = match result {
                    Ok(response) => {
                        status = Some(response.status());
                        if let (Some(learned), Some(in_flight)) =
                            (learned.as_ref(), in_flight.as_ref())
                        {
                            learned.learn(response.headers(), in_flight.endpoint());
                        }
                        (Outcome::from_status(response.status()), Ok(response))
                    }
                    Err(error) => {
                        let error: BoxError = error.into();
                        (Outcome::from_error(error.as_ref()), Err(error))
                    }
                };
                let result = result.map_err(|source| Error::Upstream {
                    endpoint: in_flight
                        .as_ref()
                        .map_or_else(String::new, |f| f.endpoint().url.as_str().to_owned()),
                    source,
                });
                if let Some(in_flight) = in_flight.take() {
                    let latency = in_flight.finish(outcome, status);
                    tracing::debug!(
                        ?outcome,
                        latency_us = latency.as_micros() as u64,
                        "request finished"
                    );
                }
                Poll::Ready(result)
            }
        }
    }
}
