//! What the user sets on a balanced gRPC channel beyond the balancer's
//! own settings: each endpoint's `tonic::transport::Endpoint`, how much of
//! a request is kept so that it can be sent again, the methods safe to
//! call twice.

use std::sync::Arc;

use tonic::transport::Endpoint;

use crate::error::Error;
#[cfg(doc)]
use crate::{
    BalancedChannel, Balancer, Retryable, CONNECT_TIMEOUT, KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT,
};

/// How the user configures each endpoint's `tonic::transport::Endpoint`
/// (timeouts, TLS, window sizes), after the balancer's defaults.
pub(super) type Configure =
    dyn Fn(Endpoint) -> Result<Endpoint, tonic::transport::Error> + Send + Sync;

/// How much of a call's request body a [`BalancedChannel`] keeps by
/// default so that it can send the call again (64 KiB, as linkerd):
/// see [`GrpcOptions::request_buffer`].
pub const REQUEST_BUFFER: usize = 64 * 1024;

/// Settings of a [`BalancedChannel`] beyond the balancer's own, given to
/// [`Balancer::grpc_options`]: each endpoint's `tonic::transport::Endpoint`,
/// how much of a request is kept to send it again, and the methods safe to
/// call twice.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::{Balancer, GrpcOptions};
///
/// let balancer = Balancer::builder().endpoint("http://10.0.0.1:50051").build()?;
/// let channel = balancer.grpc_options(
///     GrpcOptions::new()
///         .endpoint(|endpoint| Ok(endpoint.timeout(Duration::from_secs(2))))
///         .request_buffer(16 * 1024)
///         .safe_to_retry(["/shop.Catalog/GetItem", "/shop.Search/*"]),
/// )?;
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Clone)]
#[must_use]
pub struct GrpcOptions {
    pub(super) configure: Arc<Configure>,
    pub(super) request_buffer: usize,
    safe: Arc<[Box<str>]>,
}

impl Default for GrpcOptions {
    fn default() -> Self {
        GrpcOptions {
            configure: Arc::new(Ok),
            request_buffer: REQUEST_BUFFER,
            safe: Arc::new([]),
        }
    }
}

impl std::fmt::Debug for GrpcOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcOptions")
            .field("request_buffer", &self.request_buffer)
            .field("safe_to_retry", &self.safe)
            .finish_non_exhaustive()
    }
}

impl GrpcOptions {
    /// The defaults: tonic's and the balancer's endpoint settings, a
    /// [`REQUEST_BUFFER`] of 64 KiB, no method marked safe to retry.
    pub fn new() -> Self {
        GrpcOptions::default()
    }

    /// Runs `configure` on each endpoint's `tonic::transport::Endpoint`
    /// after the defaults ([`CONNECT_TIMEOUT`], [`KEEP_ALIVE_INTERVAL`],
    /// [`KEEP_ALIVE_TIMEOUT`]): timeouts, TLS (`tls_config`, with one of
    /// tonic's TLS features), window sizes. As [`Balancer::grpc_with`].
    ///
    /// ```
    /// let options = tower_lb::GrpcOptions::new()
    ///     .endpoint(|endpoint| Ok(endpoint.initial_stream_window_size(1 << 20)));
    /// ```
    pub fn endpoint<C>(mut self, configure: C) -> Self
    where
        C: Fn(Endpoint) -> Result<Endpoint, tonic::transport::Error> + Send + Sync + 'static,
    {
        self.configure = Arc::new(configure);
        self
    }

    /// How many bytes of a call's request body are kept in memory so that
    /// the call can be sent again (default [`REQUEST_BUFFER`], 64 KiB).
    ///
    /// Before a call is sent, its body is read as far as it is ready at
    /// once: a unary call's body (its one message, encoded) is, and ends
    /// there. A body that ends within `bytes` is kept and the call may go
    /// to another endpoint when it did not reach its first (a refused
    /// connection or stream, a GOAWAY before the stream started, a channel
    /// that could not get ready) or, for a call safe to retry, when it is
    /// answered UNAVAILABLE or its connection closes. A larger body, or
    /// one that does not end at once (a client stream still waiting for
    /// its next message), is sent once. `0` sends every call once.
    ///
    /// ```
    /// let options = tower_lb::GrpcOptions::new().request_buffer(1024 * 1024);
    /// ```
    pub fn request_buffer(mut self, bytes: usize) -> Self {
        self.request_buffer = bytes;
        self
    }

    /// Methods safe to call twice (they change nothing, or the server
    /// deduplicates them), by path: `/package.Service/Method`, or
    /// `/package.Service/*` for all of a service's methods. Such a call
    /// (with its body kept: see [`GrpcOptions::request_buffer`]) is also
    /// sent to another endpoint when it is answered UNAVAILABLE in a
    /// trailers-only answer (how servers fail a call before any message)
    /// or its connection closes before the answer, within the balancer's
    /// [`Retries`](crate::Retries) and their budget. A single call can be
    /// marked the same way by putting [`Retryable`] in its
    /// `tonic::Request::extensions_mut()`.
    ///
    /// Errors, from [`Balancer::grpc_options`]: [`Error::InvalidPolicy`]
    /// for a path not of these forms.
    ///
    /// ```
    /// let options = tower_lb::GrpcOptions::new()
    ///     .safe_to_retry(["/shop.Catalog/GetItem", "/shop.Search/*"]);
    /// ```
    pub fn safe_to_retry<I>(mut self, methods: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.safe = methods
            .into_iter()
            .map(|m| m.into().into_boxed_str())
            .collect();
        self
    }

    /// Checks the method paths.
    pub(super) fn validate(&self) -> Result<(), Error> {
        for method in self.safe.iter() {
            let well_formed = method.strip_prefix('/').and_then(|rest| {
                let (service, name) = rest.split_once('/')?;
                let plain = |s: &str| {
                    !s.is_empty()
                        && s.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
                };
                (plain(service) && (name == "*" || plain(name))).then_some(())
            });
            if well_formed.is_none() {
                return Err(Error::InvalidPolicy {
                    reason: format!(
                        "grpc: {method:?} is not a method path (/package.Service/Method or /package.Service/*)"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Whether the method at `path` is marked safe to call twice.
    pub(super) fn is_safe(&self, path: &str) -> bool {
        self.safe
            .iter()
            .any(|method| match method.strip_suffix('*') {
                Some(service) => path.starts_with(service),
                None => path == &**method,
            })
    }
}
