//! Acceptance probes for issue 27, written as a user reading README's
//! "Passive health (outlier detection)" / "Active health checks" and
//! docs/health.md would check them: the defaults table, the edges of the
//! detectors and the counters, on real wiremock backends and tokio's
//! paused clock held still while they answer (`hold_clock`).

use crate::support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use support::*;
use tower_lb::{
    ActiveHealthCheck, Balancer, Detector, FailurePercentage, HttpToReqwest, OutlierDetection,
    Policy, Retries, SuccessRate,
};
use wiremock::matchers::{any, path};
use wiremock::{Mock, Request, Respond, ResponseTemplate};

const INTERVAL: Duration = Duration::from_secs(10);

/// Answers 503 to `percent` of its requests, spread evenly (under 50%,
/// never two in a row; at 50%, every other one).
struct Spread {
    percent: u64,
    answered: AtomicU64,
}

impl Respond for Spread {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let n = self.answered.fetch_add(1, Ordering::Relaxed);
        let fails = (n + 1) * self.percent / 100 > n * self.percent / 100;
        ResponseTemplate::new(if fails { 503 } else { 200 })
    }
}

/// `n` backends; each fails the share given by `percent(i)`.
async fn fleet(n: usize, percent: impl Fn(usize) -> u64) -> Vec<Server> {
    let mut servers = Vec::new();
    for i in 0..n {
        let server = Server::start().await;
        Mock::given(any())
            .respond_with(Spread {
                percent: percent(i),
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
        .outlier_detection(detection)
        .retry(Retries::disabled())
        .seed(7)
        .build()
        .unwrap()
}

/// `per_endpoint` requests to each endpoint, then the interval's end.
async fn one_interval(balancer: &Balancer, servers: &[Server], per_endpoint: usize) {
    let client = client(balancer);
    let answers = send_many(&client, per_endpoint * servers.len(), 8).await;
    assert!(answers.iter().all(Result::is_ok), "every request answered");
    tokio::time::advance(INTERVAL).await;
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
}

fn out(balancer: &Balancer, server: &Server) -> bool {
    balancer.stats().endpoint(server.uri()).unwrap().ejected
}

/// docs/health.md: success rate is "off" in `default()` and "on" in
/// `envoy()` (ten endpoints, so Envoy's 10% allows one ejection).
#[tokio::test(start_paused = true)]
async fn success_rate_is_off_in_default_and_on_in_envoy() {
    let _clock = hold_clock();
    for (detection, ejected) in [
        (OutlierDetection::default(), false),
        (OutlierDetection::envoy(), true),
    ] {
        let servers = fleet(10, |i| if i == 2 { 30 } else { 0 }).await;
        let balancer = balancer(&servers, detection.interval(INTERVAL));
        one_interval(&balancer, &servers, 120).await;
        let stats = balancer.stats();
        assert_eq!(out(&balancer, &servers[2]), ejected, "{stats:?}");
        assert_eq!(
            stats.ejections.enforced(Detector::SuccessRate),
            u64::from(ejected)
        );
        assert_eq!(stats.ejections.total, u64::from(ejected));
    }
}

/// `minimum_hosts` 5 (the default): a fleet of 4 is never judged by
/// success rate, even where the spread would eject (factor 1.0: the
/// control with `minimum_hosts(4)` ejects).
#[tokio::test(start_paused = true)]
async fn success_rate_never_ejects_in_a_fleet_of_four_under_minimum_hosts_five() {
    let _clock = hold_clock();
    for (settings, ejected) in [
        (SuccessRate::default().stdev_factor(1.0), false),
        (
            SuccessRate::default().stdev_factor(1.0).minimum_hosts(4),
            true,
        ),
    ] {
        let servers = fleet(4, |i| if i == 2 { 30 } else { 0 }).await;
        let detection = OutlierDetection::default().success_rate(settings);
        let balancer = balancer(&servers, detection.interval(INTERVAL));
        for _ in 0..2 {
            one_interval(&balancer, &servers, 120).await;
        }
        let stats = balancer.stats();
        assert_eq!(out(&balancer, &servers[2]), ejected, "{stats:?}");
        assert_eq!(
            stats.ejections.enforced(Detector::SuccessRate),
            u64::from(ejected)
        );
        assert_eq!(stats.ejections.refused_by_max_percent, 0);
    }
}

/// "a failure percentage exactly at the threshold ... aligned: ejects";
/// one point above it does not.
#[tokio::test(start_paused = true)]
async fn failure_percentage_ejects_exactly_at_the_threshold() {
    let _clock = hold_clock();
    for (threshold, ejected) in [(50, true), (51, false)] {
        let servers = fleet(5, |i| if i == 1 { 50 } else { 0 }).await;
        let settings = FailurePercentage::default()
            .threshold(threshold)
            .request_volume(20);
        let detection = OutlierDetection::default().failure_percentage_with(settings);
        let balancer = balancer(&servers, detection.interval(INTERVAL));
        one_interval(&balancer, &servers, 20).await;
        let stats = balancer.stats();
        let entry = stats.endpoint(servers[1].uri()).unwrap();
        assert_eq!(entry.failures.server_error, 10, "{entry:?}");
        assert_eq!(entry.ejected, ejected, "threshold {threshold}: {stats:?}");
        if ejected {
            assert_eq!(entry.ejected_by, Some(Detector::FailurePercentage));
        }
    }
}

/// 3 endpoints, 10%: ⌊0.3⌋ = 0 ejections allowed, "at least one" under
/// `always_eject_one(true)` (the default), none under `false`, where the
/// refusal is counted. Then the counters after a known run.
#[tokio::test(start_paused = true)]
async fn always_eject_one_on_three_endpoints_and_the_ejection_counters() {
    let _clock = hold_clock();
    // Off: the dead one (every answer 503) is never ejected; each run of 5
    // is refused and counted.
    let servers = fleet(3, |i| if i == 0 { 100 } else { 0 }).await;
    let detection = OutlierDetection::default().always_eject_one(false);
    let lb = balancer(&servers, detection);
    let answers = send_many(&client(&lb), 30, 1).await;
    assert!(answers.iter().all(Result::is_ok));
    let stats = lb.stats();
    assert!(!out(&lb, &servers[0]));
    assert_eq!(stats.ejections.total, 0);
    assert_eq!(stats.ejections.refused_by_max_percent, 2, "{stats:?}");

    // On (default): two dead, one may go; the other's run is refused.
    let servers = fleet(3, |i| if i < 2 { 100 } else { 0 }).await;
    let lb = balancer(&servers, OutlierDetection::default());
    let answers = send_many(&client(&lb), 30, 1).await;
    assert!(answers.iter().all(Result::is_ok));
    let stats = lb.stats();
    assert_eq!(stats.ejections.active, 1, "{stats:?}");
    assert_eq!(stats.ejections.total, 1);
    assert_eq!(stats.ejections.enforced(Detector::ConsecutiveFailures), 1);
    assert!(stats.ejections.refused_by_max_percent >= 1);
    assert_eq!(stats.ejections.not_enforced, 0);
    let first = &servers[0];
    assert_eq!(
        stats.endpoint(first.uri()).unwrap().ejected_by,
        Some(Detector::ConsecutiveFailures)
    );
    // The base ejection time (30 s) later it is back on the clock alone.
    tokio::time::advance(Duration::from_secs(30)).await;
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    let stats = lb.stats();
    assert_eq!(stats.ejections.active, 0, "{stats:?}");
    assert_eq!(stats.ejections.total, 1);
    assert_eq!(stats.endpoint(first.uri()).unwrap().ejected_by, None);
}

/// Waits (wall clock) until every check sent has its answer counted.
async fn checks_settled(balancer: &Balancer) {
    let started = std::time::Instant::now();
    loop {
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        let stats = balancer.stats();
        if stats
            .endpoints
            .iter()
            .all(|e| e.checks.passed + e.checks.failed == e.checks.sent)
        {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{stats:?}");
        tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(2)))
            .await
            .unwrap();
    }
}

async fn step(balancer: &Balancer, ms: u64) {
    tokio::time::advance(Duration::from_millis(ms)).await;
    checks_settled(balancer).await;
}

async fn health_backends(health: &[u16]) -> Vec<Server> {
    let mut servers = Vec::new();
    for &status in health {
        let server = Server::start().await;
        Mock::given(path("/health"))
            .respond_with(ResponseTemplate::new(status))
            .mount(&server)
            .await;
        Mock::given(any())
            .respond_with(ResponseTemplate::new(200))
            .mount(&server)
            .await;
        servers.push(server);
    }
    servers
}

async fn checks_of(server: &Server) -> usize {
    let received = server.received_requests().await.unwrap_or_default();
    received
        .iter()
        .filter(|r| r.url.path() == "/health")
        .count()
}

/// A 404 health path: out with `ActiveCheck` at its first check, and the
/// `checks` counters exact; checks are not requests.
#[tokio::test(start_paused = true)]
async fn a_404_health_path_takes_the_endpoint_out_and_check_counters_are_exact() {
    let _clock = hold_clock();
    let servers = health_backends(&[200, 200, 404]).await;
    let balancer = balancer(&servers, OutlierDetection::default());
    let check = ActiveHealthCheck::new("/health")
        .interval(Duration::from_secs(1))
        .interval_jitter(Duration::ZERO);
    balancer
        .health_checks::<_, reqwest::Body>(check, HttpToReqwest::new(plain_reqwest()))
        .unwrap();
    step(&balancer, 100).await;
    for _ in 0..3 {
        step(&balancer, 1_000).await;
    }
    let stats = balancer.stats();
    let bad = stats.endpoint(servers[2].uri()).unwrap();
    assert!(bad.ejected, "{stats:?}");
    assert_eq!(bad.ejected_by, Some(Detector::ActiveCheck));
    // Three intervals and the first round: at least three checks (the
    // phase decides whether the first round's interval holds a second).
    let sent = bad.checks.sent;
    assert!(sent >= 3, "{bad:?}");
    assert_eq!(bad.checks.failed, sent);
    assert_eq!(bad.checks.passed, 0);
    assert!(bad.checks.failing);
    assert_eq!(bad.requests, 0, "checks are not requests");
    assert_eq!(
        checks_of(&servers[2]).await as u64,
        sent,
        "counted = received"
    );
    let good = stats.endpoint(servers[0].uri()).unwrap();
    assert_eq!(good.checks.passed, good.checks.sent);
    assert_eq!(checks_of(&servers[0]).await as u64, good.checks.sent);
    assert!(!good.ejected && !good.checks.failing);
    // "fails ... its first check: taken out ... `enforced(ActiveCheck)`
    // shows it": once, not once per failed check.
    assert_eq!(stats.ejections.enforced(Detector::ActiveCheck), 1);
    assert_eq!(stats.ejections.refused_by_max_percent, 0);
    // No user request reaches it.
    let answers = send_many(&client(&balancer), 20, 1).await;
    assert!(answers.iter().all(Result::is_ok));
    let received = servers[2].received_requests().await.unwrap();
    assert_eq!(received.len() as u64, sent, "only its checks");
}

/// A removed endpoint's checks stop.
#[tokio::test(start_paused = true)]
async fn a_removed_endpoints_checks_stop() {
    let _clock = hold_clock();
    let servers = health_backends(&[200, 200, 200]).await;
    let balancer = balancer(&servers, OutlierDetection::default());
    let check = ActiveHealthCheck::new("/health")
        .interval(Duration::from_secs(1))
        .interval_jitter(Duration::ZERO);
    balancer
        .health_checks::<_, reqwest::Body>(check, HttpToReqwest::new(plain_reqwest()))
        .unwrap();
    step(&balancer, 1_000).await;
    balancer.remove(servers[1].uri()).unwrap();
    let before = checks_of(&servers[1]).await;
    let other = checks_of(&servers[0]).await;
    for _ in 0..3 {
        step(&balancer, 1_000).await;
    }
    assert_eq!(checks_of(&servers[1]).await, before);
    assert_eq!(checks_of(&servers[0]).await, other + 3);
}

/// "base × times ejected": the second ejection of an endpoint back for no
/// interval lasts 60 s (base 30 s), to the second.
#[tokio::test(start_paused = true)]
async fn a_second_ejection_lasts_twice_the_base() {
    let _clock = hold_clock();
    let servers = fleet(3, |i| if i == 0 { 100 } else { 0 }).await;
    let lb = balancer(&servers, OutlierDetection::default());
    let users = client(&lb);
    for expected in [30, 60] {
        let mut sent = 0;
        while !out(&lb, &servers[0]) {
            send(&users, "/r").await.unwrap();
            sent += 1;
            assert!(sent <= 15, "ejected after 5 of its requests");
        }
        tokio::time::advance(Duration::from_secs(expected - 1)).await;
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        assert!(out(&lb, &servers[0]), "still out at {}s", expected - 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        assert!(!out(&lb, &servers[0]), "back at {expected}s");
    }
    assert_eq!(lb.stats().ejections.total, 2);
}
