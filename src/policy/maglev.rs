//! Maglev hashing (Eisenbud et al., NSDI 2016): a lookup table of prime size
//! `M` in which every endpoint owns a share of slots proportional to its
//! weight; a key's endpoint is one table read.
//!
//! Construction, fixed for compatibility between processes and versions:
//! endpoints are taken in order of their canonical URL (not the order they
//! were added in). Endpoint `U` visits slots `(offset + k × skip) mod M`,
//! `offset = XXH3-64(U, seed 0xfeed_0001) mod M`,
//! `skip = XXH3-64(U, seed 0xfeed_0002) mod (M − 1) + 1`. In each round every
//! endpoint earns its weight in credit and claims its next free slot for
//! each whole maximum weight of credit, until the table is full. A key with
//! hash `h` reads slot `⌊h × M / 2⁶⁴⌋`.
//!
//! When an endpoint leaves, the table is rebuilt: its slots go to the
//! others and, as the paper shows, a small share of other slots move too.
//! While an endpoint is ejected, the table stays; a key whose endpoint is
//! out tries rehashed slots (see [`Maglev::walk`]) and comes back when it
//! returns.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::endpoint::Member;

/// The default table size: a prime, as the paper requires.
pub(crate) const DEFAULT_TABLE_SIZE: u64 = 65_537;
/// The largest table size accepted (64 MiB of table).
pub(crate) const MAX_TABLE_SIZE: u64 = 1 << 24;

const OFFSET_SEED: u64 = 0xfeed_0001;
const SKIP_SEED: u64 = 0xfeed_0002;

#[derive(Debug)]
pub(crate) struct Maglev {
    /// `slots[s]`: the endpoint (index among the active ones) owning slot `s`.
    slots: Box<[u32]>,
}

impl Maglev {
    /// Builds the table; `size` must be prime (checked by the policy).
    pub(crate) fn build(members: &[Member], size: u64) -> Maglev {
        let mut order: Vec<usize> = (0..members.len()).collect();
        if order.is_empty() {
            return Maglev {
                slots: Box::new([]),
            };
        }
        order.sort_by(|&a, &b| {
            members[a]
                .state
                .url
                .as_str()
                .cmp(members[b].state.url.as_str())
        });

        struct Walker {
            owner: u32,
            weight: u64,
            offset: u64,
            skip: u64,
            next: u64,
            credit: u64,
        }
        let mut walkers: Vec<Walker> = order
            .iter()
            .map(|&i| {
                let name = members[i].state.url.as_str().as_bytes();
                Walker {
                    owner: i as u32,
                    weight: u64::from(members[i].weight),
                    offset: xxh3_64_with_seed(name, OFFSET_SEED) % size,
                    skip: xxh3_64_with_seed(name, SKIP_SEED) % (size - 1) + 1,
                    next: 0,
                    credit: 0,
                }
            })
            .collect();
        let max_weight = walkers.iter().map(|w| w.weight).max().unwrap_or(1);

        const EMPTY: u32 = u32::MAX;
        let mut slots = vec![EMPTY; size as usize];
        let mut filled = 0u64;
        while filled < size {
            for walker in &mut walkers {
                walker.credit += walker.weight;
                if walker.credit < max_weight {
                    continue;
                }
                walker.credit -= max_weight;
                loop {
                    let slot = (walker.offset + walker.next % size * walker.skip) % size;
                    walker.next += 1;
                    if slots[slot as usize] == EMPTY {
                        slots[slot as usize] = walker.owner;
                        filled += 1;
                        break;
                    }
                }
                if filled == size {
                    break;
                }
            }
        }
        Maglev {
            slots: slots.into(),
        }
    }

    fn slot(&self, hash: u64) -> usize {
        ((u128::from(hash) * self.slots.len() as u128) >> 64) as usize
    }

    /// The key's preference order (an endpoint may repeat): the owner of
    /// its slot, then of the slots of [`PROBES`] rehashes of its hash
    /// (`SplitMix64` finalizer of `hash + k × 0x9e3779b97f4a7c15`, k = 1, 2,
    /// ...), then every slot after the last probe, once round the table.
    ///
    /// Rehashing rather than reading the next slot spreads the keys of an
    /// unavailable endpoint over the others in proportion to their slots
    /// (neighbouring slots are not independent in a Maglev table), and
    /// every process computes the same order.
    ///
    /// An empty table (no endpoint takes requests) has no order: the walk
    /// is empty.
    pub(crate) fn walk(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let len = self.slots.len();
        let steps = if len == 0 { 0 } else { len + PROBES as usize };
        let probes = (0..=PROBES).map(move |k| self.slot(rehash(hash, k)));
        let last = self.slot(rehash(hash, PROBES));
        let rest = (1..len).map(move |k| (last + k) % len);
        probes
            .chain(rest)
            .take(steps)
            .filter_map(move |slot| self.slots.get(slot).map(|&owner| owner as usize))
    }
}

/// Rehashed slots a key tries before walking the table in order.
const PROBES: u64 = 32;

/// The `k`-th rehash of a key's hash; the hash itself for `k = 0`.
fn rehash(hash: u64, k: u64) -> u64 {
    if k == 0 {
        return hash;
    }
    let mut z = hash.wrapping_add(k.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Whether `n` is prime (trial division; `n` is at most [`MAX_TABLE_SIZE`]).
pub(crate) fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    (2..)
        .take_while(|d| d * d <= n)
        .all(|d| !n.is_multiple_of(d))
}
