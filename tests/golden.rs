//! Golden vectors: these keys live on these endpoints, in this version and
//! every later one, so that services running different releases of this
//! crate agree on where a key lives. A failure here is a compatibility
//! break, not a test to update. (The ring's vectors changed once, before
//! the first release, when its points came to follow each endpoint's own
//! weight: CHANGELOG.md.)

use tower_lb::{key_hash, Balancer, ConsistentHash, Policy, SessionKey};

const ENDPOINTS: [(&str, u32); 5] = [
    ("http://10.0.0.1:8080", 1),
    ("http://10.0.0.2:8080", 2),
    ("http://10.0.0.3:8080", 1),
    ("https://api-4.internal", 3),
    ("http://10.0.0.5:8080/v1", 1),
];

/// Index into ENDPOINTS of the home of `user-0` ... `user-15`.
const RING_HOMES: [usize; 16] = [3, 3, 1, 1, 1, 3, 1, 3, 0, 1, 3, 3, 4, 3, 2, 0];
/// The same endpoints with weights 1,000 times as large: 2,048 × 8,000
/// points do not fit in 2²⁰, so the ring holds 2²⁰ shared by weight
/// (⌈2²⁰ × 1,000 / 8,000⌉ = 131,072 per 1,000 of weight).
const RING_HOMES_FULL: [usize; 16] = [4, 4, 3, 1, 3, 3, 2, 3, 1, 1, 3, 4, 3, 3, 3, 3];
const MAGLEV_HOMES: [usize; 16] = [2, 3, 1, 4, 0, 3, 3, 3, 0, 1, 1, 3, 2, 1, 4, 3];

fn homes(
    policy: ConsistentHash,
    endpoints: impl Iterator<Item = (&'static str, u32)>,
) -> Vec<usize> {
    let balancer = endpoints
        .fold(Balancer::builder(), |b, (url, w)| {
            b.endpoint_weighted(url, w)
        })
        .policy(policy)
        .build()
        .unwrap();
    let canonical: Vec<String> = ENDPOINTS
        .iter()
        .map(|(url, _)| {
            let one = Balancer::builder().endpoint(url).build().unwrap();
            one.stats().endpoints[0].url.clone()
        })
        .collect();
    (0..16)
        .map(|i| {
            let home = balancer
                .locate(&SessionKey::new(format!("user-{i}")))
                .unwrap();
            canonical.iter().position(|c| **c == *home).unwrap()
        })
        .collect()
}

#[test]
fn the_key_hash_is_xxh3_64_with_seed_0() {
    assert_eq!(key_hash(b""), 0x2d06_8005_38d3_94c2);
    assert_eq!(SessionKey::new("").digest(), key_hash(b""));
}

// `key.hash(&mut hasher)` by hand is the point: it must compile (an inherent
// `hash` method once shadowed `Hash::hash`).
#[allow(clippy::manual_hash_one)]
#[test]
fn a_session_key_hashes_like_any_hash_map_key() {
    use std::hash::{BuildHasher, Hash, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    let hashed = |key: SessionKey| {
        let mut hasher = state.build_hasher();
        key.hash(&mut hasher);
        hasher.finish()
    };
    assert_eq!(hashed(SessionKey::new("a")), hashed(SessionKey::new("a")));
    let set: std::collections::HashSet<_> = [SessionKey::new("a"), SessionKey::new("a")].into();
    assert_eq!(set.len(), 1);
}

#[test]
fn ring_placement_is_pinned() {
    assert_eq!(
        homes(Policy::ring_hash(), ENDPOINTS.into_iter()),
        RING_HOMES
    );
}

#[test]
fn ring_placement_beyond_2_20_points_is_pinned() {
    let heavy = ENDPOINTS.into_iter().map(|(url, w)| (url, w * 1_000));
    assert_eq!(homes(Policy::ring_hash(), heavy), RING_HOMES_FULL);
}

#[test]
fn maglev_placement_is_pinned() {
    assert_eq!(homes(Policy::maglev(), ENDPOINTS.into_iter()), MAGLEV_HOMES);
}

#[test]
fn pinned_placement_does_not_depend_on_listing_order() {
    let reversed = ENDPOINTS.into_iter().rev();
    assert_eq!(homes(Policy::ring_hash(), reversed.clone()), RING_HOMES);
    assert_eq!(homes(Policy::maglev(), reversed), MAGLEV_HOMES);
    let heavy_reversed = ENDPOINTS.into_iter().rev().map(|(url, w)| (url, w * 1_000));
    assert_eq!(homes(Policy::ring_hash(), heavy_reversed), RING_HOMES_FULL);
}
