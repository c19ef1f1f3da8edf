//! CPU time per request of the whole process (user + system, from
//! `getrusage`) with the `metrics` feature recording into the Prometheus
//! exporter's recorder, against the same layer recording nothing, and raw
//! reqwest, side by side in one run over five loopback hyper backends.
//!
//! The library is built with `metrics` here, so "off" is a balancer built
//! while no recorder is in effect (a no-op recorder, local to the build):
//! its handles are no-ops and it times nothing for metrics, which is what
//! the feature costs when compiled in and unused. With the feature off the
//! code is compiled out; the request-path rows of `pick` show that
//! (docs/metrics.md).
//!
//! "On" is the layer with the exporter's recorder installed globally
//! before the balancer is built (as a service does at start-up), its
//! duration histogram with OpenTelemetry's buckets, and the exporter's
//! upkeep run every 5 s on a thread of its own, as its own listener would.
//!
//! Rounds run every configuration in turn (the order rotates every
//! round); "on" is divided by "off" of the same round, and the median of
//! those ratios reported.
//!
//! `cargo run --release -p tower-lb-bench --features metrics --bin metrics_cpu_per_request`
//!
//! Prints a table and writes `target/bench/metrics_cpu_per_request.json`.

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use nix::sys::resource::{getrusage, UsageWho};
use serde_json::json;
use tower_lb::{Balancer, Policy, Retries};
use tower_lb_bench::{
    balancer_over, json_path, layer_requests_through, raw_requests, start_backend, Backend,
    Behaviour, Load, RunFigures,
};

const ROUNDS: usize = 25;
const LOAD: Load = Load {
    concurrency: 32,
    duration: Duration::from_secs(60),
    max_requests: 20_000,
};
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// User + system CPU time of the process so far.
fn cpu_time() -> Result<Duration, BoxError> {
    let usage = getrusage(UsageWho::RUSAGE_SELF)?;
    let micros = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    Ok(micros(usage.user_time()) + micros(usage.system_time()))
}

/// CPU microseconds per answered request of one run.
async fn cpu_per_request(
    run: impl std::future::Future<Output = RunFigures>,
) -> Result<f64, BoxError> {
    let before = cpu_time()?;
    let figures = run.await;
    let spent = cpu_time()? - before;
    if figures.errors > 0 || figures.answered() == 0 {
        return Err(format!("{} errors, {} answered", figures.errors, figures.answered()).into());
    }
    Ok(spent.as_secs_f64() * 1e6 / figures.answered() as f64)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn wrr(backends: &[Backend]) -> Balancer {
    balancer_over(backends, Policy::weighted_round_robin(), Retries::default())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("http.client.request.duration".into()),
            &DURATION_BUCKETS,
        )?
        .install_recorder()?;
    let upkeep = handle.clone();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_secs(5));
        upkeep.run_upkeep();
    });

    let mut backends = Vec::new();
    for i in 0..5 {
        backends.push(start_backend(&format!("b{i}"), Behaviour::ok_after(Duration::ZERO)).await?);
    }
    let off = metrics::with_local_recorder(&metrics::NoopRecorder, || wrr(&backends));
    let on = wrr(&backends);
    let names = [
        "raw reqwest",
        "layer: weighted round robin, metrics recording nothing",
        "layer: weighted round robin, metrics into Prometheus",
    ];
    let run = |configuration: usize| {
        let (backends, off, on) = (&backends, &off, &on);
        async move {
            match configuration {
                0 => cpu_per_request(raw_requests(backends, LOAD)).await,
                1 => cpu_per_request(layer_requests_through(off, LOAD)).await,
                _ => cpu_per_request(layer_requests_through(on, LOAD)).await,
            }
        }
    };
    // Warm the connection pools, the allocator and the duration series.
    for configuration in 0..names.len() {
        run(configuration).await?;
    }
    let mut per_round: Vec<[f64; 3]> = Vec::new();
    for round in 0..ROUNDS {
        let mut figures = [0.0; 3];
        for step in 0..names.len() {
            let configuration = (round + step) % names.len();
            figures[configuration] = run(configuration).await?;
        }
        println!(
            "round {round}: raw {:.2} µs, off {:.2} µs, on {:.2} µs (on/off {:.3}x)",
            figures[0],
            figures[1],
            figures[2],
            figures[2] / figures[1],
        );
        per_round.push(figures);
    }
    let mut rows = Vec::new();
    println!("\n| client | CPU µs per request (median) | vs raw, same round (median) |");
    println!("|---|---|---|");
    for (i, name) in names.iter().enumerate() {
        let mut cpu: Vec<f64> = per_round.iter().map(|r| r[i]).collect();
        let mut ratios: Vec<f64> = per_round.iter().map(|r| r[i] / r[0]).collect();
        let (cpu, ratio) = (median(&mut cpu), median(&mut ratios));
        println!("| {name} | {cpu:.2} | {ratio:.3}x |");
        rows.push(json!({"client": name, "cpu_us_per_request": cpu, "vs_raw": ratio}));
    }
    let mut on_off: Vec<f64> = per_round.iter().map(|r| r[2] / r[1]).collect();
    let on_off = median(&mut on_off);
    println!("\nmetrics into Prometheus vs recording nothing, same round (median): {on_off:.3}x");
    // The scrape saw every request: the attempts counter's total.
    let scrape = handle.render();
    let attempts: f64 = scrape
        .lines()
        .filter(|l| l.starts_with("tower_lb_attempts{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    println!(
        "attempts in the scrape: {attempts} ({} requests sent through \"on\")",
        (ROUNDS + 1) * LOAD.max_requests
    );
    let path = json_path("metrics_cpu_per_request");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&json!({
            "rounds": ROUNDS,
            "requests_per_run": LOAD.max_requests,
            "concurrency": LOAD.concurrency,
            "rows": rows,
            "on_vs_off": on_off,
            "attempts_in_scrape": attempts,
        }))?,
    )?;
    println!("\nwrote {}", path.display());
    Ok(())
}
