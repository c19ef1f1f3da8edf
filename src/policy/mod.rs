//! Selection policies: how the balancer chooses an endpoint for a request.
//!
//! A policy turns the weights of the active endpoints into a [`Pick`]: the
//! selection state for one snapshot of the set, prepared off the request path
//! and read without a lock by every request.

mod consistent;
mod least_time;
mod maglev;
mod random;
mod ring;
mod round_robin;
mod weighted;

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

pub use consistent::{ConsistentHash, DEFAULT_LOAD_FACTOR, DEFAULT_VIRTUAL_NODES};
pub use least_time::LeastResponseTime;
use random::WeightedRandom;
use round_robin::Rotation;

use crate::clock::Clock;
use crate::endpoint::{Counters, EndpointState, Member, RttModel};
use crate::random::SharedRng;
use crate::{Error, RequestKey};

/// What a policy may look at to choose an endpoint for one request.
pub(crate) struct PickContext<'a> {
    /// The hash of the request's key, when the policy hashes and the request
    /// has a key.
    pub(crate) key: Option<u64>,
    /// The active endpoints; picks are indices into this.
    pub(crate) endpoints: &'a [Arc<EndpointState>],
    /// Requests in flight over the whole balancer, when the policy asked for
    /// the count ([`Policy::counts_total_in_flight`]).
    pub(crate) in_flight: Option<&'a AtomicU64>,
    /// Endpoints this request already tried (a retry goes elsewhere).
    pub(crate) excluded: &'a [Arc<EndpointState>],
    /// When some endpoints are ejected (and the balancer is not in panic
    /// mode), the health clock's time now: picks skip ejected endpoints.
    pub(crate) skip_ejected_at: Option<u64>,
    /// The balancer's random number generator: every random choice draws
    /// from it.
    pub(crate) rng: &'a SharedRng,
}

impl PickContext<'_> {
    /// Whether endpoint `i` may take this request: the one check every
    /// policy makes, so that all of them skip ejected endpoints alike.
    pub(crate) fn available(&self, i: usize) -> bool {
        if self
            .excluded
            .iter()
            .any(|e| Arc::ptr_eq(e, &self.endpoints[i]))
        {
            return false;
        }
        match self.skip_ejected_at {
            None => true,
            Some(now) => !self.endpoints[i].is_ejected(now),
        }
    }

    /// Whether this pick is a retry: it must not take a turn from a
    /// rotation.
    pub(crate) fn is_retry(&self) -> bool {
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
    pub(crate) fn first_available(&self, candidates: impl Iterator<Item = usize>) -> Option<usize> {
        self.only_available(candidates).next()
    }
}

/// Unavailable candidates in a row after which a walk checks that any
/// endpoint is available at all.
pub(crate) const QUICK_MISSES: usize = 16;

/// Selection state for one snapshot of the endpoint set.
pub(crate) trait Pick: Send + Sync + fmt::Debug {
    /// The index, among the active endpoints, of the one to send the next
    /// request to; `None` if there are none.
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize>;
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

    /// Consistent hashing on a hash ring (ketama style): virtual nodes in
    /// proportion to weight, binary-search lookup. Configure it with the
    /// [`ConsistentHash`] methods.
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

    /// Whether this policy places requests by the hash of a key.
    pub fn is_hash(&self) -> bool {
        matches!(self.kind, Kind::Hash(_))
    }

    /// Whether picks read the balancer's total of requests in flight
    /// (hashing with bounded loads), so that it must be counted.
    pub(crate) fn counts_total_in_flight(&self) -> bool {
        matches!(&self.kind, Kind::Hash(hash) if hash.bounds_loads())
    }

    /// Where the policy takes request keys from, if it hashes.
    pub(crate) fn request_key(&self) -> Option<&RequestKey> {
        match &self.kind {
            Kind::Hash(hash) => Some(hash.request_key()),
            _ => None,
        }
    }

    /// Reports configuration mistakes, at `build()`.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        match &self.kind {
            Kind::Hash(hash) => hash.validate(),
            Kind::LeastTime(least) => least.validate(),
            _ => Ok(()),
        }
    }

    /// Prepares the selection state for the active endpoints (weights all
    /// above zero). The rotations' counters live in `counters`, shared
    /// across snapshots so that a rebuild does not restart them.
    pub(crate) fn picker(&self, active: &[Member], counters: &Counters) -> Box<dyn Pick> {
        let weights = || active.iter().map(|m| m.weight).collect::<Vec<_>>();
        match &self.kind {
            Kind::RoundRobin => Box::new(Rotation::round_robin(active.len(), counters)),
            Kind::WeightedRoundRobin => Box::new(Rotation::smooth_weighted(&weights(), counters)),
            Kind::Random => Box::new(WeightedRandom::new(&weights())),
            Kind::LeastTime(least) => least.picker(active),
            Kind::Hash(hash) => hash.picker(active, counters),
        }
    }

    /// The settings of the endpoints' response-time estimates, on `clock`.
    pub(crate) fn rtt_model_on(&self, clock: Clock) -> RttModel {
        match &self.kind {
            Kind::LeastTime(least) => least.rtt_model(clock),
            Kind::Hash(hash) => hash.fallback_policy().rtt_model_on(clock),
            _ => LeastResponseTime::default().rtt_model(clock),
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

    /// A context for a request without a key, with nothing in flight,
    /// drawing from `rng`.
    pub(crate) fn no_key(rng: &SharedRng) -> PickContext<'_> {
        PickContext {
            key: None,
            endpoints: &[],
            in_flight: None,
            excluded: &[],
            skip_ejected_at: None,
            rng,
        }
    }
}
