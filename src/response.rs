//! The response future every Tower front end returns: it waits for the
//! attempt, ends it through the request pipeline, and when the pipeline
//! starts a retry, readies a service for the next endpoint and calls it.
//! A hedged request also keeps, out of line, its hedges: sent beside the
//! attempt still waiting once the delay has passed, each readied and
//! called the same way; the first answer wins and the others are dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
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
        // A hedged request's hedges and timer; `None` when it is not hedged.
        hedges: Option<Box<Hedges<F, S, R>>>,
    }
}

/// The hedges of one request (see `hedge`): boxed, made only for a
/// request that is hedged.
struct Hedges<F, S, R> {
    /// Fires when the next hedge is due; `None` once no more may be sent.
    timer: Option<Pin<Box<Sleep>>>,
    /// When the first attempt was sent, until it ends: the latency
    /// estimate counts how long it waited.
    first_sent: Option<Instant>,
    /// A hedge whose service is getting ready.
    readying: Option<(S, R, Attempt)>,
    /// Hedges sent, waiting for their answers.
    waiting: Vec<(Pin<Box<F>>, Attempt)>,
}

impl<F, S, R> Hedges<F, S, R> {
    /// The hedges of a request hedged after `delay` (`None`: not known
    /// yet, so the first attempt is only timed), sent now.
    fn after(delay: Option<std::time::Duration>) -> Option<Box<Self>> {
        // The timer needs Tokio's time driver: outside a runtime the
        // request is sent once.
        tokio::runtime::Handle::try_current().ok()?;
        let now = Instant::now();
        Some(Box::new(Hedges {
            timer: delay.map(|delay| Box::pin(tokio::time::sleep_until(now + delay))),
            first_sent: Some(now),
            readying: None,
            waiting: Vec::new(),
        }))
    }

    /// Attempts of the request still waiting among the hedges.
    fn pending(&self) -> usize {
        self.waiting.len() + usize::from(self.readying.is_some())
    }
}

