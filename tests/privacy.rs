//! Key values never appear in clear: not in logs, `Debug` output or stats.
//! In the `logs` test binary, beside the other tests that capture `tracing`
//! output (tests/logs.rs says why).
#![cfg(feature = "reqwest-middleware")]

use crate::support;

use std::sync::{Arc, Mutex};

use crate::Captured;
use support::*;
use tower_lb::{Balancer, Policy, RequestKey, SessionKey};

#[tokio::test]
async fn key_values_never_appear_in_logs_debug_output_or_stats() {
    let (captured, _guard) = Captured::start(tracing::Level::TRACE);

    let servers = backends(3).await;
    let urls: Vec<String> = servers.iter().map(|s| s.uri()).collect();
    let balancer = urls
        .iter()
        .fold(Balancer::builder(), |b, url| b.endpoint(url))
        .policy(Policy::ring_hash().key(RequestKey::session()))
        .build()
        .unwrap();
    let secret = "secret-user-7f3a";
    let key = SessionKey::new(secret);
    let response = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(balancer.clone())
        .build()
        .get("http://backend/")
        .with_extension(key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let logs = captured.text();
    assert!(
        logs.contains("tower_lb"),
        "the request should have been logged: {logs}"
    );
    for shown in [
        logs,
        format!("{key:?}"),
        format!("{balancer:?}"),
        format!("{:?}", balancer.stats()),
    ] {
        assert!(!shown.contains(secret), "the key leaked: {shown}");
    }
}

/// With the `cookies` feature: a session cookie learned from a backend and
/// kept in the balanced jar appears in no `Debug` output, log line, error,
/// health event or stats.
#[cfg(feature = "cookies")]
#[tokio::test]
async fn session_cookie_values_never_appear_in_logs_debug_output_errors_events_or_stats() {
    use tower::{ServiceBuilder, ServiceExt};
    use tower_lb::{HttpToReqwest, OutlierDetection};
    use wiremock::ResponseTemplate;

    let (captured, _guard) = Captured::start(tracing::Level::TRACE);

    let secret = "cookie-secret-91b2";
    let mut servers = Vec::new();
    for i in 0..2 {
        let template = ResponseTemplate::new(503)
            .insert_header("set-cookie", format!("JSESSIONID={secret}; Path=/"));
        servers.push(backend(&name(i), template).await);
    }
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let balancer = servers
        .iter()
        .fold(Balancer::builder(), |b, s| b.endpoint(s.uri()))
        .policy(Policy::ring_hash().key(RequestKey::cookie("JSESSIONID")))
        .outlier_detection(
            OutlierDetection::default()
                .consecutive_failures(2)
                .on_event(move |event| seen.lock().unwrap().push(format!("{event:?}"))),
        )
        .build()
        .unwrap();
    let jar = balancer.cookie_jar();
    let http = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(balancer.layer())
        .service(HttpToReqwest::new(http));
    let mut errors = Vec::new();
    for _ in 0..6 {
        let request = http::Request::get("/cart").body(String::new()).unwrap();
        match client.clone().oneshot(request).await {
            Ok(response) => assert_eq!(response.status(), 503),
            Err(error) => errors.push(format!("{error} {error:?}")),
        }
    }
    // A refused target's error, too.
    let refused = client
        .clone()
        .oneshot(http::Request::get("/../x").body(String::new()).unwrap())
        .await
        .unwrap_err();
    errors.push(format!("{refused} {refused:?}"));
    // Events go out on the balancer's own thread.
    for _ in 0..100 {
        if !events.lock().unwrap().is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(!events.lock().unwrap().is_empty(), "no health event came");

    assert!(
        format!("{jar:?}").contains("holds_cookies: true"),
        "the jar should hold the session cookie: {jar:?}"
    );
    let logs = captured.text();
    assert!(logs.contains("tower_lb"), "nothing was logged: {logs}");
    let mut shown = vec![
        logs,
        format!("{balancer:?}"),
        format!("{jar:?}"),
        format!("{client:?}"),
        format!("{:?}", balancer.stats()),
        events.lock().unwrap().join("\n"),
    ];
    shown.extend(errors);
    for text in shown {
        assert!(!text.contains(secret), "the cookie leaked: {text}");
    }
}
