//! The ring's promise for weighted sets: while the ring holds every point
//! (`virtual_nodes × total weight` within 2²⁰), an endpoint's points depend
//! on its own weight alone, so removing an endpoint moves only its keys and
//! adding one moves keys only onto it, whatever the weights of the others;
//! beyond, others' keys move about in proportion to the change of the total
//! weight (docs/consistent-hashing.md, "Construction").
//!
//! `cargo test --all-features --test integration properties_ring::`

use proptest::prelude::*;
use tower_lb::{Balancer, Policy, SessionKey, DEFAULT_VIRTUAL_NODES, MAX_WEIGHT};

/// The canonical URL of endpoint `i`.
fn url(i: usize) -> String {
    format!("http://10.0.{}.{}:8080", i / 250, i % 250 + 1)
}

fn keys(n: u32) -> Vec<SessionKey> {
    (0..n).map(|k| SessionKey::new(k.to_le_bytes())).collect()
}

fn ring_over(weights: &[u32], points_per_weight: u32) -> Balancer {
    weights
        .iter()
        .enumerate()
        .fold(Balancer::builder(), |b, (i, &w)| {
            b.endpoint_weighted(url(i), w)
        })
        .policy(Policy::ring_hash().virtual_nodes(points_per_weight))
        .build()
        .expect("a valid balancer")
}

/// Where each key lives (`None`: the balancer has no endpoint).
fn homes(balancer: &Balancer, keys: &[SessionKey]) -> Vec<Option<String>> {
    keys.iter()
        .map(|k| balancer.locate(k).map(|home| home.to_string()))
        .collect()
}

/// Keys that moved between two endpoints neither of which is `changed`.
fn foreign_moves(before: &[Option<String>], after: &[Option<String>], changed: &str) -> usize {
    before
        .iter()
        .zip(after)
        .filter(|(b, a)| b != a && b.as_deref() != Some(changed) && a.as_deref() != Some(changed))
        .count()
}

#[test]
fn removing_the_heavy_endpoint_of_1_1_100_moves_none_of_the_keys_of_the_two_others() {
    let keys = keys(20_000);
    let balancer = ring_over(&[1, 1, 100], DEFAULT_VIRTUAL_NODES);
    let before = homes(&balancer, &keys);
    let heavy = url(2);
    let on_heavy = before
        .iter()
        .filter(|h| h.as_deref() == Some(&*heavy))
        .count();
    assert!(on_heavy > 18_000, "the heavy endpoint holds most keys");

    balancer.remove(&heavy).unwrap();
    let after = homes(&balancer, &keys);
    assert!(after.iter().all(|h| h.as_deref() != Some(&*heavy)));
    assert_eq!(
        foreign_moves(&before, &after, &heavy),
        0,
        "keys of the two light endpoints moved when the heavy one left"
    );

    // Back in the set, it takes back its keys and only those.
    balancer.add(&heavy, 100).unwrap();
    assert_eq!(homes(&balancer, &keys), before);
}

#[test]
fn weights_1_and_max_weight_side_by_side_keep_each_others_keys_when_either_leaves() {
    // 10 × 10,002 points: the ring holds them all.
    let keys = keys(20_000);
    let balancer = ring_over(&[1, MAX_WEIGHT, 1], 10);
    let before = homes(&balancer, &keys);
    for (i, weight) in [(1, MAX_WEIGHT), (0, 1)] {
        let leaving = url(i);
        let on_it = before
            .iter()
            .filter(|h| h.as_deref() == Some(&*leaving))
            .count();
        assert!(on_it > 0, "{leaving} (weight {weight}) holds keys");
        balancer.drain(&leaving).unwrap();
        let after = homes(&balancer, &keys);
        assert!(after.iter().all(|h| h.as_deref() != Some(&*leaving)));
        assert_eq!(
            foreign_moves(&before, &after, &leaving),
            0,
            "{leaving} left"
        );
        balancer.set_weight(&leaving, weight).unwrap();
        assert_eq!(homes(&balancer, &keys), before, "{leaving} is back");
    }
}

/// Weights as deployments have them, and the edges: 1 and [`MAX_WEIGHT`]
/// side by side.
fn weight() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => 1u32..=10,
        2 => 1u32..=MAX_WEIGHT,
        1 => Just(1u32),
        1 => Just(MAX_WEIGHT),
    ]
}

/// One endpoint, two, a few, many.
fn weights() -> impl Strategy<Value = Vec<u32>> {
    prop_oneof![
        1 => prop::collection::vec(weight(), 1..=2),
        1 => prop::collection::vec(weight(), 3..=6),
        2 => prop::collection::vec(weight(), 7..=30),
    ]
}

/// The points per unit of weight for a ring of at most `2^log2_points`
/// points over `weights` (or one per unit of weight): settings from 1 to
/// 65,536 with rings small enough to build a few hundred times in a debug
/// build (a ring of 2²⁰ points takes about half a second there), all
/// within 2²⁰ points. Rings beyond: tests/golden.rs and
/// `hash_quality::beyond_2_20_points_removing_an_endpoint_moves_others_keys_in_proportion`.
fn points_per_weight(weights: &[u32], log2_points: u32) -> u32 {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let per_weight = (1u64 << log2_points) / total.max(1);
    per_weight.clamp(1, 65_536) as u32
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Two endpoints leave (all of them when there are three or fewer),
    /// each by `remove` or by a drain, then return in reverse order: each
    /// departure moves only the keys of the endpoint that left, and each
    /// return moves keys only onto the endpoint that returned, putting every
    /// key back where it was.
    #[test]
    fn ring_hash_removing_any_endpoint_moves_only_its_keys_for_any_weights(
        weights in weights(),
        log2_points in 8u32..=17,
        order in any::<u64>(),
        drain in any::<bool>(),
    ) {
        let keys = keys(5_000);
        let per_weight = points_per_weight(&weights, log2_points);
        let balancer = ring_over(&weights, per_weight);
        let mut leaving: Vec<usize> = (0..weights.len()).collect();
        fastrand::Rng::with_seed(order).shuffle(&mut leaving);
        leaving.truncate(if weights.len() <= 3 { 3 } else { 2 });

        let mut trail = vec![homes(&balancer, &keys)];
        for &i in &leaving {
            let before = trail.last().expect("the first placement");
            if drain {
                balancer.drain(url(i)).unwrap();
            } else {
                balancer.remove(url(i)).unwrap();
            }
            let after = homes(&balancer, &keys);
            prop_assert!(after.iter().all(|h| h.as_deref() != Some(&*url(i))));
            prop_assert_eq!(
                foreign_moves(before, &after, &url(i)), 0,
                "removing {} (weight {}) moved keys between others", url(i), weights[i]
            );
            trail.push(after);
        }
        for &i in leaving.iter().rev() {
            let before = trail.pop().expect("a placement per departure");
            if drain {
                balancer.set_weight(url(i), weights[i]).unwrap();
            } else {
                balancer.add(url(i), weights[i]).unwrap();
            }
            let after = homes(&balancer, &keys);
            prop_assert_eq!(
                foreign_moves(&before, &after, &url(i)), 0,
                "adding {} (weight {}) moved keys between others", url(i), weights[i]
            );
            prop_assert_eq!(
                Some(&after), trail.last(),
                "with {} back, the keys are where they were before it left", url(i)
            );
        }
    }
}
