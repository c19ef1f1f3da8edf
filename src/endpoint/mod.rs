//! One endpoint: its address, its weight, its live state (counters, the
//! response-time estimate, health), and the stats copied out of it.

mod core;
mod interned;
mod lane;
mod member;
mod rtt;
mod served;
mod spec;
mod state;
mod stats;
mod url;

pub(crate) use core::EndpointCore;
pub(crate) use lane::Ticket;
pub(crate) use member::{Counters, Member, RotationCursor};
pub(crate) use rtt::{RttModel, DEFAULT_DECAY, DEFAULT_PENALTY, DEFAULT_RTT};
pub use served::ServedBy;
pub use spec::{Endpoint, IntoEndpoint, Labels};
pub(crate) use state::{EndpointState, InFlight};
pub use stats::{DiscoveryStats, EndpointStats, ExtraAttempts, FailureCounts, Stats};
pub(crate) use url::EndpointUrl;

/// The largest weight an endpoint may have.
///
/// Weights are relative, so small numbers say everything a weight can say;
/// a larger one is almost always a unit mistake and is refused with
/// [`Error::InvalidWeight`](crate::Error::InvalidWeight). Weight 0 is allowed
/// and means drained: no new requests.
pub const MAX_WEIGHT: u32 = 10_000;
