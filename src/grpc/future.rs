//! A balanced gRPC call's response future: it sends the call through the
//! picked endpoint's channel, ends each attempt through the request
//! pipeline's trip, which decides on a retry, and hands the answer's body
//! the last attempt when the outcome comes in the trailers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use hyper::body::Body;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Status;
use tower_service::Service;

use super::body::GrpcBody;
use super::channel::{channel_for, status_for, EndpointChannel};
use super::deadline::Deadline;
use super::request::GrpcRequest;
use crate::balancer::LaneHandle;
use crate::endpoint::EndpointUrl;
use crate::error::{BoxError, Error};
use crate::outcome::{connection_went_away, Outcome};
use crate::per_endpoint::Services;
use crate::pipeline::{failure, Answer, Attempt, Step, Trip};
use crate::request::sealed::Route;
#[cfg(doc)]
use crate::{BalancedChannel, GrpcOptions};

/// Every endpoint's channel, held by a call while a retry may follow.
pub(super) type Channels = Arc<Services<EndpointChannel>>;

pin_project! {
    /// The response future of [`BalancedChannel`]: the answer's head, with
    /// the call's attempt moved into its [`GrpcBody`] when the outcome
    /// comes in the trailers. A call that did not reach its endpoint is
    /// sent to another (see [`GrpcOptions`]) before the head is given.
    /// Dropped before the head, it counts the call as cancelled.
    pub struct GrpcResponseFuture {
        #[pin]
        calling: Option<tonic::transport::channel::ResponseFuture>,
        // The endpoint's channel and the request, until the channel is ready.
        ready: Option<(Channel, GrpcRequest)>,
        attempt: Option<Attempt>,
        trip: Option<Trip<GrpcRequest>>,
        // The balancer and the channels, while a retry may follow.
        held: Option<Arc<LaneHandle<Channels>>>,
        failed: Option<Status>,
        // How many times the current attempt's request was sent once more
        // on its endpoint after its connection went away.
        resends: u8,
        // A call the trip keeps no copy of (one endpoint, retries off):
        // its endpoint's channel and a copy of its request, for those
        // resends.
        spare: Option<(Channel, GrpcRequest)>,
        // The call's deadline (its grpc-timeout), while a retry may follow.
        deadline: Option<Deadline>,
    }
}

impl std::fmt::Debug for GrpcResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let endpoint = self.attempt.as_ref().map(|a| a.url().as_str());
        f.debug_struct("GrpcResponseFuture")
            .field("endpoint", &endpoint)
            .finish_non_exhaustive()
    }
}

impl GrpcResponseFuture {
    /// A call whose first attempt started, to send through `channel` once
    /// it is ready; `held` while a retry may follow; the call's `deadline`;
    /// a `spare` channel and copy when the trip keeps none.
    pub(super) fn sending(
        channel: Channel,
        request: GrpcRequest,
        attempt: Attempt,
        trip: Trip<GrpcRequest>,
        held: Option<Arc<LaneHandle<Channels>>>,
        deadline: Option<Deadline>,
        spare: Option<(Channel, GrpcRequest)>,
    ) -> Self {
        GrpcResponseFuture {
            calling: None,
            ready: Some((channel, request)),
            attempt: Some(attempt),
            trip: Some(trip),
            held,
            failed: None,
            resends: 0,
            spare,
            deadline,
        }
    }

    /// A call that fails with `status` before any endpoint is called.
    pub(super) fn failed(status: Status) -> Self {
        GrpcResponseFuture {
            calling: None,
            ready: None,
            attempt: None,
            trip: None,
            held: None,
            failed: Some(status),
            resends: 0,
            spare: None,
            deadline: None,
        }
    }
}

/// How many times an attempt that cannot go to another endpoint (one
/// endpoint, retries off) is sent once more to its own after its
/// connection went away with it unsent: the channel may not have seen the
/// first close yet. One that can go elsewhere is sent once more, once.
const RESENDS: u8 = 3;

