//! Slow start: an endpoint that joins the set, or comes back from
//! ejection, takes a share that grows over a window instead of its whole
//! share at once, so that a cold cache, a JIT still warming up or a fresh
//! connection pool is not handed a burst of requests.
//!
//! The form is Envoy's (`slow_start_config`): an endpoint `t` into its
//! window counts as weight × max(min_weight_percent, (t / window)^(1 /
//! aggression)). Aggression 1 grows the share linearly; above 1 it grows
//! fast early, below 1 late. The minimum keeps a share above zero from the
//! first moment, so that the endpoint is tried at all.
//!
//! Here are the settings ([`SlowStart`]) and the balancer's one flag of
//! "some endpoint is in its window" ([`Ramps`]), read by every pick with
//! one relaxed load: while no endpoint ramps, picks do what they did
//! without slow start, and the clock is not read for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::{millis, Clock};
use crate::error::Error;
use crate::percent::Percent;

/// How an endpoint that joins the set, or comes back from ejection, ramps
/// up to its share: over `window`, as weight × max(`min_weight_percent`,
/// (t / `window`)^(1 / `aggression`)), Envoy's form. Off unless given to
/// [`BalancerBuilder::slow_start`](crate::BalancerBuilder::slow_start).
///
/// Defaults, as Envoy's: aggression 1.0 (linear), a minimum of 10%.
/// Endpoints given to the builder start at their whole share; endpoints
/// added later (by hand or by discovery), brought back from drained, or
/// readmitted after an ejection ramp. Every policy follows it: weighted and
/// plain round robin and random take the endpoint's turns or draws in
/// proportion to its ramped share, least time divides its cost by the
/// factor, and bounded loads give it the ramped share of capacity (hashing
/// still places keys as before: only how much the endpoint may hold
/// changes).
///
/// Settings are checked when the balancer is built: a zero window, an
/// aggression that is not a positive number, a minimum outside 0 to 100%
/// are refused with [`Error::InvalidPolicy`].
///
/// ```
/// use std::time::Duration;
/// use tower_lb::{Balancer, Percent, SlowStart};
///
/// let slow_start = SlowStart::new(Duration::from_secs(30))
///     .aggression(1.0)
///     .min_weight_percent(10);
/// // Halfway through the window, a linear ramp gives half the weight.
/// assert_eq!(slow_start.factor(Duration::from_secs(15)), 0.5);
/// // Early on, the minimum.
/// assert_eq!(slow_start.factor(Duration::from_secs(1)), 0.1);
///
/// let balancer = Balancer::builder()
///     .endpoint("http://127.0.0.1:8081")
///     .slow_start(slow_start)
///     .build()?;
/// balancer.add("http://127.0.0.1:8082", 1)?; // ramps over 30 s
///
/// let absurd = SlowStart::new(Duration::ZERO);
/// assert!(Balancer::builder().slow_start(absurd).build().is_err());
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlowStart {
    window: Duration,
    aggression: f64,
    min_weight: Percent,
}

/// The default aggression: a linear ramp.
pub const DEFAULT_AGGRESSION: f64 = 1.0;

/// The default minimum share, in percent of the weight.
pub const DEFAULT_MIN_WEIGHT_PERCENT: f64 = 10.0;

impl SlowStart {
    /// A ramp over `window`, linear, from 10% of the weight.
    pub fn new(window: Duration) -> Self {
        SlowStart {
            window,
            aggression: DEFAULT_AGGRESSION,
            min_weight: Percent::new(DEFAULT_MIN_WEIGHT_PERCENT),
        }
    }

    /// How the share grows: (t / window)^(1 / aggression). Above 1 it grows
    /// fast early, below 1 late; it must be a positive number.
    pub fn aggression(mut self, aggression: f64) -> Self {
        self.aggression = aggression;
        self
    }

    /// The smallest share, in percent of the weight (0 to 100): an
    /// endpoint in its window never counts for less.
    pub fn min_weight_percent(mut self, percent: impl Into<Percent>) -> Self {
        self.min_weight = percent.into();
        self
    }

    /// The window's length.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The aggression.
    pub fn aggression_value(&self) -> f64 {
        self.aggression
    }

    /// The smallest share, in percent of the weight.
    pub fn min_weight(&self) -> Percent {
        self.min_weight
    }

    /// The factor an endpoint's weight is multiplied by `elapsed` into its
    /// window: max(min, (elapsed / window)^(1 / aggression)), and 1 from
    /// the window's end on (or for settings that would be refused).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_lb::SlowStart;
    ///
    /// let fast_early = SlowStart::new(Duration::from_secs(10)).aggression(2.0);
    /// assert_eq!(fast_early.factor(Duration::from_millis(2_500)), 0.5);
    /// assert_eq!(fast_early.factor(Duration::from_secs(10)), 1.0);
    /// ```
    pub fn factor(&self, elapsed: Duration) -> f64 {
        self.factor_ms(millis(elapsed))
    }

