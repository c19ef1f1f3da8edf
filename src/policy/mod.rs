//! Selection policies: how the balancer chooses an endpoint for a request.
//!
//! A policy ([`SelectionPolicy`]) turns the endpoints that take requests
//! into a [`Picker`]: the selection state for one snapshot of the set,
//! prepared off the request path and read without a lock by every request.
//! The built-in policies ([`Policy`]) and a user's own are the same trait.

mod consistent;
mod custom;
mod least_time;
mod maglev;
mod random;
mod ring;
mod round_robin;
mod weighted;

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

pub use consistent::{ConsistentHash, DEFAULT_LOAD_FACTOR, DEFAULT_VIRTUAL_NODES};
pub use custom::{Candidates, SelectionPolicy, Subset};
pub use least_time::LeastResponseTime;
use random::WeightedRandom;
use round_robin::Rotation;

use tokio::time::Instant;

use crate::clock::Clock;
use crate::endpoint::{Counters, EndpointCore, EndpointState, Member, RttModel};
use crate::random::SharedRng;
use crate::slow_start::Ramps;
use crate::{Error, RequestKey};

/// What a [`Picker`] may look at to choose an endpoint for one request:
/// the request's key, which endpoints may take it (not ejected, not
/// already tried), their loads, and the balancer's random numbers.
///
/// Endpoints are numbered as in the [`Candidates`] the picker was built
/// from.
pub struct PickContext<'a> {
    /// The hash of the request's key, when the policy hashes and the request
    /// has a key.
    pub(crate) key: Option<u64>,
    /// The active endpoints; picks are indices into this.
    pub(crate) endpoints: &'a [Arc<EndpointState>],
    /// Requests in flight over the whole balancer, when the policy asked for
    /// the count ([`Policy::counts_total_in_flight`]).
    pub(crate) in_flight: Option<&'a AtomicU64>,
    /// Endpoints this request already tried (a retry goes elsewhere).
    pub(crate) excluded: &'a [Arc<EndpointCore>],
    /// When some endpoints are ejected (and the balancer is not in panic
    /// mode), the health clock's time now: picks skip ejected endpoints.
    pub(crate) skip_ejected_at: Option<u64>,
    /// When some endpoint may be held off for overload, the balancer's
    /// time now (milliseconds): picks skip held endpoints.
    pub(crate) skip_held_at: Option<u64>,
    /// The balancer's random number generator: every random choice draws
    /// from it.
    pub(crate) rng: &'a SharedRng,
    /// The balancer's clock, read once for this request (its latency is
    /// measured from the same reading) when the policy reads response-time
    /// estimates; `None` otherwise.
    pub(crate) now: Option<Instant>,
    /// While some endpoint is in its slow-start window: the settings and
    /// the clock's milliseconds now. `None` otherwise, and then no pick
    /// does anything for slow start.
    pub(crate) ramp: Option<(&'a Ramps, u64)>,
}

impl fmt::Debug for PickContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PickContext")
            .field("key", &self.key)
            .field("endpoints", &self.endpoints.len())
            .field("retry", &self.is_retry())
            .finish_non_exhaustive()
    }
}

impl<'a> PickContext<'a> {
    /// How many endpoints there are to choose from.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether there is no endpoint to choose from.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The hash of the request's key ([`key_hash`](crate::key_hash)), when
    /// the policy reads keys and the request has one.
    pub fn key(&self) -> Option<u64> {
        self.key
    }

    /// Whether endpoint `i` may take this request: not ejected (outside
    /// panic mode), not held off for overload, and not already tried by
    /// it. Every built-in policy makes this one check; a picker should too.
    pub fn is_available(&self, i: usize) -> bool {
        self.available(i)
    }

    /// Requests in flight on endpoint `i` now.
    pub fn in_flight(&self, i: usize) -> u64 {
        self.endpoints.get(i).map_or(0, |e| e.in_flight())
    }

