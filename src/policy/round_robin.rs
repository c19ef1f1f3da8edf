//! Plain round robin: each active endpoint in turn.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{Pick, PickContext};

#[derive(Debug)]
pub(crate) struct RoundRobin {
    len: usize,
    sequence: Arc<AtomicUsize>,
}

impl RoundRobin {
    pub(crate) fn new(len: usize, sequence: Arc<AtomicUsize>) -> Self {
        RoundRobin { len, sequence }
    }
}

impl Pick for RoundRobin {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let start = self.sequence.fetch_add(1, Ordering::Relaxed) % self.len;
        ctx.first_available((0..self.len).map(|k| (start + k) % self.len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::no_key;

    #[test]
    fn visits_each_endpoint_in_turn() {
        let rr = RoundRobin::new(3, Arc::default());
        let picks: Vec<_> = (0..7).filter_map(|_| rr.pick(&no_key())).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(RoundRobin::new(0, Arc::default()).pick(&no_key()), None);
    }
}
