//! The trip of one request, written once for every front end: pick an
//! endpoint, point the request at it, count it in flight; when the attempt
//! ends, classify the outcome, learn the session cookies the endpoint set,
//! record the outcome on the endpoint; then, if the outcome may be retried,
//! another endpoint is free and the budget allows, go again. A hedged
//! request (see `hedge`) goes again without waiting for the end: its front
//! end asks the trip for the hedge once the delay has passed, and ends each
//! attempt through it as well.
//!
//! The front ends only adapt types: the Tower service (`service`) drives a
//! [`Trip`] from its response future, the `reqwest-middleware` adapter from
//! a loop, and [`Selection`](crate::Selection) holds a single [`Attempt`]
//! that the caller ends by hand.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use http::{Extensions, HeaderMap, StatusCode};

use crate::affinity::{LearnedHomes, RequestInfo, SessionKey};
use crate::balancer::{Balancer, Picked};
use crate::endpoint::{EndpointCore, EndpointState, EndpointUrl, InFlight, ServedBy};
use crate::error::BoxError;
use crate::health::{safe_to_send_twice, Extra};
use crate::hedge::Hedge;
use crate::outcome::Outcome;
use crate::overload::{self, Overload, Signal};
use crate::request::sealed::Route;
#[cfg(feature = "metrics")]
use crate::telemetry::MethodClass;
use crate::Error;

/// How an attempt ended, as the front end saw it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Answer<'a> {
    /// The endpoint answered.
    Response {
        status: StatusCode,
        headers: &'a HeaderMap,
    },
    /// No answer: the wrapped service's error.
    Failed(&'a (dyn StdError + 'static)),
    /// A gRPC call ended: its `grpc-status` (from a trailers-only answer's
    /// headers or from the trailers; `None` when it had none) and the
    /// answer's HTTP status.
    #[cfg(feature = "tonic")]
    Grpc {
        status: StatusCode,
        grpc_status: Option<&'a http::HeaderValue>,
        /// Its `grpc-retry-pushback-ms`, from the same headers or trailers.
        pushback: Option<&'a http::HeaderValue>,
    },
    /// The client refused to send the request to this endpoint (its
    /// configuration does not allow it): charged to no endpoint.
    #[cfg(feature = "tonic")]
    Refused,
    /// The endpoint's client failed before sending the request (its
    /// channel could not get ready): a connect error, whatever the error.
    #[cfg(feature = "tonic")]
    NotSent,
    /// The client's connection to the endpoint went away with the request
    /// unsent (closed with it queued, a graceful GOAWAY), again after it
    /// was sent once more there: the endpoint is draining or rotating its
    /// connections, which says nothing of its health. Charged to no
    /// endpoint (counted as a client error), retried as a connect error
    /// is.
    #[cfg(feature = "tonic")]
    WentAway,
}