    /// A random number below `n` (0 when `n` is 0), from the balancer's
    /// generator, which [`BalancerBuilder::seed`](crate::BalancerBuilder::seed)
    /// makes repeatable.
    pub fn random_below(&self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        self.rng.below(n as u64) as usize
    }

    /// The same request seen over a narrower set: `endpoints` instead of
    /// these (a [`Subset`]'s), everything else unchanged.
    pub(crate) fn narrowed<'b>(&self, endpoints: &'b [Arc<EndpointState>]) -> PickContext<'b>
    where
        'a: 'b,
    {
        PickContext { endpoints, ..*self }
    }

    /// Whether endpoint `i` may take this request: the one check every
    /// policy makes, so that all of them skip ejected endpoints alike. An
    /// index out of range (a picker built over another set, a custom
    /// picker's mistake) is not available.
    pub(crate) fn available(&self, i: usize) -> bool {
        let Some(endpoint) = self.endpoints.get(i) else {
            return false;
        };
        if self.excluded.iter().any(|e| endpoint.has_core(e)) {
            return false;
        }
        if self.skip_held_at.is_some_and(|now| endpoint.is_held(now)) {
            return false;
        }
        match self.skip_ejected_at {
            None => true,
            Some(now) => !endpoint.is_ejected(now),
        }
    }

    /// The same request with held-off endpoints taken as available: for
    /// the pick of last resort when every endpoint is held.
    pub(crate) fn ignoring_holds(&self) -> PickContext<'a> {
        PickContext {
            skip_held_at: None,
            ..*self
        }
    }

    /// The factor slow start multiplies endpoint `i`'s weight by now: 1
    /// unless the endpoint is in its window ([`SlowStart`](crate::SlowStart)),
    /// then between the minimum share and 1. A custom picker that weighs
    /// endpoints multiplies their weights by it.
    ///
    /// ```
    /// use tower_lb::{Candidates, PickContext, Picker, SelectionPolicy};
    ///
    /// /// The available endpoint with the most slow-start factor per
    /// /// request in flight: a newcomer in its window waits its turn.
    /// #[derive(Debug)]
    /// struct Roomiest;
    ///
    /// impl SelectionPolicy for Roomiest {
    ///     fn build(&self, _: &Candidates<'_>) -> Box<dyn Picker> {
    ///         Box::new(Roomiest)
    ///     }
    /// }
    ///
    /// impl Picker for Roomiest {
    ///     fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
    ///         let room = |i: usize| ctx.slow_start_factor(i) / (ctx.in_flight(i) + 1) as f64;
    ///         (0..ctx.len())
    ///             .filter(|&i| ctx.is_available(i))
    ///             .max_by(|&a, &b| room(a).total_cmp(&room(b)))
    ///     }
    /// }
    /// # let balancer = tower_lb::Balancer::builder()
    /// #     .endpoint("http://127.0.0.1:8081")
    /// #     .policy(tower_lb::Policy::custom(Roomiest))
    /// #     .build()?;
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    pub fn slow_start_factor(&self, i: usize) -> f64 {
        match (self.ramp, self.endpoints.get(i)) {
            (Some((ramps, now)), Some(endpoint)) => ramps.factor(endpoint.ramp_start_ms(), now),
            _ => 1.0,
        }
    }

    /// Whether endpoint `i`, in its slow-start window, lets this turn (or
    /// draw) go: it takes each with probability its factor, so that its
    /// turns are thinned to weight × factor. Never outside a window.
    #[inline]
    pub(crate) fn declines(&self, i: usize) -> bool {
        if self.ramp.is_none() {
            return false;
        }
        self.declines_ramping(i)
    }

    #[cold]
    fn declines_ramping(&self, i: usize) -> bool {
        let factor = self.slow_start_factor(i);
        if factor >= 1.0 {
            return false;
        }
        // A uniform draw in [0, 1) from the top 53 bits.
        let unit = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit >= factor
    }

    /// Whether this pick is a retry (another endpoint already failed the
    /// request): a rotation should not give it a turn of its own.
    pub fn is_retry(&self) -> bool {
        !self.excluded.is_empty()
    }

    /// Whether any endpoint may take this request: O(endpoints), for the
    /// rare pick that meets many unavailable ones in a row.
    pub(crate) fn any_available(&self) -> bool {
        (0..self.endpoints.len()).any(|i| self.available(i))
    }

    /// The available endpoints among `candidates`, in their order. A
    /// preference walk can be long (a ring holds up to 2^20 points), so
    /// after [`QUICK_MISSES`] unavailable candidates in a row it checks
    /// that any endpoint is available at all, and stops if none is.
    pub(crate) fn only_available<'c>(
        &'c self,
        candidates: impl Iterator<Item = usize> + 'c,
    ) -> impl Iterator<Item = usize> + 'c {
        let mut misses = 0;
        candidates
            .map_while(move |i| {
                if self.available(i) {
                    return Some(Some(i));
                }
                misses += 1;
                if misses == QUICK_MISSES && !self.any_available() {
                    return None;
                }
                Some(None)
            })
            .flatten()
    }

    /// The first available endpoint among `candidates`, in their order.
    pub fn first_available(&self, candidates: impl Iterator<Item = usize>) -> Option<usize> {
        self.only_available(candidates).next()
    }
}

