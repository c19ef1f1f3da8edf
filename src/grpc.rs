//! Balanced gRPC clients (feature `tonic`): a Tower service that tonic's
//! generated clients accept, over one `tonic::transport::Channel` per
//! endpoint.
//!
//! Why a front end of its own rather than [`Balancer::per_endpoint`] with
//! a `Channel` inside: a gRPC call's outcome is not in its response head.
//! A call that fails answers HTTP 200 and puts its `grpc-status` in the
//! trailers, after the last message; only a failure before any message may
//! come as a "trailers-only" head. So the attempt moves into the response
//! body ([`GrpcBody`]) and ends when the body ends: a call's latency and
//! its in-flight count cover the whole call, a streaming call counts in
//! flight while it is open, and a body dropped before its end counts as
//! cancelled. The endpoints' channels live in the same map as
//! `per_endpoint`'s services, made on an endpoint's first call.
//!
//! Errors are `tonic::Status`, as generated clients return them: the code
//! tonic would give (UNAVAILABLE for a refused connection), a message that
//! names the endpoint, and the crate's [`Error`] as the status's `source`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tower_service::Service;

use crate::balancer::Balancer;
use crate::endpoint::EndpointUrl;
use crate::error::{BoxError, Error};
use crate::per_endpoint::Services;
use crate::pipeline::{failure, Answer, Attempt, Trip};

/// How the user configures each endpoint's `tonic::transport::Endpoint`
/// (timeouts, TLS, window sizes), after the balancer's defaults.
type Configure = dyn Fn(Endpoint) -> Result<Endpoint, tonic::transport::Error> + Send + Sync;

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

/// A balanced gRPC channel: give it to a generated client
/// (`GreeterClient::new(channel)`), and each call goes to an endpoint
/// chosen by the [`Balancer`], through that endpoint's own
/// `tonic::transport::Channel`. Made by [`Balancer::grpc`] or
/// [`Balancer::grpc_with`].
///
/// `Clone` (clones share the balancer and the channels), `Send` and
/// `Sync`: store it in a struct as `EchoClient<BalancedChannel>`.
///
/// An endpoint's channel connects on its first call (lazily) and keeps one
/// HTTP/2 connection, with keep-alive pings ([`KEEP_ALIVE_INTERVAL`]);
/// when the endpoint leaves the set its channel is dropped at the next new
/// endpoint's first call, which closes the connection once its last call
/// ends.
///
/// A call's outcome is read from its `grpc-status` (docs/grpc.md has the
/// table): UNAVAILABLE counts as a failure for outlier detection,
/// DEADLINE_EXCEEDED as a timeout, every other code (RESOURCE_EXHAUSTED
/// included) as an answer from a working endpoint. Transport faults are
/// classified by the error underneath, as for HTTP. Calls are sent once:
/// retries are not done yet for gRPC.
#[derive(Clone)]
pub struct BalancedChannel {
    balancer: Balancer,
    channels: Arc<Services<EndpointChannel>>,
}

impl std::fmt::Debug for BalancedChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalancedChannel")
            .field("balancer", &self.balancer)
            .finish_non_exhaustive()
    }
}

/// An endpoint's channel, or why the endpoint cannot have one.
#[derive(Clone)]
enum EndpointChannel {
    Ready(Channel),
    Refused { url: Arc<str>, reason: Arc<str> },
}

