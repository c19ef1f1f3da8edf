//! Least response time: send each request where it is expected to be
//! answered soonest.
//!
//! An endpoint's cost is its response-time estimate (peak-sensitive, time
//! decayed, failures counted as a penalty: see `endpoint/rtt.rs`) times
//! (its requests in flight / its relative weight + 1), where the relative
//! weight is its weight over the mean weight. The cheaper of two endpoints
//! drawn at random in proportion to weight wins (power of two choices:
//! Mitzenmacher; Finagle, linkerd, tower), or, as an option for small sets,
//! the cheapest of all. Two random choices avoid the herd that follows a
//! single "best" endpoint between two updates of its cost.
//!
//! Weights count twice, and each time where it matters: drawing in
//! proportion to weight gives equally fast, idle endpoints shares in
//! proportion to weight (costs within 0.1% of each other tie, and a tie
//! goes to the first drawn), and dividing the
//! queue by the relative weight lets a heavier endpoint hold more requests
//! in flight before it costs as much as a lighter one. With equal weights
//! the cost is estimate × (in flight + 1), as in Finagle and tower.
//!
//! "Picked last" is the picking thread's lane's (see `lanes.rs`), so two
//! cores picking at once do not write one line; a seeded balancer keeps
//! one memory for all threads instead, for picks that replay whatever the
//! threads. In-flight counts and estimates are the endpoint's whole ones.
//!
//! The two random candidates meet a third: the endpoint the balancer picked
//! last, if it is still available ("load balancing with memory":
//! Mitzenmacher, Prabhakar and Shah, 2002). Two random draws compare a slow
//! endpoint with a typical one; the remembered winner is usually one of the
//! cheapest, so a slow endpoint wins only when it is cheaper than that too.
//! On five backends, one of them 10x slower, at 32 in flight, this takes the
//! slow one's share from 0.8–0.96% to 0.59–0.78%, next to the exact minimum's 0.56–0.61%
//! (`cargo run --release -p tower-lb-bench --bin least_time`). It cannot
//! herd: the winner's in-flight count rises as it is picked, which raises
//! its cost for the next comparison. The memory is the balancer's (one
//! atomic, written only when the winner changes), so the same seed and the
//! same answers give the same picks on any thread.
//!
//! A slow endpoint is capacity, not poison: when the fast ones are busy
//! enough that their cost passes its, it takes requests again. And an
//! estimate decays while nothing is heard, so an endpoint that answered
//! slowly once is tried again after a while instead of starving.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::random::WeightedDraw;
use super::{PickContext, Picker};
use crate::clock::Clock;
use crate::endpoint::{Member, RttModel, DEFAULT_DECAY, DEFAULT_PENALTY, DEFAULT_RTT};
use crate::lanes::PerLane;
use crate::Error;

/// The least-response-time policy: made by
/// [`Policy::least_response_time`](crate::Policy::least_response_time),
/// configured here, and given to
/// [`BalancerBuilder::policy`](crate::BalancerBuilder::policy).
///
/// ```
/// use std::time::Duration;
/// use tower_lb::{Balancer, Policy};
///
/// let balancer = Balancer::builder()
///     .endpoint("http://127.0.0.1:8081")
///     .endpoint_weighted("http://127.0.0.1:8082", 3)
///     .policy(
///         Policy::least_response_time()
///             .decay(Duration::from_secs(5))
///             .failure_penalty(Duration::from_millis(500)),
///     )
///     .build()?;
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct LeastResponseTime {
    initial: Duration,
    decay: Duration,
    penalty: Duration,
    exact: bool,
}

impl Default for LeastResponseTime {
    fn default() -> Self {
        LeastResponseTime {
            initial: DEFAULT_RTT,
            decay: DEFAULT_DECAY,
            penalty: DEFAULT_PENALTY,
            exact: false,
        }
    }
}