/// Ends `attempt` with `answer` through the trip, which decides on a
/// retry, unless the call's `deadline` is spent (then no retry follows,
/// and the flag returned is set). A retry's request carries the time left
/// in its `grpc-timeout`.
fn end_attempt(
    trip: Option<&mut Trip<GrpcRequest>>,
    held: Option<&LaneHandle<Channels>>,
    deadline: Option<Deadline>,
    attempt: Attempt,
    answer: Answer<'_>,
) -> (Step<GrpcRequest>, bool) {
    let now = deadline.map(|_| Instant::now());
    let spent = matches!(deadline.zip(now), Some((deadline, now)) if deadline.left(now).is_none());
    let mut step = match trip {
        Some(trip) if !spent => trip.end(held.map(LaneHandle::balancer), attempt, answer, None),
        _ => Step::Done(attempt.end(answer)),
    };
    if let (Step::Retry(request, _), Some((deadline, now))) = (&mut step, deadline.zip(now)) {
        deadline.write_left(request.0.headers_mut(), now);
    }
    (step, spent)
}

/// The status of a call whose last attempt on `endpoint` failed with
/// `error`: DEADLINE_EXCEEDED, with that status as its source, when the
/// call's deadline was spent before another attempt.
fn failed_status(
    outcome: Outcome,
    endpoint: &EndpointUrl,
    error: BoxError,
    deadline: Option<Deadline>,
    spent: bool,
) -> Status {
    let status = status_for(failure(outcome, endpoint, error));
    match deadline {
        Some(deadline) if spent => {
            let mut exceeded = Status::deadline_exceeded(format!(
                "the call's deadline ({:?}) was spent before another attempt; {}",
                deadline.timeout(),
                status.message()
            ));
            exceeded.set_source(Arc::new(status));
            exceeded
        }
        _ => status,
    }
}

