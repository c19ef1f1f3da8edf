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
        let streaming = |read: Option<BytesMut>, stopped_at, rest| RequestBody::Streaming {
            read: read.map(BytesMut::freeze),
            stopped_at,
            rest,
        };
        if body.size_hint().lower() > limit as u64 {
            return streaming(None, None, body);
        }
        // A body that is not ready is polled again, with the caller's
        // waker, when the call sends it.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut read: Option<BytesMut> = None;
        loop {
            let frame = match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(Some(Err(error))) => return streaming(read, Some(Err(error)), body),
                Poll::Ready(None) => return RequestBody::Whole(read.map(BytesMut::freeze)),
                Poll::Pending => return streaming(read, None, body),
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => return streaming(read, Some(Ok(frame)), body),
            };
            let held = read.as_ref().map_or(0, BytesMut::len);
            if held + data.len() > limit {
                return streaming(read, Some(Ok(Frame::data(data))), body);
            }
            match read.as_mut() {
                Some(read) => read.extend_from_slice(&data),
                // One message is one frame: kept without a copy.
                None => read = Some(BytesMut::from(data)),
            }
            if body.is_end_stream() {
                return RequestBody::Whole(read.map(BytesMut::freeze));
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
