//! Selection policies: how the balancer chooses an endpoint for a request.
//!
//! A policy turns the weights of the active endpoints into a [`Pick`]: the
//! selection state for one snapshot of the set, prepared off the request path
//! and read without a lock by every request.

mod random;
mod round_robin;
mod weighted;

use std::fmt;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use random::WeightedRandom;
use round_robin::RoundRobin;
use weighted::SmoothWeighted;

/// Selection state for one snapshot of the endpoint set.
pub(crate) trait Pick: Send + Sync + fmt::Debug {
    /// The index, among the active endpoints, of the one to send the next
    /// request to; `None` if there are none.
    fn pick(&self) -> Option<usize>;
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

#[derive(Clone, Copy, Debug, Default)]
enum Kind {
    RoundRobin,
    #[default]
    WeightedRoundRobin,
    Random,
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

    /// A random endpoint for each request, chosen in proportion to weight.
    /// Needs no shared counter, so it scales across cores without contention.
    pub fn random() -> Self {
        Policy { kind: Kind::Random }
    }

    /// Prepares the selection state for active endpoints with these weights
    /// (all above zero). `sequence` is the balancer's request counter, shared
    /// across snapshots so that a rebuild does not restart the rotation.
    pub(crate) fn picker(&self, weights: &[u32], sequence: &Arc<AtomicUsize>) -> Box<dyn Pick> {
        match self.kind {
            Kind::RoundRobin => Box::new(RoundRobin::new(weights.len(), sequence.clone())),
            Kind::WeightedRoundRobin => Box::new(SmoothWeighted::new(weights, sequence.clone())),
            Kind::Random => Box::new(WeightedRandom::new(weights)),
        }
    }
}
