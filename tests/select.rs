//! `Balancer::select`: picking by hand for requests sent without the layer,
//! against wiremock backends on loopback.

use crate::support;

use std::collections::HashMap;

use support::{assert_settled, backend, backends, balancer_over, received, RefusingPort, BACKEND};
use tower_lb::{Balancer, Error, OutlierDetection, Policy, SessionKey};
use wiremock::ResponseTemplate;

/// Selects, routes a `reqwest::Request` and sends it with a plain client,
/// then reports the outcome; returns the answering backend's name or the
/// error.
async fn send_by_hand(
    balancer: &Balancer,
    client: &reqwest::Client,
    session: Option<&str>,
) -> Result<String, String> {
    let url = reqwest::Url::parse("http://backend/item").map_err(|e| e.to_string())?;
    let mut request = reqwest::Request::new(http::Method::GET, url);
    if let Some(session) = session {
        request.headers_mut().insert(
            "x-session",
            http::HeaderValue::from_str(session).map_err(|e| e.to_string())?,
        );
    }
    let selection = balancer.select(&request).map_err(|e| e.to_string())?;
    selection.route(&mut request).map_err(|e| e.to_string())?;
    match client.execute(request).await {
        Ok(response) => {
            selection.finish(response.status());
            Ok(response
                .headers()
                .get(BACKEND)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_owned())
        }
        Err(error) => {
            let message = error.to_string();
            selection.fail(&error);
            Err(message)
        }
    }
}

#[tokio::test]
async fn selections_follow_the_policy_and_are_counted() {
    let servers = backends(3).await;
    let balancer = servers
        .iter()
        .enumerate()
        .fold(Balancer::builder(), |b, (i, s)| {
            b.endpoint_weighted(s.uri(), i as u32 + 1)
        })
        .build()
        .unwrap();
    let client = reqwest::Client::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..60 {
        let name = send_by_hand(&balancer, &client, None).await.unwrap();
        *counts.entry(name).or_default() += 1;
    }
    assert_eq!(counts["a"], 10);
    assert_eq!(counts["b"], 20);
    assert_eq!(counts["c"], 30);
    for (i, server) in servers.iter().enumerate() {
        assert_eq!(received(server).await, 10 * (i + 1));
    }
    let stats = balancer.stats();
    assert_eq!(stats.requests(), 60);
    assert_eq!(stats.endpoints.iter().map(|e| e.successes).sum::<u64>(), 60);
    assert_settled(&balancer);
}

#[tokio::test]
async fn a_selection_dropped_unreported_counts_as_cancelled() {
    let servers = backends(2).await;
    let balancer = balancer_over(&servers, Policy::round_robin());
    let request = http::Request::get("/item").body(()).unwrap();
    let first = balancer.select(&request).unwrap();
    let second = balancer.select(&request).unwrap();
    assert_ne!(first.endpoint(), second.endpoint());
    assert_eq!(balancer.stats().in_flight(), 2);
    drop(first);
    drop(second);
    let stats = balancer.stats();
    assert_eq!(stats.in_flight(), 0);
    assert_eq!(stats.endpoints.iter().map(|e| e.cancelled).sum::<u64>(), 2);
    assert_settled(&balancer);
}

#[tokio::test]
async fn reported_failures_eject_the_endpoint() {
    let good = backend("good", ResponseTemplate::new(200)).await;
    let bad = backend("bad", ResponseTemplate::new(503)).await;
    let balancer = Balancer::builder()
        .endpoint(good.uri())
        .endpoint(bad.uri())
        .policy(Policy::round_robin())
        .outlier_detection(OutlierDetection::default().max_ejection_percent(50))
        .build()
        .unwrap();
    let client = reqwest::Client::new();
    for _ in 0..60 {
        send_by_hand(&balancer, &client, None).await.unwrap();
    }
    // Five 503s eject "bad"; every request after that goes to "good".
    assert_eq!(received(&bad).await, 5);
    assert_eq!(received(&good).await, 55);
    let stats = balancer.stats();
    let bad_stats = stats.endpoint(bad.uri()).unwrap();
    assert!(bad_stats.ejected);
    assert_eq!(bad_stats.failures.server_error, 5);
    assert_settled(&balancer);
}

