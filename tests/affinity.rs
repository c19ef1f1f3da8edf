//! Session affinity end to end: keys from a typed value, a header or a
//! cookie keep a user on one backend, from any client instance, and never
//! show up in clear.
#![cfg(feature = "reqwest-middleware")]

use crate::support;

use std::collections::HashMap;

use futures::StreamExt;
use support::*;
use tower::ServiceExt;
use tower_lb::{Balancer, Policy, RequestKey, SessionKey};

const KEYS: usize = 1_000;
const REQUESTS_PER_KEY: usize = 10;

fn sticky_balancer(urls: &[String]) -> Balancer {
    urls.iter()
        .fold(Balancer::builder(), |b, url| b.endpoint(url))
        .policy(
            Policy::ring_hash()
                .key(RequestKey::session().or(RequestKey::cookie("JSESSIONID")))
                .fallback(Policy::round_robin()),
        )
        .build()
        .unwrap()
}

fn middleware_client(balancer: &Balancer) -> reqwest_middleware::ClientWithMiddleware {
    reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(balancer.clone())
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_keys_each_stay_on_one_backend_and_spread_over_all() {
    let servers = backends(5).await;
    let urls: Vec<String> = servers.iter().map(|s| s.uri()).collect();
    let balancer = sticky_balancer(&urls);
    let client = middleware_client(&balancer);

    let requests = (0..KEYS).flat_map(|k| (0..REQUESTS_PER_KEY).map(move |_| k));
    let seen: Vec<(usize, String)> = futures::stream::iter(requests)
        .map(|k| {
            let client = client.clone();
            async move {
                let response = client
                    .get("http://backend/cart")
                    .with_extension(SessionKey::new(format!("user-{k}")))
                    .send()
                    .await
                    .unwrap();
                (k, backend_name(&response))
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;

    let mut home: HashMap<usize, String> = HashMap::new();
    for (k, backend) in &seen {
        let first = home.entry(*k).or_insert_with(|| backend.clone());
        assert_eq!(first, backend, "user-{k} moved between backends");
    }
    let mut keys_per_backend: HashMap<&str, usize> = HashMap::new();
    for backend in home.values() {
        *keys_per_backend.entry(backend).or_default() += 1;
    }
    let max = *keys_per_backend.values().max().unwrap();
    let ratio = max as f64 / (KEYS as f64 / 5.0);
    println!("affinity: {KEYS} keys x {REQUESTS_PER_KEY} requests, every key on one backend; keys per backend {keys_per_backend:?}, max/mean {ratio:.3}");
    assert_eq!(keys_per_backend.len(), 5);
    assert!(ratio <= 1.3, "max/mean {ratio}");
    assert_eq!(
        balancer.stats().requests(),
        (KEYS * REQUESTS_PER_KEY) as u64
    );
    assert_settled(&balancer);
}

#[tokio::test]
async fn two_independent_balancers_put_every_key_on_the_same_backend() {
    let servers = backends(5).await;
    let urls: Vec<String> = servers.iter().map(|s| s.uri()).collect();
    let first = sticky_balancer(&urls);
    let reversed: Vec<String> = urls.iter().rev().cloned().collect();
    let second = sticky_balancer(&reversed);
    for k in 0..KEYS {
        let key = SessionKey::new(format!("user-{k}"));
        assert_eq!(first.locate(&key), second.locate(&key), "user-{k}");
    }
    // And on the wire, through two separate clients.
    let (a, b) = (middleware_client(&first), middleware_client(&second));
    for k in 0..50 {
        let key = SessionKey::new(format!("user-{k}"));
        let via_a = a
            .get("http://backend/")
            .with_extension(key)
            .send()
            .await
            .unwrap();
        let via_b = b
            .get("http://backend/")
            .with_extension(key)
            .send()
            .await
            .unwrap();
        assert_eq!(backend_name(&via_a), backend_name(&via_b));
    }
}

#[tokio::test]
async fn draining_a_backend_moves_only_its_keys_and_they_come_back() {
    let servers = backends(5).await;
    let urls: Vec<String> = servers.iter().map(|s| s.uri()).collect();
    let balancer = sticky_balancer(&urls);
    let keys: Vec<SessionKey> = (0..KEYS)
        .map(|k| SessionKey::new(format!("user-{k}")))
        .collect();
    let before: Vec<_> = keys.iter().map(|k| balancer.locate(k).unwrap()).collect();

    balancer.drain(&urls[1]).unwrap();
    let during: Vec<_> = keys.iter().map(|k| balancer.locate(k).unwrap()).collect();
    let mut moved = 0;
    for (b, d) in before.iter().zip(&during) {
        if **b == *urls[1] {
            assert_ne!(**d, *urls[1]);
            moved += 1;
        } else {
            assert_eq!(b, d, "a key whose backend is fine moved");
        }
    }
    balancer.set_weight(&urls[1], 1).unwrap();
    let after: Vec<_> = keys.iter().map(|k| balancer.locate(k).unwrap()).collect();
    println!("affinity: drain 1 of 5: {moved} of {KEYS} keys moved (only its own), all back after re-admission");
    assert_eq!(before, after);
}

#[tokio::test]
async fn a_session_cookie_keeps_the_user_on_one_backend() {
    let servers = backends(5).await;
    let urls: Vec<String> = servers.iter().map(|s| s.uri()).collect();
    let balancer = sticky_balancer(&urls);
    let client = client(&balancer);
    for user in 0..50 {
        let cookie = format!("theme=dark; JSESSIONID=\"s{user}\"; lang=en");
        let mut homes = Vec::new();
        for _ in 0..4 {
            let request = http::Request::get("/")
                .header("cookie", &cookie)
                .body(reqwest::Body::from(""))
                .unwrap();
            homes.push(backend_name(
                &client.clone().oneshot(request).await.unwrap(),
            ));
        }
        homes.dedup();
        assert_eq!(homes.len(), 1, "user {user} moved: {homes:?}");
    }
}