impl Future for GrpcResponseFuture {
    type Output = Result<http::Response<GrpcBody>, Status>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            if let Some(status) = this.failed.take() {
                return Poll::Ready(Err(status));
            }
            if let Some((channel, _)) = this.ready.as_mut() {
                let readied = ready!(Service::poll_ready(channel, cx));
                let (Some((mut channel, request)), Some(attempt)) =
                    (this.ready.take(), this.attempt.take())
                else {
                    return Poll::Pending;
                };
                if let Err(error) = readied {
                    // Nothing was sent: another endpoint may take the call.
                    let url = attempt.url().clone();
                    match end_attempt(
                        this.trip.as_mut(),
                        this.held.as_deref(),
                        *this.deadline,
                        attempt,
                        Answer::NotSent,
                    ) {
                        (Step::Retry(request, attempt), _) => {
                            *this.resends = 0;
                            self.as_mut().retry(request, attempt);
                            continue;
                        }
                        (Step::Done(outcome), spent) => {
                            let error = Box::new(error);
                            let spent = spent && this.held.is_some();
                            let status = failed_status(outcome, &url, error, *this.deadline, spent);
                            return Poll::Ready(Err(status));
                        }
                    }
                }
                let future = {
                    let _entered = attempt.span().enter();
                    channel.call(request.0.map(tonic::body::Body::new))
                };
                *this.attempt = Some(attempt);
                this.calling.set(Some(future));
            }
            let Some(future) = this.calling.as_mut().as_pin_mut() else {
                // Polled again after it completed.
                return Poll::Pending;
            };
            let result = ready!(future.poll(cx));
            this.calling.set(None);
            let Some(attempt) = this.attempt.take() else {
                return Poll::Pending;
            };
            let response = match result {
                Ok(response) => response,
                Err(error) => {
                    // Its connection went away before sending it (closed
                    // with the request queued, a graceful GOAWAY): the
                    // endpoint's channel connects again, so the same
                    // attempt is sent once more there. A storm of these
                    // when servers rotate their connections is no failure
                    // of theirs (never charged), and the other endpoints'
                    // connections may be closing too.
                    let went_away = connection_went_away(&error);
                    // Once when another endpoint may take the call, more
                    // when none can.
                    let resends = if this.held.is_some() { 1 } else { RESENDS };
                    if went_away && *this.resends < resends {
                        // The trip's copy, or the call's own.
                        let copy = match (this.trip.as_ref(), this.held.as_deref()) {
                            (Some(trip), Some(held)) => trip
                                .copy_for(held.balancer(), attempt.url())
                                .map(|copy| (None, copy)),
                            _ => this.spare.as_ref().and_then(|(channel, copy)| {
                                Some((Some(channel.clone()), copy.try_clone()?))
                            }),
                        };
                        // With the time left, if any.
                        let deadline = *this.deadline;
                        let copy = copy.and_then(|(channel, mut copy)| match deadline {
                            Some(deadline) => deadline
                                .write_left(copy.0.headers_mut(), Instant::now())
                                .then_some((channel, copy)),
                            None => Some((channel, copy)),
                        });
                        match copy {
                            Some((Some(channel), copy)) => {
                                *this.resends += 1;
                                *this.ready = Some((channel, copy));
                                *this.attempt = Some(attempt);
                                continue;
                            }
                            Some((None, copy)) => {
                                *this.resends += 1;
                                self.as_mut().retry(copy, attempt);
                                continue;
                            }
                            None => {}
                        }
                    }
                    let url = attempt.url().clone();
                    match end_attempt(
                        this.trip.as_mut(),
                        this.held.as_deref(),
                        *this.deadline,
                        attempt,
                        // Again: charged to no endpoint, sent to another.
                        if went_away {
                            Answer::WentAway
                        } else {
                            Answer::Failed(&error)
                        },
                    ) {
                        (Step::Retry(request, attempt), _) => {
                            *this.resends = 0;
                            self.as_mut().retry(request, attempt);
                            continue;
                        }
                        (Step::Done(outcome), spent) => {
                            let error = Box::new(error);
                            let spent = spent && this.held.is_some();
                            let status = failed_status(outcome, &url, error, *this.deadline, spent);
                            return Poll::Ready(Err(status));
                        }
                    }
                }
            };
            let (mut parts, body) = response.into_parts();
            parts.extensions.insert(attempt.served_by());
            // A trailers-only answer (an error before any message), no gRPC
            // answer at all (a proxy's 503), or a head that ends the stream
            // without a status: nothing more will tell, so the call ends here.
            let ends_here = parts.headers.contains_key(Status::GRPC_STATUS)
                || parts.status != http::StatusCode::OK
                || body.is_end_stream();
            let attempt = if ends_here {
                let answer = Answer::Grpc {
                    status: parts.status,
                    grpc_status: parts.headers.get(Status::GRPC_STATUS),
                    pushback: parts.headers.get(crate::overload::GRPC_PUSHBACK),
                };
                let (trip, held) = (this.trip.as_mut(), this.held.as_deref());
                match end_attempt(trip, held, *this.deadline, attempt, answer) {
                    // UNAVAILABLE for a call safe to send twice.
                    (Step::Retry(request, attempt), _) => {
                        *this.resends = 0;
                        self.as_mut().retry(request, attempt);
                        continue;
                    }
                    // The answer stands, even when the deadline is spent.
                    (Step::Done(_), _) => None,
                }
            } else {
                Some(attempt)
            };
            // The outcome is known or in the body: no retry follows.
            *this.trip = None;
            *this.held = None;
            return Poll::Ready(Ok(http::Response::from_parts(
                parts,
                GrpcBody::new(body, attempt),
            )));
        }
    }
}

impl GrpcResponseFuture {
    /// Sends `attempt` (the trip's next, or the same one again) through
    /// its endpoint's channel.
    fn retry(self: Pin<&mut Self>, request: GrpcRequest, attempt: Attempt) {
        let this = self.project();
        let channels = this.held.as_deref().and_then(LaneHandle::clone_service);
        let next = match channels {
            Some(channels) => channel_for(&channels, request, attempt),
            // A retry comes only with the channels held: not reached.
            None => {
                attempt.end(Answer::Refused);
                Err(status_for(Error::NotReady(
                    "no channels for a retry".into(),
                )))
            }
        };
        match next {
            Ok((channel, request, attempt)) => {
                *this.ready = Some((channel, request));
                *this.attempt = Some(attempt);
            }
            Err(status) => *this.failed = Some(status),
        }
    }
}