    fn factor_ms(&self, elapsed_ms: u64) -> f64 {
        let window_ms = millis(self.window);
        if elapsed_ms >= window_ms || self.validate().is_err() {
            return 1.0;
        }
        let time = elapsed_ms as f64 / window_ms as f64;
        let grown = if self.aggression == 1.0 {
            time
        } else {
            time.powf(1.0 / self.aggression)
        };
        grown.max(self.min_weight.fraction()).min(1.0)
    }

    /// Refuses settings that have no meaning.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if millis(self.window) == 0 {
            return Err(Error::InvalidPolicy {
                reason: format!(
                    "slow start's window must be at least 1 ms, not {:?}",
                    self.window
                ),
            });
        }
        if !(self.aggression.is_finite() && self.aggression > 0.0) {
            return Err(Error::InvalidPolicy {
                reason: format!(
                    "slow start's aggression must be a positive number, not {}",
                    self.aggression
                ),
            });
        }
        self.min_weight
            .check("slow start's min_weight_percent", 100.0)
    }
}

/// The balancer's slow start: its settings and when the last window open
/// now ends, the flag every pick reads.
#[derive(Debug)]
pub(crate) struct Ramps {
    settings: SlowStart,
    window_ms: u64,
    /// When the latest window ends, in milliseconds of the balancer's
    /// clock; 0 when no endpoint ramps.
    until: AtomicU64,
}

impl Ramps {
    /// Checked settings (see [`SlowStart::validate`]).
    pub(crate) fn new(settings: SlowStart) -> Self {
        Ramps {
            window_ms: millis(settings.window),
            settings,
            until: AtomicU64::new(0),
        }
    }

    /// An endpoint's window begins at `at_ms`.
    pub(crate) fn begin(&self, at_ms: u64) {
        self.until
            .fetch_max(at_ms.saturating_add(self.window_ms), Ordering::Relaxed);
    }

    /// The clock's milliseconds now, when some endpoint may be in its
    /// window; `None` (without reading the clock) when none is.
    #[inline]
    pub(crate) fn ramping_at(&self, clock: &Clock) -> Option<u64> {
        let until = self.until.load(Ordering::Relaxed);
        if until == 0 {
            return None;
        }
        self.check_until(until, clock)
    }

    #[cold]
    fn check_until(&self, until: u64, clock: &Clock) -> Option<u64> {
        let now = clock.now_ms();
        if now < until {
            return Some(now);
        }
        // Every window is over; one that began meanwhile raised `until`,
        // and then this exchange fails and the flag stays up.
        let _ = (self.until).compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed);
        None
    }

    /// The factor of an endpoint whose window began at `start_ms` (0: it
    /// has none), at `now_ms`.
    pub(crate) fn factor(&self, start_ms: u64, now_ms: u64) -> f64 {
        if start_ms == 0 || now_ms >= start_ms.saturating_add(self.window_ms) {
            return 1.0;
        }
        self.settings.factor_ms(now_ms.saturating_sub(start_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_settings_are_refused() {
        let window = Duration::from_secs(10);
        for absurd in [
            SlowStart::new(Duration::ZERO),
            SlowStart::new(Duration::from_micros(999)),
            SlowStart::new(window).aggression(0.0),
            SlowStart::new(window).aggression(-1.0),
            SlowStart::new(window).aggression(f64::NAN),
            SlowStart::new(window).aggression(f64::INFINITY),
            SlowStart::new(window).min_weight_percent(101),
            SlowStart::new(window).min_weight_percent(Percent::new(-1.0)),
            SlowStart::new(window).min_weight_percent(Percent::new(f64::NAN)),
        ] {
            let error = absurd.validate().unwrap_err();
            assert!(error.to_string().contains("slow start"), "{error}");
            // Never a panic, never a share outside (0, 1].
            assert_eq!(absurd.factor(Duration::from_millis(1)), 1.0);
        }
        assert!(SlowStart::new(window)
            .min_weight_percent(0)
            .validate()
            .is_ok());
        assert!(SlowStart::new(window)
            .min_weight_percent(100)
            .validate()
            .is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_flag_drops_once_every_window_is_over() {
        let ramps = Ramps::new(SlowStart::new(Duration::from_secs(1)));
        let clock = Clock::default();
        assert_eq!(ramps.ramping_at(&clock), None);
        ramps.begin(clock.now_ms().max(1));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(ramps.ramping_at(&clock).is_some());
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(ramps.ramping_at(&clock), None);
        assert_eq!(ramps.until.load(Ordering::Relaxed), 0);
    }
}
