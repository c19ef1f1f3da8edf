//! Nothing is lost: every request gets one answer or one error, failures are
//! classified, cancelled requests release their slot, counters settle at zero.

use crate::support;

use std::error::Error as _;
use std::time::Duration;

use support::*;
use tower::{ServiceBuilder, ServiceExt};
use tower_lb::{Balancer, Error, HttpToReqwest, Policy};
use wiremock::ResponseTemplate;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_at_concurrency_64_are_all_answered() {
    let servers = backends(5).await;
    let mut builder = Balancer::builder();
    for (i, server) in servers.iter().enumerate() {
        builder = builder.endpoint_weighted(server.uri(), i as u32 + 1);
    }
    let balancer = builder.build().unwrap();
    let client = client(&balancer);

    let results = send_many(&client, 10_000, 64).await;
    assert_eq!(results.len(), 10_000);
    assert!(results.iter().all(|r| r.is_ok()));

    let stats = balancer.stats();
    assert_eq!(stats.requests(), 10_000);
    assert_eq!(stats.in_flight(), 0);
    let mut served = 0;
    for (e, server) in stats.endpoints.iter().zip(&servers) {
        assert_eq!(e.successes, e.requests);
        assert_eq!(received(server).await as u64, e.requests);
        assert!(e.latency_ewma.is_some());
        served += e.requests;
    }
    assert_eq!(served, 10_000);
    assert_settled(&balancer);
}

/// A backend that never answers in time, a balancer over it and a client.
async fn stuck_backend() -> (Server, Balancer, Client) {
    let delay = ResponseTemplate::new(200).set_delay(Duration::from_secs(30));
    let stuck = backend("a", delay).await;
    let balancer = Balancer::builder().endpoint(stuck.uri()).build().unwrap();
    let client = client(&balancer);
    (stuck, balancer, client)
}

#[tokio::test]
async fn dropped_request_futures_release_their_in_flight_count() {
    let (stuck, balancer, client) = stuck_backend().await;

    let requests = futures::future::join_all((0..20).map(|_| send(&client, "/")));
    let timed_out = tokio::time::timeout(Duration::from_millis(300), requests).await;
    assert!(timed_out.is_err(), "the backend should not have answered");

    let stats = balancer.stats();
    let e = stats.endpoint(stuck.uri()).unwrap();
    assert_eq!((e.requests, e.in_flight, e.cancelled), (20, 0, 20));
    assert_settled(&balancer);
}

#[tokio::test]
async fn aborted_tasks_release_their_in_flight_count() {
    let (_server, balancer, client) = stuck_backend().await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { send(&client, "/").await })
        })
        .collect();
    eventually(|| balancer.stats().in_flight() == 8).await;
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        assert!(t.await.unwrap_err().is_cancelled());
    }
    assert_eq!(balancer.stats().in_flight(), 0);
    assert_settled(&balancer);
}

#[tokio::test]
async fn connect_errors_surface_with_the_reqwest_error_reachable() {
    let refusing = RefusingPort::new();
    let down = refusing.url.clone();
    let balancer = Balancer::builder().endpoint(&down).build().unwrap();
    let err = send(&client(&balancer), "/").await.unwrap_err();

    match &err {
        Error::Upstream { endpoint, .. } => assert_eq!(endpoint, &down),
        other => panic!("expected an upstream error, got {other:?}"),
    }
    let inner = err
        .source()
        .and_then(|s| s.downcast_ref::<reqwest::Error>())
        .expect("the reqwest error is the source");
    assert!(inner.is_connect());
    assert!(err.upstream().is_some());

    let e = balancer.stats().endpoint(&down).unwrap();
    assert_eq!((e.requests, e.failures.connect, e.successes), (1, 1, 0));
    assert_settled(&balancer);
}

#[cfg(feature = "reqwest-middleware")]
#[tokio::test]
async fn the_middleware_returns_errors_in_the_layers_shape() {
    let refusing = RefusingPort::new();
    let down = refusing.url.clone();
    let balancer = Balancer::builder().endpoint(&down).build().unwrap();
    let client = reqwest_middleware::ClientBuilder::new(plain_reqwest())
        .with(balancer.clone())
        .build();
    let err = client.get("http://backend/").send().await.unwrap_err();
    let reqwest_middleware::Error::Middleware(err) = err else {
        panic!("expected the balancer's error, got {err:?}");
    };
    let err = err.downcast_ref::<Error>().expect("a tower_lb::Error");
    match err {
        Error::Upstream { endpoint, .. } => assert_eq!(endpoint, &down),
        other => panic!("expected an upstream error, got {other:?}"),
    }
    let inner = err
        .source()
        .and_then(|s| s.downcast_ref::<reqwest::Error>())
        .expect("the reqwest error is the source, as through the layer");
    assert!(inner.is_connect());

    let empty = Balancer::builder().build().unwrap();
    let client = reqwest_middleware::ClientBuilder::new(plain_reqwest())
        .with(empty)
        .build();
    let err = client.get("http://backend/").send().await.unwrap_err();
    let reqwest_middleware::Error::Middleware(err) = err else {
        panic!("expected the balancer's error, got {err:?}");
    };
    assert!(matches!(
        err.downcast_ref::<Error>(),
        Some(Error::NoEndpointAvailable)
    ));
    assert_eq!(
        balancer.stats().endpoint(&down).unwrap().failures.connect,
        1
    );
    assert_settled(&balancer);
}

#[tokio::test]
async fn timeouts_and_server_errors_are_counted_by_kind() {
    let slow = backend(
        "a",
        ResponseTemplate::new(200).set_delay(Duration::from_secs(5)),
    )
    .await;
    let broken = backend("b", ResponseTemplate::new(503)).await;
    let missing = backend("c", ResponseTemplate::new(404)).await;
    let balancer = Balancer::builder()
        .endpoint(slow.uri())
        .endpoint(broken.uri())
        .endpoint(missing.uri())
        .build()
        .unwrap();
    let reqwest = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(balancer.layer())
        .service(HttpToReqwest::new(reqwest));

    let timed_out = client.clone().oneshot(get("/")).await.unwrap_err();
    let inner = timed_out
        .source()
        .and_then(|s| s.downcast_ref::<reqwest::Error>());
    assert!(inner.is_some_and(|e| e.is_timeout()));
    // A 5xx is an answer: the caller gets the response, the stats a failure.
    let unavailable = client.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(unavailable.status(), 503);
    let not_found = client.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(not_found.status(), 404);

    let stats = balancer.stats();
    assert_eq!(stats.endpoint(slow.uri()).unwrap().failures.timeout, 1);
    assert_eq!(
        stats.endpoint(broken.uri()).unwrap().failures.server_error,
        1
    );
    let c = stats.endpoint(missing.uri()).unwrap();
    assert_eq!((c.successes, c.failures.total()), (1, 0));
    assert_settled(&balancer);
}

#[tokio::test]
async fn a_fully_drained_set_fails_fast_with_no_endpoint_available() {
    let servers = backends(2).await;
    let balancer = balancer_over(&servers, Policy::default());
    let client = client(&balancer);
    balancer.drain(servers[0].uri()).unwrap();
    balancer.drain(servers[1].uri()).unwrap();
    let err = send(&client, "/").await.unwrap_err();
    assert!(matches!(err, Error::NoEndpointAvailable), "{err:?}");
    assert_eq!(balancer.stats().requests(), 0);

    balancer.set_weight(servers[1].uri(), 1).unwrap();
    assert_eq!(send(&client, "/").await.unwrap(), "b");
}
