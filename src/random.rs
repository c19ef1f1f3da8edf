//! The balancer's random numbers: every random choice (the random policy,
//! the candidates of least time) draws through one `SharedRng`.
//!
//! - **Seeded** ([`BalancerBuilder::seed`](crate::BalancerBuilder::seed)):
//!   SplitMix64 (Steele, Lea and Flood, 2014) over one atomic counter for
//!   the balancer: a draw adds the golden-ratio increment with one
//!   `fetch_add` and mixes the result, so it takes no lock, two threads
//!   never get the same number, the `n`-th draw is the same whichever
//!   thread makes it, and a seed gives the same picks however they are
//!   split between threads. Every core's draws write that one counter.
//! - **Unseeded** (the default): the calling thread's own generator
//!   (`fastrand`'s, seeded per thread from the system), which no other
//!   core writes and which costs no atomic operation.

use std::sync::atomic::{AtomicU64, Ordering};

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// A generator shared by every clone of a balancer.
#[derive(Debug)]
pub(crate) struct SharedRng {
    state: State,
}

#[derive(Debug)]
enum State {
    Seeded(AtomicU64),
    ThreadLocal,
}

impl SharedRng {
    /// A generator whose draws follow `seed`, on any thread.
    pub(crate) fn new(seed: u64) -> Self {
        SharedRng {
            state: State::Seeded(AtomicU64::new(seed)),
        }
    }

    /// Draws from each calling thread's own generator.
    pub(crate) fn unseeded() -> Self {
        SharedRng {
            state: State::ThreadLocal,
        }
    }

    /// Whether draws follow a seed on any thread: then policies keep one
    /// view for all threads, so that the same seed gives the same picks.
    pub(crate) fn is_seeded(&self) -> bool {
        matches!(self.state, State::Seeded(_))
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&self) -> u64 {
        let counter = match &self.state {
            State::Seeded(counter) => counter,
            State::ThreadLocal => return fastrand::u64(..),
        };
        let state = counter
            .fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)
            .wrapping_add(GOLDEN_GAMMA);
        mix(state)
    }

    /// A number in `0..bound` (`bound` above zero), without modulo bias
    /// worth speaking of: Lemire's multiply-shift on 64 random bits.
    pub(crate) fn below(&self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }
}

impl Default for SharedRng {
    fn default() -> Self {
        SharedRng::unseeded()
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_numbers() {
        let a = SharedRng::new(7);
        let b = SharedRng::new(7);
        let first: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let second: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        assert_eq!(first, second);
        assert_ne!(SharedRng::new(8).next_u64(), first[0]);
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let rng = SharedRng::new(1);
        let mut seen = [0u32; 7];
        for _ in 0..7_000 {
            seen[rng.below(7) as usize] += 1;
        }
        // Expected 1,000 each; the standard deviation is about 30.
        assert!(seen.iter().all(|&n| (850..1_150).contains(&n)), "{seen:?}");
    }

    #[test]
    fn an_unseeded_generator_covers_the_range_too() {
        let rng = SharedRng::unseeded();
        let mut seen = [0u32; 7];
        for _ in 0..7_000 {
            seen[rng.below(7) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (850..1_150).contains(&n)), "{seen:?}");
    }
}