/// Unavailable candidates in a row after which a walk checks that any
/// endpoint is available at all.
pub(crate) const QUICK_MISSES: usize = 16;

/// Selection state for one version of the endpoint set, made by a
/// [`SelectionPolicy`] and read by every request, from any thread at once:
/// keep it immutable or atomic, never locked.
pub trait Picker: Send + Sync + fmt::Debug {
    /// The index (as in the [`Candidates`] it was built from) of the
    /// endpoint for this request, or `None` when none may take it. Return
    /// only endpoints that are [available](PickContext::is_available).
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize>;

    /// Where a request with the key in `ctx` would go now, for
    /// [`Balancer::locate`](crate::Balancer::locate): nothing is sent, and
    /// nothing should change. By default the [`pick`](Picker::pick) itself,
    /// which is right for a picker that places keys (a built-in hashing
    /// picker, or one that delegates to it); a picker whose picks move
    /// state it does not want a look-up to move (a rotation of its own)
    /// answers here without moving it, or `None` if keys have no place.
    ///
    /// ```
    /// use tower_lb::{Balancer, Candidates, PickContext, Picker, Policy, SelectionPolicy, SessionKey};
    ///
    /// /// Maglev, wrapped: picks and look-ups go to the inner picker.
    /// #[derive(Debug)]
    /// struct Wrapped;
    ///
    /// #[derive(Debug)]
    /// struct WrappedPicker(Box<dyn Picker>);
    ///
    /// impl SelectionPolicy for Wrapped {
    ///     fn build(&self, endpoints: &Candidates<'_>) -> Box<dyn Picker> {
    ///         Box::new(WrappedPicker(Policy::from(Policy::maglev()).build(endpoints)))
    ///     }
    /// }
    ///
    /// impl Picker for WrappedPicker {
    ///     fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
    ///         self.0.pick(ctx)
    ///     }
    ///     fn locate(&self, ctx: &PickContext<'_>) -> Option<usize> {
    ///         self.0.locate(ctx)
    ///     }
    /// }
    ///
    /// let balancer = Balancer::builder()
    ///     .endpoint("http://127.0.0.1:8081")
    ///     .endpoint("http://127.0.0.1:8082")
    ///     .policy(Policy::custom(Wrapped))
    ///     .build()?;
    /// let plain = Balancer::builder()
    ///     .endpoint("http://127.0.0.1:8081")
    ///     .endpoint("http://127.0.0.1:8082")
    ///     .policy(Policy::maglev())
    ///     .build()?;
    /// let key = SessionKey::new("user-42");
    /// assert!(balancer.locate(&key).is_some());
    /// assert_eq!(balancer.locate(&key), plain.locate(&key));
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    fn locate(&self, ctx: &PickContext<'_>) -> Option<usize> {
        self.pick(ctx)
    }
}

