//! The hash ring (Karger et al.; ketama): every endpoint owns points on a
//! 64-bit circle, and a key belongs to the first point at or after its hash.
//!
//! Construction, fixed for compatibility between processes and versions:
//! endpoint `i` gets `⌈P × wᵢ / s⌉` points, `P` points per unit of weight
//! (`virtual_nodes`) and `s` the ring's scale: 1 while `P × Σw` is at most
//! [`MAX_RING_POINTS`], else the smallest power of two that brings
//! `P × Σw / s` within it. Point `j` of an endpoint is
//! `XXH3-64(canonical URL, seed = j)`.
//!
//! So an endpoint's points depend on its own weight and, through `s`, on the
//! total weight only: while `s` stays (always, while `P × Σw` fits), adding
//! or removing an endpoint moves only its keys, and raising a weight only
//! adds points. (NGINX lays 160 points per unit of weight the same way.)
//! The scale bounds memory when weights or sets are large; it changes only
//! when a change takes `P × Σw` across `2²⁰ × 2ᵏ`, and then every endpoint
//! keeps a prefix of its points (`⌈⌈x⌉ / 2⌉ = ⌈x / 2⌉`). Points are
//! independent of the order endpoints were added in.
//!
//! Lookup is a binary search narrowed by a prefix index: the top bits of a
//! hash name a bucket that holds about one point, so a lookup touches two or
//! three cache lines whatever the ring size.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::endpoint::Member;

/// The most points a ring holds at scale 1, and (plus one per endpoint) at
/// any scale: about 16 MiB with the prefix index.
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

/// Points per endpoint: `⌈points_per_weight × w / scale⌉` each, the
/// scale from the total weight alone (see [`scale`]). A weight of 0 (not
/// expected here: drained endpoints are not members) gets no point.
fn point_counts(members: &[Member], points_per_weight: u32) -> Vec<u64> {
    let per_weight = u64::from(points_per_weight);
    // At most 2³² endpoints × 10⁴ weight × 2¹⁶ points: no overflow in u64.
    let total: u64 = members.iter().map(|m| u64::from(m.weight)).sum();
    let scale = scale(per_weight.saturating_mul(total));
    members
        .iter()
        .map(|m| (per_weight * u64::from(m.weight)).div_ceil(scale))
        .collect()
}

/// The ring's scale for `points` (points per weight × total weight): 1
/// while they fit in [`MAX_RING_POINTS`], else the smallest power of two
/// that brings them within it.
fn scale(points: u64) -> u64 {
    points.div_ceil(MAX_RING_POINTS).max(1).next_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_is_1_until_the_points_pass_the_cap_then_the_next_power_of_two() {
        assert_eq!(scale(0), 1);
        assert_eq!(scale(MAX_RING_POINTS), 1);
        assert_eq!(scale(MAX_RING_POINTS + 1), 2);
        assert_eq!(scale(2 * MAX_RING_POINTS), 2);
        assert_eq!(scale(2 * MAX_RING_POINTS + 1), 4);
        // Saturated: every endpoint still gets a point.
        assert_eq!(scale(u64::MAX), 1 << 44);
    }
}
