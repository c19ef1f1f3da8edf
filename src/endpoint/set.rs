//! The published endpoint set.
//!
//! A [`Snapshot`] is immutable: every change to the set builds a new one off
//! the request path (with the policy's selection state prepared for it) and
//! publishes it with one atomic store. A request loads the current snapshot
//! without a lock and keeps using it even if a newer one is published
//! meanwhile.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use super::{EndpointState, EndpointUrl, Stats};
use crate::policy::{Pick, Policy};

/// An endpoint and its weight.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub(crate) state: Arc<EndpointState>,
    pub(crate) weight: u32,
}

impl Member {
    pub(crate) fn new(url: EndpointUrl, weight: u32) -> Self {
        Member {
            state: Arc::new(EndpointState::new(url)),
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
}

impl Snapshot {
    /// Builds the snapshot and the policy's selection state for `members`.
    pub(crate) fn build(
        members: Vec<Member>,
        policy: &Policy,
        sequence: &Arc<AtomicUsize>,
    ) -> Self {
        let (active, weights): (Vec<_>, Vec<_>) = members
            .iter()
            .filter(|m| m.weight > 0)
            .map(|m| (m.state.clone(), m.weight))
            .unzip();
        let picker = policy.picker(&weights, sequence);
        Snapshot {
            members,
            active,
            picker,
        }
    }

    /// Chooses the endpoint for the next request, or `None` when no endpoint
    /// takes requests.
    pub(crate) fn pick(&self) -> Option<&Arc<EndpointState>> {
        self.picker.pick().and_then(|i| self.active.get(i))
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
        }
    }
}