/// How the balancer chooses an endpoint for each request.
///
/// ```
/// use tower_lb::{Balancer, Policy};
///
/// let balancer = Balancer::builder()
///     .endpoint_weighted("http://127.0.0.1:8081", 5)
///     .endpoint("http://127.0.0.1:8082")
///     .policy(Policy::weighted_round_robin())
///     .build()?;
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Policy {
    kind: Kind,
}

#[derive(Clone, Debug, Default)]
enum Kind {
    RoundRobin,
    #[default]
    WeightedRoundRobin,
    Random,
    LeastTime(LeastResponseTime),
    Hash(Box<ConsistentHash>),
    /// A user's policy, and what the built-in policies it delegates to
    /// need of the balancer, recorded as it builds (see [`Delegated`]).
    Custom(Arc<dyn SelectionPolicy>, Arc<Delegated>),
}

/// What the built-in policies a custom policy delegates to need of the
/// whole balancer, recorded when they build (the first of each wins), so
/// that a built-in keeps all of its behaviour inside a custom policy: the
/// key source it hashes on ([`SelectionPolicy::request_key`]), the count of
/// requests in flight that bounded loads read, least time's estimate
/// settings, and any mistake in its configuration.
///
/// The balancer reads it once, after building the custom policy over its
/// first endpoints, and keeps what it found.
#[derive(Debug, Default)]
pub(crate) struct Delegated {
    key: OnceLock<RequestKey>,
    counts_total_in_flight: OnceLock<()>,
    least_time: OnceLock<LeastResponseTime>,
    mistake: OnceLock<String>,
}

impl Delegated {
    /// Records what `policy`, built as a delegate, needs.
    fn record(&self, policy: &Policy) {
        if let Some(key) = policy.request_key() {
            let _ = self.key.set(key.clone());
        }
        if policy.counts_total_in_flight() {
            let _ = self.counts_total_in_flight.set(());
        }
        if let Some(least) = policy.least_time() {
            let _ = self.least_time.set(least.clone());
        }
        if let Err(Error::InvalidPolicy { reason, .. }) = policy.validate() {
            let _ = self.mistake.set(reason);
        }
    }
}

impl Policy {
    /// Each endpoint in turn, ignoring weights (except that weight 0 still
    /// means drained).
    pub fn round_robin() -> Self {
        Policy {
            kind: Kind::RoundRobin,
        }
    }

    /// Smooth weighted round robin, as in NGINX: each endpoint gets
    /// weight / total weight of the requests, interleaved rather than in
    /// bursts (weights 5, 1, 1 give `a a b a c a a`). The default.
    ///
    /// Shares are exact over every whole cycle when the weights, divided by
    /// their greatest common divisor, sum to at most 65,536 (fewer for sets
    /// above 512 endpoints, so that preparing the cycle stays cheap); larger
    /// sums are scaled down to fit, which rounds each share slightly.
    pub fn weighted_round_robin() -> Self {
        Policy {
            kind: Kind::WeightedRoundRobin,
        }
    }

    /// A random endpoint for each request, chosen in proportion to weight,
    /// with one draw (and, while endpoints are ejected, more draws until an
    /// available one comes up, so shares stay in proportion to weight).
    ///
    /// Draws come from the balancer's generator, which
    /// [`BalancerBuilder::seed`](crate::BalancerBuilder::seed) makes
    /// repeatable.
    pub fn random() -> Self {
        Policy { kind: Kind::Random }
    }

