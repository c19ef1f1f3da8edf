//! Properties of every selection policy, checked over generated weights,
//! sets and keys: shares in proportion to weight, with and without ejected
//! endpoints; NGINX's smooth order; consistent hashing that moves only the
//! keys it must and agrees across processes; bounded loads; least time that
//! starves nobody; the same seed giving the same picks; stats that change
//! nothing.
//!
//! Picks go through the public `Balancer::select`, time through tokio's
//! paused clock, randomness through the balancer's seed: a failing case
//! replays exactly. `cargo test --test properties_policies`; the list of
//! properties is in docs/testing.md.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use tower_lb::{
    Balancer, ConsistentHash, OutlierDetection, Policy, RequestKey, Retries, SessionKey,
};

/// The canonical URL of endpoint `i`.
fn url(i: usize) -> String {
    format!("http://10.0.{}.{}:8080", i / 250, i % 250 + 1)
}

fn index_of(url: &str) -> usize {
    let mut parts = url
        .trim_start_matches("http://10.0.")
        .trim_end_matches(":8080")
        .split('.');
    let high: usize = parts.next().unwrap().parse().unwrap();
    let low: usize = parts.next().unwrap().parse().unwrap();
    high * 250 + low - 1
}

fn balancer(
    weights: &[u32],
    policy: impl Into<Policy>,
    detection: OutlierDetection,
    seed: u64,
) -> Balancer {
    weights
        .iter()
        .enumerate()
        .fold(Balancer::builder(), |b, (i, &w)| {
            b.endpoint_weighted(url(i), w)
        })
        .policy(policy)
        .outlier_detection(detection)
        .retry(Retries::disabled())
        .seed(seed)
        .build()
        .expect("a valid balancer")
}

/// A paused clock, for least time and ejections.
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

fn request(key: Option<u64>) -> http::Request<()> {
    let mut request = http::Request::get("/").body(()).unwrap();
    if let Some(key) = key {
        request
            .extensions_mut()
            .insert(SessionKey::new(key.to_le_bytes()));
    }
    request
}

/// One request answered 200 after `latency` of paused time; the index of
/// the endpoint it went to.
async fn answered(balancer: &Balancer, key: Option<u64>, latency: Duration) -> usize {
    let selection = balancer.select(&request(key)).expect("an endpoint");
    let chosen = index_of(selection.endpoint());
    if !latency.is_zero() {
        tokio::time::advance(latency).await;
    }
    selection.finish(http::StatusCode::OK);
    chosen
}

/// Whether `count` of `n` draws is within five standard deviations (plus
/// `slack`) of share `p`.
fn within_binomial(count: usize, n: usize, p: f64, slack: f64) -> bool {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (count as f64 - mean).abs() <= 5.0 * sd + slack
}

fn check_shares(
    counts: &[usize],
    weights: &[u32],
    skip: &[bool],
    slack: f64,
) -> Result<(), String> {
    let n: usize = counts.iter().sum();
    let total: f64 = weights
        .iter()
        .zip(skip)
        .filter(|(_, &s)| !s)
        .map(|(&w, _)| f64::from(w))
        .sum();
    for (i, (&count, &w)) in counts.iter().zip(weights).enumerate() {
        let p = if skip[i] { 0.0 } else { f64::from(w) / total };
        if skip[i] && count > 0 {
            return Err(format!("endpoint {i} is ejected and got {count}"));
        }
        if !within_binomial(count, n, p, slack) {
            return Err(format!(
                "endpoint {i} (weight {w}) got {count} of {n}, expected {:.1}",
                n as f64 * p
            ));
        }
    }
    Ok(())
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    RoundRobin,
    Weighted,
    Random,
    LeastTime,
    Ring,
    Maglev,
}

impl Kind {
    fn policy(self) -> Policy {
        match self {
            Kind::RoundRobin => Policy::round_robin(),
            Kind::Weighted => Policy::weighted_round_robin(),
            Kind::Random => Policy::random(),
            Kind::LeastTime => Policy::least_response_time().default_rtt(LATENCY).into(),
            Kind::Ring => Policy::ring_hash().key(RequestKey::session()).into(),
            Kind::Maglev => Policy::maglev().key(RequestKey::session()).into(),
        }
    }

    fn hashes(self) -> bool {
        matches!(self, Kind::Ring | Kind::Maglev)
    }

