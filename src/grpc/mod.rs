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
//!
//! The parts: `options` (what the user sets), `channel` (each endpoint's
//! channel and the statuses calls fail with), `request` (a call's request,
//! its body read ahead so it can be sent again), `deadline` (a retry's
//! `grpc-timeout`: the time left), `future` (a call's attempts, through
//! the request pipeline's trip) and `body` (the answer's body, which ends
//! the last attempt).

mod body;
mod channel;
mod deadline;
mod future;
mod health;
mod options;
mod request;

use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::transport::Endpoint;
use tonic::Status;
use tower_service::Service;

pub use body::GrpcBody;
pub use channel::{CONNECT_TIMEOUT, KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT};
use future::Channels;
pub use future::GrpcResponseFuture;
pub use options::{GrpcOptions, REQUEST_BUFFER};

use crate::balancer::{Balancer, LaneHandles};
use crate::error::Error;
use crate::health::Retryable;
use crate::per_endpoint::{shared_with, Services};
use crate::pipeline::Trip;
use crate::request::sealed::Route;
use channel::{channel_for, endpoint_for, status_for, EndpointChannel};
use deadline::Deadline;
use request::{GrpcRequest, RequestBody};

/// A balanced gRPC channel: give it to a generated client
/// (`GreeterClient::new(channel)`), and each call goes to an endpoint
/// chosen by the [`Balancer`], through that endpoint's own
/// `tonic::transport::Channel`. Made by [`Balancer::grpc`],
/// [`Balancer::grpc_with`] or [`Balancer::grpc_options`].
///
/// `Clone` (clones share the balancer and the channels), `Send` and
/// `Sync`: store it in a struct as `EchoClient<BalancedChannel>`.
///
/// An endpoint's channel connects on its first call (lazily) and keeps one
/// HTTP/2 connection, with keep-alive pings ([`KEEP_ALIVE_INTERVAL`]);
/// when the endpoint leaves the set its channel is dropped, which closes
/// the connection once the calls still on it end.
///
/// A call's outcome is read from its `grpc-status` (docs/grpc.md has the
/// table): UNAVAILABLE counts as a failure for outlier detection,
/// DEADLINE_EXCEEDED as a timeout, every other code (RESOURCE_EXHAUSTED
/// included) as an answer from a working endpoint. Transport faults are
/// classified by the error underneath, as for HTTP.
///
/// A call that did not reach its endpoint (a refused connection or
/// stream, a GOAWAY before its stream started, a channel that could not
/// get ready) is sent to another endpoint, as gRPC's transparent retry
/// does, when its request body was kept ([`GrpcOptions::request_buffer`]:
/// unary calls up to 64 KiB); calls marked safe to retry
/// ([`GrpcOptions::safe_to_retry`], [`Retryable`]) also when answered
/// UNAVAILABLE. Retries follow the balancer's [`Retries`](crate::Retries)
/// and draw on its budget. A call its connection dropped unsent as the
/// connection went away (closed, or a graceful GOAWAY: a server draining or
/// rotating its connections) is first sent once more to the same endpoint,
/// and is charged to none. A retry's `grpc-timeout` is the caller's less
/// the time already spent; a call whose deadline is spent is not sent
/// again and fails with DEADLINE_EXCEEDED.
#[derive(Clone)]
pub struct BalancedChannel {
    balancer: Balancer,
    channels: Channels,
    options: Arc<GrpcOptions>,
    /// What a call that may be retried holds the balancer and the channels
    /// by.
    handles: Arc<LaneHandles<Channels>>,
}

impl std::fmt::Debug for BalancedChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalancedChannel")
            .field("balancer", &self.balancer)
            .finish_non_exhaustive()
    }
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
        self.grpc_options(GrpcOptions::new().endpoint(configure))
    }

    /// [`Balancer::grpc`] with [`GrpcOptions`]: each endpoint's
    /// `tonic::transport::Endpoint`, how much of a request is kept to send
    /// it again, the methods safe to retry.
    ///
    /// Errors: [`Error::InvalidUrl`] as for [`Balancer::grpc_with`];
    /// [`Error::InvalidPolicy`] for a method path that is not
    /// `/package.Service/Method` or `/package.Service/*`.
    ///
    /// ```
    /// use tower_lb::{Balancer, Error, GrpcOptions};
    ///
    /// let balancer = Balancer::builder().endpoint("http://10.0.0.1:50051").build()?;
    /// let channel = balancer.grpc_options(GrpcOptions::new().safe_to_retry(["/shop.Catalog/*"]))?;
    /// let typo = balancer.grpc_options(GrpcOptions::new().safe_to_retry(["shop.Catalog.Get"]));
    /// assert!(matches!(typo, Err(Error::InvalidPolicy { .. })));
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    pub fn grpc_options(&self, options: GrpcOptions) -> Result<BalancedChannel, Error> {
        options.validate()?;
        let configure = options.configure.clone();
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
            channels: shared_with(self, channels),
            options: Arc::new(options),
            handles: Arc::default(),
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

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> GrpcResponseFuture {
        // A channel's connection task needs a runtime; without one, tonic
        // would panic.
        if tokio::runtime::Handle::try_current().is_err() {
            return GrpcResponseFuture::failed(status_for(Error::NoRuntime));
        }
        let (mut parts, body) = request.into_parts();
        if self.options.is_safe(parts.uri.path()) {
            parts.extensions.insert(Retryable);
        }
        let body = RequestBody::read_ahead(body, self.options.request_buffer);
        let mut request = GrpcRequest(http::Request::from_parts(parts, body));
        let mut trip = Trip::new(&self.balancer);
        let attempt = match trip.start(&self.balancer, &mut request, None, true) {
            Ok(attempt) => attempt,
            Err(error) => return GrpcResponseFuture::failed(status_for(error)),
        };
        // Held only while a retry may follow: the balancer, and the
        // channels the next attempt goes through.
        let held = trip.may_retry().then(|| {
            self.handles
                .hold(&self.balancer, Some((&self.channels, Arc::clone)))
        });
        // A call the trip keeps no copy of (one endpoint, retries off): a
        // copy of its own, already routed, in case its connection goes
        // away with it unsent.
        let spare = match held {
            None => request.try_clone(),
            Some(_) => None,
        };
        // The call's grpc-timeout, to give another attempt only the time
        // left.
        let deadline = (held.is_some() || spare.is_some())
            .then(|| Deadline::of(request.0.headers(), tokio::time::Instant::now()))
            .flatten();
        match channel_for(&self.channels, request, attempt) {
            Ok((channel, request, attempt)) => {
                let spare = spare.map(|copy| (channel.clone(), copy));
                GrpcResponseFuture::sending(channel, request, attempt, trip, held, deadline, spare)
            }
            Err(status) => GrpcResponseFuture::failed(status),
        }
    }
}
