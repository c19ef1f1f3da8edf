//! Learned affinity: a backend that issues a session cookie keeps the client
//! that stores it, through the balancer's cookie jar.
#![cfg(feature = "cookies")]

mod support;

use support::*;
use tower::{ServiceBuilder, ServiceExt};
use tower_lb::{Balancer, HttpToReqwest, Policy, RequestKey, SessionKey};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

fn policy() -> Policy {
    Policy::ring_hash()
        .key(RequestKey::cookie("JSESSIONID"))
        .fallback(Policy::round_robin())
        .into()
}

#[tokio::test]
async fn the_backend_that_set_the_session_cookie_keeps_the_client() {
    let servers: Vec<MockServer> =
        futures::future::join_all((0..5).map(|_| MockServer::start())).await;
    let urls: Vec<String> = servers.iter().map(|s| s.uri()).collect();
    let balancer = urls
        .iter()
        .fold(Balancer::builder(), |b, url| b.endpoint(url))
        .policy(policy())
        .build()
        .unwrap();

    // Backend "a" issues a session id that hashing alone would place
    // elsewhere, so only learning can bring the client back to it.
    let plain = urls
        .iter()
        .fold(Balancer::builder(), |b, url| b.endpoint(url))
        .policy(policy())
        .build()
        .unwrap();
    let session = (0..)
        .map(|i| format!("sess-{i}"))
        .find(|s| *plain.locate(&SessionKey::new(s)).unwrap() != *urls[0])
        .unwrap();
    for (i, server) in servers.iter().enumerate() {
        let cookie = if i == 0 {
            session.clone()
        } else {
            format!("other-{i}")
        };
        Mock::given(any())
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header(BACKEND, name(i))
                    .insert_header(
                        "set-cookie",
                        format!("JSESSIONID={cookie}; Path=/; HttpOnly"),
                    ),
            )
            .mount(server)
            .await;
    }

    let http = reqwest::Client::builder()
        .cookie_provider(balancer.cookie_jar())
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(balancer.layer())
        .service(HttpToReqwest::new(http));
    let send = |path: &'static str| {
        let client = client.clone();
        async move { backend_name(&client.oneshot(get(path)).await.unwrap()) }
    };

    // No cookie yet: the fallback (round robin) starts at "a", which sets one.
    assert_eq!(send("/login").await, "a");
    // From then on the stored cookie brings every request back to "a".
    for _ in 0..20 {
        assert_eq!(send("/cart").await, "a");
    }
    assert_eq!(
        balancer.locate(&SessionKey::new(&session)).as_deref(),
        Some(urls[0].as_str())
    );
    // The backend saw its own cookie come back.
    let last = servers[0].received_requests().await.unwrap().pop().unwrap();
    assert_eq!(
        last.headers["cookie"],
        format!("JSESSIONID={session}").as_str()
    );

    // Drained, "a" gets nothing; the session goes where its cookie hashes.
    balancer.drain(&urls[0]).unwrap();
    let moved_to = send("/cart").await;
    assert_ne!(moved_to, "a");
    assert_eq!(received(&servers[0]).await, 21);
}
