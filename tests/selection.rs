//! Which backend gets how many requests, for each policy, against real
//! loopback servers.

use crate::support;

use std::collections::HashMap;

use support::*;
use tower_lb::{Balancer, Policy};

fn shares(names: &[String]) -> HashMap<&str, usize> {
    let mut counts = HashMap::new();
    for n in names {
        *counts.entry(n.as_str()).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn weights_5_1_1_interleave_like_nginx() {
    let servers = backends(3).await;
    let balancer = Balancer::builder()
        .endpoint_weighted(servers[0].uri(), 5)
        .endpoint_weighted(servers[1].uri(), 1)
        .endpoint_weighted(servers[2].uri(), 1)
        .build()
        .unwrap();
    let client = client(&balancer);
    let mut order = String::new();
    for _ in 0..14 {
        order += &send(&client, "/").await.unwrap();
    }
    assert_eq!(order, "aabacaaaabacaa");
}

#[tokio::test]
async fn weighted_shares_are_exact_over_whole_cycles() {
    let servers = backends(3).await;
    let balancer = Balancer::builder()
        .endpoint_weighted(servers[0].uri(), 1)
        .endpoint_weighted(servers[1].uri(), 2)
        .endpoint_weighted(servers[2].uri(), 3)
        .build()
        .unwrap();
    let client = client(&balancer);
    for _ in 0..100 * 6 {
        send(&client, "/").await.unwrap();
    }
    // Counted by the servers themselves, and by the balancer.
    let counts = [
        received(&servers[0]).await,
        received(&servers[1]).await,
        received(&servers[2]).await,
    ];
    assert_eq!(counts, [100, 200, 300]);
    let stats = balancer.stats();
    let requests: Vec<u64> = stats.endpoints.iter().map(|e| e.requests).collect();
    assert_eq!(requests, [100, 200, 300]);
    assert_settled(&balancer);
}

#[tokio::test]
async fn weighted_shares_hold_within_one_percent_over_10000_concurrent_requests() {
    let weights = [5u32, 3, 1, 1];
    let servers = backends(weights.len()).await;
    let mut builder = Balancer::builder().policy(Policy::weighted_round_robin());
    for (server, &w) in servers.iter().zip(&weights) {
        builder = builder.endpoint_weighted(server.uri(), w);
    }
    let balancer = builder.build().unwrap();
    let client = client(&balancer);

    let results = send_many(&client, 10_000, 64).await;
    let names: Vec<String> = results.into_iter().map(|r| r.unwrap()).collect();
    let counts = shares(&names);
    let total: u32 = weights.iter().sum();
    for (i, &w) in weights.iter().enumerate() {
        let expected = f64::from(w) / f64::from(total);
        let got = counts[name(i).as_str()] as f64 / 10_000.0;
        eprintln!(
            "weighted share {}: weight {w}, expected {:.2}%, got {:.2}% ({} requests)",
            name(i),
            expected * 100.0,
            got * 100.0,
            counts[name(i).as_str()]
        );
        assert!(
            (got - expected).abs() <= 0.01,
            "{}: {got} vs {expected}",
            name(i)
        );
        assert_eq!(received(&servers[i]).await, counts[name(i).as_str()]);
    }
    assert_settled(&balancer);
}

#[tokio::test]
async fn round_robin_ignores_weights_but_not_drain() {
    let servers = backends(3).await;
    let balancer = Balancer::builder()
        .endpoint_weighted(servers[0].uri(), 9)
        .endpoint_weighted(servers[1].uri(), 1)
        .endpoint_weighted(servers[2].uri(), 0)
        .policy(Policy::round_robin())
        .build()
        .unwrap();
    let client = client(&balancer);
    let mut order = String::new();
    for _ in 0..6 {
        order += &send(&client, "/").await.unwrap();
    }
    assert_eq!(order, "ababab");
    assert_eq!(received(&servers[2]).await, 0);
}

#[tokio::test]
async fn random_follows_weights() {
    let servers = backends(2).await;
    let balancer = Balancer::builder()
        .endpoint_weighted(servers[0].uri(), 1)
        .endpoint_weighted(servers[1].uri(), 3)
        .policy(Policy::random())
        .build()
        .unwrap();
    let client = client(&balancer);
    let names: Vec<String> = send_many(&client, 4_000, 32)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let counts = shares(&names);
    // Expected 1,000 to "a"; the standard deviation is about 27.
    assert!((850..1150).contains(&counts["a"]), "{counts:?}");
    assert_eq!(counts["a"] + counts["b"], 4_000);
}
