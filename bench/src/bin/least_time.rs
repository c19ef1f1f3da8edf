//! Least response time against tower's PeakEWMA balancer and the rotating
//! policies, on the same five loopback backends in the same run.
//!
//! `cargo run --release -p tower-lb-bench --bin least_time`
//!
//! Scenario 1: four backends answer in 2 ms, one in 20 ms. Scenario 2: four
//! answer in 2 ms, one answers 503 at once. A closed loop of 32 workers
//! sends through each balancer for a fixed time. Prints a table and writes
//! the same figures to `target/bench/least_time.json`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use serde_json::json;
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover};
use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_lb::{Policy, Retries};
use tower_lb_bench::{
    backend_of, balancer_over, closed_loop, json_path, run_reqwest_lb, start_backend, Backend,
    Behaviour, RunFigures,
};

const CONCURRENCY: usize = 32;
const RUN_TIME: Duration = Duration::from_secs(5);
const MAX_REQUESTS: usize = 500_000;
const FAST: Duration = Duration::from_millis(2);
const SLOW: Duration = Duration::from_millis(20);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One backend as a tower service: points each request at its address and
/// sends it with a shared reqwest client. What a tower user balances over.
#[derive(Clone)]
struct Direct {
    client: reqwest::Client,
    backend: Backend,
}

impl Service<reqwest::Request> for Direct {
    type Response = reqwest::Response;
    type Error = reqwest::Error;
    type Future = Pin<Box<dyn Future<Output = Result<reqwest::Response, reqwest::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: reqwest::Request) -> Self::Future {
        let _ = request.url_mut().set_ip_host(self.backend.addr.ip());
        let _ = request.url_mut().set_port(Some(self.backend.addr.port()));
        Box::pin(self.client.execute(request))
    }
}

fn request() -> reqwest::Request {
    let url = reqwest::Url::parse("http://backend/item").expect("a valid placeholder URL");
    reqwest::Request::new(http::Method::GET, url)
}

async fn run_tower(backends: &[Backend]) -> RunFigures {
    let client = reqwest::Client::new();
    let services: Vec<Direct> = backends
        .iter()
        .map(|backend| Direct {
            client: client.clone(),
            backend: backend.clone(),
        })
        .collect();
    let discover = PeakEwmaDiscover::new(
        ServiceList::new(services),
        Duration::from_millis(30),
        Duration::from_secs(10),
        CompleteOnResponse::default(),
    );
    // tower's `Balance` is not `Clone`: a `Buffer` shares it, as tower users do.
    let balance: Buffer<reqwest::Request, _> = Buffer::new(Balance::new(discover), 1024);
    let balance: Shared = BoxCloneService::new(balance);
    closed_loop(CONCURRENCY, RUN_TIME, MAX_REQUESTS, move || {
        send(balance.clone())
    })
    .await
}

/// A balancer shared by the workers, its type erased.
type Shared = BoxCloneService<reqwest::Request, reqwest::Response, BoxError>;

fn send(service: Shared) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> {
    Box::pin(async move {
        let response = service
            .oneshot(request())
            .await
            .map_err(|e| e.to_string())?;
        Ok(backend_of(&response))
    })
}

async fn run_ours(backends: &[Backend], policy: Policy) -> RunFigures {
    let balancer = balancer_over(backends, policy, Retries::default());
    let service = ServiceBuilder::new()
        .layer(balancer.layer())
        .service(reqwest::Client::new());
    closed_loop(CONCURRENCY, RUN_TIME, MAX_REQUESTS, move || {
        let service = service.clone();
        async move {
            let response = service
                .oneshot(request())
                .await
                .map_err(|e| e.to_string())?;
            Ok(backend_of(&response))
        }
    })
    .await
}

/// Percentiles kept for the latency-distribution plot.
const QUANTILES: [f64; 16] = [
    1.0, 5.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 97.0, 98.0, 99.0, 99.3, 99.5, 99.7, 99.9, 100.0,
];

async fn scenario(name: &str, odd_one: Behaviour) -> Result<serde_json::Value, BoxError> {
    let mut backends = Vec::new();
    for i in 0..4 {
        backends.push(start_backend(&format!("fast-{i}"), Behaviour::ok_after(FAST)).await?);
    }
    backends.push(start_backend("odd", odd_one).await?);

    println!("\n{name}");
    println!(
        "{:<28} {:>10} {:>9} {:>9} {:>9} {:>11} {:>7}",
        "balancer", "req/s", "p50 ms", "p99 ms", "mean ms", "odd share", "errors"
    );
    let runs: Vec<(&str, RunFigures)> = vec![
        (
            "round robin",
            run_ours(&backends, Policy::round_robin()).await,
        ),
        (
            "weighted round robin",
            run_ours(&backends, Policy::weighted_round_robin()).await,
        ),
        ("tower p2c PeakEwma", run_tower(&backends).await),
        (
            "reqwest-lb round robin",
            run_reqwest_lb(&backends, CONCURRENCY, RUN_TIME, MAX_REQUESTS).await,
        ),
        (
            "ours least time (p2c)",
            run_ours(&backends, Policy::least_response_time().into()).await,
        ),
        (
            "ours least time (exact)",
            run_ours(&backends, Policy::least_response_time().exact().into()).await,
        ),
    ];
    let mut rows = Vec::new();
    for (balancer, figures) in &runs {
        println!(
            "{:<28} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>10.2}% {:>7}",
            balancer,
            figures.throughput(),
            figures.percentile_ms(50.0),
            figures.percentile_ms(99.0),
            figures.mean_ms(),
            figures.share("odd") * 100.0,
            figures.errors,
        );
        rows.push(json!({
            "balancer": balancer,
            "requests": figures.answered(),
            "errors": figures.errors,
            "throughput_rps": figures.throughput(),
            "p50_ms": figures.percentile_ms(50.0),
            "p99_ms": figures.percentile_ms(99.0),
            "mean_ms": figures.mean_ms(),
            "odd_backend_share": figures.share("odd"),
            "latency_percentiles_ms": QUANTILES
                .iter()
                .map(|&q| json!([q, figures.percentile_ms(q)]))
                .collect::<Vec<_>>(),
        }));
    }
    Ok(json!({ "scenario": name, "rows": rows }))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "least response time: 5 loopback backends, closed loop of {CONCURRENCY}, {} s per balancer, {cores} cores",
        RUN_TIME.as_secs()
    );
    let slow = scenario(
        "1. one backend 10x slower (2 ms vs 20 ms); odd = the slow one",
        Behaviour::ok_after(SLOW),
    )
    .await?;
    let failing = scenario(
        "2. one backend answers 503 at once; odd = the failing one",
        Behaviour::fails_at_once(),
    )
    .await?;
    let report = json!({
        "bench": "least_time",
        "cores": cores,
        "concurrency": CONCURRENCY,
        "seconds_per_run": RUN_TIME.as_secs(),
        "scenarios": [slow, failing],
    });
    let path = json_path("least_time");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("\nfigures written to {}", path.display());
    Ok(())
}
