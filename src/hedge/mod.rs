//! Hedged requests ("The Tail at Scale", Finagle's backup requests): when a
//! request safe to send twice has had no answer after a delay, the same
//! request goes to another endpoint too; the first answer wins and the
//! other attempt is cancelled.
//!
//! This module holds the settings ([`Hedging`], given to the builder), the
//! per-request switch ([`Hedge`]) and the live state: the latency estimate
//! a percentile delay is read from (`latency`). The attempts themselves are
//! the request pipeline's (`pipeline`), and draw on the retry budget.

mod latency;

use std::time::Duration;

use tokio::time::Instant;

use crate::clock::Clock;
use crate::percent::Percent;
use crate::Error;
use latency::Latencies;

/// When a request is hedged; given to
/// [`BalancerBuilder::hedge`](crate::BalancerBuilder::hedge).
///
/// A request is hedged only if it is safe to send twice (an idempotent
/// method, an `Idempotency-Key` header, or [`Retryable`](crate::Retryable)),
/// its body can be sent twice (see [`Retries`](crate::Retries)) and another
/// endpoint takes requests. When no answer has come after the delay, the
/// request is sent to another endpoint too (never one an attempt of the same
/// request is waiting on), then again after each further delay, up to
/// [`max_attempts`](Hedging::max_attempts) attempts in all. The first
/// answer wins; the other attempts are dropped, their in-flight counts
/// released, and counted as cancelled (not failures). An attempt that
/// fails while another is still waiting does not end the request.
///
/// Every hedge is an extra attempt drawn from the retry budget (see
/// [`Retries::budget`](crate::Retries::budget)), shared with retries: when
/// the budget refuses, no hedge is sent and the first attempt goes on; the
/// refusal is counted in [`Stats::extra`](crate::Stats::extra).
///
/// The default delay is the 95th percentile of the set's recent response
/// times (the last 5 to 10 s), as "The Tail at Scale" advises: about 5%
/// more requests in a steady fleet, and the delay grows with the fleet's
/// latency when every endpoint slows down. Until 20 answers were timed no
/// request is hedged. Hedging is for the Tower services
/// ([`BalanceService`](crate::BalanceService) with retries and
/// [`PerEndpointService`](crate::PerEndpointService)) run on Tokio with
/// its time driver; other front ends send requests once as before.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::{Balancer, Hedging};
///
/// let balancer = Balancer::builder()
///     .endpoint("http://127.0.0.1:8081")
///     .endpoint("http://127.0.0.1:8082")
///     .hedge(Hedging::default()) // after the p95 of recent answers
///     .build()?;
/// let fixed = Hedging::after(Duration::from_millis(20)).max_attempts(3);
/// assert!(Balancer::builder().hedge(fixed).build().is_ok());
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct Hedging {
    delay: Delay,
    max_attempts: u32,
    every_request: bool,
}

#[derive(Clone, Copy, Debug)]
enum Delay {
    Fixed(Duration),
    Percentile(Percent),
}

impl Default for Hedging {
    /// After the 95th percentile of recent response times, two attempts at
    /// most, for every request that may be hedged.
    fn default() -> Self {
        Hedging::percentile(Percent::new(95.0))
    }
}

impl Hedging {
    /// Hedge after a fixed `delay`.
    pub fn after(delay: Duration) -> Self {
        Hedging {
            delay: Delay::Fixed(delay),
            max_attempts: 2,
            every_request: true,
        }
    }

    /// Hedge after the `percentile` (a [`Percent`], above 0 and at most
    /// 100) of the set's recent response times.
    pub fn percentile(percentile: impl Into<Percent>) -> Self {
        Hedging {
            delay: Delay::Percentile(percentile.into()),
            max_attempts: 2,
            every_request: true,
        }
    }

