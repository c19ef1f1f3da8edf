//! Learned session affinity: the backend that creates a session keeps the
//! client, because the balancer remembers which backend issued the session
//! cookie and reads it from the client's cookie jar.
//!
//! `cargo run --example learned_affinity --features cookies`

use tower::{ServiceBuilder, ServiceExt};
use tower_lb::{Balancer, BoxError, HttpToReqwest, Policy, RequestKey, SessionKey};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Three backends; each hands out its own session id, as an app server does.
    let mut servers = Vec::new();
    for name in ["alpha", "bravo", "charlie"] {
        let server = MockServer::start().await;
        Mock::given(any())
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("x-backend", name)
                    .insert_header("set-cookie", format!("JSESSIONID={name}-7f3a; Path=/")),
            )
            .mount(&server)
            .await;
        servers.push(server);
    }

    let balancer = servers
        .iter()
        .fold(Balancer::builder(), |b, s| b.endpoint(s.uri()))
        .policy(
            Policy::ring_hash()
                .key(RequestKey::cookie("JSESSIONID"))
                .fallback(Policy::round_robin()),
        )
        .build()?;
    // The balancer's jar files every backend's cookies under one site.
    let http = reqwest::Client::builder()
        .cookie_provider(balancer.cookie_jar())
        .build()?;
    let client = ServiceBuilder::new()
        .layer(balancer.layer())
        .service(HttpToReqwest::new(http));

    for path in ["/login", "/cart", "/cart/items", "/checkout", "/orders"] {
        let request = http::Request::get(path).body(reqwest::Body::from(""))?;
        let response = client.clone().oneshot(request).await?;
        let backend = response
            .headers()
            .get("x-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?");
        println!("{path:<12} answered by {backend}");
    }
    println!(
        "the first answer set the session cookie; every later request went back to that backend"
    );

    // Where the hash alone would put that session, with nothing learned:
    let fresh = servers
        .iter()
        .fold(Balancer::builder(), |b, s| b.endpoint(s.uri()))
        .policy(Policy::ring_hash().key(RequestKey::cookie("JSESSIONID")))
        .build()?;
    let by_hash = fresh.locate(&SessionKey::new("alpha-7f3a"));
    let names = ["alpha", "bravo", "charlie"];
    let by_hash = servers
        .iter()
        .position(|s| by_hash.as_deref() == Some(s.uri().as_str()))
        .map_or("?", |i| names[i]);
    println!("(hashing JSESSIONID=alpha-7f3a alone would pick {by_hash})");
    Ok(())
}
