//! The Tower service front end: drives the request pipeline (`pipeline`)
//! from a service call and its response future.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tower_service::Service;

use crate::balancer::Balancer;
use crate::error::{BoxError, Error};
use crate::pipeline::{Answer, Attempt, Trip};
use crate::request::{BalanceRequest, BalanceResponse};

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
                let service = trip.may_retry().then(|| self.inner.clone());
                ResponseFuture {
                    state: State::Calling { future },
                    attempt: Some(attempt),
                    trip: Some(trip),
                    service,
                    next: None,
                }
            }
            Err(error) => ResponseFuture {
                state: State::Failed { error: Some(error) },
                attempt: None,
                trip: None,
                service: None,
                next: None,
            },
        }
    }
}

pin_project! {
    /// The response future of [`BalanceService`].
    ///
    /// Dropping it before it completes counts the request as cancelled and
    /// releases its in-flight slot.
    pub struct ResponseFuture<F, S, R> {
        #[pin]
        state: State<F>,
        // The attempt being sent.
        attempt: Option<Attempt>,
        trip: Option<Trip<R>>,
        // A clone of the wrapped service, kept while a retry may follow.
        service: Option<S>,
        // The next attempt with its request, while the service gets ready
        // (boxed: rare, and it would double the future's size).
        next: Option<Box<(R, Attempt)>>,
    }
}

impl<F, S, R> std::fmt::Debug for ResponseFuture<F, S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let endpoint = self.attempt.as_ref().map(|a| a.endpoint().url.as_str());
        f.debug_struct("ResponseFuture")
            .field("endpoint", &endpoint)
            .field("retry_ready", &self.next.is_some())
            .finish_non_exhaustive()
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
                    let result = match this.attempt.as_ref() {
                        Some(attempt) => {
                            let _entered = attempt.span().enter();
                            ready!(future.poll(cx))
                        }
                        None => ready!(future.poll(cx)),
                    };
                    let (Some(attempt), Some(trip)) = (this.attempt.take(), this.trip.as_mut())
                    else {
                        return Poll::Pending;
                    };
                    let result: Result<T, BoxError> = result.map_err(Into::into);
                    let endpoint = result
                        .is_err()
                        .then(|| attempt.endpoint().url.as_str().to_owned());
                    let answer = match &result {
                        Ok(response) => Answer::Response {
                            status: response.status(),
                            headers: response.headers(),
                        },
                        Err(error) => Answer::Failed(error.as_ref()),
                    };
                    if let Some(next) = trip.end(attempt, answer, None) {
                        if this.service.is_some() {
                            *this.next = Some(Box::new(next));
                            this.state.set(State::Readying);
                            continue;
                        }
                    }
                    return Poll::Ready(result.map_err(|source| Error::Upstream {
                        endpoint: endpoint.unwrap_or_default(),
                        source,
                    }));
                }
                StateProj::Readying => {
                    let Some(service) = this.service.as_mut() else {
                        return Poll::Pending;
                    };
                    if let Err(error) = ready!(service.poll_ready(cx)) {
                        return Poll::Ready(Err(Error::NotReady(error.into())));
                    }
                    let Some(next) = this.next.take() else {
                        return Poll::Pending;
                    };
                    let (request, attempt) = *next;
                    let future = attempt.span().in_scope(|| service.call(request));
                    *this.attempt = Some(attempt);
                    this.state.set(State::Calling { future });
                }
            }
        }
    }
}
