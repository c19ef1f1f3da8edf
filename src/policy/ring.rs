//! The hash ring (Karger et al.; ketama): every endpoint owns points on a
//! 64-bit circle, and a key belongs to the first point at or after its hash.
//!
//! Construction, fixed for compatibility between processes and versions:
//! endpoint `i` gets `max(1, round(V × n × wᵢ / Σw))` points (`V` virtual
//! nodes for an endpoint of average weight, fewer for all when the ring would
//! exceed [`MAX_RING_POINTS`]); point `j` of an endpoint is
//! `XXH3-64(canonical URL, seed = j)`. Points are independent of the order
//! endpoints were added in, and raising a weight only adds points, so only
//! the keys the new points take move.
//!
//! Lookup is a binary search narrowed by a prefix index: the top bits of a
//! hash name a bucket that holds about one point, so a lookup touches two or
//! three cache lines whatever the ring size.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::endpoint::Member;

/// The most points a ring holds (about 20 MiB).
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
    pub(crate) fn build(members: &[Member], virtual_nodes: u32) -> Ring {
        let counts = point_counts(members, virtual_nodes);
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

/// Points per endpoint: proportional to weight, `virtual_nodes` for an
/// endpoint of average weight, scaled down to fit [`MAX_RING_POINTS`].
fn point_counts(members: &[Member], virtual_nodes: u32) -> Vec<u64> {
    let n = members.len() as u64;
    let total_weight: u64 = members.iter().map(|m| u64::from(m.weight)).sum();
    if n == 0 || total_weight == 0 {
        return vec![0; members.len()];
    }
    let per_average = u64::from(virtual_nodes).min(MAX_RING_POINTS / n).max(1);
    let count = |w: u32| (per_average * n * u64::from(w) + total_weight / 2) / total_weight;
    let mut counts: Vec<u64> = members.iter().map(|m| count(m.weight).max(1)).collect();
    let sum: u64 = counts.iter().sum();
    if sum > MAX_RING_POINTS {
        for c in &mut counts {
            *c = (*c * MAX_RING_POINTS / sum).max(1);
        }
    }
    counts
}
