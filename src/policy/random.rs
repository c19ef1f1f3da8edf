//! Weighted random choice, and the weighted draw least time takes its
//! candidates with.
//!
//! One draw from the balancer's generator picks an endpoint in proportion
//! to weight (a binary search over the running sums of the weights). When
//! the drawn endpoint is unavailable, the draw is repeated (rejection
//! sampling keeps the proportions among the available ones exact); if a few
//! draws in a row miss, most of the weight is out, and one exact draw over
//! the available weight finishes the job.

use super::{PickContext, Picker};

/// Draws that may land on unavailable endpoints before the exact draw.
const REJECTION_DRAWS: usize = 4;

/// A draw in proportion to weight over the active endpoints.
#[derive(Debug)]
pub(crate) struct WeightedDraw {
    /// Running sums of the weights; endpoint `i` owns `[cumulative[i-1], cumulative[i])`.
    cumulative: Box<[u64]>,
}

impl WeightedDraw {
    pub(crate) fn new(weights: &[u32]) -> Self {
        let cumulative = weights
            .iter()
            .scan(0u64, |sum, &w| {
                *sum += u64::from(w);
                Some(*sum)
            })
            .collect();
        WeightedDraw { cumulative }
    }

    pub(crate) fn len(&self) -> usize {
        self.cumulative.len()
    }

    fn weight(&self, i: usize) -> u64 {
        let before = if i == 0 { 0 } else { self.cumulative[i - 1] };
        self.cumulative[i] - before
    }

    /// An available endpoint other than `also_skip`, drawn in proportion to
    /// weight; `None` if there is none.
    pub(crate) fn draw(&self, ctx: &PickContext<'_>, also_skip: Option<usize>) -> Option<usize> {
        let total = *self.cumulative.last()?;
        if total == 0 {
            return None;
        }
        let eligible = |i: usize| Some(i) != also_skip && ctx.available(i);
        for _ in 0..REJECTION_DRAWS {
            let point = ctx.rng.below(total);
            let i = self.cumulative.partition_point(|&end| end <= point);
            if eligible(i) {
                return Some(i);
            }
        }
        let left: u64 = (0..self.len())
            .filter(|&i| eligible(i))
            .map(|i| self.weight(i))
            .sum();
        if left == 0 {
            return None;
        }
        let mut point = ctx.rng.below(left);
        (0..self.len()).filter(|&i| eligible(i)).find(|&i| {
            let weight = self.weight(i);
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
