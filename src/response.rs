//! The response future every Tower front end returns: it waits for the
//! attempt, ends it through the request pipeline, and when the pipeline
//! starts a retry, readies a service for the next endpoint and calls it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tower_service::Service;

use crate::balancer::LaneHandle;
use crate::endpoint::EndpointState;
use crate::error::{BoxError, Error};
use crate::outcome::Outcome;
use crate::pipeline::{failure, Answer, Attempt, Step, Trip};
use crate::request::{BalanceRequest, BalanceResponse};

/// Finds (or makes) the inner service of one endpoint; `None` when it has
/// none.
pub(crate) type ServiceFor<S> = Arc<dyn Fn(&Arc<EndpointState>) -> Option<S> + Send + Sync>;

pin_project! {
    /// The response future of [`BalanceService`](crate::BalanceService) and
    /// [`PerEndpointService`](crate::PerEndpointService).
    ///
    /// Dropping it before it completes counts the request as cancelled and
    /// releases its in-flight slot.
    pub struct ResponseFuture<F, S, R> {
        #[pin]
        state: State<F>,
        // The attempt being sent.
        attempt: Option<Attempt>,
        trip: Option<Trip<R>>,
        // The service the next attempt goes through, while it gets ready:
        // a clone of the shared inner service (made for the retry), or the
        // next endpoint's own.
        ready: Option<S>,
        // Per-endpoint services: where the next attempt's service comes from.
        services: Option<ServiceFor<S>>,
        // The next attempt with its request, while its service gets ready
        // (boxed: rare with a shared service, and it would double the
        // future's size).
        next: Option<Box<(R, Attempt)>>,
        // The balancer, and the shared inner service retries go through,
        // kept while a retry may follow (through this thread's lane: see
        // `balancer::handles`).
        held: Option<Arc<LaneHandle<S>>>,
    }
}

impl<F, S, R> std::fmt::Debug for ResponseFuture<F, S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let endpoint = self.attempt.as_ref().map(|a| a.url().as_str());
        f.debug_struct("ResponseFuture")
            .field("endpoint", &endpoint)
            .field("readying", &self.next.is_some())
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
        // Waiting for a service to be ready for the next attempt.
        Readying,
    }
}

impl<F, S, R> ResponseFuture<F, S, R> {
    /// A request already sent through the shared inner service; `held`,
    /// kept when a retry may follow, holds the balancer and the service a
    /// retry goes through.
    pub(crate) fn calling(
        future: F,
        attempt: Attempt,
        trip: Trip<R>,
        held: Option<Arc<LaneHandle<S>>>,
    ) -> Self {
        ResponseFuture {
            state: State::Calling { future },
            attempt: Some(attempt),
            trip: Some(trip),
            ready: None,
            services: None,
            next: None,
            held,
        }
    }

    /// A request to send through its endpoint's own service, once ready;
    /// `held` holds the balancer when a retry may follow.
    pub(crate) fn readying(
        request: R,
        attempt: Attempt,
        trip: Trip<R>,
        services: ServiceFor<S>,
        held: Option<Arc<LaneHandle<S>>>,
    ) -> Self {
        ResponseFuture {
            state: State::Readying,
            attempt: None,
            trip: Some(trip),
            ready: None,
            services: Some(services),
            next: Some(Box::new((request, attempt))),
            held,
        }
    }

    /// A request that failed before any endpoint was called.
    pub(crate) fn failed(error: Error) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
            attempt: None,
            trip: None,
            ready: None,
            services: None,
            next: None,
            held: None,
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
                    let mut result: Result<T, BoxError> = result.map_err(Into::into);
                    let endpoint = result.is_err().then(|| attempt.url().clone());
                    let served_by = result.is_ok().then(|| attempt.served_by());
                    let answer = match &result {
                        Ok(response) => Answer::Response {
                            status: response.status(),
                            headers: response.headers(),
                        },
                        Err(error) => Answer::Failed(error.as_ref()),
                    };
                    let held = this.held.as_deref();
                    let outcome =
                        match trip.end(held.map(LaneHandle::balancer), attempt, answer, None) {
                            Step::Retry(request, attempt)
                                if this.services.is_some()
                                    || held.is_some_and(LaneHandle::has_service) =>
                            {
                                *this.next = Some(Box::new((request, attempt)));
                                this.state.set(State::Readying);
                                continue;
                            }
                            Step::Retry(..) => Outcome::OtherError,
                            Step::Done(outcome) => outcome,
                        };
                    if let (Ok(response), Some(served_by)) = (&mut result, served_by) {
                        response.extensions_mut().insert(served_by);
                    }
                    return Poll::Ready(result.map_err(|source| match endpoint {
                        Some(endpoint) => failure(outcome, &endpoint, source),
                        None => Error::NotReady(source),
                    }));
                }
                StateProj::Readying => {
                    let Some(next) = this.next.as_ref() else {
                        return Poll::Pending;
                    };
                    if this.ready.is_none() {
                        let service = match this.services.as_ref() {
                            Some(services) => next.1.endpoint().and_then(|e| services(e)),
                            None => this.held.as_deref().and_then(LaneHandle::clone_service),
                        };
                        let Some(service) = service else {
                            let missing = format!("no inner service for endpoint {}", next.1.url());
                            return Poll::Ready(Err(Error::NotReady(missing.into())));
                        };
                        *this.ready = Some(service);
                    }
                    let Some(service) = this.ready.as_mut() else {
                        return Poll::Pending;
                    };
                    if let Err(error) = ready!(service.poll_ready(cx)) {
                        return Poll::Ready(Err(Error::NotReady(error.into())));
                    }
                    let Some(next) = this.next.take() else {
                        return Poll::Pending;
                    };
                    let (request, attempt) = *next;
                    let entered = attempt.span().enter();
                    let future = service.call(request);
                    drop(entered);
                    // A retry goes through a service of its own: a new
                    // clone of the shared one, or the next endpoint's.
                    *this.ready = None;
                    *this.attempt = Some(attempt);
                    this.state.set(State::Calling { future });
                }
            }
        }
    }
}