impl Answer<'_> {
    /// The status on the wire, if the endpoint answered.
    #[cfg(feature = "metrics")]
    fn status(&self) -> Option<StatusCode> {
        match self {
            Answer::Response { status, .. } => Some(*status),
            #[cfg(feature = "tonic")]
            Answer::Grpc { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A gRPC answer with status UNAVAILABLE: the server asks the caller to
    /// try again, so a call safe to send twice may go to another endpoint.
    fn grpc_unavailable(&self) -> bool {
        match self {
            #[cfg(feature = "tonic")]
            Answer::Grpc {
                grpc_status: Some(value),
                ..
            } => crate::outcome::is_grpc_unavailable(value),
            _ => false,
        }
    }

    /// The connection went away with the request unsent.
    fn went_away(&self) -> bool {
        #[cfg(feature = "tonic")]
        return matches!(self, Answer::WentAway);
        #[cfg(not(feature = "tonic"))]
        false
    }
}

/// One request sent to one endpoint: counted in flight until it is ended,
/// or dropped (then counted as cancelled).
#[derive(Debug)]
pub(crate) struct Attempt {
    in_flight: InFlight,
    /// The endpoint, when the pick kept it (see [`Balancer::pick_for`]).
    endpoint: Option<Arc<EndpointState>>,
    span: tracing::Span,
}

impl Attempt {
    /// Counts a request in flight on the endpoint it was picked for, from
    /// the pick's clock reading.
    pub(crate) fn start(picked: Picked) -> Self {
        // "request finished" (in `end_as`, this module's target) carries
        // the latency whenever a subscriber listens at debug: then the
        // request is timed for it. When none listens this is a load of
        // tracing's global level and no clock is read.
        let logged = tracing::enabled!(tracing::Level::DEBUG);
        let in_flight = InFlight::start_at(picked.lane, picked.at, logged);
        let span = tracing::debug_span!("tower_lb", endpoint = %in_flight.url());
        Attempt {
            in_flight,
            endpoint: picked.endpoint,
            span,
        }
    }

    /// Counts the attempt in the balancer's attempts, after `resend_count`
    /// earlier ones of the same request, and names its method for its
    /// duration series.
    #[cfg(feature = "metrics")]
    pub(crate) fn counted(mut self, method: MethodClass, resend_count: usize) -> Self {
        let metrics = &self.in_flight.core().metrics;
        metrics.balancer().attempt(resend_count);
        self.in_flight = self.in_flight.with_method(method);
        self
    }

    /// The address of the endpoint the request went to.
    pub(crate) fn url(&self) -> &EndpointUrl {
        self.in_flight.url()
    }

    /// The endpoint the request went to, as its response names it.
    pub(crate) fn served_by(&self) -> ServedBy {
        self.in_flight.core().served_by()
    }

    /// The endpoint the request went to, when the pick kept it.
    pub(crate) fn endpoint(&self) -> Option<&Arc<EndpointState>> {
        self.endpoint.as_ref()
    }

    /// The attempt's tracing span, entered while the wrapped service runs.
    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Classifies and records how the attempt ended; returns the outcome.
    pub(crate) fn end(self, answer: Answer<'_>) -> Outcome {
        let classified = self.classify(answer);
        let outcome = classified.0;
        #[cfg(feature = "metrics")]
        let attempt = self.answered(&answer);
        #[cfg(not(feature = "metrics"))]
        let attempt = self;
        attempt.end_as(classified);
        outcome
    }

    /// Notes the status `answer` came with on the wire, for metrics.
    #[cfg(feature = "metrics")]
    fn answered(mut self, answer: &Answer<'_>) -> Self {
        self.in_flight.answered(answer.status());
        self
    }

    /// The outcome of `answer` to this attempt, under its balancer's
    /// overload settings.
    fn classify(&self, answer: Answer<'_>) -> Classified {
        classify(answer, self.in_flight.core().overload())
    }

    /// Records an attempt already classified: its outcome, with the status
    /// if the endpoint answered; holds the endpoint off for an overload
    /// signal.
    fn end_as(self, (outcome, status, signal): Classified) {
        if let Some(signal) = signal {
            self.in_flight.core().hold_off(signal);
        }
        let latency = self.in_flight.finish(outcome, status);
        let _entered = self.span.enter();
        tracing::debug!(
            ?outcome,
            latency_us = latency.map(|l| l.as_micros() as u64),
            "request finished"
        );
    }
}

/// An answer's outcome, its status if the endpoint answered, and its
/// overload signal if it gave one.
type Classified = (Outcome, Option<StatusCode>, Option<Signal>);

/// The outcome of an answer, its status if the endpoint answered, and,
/// when `overload` reads signals, its overload signal (the outcome is then
/// [`Outcome::Overloaded`]).
fn classify(answer: Answer<'_>, overload: &Overload) -> Classified {
    let signal = match answer {
        Answer::Response { status, headers } => overload::http_signal(status, headers),
        #[cfg(feature = "tonic")]
        Answer::Grpc {
            grpc_status,
            pushback,
            ..
        } => overload::grpc_signal(grpc_status, pushback),
        _ => None,
    };
    let (outcome, status) = classify_health(answer);
    match signal.filter(|_| overload.is_enabled()) {
        Some(signal) => (Outcome::Overloaded, status, Some(signal)),
        None => (outcome, status, None),
    }
}

/// The outcome of an answer, overload aside, and its status if the
/// endpoint answered.
fn classify_health(answer: Answer<'_>) -> (Outcome, Option<StatusCode>) {
    match answer {
        Answer::Response { status, .. } => (Outcome::from_status(status), Some(status)),
        Answer::Failed(error) => (Outcome::from_error(error), None),
        #[cfg(feature = "tonic")]
        Answer::Grpc {
            status,
            grpc_status,
            ..
        } => Outcome::from_grpc(status, grpc_status),
        #[cfg(feature = "tonic")]
        Answer::Refused => (Outcome::ClientError, None),
        #[cfg(feature = "tonic")]
        Answer::NotSent => (Outcome::ConnectError, None),
        #[cfg(feature = "tonic")]
        Answer::WentAway => (Outcome::ClientError, None),
    }
}

/// What one request needs beyond its current attempt: how many retries
/// are left, the learned-affinity table when the policy learns cookies,
/// and, only while a retry can happen, the replay state (kept out of line,
/// so that a trip that cannot be retried stays small).
///
/// The trip holds no balancer: whoever drives it passes one to
/// [`Trip::end`], and a front end whose response future outlives the
/// service keeps a hold on it while a retry may follow
/// ([`LaneHandle`](crate::balancer::LaneHandle)).
#[derive(Debug)]
pub(crate) struct Trip<R> {
    retries_left: u32,
    /// The request may be sent twice (see [`safe_to_send_twice`]); known
    /// once the trip starts.
    safe: bool,
    /// Its front end can send hedges (see [`Trip::with_hedging`]).
    hedgeable: bool,
    learned: Option<Arc<LearnedHomes>>,
    replay: Option<Box<Replay<R>>>,
}

/// What a retry needs: the endpoints tried, and an unrouted copy of the
/// request while another attempt may follow.
#[derive(Debug)]
struct Replay<R> {
    tried: Vec<Arc<EndpointCore>>,
    copy: Option<R>,
    /// When the request is hedged: the delay, and the hedges left.
    hedge: Option<(Option<Duration>, u32)>,
    /// Attempts sent so far, the first included: the next one's
    /// `http.request.resend_count` (`tried` may name an endpoint twice).
    #[cfg(feature = "metrics")]
    sent: usize,
}

impl<R> Trip<R> {
    /// Whether a hedge of the request may still be sent (it is hedged,
    /// hedges are left and a copy is kept), and then how long to wait for
    /// an answer before it: `None` while the delay is not known (a
    /// percentile before enough answers were timed).
    pub(crate) fn hedge_delay(&self) -> Option<Option<Duration>> {
        let replay = self.replay.as_ref().filter(|r| r.copy.is_some())?;
        replay
            .hedge
            .filter(|(_, left)| *left > 0)
            .map(|(delay, _)| delay)
    }
}

impl<R: Route> Trip<R> {
    /// Starts the trip of one request through `balancer`.
    pub(crate) fn new(balancer: &Balancer) -> Self {
        Trip {
            retries_left: balancer
                .retrying()
                .map_or(0, |retrying| retrying.policy.max_retries),
            safe: false,
            hedgeable: false,
            learned: balancer.learned().cloned(),
            replay: None,
        }
    }

    /// The trip of a request that is sent once, whatever the retry
    /// settings.
    pub(crate) fn without_retries(balancer: &Balancer) -> Self {
        Trip {
            retries_left: 0,
            ..Trip::new(balancer)
        }
    }

    /// The trip of a request whose front end sends hedges, when the
    /// balancer hedges (see [`Trip::hedge_delay`]).
    pub(crate) fn with_hedging(self) -> Self {
        Trip {
            hedgeable: true,
            ..self
        }
    }

    /// Picks an endpoint of `balancer` for `request`, points the request at
    /// it and starts the first attempt; counts the request in the retry
    /// budget.
    ///
    /// `extensions` stand in for the request's own when it has none to show
    /// (a `reqwest::Request` in the middleware).
    ///
    /// Errors: [`Error::NoEndpointAvailable`], [`Error::InvalidTarget`],
    /// [`Error::InvalidRequest`]; no attempt is started, so no endpoint is
    /// charged.
    ///
    /// `keep_endpoint`: the attempt keeps its endpoint's handle (a front end
    /// that finds the endpoint's own service by it).
    pub(crate) fn start(
        &mut self,
        balancer: &Balancer,
        request: &mut R,
        extensions: Option<&Extensions>,
        keep_endpoint: bool,
    ) -> Result<Attempt, Error> {
        let info = with_extensions(request.info(), extensions);
        let hedger = balancer.hedger().filter(|_| self.hedgeable);
        self.safe = (self.retries_left > 0 || hedger.is_some())
            && safe_to_send_twice(info.method(), info.headers, info.extensions);
        let keep = keep_endpoint || self.learned.is_some();
        #[cfg(feature = "metrics")]
        let method = MethodClass::of(info.method());
        let Some(picked) = balancer.pick_for(&info, &[], keep) else {
            tracing::debug!("no endpoint available");
            return Err(Error::NoEndpointAvailable);
        };
        let hedge = hedger
            .filter(|_| self.safe && picked.takers > 1)
            .and_then(|hedger| {
                let asked = info.extensions.and_then(|e| e.get::<Hedge>());
                Some((hedger.delay_for(asked)?, hedger.max_attempts() - 1))
            });
        if hedge.is_some() || self.may_retry_on(balancer, 0, picked.takers) {
            // A body that cannot be sent twice (a stream) means no retry,
            // no hedge, and no replay state.
            self.replay = request.try_clone().map(|copy| {
                Box::new(Replay {
                    tried: Vec::new(),
                    copy: Some(copy),
                    hedge,
                    #[cfg(feature = "metrics")]
                    sent: 1,
                })
            });
        }
        route(
            request,
            &picked.lane.core.url,
            balancer.reads_session_header(),
        )?;
        if let Some(retrying) = balancer.retrying() {
            retrying
                .budget
                .deposit_at(picked.at.unwrap_or_else(|| balancer.now()));
        }
        let attempt = Attempt::start(picked);
        #[cfg(feature = "metrics")]
        let attempt = attempt.counted(method, 0);
        Ok(attempt)
    }

    /// Whether `request` may be sent once more: retries are left, its
    /// method can be retried under the policy, and more endpoints than the
    /// `tried` ones take requests (of `takers`).
    fn may_retry_on(&self, balancer: &Balancer, tried: usize, takers: usize) -> bool {
        self.retries_left > 0
            && takers > tried + 1
            && balancer
                .retrying()
                .is_some_and(|retrying| retrying.may_retry(self.safe))
    }

    /// Whether a copy of the request is kept: a retry or a hedge may follow.
    pub(crate) fn may_retry(&self) -> bool {
        self.replay.as_ref().is_some_and(|r| r.copy.is_some())
    }

    /// A copy of the request pointed at `endpoint` again, when a copy is
    /// kept: for an attempt whose request its connection dropped unsent as
    /// it went away, sent once more through the same endpoint's client
    /// (which connects again) as the same attempt.
    #[cfg(feature = "tonic")]
    pub(crate) fn copy_for(&self, balancer: &Balancer, endpoint: &EndpointUrl) -> Option<R> {
        let mut copy = self.replay.as_ref()?.copy.as_ref()?.try_clone()?;
        route(&mut copy, endpoint, balancer.reads_session_header()).ok()?;
        Some(copy)
    }

    /// A hedge of the request: the next attempt, on an endpoint none of
    /// the request's attempts went to (`first`, the first attempt, and
    /// every hedge before), sent while they still wait; if one is free and
    /// the budget allows (a refusal is counted as a hedge's). It keeps its
    /// endpoint's handle if `keep`. `None` ends the hedging of this request.
    pub(crate) fn hedge(
        &mut self,
        balancer: &Balancer,
        first: Option<&Attempt>,
        keep: bool,
        extensions: Option<&Extensions>,
    ) -> Option<(R, Attempt)> {
        let stop = |trip: &mut Self| {
            if let Some((_, left)) = trip.replay.as_mut().and_then(|r| r.hedge.as_mut()) {
                *left = 0;
            }
            None
        };
        self.hedge_delay()??;
        let replay = self.replay.as_mut()?;
        if let Some(first) = first.map(|first| first.in_flight.core()) {
            if !replay.tried.iter().any(|tried| Arc::ptr_eq(tried, first)) {
                replay.tried.push(first.clone());
            }
        }
        let copy = replay.copy.as_ref()?;
        let info = with_extensions(copy.info(), extensions);
        #[cfg(feature = "metrics")]
        let method = MethodClass::of(info.method());
        let keep = keep || self.learned.is_some();
        let Some(next) = balancer.pick_for(&info, &replay.tried, keep) else {
            return stop(self);
        };
        let granted = balancer
            .retrying()
            .is_some_and(|retrying| retrying.budget.withdraw(Extra::Hedge));
        if !granted {
            tracing::debug!("hedge refused by the budget");
            #[cfg(feature = "metrics")]
            next.lane.core.metrics.balancer().hedge_refused();
            return stop(self);
        }
        let replay = self.replay.as_mut()?;
        let mut request = replay.copy.take()?;
        replay.tried.push(next.lane.core.clone());
        if let Some((_, left)) = replay.hedge.as_mut() {
            *left -= 1;
        }
        let (hedges_left, tried) = (
            replay.hedge.is_some_and(|(_, left)| left > 0),
            replay.tried.len(),
        );
        if hedges_left || self.may_retry_on(balancer, tried, next.takers) {
            if let Some(replay) = self.replay.as_mut() {
                replay.copy = request.try_clone();
            }
        }
        route(
            &mut request,
            &next.lane.core.url,
            balancer.reads_session_header(),
        )
        .ok()?;
        tracing::debug!("hedging on another endpoint");
        let attempt = Attempt::start(next);
        #[cfg(feature = "metrics")]
        let attempt = {
            let replay = self.replay.as_mut()?;
            let resend_count = replay.sent;
            replay.sent += 1;
            attempt.in_flight.core().metrics.balancer().hedged();
            attempt.counted(method, resend_count)
        };
        Some((request, attempt))
    }

    /// Ends `attempt` of a hedged request if it failed while another
    /// attempt of the request still waits: records its outcome, which does
    /// not end the request. Any other attempt is given back, to end with
    /// [`Trip::end`].
    pub(crate) fn end_beside(
        &mut self,
        attempt: Attempt,
        answer: Answer<'_>,
    ) -> Result<Outcome, Attempt> {
        let classified = attempt.classify(answer);
        let outcome = classified.0;
        if outcome == Outcome::Success {
            return Err(attempt);
        }
        #[cfg(feature = "metrics")]
        let attempt = attempt.answered(&answer);
        attempt.end_as(classified);
        Ok(outcome)
    }

    /// Ends `attempt` with `answer`: learns the session cookies of an
    /// answer and records the outcome. Then decides on a retry through
    /// `balancer` (the one the trip started on; `None` when the caller
    /// kept none, as when [`Trip::may_retry`] was false): a copy was kept,
    /// the outcome and method allow it, another endpoint is free and the
    /// budget has room (only a retry that can happen draws on it).
    /// Returns the next attempt with its request, or the outcome that
    /// stands.
    pub(crate) fn end(
        &mut self,
        balancer: Option<&Balancer>,
        attempt: Attempt,
        answer: Answer<'_>,
        extensions: Option<&Extensions>,
    ) -> Step<R> {
        if let (Answer::Response { headers, .. }, Some(learned), Some(endpoint)) =
            (answer, &self.learned, attempt.endpoint())
        {
            learned.learn(headers, endpoint);
        }
        let classified = attempt.classify(answer);
        let outcome = classified.0;
        // The endpoint's core is taken (a reference count other cores
        // write too) only for a retry, to leave it out of the next pick.
        let balancer = balancer.filter(|balancer| {
            self.may_retry()
                && balancer.retrying().is_some_and(|retrying| {
                    retrying.retries(outcome, self.safe)
                        || (answer.grpc_unavailable() && retrying.retries_unavailable(self.safe))
                        || (answer.went_away()
                            && retrying.retries(Outcome::ConnectError, self.safe))
                })
        });
        let tried = balancer.map(|balancer| (balancer, attempt.in_flight.core().clone()));
        let keep = attempt.endpoint.is_some();
        #[cfg(feature = "metrics")]
        let attempt = attempt.answered(&answer);
        attempt.end_as(classified);
        let next = tried
            .and_then(|(balancer, tried)| self.retry(balancer, tried, keep, outcome, extensions));
        match next {
            Some((request, attempt)) => Step::Retry(request, attempt),
            None => Step::Done(outcome),
        }
    }

    /// The next attempt after one that ended with `outcome` on the endpoint
    /// of `tried` (an outcome the retry settings retry), if another
    /// endpoint is free and the budget allows; it keeps its endpoint's
    /// handle if `keep`.
    fn retry(
        &mut self,
        balancer: &Balancer,
        tried: Arc<EndpointCore>,
        keep: bool,
        outcome: Outcome,
        extensions: Option<&Extensions>,
    ) -> Option<(R, Attempt)> {
        let mut replay = self.replay.take()?;
        // A hedged request's attempts, retries included, are capped.
        if let Some((_, left)) = replay.hedge.as_mut() {
            *left = left.checked_sub(1)?;
        }
        let mut request = replay.copy.take()?;
        let retrying = balancer.retrying()?;
        replay.tried.push(tried);
        let info = with_extensions(request.info(), extensions);
        #[cfg(feature = "metrics")]
        let method = MethodClass::of(info.method());
        let next = balancer.pick_for(&info, &replay.tried, keep)?;
        if !retrying.budget.withdraw(Extra::Retry) {
            #[cfg(feature = "metrics")]
            next.lane.core.metrics.balancer().retry_refused();
            return None;
        }
        self.retries_left = self.retries_left.saturating_sub(1);
        if self.may_retry_on(balancer, replay.tried.len(), next.takers) {
            replay.copy = request.try_clone();
        }
        route(
            &mut request,
            &next.lane.core.url,
            balancer.reads_session_header(),
        )
        .ok()?;
        tracing::debug!(?outcome, "retrying on another endpoint");
        #[cfg(feature = "metrics")]
        let resend_count = {
            replay.sent += 1;
            replay.sent - 1
        };
        self.replay = Some(replay);
        let attempt = Attempt::start(next);
        #[cfg(feature = "metrics")]
        let attempt = attempt.counted(method, resend_count);
        Some((request, attempt))
    }
}

/// What follows an attempt.
#[derive(Debug)]
pub(crate) enum Step<R> {
    /// Another attempt, already started, with its request.
    Retry(R, Attempt),
    /// The answer stands; how the last attempt ended.
    Done(Outcome),
}

/// The error a caller gets for a failed last attempt on `endpoint`: the
/// variant says whose failure it was and whether the request may have been
/// processed.
pub(crate) fn failure(outcome: Outcome, endpoint: &EndpointUrl, source: BoxError) -> Error {
    let endpoint = endpoint.as_str().to_owned();
    match outcome {
        Outcome::Closed => Error::MayHaveBeenProcessed { endpoint, source },
        Outcome::ClientError => Error::Client { endpoint, source },
        _ => Error::Upstream { endpoint, source },
    }
}

/// Points `request` at `endpoint`, without the balancer's own session-key
/// header when `strip_session_header` (the balancer reads that header).
pub(crate) fn route<R: Route>(
    request: &mut R,
    endpoint: &EndpointUrl,
    strip_session_header: bool,
) -> Result<(), Error> {
    if strip_session_header {
        request.headers_mut().remove(SessionKey::HEADER);
    }
    request.route_to(endpoint)
}

/// `info` reading `extensions` when given.
fn with_extensions<'a>(
    info: RequestInfo<'a>,
    extensions: Option<&'a Extensions>,
) -> RequestInfo<'a> {
    RequestInfo {
        extensions: extensions.or(info.extensions),
        ..info
    }
}
