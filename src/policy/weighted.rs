//! Smooth weighted round robin.
//!
//! NGINX's algorithm: on each pick every endpoint's `current` grows by its
//! weight, the largest `current` wins (the first on a tie), and the winner's
//! `current` drops by the total weight. Weights 5, 1, 1 give
//! `a a b a c a a`: the heavy endpoint's turns are spread out instead of
//! coming in one burst, as an expanded slot list would send them.
//!
//! NGINX runs that loop under a lock on every request. The sequence repeats
//! after `total weight / gcd` picks (every `current` is back to zero then), so
//! here one cycle is computed when the set changes and a request only takes
//! the next slot from an atomic counter (a [`Rotation`](super::round_robin)):
//! the same order, with no lock.

/// The longest cycle prepared, in picks.
const CYCLE_LIMIT: u64 = 1 << 16;
/// Upper bound on `cycle length × endpoints`, the cost of preparing a cycle.
const BUILD_BUDGET: u64 = 1 << 25;

/// One cycle of NGINX's smooth weighted round robin over `weights`.
pub(crate) fn smooth_cycle(weights: &[u32]) -> Vec<u32> {
    let weights = cycle_weights(weights);
    // Equal weights (reduced to 1 each): NGINX's loop visits the endpoints
    // in order, ties going to the first. Said directly, a set of thousands
    // from discovery costs O(n) to prepare instead of O(n²).
    if weights.iter().all(|&w| w == 1) {
        return (0..weights.len() as u32).collect();
    }
    nginx_order(&weights)
}

/// NGINX's loop: each pick, every endpoint's current value grows by its
/// weight, the largest (the first of equals) is picked and loses the
/// total. O(total × n).
fn nginx_order(weights: &[u64]) -> Vec<u32> {
    let total: u64 = weights.iter().sum();
    let total = i64::try_from(total).unwrap_or(i64::MAX);
    let mut current = vec![0i64; weights.len()];
    let mut cycle = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let (mut best, mut best_current) = (0, i64::MIN);
        for (i, (cur, &w)) in current.iter_mut().zip(weights).enumerate() {
            *cur += w as i64;
            if *cur > best_current {
                (best, best_current) = (i, *cur);
            }
        }
        current[best] -= total;
        cycle.push(best as u32);
    }
    cycle
}

/// Weights reduced by their common divisor and, when the cycle would be
/// longer than the limit, scaled down to fit (each stays at least 1).
pub(crate) fn cycle_weights(weights: &[u32]) -> Vec<u64> {
    let divisor = weights.iter().fold(0u32, |g, &w| gcd(g, w)).max(1);
    let reduced: Vec<u64> = weights.iter().map(|&w| u64::from(w / divisor)).collect();
    let total: u64 = reduced.iter().sum();
    let n = weights.len() as u64;
    let limit = CYCLE_LIMIT.min(BUILD_BUDGET / n.max(1)).max(n);
    if total <= limit {
        return reduced;
    }
    reduced
        .iter()
        .map(|&w| (w * limit / total).max(1))
        .collect()
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letters(weights: &[u32]) -> String {
        smooth_cycle(weights)
            .iter()
            .map(|&i| char::from(b'a' + i as u8))
            .collect()
    }

    #[test]
    fn equal_weights_take_the_endpoints_in_order_as_nginx_does() {
        for n in 1..60 {
            for w in [1, 3, 10_000] {
                assert_eq!(
                    smooth_cycle(&vec![w; n]),
                    nginx_order(&vec![1; n]),
                    "{n} x {w}"
                );
            }
        }
    }

    #[test]
    fn interleaves_like_nginx() {
        assert_eq!(letters(&[5, 1, 1]), "aabacaa");
        assert_eq!(letters(&[1, 1, 1]), "abc");
        assert_eq!(letters(&[2, 1]), "aba");
        assert_eq!(letters(&[4, 2]), "aba"); // reduced by the common divisor
    }

    #[test]
    fn each_share_is_exact_over_a_cycle() {
        let weights = [7, 3, 1, 9, 2];
        let cycle = smooth_cycle(&weights);
        assert_eq!(cycle.len(), 22);
        for (i, &w) in weights.iter().enumerate() {
            let count = cycle.iter().filter(|&&c| c as usize == i).count();
            assert_eq!(count, w as usize);
        }
    }

    #[test]
    fn huge_totals_are_scaled_to_the_limit_keeping_every_endpoint() {
        let weights = [10_000, 9_999, 1];
        let scaled = cycle_weights(&weights);
        assert!(scaled.iter().sum::<u64>() <= CYCLE_LIMIT);
        assert_eq!(scaled[2], 1);
        assert!(scaled[0] >= scaled[1]);

        let many = vec![7u32; 5_000];
        let cycle = smooth_cycle(&many);
        assert_eq!(cycle.len(), 5_000);
    }
}
