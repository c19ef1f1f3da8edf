//! The published endpoint set.
//!
//! A [`Snapshot`] is immutable: every change to the set builds a new one off
//! the request path (with the policy's selection state prepared for it) and
//! publishes it with one atomic store. A request loads the current snapshot
//! without a lock and keeps using it even if a newer one is published
//! meanwhile.

use std::sync::Arc;

use tokio::time::Instant;

use crate::endpoint::{Counters, EndpointCore, EndpointState, Member, Stats};
use crate::policy::{PickContext, Picker, Policy};

/// One published version of the endpoint set.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// Every endpoint, drained ones included, in the order they were added.
    members: Vec<Member>,
    /// The endpoints that take new requests (weight above 0), in `members`
    /// order; the picker's indices point into this.
    active: Vec<Arc<EndpointState>>,
    picker: Box<dyn Picker>,
    /// The picker is a user's, whose answers are checked (the built-in
    /// pickers return only available endpoints: no second check for them).
    checks_answers: bool,
    counters: Counters,
}

impl Snapshot {
    /// Builds the snapshot and the policy's selection state for `members`.
    pub(crate) fn build(members: Vec<Member>, policy: &Policy, counters: &Counters) -> Self {
        // The interval sweeps due so far judge the set as it was.
        counters.health.sweep_due();
        let active_members: Vec<Member> =
            members.iter().filter(|m| m.weight > 0).cloned().collect();
        // The picker first: a custom policy that panics as it builds leaves
        // the endpoints' states as they were.
        let picker = policy.picker(&active_members, counters);
        // A drained endpoint holds no ejection and counts nothing; it comes
        // back with clean counts.
        for member in &members {
            if member.weight == 0 {
                member.state.retire();
            } else {
                member.state.reinstate();
            }
        }
        #[cfg(feature = "metrics")]
        counters
            .metrics
            .draining(members.len() - active_members.len());
        counters.health.set_active(
            active_members
                .iter()
                .map(|m| m.state.health().clone())
                .collect(),
        );
        Snapshot {
            active: active_members.into_iter().map(|m| m.state).collect(),
            members,
            picker,
            checks_answers: policy.is_custom(),
            counters: counters.clone(),
        }
    }

    /// Chooses the endpoint for the next request (`key`: the hash of its
    /// key, if it has one), or `None` when no endpoint takes requests.
    pub(crate) fn pick(
        &self,
        key: Option<u64>,
        excluded: &[Arc<EndpointCore>],
        now: Option<Instant>,
    ) -> Option<&Arc<EndpointState>> {
        let ctx = self.context(key, excluded, now);
        // A custom picker's answer is checked as every built-in's is made:
        // an endpoint out of range, ejected, held off or already tried is
        // no answer.
        let picked = self
            .picker
            .pick(&ctx)
            .filter(|&i| !self.checks_answers || ctx.available(i));
        match picked {
            Some(i) => self.active.get(i),
            None if ctx.skip_held_at.is_some() => self.soonest_back(&ctx),
            None => None,
        }
    }

    /// When no endpoint may take a request because those that otherwise
    /// would are held off for overload: the one whose hold ends first (the
    /// first in the set among equals). Fails open, as panic mode does:
    /// the request goes where the wait is shortest rather than nowhere.
    #[cold]
    fn soonest_back(&self, ctx: &PickContext<'_>) -> Option<&Arc<EndpointState>> {
        let open = ctx.ignoring_holds();
        (0..self.active.len())
            .filter(|&i| open.available(i))
            .filter_map(|i| self.active.get(i))
            .min_by_key(|endpoint| endpoint.held_until_ms())
    }

    /// Where a request with key hash `key` would go now, without sending
    /// anything (the picker's [`Picker::locate`]).
    pub(crate) fn locate(&self, key: u64) -> Option<&Arc<EndpointState>> {
        let ctx = self.context(Some(key), &[], None);
        self.picker
            .locate(&ctx)
            .filter(|&i| ctx.available(i))
            .and_then(|i| self.active.get(i))
    }

    fn context<'a>(
        &'a self,
        key: Option<u64>,
        excluded: &'a [Arc<EndpointCore>],
        now: Option<Instant>,
    ) -> PickContext<'a> {
        let counters = &self.counters;
        PickContext {
            key,
            endpoints: &self.active,
            in_flight: counters.in_flight.as_deref(),
            excluded,
            skip_ejected_at: counters.health.filter_time(),
            skip_held_at: counters.holds.filter_time(&counters.clock),
            rng: &counters.rng,
            now,
            ramp: (counters.ramps.as_deref())
                .and_then(|ramps| Some((ramps, ramps.ramping_at(&counters.clock)?))),
        }
    }

    /// How a request's cookies look on the wire, whichever endpoint it goes
    /// to: whether `Secure` cookies are sent (every active endpoint is
    /// https), and the base path in front of the request's path (the one all
    /// active endpoints share, else none). Exact when the endpoints agree on
    /// scheme and base path, as a fleet of one service does.
    #[cfg(feature = "cookies")]
    pub(crate) fn cookie_view(&self) -> (bool, &str) {
        let secure = !self.active.is_empty() && self.active.iter().all(|e| e.url.is_https());
        let base = self.active.first().map_or("", |e| e.url.base_path());
        let shared = self.active.iter().all(|e| e.url.base_path() == base);
        (secure, if shared { base } else { "" })
    }

    /// The endpoints that take new requests (ejected ones included).
    pub(crate) fn active(&self) -> &[Arc<EndpointState>] {
        &self.active
    }

    /// How many endpoints take new requests (ejected ones included).
    pub(crate) fn takers(&self) -> usize {
        self.active.len()
    }

    /// Whether `endpoint` takes new requests in this snapshot.
    pub(crate) fn is_active(&self, endpoint: &Arc<EndpointState>) -> bool {
        self.active.iter().any(|a| Arc::ptr_eq(a, endpoint))
    }

    /// Whether `endpoint` may take a request now: active, not ejected
    /// (outside panic mode) and not held off, with the same check every
    /// policy makes. Ends due ejections first, as a pick does.
    pub(crate) fn takes(&self, endpoint: &Arc<EndpointState>) -> bool {
        let counters = &self.counters;
        self.is_active(endpoint)
            && counters
                .health
                .filter_time()
                .is_none_or(|now| !endpoint.is_ejected(now))
            && counters
                .holds
                .filter_time(&counters.clock)
                .is_none_or(|now| !endpoint.is_held(now))
    }

    /// Requests sent to the current endpoints since they joined.
    pub(crate) fn requests_started(&self) -> u64 {
        self.members
            .iter()
            .map(|m| m.state.requests_started())
            .sum()
    }

    pub(crate) fn members(&self) -> &[Member] {
        &self.members
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            endpoints: self
                .members
                .iter()
                .map(|m| m.state.stats(m.weight, &m.labels))
                .collect(),
            panic_mode: self
                .counters
                .health
                .in_panic_at(self.counters.clock.now_ms()),
            health_events_dropped: self.counters.health.events_dropped(),
            ejections: self
                .counters
                .health
                .ejection_stats(self.counters.clock.now_ms()),
            discovery: None,
            extra: Default::default(),
        }
    }
}
