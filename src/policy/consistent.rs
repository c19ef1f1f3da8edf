//! Consistent hashing: the same key reaches the same endpoint from every
//! client instance, and a change of the set moves as few keys as possible.
//!
//! Two tables ([`Ring`] and [`Maglev`]), an optional load bound (Mirrokni,
//! Thorup and Zadimoghaddam, "Consistent Hashing with Bounded Loads"), and a
//! fallback policy for requests without a key.

use std::sync::atomic::Ordering;

use super::maglev::{self, Maglev, DEFAULT_TABLE_SIZE, MAX_TABLE_SIZE};
use super::ring::Ring;
use super::{Candidates, PickContext, Picker, Policy};
use crate::{Error, RequestKey};

/// Points on the ring per unit of an endpoint's weight, by default: an
/// endpoint of weight 1 gets 2,048, one of weight 3 gets 6,144, as long as
/// the ring holds them all (2²⁰ points; see
/// [`ConsistentHash::virtual_nodes`]).
///
/// ```
/// use tower_lb::{Balancer, Policy, DEFAULT_VIRTUAL_NODES};
///
/// // Weights in the hundreds: a tenth of the default per unit of weight
/// // still gives an endpoint of weight 100 more than 20,000 points.
/// let balancer = Balancer::builder()
///     .endpoint_weighted("http://10.0.0.1:8080", 100)
///     .endpoint_weighted("http://10.0.0.2:8080", 300)
///     .policy(Policy::ring_hash().virtual_nodes(DEFAULT_VIRTUAL_NODES / 10))
///     .build()?;
/// # Ok::<(), tower_lb::Error>(())
/// ```
pub const DEFAULT_VIRTUAL_NODES: u32 = 2_048;
/// The usual balance factor for bounded loads: no endpoint takes more than
/// 1.25 × its fair share of the requests in flight.
pub const DEFAULT_LOAD_FACTOR: f64 = 1.25;

/// A consistent-hash policy: made by [`Policy::ring_hash`] or
/// [`Policy::maglev`], configured here, and given to
/// [`BalancerBuilder::policy`](crate::BalancerBuilder::policy).
///
/// ```
/// use tower_lb::{Balancer, Policy, RequestKey};
///
/// let balancer = Balancer::builder()
///     .endpoint("http://127.0.0.1:8081")
///     .endpoint("http://127.0.0.1:8082")
///     .policy(
///         Policy::maglev()
///             .key(RequestKey::header("x-user-id"))
///             .bounded_loads() // no endpoint above 1.25 × its share in flight
///             .fallback(Policy::round_robin()), // for requests without the header
///     )
///     .build()?;
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct ConsistentHash {
    table: TableKind,
    key: RequestKey,
    load_factor: Option<f64>,
    fallback: Box<Policy>,
    /// A mistake found while configuring, reported by `build()`.
    error: Option<String>,
}

#[derive(Clone, Copy, Debug)]
enum TableKind {
    /// `points_per_weight`: points per unit of weight.
    Ring {
        points_per_weight: u32,
    },
    Maglev {
        size: u64,
    },
}

impl ConsistentHash {
    pub(crate) fn ring() -> Self {
        Self::with_table(TableKind::Ring {
            points_per_weight: DEFAULT_VIRTUAL_NODES,
        })
    }

    pub(crate) fn maglev() -> Self {
        Self::with_table(TableKind::Maglev {
            size: DEFAULT_TABLE_SIZE,
        })
    }

    fn with_table(table: TableKind) -> Self {
        ConsistentHash {
            table,
            key: RequestKey::default(),
            load_factor: None,
            fallback: Box::new(Policy::weighted_round_robin()),
            error: None,
        }
    }

    /// Where the key comes from; the default is [`RequestKey::session`].
    pub fn key(mut self, key: RequestKey) -> Self {
        self.key = key;
        self
    }

    /// The policy for requests that have no key; the default is
    /// [`Policy::weighted_round_robin`]. It cannot itself hash.
    pub fn fallback(mut self, policy: impl Into<Policy>) -> Self {
        self.fallback = Box::new(policy.into());
        self
    }

