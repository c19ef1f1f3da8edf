//! The balancer's metrics in a Prometheus scrape: three backends on
//! 127.0.0.1, one of them answering 503, a named balancer over them with
//! retries of failed GETs and outlier detection, a hundred requests, then
//! one scrape printed.
//!
//! `cargo run --example metrics --features metrics`
//!
//! The exporter's recorder is installed first, before the balancer is
//! built: the balancer registers its series when it is built and when
//! endpoints join. No HTTP listener is started here; a service would
//! serve `handle.render()` on its `/metrics` route, or let the exporter's
//! own listener do it (`PrometheusBuilder::install`).

use std::time::Duration;

use futures::stream::{self, StreamExt};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tower::{ServiceBuilder, ServiceExt};
use tower_lb::{Balancer, BoxError, HttpToReqwest, OutlierDetection, Policy, Retries};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// OpenTelemetry's recommended boundaries for
/// `http.client.request.duration`, in seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

async fn backend(status: u16) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(status).set_delay(Duration::from_millis(2)))
        .mount(&server)
        .await;
    server
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("http.client.request.duration".into()),
            &DURATION_BUCKETS,
        )?
        .install_recorder()?;

    let backends = [backend(200).await, backend(200).await, backend(503).await];
    let balancer = backends
        .iter()
        .fold(Balancer::builder(), |builder, server| {
            builder.endpoint(server.uri())
        })
        .name("example")
        .policy(Policy::round_robin())
        .outlier_detection(
            OutlierDetection::default()
                .consecutive_failures(3)
                .base_ejection_time(Duration::from_secs(60)),
        )
        .retry(Retries::default().idempotent_failures())
        .build()?;
    let client = ServiceBuilder::new()
        .layer(balancer.layer())
        .service(HttpToReqwest::new(reqwest::Client::new()));

    let answers: Vec<Result<u16, BoxError>> = stream::iter(0..100)
        .map(|i| {
            let client = client.clone();
            async move {
                // The path and query never reach a metric.
                let request = http::Request::get(format!("/users/{i}?token=secret-{i}"))
                    .body(reqwest::Body::from(""))?;
                let response = client.oneshot(request).await?;
                Ok(response.status().as_u16())
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let ok = answers.iter().filter(|a| matches!(a, Ok(200))).count();
    eprintln!(
        "{ok} of {} requests answered 200 (the failing backend's answers were retried elsewhere)\n",
        answers.len()
    );

    print!("{}", handle.render());
    Ok(())
}
