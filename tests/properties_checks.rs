//! Active health checks against a model, over generated sequences of
//! check outcomes, on tokio's paused clock.
//!
//! The inner service answers each endpoint's checks from its generated
//! sequence (200 for a pass, 503 for a failure; passes once the sequence
//! is spent); no request goes to a network. The model is the documented
//! behaviour written plainly: an endpoint is out until its first check
//! passes; in, it goes out after exactly `unhealthy_threshold` failures in
//! a row; out for failing checks, it comes back after `healthy_threshold`
//! passes in a row. The optional passive ejection (outlier detection, the
//! endpoint's requests failing) adds: an ejected endpoint comes back only
//! once its time is up and the latest check since the ejection passed.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;
use tower_lb::{ActiveHealthCheck, Balancer, Detector, OutlierDetection, Retries};

const INTERVAL_MS: u64 = 1_000;

fn url(i: usize) -> String {
    format!("http://10.0.0.{}:8080", i + 1)
}

/// An inner service answering checks from per-authority scripts.
type Scripts = Arc<Mutex<HashMap<String, VecDeque<bool>>>>;

fn scripted(
    scripts: Scripts,
) -> impl tower::Service<
    http::Request<()>,
    Response = http::Response<()>,
    Error = std::convert::Infallible,
    Future = std::future::Ready<Result<http::Response<()>, std::convert::Infallible>>,
> + Clone {
    tower::service_fn(move |request: http::Request<()>| {
        let authority = request
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let pass = scripts
            .lock()
            .unwrap()
            .get_mut(&authority)
            .and_then(|s| s.pop_front())
            .unwrap_or(true);
        let status = if pass { 200 } else { 503 };
        let response = http::Response::builder().status(status).body(()).unwrap();
        std::future::ready(Ok(response))
    })
}

/// The documented check state of one endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Model {
    Unchecked,
    In { failures: u32 },
    Failing { passes: u32 },
}

impl Model {
    fn out(self) -> bool {
        !matches!(self, Model::In { .. })
    }

    fn after(self, pass: bool, unhealthy: u32, healthy: u32) -> Model {
        match (self, pass) {
            (Model::Unchecked, true) => Model::In { failures: 0 },
            (Model::Unchecked, false) => Model::Failing { passes: 0 },
            (Model::In { .. }, true) => Model::In { failures: 0 },
            (Model::In { failures }, false) if failures + 1 >= unhealthy => {
                Model::Failing { passes: 0 }
            }
            (Model::In { failures }, false) => Model::In {
                failures: failures + 1,
            },
            (Model::Failing { passes }, true) if passes + 1 >= healthy => Model::In { failures: 0 },
            (Model::Failing { passes }, true) => Model::Failing { passes: passes + 1 },
            (Model::Failing { .. }, false) => Model::Failing { passes: 0 },
        }
    }
}

