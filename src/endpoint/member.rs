//! An endpoint's place in the set (its weight) and the state every endpoint
//! of one balancer shares.

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, PoisonError};

use super::{EndpointState, EndpointUrl, Labels, RttModel};
use crate::clock::Clock;
use crate::health::HealthShared;
use crate::lanes::PerLane;
use crate::overload::Holds;
use crate::random::SharedRng;
use crate::refresh::ConnectFailures;
use crate::slow_start::Ramps;

/// Counters that outlive snapshots.
#[derive(Clone, Debug, Default)]
pub(crate) struct Counters {
    /// Positions of the rotations the policy builds (one for a plain
    /// rotating policy, one per rotation a custom policy delegates to), so
    /// a rebuild does not restart them.
    pub(crate) rotations: Arc<RotationCursors>,
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
    /// The balancer's metric series (no-ops by default).
    #[cfg(feature = "metrics")]
    pub(crate) metrics: Arc<crate::telemetry::BalancerMetrics>,
    /// Overload settings, and whether any endpoint may be held off.
    pub(crate) holds: Arc<Holds>,
    /// Slow start, when it is on.
    pub(crate) ramps: Option<Arc<Ramps>>,
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

/// The positions of every rotation one policy builds, numbered in the order
/// a build of the selection state makes them. Building is deterministic (the
/// same policy over a changed set makes its rotations in the same order), so
/// rotation `k` of one snapshot continues where rotation `k` of the one
/// before stopped; and two rotations of one build (a custom policy's
/// "zone a first, else any") never share a position, which would make one
/// walk the other's cycle in lockstep and pile its turns onto one endpoint.
#[derive(Debug, Default)]
pub(crate) struct RotationCursors {
    /// Taken only while a snapshot is built, never per request.
    cursors: Mutex<Vec<Arc<RotationCursor>>>,
}

impl RotationCursors {
    /// The position of the `k`-th rotation a build makes.
    pub(crate) fn nth(&self, k: usize) -> Arc<RotationCursor> {
        let mut cursors = self.cursors.lock().unwrap_or_else(PoisonError::into_inner);
        while cursors.len() <= k {
            cursors.push(Arc::default());
        }
        cursors[k].clone()
    }
}

/// Where one rotation stands.
#[derive(Debug, Default)]
pub(crate) struct RotationCursor {
    /// Position in the cycle. One per lane: each thread walks the rotation
    /// on its own lane's, so two cores picking at once write different
    /// cache lines.
    pub(crate) sequence: PerLane<AtomicUsize>,
    /// Position of the spare turns: the turns of unavailable endpoints, and
    /// retries, which must not shift the main rotation.
    pub(crate) spare: AtomicUsize,
}
