//! Choosing an endpoint for a request sent some other way than through the
//! layer: the pick, the in-flight count and the outcome report, by hand.
//!
//! [`Balancer::select`](crate::Balancer::select) picks as the layer would
//! and counts the request in flight; the [`Selection`] it returns points the
//! request at the endpoint and takes the outcome back. A selection dropped
//! without an outcome counts as cancelled, so the in-flight count cannot
//! drift. Retries and learned cookie affinity are the layer's and the
//! middleware's, not the selection's.

use std::error::Error as StdError;

use http::{HeaderMap, StatusCode};

use crate::balancer::Balancer;
use crate::endpoint::ServedBy;
use crate::error::Error;
use crate::pipeline::{route, Answer, Attempt};
use crate::request::BalanceRequest;
#[cfg(feature = "metrics")]
use crate::telemetry::MethodClass;

/// One request's endpoint, counted in flight until it is finished or
/// dropped. Made by [`Balancer::select`](crate::Balancer::select).
///
/// ```
/// use tower_lb::Balancer;
///
/// let balancer = Balancer::builder()
///     .endpoint("http://127.0.0.1:8081")
///     .endpoint("http://127.0.0.1:8082/api")
///     .build()?;
/// let mut request = http::Request::get("/users/42").body(())?;
/// let selection = balancer.select(&request)?;
/// selection.route(&mut request)?;
/// assert!(request.uri().to_string().starts_with(selection.endpoint()));
/// // ... send the request, then report what came back:
/// selection.finish(http::StatusCode::OK);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a selection counts its request in flight until finished or dropped"]
pub struct Selection {
    attempt: Attempt,
    /// The balancer reads its session-key header, which must not leave.
    strip_session_header: bool,
}

/// A summary, as [`Balancer`]'s: the endpoint, never its counters or tables.
///
/// ```
/// let balancer = tower_lb::Balancer::builder().endpoint("http://127.0.0.1:8081").build()?;
/// let selection = balancer.select(&http::Request::get("/").body(())?)?;
/// assert_eq!(
///     format!("{selection:?}"),
///     r#"Selection { endpoint: "http://127.0.0.1:8081", .. }"#
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
impl std::fmt::Debug for Selection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No "finished" flag: `finish` and `fail` consume the selection,
        // so one that can be shown is still in flight.
        f.debug_struct("Selection")
            .field("endpoint", &self.endpoint())
            .finish_non_exhaustive()
    }
}

impl Selection {
    /// The chosen endpoint's canonical URL (`scheme://host:port/base`), as
    /// in [`Balancer::stats`](crate::Balancer::stats).
    pub fn endpoint(&self) -> &str {
        self.attempt.url().as_str()
    }