    /// Bounds every endpoint's load at [`DEFAULT_LOAD_FACTOR`] (1.25) times
    /// its fair share: a key goes to the first endpoint in its preference
    /// order that is under the bound, so one hot key cannot melt a backend.
    pub fn bounded_loads(self) -> Self {
        self.load_factor(DEFAULT_LOAD_FACTOR)
    }

    /// Whether loads are bounded (`bounded_loads` or `load_factor` set).
    pub(crate) fn bounds_loads(&self) -> bool {
        self.load_factor.is_some()
    }

    /// Bounded loads with balance factor `c`, at least 1: an endpoint with
    /// weight share `s` takes a new request only while its requests in flight,
    /// this one included, are at most `⌈c × s × (all in flight + 1)⌉`. Smaller
    /// `c` balances more evenly and moves more keys away from home.
    pub fn load_factor(mut self, c: f64) -> Self {
        if !(c.is_finite() && c >= 1.0) {
            self.note_error(format!(
                "the load factor must be a number of at least 1, not {c}"
            ));
        }
        self.load_factor = Some(c);
        self
    }

    /// Ring only: points per unit of weight (1 to 65,536; default
    /// [`DEFAULT_VIRTUAL_NODES`], 2,048). An endpoint of weight `w` gets
    /// `points × w` points, whatever the weights of the others, so adding or
    /// removing an endpoint moves only its keys. More points balance better
    /// and cost memory, 16 to 20 bytes each.
    ///
    /// The ring holds at most 2²⁰ points: when `points × total weight`
    /// exceeds that, it holds 2²⁰ shared by weight, and then a change of the
    /// total weight moves keys between the other endpoints too, about in
    /// proportion (removing one of ten equal endpoints moves its keys and
    /// three quarters as many of the others'). At the default that is above
    /// a total weight of 512: with larger weights (a DNS SRV weight of 100,
    /// say) lower `points` so that `points × total weight` stays within 2²⁰.
    ///
    /// ```
    /// use tower_lb::{Balancer, Policy};
    ///
    /// // Weights around 100, up to 50 endpoints: 200 × 100 × 50 ≤ 2²⁰.
    /// let balancer = Balancer::builder()
    ///     .endpoint_weighted("http://10.0.0.1:8080", 100)
    ///     .endpoint_weighted("http://10.0.0.2:8080", 150)
    ///     .policy(Policy::ring_hash().virtual_nodes(200))
    ///     .build()?;
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    pub fn virtual_nodes(mut self, points: u32) -> Self {
        match &mut self.table {
            TableKind::Ring { points_per_weight } if (1..=65_536).contains(&points) => {
                *points_per_weight = points
            }
            TableKind::Ring { .. } => {
                self.note_error(format!("virtual nodes must be 1 to 65536, not {points}"))
            }
            TableKind::Maglev { .. } => {
                self.note_error("virtual_nodes applies to the ring, not to Maglev".into())
            }
        }
        self
    }

    /// Maglev only: the lookup table size, a prime from 2 to 16,777,216
    /// (default 65,537). It should be well above the number of endpoints
    /// (the paper suggests 100 times) for an even spread.
    pub fn table_size(mut self, size: u64) -> Self {
        match &mut self.table {
            TableKind::Maglev { size: s } if size <= MAX_TABLE_SIZE && maglev::is_prime(size) => {
                *s = size
            }
            TableKind::Maglev { .. } => self.note_error(format!(
                "the Maglev table size must be a prime up to {MAX_TABLE_SIZE}, not {size}"
            )),
            TableKind::Ring { .. } => {
                self.note_error("table_size applies to Maglev, not to the ring".into())
            }
        }
        self
    }

    fn note_error(&mut self, reason: String) {
        self.error.get_or_insert(reason);
    }

    pub(crate) fn fallback_policy(&self) -> &Policy {
        &self.fallback
    }

    pub(crate) fn request_key(&self) -> &RequestKey {
        &self.key
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        let reason = self.error.as_deref().or(self.key.error()).or_else(|| {
            self.fallback
                .is_hash()
                .then_some("the fallback is for requests without a key, so it cannot hash")
        });
        match reason {
            Some(reason) => Err(Error::InvalidPolicy {
                reason: reason.to_owned(),
            }),
            None => Ok(()),
        }
    }