impl LeastResponseTime {
    /// How long the estimate takes to follow a drop in latency: a sample
    /// `t` after the previous one moves it `1 − e^(−t/decay)` of the way.
    /// Default 10 s; must be above zero.
    pub fn decay(mut self, decay: Duration) -> Self {
        self.decay = decay;
        self
    }

    /// The estimate a new endpoint starts from, so that it is neither
    /// flooded nor starved before its first answers. Default 30 ms.
    pub fn default_rtt(mut self, rtt: Duration) -> Self {
        self.initial = rtt;
        self
    }

    /// The least a failed request (5xx, timeout, connect or other error)
    /// counts as, so that an endpoint that fails fast does not look fast.
    /// Default 1 s.
    pub fn failure_penalty(mut self, penalty: Duration) -> Self {
        self.penalty = penalty;
        self
    }

    /// Take the cheapest of all endpoints instead of the cheapest of two at
    /// random and the last winner: exact, O(endpoints) per request, and
    /// deterministic (a tie goes to the endpoint listed first). For small
    /// sets.
    pub fn exact(mut self) -> Self {
        self.exact = true;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.decay.is_zero() {
            return Err(Error::InvalidPolicy {
                reason: "the decay time must be above zero".into(),
            });
        }
        Ok(())
    }

    pub(crate) fn rtt_model(&self, clock: Clock) -> RttModel {
        RttModel::new(clock, self.initial, self.decay, self.penalty)
    }

    pub(crate) fn picker(&self, members: &[Member]) -> Box<dyn Picker> {
        let weights: Vec<u32> = members.iter().map(|m| m.weight).collect();
        let mean = weights.iter().map(|&w| f64::from(w)).sum::<f64>() / weights.len().max(1) as f64;
        Box::new(LeastTimePicker {
            inverse_relative_weights: weights.iter().map(|&w| mean / f64::from(w)).collect(),
            draw: WeightedDraw::new(&weights),
            exact: self.exact,
            last_winner: PerLane::from_fn(|_| AtomicUsize::new(NO_WINNER)),
        })
    }
}

/// Costs closer than this share are equal: below what the estimates can
/// tell apart (they are `f32`s built from noisy samples), and a tie goes to
/// the first candidate, drawn in proportion to weight.
const TIE: f64 = 1.0 / 1024.0;

/// Whether cost `x` is lower than `y` by more than a tie.
fn clearly_cheaper(x: f64, y: f64) -> bool {
    x < y * (1.0 - TIE)
}

/// `last_winner` before the first pick.
const NO_WINNER: usize = usize::MAX;

#[derive(Debug)]
struct LeastTimePicker {
    /// Mean weight / weight, per endpoint.
    inverse_relative_weights: Box<[f64]>,
    draw: WeightedDraw,
    exact: bool,
    /// The endpoint this lane picked last (a fresh picker comes with every
    /// change of the set, so the memory starts empty then); one per lane,
    /// as it changes with almost every pick.
    last_winner: PerLane<AtomicUsize>,
}

impl LeastTimePicker {
    fn cost(&self, ctx: &PickContext<'_>, now: u32, i: usize) -> f64 {
        // `i` is an available endpoint drawn from this picker's own set;
        // one outside either set (a picker used over another set) costs
        // the most, rather than panicking.
        let (Some(endpoint), Some(&inverse_weight)) =
            (ctx.endpoints.get(i), self.inverse_relative_weights.get(i))
        else {
            return f64::INFINITY;
        };
        // The whole count, every core's lane: a view of one core's share
        // only makes an idle slow endpoint look as cheap as a busy fast one
        // too soon (measured: 1% of requests to a 10x slower backend and a
        // p99 of 20 ms, against 0.6% and 5 ms with the whole count).
        let queue = endpoint.in_flight() as f64 * inverse_weight;
        if ctx.ramp.is_some() {
            // Slow start: the effective weight is weight × factor, divided
            // into the queue and into the cost, so a fresh endpoint looks
            // dear until its window has run.
            // A minimum of 0% makes the factor 0 at first: a thousandth
            // keeps the cost a number (not 0 / 0) and the endpoint dear.
            let factor = ctx.slow_start_factor(i).max(1e-3);
            return endpoint.rtt_nanos_at(now) * (queue / factor + 1.0) / factor;
        }
        endpoint.rtt_nanos_at(now) * (queue + 1.0)
    }
}

