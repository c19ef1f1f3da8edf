//! The published endpoint set.
//!
//! A [`Snapshot`] is immutable: every change to the set builds a new one off
//! the request path (with the policy's selection state prepared for it) and
//! publishes it with one atomic store. A request loads the current snapshot
//! without a lock and keeps using it even if a newer one is published
//! meanwhile.

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;

use super::{EndpointState, EndpointUrl, RttModel, Stats};
use crate::health::HealthShared;
use crate::policy::{Pick, PickContext, Policy};

/// Counters that outlive snapshots.
#[derive(Clone, Debug, Default)]
pub(crate) struct Counters {
    /// Position of the rotating policies, so a rebuild does not restart them.
    pub(crate) sequence: Arc<AtomicUsize>,
    /// Requests in flight over the whole balancer, counted only for a
    /// policy that reads it (bounded loads): one more shared write per
    /// request, which costs both cores a cache-line transfer.
    pub(crate) in_flight: Option<Arc<AtomicU64>>,
    /// Settings of every endpoint's response-time estimate.
    pub(crate) rtt: Arc<RttModel>,
    /// Outlier-detection settings and the balancer's ejection counts.
    pub(crate) health: Arc<HealthShared>,
}

/// An endpoint and its weight.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub(crate) state: Arc<EndpointState>,
    pub(crate) weight: u32,
}

impl Member {
    pub(crate) fn new(url: EndpointUrl, weight: u32, counters: &Counters) -> Self {
        Member {
            state: Arc::new(EndpointState::new(url, counters)),
            weight,
        }
    }
}

/// One published version of the endpoint set.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// Every endpoint, drained ones included, in the order they were added.
    members: Vec<Member>,
    /// The endpoints that take new requests (weight above 0), in `members`
    /// order; the picker's indices point into this.
    active: Vec<Arc<EndpointState>>,
    picker: Box<dyn Pick>,
    counters: Counters,
}

impl Snapshot {
    /// Builds the snapshot and the policy's selection state for `members`.
    pub(crate) fn build(members: Vec<Member>, policy: &Policy, counters: &Counters) -> Self {
        let active_members: Vec<Member> =
            members.iter().filter(|m| m.weight > 0).cloned().collect();
        // A drained endpoint holds no ejection slot; it comes back unejected.
        for drained in members.iter().filter(|m| m.weight == 0) {
            drained.state.forget_health();
        }
        counters.health.set_active(active_members.len());
        let picker = policy.picker(&active_members, &counters.sequence);
        Snapshot {
            active: active_members.into_iter().map(|m| m.state).collect(),
            members,
            picker,
            counters: counters.clone(),
        }
    }

    /// Chooses the endpoint for the next request (`key`: the hash of its
    /// key, if it has one), or `None` when no endpoint takes requests.
    pub(crate) fn pick(
        &self,
        key: Option<u64>,
        excluded: &[Arc<EndpointState>],
    ) -> Option<&Arc<EndpointState>> {
        let health = &self.counters.health;
        let ctx = PickContext {
            key,
            endpoints: &self.active,
            in_flight: self.counters.in_flight.as_deref(),
            excluded,
            skip_ejected_at: health.filter_time(),
        };
        self.picker.pick(&ctx).and_then(|i| self.active.get(i))
    }

    /// Whether `endpoint` takes new requests in this snapshot.
    pub(crate) fn is_active(&self, endpoint: &Arc<EndpointState>) -> bool {
        self.active.iter().any(|a| Arc::ptr_eq(a, endpoint))
    }

    pub(crate) fn members(&self) -> &[Member] {
        &self.members
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            endpoints: self
                .members
                .iter()
                .map(|m| m.state.stats(m.weight))
                .collect(),
            panic_mode: self.counters.health.in_panic(),
        }
    }
}
