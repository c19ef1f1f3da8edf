//! `ServedBy` in a response's extensions names the backend that answered,
//! with its labels, on every front end that returns a response: checked
//! against what each wiremock backend received and the name it put in its
//! answer, retries included.

use crate::support;

use std::future::Future;
use std::pin::Pin;

use support::*;
use tower::{ServiceBuilder, ServiceExt};
use tower_lb::{Balancer, Endpoint, HttpToReqwest, OutlierDetection, Policy, Retries, ServedBy};
use wiremock::ResponseTemplate;

/// Backends "a" (answers 503), "b" and "c" (200), labelled with their
/// names; round robin, so one request in three is retried off "a".
async fn fleet() -> (Vec<Server>, Balancer) {
    let servers = vec![
        backend("a", ResponseTemplate::new(503)).await,
        backend("b", ResponseTemplate::new(200)).await,
        backend("c", ResponseTemplate::new(200)).await,
    ];
    let balancer = servers
        .iter()
        .enumerate()
        .fold(Balancer::builder(), |b, (i, server)| {
            b.endpoint(
                Endpoint::new(server.uri())
                    .with_label("name", name(i))
                    .with_label("tier", "test"),
            )
        })
        .policy(Policy::round_robin())
        .outlier_detection(OutlierDetection::disabled())
        .retry(Retries::default().idempotent_failures())
        .build()
        .unwrap();
    (servers, balancer)
}

type Sent<'a> = Pin<Box<dyn Future<Output = (Option<ServedBy>, String)> + 'a>>;

/// Sends nine GETs through `send` (which returns the response's
/// `ServedBy` and its `x-backend` header) and checks each: the extension
/// names the backend that answered (its own header says so), one that
/// received the request, with its labels.
async fn check_front_end(
    front_end: &str,
    servers: &[Server],
    send: impl Fn(usize) -> Sent<'static>,
) {
    let mut answered_by = Vec::new();
    for i in 0..9 {
        let mut before = Vec::new();
        for server in servers {
            before.push(received(server).await);
        }
        let (served_by, answered) = send(i).await;
        let served_by = served_by.unwrap_or_else(|| panic!("{front_end}: no ServedBy"));
        let mut got = Vec::new();
        for (server, before) in servers.iter().zip(before) {
            got.push(received(server).await - before);
        }
        let index = servers
            .iter()
            .position(|s| s.uri() == served_by.url())
            .unwrap_or_else(|| panic!("{front_end}: {served_by:?} is no backend"));
        assert_eq!(got[index], 1, "{front_end}: {served_by:?} received {got:?}");
        assert_eq!(
            served_by.labels().get("name"),
            Some(answered.as_str()),
            "{front_end}"
        );
        assert_eq!(served_by.labels().get("tier"), Some("test"), "{front_end}");
        answered_by.push(answered);
    }
    // Every third request went to "a" first and was retried: the answer,
    // and the extension, are the retry's.
    assert!(
        !answered_by.contains(&"a".to_owned()),
        "{front_end}: {answered_by:?}"
    );
    assert!(
        received(&servers[0]).await >= 3,
        "{front_end}: no retry happened"
    );
}

fn url_of(path: usize) -> reqwest::Url {
    reqwest::Url::parse(&format!("http://backend/r/{path}")).unwrap()
}

#[tokio::test]
async fn the_layer_over_http_requests_names_the_backend_that_answered() {
    let (servers, balancer) = fleet().await;
    let client = client(&balancer);
    check_front_end("layer, http::Request", &servers, |i| {
        let client = client.clone();
        Box::pin(async move {
            let response = client.oneshot(get(&format!("/r/{i}"))).await.unwrap();
            (
                response.extensions().get::<ServedBy>().cloned(),
                backend_name(&response),
            )
        })
    })
    .await;
    assert_settled(&balancer);
}

#[tokio::test]
async fn the_layer_over_reqwest_requests_names_the_backend_that_answered() {
    let (servers, balancer) = fleet().await;
    let client = ServiceBuilder::new()
        .layer(balancer.layer())
        .service(plain_reqwest());
    check_front_end("layer, reqwest::Request", &servers, |i| {
        let client = client.clone();
        Box::pin(async move {
            let request = reqwest::Request::new(http::Method::GET, url_of(i));
            let response = client.oneshot(request).await.unwrap();
            (
                response.extensions().get::<ServedBy>().cloned(),
                backend_name(&response),
            )
        })
    })
    .await;
    assert_settled(&balancer);
}

#[tokio::test]
async fn a_service_per_endpoint_names_the_backend_that_answered() {
    let (servers, balancer) = fleet().await;
    let http = plain_reqwest();
    let service = balancer.per_endpoint(move |_: &str| HttpToReqwest::new(http.clone()));
    check_front_end("per endpoint", &servers, |i| {
        let service = service.clone();
        Box::pin(async move {
            let response = service.oneshot(get(&format!("/r/{i}"))).await.unwrap();
            (
                response.extensions().get::<ServedBy>().cloned(),
                backend_name(&response),
            )
        })
    })
    .await;
    assert_settled(&balancer);
}

#[cfg(feature = "reqwest-middleware")]
#[tokio::test]
async fn the_middleware_names_the_backend_that_answered() {
    let (servers, balancer) = fleet().await;
    let client = reqwest_middleware::ClientBuilder::new(plain_reqwest())
        .with(balancer.clone())
        .build();
    check_front_end("middleware", &servers, |i| {
        let client = client.clone();
        Box::pin(async move {
            let response = client.get(url_of(i)).send().await.unwrap();
            (
                response.extensions().get::<ServedBy>().cloned(),
                backend_name(&response),
            )
        })
    })
    .await;
    assert_settled(&balancer);
}

/// Labels changed at runtime are what the next response names.
#[tokio::test]
async fn a_relabelled_endpoint_is_named_with_its_new_labels() {
    let server = backend("a", ResponseTemplate::new(200)).await;
    let balancer = Balancer::builder()
        .endpoint(Endpoint::new(server.uri()).with_label("version", "1"))
        .build()
        .unwrap();
    let client = client(&balancer);
    let version = |response: &reqwest::Response| {
        let served_by = response.extensions().get::<ServedBy>().unwrap();
        served_by.labels().get("version").map(str::to_owned)
    };
    let first = client.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(version(&first).as_deref(), Some("1"));
    balancer
        .insert(Endpoint::new(server.uri()).with_label("version", "2"))
        .unwrap();
    let second = client.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(version(&second).as_deref(), Some("2"));
    // The first response keeps what was true when it was sent.
    assert_eq!(version(&first).as_deref(), Some("1"));
}
