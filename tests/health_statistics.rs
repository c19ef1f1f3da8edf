//! The statistical detectors against real loopback servers: ten wiremock
//! backends, one answering 503 to 30% of its requests and the others to
//! 1%. Success rate ejects the bad one within two intervals; consecutive
//! failures alone never do, since its failures never come five in a row.
//! On tokio's paused clock, held still while requests are on their way
//! (`hold_clock`): the intervals pass when the test advances them.

use crate::support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use support::*;
use tower_lb::{Balancer, Detector, OutlierDetection, Policy, Retries, SuccessRate};
use wiremock::matchers::any;
use wiremock::{Mock, Request, Respond, ResponseTemplate};

const INTERVAL: Duration = Duration::from_secs(10);
/// Requests per interval: 120 per backend, over the success-rate volume.
const PER_INTERVAL: usize = 1_200;

/// Answers 503 to `percent` of its requests, spread as evenly as they can
/// be: request `n` fails when `⌊(n + 1) × p / 100⌋` steps up, so under 50%
/// no two failures are in a row.
struct Spread {
    name: String,
    percent: u64,
    answered: AtomicU64,
}

impl Respond for Spread {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let n = self.answered.fetch_add(1, Ordering::Relaxed);
        let fails = (n + 1) * self.percent / 100 > n * self.percent / 100;
        ResponseTemplate::new(if fails { 503 } else { 200 })
            .insert_header(BACKEND, self.name.as_str())
    }
}

/// Ten backends: "c" fails 30% of its requests, the others 1%.
async fn fleet() -> Vec<Server> {
    let mut servers = Vec::new();
    for i in 0..10 {
        let server = Server::start().await;
        Mock::given(any())
            .respond_with(Spread {
                name: name(i),
                percent: if i == 2 { 30 } else { 1 },
                answered: AtomicU64::new(0),
            })
            .mount(&server)
            .await;
        servers.push(server);
    }
    servers
}

fn balancer(servers: &[Server], detection: OutlierDetection) -> Balancer {
    servers
        .iter()
        .fold(Balancer::builder(), |b, s| b.endpoint(s.uri()))
        .policy(Policy::round_robin())
        .outlier_detection(detection.interval(INTERVAL))
        .retry(Retries::disabled())
        .build()
        .unwrap()
}

/// One interval of traffic, then the interval's end: the sweeper judges.
async fn one_interval(client: &Client) {
    let answers = send_many(client, PER_INTERVAL, 16).await;
    assert!(answers.iter().all(Result::is_ok), "every request answered");
    tokio::time::advance(INTERVAL).await;
    tokio::task::yield_now().await;
}

#[tokio::test(start_paused = true)]
async fn a_backend_failing_30_percent_among_ten_failing_1_percent_is_ejected_by_success_rate_within_two_intervals(
) {
    let _clock = hold_clock();
    let servers = fleet().await;
    let bad = servers[2].uri();
    // Consecutive failures (5, the default) and success rate together.
    let detection = OutlierDetection::default().success_rate(SuccessRate::default());
    let balancer = balancer(&servers, detection);
    let client = client(&balancer);

    let mut intervals = 0;
    while !balancer.stats().endpoint(&bad).unwrap().ejected {
        assert!(intervals < 2, "not ejected within two intervals");
        one_interval(&client).await;
        intervals += 1;
    }
    let stats = balancer.stats();
    let entry = stats.endpoint(&bad).unwrap();
    assert_eq!(entry.ejected_by, Some(Detector::SuccessRate));
    assert_eq!(stats.ejections.enforced(Detector::SuccessRate), 1);
    assert_eq!(stats.ejections.enforced(Detector::ConsecutiveFailures), 0);
    assert_eq!(stats.ejections.active, 1, "only the bad one: {stats:?}");
    let failed = entry.failures.server_error as f64 / entry.requests as f64;

    // Out: the next interval's requests all go elsewhere.
    let before = received(&servers[2]).await;
    let answers = send_many(&client, 500, 16).await;
    assert!(answers
        .iter()
        .all(|a| a.as_deref().is_ok_and(|name| name != "c")));
    assert_eq!(received(&servers[2]).await, before);
    println!(
        "health: 30% vs 1% 503s over 10 backends: ejected by success rate after {intervals} interval(s) ({} requests, {:.0}% failed); 0 of 500 requests reached it while out",
        entry.requests,
        failed * 100.0
    );
    assert_settled(&balancer);
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_alone_never_eject_a_backend_failing_30_percent_spread_out() {
    let _clock = hold_clock();
    let servers = fleet().await;
    let bad = servers[2].uri();
    let balancer = balancer(&servers, OutlierDetection::default());
    let client = client(&balancer);
    for _ in 0..3 {
        one_interval(&client).await;
    }
    let stats = balancer.stats();
    let entry = stats.endpoint(&bad).unwrap();
    assert!(!entry.ejected);
    assert_eq!(stats.ejections.total, 0);
    assert_eq!(entry.requests, 3 * PER_INTERVAL as u64 / 10);
    assert_eq!(entry.failures.server_error, entry.requests * 30 / 100);
    println!(
        "health: consecutive failures (5) alone over three intervals: {} of {} requests to the 30% backend failed, never 5 in a row: not ejected",
        entry.failures.server_error, entry.requests
    );
    assert_settled(&balancer);
}
