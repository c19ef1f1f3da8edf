//! Weighted random choice.

use super::{Pick, PickContext};

#[derive(Debug)]
pub(crate) struct WeightedRandom {
    /// Running sums of the weights; endpoint `i` owns `[cumulative[i-1], cumulative[i])`.
    cumulative: Box<[u64]>,
}

impl WeightedRandom {
    pub(crate) fn new(weights: &[u32]) -> Self {
        let cumulative = weights
            .iter()
            .scan(0u64, |sum, &w| {
                *sum += u64::from(w);
                Some(*sum)
            })
            .collect();
        WeightedRandom { cumulative }
    }
}

impl Pick for WeightedRandom {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let total = *self.cumulative.last()?;
        if total == 0 {
            return None;
        }
        let draw = || {
            self.cumulative
                .partition_point(|&end| end <= fastrand::u64(0..total))
        };
        // Draw again past ejected endpoints; after a few misses, walk on.
        let mut chosen = draw();
        for _ in 0..3 {
            if ctx.available(chosen) {
                return Some(chosen);
            }
            chosen = draw();
        }
        let n = self.cumulative.len();
        ctx.first_available((0..n).map(|k| (chosen + k) % n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::no_key;

    #[test]
    fn shares_follow_weights() {
        let random = WeightedRandom::new(&[1, 3]);
        let mut counts = [0u32; 2];
        for _ in 0..40_000 {
            counts[random.pick(&no_key()).unwrap()] += 1;
        }
        // Expected 10,000 and 30,000; the standard deviation is about 87.
        assert!((9_000..11_000).contains(&counts[0]), "{counts:?}");
        assert_eq!(WeightedRandom::new(&[]).pick(&no_key()), None);
    }
}
