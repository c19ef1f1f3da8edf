//! End-to-end overhead of the balancing layer: reqwest against five
//! loopback hyper backends, raw (each request already addressed to a
//! backend, round robin by hand) against the same requests through the
//! layer with each policy, in one run. Then the `reqwest-middleware` way:
//! a middleware client with no middleware (raw, addressed by hand), ours as
//! a middleware, and the `reqwest-lb` crate's middleware, on the same
//! backends at the same load.
//!
//! `cargo run --release -p tower-lb-bench --bin overhead`
//!
//! Prints a table and writes `target/bench/overhead.json`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tower_lb::{Policy, Retries};
use tower_lb_bench::{
    backend_of, balancer_over, closed_loop, item_urls, json_path, layer_requests, raw_requests,
    run_reqwest_lb, start_backend, Backend, Behaviour, Load, RunFigures,
};

const CONCURRENCY: usize = 32;
const RUN_TIME: Duration = Duration::from_secs(2);
const MAX_REQUESTS: usize = 1_000_000;
const ROUNDS: usize = 3;
const LOAD: Load = Load {
    concurrency: CONCURRENCY,
    duration: RUN_TIME,
    max_requests: MAX_REQUESTS,
};

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A `reqwest-middleware` client, requests addressed by hand: the
/// baseline of the middleware rows.
async fn run_raw_middleware(backends: &[Backend]) -> RunFigures {
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).build();
    let urls = item_urls(backends);
    let next = Arc::new(AtomicUsize::new(0));
    closed_loop(CONCURRENCY, RUN_TIME, MAX_REQUESTS, move || {
        let client = client.clone();
        let url = urls[next.fetch_add(1, Ordering::Relaxed) % urls.len()].clone();
        async move {
            let response = client.get(url).send().await.map_err(|e| e.to_string())?;
            Ok(backend_of(&response))
        }
    })
    .await
}

