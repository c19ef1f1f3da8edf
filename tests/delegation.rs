//! A user's policy that delegates to the built-ins ("zone a first, else
//! any", "avoid canaries": docs/design.md, examples/custom_policy.rs) keeps
//! the built-ins' promise when endpoints are ejected: an ejected endpoint's
//! share spreads over the others in proportion to weight. Each rotation a
//! policy builds walks on a position of its own; when the two rotations of
//! "zone a first, else any" shared one, the fallback walked in lockstep
//! with the first choice and one endpoint took 990 of 1,000 requests.

use crate::support;

use std::collections::HashMap;

use proptest::prelude::*;
use support::policies::{ejecting_at_once, PreferZoneA};
use support::*;
use tower_lb::{Balancer, Endpoint, Policy};
use wiremock::ResponseTemplate;

#[tokio::test]
async fn with_zone_a_ejected_its_fallback_spreads_requests_evenly_over_zone_b() {
    // a1 and a2 answer 503 and are ejected at their first failure; b1, b2
    // and b3 answer 200.
    let zone_a = [
        backend("a1", ResponseTemplate::new(503)).await,
        backend("a2", ResponseTemplate::new(503)).await,
    ];
    let zone_b = [
        backend("b1", ResponseTemplate::new(200)).await,
        backend("b2", ResponseTemplate::new(200)).await,
        backend("b3", ResponseTemplate::new(200)).await,
    ];
    for (inner, name) in [
        (Policy::round_robin(), "round robin"),
        (Policy::weighted_round_robin(), "smooth WRR"),
        (Policy::random(), "random"),
    ] {
        let balancer = zone_a
            .iter()
            .map(|s| Endpoint::new(s.uri()).with_label("zone", "a"))
            .chain(
                zone_b
                    .iter()
                    .map(|s| Endpoint::new(s.uri()).with_label("zone", "b")),
            )
            .fold(Balancer::builder(), |b, e| b.endpoint(e))
            .policy(Policy::custom(PreferZoneA(inner)))
            .outlier_detection(ejecting_at_once())
            .seed(11)
            .build()
            .unwrap();
        let client = client(&balancer);
        // The first requests meet a1 and a2 and eject them (each is
        // retried on another endpoint).
        for _ in 0..4 {
            send(&client, "/").await.unwrap();
        }
        let stats = balancer.stats();
        let ejected: Vec<bool> = stats.endpoints.iter().map(|e| e.ejected).collect();
        assert_eq!(ejected, [true, true, false, false, false], "{name}");

        let mut seen: HashMap<String, usize> = HashMap::new();
        for result in send_many(&client, 999, 4).await {
            *seen.entry(result.unwrap()).or_default() += 1;
        }
        let counts = ["b1", "b2", "b3"].map(|b| seen.get(b).copied().unwrap_or(0));
        assert_eq!(counts.iter().sum::<usize>(), 999, "{name}: {seen:?}");
        // Rotations: within a few of 333 each; random: within five
        // standard deviations (about 15 each).
        let slack = if name == "random" { 75 } else { 3 };
        for count in counts {
            assert!(
                count.abs_diff(333) <= slack,
                "{name}: zone b got {counts:?} of 999"
            );
        }
    }
}

/// The paused runtime the property's picks run on.
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

fn index_of(url: &str) -> usize {
    url["http://10.0.0.".len()..]
        .trim_end_matches(":80")
        .parse::<usize>()
        .unwrap()
        - 1
}

/// The inner policies whose shares are exact or binomial: the rotations,
/// random, and a hashing policy's rotation fallback (keyless requests).
fn inner_policy(n: u8) -> (Policy, bool) {
    match n {
        0 => (Policy::round_robin(), false),
        1 => (Policy::weighted_round_robin(), true),
        2 => (Policy::random(), true),
        _ => (
            Policy::maglev()
                .fallback(Policy::weighted_round_robin())
                .into(),
            true,
        ),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// "Zone a first, else any" over random zones and weights with a random
    /// set ejected: every request stays in zone a while it has an available
    /// endpoint, and each available endpoint of the zone that takes the
    /// requests gets its weight's share of them (round robin: an equal
    /// share) within a binomial bound; ejected endpoints get none.
    #[test]
    fn a_delegating_policy_spreads_ejected_endpoints_shares_by_weight_like_the_builtins(
        fleet in prop::collection::vec((any::<bool>(), 1u32..=5, any::<bool>()), 2..10),
        inner in 0u8..4,
        seed in any::<u64>(),
    ) {
        let n = fleet.len();
        let mut eject: Vec<bool> = fleet.iter().map(|f| f.2).collect();
        if eject.iter().all(|&e| e) {
            eject[0] = false;
        }
        let local = |i: usize| fleet[i].0;
        let local_left = (0..n).any(|i| local(i) && !eject[i]);
        // Non-local endpoints see requests (and so can be ejected) only
        // when every local one is out.
        let reachable = |i: usize| local(i) || !local_left;
        let target: Vec<bool> = (0..n).map(|i| eject[i] && reachable(i)).collect();
        let (policy, weighted) = inner_policy(inner);
        let balancer = fleet
            .iter()
            .enumerate()
            .map(|(i, &(local, weight, _))| {
                Endpoint::new(format!("http://10.0.0.{}:80", i + 1))
                    .with_weight(weight)
                    .with_label("zone", if local { "a" } else { "b" })
            })
            .fold(Balancer::builder(), |b, e| b.endpoint(e))
            .policy(Policy::custom(PreferZoneA(policy)))
            .outlier_detection(ejecting_at_once())
            .seed(seed)
            .build()
            .unwrap();
        let request = http::Request::get("/").body(()).unwrap();
        let counts = paused_runtime().block_on(async {
            let mut rounds = 0;
            loop {
                let ejected: Vec<bool> =
                    balancer.stats().endpoints.iter().map(|e| e.ejected).collect();
                if ejected == target {
                    break;
                }
                let selection = balancer.select(&request).unwrap();
                let i = index_of(selection.endpoint());
                selection.finish(if target[i] {
                    http::StatusCode::SERVICE_UNAVAILABLE
                } else {
                    http::StatusCode::OK
                });
                rounds += 1;
                if rounds > 10_000 {
                    return Err(TestCaseError::fail("could not eject the chosen endpoints"));
                }
            }
            let mut counts = vec![0usize; n];
            for _ in 0..3_000 {
                let selection = balancer.select(&request).unwrap();
                counts[index_of(selection.endpoint())] += 1;
                selection.finish(http::StatusCode::OK);
            }
            Ok(counts)
        })?;
        let takers: Vec<usize> = (0..n)
            .filter(|&i| !target[i] && (local(i) || !local_left))
            .collect();
        let weight = |i: usize| if weighted { f64::from(fleet[i].1) } else { 1.0 };
        let total: f64 = takers.iter().map(|&i| weight(i)).sum();
        for i in 0..n {
            if !takers.contains(&i) {
                prop_assert_eq!(counts[i], 0, "endpoint {} took requests: {:?}", i, counts);
                continue;
            }
            let p = weight(i) / total;
            let expected = 3_000.0 * p;
            let sd = (3_000.0 * p * (1.0 - p)).sqrt();
            // Hash tables' fallback is exact too; slack for the cycle's
            // granularity.
            prop_assert!(
                (counts[i] as f64 - expected).abs() <= 5.0 * sd + 3.0,
                "endpoint {} got {} of 3000, expected {:.0} (counts {:?}, takers {:?})",
                i, counts[i], expected, counts, takers
            );
        }
    }
}
