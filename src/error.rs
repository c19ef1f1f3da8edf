//! The one error type of the crate.
//!
//! Configuration mistakes, "nothing to send to" and failures of the wrapped
//! service are different problems with different fixes, so each has its own
//! variant. The wrapped service's error is kept whole as the `source`, so a
//! caller can still ask a `reqwest::Error` whether it was a timeout.

/// A type-erased error, as Tower uses between layers: tower's own.
pub use tower::BoxError;

/// Everything that can go wrong in `tower-lb`.
///
/// Matching on the variant tells configuration errors (returned by the
/// builder and the update methods) apart from per-request errors
/// ([`Error::NoEndpointAvailable`], [`Error::Upstream`]).
///
/// The enum and each variant with named fields are `#[non_exhaustive]`:
/// variants and fields may be added in a minor release, so a `match` needs
/// a `_` arm and a pattern on a variant's fields needs `..`.
///
/// ```
/// use tower_lb::Error;
///
/// let err = tower_lb::Balancer::builder()
///     .endpoint("ftp://127.0.0.1:21")
///     .build()
///     .unwrap_err();
/// let shown = match &err {
///     Error::InvalidUrl { url, reason, .. } => format!("{url}: {reason}"),
///     Error::Upstream { endpoint, .. } => format!("{endpoint} failed"),
///     other => other.to_string(),
/// };
/// assert!(shown.starts_with("ftp://127.0.0.1:21: "), "{shown}");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No endpoint may take the request: the set is empty, every endpoint
    /// is drained (weight 0), or every one is ejected (possible only with
    /// panic mode off, when the ejection limit covers them all).
    #[error(
        "no endpoint available: the endpoint set is empty, or every endpoint is drained or ejected"
    )]
    NoEndpointAvailable,

    /// An endpoint URL that cannot be used.
    #[error("invalid endpoint URL {url:?}: {reason}")]
    #[non_exhaustive]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
        /// The parser's error, when the text is not a URI at all.
        #[source]
        source: Option<http::uri::InvalidUri>,
    },

    /// A weight above [`MAX_WEIGHT`](crate::MAX_WEIGHT).
    #[error("weight {weight} of endpoint {url} is above the maximum of {max}")]
    #[non_exhaustive]
    InvalidWeight {
        /// The endpoint.
        url: String,
        /// The weight asked for.
        weight: u32,
        /// The largest weight allowed, [`MAX_WEIGHT`](crate::MAX_WEIGHT).
        max: u32,
    },

    /// Endpoints were given, but all with weight 0, so none could be chosen.
    #[error("every endpoint has weight 0, so no request could ever be sent")]
    ZeroTotalWeight,

    /// The same endpoint was given twice.
    #[error("endpoint {url} is listed twice")]
    #[non_exhaustive]
    DuplicateEndpoint {
        /// The endpoint, in canonical form.
        url: String,
    },

    /// A policy option out of range, or options that do not go together.
    #[error("invalid policy: {reason}")]
    #[non_exhaustive]
    InvalidPolicy {
        /// What is wrong.
        reason: String,
    },

    /// A configuration value that cannot be used (a `BalancerConfig`,
    /// feature `serde`): `path` names the field as written
    /// (`outlier.base_ejection`, `endpoints[2].url`), `reason` says what is
    /// wrong with it. Shown as `path: reason`.
    ///
    /// ```
    /// # #[cfg(feature = "serde")] {
    /// use tower_lb::{BalancerConfig, EndpointConfig, Error};
    ///
    /// let mut config = BalancerConfig::default();
    /// config.endpoints.push(EndpointConfig::new("ftp://127.0.0.1:21"));
    /// let error = config.build().unwrap_err();
    /// assert!(matches!(&error, Error::InvalidConfig { path, .. } if path == "endpoints[0].url"));
    /// # }
    /// ```
    #[error("{path}: {reason}")]
    #[non_exhaustive]
    InvalidConfig {
        /// Where the value is: map keys joined by `.`, list positions as
        /// `[i]`; `.` for the whole document.
        path: String,
        /// What is wrong with it.
        reason: String,
    },

    /// An update named an endpoint that is not in the set.
    #[error("endpoint {url} is not in the set")]
    #[non_exhaustive]
    UnknownEndpoint {
        /// The endpoint, in canonical form.
        url: String,
    },

    /// The request's URI could not be pointed at the chosen endpoint.
    #[error("request cannot be routed to {endpoint}: {reason}")]
    #[non_exhaustive]
    InvalidRequest {
        /// The chosen endpoint.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },

    /// The request's target was refused before anything was sent: it
    /// would leave the endpoint's base path, or it has a form the balancer
    /// does not route (see [`TargetRefusal`](crate::TargetRefusal)). No
    /// endpoint is charged.
    #[error("request target {path:?} refused: {reason}")]
    #[non_exhaustive]
    InvalidTarget {
        /// The request's path as given (without its query, which may carry
        /// tokens).
        path: String,
        /// Why it was refused.
        reason: crate::TargetRefusal,
    },

    /// The wrapped service failed while calling `endpoint`. The original
    /// error is the [`source`](std::error::Error::source).
    #[error("request to {endpoint} failed")]
    #[non_exhaustive]
    Upstream {
        /// The endpoint the request was sent to.
        endpoint: String,
        /// The wrapped service's error.
        #[source]
        source: BoxError,
    },

    /// The connection to `endpoint` closed or was reset after the request
    /// may have been written and before a response came: the endpoint may
    /// have processed it. Returned for a request that was not safe to send
    /// again (see [`Retries`](crate::Retries)), or when no retry was left;
    /// such a request is never re-sent by the balancer.
    #[error(
        "connection to {endpoint} closed before a response: the request may have been processed"
    )]
    #[non_exhaustive]
    MayHaveBeenProcessed {
        /// The endpoint the request was sent to.
        endpoint: String,
        /// The wrapped service's error.
        #[source]
        source: BoxError,
    },

    /// The client failed the request itself before or while sending it (a
    /// request it could not build, an error of the caller's own body
    /// stream). Not charged to `endpoint`: its health is untouched.
    #[error("the client failed the request to {endpoint} before it was sent whole")]
    #[non_exhaustive]
    Client {
        /// The endpoint the request was meant for.
        endpoint: String,
        /// The wrapped service's error.
        #[source]
        source: BoxError,
    },

    /// [`Balancer::discover`](crate::Balancer::discover) was called outside
    /// a tokio runtime, which its task needs.
    #[error("discovery needs a tokio runtime: call discover() from within one")]
    NoRuntime,

    /// A wait for discovery's first set ([`Discovery::ready`]) ended
    /// without one: the wait timed out, or the source ended, panicked or
    /// was replaced first. `last_error` is the source's last failure (as
    /// [`DiscoveryStats::last_error`] shows it), if it had one.
    ///
    /// [`Discovery::ready`]: crate::Discovery::ready
    /// [`DiscoveryStats::last_error`]: crate::DiscoveryStats::last_error
    #[error("discovery applied no set: {reason}; the source's last error: {}", last_error.as_deref().unwrap_or("none"))]
    DiscoveryNotReady {
        /// Why the wait ended.
        reason: NotReadyReason,
        /// The source's last failure, in words.
        last_error: Option<String>,
    },

    /// The wrapped service failed in `poll_ready`, before any endpoint was
    /// chosen.
    #[error("the wrapped service is not ready")]
    NotReady(#[source] BoxError),
}