    /// Weights as the policy sees them: round robin ignores them.
    fn effective(self, weights: &[u32]) -> Vec<u32> {
        match self {
            Kind::RoundRobin => vec![1; weights.len()],
            _ => weights.to_vec(),
        }
    }
}

/// Every answer takes this long, for least time.
const LATENCY: Duration = Duration::from_millis(1);

fn weighted_kinds() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::RoundRobin),
        Just(Kind::Weighted),
        Just(Kind::Random),
        Just(Kind::LeastTime),
    ]
}

fn all_kinds() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::RoundRobin),
        Just(Kind::Weighted),
        Just(Kind::Random),
        Just(Kind::LeastTime),
        Just(Kind::Ring),
        Just(Kind::Maglev),
    ]
}

/// Picks `n` requests one after another (keys random for hashing policies).
async fn count_picks(
    balancer: &Balancer,
    kind: Kind,
    endpoints: usize,
    n: usize,
    seed: u64,
) -> Vec<usize> {
    let mut keys = fastrand::Rng::with_seed(seed);
    let latency = if matches!(kind, Kind::LeastTime) {
        LATENCY
    } else {
        Duration::ZERO
    };
    let mut counts = vec![0; endpoints];
    for _ in 0..n {
        let key = kind.hashes().then(|| keys.u64(..));
        counts[answered(balancer, key, latency).await] += 1;
    }
    counts
}

