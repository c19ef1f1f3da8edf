//! The body of a balanced gRPC answer, which ends the call's last attempt
//! when it ends: the outcome is in its trailers.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::Status;

use crate::pipeline::{Answer, Attempt};

pin_project! {
    /// The body of a balanced gRPC answer: the endpoint's body, which ends
    /// the call's attempt when it ends. The trailers' `grpc-status` gives
    /// the outcome; an error of the body is classified by the transport
    /// error under it; an end without `grpc-status` is a broken answer
    /// (an other error). Dropped before its end, the call counts as
    /// cancelled.
    pub struct GrpcBody {
        #[pin]
        inner: tonic::body::Body,
        attempt: Option<Attempt>,
    }
}

impl GrpcBody {
    /// The endpoint's `body`, ending `attempt` (if the call's outcome is
    /// still to come) when it ends.
    pub(super) fn new(body: tonic::body::Body, attempt: Option<Attempt>) -> Self {
        GrpcBody {
            inner: body,
            attempt,
        }
    }
}

impl std::fmt::Debug for GrpcBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcBody")
            .field("open", &self.attempt.is_some())
            .finish_non_exhaustive()
    }
}

impl Body for GrpcBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        let answer = match &frame {
            Some(Ok(frame)) => frame.trailers_ref().map(|trailers| Answer::Grpc {
                status: http::StatusCode::OK,
                grpc_status: trailers.get(Status::GRPC_STATUS),
                pushback: trailers.get(crate::overload::GRPC_PUSHBACK),
            }),
            Some(Err(status)) => Some(Answer::Failed(status)),
            None => Some(Answer::Grpc {
                status: http::StatusCode::OK,
                grpc_status: None,
                pushback: None,
            }),
        };
        if let Some(answer) = answer {
            if let Some(attempt) = this.attempt.take() {
                attempt.end(answer);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
