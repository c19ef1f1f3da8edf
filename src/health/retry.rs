//! Safe retry on another endpoint, bounded by a retry budget.

use std::sync::Arc;
use std::time::Duration;

use http::{Extensions, HeaderMap, Method};

use super::budget::RetryBudget;
use crate::clock::Clock;
use crate::outcome::Outcome;
use crate::percent::Percent;
use crate::Error;

/// When a failed request is sent again to another endpoint; given to
/// [`BalancerBuilder::retry`](crate::BalancerBuilder::retry).
///
/// By default:
/// - a request whose connection failed (refused, unreachable) is retried
///   whatever its method, since it never reached a server;
/// - a request whose connection closed or was reset before the response is
///   retried only if it is safe to send twice: its method is idempotent
///   (GET, HEAD, OPTIONS, TRACE, PUT, DELETE; RFC 9110 §9.2.2), it carries an
///   `Idempotency-Key` header, or it is marked [`Retryable`]. Any other
///   request fails with [`Error::MayHaveBeenProcessed`] and is never sent
///   again;
/// - timeouts and failure statuses are retried only when opted in
///   ([`Retries::idempotent_failures`]), for requests safe to send twice.
///
/// Retries draw on a budget: 20% of the requests of the last 10 s plus 10 a
/// second, so retries cannot multiply an outage. Hedges (see
/// [`Hedging`](crate::Hedging)) draw on the same budget, so a fleet that
/// slows down is not flooded by both; [`Stats::extra`](crate::Stats::extra)
/// counts the grants and refusals of each kind.
///
/// A request is retried only if it can be sent twice: a `reqwest::Request`
/// whose body is in memory (`try_clone`), or an `http::Request` whose body
/// is `()`, `&'static str`, `&'static [u8]`, `String`, `Vec<u8>`,
/// `bytes::Bytes`, `http_body_util::Full<Bytes>`,
/// `http_body_util::Empty<Bytes>`, or a `reqwest::Body` made from bytes or
/// a string. A streaming body (`reqwest::Body::wrap_stream`, any other
/// body type) is never retried: it is sent once.
///
/// The copy to send again is made only when a retry can follow: retries
/// are on, the method can be retried, and another endpoint takes requests.
///
/// ```
/// use tower_lb::{Balancer, Retries};
///
/// let balancer = Balancer::builder()
///     .endpoint("http://127.0.0.1:8081")
///     .endpoint("http://127.0.0.1:8082")
///     .retry(Retries::default().idempotent_failures())
///     .build()?;
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct Retries {
    pub(crate) connect_errors: bool,
    pub(crate) closed_connections: bool,
    pub(crate) idempotent_failures: bool,
    pub(crate) max_retries: u32,
    budget_window: Duration,
    budget_percent: Percent,
    budget_reserve: u32,
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            connect_errors: true,
            closed_connections: true,
            idempotent_failures: false,
            max_retries: 2,
            budget_window: Duration::from_secs(10),
            budget_percent: Percent::new(20.0),
            budget_reserve: 10,
        }
    }
}

impl Retries {
    /// No retries.
    pub fn disabled() -> Self {
        Retries {
            connect_errors: false,
            closed_connections: false,
            ..Retries::default()
        }
    }

    /// Whether a request safe to send twice is retried when its connection
    /// closed before the response (default: yes).
    pub fn closed_connections(mut self, retry: bool) -> Self {
        self.closed_connections = retry;
        self
    }

    /// Also retry requests safe to send twice (idempotent methods: GET,
    /// HEAD, PUT, DELETE, OPTIONS, TRACE; an `Idempotency-Key` header; or
    /// [`Retryable`]) that timed out or got a 5xx.
    pub fn idempotent_failures(mut self) -> Self {
        self.idempotent_failures = true;
        self
    }

    /// At most this many retries per request (default 2, at most 10).
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// The budget: retries may be `percent` (a [`Percent`], 0 to 1,000) of
    /// the requests of the last `window` (1 to 60 s), plus
    /// `reserve_per_second`. The default is
    /// `budget(Duration::from_secs(10), 20, 10)`: 20%.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_lb::{Balancer, Error, Percent, Retries};
    ///
    /// let strict = Retries::default().budget(Duration::from_secs(10), 5, 0);
    /// assert!(Balancer::builder().retry(strict).build().is_ok());
    /// let finer = Retries::default().budget(Duration::from_secs(10), Percent::new(2.5), 0);
    /// assert!(Balancer::builder().retry(finer).build().is_ok());
    /// let absurd = Retries::default().budget(Duration::from_secs(10), 5_000, 0);
    /// assert!(matches!(
    ///     Balancer::builder().retry(absurd).build(),
    ///     Err(Error::InvalidPolicy { .. })
    /// ));
    /// ```
    pub fn budget(
        mut self,
        window: Duration,
        percent: impl Into<Percent>,
        reserve_per_second: u32,
    ) -> Self {
        self.budget_window = window;
        self.budget_percent = percent.into();
        self.budget_reserve = reserve_per_second;
        self
    }