fn run(
    unhealthy: u32,
    healthy: u32,
    outcomes: Vec<Vec<bool>>,
    passive: Option<(usize, u64)>,
) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async move {
        let n = outcomes.len();
        let detection = OutlierDetection::default()
            .consecutive_failures(1)
            .base_ejection_time(Duration::from_millis(passive.map_or(1, |(_, b)| b)))
            .max_ejection_percent(100)
            .panic_threshold(0);
        let balancer = (0..n)
            .fold(Balancer::builder(), |b, i| b.endpoint(url(i)))
            .outlier_detection(detection)
            .retry(Retries::disabled())
            .seed(3)
            .build()
            .unwrap();
        let scripts: Scripts = Arc::new(Mutex::new(
            outcomes
                .iter()
                .enumerate()
                .map(|(i, o)| {
                    (
                        format!("10.0.0.{}:8080", i + 1),
                        o.iter().copied().collect(),
                    )
                })
                .collect(),
        ));
        let start = Instant::now();
        balancer
            .health_checks(
                ActiveHealthCheck::new("/health")
                    .interval(Duration::from_millis(INTERVAL_MS))
                    .interval_jitter(Duration::ZERO)
                    .unhealthy_threshold(unhealthy)
                    .healthy_threshold(healthy),
                scripted(scripts),
            )
            .unwrap();
        let rounds = outcomes.iter().map(Vec::len).max().unwrap_or(0) + 1;
        let mut models = vec![Model::Unchecked; n];
        let mut prev_ejected = vec![true; n];
        let mut sent = vec![0u64; n];
        let mut was_passive = vec![false; n];
        // Passive: the endpoint's ejection, and whether a check passed
        // since it (the latest check decides).
        let mut ejected: Option<(usize, u64, Option<bool>)> = None;
        let request = http::Request::get("/").body(()).unwrap();
        for round in 0..rounds {
            // By the end of round `round`, endpoint i (phase i × I / n)
            // has had `round + 1` checks.
            tokio::time::sleep_until(
                start + Duration::from_millis((round as u64 + 1) * INTERVAL_MS - 1),
            )
            .await;
            let stats = balancer.stats();
            let now_ms = (Instant::now() - start).as_millis() as u64;
            for i in 0..n {
                let pass = outcomes[i].get(round).copied().unwrap_or(true);
                let before = models[i];
                models[i] = before.after(pass, unhealthy, healthy);
                let entry = &stats.endpoints[i];
                prop_assert_eq!(entry.checks.sent, round as u64 + 1);
                prop_assert_eq!(entry.checks.passed + entry.checks.failed, round as u64 + 1);
                prop_assert_eq!(entry.requests, sent[i], "checks are not requests");
                let mut expect_out = models[i].out();
                if let Some((e, until, latest)) = &mut ejected {
                    if *e == i {
                        *latest = Some(pass);
                        if now_ms >= *until && *latest == Some(true) {
                            ejected = None;
                        } else {
                            expect_out = true;
                        }
                    }
                }
                prop_assert_eq!(
                    entry.ejected,
                    expect_out,
                    "endpoint {} after check {} ({:?} -> {:?}): {:?}",
                    i,
                    round,
                    before,
                    models[i],
                    entry
                );
                // Never re-admitted by a failing check.
                if !pass && prev_ejected[i] {
                    prop_assert!(entry.ejected, "re-admitted while its latest check failed");
                }
                prev_ejected[i] = entry.ejected;
                // Out for its checks alone, it says so (an endpoint out for
                // both keeps the ejection it had).
                if entry.ejected && matches!(models[i], Model::Failing { .. }) && !was_passive[i] {
                    prop_assert_eq!(entry.ejected_by, Some(Detector::ActiveCheck));
                }
            }
            // The passive ejection: one failed request while the endpoint is in.
            if let Some((e, base)) = passive {
                if round == 1 && ejected.is_none() && !models[e].out() {
                    let selection = balancer.select(&request).unwrap();
                    let to = (0..n).find(|&i| selection.endpoint() == url(i)).unwrap();
                    sent[to] += 1;
                    if to == e {
                        selection.finish(http::StatusCode::SERVICE_UNAVAILABLE);
                        if balancer.stats().endpoints[e].ejected {
                            let now_ms = (Instant::now() - start).as_millis() as u64;
                            ejected = Some((e, now_ms + base, None));
                            was_passive[e] = true;
                        }
                    }
                }
            }
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// An endpoint is out until its first check passes; out after exactly
    /// `unhealthy_threshold` failures in a row; back after
    /// `healthy_threshold` passes in a row; never re-admitted while its
    /// latest checks fail; checks never count as requests.
    #[test]
    fn out_after_exactly_unhealthy_threshold_failures_back_after_healthy_threshold_passes(
        unhealthy in 1u32..4,
        healthy in 1u32..4,
        outcomes in prop::collection::vec(prop::collection::vec(prop::bool::weighted(0.6), 0..12), 1..5),
    ) {
        run(unhealthy, healthy, outcomes, None)?;
    }

    /// With checks on, an endpoint ejected by outlier detection comes back
    /// only once its time is up and its latest check since passed: never
    /// while its latest checks fail.
    #[test]
    fn a_passively_ejected_endpoint_is_never_readmitted_while_its_latest_check_fails(
        unhealthy in 1u32..4,
        healthy in 1u32..3,
        outcomes in prop::collection::vec(prop::collection::vec(prop::bool::weighted(0.6), 0..12), 1..4),
        // The ejection is made at round 1's sample (1,999 ms); its end then
        // falls neither on a sample (999 ms past a whole second) nor on a
        // check of endpoint 0 (on whole seconds): which of two things at
        // one instant goes first is not the property. (Ending on a check
        // once failed it: the ejection ended, its latest check passing, at
        // the instant of a failing check the model took as first.)
        base in (0u64..4, 2u64..1_000).prop_map(|(seconds, ms)| seconds * 1_000 + ms),
    ) {
        let n = outcomes.len();
        run(unhealthy, healthy, outcomes, Some((0, base)))?;
        prop_assert!(n >= 1);
    }
}