    /// Least response time: the cheapest of two endpoints drawn at random
    /// in proportion to weight and the one the balancer picked last, where
    /// cost = response-time estimate × (requests in flight / relative
    /// weight + 1). The estimate jumps up on a slow answer, decays smoothly
    /// (10 s) on fast ones and with time while nothing is heard, and counts
    /// failures as slow. Configure it with the [`LeastResponseTime`]
    /// methods.
    pub fn least_response_time() -> LeastResponseTime {
        LeastResponseTime::default()
    }

    /// Consistent hashing on a hash ring (ketama style): points in
    /// proportion to each endpoint's own weight (2,048 per unit by default,
    /// [`ConsistentHash::virtual_nodes`]), so a change of the set moves only
    /// the changed endpoint's keys; binary-search lookup. Configure it with
    /// the [`ConsistentHash`] methods.
    pub fn ring_hash() -> ConsistentHash {
        ConsistentHash::ring()
    }

    /// Consistent hashing with a Maglev lookup table (Eisenbud et al., NSDI
    /// 2016): a prime-sized table (65,537 slots by default), weighted, one
    /// read per lookup, near-perfect balance. Configure it with the
    /// [`ConsistentHash`] methods.
    pub fn maglev() -> ConsistentHash {
        ConsistentHash::maglev()
    }

    /// A policy of your own (see [`SelectionPolicy`]).
    pub fn custom(policy: impl SelectionPolicy) -> Self {
        Policy {
            kind: Kind::Custom(Arc::new(policy), Arc::default()),
        }
    }

    /// Whether this policy places requests by the hash of a key.
    pub fn is_hash(&self) -> bool {
        matches!(self.kind, Kind::Hash(_))
    }

    /// Whether picks read the balancer's total of requests in flight
    /// (hashing with bounded loads), so that it must be counted.
    pub(crate) fn counts_total_in_flight(&self) -> bool {
        match &self.kind {
            Kind::Hash(hash) => hash.bounds_loads(),
            Kind::Custom(_, delegated) => delegated.counts_total_in_flight.get().is_some(),
            _ => false,
        }
    }

    /// The least-time settings the picks follow: least time's own, a
    /// hashing policy's least-time fallback's, or those of the least-time
    /// policy a custom policy delegated to.
    fn least_time(&self) -> Option<&LeastResponseTime> {
        match &self.kind {
            Kind::LeastTime(least) => Some(least),
            Kind::Hash(hash) => hash.fallback_policy().least_time(),
            Kind::Custom(_, delegated) => delegated.least_time.get(),
            _ => None,
        }
    }

    /// Whether this is a policy of the user's own.
    pub(crate) fn is_custom(&self) -> bool {
        matches!(self.kind, Kind::Custom(..))
    }

    /// Whether picks read the endpoints' response-time estimates (least
    /// time, directly or as a hashing policy's fallback; a custom policy
    /// unless it says otherwise), so that every request must be timed.
    pub(crate) fn reads_latency(&self) -> bool {
        match &self.kind {
            Kind::LeastTime(_) => true,
            Kind::Hash(hash) => hash.fallback_policy().reads_latency(),
            Kind::Custom(custom, _) => custom.reads_latency(),
            _ => false,
        }
    }

    /// This policy for a balancer of its own: a custom policy gets a fresh
    /// recorder of the key source it delegates to, so that two balancers
    /// built from one `Policy` do not share what one of them recorded.
    pub(crate) fn for_one_balancer(&self) -> Policy {
        match &self.kind {
            Kind::Custom(custom, _) => Policy {
                kind: Kind::Custom(custom.clone(), Arc::default()),
            },
            _ => self.clone(),
        }
    }

    /// Where the policy takes request keys from, if it hashes.
    pub(crate) fn request_key(&self) -> Option<&RequestKey> {
        match &self.kind {
            Kind::Hash(hash) => Some(hash.request_key()),
            Kind::Custom(custom, delegated) => custom.request_key().or_else(|| delegated.key.get()),
            _ => None,
        }
    }