    /// The chosen endpoint with its labels, as the layer puts it in a
    /// response's extensions: to attach to the response of a request sent
    /// by hand, or to log.
    ///
    /// ```
    /// use tower_lb::{Balancer, Endpoint};
    ///
    /// let balancer = Balancer::builder()
    ///     .endpoint(Endpoint::new("http://127.0.0.1:8081").with_label("zone", "a"))
    ///     .build()?;
    /// let selection = balancer.select(&http::Request::get("/").body(())?)?;
    /// let served_by = selection.served_by();
    /// assert_eq!(served_by.url(), selection.endpoint());
    /// assert_eq!(served_by.labels().get("zone"), Some("a"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn served_by(&self) -> ServedBy {
        self.attempt.served_by()
    }

    /// Points `request` at the chosen endpoint as the layer does: its
    /// scheme and authority, its base path in front of the request's path
    /// (dot segments removed); query and headers are kept, except the
    /// balancer's own [`SessionKey::HEADER`](crate::SessionKey::HEADER),
    /// which is removed when the policy reads session keys, so that it
    /// never leaves the process. User info in the URL becomes an
    /// `Authorization: Basic` header unless the request has one
    /// (docs/targets.md), as on every front end.
    ///
    /// Errors: [`Error::InvalidTarget`] when the target would leave the
    /// base path or has a form that is not routed (docs/targets.md);
    /// [`Error::InvalidRequest`] when the rewritten URI is not valid. A
    /// selection dropped after an error counts as cancelled, never as a
    /// failure of the endpoint.
    ///
    /// ```
    /// use tower_lb::{Balancer, Error};
    ///
    /// let balancer = Balancer::builder().endpoint("http://127.0.0.1:8081/api").build()?;
    /// let mut request = http::Request::get("/users/../42").body(())?;
    /// balancer.select(&request)?.route(&mut request)?;
    /// assert_eq!(request.uri(), "http://127.0.0.1:8081/api/42");
    ///
    /// let mut climbing = http::Request::get("/../admin").body(())?;
    /// let refused = balancer.select(&climbing)?.route(&mut climbing);
    /// assert!(matches!(refused, Err(Error::InvalidTarget { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn route<R: BalanceRequest>(&self, request: &mut R) -> Result<(), Error> {
        route(request, self.attempt.url(), self.strip_session_header)
    }

    /// Reports an answer with `status`: a 5xx counts as a failure for the
    /// latency estimate and outlier detection, a 429 as an overload signal
    /// naming no time (the endpoint is held off for the default penalty;
    /// see [`Overload`](crate::Overload)), anything else as a success. To
    /// pass on a `Retry-After`, use
    /// [`finish_with_headers`](Self::finish_with_headers).
    pub fn finish(self, status: StatusCode) {
        self.finish_with_headers(status, &HeaderMap::new());
    }

    /// Reports an answer with `status` and its `headers`, as the layer
    /// reads them: a 429, or a 503 with `Retry-After`, holds the endpoint
    /// off for the time the header names (see
    /// [`Overload`](crate::Overload)).
    ///
    /// ```
    /// use tower_lb::Balancer;
    ///
    /// let balancer = Balancer::builder().endpoint("http://127.0.0.1:8081").build()?;
    /// let selection = balancer.select(&http::Request::get("/").body(())?)?;
    /// let mut headers = http::HeaderMap::new();
    /// headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("2"));
    /// selection.finish_with_headers(http::StatusCode::TOO_MANY_REQUESTS, &headers);
    /// let stats = balancer.stats();
    /// assert_eq!(stats.endpoints[0].overloaded, 1);
    /// assert!(stats.endpoints[0].held_off_until.is_some());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn finish_with_headers(self, status: StatusCode, headers: &HeaderMap) {
        self.attempt.end(Answer::Response { status, headers });
    }

    /// Reports a request that got no answer: the error is classified as the
    /// layer does (connect error, timeout, other) by walking its source
    /// chain.
    pub fn fail(self, error: &(dyn StdError + 'static)) {
        self.attempt.end(Answer::Failed(error));
    }
}

impl Balancer {
    /// Picks an endpoint for `request` as the layer would (policy, key,
    /// health) and counts the request in flight on it, for requests sent
    /// some other way than through the layer. Report the outcome with
    /// [`Selection::finish`] or [`Selection::fail`]; a selection dropped
    /// unreported counts as cancelled.
    ///
    /// Errors: [`Error::NoEndpointAvailable`].
    ///
    /// ```
    /// use tower_lb::{Balancer, Policy, SessionKey};
    ///
    /// let balancer = Balancer::builder()
    ///     .endpoint("http://127.0.0.1:8081")
    ///     .endpoint("http://127.0.0.1:8082")
    ///     .policy(Policy::maglev())
    ///     .build()?;
    /// let mut request = http::Request::get("/cart").body(())?;
    /// request.extensions_mut().insert(SessionKey::new("user-42"));
    /// let selection = balancer.select(&request)?;
    /// assert_eq!(
    ///     Some(selection.endpoint()),
    ///     balancer.locate(&SessionKey::new("user-42")).as_deref()
    /// );
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn select<R: BalanceRequest>(&self, request: &R) -> Result<Selection, Error> {
        let info = request.info();
        match self.pick_for(&info, &[], false) {
            Some(picked) => Ok(Selection {
                #[cfg(feature = "metrics")]
                attempt: Attempt::start(picked).counted(MethodClass::of(info.method()), 0),
                #[cfg(not(feature = "metrics"))]
                attempt: Attempt::start(picked),
                strip_session_header: self.reads_session_header(),
            }),
            None => Err(Error::NoEndpointAvailable),
        }
    }
}
