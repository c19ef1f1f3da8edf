//! Rotations: plain round robin (each active endpoint in turn) and the
//! smooth weighted cycle (`weighted.rs`) are both a fixed cycle of endpoint
//! indices read at a cursor per lane (see `lanes.rs`).
//!
//! When the endpoint at a request's turn is unavailable (ejected), the turn
//! is handed on through a second, spare counter that walks the same cycle
//! and skips unavailable entries. Over a whole cycle the spare walk meets
//! every available endpoint as often as its weight, so an ejected
//! endpoint's turns spread over the others in proportion to their weights,
//! instead of all falling to its neighbour in the cycle. Retries take spare
//! turns too: they neither skip nor repeat anyone's turn in the main
//! rotation, so the first attempts keep their exact shares.
//!
//! Slow start thins an endpoint's turns while it is in its window: each of
//! its turns is taken with probability its factor and otherwise handed on
//! as a spare turn (where it is thinned again), so its share is weight ×
//! factor over the sum of everyone's. No rebuild and no lock: the factor
//! comes from the endpoint's atomic state and the clock reading of the
//! pick. Outside every window nothing is drawn and the cycle is exact.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::weighted::smooth_cycle;
use super::{PickContext, Picker, QUICK_MISSES};
use crate::endpoint::RotationCursor;

#[derive(Debug)]
pub(crate) struct Rotation {
    /// One whole cycle of picks, as indices of active endpoints.
    cycle: Box<[u32]>,
    /// Where this rotation stands: its cycle position per lane and its
    /// spare turns' counter (both survive rebuilds of the set, and belong
    /// to this rotation alone).
    cursor: Arc<RotationCursor>,
    /// Each endpoint's turns per cycle.
    weights: Box<[u64]>,
}

impl Rotation {
    /// Each of `len` endpoints in turn.
    pub(crate) fn round_robin(len: usize, cursor: Arc<RotationCursor>) -> Self {
        Self::with_cycle((0..len as u32).collect(), cursor)
    }

    /// NGINX's smooth weighted round robin over `weights`.
    pub(crate) fn smooth_weighted(weights: &[u32], cursor: Arc<RotationCursor>) -> Self {
        Self::with_cycle(smooth_cycle(weights), cursor)
    }

    fn with_cycle(cycle: Vec<u32>, cursor: Arc<RotationCursor>) -> Self {
        let endpoints = cycle.iter().map(|&i| i as usize + 1).max().unwrap_or(0);
        let mut weights = vec![0u64; endpoints];
        for &i in &cycle {
            weights[i as usize] += 1;
        }
        Rotation {
            cycle: cycle.into_boxed_slice(),
            cursor,
            weights: weights.into_boxed_slice(),
        }
    }

    /// The next available endpoint of the spare walk. Each step takes the
    /// next slot of the shared spare counter, so that concurrent turns
    /// interleave and the walk meets every available endpoint as often as
    /// its weight. After a few unavailable slots in a row (most of the
    /// weight is out), one exact choice by weight over the available
    /// endpoints ends the turn: no walk over a long cycle, and no "none
    /// available" while one is (other threads moving the counter cannot
    /// make this turn miss).
    fn spare_turn(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let len = self.cycle.len();
        let mut position = 0;
        for _ in 0..QUICK_MISSES.min(len) {
            position = self.cursor.spare.fetch_add(1, Ordering::Relaxed);
            let i = self.cycle[position % len] as usize;
            if ctx.available(i) && !ctx.declines(i) {
                return Some(i);
            }
        }
        let available: u64 = (0..self.weights.len())
            .filter(|&i| ctx.available(i))
            .map(|i| self.weights[i])
            .sum();
        if available == 0 {
            return None;
        }
        let mut point = position as u64 % available;
        (0..self.weights.len())
            .filter(|&i| ctx.available(i))
            .find(|&i| {
                if point < self.weights[i] {
                    return true;
                }
                point -= self.weights[i];
                false
            })
    }
}

impl Picker for Rotation {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let len = self.cycle.len();
        if len == 0 {
            return None;
        }
        if ctx.is_retry() {
            return self.spare_turn(ctx);
        }
        let i = self.cycle[next_slot(self.cursor.sequence.this_threads(), len)] as usize;
        if ctx.available(i) && !ctx.declines(i) {
            return Some(i);
        }
        self.spare_turn(ctx)
    }
}

/// Takes the slot `cursor` points at in a cycle of `len` slots and moves it
/// to the next: one atomic exchange and no division (a cursor left past
/// the end by a longer cycle is wrapped first).
fn next_slot(cursor: &AtomicUsize, len: usize) -> usize {
    let mut seen = cursor.load(Ordering::Relaxed);
    loop {
        let slot = if seen < len { seen } else { seen % len };
        let next = if slot + 1 == len { 0 } else { slot + 1 };
        match cursor.compare_exchange_weak(seen, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return slot,
            Err(now) => seen = now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::{Counters, EndpointState, EndpointUrl};
    use crate::policy::test_support::no_key;
    use crate::random::SharedRng;

    #[test]
    fn visits_each_endpoint_in_turn() {
        let rng = SharedRng::new(0);
        let rr = Rotation::round_robin(3, Arc::default());
        let picks: Vec<_> = (0..7).filter_map(|_| rr.pick(&no_key(&rng))).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
        let empty = Rotation::round_robin(0, Arc::default());
        assert_eq!(empty.pick(&no_key(&rng)), None);
    }

    #[test]
    fn the_counter_carries_across_rebuilds() {
        let rng = SharedRng::new(0);
        let cursor = Arc::<RotationCursor>::default();
        let first = Rotation::smooth_weighted(&[1, 1], cursor.clone());
        assert_eq!(first.pick(&no_key(&rng)), Some(0));
        let second = Rotation::smooth_weighted(&[1, 1], cursor);
        assert_eq!(second.pick(&no_key(&rng)), Some(1));
    }

    #[test]
    fn retries_take_spare_turns_and_never_return_to_the_tried() {
        let rng = SharedRng::new(0);
        let counters = Counters::default();
        let endpoints: Vec<_> = (0..2)
            .map(|i| {
                let url = EndpointUrl::parse(&format!("http://127.0.0.1:{}", 9000 + i)).unwrap();
                Arc::new(EndpointState::new(url, &counters))
            })
            .collect();
        let rr = Rotation::round_robin(2, Arc::default());
        let mut first_attempts = Vec::new();
        for _ in 0..10 {
            let first = rr.pick(&PickContext {
                endpoints: &endpoints,
                ..no_key(&rng)
            });
            first_attempts.push(first.unwrap());
            // Every attempt on endpoint 0 is retried.
            if first == Some(0) {
                let tried = [endpoints[0].core().clone()];
                let retry = rr.pick(&PickContext {
                    endpoints: &endpoints,
                    excluded: &tried,
                    ..no_key(&rng)
                });
                assert_eq!(retry, Some(1));
            }
        }
        assert_eq!(first_attempts, [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]);
    }
}