/// Why a wait for discovery's first set ended without one
/// ([`Error::DiscoveryNotReady`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotReadyReason {
    /// No set was applied within this time.
    TimedOut(std::time::Duration),
    /// The source ended (or panicked and was stopped) before yielding a
    /// set the balancer could apply.
    SourceEnded,
    /// The discovery task was stopped: another source replaced it, or the
    /// balancer was dropped.
    Stopped,
}

impl std::fmt::Display for NotReadyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReadyReason::TimedOut(waited) => write!(f, "none within {waited:?}"),
            NotReadyReason::SourceEnded => f.write_str("the source ended first"),
            NotReadyReason::Stopped => f.write_str("the discovery task was stopped first"),
        }
    }
}

impl Error {
    /// The wrapped service's error, if this is [`Error::Upstream`],
    /// [`Error::MayHaveBeenProcessed`], [`Error::Client`] or
    /// [`Error::NotReady`].
    ///
    /// ```
    /// # use tower_lb::Error;
    /// let err = Error::NoEndpointAvailable;
    /// assert!(err.upstream().is_none());
    /// ```
    pub fn upstream(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            Error::Upstream { source, .. }
            | Error::MayHaveBeenProcessed { source, .. }
            | Error::Client { source, .. }
            | Error::NotReady(source) => Some(source.as_ref()),
            _ => None,
        }
    }
}
