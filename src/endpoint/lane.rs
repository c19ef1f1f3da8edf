//! An endpoint's request counters, split in lanes: each thread counts in
//! the lane it maps to, so two cores sending to the same endpoint write
//! different cache lines, and the lane's own reference count is what a
//! request in flight holds. Stats and in-flight reads sum the lanes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::core::EndpointCore;

use crate::outcome::Outcome;

/// One lane of one endpoint's counters, on cache lines of its own.
#[derive(Debug)]
#[repr(align(64))]
pub(crate) struct Lane {
    pub(crate) core: Arc<EndpointCore>,
    /// Requests in flight (low 32 bits) and a wrapping count of requests
    /// started (high 32 bits), in one word: starting a request is one
    /// atomic add that also tells which turn it took (whether it is timed).
    in_flight_and_turns: AtomicU64,
    succeeded: AtomicU64,
    server_errors: AtomicU64,
    connect_errors: AtomicU64,
    timeouts: AtomicU64,
    closed: AtomicU64,
    other_errors: AtomicU64,
    cancelled: AtomicU64,
    client_errors: AtomicU64,
}

/// One request more in flight and one more turn taken, in
/// `in_flight_and_turns`.
const START: u64 = (1 << 32) | 1;

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
    }
}

impl Lane {
    pub(crate) fn new(core: Arc<EndpointCore>) -> Self {
        Lane {
            core,
            in_flight_and_turns: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            other_errors: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            client_errors: AtomicU64::new(0),
        }
    }

    /// Counts one request more in flight; returns its turn in this lane
    /// (wrapping): 0 for the lane's first request.
    pub(crate) fn start(&self) -> u64 {
        self.in_flight_and_turns.fetch_add(START, Ordering::Relaxed) >> 32
    }

    /// Counts one request less in flight.
    pub(crate) fn end(&self) {
        self.in_flight_and_turns.fetch_sub(1, Ordering::Relaxed);
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
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request dropped before it ended.
    pub(crate) fn count_cancelled(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests in flight in this lane.
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight_and_turns.load(Ordering::Relaxed) & u64::from(u32::MAX)
    }

    /// The counters, read one by one.
    pub(crate) fn counts(&self) -> LaneCounts {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LaneCounts {
            in_flight: self.in_flight(),
            succeeded: load(&self.succeeded),
            server_errors: load(&self.server_errors),
            connect_errors: load(&self.connect_errors),
            timeouts: load(&self.timeouts),
            closed: load(&self.closed),
            other_errors: load(&self.other_errors),
            cancelled: load(&self.cancelled),
            client_errors: load(&self.client_errors),
        }
    }
}
