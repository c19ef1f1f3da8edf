//! gRPC's health-checking protocol as the active check, against
//! tonic-health's server on 127.0.0.1 (real time: tonic's channels keep
//! timers of their own).
#![cfg(feature = "tonic")]

use std::time::Duration;

use tokio::net::TcpListener;
use tonic::codegen::tokio_stream::wrappers::TcpListenerStream;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tower_lb::{ActiveHealthCheck, Balancer, Detector, HttpToReqwest, Policy};

use crate::support::{plain_reqwest, within};

const SERVICE: &str = "shop.Catalog";

struct HealthBackend {
    url: String,
    reporter: HealthReporter,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HealthBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn health_backend() -> HealthBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(SERVICE, ServingStatus::Serving)
        .await;
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
    });
    HealthBackend {
        url,
        reporter,
        task,
    }
}

fn out(balancer: &Balancer, url: &str) -> bool {
    balancer.stats().endpoint(url).is_some_and(|e| e.ejected)
}

#[tokio::test]
async fn a_server_not_serving_is_out_until_it_serves_again() {
    let backends = [
        health_backend().await,
        health_backend().await,
        health_backend().await,
    ];
    let balancer = backends
        .iter()
        .fold(Balancer::builder(), |b, s| b.endpoint(&s.url))
        .policy(Policy::round_robin())
        .build()
        .unwrap();
    let channel = balancer.grpc().unwrap();
    channel
        .health_checks(
            ActiveHealthCheck::grpc(SERVICE)
                .interval(Duration::from_millis(100))
                .unhealthy_threshold(2)
                .healthy_threshold(1),
        )
        .unwrap();
    within(
        Duration::from_secs(5),
        "every server checked and in",
        || {
            let stats = balancer.stats();
            stats
                .endpoints
                .iter()
                .all(|e| !e.ejected && e.checks.passed >= 1)
        },
    )
    .await;
    backends[1]
        .reporter
        .set_service_status(SERVICE, ServingStatus::NotServing)
        .await;
    within(Duration::from_secs(5), "NOT_SERVING out", || {
        out(&balancer, &backends[1].url)
    })
    .await;
    let stats = balancer.stats();
    let entry = stats.endpoint(&backends[1].url).unwrap();
    assert_eq!(entry.ejected_by, Some(Detector::ActiveCheck));
    assert!(
        entry.checks.failing && entry.checks.failed >= 2,
        "{entry:?}"
    );
    assert_eq!(entry.requests, 0, "checks are not calls");
    assert!(!out(&balancer, &backends[0].url) && !out(&balancer, &backends[2].url));
    backends[1]
        .reporter
        .set_service_status(SERVICE, ServingStatus::Serving)
        .await;
    within(Duration::from_secs(5), "SERVING back", || {
        !out(&balancer, &backends[1].url)
    })
    .await;
    // A service the server does not know (NOT_FOUND) fails its checks.
    backends[2]
        .reporter
        .clone()
        .clear_service_status(SERVICE)
        .await;
    within(Duration::from_secs(5), "unknown service out", || {
        out(&balancer, &backends[2].url)
    })
    .await;
}

#[tokio::test]
async fn a_check_of_the_wrong_kind_is_a_typed_error() {
    let balancer = Balancer::builder()
        .endpoint("http://127.0.0.1:1")
        .build()
        .unwrap();
    let http_check = balancer
        .grpc()
        .unwrap()
        .health_checks(ActiveHealthCheck::new("/health"));
    assert!(
        matches!(http_check, Err(tower_lb::Error::InvalidPolicy { .. })),
        "{http_check:?}"
    );
    let grpc_over_http = balancer.health_checks::<_, reqwest::Body>(
        ActiveHealthCheck::grpc(""),
        HttpToReqwest::new(plain_reqwest()),
    );
    assert!(
        matches!(grpc_over_http, Err(tower_lb::Error::InvalidPolicy { .. })),
        "{grpc_over_http:?}"
    );
    assert!(!balancer.stats().endpoints[0].ejected, "nothing started");
}