/// Our balancer as a `reqwest-middleware` middleware, round robin.
async fn run_our_middleware(backends: &[Backend]) -> RunFigures {
    let balancer = balancer_over(backends, Policy::round_robin(), Retries::default());
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(balancer)
        .build();
    closed_loop(CONCURRENCY, RUN_TIME, MAX_REQUESTS, move || {
        let client = client.clone();
        async move {
            let response = client
                .get("http://backend/item")
                .send()
                .await
                .map_err(|e| e.to_string())?;
            Ok(backend_of(&response))
        }
    })
    .await
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut backends = Vec::new();
    for i in 0..5 {
        backends.push(start_backend(&format!("b{i}"), Behaviour::ok_after(Duration::ZERO)).await?);
    }
    println!(
        "layer overhead: 5 loopback backends answering at once, closed loop of {CONCURRENCY}, {} s per run, {cores} cores",
        RUN_TIME.as_secs()
    );
    // Rounds of raw, then each layer configuration: every layer figure is
    // compared with the raw run of its own round, and the median ratio over
    // the rounds is reported, because the shared machine drifts.
    let configurations: Vec<(&str, Policy, Retries)> = vec![
        (
            "weighted round robin",
            Policy::weighted_round_robin(),
            Retries::default(),
        ),
        (
            "weighted round robin, no retry",
            Policy::weighted_round_robin(),
            Retries::disabled(),
        ),
        ("round robin", Policy::round_robin(), Retries::default()),
        ("random", Policy::random(), Retries::default()),
        (
            "least response time",
            Policy::least_response_time().into(),
            Retries::default(),
        ),
        ("ring hash", Policy::ring_hash().into(), Retries::default()),
        ("maglev", Policy::maglev().into(), Retries::default()),
    ];
    let mut raw_runs = Vec::new();
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); configurations.len()];
    let mut last: Vec<Option<RunFigures>> = vec![None; configurations.len()];
    let middleware_names = [
        "tower-lb middleware: round robin",
        "reqwest-lb: round robin",
    ];
    let mut raw_middleware_runs = Vec::new();
    let mut middleware_ratios: Vec<Vec<f64>> = vec![Vec::new(); middleware_names.len()];
    let mut middleware_last: Vec<Option<RunFigures>> = vec![None; middleware_names.len()];
    for _ in 0..ROUNDS {
        let raw = raw_requests(&backends, LOAD).await;
        for (i, (_, policy, retry)) in configurations.iter().enumerate() {
            let figures = layer_requests(&backends, policy.clone(), retry.clone(), LOAD).await;
            ratios[i].push(figures.throughput() / raw.throughput());
            last[i] = Some(figures);
        }
        raw_runs.push(raw);

        let raw = run_raw_middleware(&backends).await;
        for (i, figures) in [
            run_our_middleware(&backends).await,
            run_reqwest_lb(&backends, CONCURRENCY, RUN_TIME, MAX_REQUESTS).await,
        ]
        .into_iter()
        .enumerate()
        {
            middleware_ratios[i].push(figures.throughput() / raw.throughput());
            middleware_last[i] = Some(figures);
        }
        raw_middleware_runs.push(raw);
    }
    println!(
        "{:<34} {:>10} {:>8} {:>8} {:>8} {:>14}",
        "client (last round)", "req/s", "p50 ms", "p99 ms", "errors", "median vs raw"
    );
    let mut rows = Vec::new();
    let raw_last = raw_runs.last().cloned().unwrap_or_default();
    let raw_throughputs: Vec<f64> = raw_runs.iter().map(RunFigures::throughput).collect();
    println!(
        "{:<34} {:>10.0} {:>8.2} {:>8.2} {:>8} {:>14}",
        "raw (round robin by hand)",
        raw_last.throughput(),
        raw_last.percentile_ms(50.0),
        raw_last.percentile_ms(99.0),
        raw_last.errors,
        "100%"
    );
    for (i, (name, _, _)) in configurations.iter().enumerate() {
        let figures = last[i].clone().unwrap_or_default();
        let median = median(&mut ratios[i]);
        println!(
            "{:<34} {:>10.0} {:>8.2} {:>8.2} {:>8} {:>13.1}%",
            format!("layer: {name}"),
            figures.throughput(),
            figures.percentile_ms(50.0),
            figures.percentile_ms(99.0),
            figures.errors,
            median * 100.0
        );
        rows.push(json!({
            "client": name,
            "throughput_rps_last_round": figures.throughput(),
            "p50_ms_last_round": figures.percentile_ms(50.0),
            "p99_ms_last_round": figures.percentile_ms(99.0),
            "errors": figures.errors,
            "throughput_vs_raw_per_round": ratios[i],
            "throughput_vs_raw_median": median,
        }));
    }
    println!(
        "\n{:<34} {:>10} {:>8} {:>8} {:>8} {:>14}",
        "middleware client (last round)", "req/s", "p50 ms", "p99 ms", "errors", "median vs raw"
    );
    let raw_middleware_last = raw_middleware_runs.last().cloned().unwrap_or_default();
    println!(
        "{:<34} {:>10.0} {:>8.2} {:>8.2} {:>8} {:>14}",
        "raw (no middleware, by hand)",
        raw_middleware_last.throughput(),
        raw_middleware_last.percentile_ms(50.0),
        raw_middleware_last.percentile_ms(99.0),
        raw_middleware_last.errors,
        "100%"
    );
    let mut middleware_rows = Vec::new();
    for (i, name) in middleware_names.iter().enumerate() {
        let figures = middleware_last[i].clone().unwrap_or_default();
        let median = median(&mut middleware_ratios[i]);
        println!(
            "{:<34} {:>10.0} {:>8.2} {:>8.2} {:>8} {:>13.1}%",
            name,
            figures.throughput(),
            figures.percentile_ms(50.0),
            figures.percentile_ms(99.0),
            figures.errors,
            median * 100.0
        );
        middleware_rows.push(json!({
            "client": name,
            "throughput_rps_last_round": figures.throughput(),
            "p50_ms_last_round": figures.percentile_ms(50.0),
            "p99_ms_last_round": figures.percentile_ms(99.0),
            "errors": figures.errors,
            "throughput_vs_raw_per_round": middleware_ratios[i],
            "throughput_vs_raw_median": median,
        }));
    }
    let report = json!({
        "bench": "overhead",
        "cores": cores,
        "concurrency": CONCURRENCY,
        "seconds_per_run": RUN_TIME.as_secs(),
        "rounds": ROUNDS,
        "raw_throughput_rps_per_round": raw_throughputs,
        "raw": {
            "throughput_rps_last_round": raw_last.throughput(),
            "p50_ms_last_round": raw_last.percentile_ms(50.0),
            "p99_ms_last_round": raw_last.percentile_ms(99.0),
        },
        "rows": rows,
        "raw_middleware_throughput_rps_per_round":
            raw_middleware_runs.iter().map(RunFigures::throughput).collect::<Vec<_>>(),
        "raw_middleware": {
            "throughput_rps_last_round": raw_middleware_last.throughput(),
            "p50_ms_last_round": raw_middleware_last.percentile_ms(50.0),
            "p99_ms_last_round": raw_middleware_last.percentile_ms(99.0),
        },
        "middleware_rows": middleware_rows,
    });
    let path = json_path("overhead");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("\nfigures written to {}", path.display());
    Ok(())
}