#[tokio::test]
async fn a_connect_error_is_reported_as_one() {
    let refusing = RefusingPort::new();
    let url = refusing.url.clone();
    let balancer = Balancer::builder().endpoint(&url).build().unwrap();
    let error = send_by_hand(&balancer, &reqwest::Client::new(), None)
        .await
        .unwrap_err();
    assert!(!error.is_empty());
    let stats = balancer.stats();
    assert_eq!(stats.endpoints[0].failures.connect, 1);
    assert_settled(&balancer);
}

#[tokio::test]
async fn selection_uses_the_request_key() {
    let servers = backends(5).await;
    let balancer = balancer_over(
        &servers,
        Policy::maglev().key(tower_lb::RequestKey::header("x-session")),
    );
    let client = reqwest::Client::new();
    for user in 0..50 {
        let session = format!("user-{user}");
        let first = send_by_hand(&balancer, &client, Some(&session))
            .await
            .unwrap();
        let again = send_by_hand(&balancer, &client, Some(&session))
            .await
            .unwrap();
        assert_eq!(first, again, "{session} moved");
        let home = balancer.locate(&SessionKey::new(&session)).unwrap();
        let server = servers.iter().position(|s| *s.uri() == *home).unwrap();
        assert_eq!(first, support::name(server));
    }
}

#[tokio::test]
async fn an_empty_set_is_a_typed_error() {
    let balancer = Balancer::builder().build().unwrap();
    let request = http::Request::get("/").body(()).unwrap();
    assert!(matches!(
        balancer.select(&request),
        Err(Error::NoEndpointAvailable)
    ));
}

#[tokio::test]
async fn a_selection_sticks_by_the_session_key_header_and_removes_it_before_sending() {
    let servers = backends(3).await;
    let balancer = balancer_over(&servers, Policy::maglev());
    let client = reqwest::Client::new();
    for user in 0..20 {
        let key = SessionKey::new(format!("user-{user}"));
        let home = balancer.locate(&key).unwrap();
        let mut request = client.get("http://backend/item").build().unwrap();
        key.attach(&mut request);
        let selection = balancer.select(&request).unwrap();
        selection.route(&mut request).unwrap();
        assert!(request.headers().get(SessionKey::HEADER).is_none());
        let response = client.execute(request).await.unwrap();
        selection.finish(response.status());
        let answered = response.headers().get(BACKEND).unwrap().to_str().unwrap();
        let server = servers.iter().position(|s| *s.uri() == *home).unwrap();
        assert_eq!(answered, support::name(server), "user-{user} left its home");
    }
    for server in &servers {
        for request in server.received_requests().await.unwrap() {
            assert!(
                !request.headers.contains_key(SessionKey::HEADER),
                "the session-key header reached a backend"
            );
        }
    }
    assert_settled(&balancer);
}

/// `{:?}` of a selection is a summary a log line can carry: the endpoint,
/// not the endpoint's lanes, estimate table and locks (3.4 KB before).
#[tokio::test]
async fn a_selection_debugs_as_a_short_summary_naming_its_endpoint() {
    let mut builder = Balancer::builder().policy(Policy::least_response_time());
    for i in 0..10 {
        builder = builder.endpoint(format!("http://127.0.0.{}:8080/api", i + 1));
    }
    let balancer = builder.build().unwrap();
    let request = http::Request::get("/").body(()).unwrap();
    let selection = balancer.select(&request).unwrap();
    let shown = format!("{selection:?}");
    assert!(shown.contains(selection.endpoint()), "{shown}");
    assert!(shown.len() < 100, "{} bytes: {shown}", shown.len());
    let pretty = format!("{selection:#?}");
    assert!(pretty.len() < 100, "{} bytes: {pretty}", pretty.len());
}
