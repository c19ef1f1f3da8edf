//! Every outlier detector against its definition, on tokio's paused clock:
//! requests are picked and answered through `Balancer::select`, one
//! interval passes (`tokio::time::advance`), and the balancer's sweeper
//! judges. The expected verdicts are computed here from the counts, as
//! docs/health.md states them (Envoy's rules).
//!
//! `cargo test --all-features --test integration properties_detectors::`

use std::sync::mpsc;
use std::time::Duration;

use http::StatusCode;
use proptest::prelude::*;
use tower_lb::{
    Balancer, Detector, FailurePercentage, HealthEvent, OutlierDetection, Policy, Retries,
    SuccessRate,
};

const INTERVAL: Duration = Duration::from_secs(10);

fn url(i: usize) -> String {
    format!("http://10.0.0.{}:8080", i + 1)
}

fn paused() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

fn balancer(n: usize, detection: OutlierDetection) -> Balancer {
    (0..n)
        .fold(Balancer::builder(), |b, i| b.endpoint(url(i)))
        .policy(Policy::round_robin())
        .outlier_detection(detection.panic_threshold(0))
        .retry(Retries::disabled())
        .seed(7)
        .build()
        .unwrap()
}

/// Sends `requests` to every endpoint (round robin: each gets its turn),
/// endpoint `i` answering 503 to the first `failures[i]` of them.
fn answer(balancer: &Balancer, requests: u32, failures: &[u32]) {
    let n = failures.len();
    let mut sent = vec![0u32; n];
    for _ in 0..requests as usize * n {
        let selection = balancer
            .select(&http::Request::get("/").body(()).unwrap())
            .unwrap();
        let i = (0..n).position(|i| url(i) == selection.endpoint()).unwrap();
        let status = if sent[i] < failures[i] {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        sent[i] += 1;
        selection.finish(status);
    }
    assert!(sent.iter().all(|&s| s == requests), "round robin: {sent:?}");
}

/// One interval passes; the sweeper judges.
async fn one_interval() {
    tokio::time::advance(INTERVAL).await;
    tokio::task::yield_now().await;
}

fn ejected_by(balancer: &Balancer) -> Vec<Option<Detector>> {
    balancer
        .stats()
        .endpoints
        .iter()
        .map(|e| e.ejected_by)
        .collect()
}

/// How many of `n` endpoints may be ejected at `percent` (one always may).
fn allowed(n: usize, percent: u32) -> usize {
    (n * percent as usize / 100).max(1)
}

/// The success rates as the detector computes them.
fn rates(requests: u32, failures: &[u32]) -> Vec<f64> {
    failures
        .iter()
        .map(|&f| 100.0 * f64::from(requests - f) / f64::from(requests))
        .collect()
}

/// The success-rate verdict: below `mean − factor × stdev` of the rates
/// of endpoints with at least `volume` requests, when at least
/// `minimum_hosts` have them; the lowest rates first, at most `allowed`.
fn success_rate_verdict(
    requests: u32,
    failures: &[u32],
    volume: u32,
    minimum_hosts: usize,
    factor: f64,
    allowed: usize,
) -> Vec<bool> {
    let n = failures.len();
    let mut out = vec![false; n];
    if requests < volume || n < minimum_hosts {
        return out;
    }
    let rates = rates(requests, failures);
    let mean = rates.iter().sum::<f64>() / n as f64;
    let variance = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n as f64;
    let line = mean - factor * variance.sqrt();
    let mut below: Vec<usize> = (0..n).filter(|&i| rates[i] < line).collect();
    below.sort_by(|&a, &b| rates[a].total_cmp(&rates[b]));
    for i in below.into_iter().take(allowed) {
        out[i] = true;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Success rate: after one interval exactly the endpoints below
    /// `mean − stdev_factor × stdev` are ejected (the worst first, within
    /// the maximum share), an endpoint within the spread never is, and
    /// nothing is ejected below the request volume or the minimum hosts.
    #[test]
    fn success_rate_ejects_exactly_those_below_mean_minus_factor_stdev_within_the_max_share(
        failures in prop::collection::vec(prop_oneof![4 => 0u32..4, 1 => 0u32..120], 1..12),
        requests in prop_oneof![Just(120u32), Just(99), 100u32..130],
        minimum_hosts in 1usize..8,
        factor in prop_oneof![Just(1.9), 0.5f64..3.0],
        percent in prop_oneof![Just(100u32), Just(10), 10u32..60],
    ) {
        paused().block_on(async {
            let failures: Vec<u32> = failures.iter().map(|&f| f.min(requests)).collect();
            let n = failures.len();
            let settings = SuccessRate::default()
                .stdev_factor(factor)
                .minimum_hosts(minimum_hosts as u32);
            let balancer = balancer(
                n,
                OutlierDetection::disabled().success_rate(settings).max_ejection_percent(percent),
            );
            answer(&balancer, requests, &failures);
            prop_assert!(ejected_by(&balancer).iter().all(Option::is_none), "not before the interval ends");
            one_interval().await;
            let expected = success_rate_verdict(requests, &failures, 100, minimum_hosts, factor, allowed(n, percent));
            let seen = ejected_by(&balancer);
            for i in 0..n {
                prop_assert_eq!(seen[i].is_some(), expected[i], "endpoint {} of {:?}", i, failures);
                if let Some(by) = seen[i] {
                    prop_assert_eq!(by, Detector::SuccessRate);
                }
            }
            prop_assert!(seen.iter().flatten().count() <= allowed(n, percent), "over the maximum share");
            let stats = balancer.stats().ejections;
            prop_assert_eq!(stats.enforced(Detector::SuccessRate), expected.iter().filter(|&&e| e).count() as u64);
            Ok(())
        })?;
    }

    /// Success rate, the case the detector is for: in a fleet failing 0 to
    /// 2 requests in 200, the one endpoint failing 30 or more is ejected,
    /// and no other is; with fewer than five endpoints, none is.
    #[test]
    fn an_endpoint_failing_far_more_than_a_tight_fleet_is_ejected_by_success_rate_and_no_other(
        fleet in prop::collection::vec(0u32..3, 1..12),
        bad in 30u32..120,
    ) {
        paused().block_on(async {
            let mut failures = fleet;
            failures.push(bad);
            let n = failures.len();
            let balancer = balancer(n, OutlierDetection::disabled().success_rate(SuccessRate::default()));
            answer(&balancer, 200, &failures);
            one_interval().await;
            let seen = ejected_by(&balancer);
            let mut expected = vec![None; n];
            if n >= 5 {
                expected[n - 1] = Some(Detector::SuccessRate);
            }
            prop_assert_eq!(seen, expected);
            Ok(())
        })?;
    }

    /// Failure percentage: after one interval exactly the endpoints whose
    /// failures are at or above the threshold are ejected, if they had the
    /// request volume and enough endpoints did; never more than the
    /// maximum share.
    #[test]
    fn failure_percentage_ejects_at_or_above_the_threshold_only_with_volume_and_minimum_hosts(
        // 30 and 51 of 60 are exactly 50% and 85%: at the threshold.
        failures in prop::collection::vec(prop_oneof![0u32..=60, Just(30), Just(51)], 1..12),
        requests in prop_oneof![Just(60u32), Just(49), 40u32..60],
        threshold in prop_oneof![Just(85u32), Just(50), 1u32..100],
        minimum_hosts in 1usize..8,
        percent in prop_oneof![Just(100u32), 10u32..60],
    ) {
        paused().block_on(async {
            let failures: Vec<u32> = failures.iter().map(|&f| f.min(requests)).collect();
            let n = failures.len();
            let settings = FailurePercentage::default()
                .threshold(threshold)
                .minimum_hosts(minimum_hosts as u32);
            let balancer = balancer(
                n,
                OutlierDetection::disabled().failure_percentage_with(settings).max_ejection_percent(percent),
            );
            answer(&balancer, requests, &failures);
            one_interval().await;
            let rates = rates(requests, &failures);
            let judged = requests >= 50 && n >= minimum_hosts;
            let mut over: Vec<usize> = (0..n)
                .filter(|&i| judged && 100.0 - rates[i] >= f64::from(threshold))
                .collect();
            over.sort_by(|&a, &b| rates[a].total_cmp(&rates[b]));
            over.truncate(allowed(n, percent));
            let seen = ejected_by(&balancer);
            for (i, seen) in seen.iter().enumerate() {
                let expected = over.contains(&i).then_some(Detector::FailurePercentage);
                prop_assert_eq!(*seen, expected, "endpoint {} of {:?}", i, failures);
            }
            Ok(())
        })?;
    }
}

#[derive(Clone, Copy, Debug)]
enum Answer {
    Ok,
    Status503,
    Refused,
    TimedOut,
}

fn answer_kind() -> impl Strategy<Value = Answer> {
    prop_oneof![
        Just(Answer::Ok),
        Just(Answer::Status503),
        Just(Answer::Refused),
        Just(Answer::TimedOut)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Local-origin failures split from answers: `n` of them in a row
    /// eject for local origin, any answer (a 503 too) ends that streak,
    /// and they neither count toward nor break the streak of failure
    /// statuses, which ejects for consecutive failures. The first streak
    /// to reach its threshold names the detector.
    #[test]
    fn split_mode_ejects_for_a_local_origin_streak_and_answers_never_count_toward_it(
        answers in prop::collection::vec(answer_kind(), 1..40),
        local_threshold in 1u32..5,
        status_threshold in 1u32..5,
    ) {
        paused().block_on(async {
            let detection = OutlierDetection::default()
                .consecutive_failures(status_threshold)
                .split_local_origin_errors(true)
                .consecutive_local_origin_failures(local_threshold)
                .max_ejection_percent(100);
            let balancer = balancer(1, detection);
            let (mut local, mut status) = (0, 0);
            let mut expected = None;
            for answer in answers {
                if expected.is_some() {
                    break;
                }
                let selection = balancer.select(&http::Request::get("/").body(()).unwrap()).unwrap();
                match answer {
                    Answer::Ok => {
                        selection.finish(StatusCode::OK);
                        (local, status) = (0, 0);
                    }
                    Answer::Status503 => {
                        selection.finish(StatusCode::SERVICE_UNAVAILABLE);
                        local = 0;
                        status += 1;
                    }
                    Answer::Refused => {
                        selection.fail(&std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
                        local += 1;
                    }
                    Answer::TimedOut => {
                        selection.fail(&std::io::Error::from(std::io::ErrorKind::TimedOut));
                        local += 1;
                    }
                }
                if status >= status_threshold {
                    expected = Some(Detector::ConsecutiveFailures);
                } else if local >= local_threshold {
                    expected = Some(Detector::ConsecutiveLocalOriginFailures);
                }
            }
            prop_assert_eq!(ejected_by(&balancer)[0], expected);
            Ok(())
        })?;
    }

    /// Ejection time: the `k`-th ejection in a row lasts
    /// `min(base × k, max)` plus a jitter below `max_ejection_time_jitter`,
    /// and the endpoint is out exactly that long; the multiplier stops
    /// rising once `base × multiplier` reaches the maximum. Then it comes
    /// down by one for every interval the endpoint stays in rotation, to 0.
    #[test]
    fn ejection_time_is_base_times_multiplier_capped_within_the_jitter_and_the_multiplier_comes_down(
        base_s in 1u64..20,
        factor in 1u64..6,
        jitter_ms in prop_oneof![Just(0u64), 1u64..5_000],
        ejections in 1u32..8,
        seed in any::<u64>(),
    ) {
        paused().block_on(async {
            let base = Duration::from_secs(base_s);
            let max = base * factor as u32;
            let (sender, events) = mpsc::channel();
            let detection = OutlierDetection::default()
                .consecutive_failures(1)
                .base_ejection_time(base)
                .max_ejection_time(max)
                .max_ejection_time_jitter(Duration::from_millis(jitter_ms))
                .interval(Duration::from_secs(1_000))
                .on_event(move |e| { let _ = sender.send(e.clone()); });
            let balancer = (0..2)
                .fold(Balancer::builder(), |b, i| b.endpoint(url(i)))
                .policy(Policy::round_robin())
                .outlier_detection(detection.panic_threshold(0))
                .retry(Retries::disabled())
                .seed(seed)
                .build()
                .unwrap();
            let mut multiplier = 0u32;
            for _ in 0..ejections {
                // Fail endpoint 0 once: it is ejected.
                loop {
                    let selection = balancer.select(&http::Request::get("/").body(()).unwrap()).unwrap();
                    if selection.endpoint() == url(0) {
                        selection.finish(StatusCode::SERVICE_UNAVAILABLE);
                        break;
                    }
                    selection.finish(StatusCode::OK);
                }
                if base * multiplier < max {
                    multiplier += 1;
                }
                let event = events.recv_timeout(Duration::from_secs(5)).unwrap();
                let HealthEvent::Ejected { times, duration, detector, .. } = event else {
                    panic!("expected an ejection, got {event:?}");
                };
                let floor = (base * multiplier).min(max);
                prop_assert_eq!(times, multiplier);
                prop_assert_eq!(detector, Detector::ConsecutiveFailures);
                prop_assert!(duration >= floor && duration <= floor + Duration::from_millis(jitter_ms),
                    "ejection {} lasts {:?}, base × count capped is {:?}, jitter up to {} ms", times, duration, floor, jitter_ms);
                // Out for exactly that long.
                tokio::time::advance(duration - Duration::from_millis(1)).await;
                prop_assert!(balancer.stats().endpoints[0].ejected);
                tokio::time::advance(Duration::from_millis(1)).await;
                tokio::task::yield_now().await;
                prop_assert!(!balancer.stats().endpoints[0].ejected);
                let returned = events.recv_timeout(Duration::from_secs(5)).unwrap();
                let back_after = match returned {
                    HealthEvent::Readmitted { after, .. } => after,
                    other => panic!("expected a return, got {other:?}"),
                };
                prop_assert_eq!(back_after, duration);
            }
            // Healthy from now on: down by one per interval (the first
            // sweep an interval or more after the return counts).
            let interval = Duration::from_secs(1_000);
            let mut seen = vec![balancer.stats().endpoints[0].times_ejected];
            for _ in 0..multiplier + 1 {
                tokio::time::advance(interval).await;
                tokio::task::yield_now().await;
                seen.push(balancer.stats().endpoints[0].times_ejected);
            }
            prop_assert_eq!(seen[0], multiplier);
            for pair in seen.windows(2) {
                prop_assert!(pair[1] == pair[0].saturating_sub(1) || pair[1] == pair[0], "{:?}", seen);
            }
            prop_assert_eq!(*seen.last().unwrap(), 0, "{:?}", seen);
            Ok(())
        })?;
    }

    /// Enforcement: a detector with enforcement 0 fires and never ejects
    /// (counted as not enforced), one with 100 always ejects, and one in
    /// between ejects about that share of the times it fires, drawn from
    /// the balancer's seeded generator (the same seed, the same draws).
    #[test]
    fn each_detector_ejects_its_enforcement_share_of_the_times_it_fires(
        enforcing in prop_oneof![Just(0u32), Just(100), 1u32..100],
        seed in any::<u64>(),
    ) {
        let run = |seed: u64| paused().block_on(async {
            let detection = OutlierDetection::default()
                .consecutive_failures(1)
                .enforcing(Detector::ConsecutiveFailures, enforcing)
                .base_ejection_time(Duration::from_millis(1))
                .max_ejection_time(Duration::from_millis(1));
            let balancer = (0..1)
                .fold(Balancer::builder(), |b, i| b.endpoint(url(i)))
                .outlier_detection(detection)
                .retry(Retries::disabled())
                .seed(seed)
                .build()
                .unwrap();
            for _ in 0..400 {
                balancer.select(&http::Request::get("/").body(()).unwrap()).unwrap()
                    .finish(StatusCode::SERVICE_UNAVAILABLE);
                tokio::time::advance(Duration::from_millis(1)).await;
            }
            balancer.stats().ejections
        });
        let stats = run(seed);
        prop_assert_eq!(stats.total + stats.not_enforced, 400);
        match enforcing {
            0 => prop_assert_eq!(stats.total, 0),
            100 => prop_assert_eq!(stats.total, 400),
            p => {
                // Binomial(400, p): within five standard deviations.
                let mean = 4.0 * f64::from(p);
                let sd = (400.0 * f64::from(p) / 100.0 * (1.0 - f64::from(p) / 100.0)).sqrt();
                prop_assert!((stats.total as f64 - mean).abs() <= 5.0 * sd + 1.0, "{} of 400 at {}%", stats.total, p);
            }
        }
        prop_assert_eq!(run(seed), stats, "the same seed, the same draws");
    }
}