/// NGINX's smooth weighted round robin, as in ngx_http_upstream_round_robin.c.
fn nginx_order(weights: &[u32], picks: usize) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    (0..picks)
        .map(|_| {
            let mut best = 0;
            for (i, &w) in weights.iter().enumerate() {
                current[i] += i64::from(w);
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            best
        })
        .collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn every_weighted_policy_gives_each_endpoint_its_weight_share_within_a_binomial_bound(
        kind in weighted_kinds(),
        weights in prop::collection::vec(1u32..=1_000, 1..=50),
        seed in any::<u64>(),
    ) {
        let runtime = paused_runtime();
        let balancer = balancer(&weights, kind.policy(), OutlierDetection::disabled(), seed);
        let counts = runtime.block_on(count_picks(&balancer, kind, weights.len(), 6_000, seed));
        let skip = vec![false; weights.len()];
        check_shares(&counts, &kind.effective(&weights), &skip, 2.0).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn smooth_weighted_round_robin_follows_nginx_order_exactly_and_each_whole_cycle_is_exact(
        weights in prop::collection::vec(1u32..=1_000, 1..=50),
    ) {
        let balancer = balancer(&weights, Policy::weighted_round_robin(), OutlierDetection::disabled(), 0);
        let divisor = weights.iter().fold(0, |g, &w| gcd(g, w));
        let reduced: Vec<u32> = weights.iter().map(|&w| w / divisor).collect();
        let cycle: usize = reduced.iter().map(|&w| w as usize).sum();
        let picks = (cycle * 2).min(20_000);
        let got: Vec<usize> = (0..picks)
            .map(|_| index_of(balancer.select(&request(None)).unwrap().endpoint()))
            .collect();
        prop_assert_eq!(&got, &nginx_order(&reduced, picks));
        if picks >= cycle {
            for (i, &w) in reduced.iter().enumerate() {
                let count = got[..cycle].iter().filter(|&&g| g == i).count();
                prop_assert_eq!(count, w as usize);
            }
        }
    }

    /// Each thread walks the rotation on its own lane (so two cores do not
    /// fight over one position counter): a walk's every prefix is within
    /// one pick of each endpoint's share, so picks from `threads` threads
    /// are within `threads` of it, whatever each thread's number of picks.
    #[test]
    fn weighted_round_robin_picks_from_several_threads_are_within_one_per_thread_of_each_share(
        weights in prop::collection::vec(1u32..=100, 1..=20),
        picks_per_thread in prop::collection::vec(0usize..=600, 1..=4),
    ) {
        let balancer = balancer(&weights, Policy::weighted_round_robin(), OutlierDetection::disabled(), 0);
        let counts: Vec<Vec<usize>> = std::thread::scope(|scope| {
            let handles: Vec<_> = picks_per_thread
                .iter()
                .map(|&picks| {
                    let balancer = &balancer;
                    scope.spawn(move || {
                        (0..picks)
                            .map(|_| index_of(balancer.select(&request(None)).unwrap().endpoint()))
                            .collect::<Vec<usize>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let total: usize = picks_per_thread.iter().sum();
        let weight_sum: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        for (i, &w) in weights.iter().enumerate() {
            let count = counts.iter().flatten().filter(|&&g| g == i).count();
            let share = total as f64 * f64::from(w) / weight_sum;
            prop_assert!(
                (count as f64 - share).abs() < picks_per_thread.len() as f64,
                "endpoint {} (weight {}): {} picks, share {:.2}", i, w, count, share
            );
        }
    }

    #[test]
    fn with_endpoints_ejected_every_policy_spreads_their_share_over_the_rest_by_weight(
        kind in all_kinds(),
        weights in prop::collection::vec(1u32..=1_000, 2..=30),
        ejected in prop::collection::vec(any::<bool>(), 30),
        seed in any::<u64>(),
    ) {
        let n = weights.len();
        let mut ejected: Vec<bool> = ejected[..n].to_vec();
        if ejected.iter().all(|&e| e) {
            ejected[0] = false;
        }
        let detection = OutlierDetection::default()
            .consecutive_failures(1)
            .max_ejection_percent(100)
            .panic_threshold(0)
            .base_ejection_time(Duration::from_secs(3_600))
            .max_ejection_time(Duration::from_secs(3_600));
        let balancer = balancer(&weights, kind.policy(), detection, seed);
        let target = ejected.iter().filter(|&&e| e).count();
        let counts = paused_runtime().block_on(async {
            // Requests without a key reach every endpoint, through the
            // fallback of the hashing policies too; the ones to eject answer
            // 503, the others 200 in the usual time.
            let mut rounds = 0;
            while balancer.stats().endpoints.iter().filter(|e| e.ejected).count() < target {
                let selection = balancer.select(&request(None)).unwrap();
                if ejected[index_of(selection.endpoint())] {
                    selection.finish(http::StatusCode::SERVICE_UNAVAILABLE);
                } else {
                    tokio::time::advance(LATENCY).await;
                    selection.finish(http::StatusCode::OK);
                }
                rounds += 1;
                if rounds > 200_000 {
                    return Err(TestCaseError::fail("could not eject the chosen endpoints"));
                }
            }
            Ok(count_picks(&balancer, kind, n, 6_000, seed).await)
        })?;
        // Hash tables place keys by points and slots, not by exact weight
        // shares: a few percent of slack for their granularity.
        let slack = if kind.hashes() { 0.04 * 6_000.0 / n as f64 + 3.0 } else { 2.0 };
        check_shares(&counts, &kind.effective(&weights), &ejected, slack)
            .map_err(TestCaseError::fail)?;
    }

    #[test]
    fn the_same_seed_gives_the_same_picks_on_any_thread(
        kind in prop_oneof![Just(Kind::Random), Just(Kind::LeastTime)],
        weights in prop::collection::vec(1u32..=100, 2..=20),
        seed in any::<u64>(),
    ) {
        let run = |split: bool| {
            let balancer = balancer(&weights, kind.policy(), OutlierDetection::disabled(), seed);
            // Each thread with a paused clock of its own: answers take no time.
            let pick = |balancer: &Balancer| {
                paused_runtime().block_on(async {
                    (0..500)
                        .map(|_| answered_now(balancer))
                        .collect::<Vec<usize>>()
                })
            };
            let mut picks = if split {
                let other = balancer.clone();
                std::thread::spawn(move || pick(&other)).join().unwrap()
            } else {
                pick(&balancer)
            };
            picks.extend(pick(&balancer));
            picks
        };
        prop_assert_eq!(run(false), run(true));
    }

    #[test]
    fn calling_stats_any_number_of_times_changes_no_pick(
        kind in all_kinds(),
        weights in prop::collection::vec(1u32..=100, 2..=12),
        script in prop::collection::vec((any::<u8>(), 0u64..3_000), 50..300),
        seed in any::<u64>(),
    ) {
        let run = |with_stats: bool| {
            let detection = OutlierDetection::default()
                .consecutive_failures(2)
                .max_ejection_percent(50)
                .base_ejection_time(Duration::from_secs(1))
                .max_ejection_time(Duration::from_secs(5));
            paused_runtime().block_on(async {
                // Built on the paused clock: its time starts where the
                // runtime's does in both runs. Built outside, the real time
                // between the two (over a millisecond on a loaded machine)
                // moved the ejections' ends against the steps, differently
                // in each run.
                let balancer = balancer(&weights, kind.policy(), detection, seed);
                let mut picks = Vec::new();
                for &(step, wait_ms) in &script {
                    if with_stats {
                        for _ in 0..step % 3 {
                            let _ = balancer.stats();
                        }
                    }
                    tokio::time::advance(Duration::from_millis(wait_ms)).await;
                    let key = kind.hashes().then_some(u64::from(step % 7));
                    let selection = balancer.select(&request(key)).unwrap();
                    let i = index_of(selection.endpoint());
                    // Endpoint 0 always fails; the others now and then.
                    let failed = i == 0 || step % 5 == 0;
                    selection.finish(http::StatusCode::from_u16(if failed { 503 } else { 200 }).unwrap());
                    picks.push(i);
                }
                picks
            })
        };
        prop_assert_eq!(run(false), run(true));
    }
}

/// One pick answered at once.
fn answered_now(balancer: &Balancer) -> usize {
    let selection = balancer.select(&request(None)).unwrap();
    let i = index_of(selection.endpoint());
    selection.finish(http::StatusCode::OK);
    i
}

/// Where each of `keys` lives.
fn homes(balancer: &Balancer, keys: &[SessionKey]) -> Vec<String> {
    keys.iter()
        .map(|k| balancer.locate(k).expect("a home").to_string())
        .collect()
}

fn table(maglev: bool) -> ConsistentHash {
    if maglev {
        Policy::maglev()
    } else {
        Policy::ring_hash()
    }
}

/// Maglev's disruption: the share of keys that move between two endpoints
/// neither of which was added or removed, when one endpoint joins or leaves.
/// Documented in docs/consistent-hashing.md.
const MAGLEV_MAX_EXCESS: f64 = 0.02;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn ring_and_maglev_move_only_the_keys_of_the_added_or_removed_endpoint(
        maglev in any::<bool>(),
        // Up to 6, so that the ring holds every point at its default
        // (2,048 × 40 × 6 fit in 2²⁰) and builds fast enough in a debug
        // build; tests/properties_ring.rs covers weights up to MAX_WEIGHT
        // and rings beyond 2²⁰ points.
        weights in prop::collection::vec(1u32..=6, 2..=40),
        changed in any::<prop::sample::Index>(),
        add in any::<bool>(),
    ) {
        let keys: Vec<SessionKey> = (0..20_000u32).map(|k| SessionKey::new(k.to_le_bytes())).collect();
        let n = weights.len();
        let changed = changed.index(n);
        let without: Vec<u32> = weights.iter().enumerate().map(|(i, &w)| if i == changed { 0 } else { w }).collect();
        // A weight-0 endpoint is drained: the set without it.
        let full = homes(&balancer(&weights, table(maglev), OutlierDetection::disabled(), 0), &keys);
        let less = homes(&balancer(&without, table(maglev), OutlierDetection::disabled(), 0), &keys);
        let (before, after) = if add { (&less, &full) } else { (&full, &less) };
        let gone = url(changed);
        let mut excess = 0;
        for (b, a) in before.iter().zip(after) {
            if b != a && *b != gone && *a != gone {
                excess += 1;
            }
        }
        if maglev {
            let share = excess as f64 / keys.len() as f64;
            prop_assert!(share <= MAGLEV_MAX_EXCESS, "{share} of the keys moved between others");
        } else {
            // Each endpoint's points follow its own weight: not one key
            // moves between the others, whatever the weights.
            prop_assert_eq!(excess, 0, "the ring moved keys between others");
        }
    }

    #[test]
    fn two_balancers_listing_the_same_endpoints_in_any_order_agree_on_every_key(
        maglev in any::<bool>(),
        // Rings of 2²⁰ points take half a second to build in a debug build:
        // weights up to 6 keep them within 491,520 (tests/golden.rs pins a
        // ring beyond 2²⁰ points listed both ways).
        weights in prop::collection::vec(1u32..=6, 1..=40),
        order in any::<u64>(),
    ) {
        let keys: Vec<SessionKey> = (0..5_000u32).map(|k| SessionKey::new(k.to_le_bytes())).collect();
        let mut shuffled: Vec<usize> = (0..weights.len()).collect();
        fastrand::Rng::with_seed(order).shuffle(&mut shuffled);
        let listed = Balancer::builder();
        let listed = (0..weights.len()).fold(listed, |b, i| b.endpoint_weighted(url(i), weights[i]));
        let reordered = shuffled.iter().fold(Balancer::builder(), |b, &i| b.endpoint_weighted(url(i), weights[i]));
        let a = listed.policy(table(maglev)).build().unwrap();
        let b = reordered.policy(table(maglev)).build().unwrap();
        prop_assert_eq!(homes(&a, &keys), homes(&b, &keys));
    }

    #[test]
    fn bounded_loads_never_exceed_the_bound_plus_one(
        maglev in any::<bool>(),
        weights in prop::collection::vec(1u32..=10, 2..=20),
        factor in 1.0f64..3.0,
        hot in 1u64..50,
        requests in 50usize..600,
        seed in any::<u64>(),
    ) {
        let policy = table(maglev).load_factor(factor).key(RequestKey::session());
        let balancer = balancer(&weights, policy, OutlierDetection::disabled(), seed);
        let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        let mut keys = fastrand::Rng::with_seed(seed);
        let mut held = Vec::new();
        for r in 0..requests {
            // A skewed stream: a few hot keys, and requests finishing now and then.
            let key = if keys.bool() { keys.u64(..hot) } else { keys.u64(..) };
            held.push(balancer.select(&request(Some(key))).unwrap());
            if r % 7 == 0 && !held.is_empty() {
                let finished = held.swap_remove(keys.usize(..held.len()));
                finished.finish(http::StatusCode::OK);
            }
            let stats = balancer.stats();
            let all = stats.in_flight() as f64;
            for (i, e) in stats.endpoints.iter().enumerate() {
                let bound = (factor * f64::from(weights[i]) / total * all).ceil() + 1.0;
                prop_assert!(e.in_flight as f64 <= bound, "endpoint {i}: {} in flight, bound {bound}", e.in_flight);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn least_time_over_equal_endpoints_gives_none_under_half_its_fair_share_once_first_answers_decay(
        first in prop::collection::vec((0u64..1_000, any::<bool>()), 2..=5),
        seed in any::<u64>(),
    ) {
        let n = first.len();
        let policy = Policy::least_response_time().default_rtt(LATENCY);
        let balancer = balancer(&vec![1; n], policy, OutlierDetection::disabled(), seed);
        let runtime = paused_runtime();
        let windows = runtime.block_on(async {
            // Whatever the first answers were: slow, fast, failed.
            for &(ms, failed) in &first {
                let selection = balancer.select(&request(None)).unwrap();
                tokio::time::advance(Duration::from_millis(ms)).await;
                if failed {
                    selection.fail(&std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
                } else {
                    selection.finish(http::StatusCode::OK);
                }
            }
            // The documented bound: decay × ln(worst / typical) plus a step;
            // the worst first answer is the 1 s failure penalty.
            let recovery = Duration::from_secs_f64(10.0 * (1_000.0f64 / 1.0).ln() + 1.25);
            let mut waited = Duration::ZERO;
            while waited < recovery {
                answered(&balancer, None, LATENCY).await;
                tokio::time::advance(Duration::from_millis(9)).await;
                waited += Duration::from_millis(10);
            }
            let mut windows = Vec::new();
            for _ in 0..10 {
                let mut counts = vec![0usize; n];
                for _ in 0..500 {
                    counts[answered(&balancer, None, LATENCY).await] += 1;
                }
                windows.push(counts);
            }
            windows
        });
        for counts in windows {
            for &count in &counts {
                prop_assert!(count * 2 * n >= 500, "a window of 500 gave {counts:?}");
            }
        }
    }
}

#[test]
fn shares_of_ten_thousand_picks_for_the_closing_note() {
    let runtime = paused_runtime();
    let mut report = HashMap::new();
    for weights in [vec![1u32; 5], vec![1, 2, 3, 4]] {
        for kind in [Kind::Random, Kind::Weighted, Kind::LeastTime] {
            let balancer = balancer(&weights, kind.policy(), OutlierDetection::disabled(), 42);
            let counts = runtime.block_on(count_picks(&balancer, kind, weights.len(), 10_000, 42));
            let shares: Vec<String> = counts
                .iter()
                .map(|&c| format!("{:.1}%", c as f64 / 100.0))
                .collect();
            println!("{kind:?} over weights {weights:?}: {}", shares.join(" / "));
            let skip = vec![false; weights.len()];
            check_shares(&counts, &weights, &skip, 2.0).unwrap();
            report.insert(format!("{kind:?}{weights:?}"), counts);
        }
    }
    assert_eq!(report.len(), 6);
}
