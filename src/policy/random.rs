//! Weighted random choice, and the weighted draw least time takes its
//! candidates with.
//!
//! One draw from the balancer's generator picks an endpoint in proportion
//! to weight, through an alias table (Walker, Vose) built with the snapshot:
//! a column drawn uniformly, then the column's own endpoint or its alias by
//! a threshold, in integers, so the proportions are exact and a draw is a
//! multiply and two reads, with no search. When the drawn endpoint is
//! unavailable, the draw is repeated (rejection sampling keeps the
//! proportions among the available ones exact); if a few draws in a row
//! miss, most of the weight is out, and one exact draw over the available
//! weight finishes the job.
//!
//! Slow start thins the draws of an endpoint in its window: a draw that
//! lands on it is kept with probability its factor, else drawn again, so
//! draws follow weight × factor.

use super::{PickContext, Picker};

/// Draws that may land on unavailable endpoints before the exact draw.
const REJECTION_DRAWS: usize = 4;

/// Draws that an endpoint in its slow-start window may let go before the
/// exact draw (with every endpoint at a 10% share, one pick in 800 gets
/// that far).
const DECLINED_DRAWS: usize = 64;

/// A draw in proportion to weight over the active endpoints.
#[derive(Debug)]
pub(crate) struct WeightedDraw {
    /// Every endpoint's weight.
    weights: Box<[u64]>,
    /// The sum of the weights: each column's height.
    total: u64,
    /// Per column: the point below which the column's own endpoint is
    /// drawn, and the endpoint drawn above it.
    columns: Box<[(u64, u32)]>,
}

impl WeightedDraw {
    pub(crate) fn new(weights: &[u32]) -> Self {
        let weights: Box<[u64]> = weights.iter().map(|&w| u64::from(w)).collect();
        let total: u64 = weights.iter().sum();
        let n = weights.len() as u64;
        // Column i starts with weight_i × n of the n × total area; columns
        // under `total` are topped up from one over it (Vose's method).
        let mut height: Vec<u64> = weights.iter().map(|&w| w * n).collect();
        let mut columns: Vec<(u64, u32)> = (0..weights.len()).map(|i| (total, i as u32)).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..weights.len()).partition(|&i| height[i] < total);
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            columns[s] = (height[s], l as u32);
            height[l] -= total - height[s];
            if height[l] < total {
                large.pop();
                small.push(l);
            }
        }
        WeightedDraw {
            weights,
            total,
            columns: columns.into(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.weights.len()
    }

    /// One endpoint in proportion to weight, from one 64-bit draw: its high
    /// part picks the column, its low part the point in the column.
    fn draw_one(&self, random: u64) -> usize {
        let wide = u128::from(random) * self.columns.len() as u128;
        let column = (wide >> 64) as usize;
        let point = ((u128::from(wide as u64) * u128::from(self.total)) >> 64) as u64;
        match self.columns.get(column) {
            Some(&(threshold, _)) if point < threshold => column,
            Some(&(_, alias)) => alias as usize,
            None => 0,
        }
    }

    /// An available endpoint other than `also_skip`, drawn in proportion to
    /// weight; `None` if there is none.
    pub(crate) fn draw(&self, ctx: &PickContext<'_>, also_skip: Option<usize>) -> Option<usize> {
        if self.total == 0 {
            return None;
        }
        let eligible = |i: usize| Some(i) != also_skip && ctx.available(i);
        let (mut missed, mut declined) = (0, 0);
        while missed < REJECTION_DRAWS && declined < DECLINED_DRAWS {
            let i = self.draw_one(ctx.rng.next_u64());
            if !eligible(i) {
                missed += 1;
            } else if ctx.declines(i) {
                declined += 1;
            } else {
                return Some(i);
            }
        }
        let left: u64 = (0..self.len())
            .filter(|&i| eligible(i))
            .map(|i| self.weights[i])
            .sum();
        if left == 0 {
            return None;
        }
        let mut point = ctx.rng.below(left);
        (0..self.len()).filter(|&i| eligible(i)).find(|&i| {
            let weight = self.weights[i];
            if point < weight {
                return true;
            }
            point -= weight;
            false
        })
    }
}

/// The random policy.
#[derive(Debug)]
pub(crate) struct WeightedRandom {
    draw: WeightedDraw,
}

impl WeightedRandom {
    pub(crate) fn new(weights: &[u32]) -> Self {
        WeightedRandom {
            draw: WeightedDraw::new(weights),
        }
    }
}

impl Picker for WeightedRandom {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        self.draw.draw(ctx, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::no_key;
    use crate::random::SharedRng;

    proptest::proptest! {
        /// Every endpoint's area in the alias table (its own column below
        /// the threshold plus the columns aliased to it above theirs) is
        /// exactly its weight × the number of columns: draws are in exact
        /// proportion to weight.
        #[test]
        fn the_alias_table_gives_each_endpoint_exactly_its_weight(
            weights in proptest::collection::vec(1u32..10_000, 1..200),
        ) {
            let draw = WeightedDraw::new(&weights);
            let mut area = vec![0u64; weights.len()];
            for (column, &(threshold, alias)) in draw.columns.iter().enumerate() {
                area[column] += threshold;
                area[alias as usize] += draw.total - threshold;
            }
            let n = weights.len() as u64;
            for (i, &w) in weights.iter().enumerate() {
                proptest::prop_assert_eq!(area[i], u64::from(w) * n);
            }
        }
    }

    #[test]
    fn shares_follow_weights_with_five_endpoints() {
        let rng = SharedRng::new(3);
        let weights = [1, 2, 3, 4, 10];
        let random = WeightedRandom::new(&weights);
        let mut counts = [0u32; 5];
        for _ in 0..40_000 {
            counts[random.pick(&no_key(&rng)).unwrap()] += 1;
        }
        // Expected 2,000 per unit of weight; the standard deviation is under 100.
        for (count, weight) in counts.iter().zip(weights) {
            let expected = 2_000 * weight;
            assert!(count.abs_diff(expected) < 400, "{counts:?}");
        }
        assert_eq!(WeightedRandom::new(&[]).pick(&no_key(&rng)), None);
    }
}
