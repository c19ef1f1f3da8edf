//! Consistent hashing end to end: keyed requests against real loopback
//! servers land where the table says, stay there, and fall back when keyless.

use crate::support;

use std::collections::HashMap;

use support::*;
use tower::{ServiceBuilder, ServiceExt};
use tower_lb::{Balancer, ConsistentHash, Error, Policy, RequestKey, SessionKey};

async fn keyed_send(client: &Client, key: &str) -> String {
    let mut request = get("/cart");
    request.extensions_mut().insert(SessionKey::new(key));
    let response = client.clone().oneshot(request).await.unwrap();
    backend_name(&response)
}

/// Backends a..e and a balancer over them with `policy`; also maps each
/// canonical URL to its backend's name.
async fn setup(policy: ConsistentHash) -> (Vec<Server>, Balancer, HashMap<String, String>) {
    let servers = backends(5).await;
    let balancer = balancer_over(&servers, policy);
    let names = servers
        .iter()
        .enumerate()
        .map(|(i, s)| (s.uri(), name(i)))
        .collect();
    (servers, balancer, names)
}

#[tokio::test]
async fn each_key_sticks_to_the_endpoint_the_table_names() {
    for policy in [Policy::ring_hash(), Policy::maglev()] {
        let (_servers, balancer, names) = setup(policy).await;
        let client = client(&balancer);
        let mut per_backend: HashMap<String, usize> = HashMap::new();
        for k in 0..200 {
            let key = format!("user-{k}");
            let home = &names[&*balancer.locate(&SessionKey::new(&key)).unwrap()];
            for _ in 0..5 {
                assert_eq!(&keyed_send(&client, &key).await, home, "{key} moved");
            }
            *per_backend.entry(home.clone()).or_default() += 1;
        }
        assert_eq!(
            per_backend.len(),
            5,
            "200 keys should reach all five backends"
        );
        assert_settled(&balancer);
    }
}

#[tokio::test]
async fn a_header_key_works_for_reqwest_requests() {
    let (_servers, balancer, names) =
        setup(Policy::maglev().key(RequestKey::header("x-user-id"))).await;
    let client = ServiceBuilder::new()
        .layer(balancer.layer())
        .service(reqwest::Client::new());
    for k in 0..20 {
        let user = format!("u{k}");
        let home = &names[&*balancer.locate(&SessionKey::new(&user)).unwrap()];
        let request = reqwest::Client::new()
            .get("http://backend/profile")
            .header("x-user-id", &user)
            .build()
            .unwrap();
        let response = client.clone().oneshot(request).await.unwrap();
        assert_eq!(&response.headers()[BACKEND], home.as_str());
    }
}

#[tokio::test]
async fn a_session_key_attached_to_a_reqwest_request_sticks_and_never_leaves_the_process() {
    for policy in [Policy::ring_hash(), Policy::maglev()] {
        let (servers, balancer, names) = setup(policy).await;
        let client = ServiceBuilder::new()
            .layer(balancer.layer())
            .service(reqwest::Client::new());
        for k in 0..30 {
            let key = SessionKey::new(format!("user-{k}"));
            let home = &names[&*balancer.locate(&key).unwrap()];
            let mut request =
                reqwest::Request::new(http::Method::GET, "http://backend/cart".parse().unwrap());
            key.attach(&mut request);
            let response = client.clone().oneshot(request).await.unwrap();
            assert_eq!(&response.headers()[BACKEND], home.as_str(), "user-{k}");
        }
        for server in &servers {
            for request in server.received_requests().await.unwrap() {
                assert!(!request.headers.contains_key(SessionKey::HEADER));
            }
        }
    }
}

#[tokio::test]
async fn requests_without_a_key_use_the_fallback_policy() {
    let (_servers, balancer, _) = setup(Policy::ring_hash().fallback(Policy::round_robin())).await;
    let client = client(&balancer);
    let mut order = String::new();
    for _ in 0..10 {
        order += &send(&client, "/").await.unwrap();
    }
    assert_eq!(order, "abcdeabcde");
}

#[tokio::test]
async fn a_drained_endpoint_hands_its_keys_on_and_gets_them_back() {
    let (servers, balancer, names) = setup(Policy::ring_hash()).await;
    let client = client(&balancer);
    let keys: Vec<String> = (0..300).map(|k| format!("user-{k}")).collect();
    let mut before = Vec::new();
    for key in &keys {
        before.push(keyed_send(&client, key).await);
    }
    balancer.drain(servers[2].uri()).unwrap();
    let drained = names[&servers[2].uri()].clone();
    for (key, home) in keys.iter().zip(&before) {
        let now = keyed_send(&client, key).await;
        if *home == drained {
            assert_ne!(now, drained, "{key} still sent to the drained endpoint");
        } else {
            assert_eq!(&now, home, "{key} moved though its endpoint is fine");
        }
    }
    balancer.set_weight(servers[2].uri(), 1).unwrap();
    for (key, home) in keys.iter().zip(&before) {
        assert_eq!(
            &keyed_send(&client, key).await,
            home,
            "{key} did not come back"
        );
    }
}

#[test]
fn bad_hash_options_get_a_typed_error() {
    let bad: Vec<(&str, ConsistentHash)> = vec![
        ("load factor below 1", Policy::maglev().load_factor(0.5)),
        ("NaN load factor", Policy::ring_hash().load_factor(f64::NAN)),
        ("table size not prime", Policy::maglev().table_size(65_536)),
        (
            "table size too big",
            Policy::maglev().table_size(2_147_483_647),
        ),
        ("zero virtual nodes", Policy::ring_hash().virtual_nodes(0)),
        ("ring option on Maglev", Policy::maglev().virtual_nodes(100)),
        (
            "Maglev option on the ring",
            Policy::ring_hash().table_size(65_537),
        ),
        (
            "bad header name",
            Policy::ring_hash().key(RequestKey::header("x user")),
        ),
        (
            "hashing fallback",
            Policy::ring_hash().fallback(Policy::maglev()),
        ),
    ];
    for (case, policy) in bad {
        let result = Balancer::builder()
            .endpoint("http://127.0.0.1:8081")
            .policy(policy)
            .build();
        assert!(
            matches!(result, Err(Error::InvalidPolicy { .. })),
            "{case}: {result:?}"
        );
    }
    assert!(Balancer::builder()
        .policy(Policy::maglev().table_size(251).bounded_loads())
        .build()
        .is_ok());
}
