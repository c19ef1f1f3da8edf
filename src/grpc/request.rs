//! A gRPC call's request as the request pipeline sends it: its body read
//! ahead into memory when it fits, so that the call can be sent again.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use tonic::Status;

use crate::endpoint::EndpointUrl;
use crate::error::Error;
use crate::request::sealed::Route;

/// A call's request, as the trip sends it: its body read ahead into memory
/// when it fits ([`RequestBody`]), so that it can be sent again.
#[derive(Debug)]
pub(super) struct GrpcRequest(pub(super) http::Request<RequestBody>);

impl Route for GrpcRequest {
    fn info(&self) -> crate::RequestInfo<'_> {
        self.0.info()
    }

    fn route_to(&mut self, endpoint: &EndpointUrl) -> Result<(), Error> {
        self.0.route_to(endpoint)
    }

    fn headers_mut(&mut self) -> &mut http::HeaderMap {
        self.0.headers_mut()
    }

    /// A copy when the whole body is in memory.
    fn try_clone(&self) -> Option<Self> {
        let RequestBody::Whole(data) = self.0.body() else {
            return None;
        };
        let mut copy = http::Request::new(RequestBody::Whole(data.clone()));
        *copy.method_mut() = self.0.method().clone();
        *copy.uri_mut() = self.0.uri().clone();
        *copy.version_mut() = self.0.version();
        *copy.headers_mut() = self.0.headers().clone();
        *copy.extensions_mut() = self.0.extensions().clone();
        Some(GrpcRequest(copy))
    }
}

/// The body of a call's request. Before the call is sent, the caller's
/// body is read as far as it is ready at once, up to the channel's
/// request buffer: a unary call's body (one message, encoded as the
/// generated client calls) ends within that read, is kept whole and may
/// be sent again; a body larger than the buffer, or one that is not ready
/// to its end at once (a client stream waiting for its next message), is
/// sent once: what was read, then the rest as it comes.
#[derive(Debug)]
pub(super) enum RequestBody {
    /// The whole body, in memory; `None` once sent (or when empty).
    Whole(Option<Bytes>),
    /// What was read ahead, the frame that stopped the reading (a data
    /// frame past the buffer, trailers, an error), then the rest.
    Streaming {
        read: Option<Bytes>,
        stopped_at: Option<Result<Frame<Bytes>, Status>>,
        rest: tonic::body::Body,
    },
}

impl RequestBody {
    /// Reads `body` ahead, without waiting, keeping up to `limit` bytes.
    pub(super) fn read_ahead(mut body: tonic::body::Body, limit: usize) -> Self {
        if body.is_end_stream() {
            return RequestBody::Whole(None);
        }
        let streaming = |read, stopped_at, rest| RequestBody::Streaming {
            read,
            stopped_at,
            rest,
        };
        if body.size_hint().lower() > limit as u64 {
            return streaming(None, None, body);
        }
        // A body that is not ready is polled again, with the caller's
        // waker, when the call sends it.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut read: Option<Bytes> = None;
        loop {
            let frame = match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(Some(Err(error))) => return streaming(read, Some(Err(error)), body),
                Poll::Ready(None) => return RequestBody::Whole(read),
                Poll::Pending => return streaming(read, None, body),
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => return streaming(read, Some(Ok(frame)), body),
            };
            let held = read.as_ref().map_or(0, Bytes::len);
            if held + data.len() > limit {
                return streaming(read, Some(Ok(Frame::data(data))), body);
            }
            read = Some(match read {
                // One message is one frame: kept as it is, without a copy.
                None => data,
                Some(before) => {
                    let mut joined = BytesMut::with_capacity(before.len() + data.len());
                    joined.extend_from_slice(&before);
                    joined.extend_from_slice(&data);
                    joined.freeze()
                }
            });
            if body.is_end_stream() {
                return RequestBody::Whole(read);
            }
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        match self.get_mut() {
            RequestBody::Whole(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            RequestBody::Streaming {
                read,
                stopped_at,
                rest,
            } => {
                if let Some(read) = read.take() {
                    return Poll::Ready(Some(Ok(Frame::data(read))));
                }
                if let Some(frame) = stopped_at.take() {
                    return Poll::Ready(Some(frame));
                }
                Pin::new(rest).poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Whole(data) => data.is_none(),
            RequestBody::Streaming {
                read,
                stopped_at,
                rest,
            } => read.is_none() && stopped_at.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Whole(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RequestBody::Streaming { read, rest, .. } => {
                let read = read.as_ref().map_or(0, |d| d.len() as u64);
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(read));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(read));
                }
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use proptest::prelude::*;

    /// A body of `chunks` that is not ready once, before chunk `pending_at`.
    struct Chunks {
        chunks: std::collections::VecDeque<Bytes>,
        sent: usize,
        pending_at: Option<usize>,
    }

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            if self.pending_at == Some(self.sent) {
                self.pending_at = None;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.sent += 1;
            Poll::Ready(self.chunks.pop_front().map(|c| Ok(Frame::data(c))))
        }
    }

    fn body(chunks: &[Vec<u8>], pending_at: Option<usize>) -> tonic::body::Body {
        tonic::body::Body::new(Chunks {
            chunks: chunks.iter().map(|c| Bytes::from(c.clone())).collect(),
            sent: 0,
            pending_at,
        })
    }

    fn collect(body: RequestBody) -> Vec<u8> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let collected = runtime.block_on(body.collect()).unwrap();
        collected.to_bytes().to_vec()
    }

    proptest! {
        /// The promise of `GrpcOptions::request_buffer`: a body that is
        /// ready to its end at once and ends within the limit is kept whole
        /// (and a copy sends the same bytes); any other is sent once; either
        /// way exactly the caller's bytes go out, in order.
        #[test]
        fn a_body_is_kept_exactly_when_it_ends_within_the_limit_and_the_bytes_sent_are_the_callers(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..6),
            pending_at in proptest::option::of(0usize..7),
            limit in 0usize..200,
        ) {
            let all: Vec<u8> = chunks.concat();
            let read = RequestBody::read_ahead(body(&chunks, pending_at), limit);
            // Ready to its end: not pending before the end (a pending
            // position past the chunks is never reached).
            let ready_at_once = pending_at.is_none_or(|at| at > chunks.len());
            let kept = matches!(read, RequestBody::Whole(_));
            prop_assert_eq!(kept, ready_at_once && all.len() <= limit);
            if let RequestBody::Whole(data) = &read {
                prop_assert_eq!(collect(RequestBody::Whole(data.clone())), all.clone());
            }
            prop_assert_eq!(collect(read), all);
        }
    }
}
