//! Each endpoint's `tonic::transport::Channel`, as the balancer configures
//! it, and the `tonic::Status` a call fails with: the code tonic would
//! give, a message naming the endpoint, the crate's error as its source.

use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::options::Configure;
use super::request::GrpcRequest;
use crate::endpoint::EndpointUrl;
use crate::error::{BoxError, Error};
use crate::per_endpoint::Services;
use crate::pipeline::{Answer, Attempt};

/// The HTTP/2 keep-alive ping interval set on every endpoint's channel
/// (tonic sets none): a dead connection is found within this plus
/// [`KEEP_ALIVE_TIMEOUT`] while calls are open on it.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a keep-alive ping may go unanswered before the connection is
/// closed.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// The connect timeout set on every endpoint's channel (tonic sets none,
/// which leaves it to the system: minutes).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An endpoint's channel, or why the endpoint cannot have one.
#[derive(Clone)]
pub(super) enum EndpointChannel {
    Ready(Channel),
    Refused { url: Arc<str>, reason: Arc<str> },
}

/// The endpoint of `url` as the balancer configures it: the defaults,
/// then the user's `configure`; refused (the reason in words) when the URL
/// has a path, which gRPC has no place for, or tonic refuses it.
pub(super) fn endpoint_for(url: &str, configure: &Configure) -> Result<Endpoint, String> {
    let parsed = EndpointUrl::parse(url).map_err(|e| e.to_string())?;
    if !parsed.base_path().is_empty() {
        return Err(format!(
            "a gRPC endpoint has no path (calls go to /package.Service/Method), but it has {:?}",
            parsed.base_path()
        ));
    }
    let endpoint = Endpoint::from_shared(parsed.as_str().to_owned())
        .map_err(|e| format!("tonic refused it: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT);
    configure(endpoint).map_err(|e| format!("the endpoint's configuration failed: {e}"))
}

/// The channel of the endpoint `attempt` went to, to send `request`
/// through; or the status the call fails with when the endpoint can have
/// none (the attempt is ended, charged to no endpoint).
pub(super) fn channel_for(
    channels: &Services<EndpointChannel>,
    request: GrpcRequest,
    attempt: Attempt,
) -> Result<(Channel, GrpcRequest, Attempt), Status> {
    match attempt.endpoint().and_then(|e| channels.get(e)) {
        Some(EndpointChannel::Ready(channel)) => Ok((channel, request, attempt)),
        Some(EndpointChannel::Refused { url, reason }) => {
            attempt.end(Answer::Refused);
            Err(status_for(Error::InvalidUrl {
                url: url.to_string(),
                reason: reason.to_string(),
                source: None,
            }))
        }
        // The pick keeps the endpoint, and the map makes a channel for any
        // endpoint: not reached.
        None => {
            let url = attempt.url().as_str().to_owned();
            attempt.end(Answer::Refused);
            let missing = format!("no channel for endpoint {url}");
            Err(status_for(Error::NotReady(missing.into())))
        }
    }
}

/// The status a generated client returns for `error`: for a failure of
/// the channel, the code tonic gives it (UNAVAILABLE for a refused
/// connection) and a message naming the endpoint; UNAVAILABLE when no
/// endpoint is available; INTERNAL for a request or endpoint the balancer
/// cannot route. The error is the status's `source`.
pub(super) fn status_for(error: Error) -> Status {
    // tonic's own reading of the channel's error, kept as the source.
    let mapped = |source: BoxError| {
        let status = Status::from_error(source);
        (status.code(), status.message().to_owned(), Box::new(status))
    };
    let (code, message, error) = match error {
        Error::Upstream { endpoint, source } => {
            let (code, detail, source) = mapped(source);
            let message = format!("request to {endpoint} failed: {detail}");
            (code, message, Error::Upstream { endpoint, source })
        }
        Error::MayHaveBeenProcessed { endpoint, source } => {
            let (code, detail, source) = mapped(source);
            let message = format!(
                "connection to {endpoint} closed before the answer, the call may have been processed: {detail}"
            );
            (
                code,
                message,
                Error::MayHaveBeenProcessed { endpoint, source },
            )
        }
        Error::Client { endpoint, source } => {
            let (code, detail, source) = mapped(source);
            let message = format!("the client failed the call to {endpoint}: {detail}");
            (code, message, Error::Client { endpoint, source })
        }
        Error::NotReady(source) => {
            let (code, detail, source) = mapped(source);
            let message = format!("the channel is not ready: {detail}");
            (code, message, Error::NotReady(source))
        }
        // The error's own words speak of discovery, which the caller of a
        // gRPC method never called.
        Error::NoRuntime => (
            Code::Unavailable,
            "a balanced gRPC channel needs a tokio runtime: make the call from within one"
                .to_owned(),
            Error::NoRuntime,
        ),
        other => {
            let code = match other {
                Error::NoEndpointAvailable => Code::Unavailable,
                _ => Code::Internal,
            };
            (code, other.to_string(), other)
        }
    };
    let mut status = Status::new(code, message);
    status.set_source(Arc::new(error));
    status
}