/// The endpoint of `url` as the balancer configures it: the defaults,
/// then the user's `configure`; refused (the reason in words) when the URL
/// has a path, which gRPC has no place for, or tonic refuses it.
fn endpoint_for(url: &str, configure: &Configure) -> Result<Endpoint, String> {
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

impl Balancer {
    /// A balanced gRPC channel over this balancer's endpoints, with
    /// tonic's defaults and the balancer's ([`CONNECT_TIMEOUT`],
    /// [`KEEP_ALIVE_INTERVAL`], [`KEEP_ALIVE_TIMEOUT`]) for each endpoint's
    /// connection. See [`Balancer::grpc_with`] to set timeouts, TLS or
    /// window sizes.
    ///
    /// Errors: [`Error::InvalidUrl`] for an endpoint in the set with a path
    /// (`http://10.0.0.7:50051/api`): gRPC calls go to
    /// `/package.Service/Method` and have no place for one. An endpoint
    /// with a path added later makes its calls fail (code INTERNAL, the
    /// same error as the status's source), charged to no endpoint.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), tower_lb::BoxError> {
    /// let balancer = tower_lb::Balancer::builder()
    ///     .endpoint("http://10.0.0.1:50051")
    ///     .endpoint_weighted("http://10.0.0.2:50051", 3)
    ///     .build()?;
    /// let channel: tower_lb::BalancedChannel = balancer.grpc()?;
    /// // With code generated by tonic-prost-build:
    /// // let mut client = GreeterClient::new(channel);
    /// // let reply = client.say_hello(HelloRequest { name: "x".into() }).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn grpc(&self) -> Result<BalancedChannel, Error> {
        self.grpc_with(Ok)
    }

    /// [`Balancer::grpc`], with `configure` applied to each endpoint's
    /// `tonic::transport::Endpoint` after the defaults: timeouts, TLS
    /// (`tls_config`, with one of tonic's TLS features), window sizes,
    /// keep-alive. It runs once per endpoint, when the endpoint's channel
    /// is made (its first call), and once for each endpoint in the set
    /// now, to find errors early.
    ///
    /// Errors: [`Error::InvalidUrl`] for an endpoint with a path, or when
    /// `configure` fails for an endpoint in the set.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let balancer = tower_lb::Balancer::builder().endpoint("http://10.0.0.1:50051").build()?;
    /// let channel = balancer.grpc_with(|endpoint| {
    ///     Ok(endpoint
    ///         .timeout(Duration::from_secs(2))
    ///         .initial_stream_window_size(1 << 20))
    /// })?;
    ///
    /// let with_path = tower_lb::Balancer::builder().endpoint("http://10.0.0.1:50051/api").build()?;
    /// assert!(matches!(with_path.grpc(), Err(tower_lb::Error::InvalidUrl { .. })));
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    pub fn grpc_with<C>(&self, configure: C) -> Result<BalancedChannel, Error>
    where
        C: Fn(Endpoint) -> Result<Endpoint, tonic::transport::Error> + Send + Sync + 'static,
    {
        let configure: Arc<Configure> = Arc::new(configure);
        for endpoint in self.stats().endpoints {
            endpoint_for(&endpoint.url, &*configure).map_err(|reason| Error::InvalidUrl {
                url: endpoint.url.clone(),
                reason,
                source: None,
            })?;
        }
        let channels = Services::made_by(move |url: &str| match endpoint_for(url, &*configure) {
            Ok(endpoint) => EndpointChannel::Ready(endpoint.connect_lazy()),
            Err(reason) => EndpointChannel::Refused {
                url: url.into(),
                reason: reason.into(),
            },
        });
        Ok(BalancedChannel {
            balancer: self.clone(),
            channels: Arc::new(channels),
        })
    }
}

impl Service<http::Request<tonic::body::Body>> for BalancedChannel {
    type Response = http::Response<GrpcBody>;
    type Error = Status;
    type Future = GrpcResponseFuture;

    /// Always ready: the endpoint is chosen in `call`, and the response
    /// future waits for its channel.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> GrpcResponseFuture {
        // A channel's connection task needs a runtime; without one, tonic
        // would panic.
        if tokio::runtime::Handle::try_current().is_err() {
            return GrpcResponseFuture::failed(status_for(Error::NoRuntime));
        }
        let mut trip = Trip::without_retries(&self.balancer);
        let attempt = match trip.start(&self.balancer, &mut request, None, true) {
            Ok(attempt) => attempt,
            Err(error) => return GrpcResponseFuture::failed(status_for(error)),
        };
        match attempt.endpoint().and_then(|e| self.channels.get(e)) {
            Some(EndpointChannel::Ready(channel)) => GrpcResponseFuture {
                calling: None,
                ready: Some((channel, request)),
                attempt: Some(attempt),
                failed: None,
            },
            Some(EndpointChannel::Refused { url, reason }) => {
                attempt.end(Answer::Refused);
                GrpcResponseFuture::failed(status_for(Error::InvalidUrl {
                    url: url.to_string(),
                    reason: reason.to_string(),
                    source: None,
                }))
            }
            // The pick keeps the endpoint, and the map makes a channel for
            // any endpoint: not reached.
            None => {
                let url = attempt.url().as_str().to_owned();
                attempt.end(Answer::Refused);
                let missing = format!("no channel for endpoint {url}");
                GrpcResponseFuture::failed(status_for(Error::NotReady(missing.into())))
            }
        }
    }
}