/// What the hedges of a request came to when polled.
enum Hedged<T, E> {
    /// A hedge's answer that ends the request (or is its last attempt's).
    Answer(Result<T, E>, Attempt),
    /// The last attempt could not be sent: its service failed to get ready.
    NotReady(Error),
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
        // The first attempt failed; the hedges of the request still wait.
        HedgesOnly,
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
        let hedges = trip.hedge_delay().and_then(Hedges::after);
        ResponseFuture {
            state: State::Calling { future },
            attempt: Some(attempt),
            trip: Some(trip),
            ready: None,
            services: None,
            next: None,
            hedges,
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
        let hedges = trip.hedge_delay().and_then(Hedges::after);
        ResponseFuture {
            state: State::Readying,
            attempt: None,
            trip: Some(trip),
            ready: None,
            services: Some(services),
            next: Some(Box::new((request, attempt))),
            hedges,
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
            hedges: None,
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
            // An attempt's answer: the first attempt's (`by_hedge` false)
            // or a hedge's.
            let (result, attempt, by_hedge) = match this.state.as_mut().project() {
                // `None` only if polled again after completion, which the
                // `Future` contract leaves open; never completing is the
                // harmless answer.
                StateProj::Failed { error } => {
                    return error.take().map_or(Poll::Pending, |e| Poll::Ready(Err(e)))
                }
                StateProj::Calling { future } => {
                    let polled = match this.attempt.as_ref() {
                        Some(attempt) => {
                            let _entered = attempt.span().enter();
                            future.poll(cx)
                        }
                        None => future.poll(cx),
                    };
                    match (polled, this.hedges.as_deref_mut()) {
                        (Poll::Ready(result), _) => {
                            let Some(attempt) = this.attempt.take() else {
                                return Poll::Pending;
                            };
                            (result, attempt, false)
                        }
                        (Poll::Pending, None) => return Poll::Pending,
                        (Poll::Pending, Some(hedges)) => {
                            let held = this.held.as_deref();
                            let first = this.attempt.as_ref();
                            match ready!(hedges.poll(this.trip, held, this.services, first, cx)) {
                                Hedged::Answer(result, attempt) => (result, attempt, true),
                                Hedged::NotReady(error) => return Poll::Ready(Err(error)),
                            }
                        }
                    }
                }
                StateProj::HedgesOnly => {
                    let Some(hedges) = this.hedges.as_deref_mut() else {
                        return Poll::Pending;
                    };
                    let held = this.held.as_deref();
                    match ready!(hedges.poll(this.trip, held, this.services, None, cx)) {
                        Hedged::Answer(result, attempt) => (result, attempt, true),
                        Hedged::NotReady(error) => return Poll::Ready(Err(error)),
                    }
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
                    continue;
                }
            };
            let Some(trip) = this.trip.as_mut() else {
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
            let attempt = match this.hedges.as_deref_mut() {
                Some(hedges) => {
                    // Another attempt of the request still waits: one that
                    // failed does not end it.
                    let first_waits = by_hedge && this.attempt.is_some();
                    let others = hedges.pending() + usize::from(first_waits);
                    let attempt = match others {
                        0 => attempt,
                        _ => match trip.end_beside(attempt, answer) {
                            Ok(_) => {
                                if !by_hedge {
                                    hedges.first_sent = None;
                                    this.state.set(State::HedgesOnly);
                                }
                                continue;
                            }
                            Err(attempt) => attempt,
                        },
                    };
                    hedges.answered(held.map(LaneHandle::balancer), by_hedge, result.is_ok());
                    attempt
                }
                None => attempt,
            };
            let outcome = match trip.end(held.map(LaneHandle::balancer), attempt, answer, None) {
                Step::Retry(request, attempt)
                    if this.services.is_some() || held.is_some_and(LaneHandle::has_service) =>
                {
                    *this.next = Some(Box::new((request, attempt)));
                    this.state.set(State::Readying);
                    continue;
                }
                Step::Retry(..) => Outcome::OtherError,
                Step::Done(outcome) => outcome,
            };
            if this.hedges.is_some() {
                // The request's other attempts lose: dropped, they are
                // counted as cancelled and leave the in-flight counts.
                *this.hedges = None;
                if by_hedge {
                    *this.attempt = None;
                    this.state.set(State::Failed { error: None });
                }
            }
            if let (Ok(response), Some(served_by)) = (&mut result, served_by) {
                response.extensions_mut().insert(served_by);
            }
            return Poll::Ready(result.map_err(|source| match endpoint {
                Some(endpoint) => failure(outcome, &endpoint, source),
                None => Error::NotReady(source),
            }));
        }
    }
}

impl<F, S, R, T, E> Hedges<F, S, R>
where
    F: Future<Output = Result<T, E>>,
    S: Service<R, Future = F, Response = T, Error = E>,
    R: BalanceRequest,
    E: Into<BoxError>,
{
    /// Polls the hedges sent, the one getting ready, then the timer: when
    /// it fires, asks the trip for the next hedge (on the balancer `held`
    /// holds, through a clone of its service or the endpoint's own from
    /// `services`). `first`: the first attempt, while it waits. Ready
    /// with the first answer of a hedge.
    fn poll(
        &mut self,
        trip: &mut Option<Trip<R>>,
        held: Option<&LaneHandle<S>>,
        services: &Option<ServiceFor<S>>,
        first: Option<&Attempt>,
        cx: &mut Context<'_>,
    ) -> Poll<Hedged<T, E>> {
        loop {
            let answered =
                self.waiting
                    .iter_mut()
                    .enumerate()
                    .find_map(|(i, (future, attempt))| {
                        let _entered = attempt.span().enter();
                        match future.as_mut().poll(cx) {
                            Poll::Ready(result) => Some((i, result)),
                            Poll::Pending => None,
                        }
                    });
            if let Some((i, result)) = answered {
                let (_, attempt) = self.waiting.swap_remove(i);
                return Poll::Ready(Hedged::Answer(result, attempt));
            }
            if let Some((service, ..)) = self.readying.as_mut() {
                match service.poll_ready(cx) {
                    Poll::Pending => {}
                    Poll::Ready(ready) => {
                        let Some((mut service, request, attempt)) = self.readying.take() else {
                            return Poll::Pending;
                        };
                        match ready {
                            Ok(()) => {
                                let entered = attempt.span().enter();
                                let future = service.call(request);
                                drop(entered);
                                self.waiting.push((Box::pin(future), attempt));
                            }
                            // The hedge was not sent: dropped, it counts
                            // as cancelled; the request fails only if it
                            // was its last attempt.
                            Err(error) if first.is_none() && self.waiting.is_empty() => {
                                return Poll::Ready(Hedged::NotReady(Error::NotReady(error.into())))
                            }
                            Err(_) => {}
                        }
                        continue;
                    }
                }
            }
            let Some(timer) = self.timer.as_mut() else {
                return Poll::Pending;
            };
            ready!(timer.as_mut().poll(cx));
            let (Some(trip), Some(handle)) = (trip.as_mut(), held) else {
                self.timer = None;
                return Poll::Pending;
            };
            if self.readying.is_none() {
                let keep = services.is_some();
                if let Some((request, attempt)) = trip.hedge(handle.balancer(), first, keep, None) {
                    let service = match services {
                        Some(services) => attempt.endpoint().and_then(|e| services(e)),
                        None => handle.clone_service(),
                    };
                    // No service for the endpoint: the hedge is dropped
                    // unsent, counted as cancelled.
                    if let Some(service) = service {
                        self.readying = Some((service, request, attempt));
                    }
                }
            }
            match trip.hedge_delay().flatten() {
                Some(delay) => timer.as_mut().reset(Instant::now() + delay),
                None => self.timer = None,
            }
        }
    }

    /// Notes the answer that ends the request (a hedge's if `by_hedge`;
    /// `ok` if the endpoint answered) on the balancer's hedging state: how
    /// long the first attempt waited, and a hedge that won.
    fn answered(&mut self, balancer: Option<&crate::Balancer>, by_hedge: bool, ok: bool) {
        let Some(hedger) = balancer.and_then(crate::Balancer::hedger) else {
            return;
        };
        if let (Some(sent), true) = (self.first_sent.take(), ok || by_hedge) {
            let now = Instant::now();
            hedger.record(now.saturating_duration_since(sent), now);
        }
        if by_hedge && ok {
            hedger.count_won();
            #[cfg(feature = "metrics")]
            if let Some(balancer) = balancer {
                balancer.metrics().hedge_won();
            }
        }
    }
}