    /// At most `attempts` attempts per request, the first included
    /// (default 2; 2 to 5, gRPC's cap).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Hedge only the requests that ask for it with [`Hedge::On`] or
    /// [`Hedge::After`] in their extensions; by default every request that
    /// may be hedged is, unless it carries [`Hedge::Off`].
    ///
    /// ```
    /// use tower_lb::{Balancer, Hedge, Hedging};
    ///
    /// let balancer = Balancer::builder()
    ///     .endpoint("http://127.0.0.1:8081")
    ///     .hedge(Hedging::default().on_request())
    ///     .build()?;
    /// let mut request = http::Request::get("/search").body(())?;
    /// request.extensions_mut().insert(Hedge::On);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn on_request(mut self) -> Self {
        self.every_request = false;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if let Delay::Percentile(percentile) = self.delay {
            percentile.check("hedge: the delay's percentile", 100.0)?;
            if percentile.get() <= 0.0 {
                return Err(Error::InvalidPolicy {
                    reason: "hedge: the delay's percentile must be above 0".into(),
                });
            }
        }
        if !(2..=5).contains(&self.max_attempts) {
            return Err(Error::InvalidPolicy {
                reason: format!(
                    "hedge: 2 to 5 attempts per request, not {}",
                    self.max_attempts
                ),
            });
        }
        Ok(())
    }

    /// Attempts a request may have beyond its first.
    #[cfg(feature = "metrics")]
    pub(crate) fn max_extra_attempts(&self) -> u32 {
        self.max_attempts.saturating_sub(1)
    }

    /// The live state.
    pub(crate) fn start(self, clock: Clock) -> Hedger {
        let quantile = match self.delay {
            Delay::Percentile(percentile) => percentile.fraction(),
            Delay::Fixed(_) => 0.95,
        };
        Hedger {
            latencies: Latencies::new(clock, quantile),
            settings: self,
            won: Default::default(),
        }
    }
}

/// A request's own hedging, in its extensions (an `http::Request`'s; a
/// `reqwest::Request` has none to read): turns hedging off or on for it,
/// or sets its delay. Read only by a balancer built with
/// [`BalancerBuilder::hedge`](crate::BalancerBuilder::hedge), whose
/// attempts cap and budget apply; the request must still be safe to send
/// twice.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::Hedge;
///
/// let mut request = http::Request::get("/slow-report").body(())?;
/// request.extensions_mut().insert(Hedge::Off);
/// let mut request = http::Request::get("/search").body(())?;
/// request.extensions_mut().insert(Hedge::After(Duration::from_millis(50)));
/// # Ok::<(), http::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Hedge {
    /// Never hedge this request.
    Off,
    /// Hedge this request after the balancer's delay.
    On,
    /// Hedge this request after this delay.
    After(Duration),
}

/// A balancer's hedging settings and latency estimate.
#[derive(Debug)]
pub(crate) struct Hedger {
    settings: Hedging,
    latencies: Latencies,
    /// Requests a hedge answered first.
    won: std::sync::atomic::AtomicU64,
}

impl Hedger {
    /// Whether a request is hedged (`asked`: its own [`Hedge`], if any),
    /// and then the delay before its first hedge: `None` while a
    /// percentile is not known (the request is only timed).
    pub(crate) fn delay_for(&self, asked: Option<&Hedge>) -> Option<Option<Duration>> {
        match (asked, self.settings.every_request) {
            (Some(Hedge::Off), _) | (None, false) => None,
            (Some(Hedge::After(delay)), _) => Some(Some(*delay)),
            (Some(Hedge::On), _) | (None, true) => Some(match self.settings.delay {
                Delay::Fixed(delay) => Some(delay),
                Delay::Percentile(_) => self.latencies.estimate(),
            }),
        }
    }

    /// Attempts allowed per request, the first included.
    pub(crate) fn max_attempts(&self) -> u32 {
        self.settings.max_attempts
    }

    /// Counts the time a first attempt waited: its latency if it answered
    /// by `now`, a lower bound of it if a hedge answered first (so the slow
    /// stay in the estimate's tail).
    pub(crate) fn record(&self, waited: Duration, now: Instant) {
        self.latencies.record(waited, now);
    }

    /// Counts a request a hedge answered first.
    pub(crate) fn count_won(&self) {
        self.won.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Requests a hedge answered first.
    pub(crate) fn won(&self) -> u64 {
        self.won.load(std::sync::atomic::Ordering::Relaxed)
    }
}