    /// Reports configuration mistakes, at `build()`: a custom policy's are
    /// those of the built-in policies it delegated to when it was first
    /// built.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        match &self.kind {
            Kind::Hash(hash) => hash.validate(),
            Kind::LeastTime(least) => least.validate(),
            Kind::Custom(_, delegated) => match delegated.mistake.get() {
                Some(reason) => Err(Error::InvalidPolicy {
                    reason: format!("a policy the custom policy delegates to: {reason}"),
                }),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// Prepares the selection state for the active endpoints (weights all
    /// above zero). The rotations' positions live in `counters`, shared
    /// across snapshots so that a rebuild does not restart them: the
    /// `k`-th rotation this build makes continues the `k`-th of the last.
    pub(crate) fn picker(&self, active: &[Member], counters: &Counters) -> Box<dyn Picker> {
        let delegated = match &self.kind {
            Kind::Custom(_, delegated) => delegated.clone(),
            _ => Arc::default(),
        };
        self.picker_over(&Candidates::new(active, counters, delegated))
    }

    /// [`Policy::picker`] over `candidates`: a custom policy builds over
    /// them as they are, so that what it delegates to reports its key
    /// source where the outermost custom policy finds it.
    fn picker_over(&self, candidates: &Candidates<'_>) -> Box<dyn Picker> {
        let active = candidates.members;
        let weights = || active.iter().map(|m| m.weight).collect::<Vec<_>>();
        match &self.kind {
            Kind::RoundRobin => Box::new(Rotation::round_robin(
                active.len(),
                candidates.next_rotation(),
            )),
            Kind::WeightedRoundRobin => Box::new(Rotation::smooth_weighted(
                &weights(),
                candidates.next_rotation(),
            )),
            Kind::Random => Box::new(WeightedRandom::new(&weights())),
            Kind::LeastTime(least) => least.picker(active),
            Kind::Hash(hash) => hash.picker(candidates),
            Kind::Custom(custom, _) => custom.build(candidates),
        }
    }

    /// The settings of the endpoints' response-time estimates, on `clock`.
    pub(crate) fn rtt_model_on(&self, clock: Clock) -> RttModel {
        match self.least_time() {
            Some(least) => least.rtt_model(clock),
            None => LeastResponseTime::default().rtt_model(clock),
        }
    }
}

impl From<LeastResponseTime> for Policy {
    fn from(least: LeastResponseTime) -> Self {
        Policy {
            kind: Kind::LeastTime(least),
        }
    }
}

impl From<ConsistentHash> for Policy {
    fn from(hash: ConsistentHash) -> Self {
        Policy {
            kind: Kind::Hash(Box::new(hash)),
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// Endpoints in [`no_key`]'s context.
    pub(crate) const POOL: usize = 64;

    /// A context for a request without a key, with nothing in flight,
    /// drawing from `rng`, over [`POOL`] idle endpoints (a picker over
    /// fewer uses the first ones).
    pub(crate) fn no_key(rng: &SharedRng) -> PickContext<'_> {
        static ENDPOINTS: OnceLock<Vec<Arc<EndpointState>>> = OnceLock::new();
        let endpoints = ENDPOINTS.get_or_init(|| {
            let counters = Counters::default();
            (0..POOL)
                .map(|i| {
                    let url = format!("http://127.0.0.1:{}", 9000 + i);
                    let url = crate::endpoint::EndpointUrl::parse(&url).unwrap();
                    Arc::new(EndpointState::new(url, &counters))
                })
                .collect()
        });
        PickContext {
            key: None,
            endpoints,
            in_flight: None,
            excluded: &[],
            skip_ejected_at: None,
            skip_held_at: None,
            rng,
            now: Some(Instant::now()),
            ramp: None,
        }
    }
}