    /// The budget's window, percent and reserve per second, as set.
    #[cfg(feature = "serde")]
    pub(crate) fn budget_settings(&self) -> (Duration, Percent, u32) {
        (self.budget_window, self.budget_percent, self.budget_reserve)
    }

    fn enabled(&self) -> bool {
        (self.connect_errors || self.closed_connections || self.idempotent_failures)
            && self.max_retries > 0
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        let window = self.budget_window;
        self.budget_percent
            .check("retry: the budget's percent of recent requests", 1_000.0)?;
        let reason = if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&window) {
            format!("retry: the budget window must be 1 to 60 s, not {window:?}")
        } else if self.max_retries > 10 {
            format!(
                "retry: at most 10 retries per request, not {}",
                self.max_retries
            )
        } else {
            return Ok(());
        };
        Err(Error::InvalidPolicy { reason })
    }

    /// The live retry state and budget, `None` when retries are off and
    /// requests are not `hedged` (hedges draw on the same budget; without
    /// retries, the policy kept allows none).
    pub(crate) fn start(mut self, clock: Clock, hedged: bool) -> Option<Arc<Retrying>> {
        if !self.enabled() {
            self.max_retries = 0;
        }
        (self.max_retries > 0 || hedged).then(|| {
            Arc::new(Retrying {
                budget: RetryBudget::new(
                    clock,
                    self.budget_window,
                    self.budget_percent.fraction(),
                    self.budget_reserve,
                ),
                policy: self,
            })
        })
    }
}

/// A balancer's retry settings and budget.
#[derive(Debug)]
pub(crate) struct Retrying {
    pub(crate) policy: Retries,
    pub(crate) budget: RetryBudget,
}

impl Retrying {
    /// Whether some outcome of a request could be retried (`safe`: it may
    /// be sent twice): if not, no copy of the request is made.
    pub(crate) fn may_retry(&self, safe: bool) -> bool {
        self.policy.connect_errors
            || (safe && (self.policy.closed_connections || self.policy.idempotent_failures))
    }

    /// Whether an attempt that ended with `outcome` may be sent again:
    /// connect errors always (the request never reached a server); a closed
    /// connection, a timeout or a failure status only for a request safe to
    /// send twice, when the policy says so. The budget is asked separately,
    /// once another endpoint is known to be free.
    pub(crate) fn retries(&self, outcome: Outcome, safe: bool) -> bool {
        match outcome {
            Outcome::ConnectError => self.policy.connect_errors,
            Outcome::Closed => safe && self.policy.closed_connections,
            Outcome::Timeout | Outcome::ServerError | Outcome::Overloaded => {
                safe && self.policy.idempotent_failures
            }
            Outcome::Success | Outcome::ClientError | Outcome::OtherError => false,
        }
    }
}

impl Retrying {
    /// Whether a gRPC call that was answered UNAVAILABLE may be sent
    /// again: when it is safe to send twice (marked [`Retryable`], by the
    /// channel's list of methods or by the caller). gRPC's UNAVAILABLE is
    /// the server's "try again", and the mark is the caller's opt-in; the
    /// budget is asked separately.
    pub(crate) fn retries_unavailable(&self, safe: bool) -> bool {
        safe
    }
}

/// Marks a request as safe to send twice though its method is not
/// idempotent (a POST the server deduplicates, say): insert it in the
/// request's extensions. A request with an `Idempotency-Key` header counts
/// as marked too, whatever the front end.
///
/// ```
/// let mut request = http::Request::post("/orders").body(String::from("{}"))?;
/// request.extensions_mut().insert(tower_lb::Retryable);
/// # Ok::<(), http::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retryable;

/// Whether a request may be sent twice: an idempotent method (RFC 9110
/// §9.2.2), an `Idempotency-Key` header, or [`Retryable`] in its
/// extensions.
pub(crate) fn safe_to_send_twice(
    method: &Method,
    headers: &HeaderMap,
    extensions: Option<&Extensions>,
) -> bool {
    method.is_idempotent()
        || headers.contains_key("idempotency-key")
        || extensions.is_some_and(|e| e.get::<Retryable>().is_some())
}