    pub(crate) fn picker(&self, candidates: &Candidates<'_>) -> Box<dyn Picker> {
        let members = candidates.members;
        let table = match self.table {
            TableKind::Ring { points_per_weight } => {
                Table::Ring(Ring::build(members, points_per_weight))
            }
            TableKind::Maglev { size } => Table::Maglev(Maglev::build(members, size)),
        };
        let bound = self.load_factor.map(|factor| LoadBound {
            factor,
            weights: members.iter().map(|m| m.weight).collect(),
            total_weight: members.iter().map(|m| f64::from(m.weight)).sum(),
        });
        Box::new(HashPicker {
            table,
            bound,
            fallback: self.fallback.picker_over(candidates),
        })
    }
}

#[derive(Debug)]
enum Table {
    Ring(Ring),
    Maglev(Maglev),
}

#[derive(Debug)]
struct HashPicker {
    table: Table,
    bound: Option<LoadBound>,
    fallback: Box<dyn Picker>,
}

impl Picker for HashPicker {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let Some(hash) = ctx.key else {
            return self.fallback.pick(ctx);
        };
        // The key's preference order, ejected endpoints left out: a key
        // whose endpoint is ejected walks on to the next, and comes back.
        match (&self.table, &self.bound) {
            (Table::Ring(ring), None) => ctx.first_available(ring.walk(hash)),
            (Table::Maglev(table), None) => ctx.first_available(table.walk(hash)),
            (Table::Ring(ring), Some(bound)) => {
                bound.first_fitting(ctx.only_available(ring.walk(hash)), ctx)
            }
            (Table::Maglev(table), Some(bound)) => {
                bound.first_fitting(ctx.only_available(table.walk(hash)), ctx)
            }
        }
    }
}

#[derive(Debug)]
struct LoadBound {
    factor: f64,
    weights: Box<[u32]>,
    total_weight: f64,
}

impl LoadBound {
    /// The first endpoint in `preference` whose load, with this request,
    /// stays within its bound; the first in `preference` if loads moved so
    /// fast that none did.
    fn first_fitting(
        &self,
        mut preference: impl Iterator<Item = usize>,
        ctx: &PickContext<'_>,
    ) -> Option<usize> {
        let all = ctx.in_flight.map_or(0, |n| n.load(Ordering::Relaxed)) as f64 + 1.0;
        let home = preference.next()?;
        // Shares of the weight that may take this request: with some
        // endpoints out, the others' bounds must still add up to more than
        // all in flight, so that one fits and the walk ends early.
        let total_weight = if ctx.ramp.is_some() {
            // Slow start: shares of weight × factor, the available ones'.
            (self.weights.iter().enumerate())
                .filter(|&(i, _)| ctx.available(i))
                .map(|(i, &weight)| f64::from(weight) * ctx.slow_start_factor(i))
                .sum::<f64>()
                .max(f64::MIN_POSITIVE)
        } else if ctx.skip_ejected_at.is_some() || ctx.is_retry() {
            (self.weights.iter().enumerate())
                .filter(|&(i, _)| ctx.available(i))
                .map(|(_, &weight)| f64::from(weight))
                .sum::<f64>()
                .max(1.0)
        } else {
            self.total_weight
        };
        // Indices come from the table this bound was built with, and were
        // checked available in `ctx`; `get` keeps a picker used over
        // another set (a custom policy's mistake) from panicking.
        let fits = |i: usize| match (self.weights.get(i), ctx.endpoints.get(i)) {
            (Some(&weight), Some(endpoint)) => {
                let share = f64::from(weight) * ctx.slow_start_factor(i) / total_weight;
                let bound = (self.factor * share * all).ceil();
                (endpoint.in_flight() + 1) as f64 <= bound
            }
            _ => false,
        };
        if fits(home) {
            return Some(home);
        }
        preference.find(|&i| fits(i)).or(Some(home))
    }
}
