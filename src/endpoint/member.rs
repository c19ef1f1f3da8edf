//! An endpoint's place in the set (its weight) and the state every endpoint
//! of one balancer shares.

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;

use super::{EndpointState, EndpointUrl, Labels, RttModel};
use crate::clock::Clock;
use crate::health::HealthShared;
use crate::lanes::PerLane;
use crate::random::SharedRng;
use crate::refresh::ConnectFailures;

/// Counters that outlive snapshots.
#[derive(Clone, Debug, Default)]
pub(crate) struct Counters {
    /// Position of the rotating policies, so a rebuild does not restart them.
    /// One per lane: each thread walks the rotation on its own lane's, so
    /// two cores picking at once write different cache lines.
    pub(crate) sequence: Arc<PerLane<AtomicUsize>>,
    /// Position of the rotating policies' spare turns: the turns of
    /// unavailable endpoints, and retries, which must not shift the main
    /// rotation.
    pub(crate) spare_sequence: Arc<AtomicUsize>,
    /// The balancer's one clock.
    pub(crate) clock: Clock,
    /// The balancer's one random number generator.
    pub(crate) rng: Arc<SharedRng>,
    /// Requests in flight over the whole balancer, counted only for a
    /// policy that reads it (bounded loads): one more shared write per
    /// request, which costs both cores a cache-line transfer.
    pub(crate) in_flight: Option<Arc<AtomicU64>>,
    /// Settings of every endpoint's response-time estimate.
    pub(crate) rtt: Arc<RttModel>,
    /// Outlier-detection settings and the balancer's ejection counts.
    pub(crate) health: Arc<HealthShared>,
    /// Connect failures since discovery last looked (a hint to look again).
    pub(crate) connect_failures: Arc<ConnectFailures>,
}

/// An endpoint, its weight and its labels.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub(crate) state: Arc<EndpointState>,
    pub(crate) weight: u32,
    pub(crate) labels: Labels,
}

impl Member {
    /// A new endpoint with fresh state and no labels.
    pub(crate) fn new(url: EndpointUrl, weight: u32, counters: &Counters) -> Self {
        Member {
            state: Arc::new(EndpointState::new(url, counters)),
            weight,
            labels: Labels::default(),
        }
    }
}