impl Picker for LeastTimePicker {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let n = ctx.endpoints.len().min(self.draw.len());
        let model = ctx.endpoints.first()?.rtt_model();
        let now = ctx
            .now
            .map_or_else(|| model.stamp_now(), |at| model.stamp(at));
        if self.exact {
            return (0..n)
                .filter(|&i| ctx.available(i))
                .min_by(|&a, &b| self.cost(ctx, now, a).total_cmp(&self.cost(ctx, now, b)));
        }
        let a = self.draw.draw(ctx, None)?;
        let Some(b) = self.draw.draw(ctx, Some(a)) else {
            return Some(a);
        };
        let (cost_a, cost_b) = (self.cost(ctx, now, a), self.cost(ctx, now, b));
        let (mut winner, best) = if clearly_cheaper(cost_b, cost_a) {
            (b, cost_b)
        } else {
            (a, cost_a)
        };
        let last_winner = if ctx.rng.is_seeded() {
            self.last_winner.first()
        } else {
            self.last_winner.this_threads()
        };
        let last = last_winner.load(Ordering::Relaxed);
        if last < n
            && last != a
            && last != b
            && ctx.available(last)
            && clearly_cheaper(self.cost(ctx, now, last), best)
        {
            winner = last;
        }
        if last != winner {
            last_winner.store(winner, Ordering::Relaxed);
        }
        Some(winner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::time::Instant;

    use super::*;
    use crate::endpoint::{Counters, EndpointUrl, InFlight};
    use crate::outcome::Outcome;
    use crate::random::SharedRng;

    /// Endpoints whose estimates start at zero, so that the first answer
    /// sets them.
    fn members(weights: &[u32]) -> (Vec<Member>, Counters) {
        let model = LeastResponseTime::default()
            .default_rtt(Duration::ZERO)
            .rtt_model(Clock::default());
        let counters = Counters {
            rtt: Arc::new(model),
            ..Counters::default()
        };
        let members = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let url = EndpointUrl::parse(&format!("http://127.0.0.1:{}", 9000 + i)).unwrap();
                Member::new(url, w, &counters)
            })
            .collect();
        (members, counters)
    }

    fn picks(policy: &LeastResponseTime, members: &[Member], count: usize) -> Vec<usize> {
        let endpoints: Vec<_> = members.iter().map(|m| m.state.clone()).collect();
        let picker = policy.picker(members);
        let ctx = PickContext {
            key: None,
            endpoints: &endpoints,
            in_flight: None,
            excluded: &[],
            skip_ejected_at: None,
            skip_held_at: None,
            rng: &SharedRng::new(11),
            now: Some(tokio::time::Instant::now()),
            ramp: None,
        };
        let mut counts = vec![0; members.len()];
        for _ in 0..count {
            counts[picker.pick(&ctx).unwrap()] += 1;
        }
        counts
    }

    /// Records one answer of `latency` on `member`.
    fn answer(member: &Member, latency: Duration, outcome: Outcome) {
        member
            .state
            .record_rtt(latency, outcome != Outcome::Success, Instant::now());
    }

    #[test]
    fn the_slow_endpoint_loses_every_exact_comparison_while_idle_ones_are_fast() {
        let (members, _) = members(&[1, 1, 1]);
        answer(&members[0], Duration::from_millis(2), Outcome::Success);
        answer(&members[1], Duration::from_millis(20), Outcome::Success);
        answer(&members[2], Duration::from_millis(3), Outcome::Success);
        let counts = picks(&LeastResponseTime::default().exact(), &members, 100);
        assert_eq!(counts, [100, 0, 0]);
        let counts = picks(&LeastResponseTime::default(), &members, 3_000);
        assert_eq!(
            counts[1], 0,
            "two choices never prefer the slow one here: {counts:?}"
        );
    }

    #[test]
    fn the_last_winner_joins_the_two_random_candidates() {
        let (members, _) = members(&[1, 1, 1, 1, 1]);
        for member in &members[..4] {
            answer(member, Duration::from_millis(2), Outcome::Success);
        }
        answer(&members[4], Duration::from_millis(20), Outcome::Success);
        // Endpoint 0 is idle (cost 2 ms); 1 to 3 have 20 in flight (42 ms);
        // the slow endpoint 4 is idle (20 ms). Two random draws alone take
        // the slow one whenever they pair it with a busy fast one (3 pairs
        // in 10: about 300 of 1,000); once endpoint 0 has been drawn and
        // won (each draw includes it with probability 0.4), remembering it
        // keeps the slow one out.
        let _busy: Vec<_> = members[1..4]
            .iter()
            .flat_map(|m| (0..20).map(|_| InFlight::start(&m.state)))
            .collect();
        let counts = picks(&LeastResponseTime::default(), &members, 1_000);
        assert!(counts[0] >= 970, "{counts:?}");
        assert!(counts[4] < 30, "{counts:?}");
    }

    #[test]
    fn weights_divide_the_queue() {
        let (members, _) = members(&[1, 3]);
        for member in &members {
            answer(member, Duration::from_millis(5), Outcome::Success);
        }
        // Relative weights 0.5 and 1.5: two in flight on the light one cost
        // 5 ms x (2 / 0.5 + 1) = 25 ms; four on the heavy one 5 ms x (4 / 1.5 + 1) = 18 ms.
        let _light: Vec<_> = (0..2).map(|_| InFlight::start(&members[0].state)).collect();
        let _heavy: Vec<_> = (0..4).map(|_| InFlight::start(&members[1].state)).collect();
        assert_eq!(
            picks(&LeastResponseTime::default().exact(), &members, 10),
            [0, 10]
        );
    }

    #[test]
    fn idle_equally_fast_endpoints_share_in_proportion_to_weight() {
        let (members, _) = members(&[1, 3]);
        for member in &members {
            answer(member, Duration::from_millis(5), Outcome::Success);
        }
        let counts = picks(&LeastResponseTime::default(), &members, 4_000);
        // Expected 1,000 and 3,000; the standard deviation is about 27.
        assert!(counts[0].abs_diff(1_000) < 150, "{counts:?}");
    }

    #[test]
    fn a_fast_failure_looks_slow() {
        let (members, _) = members(&[1, 1]);
        answer(&members[0], Duration::from_millis(1), Outcome::ServerError);
        answer(&members[1], Duration::from_millis(10), Outcome::Success);
        assert_eq!(
            picks(&LeastResponseTime::default().exact(), &members, 10),
            [0, 10]
        );
    }

    #[test]
    fn load_makes_the_slow_endpoint_worth_it_again() {
        let (members, _) = members(&[1, 1]);
        answer(&members[0], Duration::from_millis(2), Outcome::Success);
        answer(&members[1], Duration::from_millis(20), Outcome::Success);
        // Eleven requests in flight on the fast one: 2 ms x 12 > 20 ms x 1.
        let _busy: Vec<_> = (0..11)
            .map(|_| InFlight::start(&members[0].state))
            .collect();
        assert_eq!(
            picks(&LeastResponseTime::default().exact(), &members, 1),
            [0, 1]
        );
    }

    #[test]
    fn a_zero_decay_is_refused() {
        assert!(LeastResponseTime::default()
            .decay(Duration::ZERO)
            .validate()
            .is_err());
    }
}
