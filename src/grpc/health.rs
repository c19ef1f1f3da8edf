//! gRPC's health-checking protocol as the active check:
//! `grpc.health.v1.Health/Check` through each endpoint's own channel,
//! passing when the answer is `SERVING` (with `grpc-status` 0).
//!
//! The two messages are small enough to write by hand (a string field in
//! the request, an enum field in the answer), so the crate needs no
//! generated code and no `prost` for them; the tests check them against
//! `tonic-health`'s server.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use tower_service::Service;

use super::channel::EndpointChannel;
use super::future::Channels;
use super::BalancedChannel;
use crate::active_checks::{start_probing, Probe, Verdict};
use crate::endpoint::EndpointState;
use crate::error::Error;
use crate::health::ActiveHealthCheck;

/// `HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;

impl BalancedChannel {
    /// Starts active health checks with gRPC's health-checking protocol
    /// through each endpoint's channel: `check` is an
    /// [`ActiveHealthCheck::grpc`], and behaves as with
    /// [`Balancer::health_checks`](crate::Balancer::health_checks).
    ///
    /// Errors: [`Error::InvalidPolicy`] for an HTTP check (made with
    /// [`ActiveHealthCheck::new`]), settings out of range, or outside a
    /// tokio runtime.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_lb::Error> {
    /// use tower_lb::{ActiveHealthCheck, Balancer};
    ///
    /// let balancer = Balancer::builder().endpoint("http://127.0.0.1:50051").build()?;
    /// let channel = balancer.grpc()?;
    /// channel.health_checks(ActiveHealthCheck::grpc(""))?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn health_checks(&self, check: ActiveHealthCheck) -> Result<(), Error> {
        let Some(service) = check.grpc_service.as_deref() else {
            return Err(Error::InvalidPolicy {
                reason: "active health check: a BalancedChannel checks with gRPC's protocol: \
                         make the check with ActiveHealthCheck::grpc"
                    .into(),
            });
        };
        let probe = GrpcProbe {
            channels: self.channels.clone(),
            message: framed_request(service),
            timeout: check.timeout,
        };
        start_probing(&self.balancer, check, probe)
    }
}

/// A `Health/Check` call through an endpoint's channel.
struct GrpcProbe {
    channels: Channels,
    /// The framed `HealthCheckRequest`, the same for every check.
    message: Bytes,
    timeout: Duration,
}

impl Probe for GrpcProbe {
    fn probe(&self, endpoint: &Arc<EndpointState>, uri: Option<http::Uri>) -> Verdict {
        let channel = match self.channels.get(endpoint) {
            Some(EndpointChannel::Ready(channel)) => Some(channel),
            _ => None,
        };
        let message = self.message.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let (Some(mut channel), Some(uri)) = (channel, uri) else {
                return false;
            };
            let Ok(request) = http::Request::builder()
                .method(http::Method::POST)
                .uri(uri)
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .header(http::header::TE, "trailers")
                .body(tonic::body::Body::new(Full::new(message)))
            else {
                return false;
            };
            let call = async {
                poll_fn(|cx| channel.poll_ready(cx)).await.ok()?;
                let response = channel.call(request).await.ok()?;
                if response.status() != http::StatusCode::OK {
                    return None;
                }
                // A trailers-only answer carries its status in the head.
                let head_status = response.headers().get("grpc-status").cloned();
                let answer = response.into_body().collect().await.ok()?;
                let status = head_status.or_else(|| answer.trailers()?.get("grpc-status").cloned());
                if status.as_ref().map(|s| s.as_bytes()) != Some(b"0") {
                    return None;
                }
                Some(serving(answer.to_bytes()))
            };
            matches!(tokio::time::timeout(timeout, call).await, Ok(Some(true)))
        })
    }
}

/// `HealthCheckRequest { service }`, framed as one gRPC message.
fn framed_request(service: &str) -> Bytes {
    let mut message = BytesMut::new();
    if !service.is_empty() {
        // Field 1, length-delimited.
        message.put_u8(0x0a);
        put_varint(&mut message, service.len() as u64);
        message.put_slice(service.as_bytes());
    }
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(message.len() as u32);
    framed.put_slice(&message);
    framed.freeze()
}

fn put_varint(buf: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

fn varint(buf: &mut Bytes) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            return None;
        }
        let byte = buf.get_u8();
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Whether a framed `HealthCheckResponse` says `SERVING`: one
/// uncompressed message whose field 1 (`status`) is 1. Anything else
/// (another status, a compressed or malformed message, none) does not.
fn serving(mut framed: Bytes) -> bool {
    if framed.remaining() < 5 || framed.get_u8() != 0 {
        return false;
    }
    let length = framed.get_u32() as usize;
    if framed.remaining() < length {
        return false;
    }
    let mut message = framed.split_to(length);
    let mut status = 0;
    while message.has_remaining() {
        let Some(key) = varint(&mut message) else {
            return false;
        };
        match key & 7 {
            0 => match varint(&mut message) {
                Some(value) if key >> 3 == 1 => status = value,
                Some(_) => {}
                None => return false,
            },
            1 if message.remaining() >= 8 => message.advance(8),
            2 => match varint(&mut message) {
                Some(n) if message.remaining() as u64 >= n => message.advance(n as usize),
                _ => return false,
            },
            5 if message.remaining() >= 4 => message.advance(4),
            _ => return false,
        }
    }
    status == SERVING
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_the_protocol_message_framed() {
        assert_eq!(&framed_request("")[..], [0, 0, 0, 0, 0]);
        assert_eq!(
            &framed_request("ab")[..],
            [0, 0, 0, 0, 4, 0x0a, 2, b'a', b'b']
        );
    }

    #[test]
    fn only_serving_passes_and_bad_answers_never_panic() {
        let framed = |message: &[u8]| {
            let mut b = vec![0, 0, 0, 0, message.len() as u8];
            b.extend_from_slice(message);
            Bytes::from(b)
        };
        assert!(serving(framed(&[0x08, 1])));
        assert!(!serving(framed(&[0x08, 2])), "NOT_SERVING");
        assert!(!serving(framed(&[])), "UNKNOWN");
        assert!(
            serving(framed(&[0x12, 1, b'x', 0x08, 1])),
            "unknown field skipped"
        );
        for bad in [
            &[][..],
            &[1, 0, 0, 0, 2, 0x08, 1],
            &[0, 0, 0, 0, 9, 0x08],
            &[0, 0, 0, 0, 1, 0x08],
            &[0, 0, 0, 0, 2, 0x0a, 9],
            &[0, 0, 0, 0, 2, 0x0b, 1],
            &[
                0, 0, 0, 0, 11, 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ],
        ] {
            assert!(!serving(Bytes::copy_from_slice(bad)), "{bad:?}");
        }
    }
}
