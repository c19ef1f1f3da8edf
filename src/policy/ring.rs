//! The hash ring (Karger et al.; ketama): every endpoint owns points on a
//! 64-bit circle, and a key belongs to the first point at or after its hash.
//!
//! Construction, fixed for compatibility between processes and versions:
//! endpoint `i` gets `P × wᵢ` points, `P` points per unit of weight
//! (`virtual_nodes`), while `P × Σw` is at most [`MAX_RING_POINTS`];
//! beyond, the ring holds that many points shared by weight, `⌈2²⁰ × wᵢ /
//! Σw⌉` each. Point `j` of an endpoint is `XXH3-64(canonical URL, seed =
//! j)`. (NGINX lays 160 points per unit of weight the same way.)
//!
//! So, while the ring fits, an endpoint's points depend on its own weight
//! alone: adding or removing an endpoint moves only its keys, and raising a
//! weight only adds points. Beyond, a change of the total weight changes
//! every endpoint's count a little, always keeping a prefix of its points:
//! keys of others move about in proportion to the change of the total
//! weight, the price of bounded memory for large sets and weights. Points
//! are independent of the order endpoints were added in.
//!
//! Lookup is a binary search narrowed by a prefix index: the top bits of a
//! hash name a bucket that holds about one point, so a lookup touches two or
//! three cache lines whatever the ring size.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::endpoint::Member;

/// The most points a ring holds (plus up to one per endpoint for rounding
/// up): about 16 MiB with the prefix index.
pub(crate) const MAX_RING_POINTS: u64 = 1 << 20;

#[derive(Debug)]
pub(crate) struct Ring {
    /// Point hashes, ascending.
    points: Box<[u64]>,
    /// `owners[k]`: the endpoint (index among the active ones) of `points[k]`.
    owners: Box<[u32]>,
    /// `buckets[b]`: the first point whose top bits are `b` or more.
    buckets: Box<[u32]>,
    /// `64 - bits of the bucket index`.
    shift: u32,
}

impl Ring {
    pub(crate) fn build(members: &[Member], points_per_weight: u32) -> Ring {
        let counts = point_counts(members, points_per_weight);
        let mut entries: Vec<(u64, u32)> = Vec::with_capacity(counts.iter().sum::<u64>() as usize);
        for (owner, (member, &count)) in members.iter().zip(&counts).enumerate() {
            let name = member.state.url.as_str().as_bytes();
            entries.extend((0..count).map(|j| (xxh3_64_with_seed(name, j), owner as u32)));
        }
        // Ties (equal 64-bit hashes) go to the smaller name, whatever the order
        // of `members`.
        entries.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| {
                let name = |e: &(u64, u32)| members[e.1 as usize].state.url.as_str();
                name(a).cmp(name(b))
            })
        });
        let (points, owners): (Vec<u64>, Vec<u32>) = entries.into_iter().unzip();
        let bits = (points.len().max(2) as u64)
            .next_power_of_two()
            .trailing_zeros();
        let shift = 64 - bits;
        let mut buckets = Vec::with_capacity((1 << bits) + 1);
        let mut next = 0;
        for bucket in 0..=(1u64 << bits) {
            while next < points.len() && (points[next] >> shift) < bucket {
                next += 1;
            }
            buckets.push(next as u32);
        }
        Ring {
            points: points.into(),
            owners: owners.into(),
            buckets: buckets.into(),
            shift,
        }
    }

    /// The position of the first point at or after `hash`, if the ring has
    /// any point.
    fn home(&self, hash: u64) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let bucket = (hash >> self.shift) as usize;
        let start = self.buckets[bucket] as usize;
        let end = self.buckets[bucket + 1] as usize;
        let position = start + self.points[start..end].partition_point(|&p| p < hash);
        Some(if position == self.points.len() {
            0
        } else {
            position
        })
    }

    /// Owners of the points from the key's on, clockwise, once round the
    /// ring: the key's preference order (an endpoint may repeat).
    pub(crate) fn walk(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        // From the home point to the end, then from the start: no division
        // per step.
        let (before, after) = self.owners.split_at(self.home(hash).unwrap_or(0));
        after.iter().chain(before).map(|&owner| owner as usize)
    }
}

/// Points per endpoint: `points_per_weight × w` while they all fit in
/// [`MAX_RING_POINTS`], else `⌈MAX_RING_POINTS × w / Σw⌉`. A weight of 0
/// (not expected here: drained endpoints are not members) gets no point.
fn point_counts(members: &[Member], points_per_weight: u32) -> Vec<u64> {
    let per_weight = u64::from(points_per_weight);
    let total_weight: u64 = members.iter().map(|m| u64::from(m.weight)).sum();
    // Weights are at most 10⁴ and points per weight 2¹⁶, so the products
    // stay far below 2⁶⁴ for any number of endpoints a process can hold.
    let fits = per_weight.saturating_mul(total_weight) <= MAX_RING_POINTS;
    members
        .iter()
        .map(|m| {
            let weight = u64::from(m.weight);
            if fits {
                per_weight * weight
            } else {
                (MAX_RING_POINTS * weight).div_ceil(total_weight)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::{Counters, EndpointUrl};

    fn members(weights: &[u32]) -> Vec<Member> {
        let counters = Counters::default();
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let url = EndpointUrl::parse(&format!("http://10.0.0.{i}:80")).unwrap();
                Member::new(url, w, &counters)
            })
            .collect()
    }

    #[test]
    fn points_follow_each_weight_until_the_ring_is_full_then_are_shared_by_weight() {
        assert_eq!(
            point_counts(&members(&[1, 1, 100]), 2_048),
            [2_048, 2_048, 204_800]
        );
        // 2,048 × 512 = 2²⁰: still fits.
        assert_eq!(
            point_counts(&members(&[256, 256]), 2_048),
            [1 << 19, 1 << 19]
        );
        // One more unit of weight: 2²⁰ points shared, rounded up.
        assert_eq!(
            point_counts(&members(&[256, 257]), 2_048),
            [523_266, 525_311]
        );
        assert_eq!(
            point_counts(&members(&[1, 10_000]), 2_048),
            [105, 1_048_472]
        );
        assert_eq!(point_counts(&members(&[1, 10_000]), 104), [104, 1_040_000]);
        assert_eq!(point_counts(&members(&[0, 3]), 2_048), [0, 6_144]);
        assert!(point_counts(&members(&[]), 2_048).is_empty());
    }
}