pin_project! {
    /// The response future of [`BalancedChannel`]: the answer's head, with
    /// the call's attempt moved into its [`GrpcBody`] when the outcome
    /// comes in the trailers. Dropped before the head, it counts the call
    /// as cancelled.
    pub struct GrpcResponseFuture {
        #[pin]
        calling: Option<tonic::transport::channel::ResponseFuture>,
        // The endpoint's channel and the request, until the channel is ready.
        ready: Option<(Channel, http::Request<tonic::body::Body>)>,
        attempt: Option<Attempt>,
        failed: Option<Status>,
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
    fn failed(status: Status) -> Self {
        GrpcResponseFuture {
            calling: None,
            ready: None,
            attempt: None,
            failed: Some(status),
        }
    }
}

impl Future for GrpcResponseFuture {
    type Output = Result<http::Response<GrpcBody>, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(status) = this.failed.take() {
            return Poll::Ready(Err(status));
        }
        if let Some((channel, _)) = this.ready.as_mut() {
            let readied = ready!(Service::poll_ready(channel, cx));
            let Some((mut channel, request)) = this.ready.take() else {
                return Poll::Pending;
            };
            if let Err(error) = readied {
                return Poll::Ready(Err(ended_in_error(this.attempt.take(), error)));
            }
            let future = match this.attempt.as_ref() {
                Some(attempt) => {
                    let _entered = attempt.span().enter();
                    channel.call(request)
                }
                None => channel.call(request),
            };
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
            Err(error) => return Poll::Ready(Err(ended_in_error(Some(attempt), error))),
        };
        let (mut parts, body) = response.into_parts();
        parts.extensions.insert(attempt.served_by());
        let grpc_status = parts.headers.get(Status::GRPC_STATUS);
        // A trailers-only answer (an error before any message), no gRPC
        // answer at all (a proxy's 503), or a head that ends the stream
        // without a status: nothing more will tell, so the call ends here.
        let ends_here =
            grpc_status.is_some() || parts.status != http::StatusCode::OK || body.is_end_stream();
        let attempt = if ends_here {
            attempt.end(Answer::Grpc {
                status: parts.status,
                grpc_status,
            });
            None
        } else {
            Some(attempt)
        };
        Poll::Ready(Ok(http::Response::from_parts(
            parts,
            GrpcBody {
                inner: body,
                attempt,
            },
        )))
    }
}

/// Ends `attempt` with the channel's `error` and says so as a status that
/// names the endpoint.
fn ended_in_error(attempt: Option<Attempt>, error: tonic::transport::Error) -> Status {
    let Some(attempt) = attempt else {
        return Status::from_error(Box::new(error));
    };
    let url = attempt.url().clone();
    let outcome = attempt.end(Answer::Failed(&error));
    status_for(failure(outcome, &url, Box::new(error)))
}

/// The status a generated client returns for `error`: for a failure of
/// the channel, the code tonic gives it (UNAVAILABLE for a refused
/// connection) and a message naming the endpoint; UNAVAILABLE when no
/// endpoint is available; INTERNAL for a request or endpoint the balancer
/// cannot route. The error is the status's `source`.
fn status_for(error: Error) -> Status {
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
        other => {
            let code = match other {
                Error::NoEndpointAvailable | Error::NoRuntime => Code::Unavailable,
                _ => Code::Internal,
            };
            (code, other.to_string(), other)
        }
    };
    let mut status = Status::new(code, message);
    status.set_source(Arc::new(error));
    status
}

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
            }),
            Some(Err(status)) => Some(Answer::Failed(status)),
            None => Some(Answer::Grpc {
                status: http::StatusCode::OK,
                grpc_status: None,
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
