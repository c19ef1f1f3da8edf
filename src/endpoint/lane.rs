//! An endpoint's request counters, split in lanes: each thread counts in
//! the lane it maps to, so two cores sending to the same endpoint write
//! different cache lines. A request in flight holds a [`Ticket`] to its
//! lane, a reference count on it, and that count is the lane's in-flight
//! count: one atomic add when a request starts and one subtract when it
//! ends, which no separate counter could make cheaper or keep more exact.
//! Stats and in-flight reads sum the lanes.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use super::core::EndpointCore;

use crate::outcome::Outcome;

/// One lane of one endpoint's counters, on cache lines of its own (and its
/// reference count, the in-flight count, on another: 128 bytes apart, as
/// cores fetch lines in pairs).
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Lane {
    pub(crate) core: Arc<EndpointCore>,
    /// A wrapping count of the requests started, for sampled timing only:
    /// read and written without an atomic add, so threads that share a
    /// lane may both take one turn now and then (a request timed twice or
    /// not at all, never a count that matters).
    turns: AtomicU32,
    succeeded: AtomicU64,
    server_errors: AtomicU64,
    connect_errors: AtomicU64,
    timeouts: AtomicU64,
    closed: AtomicU64,
    other_errors: AtomicU64,
    cancelled: AtomicU64,
    client_errors: AtomicU64,
    overloaded: AtomicU64,
}

/// A request's hold on its lane: the lane's in-flight count is the number
/// of tickets alive. Not `Clone`, so that only a started request can hold
/// one; made by [`EndpointState::ticket`](super::EndpointState::ticket).
#[derive(Debug)]
pub(crate) struct Ticket(Arc<Lane>);

impl Ticket {
    /// A ticket for `lane`, one of the holds the endpoint keeps.
    pub(super) fn new(lane: &Arc<Lane>) -> Self {
        Ticket(lane.clone())
    }
}

impl std::ops::Deref for Ticket {
    type Target = Lane;

    fn deref(&self) -> &Lane {
        &self.0
    }
}

/// A lane's counters, read; added up over the lanes for stats.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LaneCounts {
    pub(crate) in_flight: u64,
    pub(crate) succeeded: u64,
    pub(crate) server_errors: u64,
    pub(crate) connect_errors: u64,
    pub(crate) timeouts: u64,
    pub(crate) closed: u64,
    pub(crate) other_errors: u64,
    pub(crate) cancelled: u64,
    pub(crate) client_errors: u64,
    pub(crate) overloaded: u64,
}

impl std::ops::Add for LaneCounts {
    type Output = LaneCounts;

    fn add(self, other: LaneCounts) -> LaneCounts {
        LaneCounts {
            in_flight: self.in_flight + other.in_flight,
            succeeded: self.succeeded + other.succeeded,
            server_errors: self.server_errors + other.server_errors,
            connect_errors: self.connect_errors + other.connect_errors,
            timeouts: self.timeouts + other.timeouts,
            closed: self.closed + other.closed,
            other_errors: self.other_errors + other.other_errors,
            cancelled: self.cancelled + other.cancelled,
            client_errors: self.client_errors + other.client_errors,
            overloaded: self.overloaded + other.overloaded,
        }
    }
}

impl LaneCounts {
    /// Requests started: in flight, or ended with exactly one outcome.
    pub(crate) fn started(&self) -> u64 {
        self.in_flight
            + self.succeeded
            + self.server_errors
            + self.connect_errors
            + self.timeouts
            + self.closed
            + self.other_errors
            + self.cancelled
            + self.client_errors
            + self.overloaded
    }
}

impl Lane {
    pub(crate) fn new(core: Arc<EndpointCore>) -> Self {
        Lane {
            core,
            turns: AtomicU32::new(0),
            succeeded: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            other_errors: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            client_errors: AtomicU64::new(0),
            overloaded: AtomicU64::new(0),
        }
    }

    /// Takes the next turn in this lane (wrapping) and returns it: 0 for
    /// the lane's first request. See `turns` for why it is not exact.
    pub(crate) fn take_turn(&self) -> u32 {
        let turn = self.turns.load(Ordering::Relaxed);
        self.turns.store(turn.wrapping_add(1), Ordering::Relaxed);
        turn
    }

    /// Counts a request that ended with `outcome`.
    pub(crate) fn count(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Success => &self.succeeded,
            Outcome::ServerError => &self.server_errors,
            Outcome::ConnectError => &self.connect_errors,
            Outcome::Timeout => &self.timeouts,
            Outcome::Closed => &self.closed,
            Outcome::OtherError => &self.other_errors,
            Outcome::ClientError => &self.client_errors,
            Outcome::Overloaded => &self.overloaded,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request dropped before it ended.
    pub(crate) fn count_cancelled(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters, read one by one, with `in_flight` as the caller read
    /// it.
    pub(crate) fn counts(&self, in_flight: u64) -> LaneCounts {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LaneCounts {
            in_flight,
            succeeded: load(&self.succeeded),
            server_errors: load(&self.server_errors),
            connect_errors: load(&self.connect_errors),
            timeouts: load(&self.timeouts),
            closed: load(&self.closed),
            other_errors: load(&self.other_errors),
            cancelled: load(&self.cancelled),
            client_errors: load(&self.client_errors),
            overloaded: load(&self.overloaded),
        }
    }
}
