//! Least response time against real loopback servers: slow and failing
//! backends get little traffic, weights scale it, and a slow backend is
//! still used when the fast ones are busy.

use crate::support;

use std::collections::HashMap;
use std::time::Duration;

use support::*;
use tower_lb::{Balancer, Policy};
use wiremock::ResponseTemplate;

/// Backends "a".."d" answering 200 after `fast`, and "e" answering
/// `slow_answer`.
async fn fleet(fast: Duration, slow_answer: ResponseTemplate) -> Vec<Server> {
    let mut servers = Vec::new();
    for i in 0..4 {
        servers.push(backend(&name(i), ResponseTemplate::new(200).set_delay(fast)).await);
    }
    servers.push(backend("e", slow_answer).await);
    servers
}

async fn shares(
    servers: &[Server],
    policy: Policy,
    count: usize,
    concurrency: usize,
) -> HashMap<String, f64> {
    let balancer = balancer_over(servers, policy);
    let client = client(&balancer);
    let mut counts: HashMap<String, usize> = HashMap::new();
    for result in send_many(&client, count, concurrency).await {
        *counts.entry(result.unwrap()).or_default() += 1;
    }
    assert_settled(&balancer);
    counts
        .into_iter()
        .map(|(name, n)| (name, n as f64 / count as f64))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_gets_far_less_than_its_fair_share() {
    let servers = fleet(
        Duration::from_millis(2),
        ResponseTemplate::new(200).set_delay(Duration::from_millis(40)),
    )
    .await;
    for policy in [
        Policy::least_response_time(),
        Policy::least_response_time().exact(),
    ] {
        let shares = shares(&servers, policy.clone().into(), 2_000, 16).await;
        let slow = shares.get("e").copied().unwrap_or(0.0);
        println!(
            "least time {policy:?}: slow backend share {:.2}%",
            slow * 100.0
        );
        assert!(slow < 0.05, "the slow backend got {slow}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_fails_fast_does_not_look_fast() {
    let servers = fleet(Duration::from_millis(2), ResponseTemplate::new(503)).await;
    let shares = shares(&servers, Policy::least_response_time().into(), 2_000, 16).await;
    let failing = shares.get("e").copied().unwrap_or(0.0);
    println!(
        "least time: instant-503 backend share {:.2}%",
        failing * 100.0
    );
    assert!(failing < 0.10, "the failing backend got {failing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slow_backend_is_still_capacity_when_the_fast_ones_are_busy() {
    let servers = fleet(
        Duration::from_millis(5),
        ResponseTemplate::new(200).set_delay(Duration::from_millis(20)),
    )
    .await;
    // 128 in flight over four fast backends is 32 each: 5 ms x 33 is well
    // above the slow one's 20 ms x (a few + 1).
    let shares = shares(&servers, Policy::least_response_time().into(), 3_000, 128).await;
    let slow = shares.get("e").copied().unwrap_or(0.0);
    println!(
        "least time, busy fleet: slow backend share {:.2}%",
        slow * 100.0
    );
    assert!(slow > 0.01, "the slow backend was never used: {slow}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_scale_the_share_of_equally_fast_backends() {
    let fast = ResponseTemplate::new(200).set_delay(Duration::from_millis(3));
    let servers = [backend("a", fast.clone()).await, backend("b", fast).await];
    let balancer = Balancer::builder()
        .endpoint_weighted(servers[0].uri(), 1)
        .endpoint_weighted(servers[1].uri(), 3)
        .policy(Policy::least_response_time())
        .build()
        .unwrap();
    let client = client(&balancer);
    let results = send_many(&client, 2_000, 16).await;
    let heavy = results
        .iter()
        .filter(|r| r.as_deref().unwrap() == "b")
        .count() as f64
        / 2_000.0;
    println!(
        "least time, weights 1:3: weight-3 share {:.1}%",
        heavy * 100.0
    );
    assert!((0.6..0.9).contains(&heavy), "weight 3 got {heavy}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equally_fast_backends_each_get_a_fair_part() {
    let fast = ResponseTemplate::new(200).set_delay(Duration::from_millis(1));
    let mut servers = Vec::new();
    for i in 0..4 {
        servers.push(backend(&name(i), fast.clone()).await);
    }
    let shares = shares(&servers, Policy::least_response_time().into(), 2_000, 16).await;
    let mut sorted: Vec<(String, f64)> = shares.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    println!("least time, four equal backends: {sorted:?}");
    assert_eq!(sorted.len(), 4, "a backend got nothing: {sorted:?}");
    for (name, share) in &sorted {
        assert!(
            *share > 0.125,
            "{name} got {share}: under half its fair share"
        );
    }
}
