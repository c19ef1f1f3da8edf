//! CPU time per request of the whole process (user + system, from
//! `getrusage`), raw reqwest against the same requests through the layer,
//! against five loopback hyper backends in the same process. Wall-clock
//! throughput is too noisy on a shared 2-core machine to show a 1%
//! difference; CPU time spent per request is what the layer adds.
//!
//! Two request types: `http::Request` through `HttpToReqwest` (raw, and the
//! layer with weighted round robin and least time), and `reqwest::Request`
//! straight to `reqwest::Client` (raw, and the README's stack: the layer
//! over `reqwest::Client`, weighted round robin). Rounds run every
//! configuration in turn (the order rotates every round); each layer figure
//! is divided by the raw figure of its own request type and round, and the
//! median of those ratios is reported.
//!
//! `cargo run --release -p tower-lb-bench --bin cpu_per_request`
//!
//! Prints a table and writes `target/bench/cpu_per_request.json`.

use std::time::Duration;

use nix::sys::resource::{getrusage, UsageWho};
use serde_json::json;
use tower_lb::{Policy, Retries};
use tower_lb_bench::{
    json_path, layer_requests, layer_reqwest_requests, raw_requests, raw_reqwest_requests,
    start_backend, Backend, Behaviour, Load, RunFigures,
};

/// Rounds: single rounds range over about ±7% here, so the median needs
/// many (about 75 s in all).
const ROUNDS: usize = 25;
const LOAD: Load = Load {
    concurrency: 32,
    duration: Duration::from_secs(60),
    max_requests: 20_000,
};

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

async fn run(backends: &[Backend], configuration: usize) -> Result<f64, BoxError> {
    match configuration {
        0 => cpu_per_request(raw_requests(backends, LOAD)).await,
        3 => cpu_per_request(raw_reqwest_requests(backends, LOAD)).await,
        4 => {
            let wrr = layer_reqwest_requests(
                backends,
                Policy::weighted_round_robin(),
                Retries::default(),
                LOAD,
            );
            cpu_per_request(wrr).await
        }
        1 => {
            let wrr = layer_requests(
                backends,
                Policy::weighted_round_robin(),
                Retries::default(),
                LOAD,
            );
            cpu_per_request(wrr).await
        }
        2 => {
            let least = layer_requests(
                backends,
                Policy::least_response_time().into(),
                Retries::default(),
                LOAD,
            );
            cpu_per_request(least).await
        }
        _ => Err(format!("no configuration {configuration}").into()),
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut backends = Vec::new();
    for i in 0..5 {
        backends.push(start_backend(&format!("b{i}"), Behaviour::ok_after(Duration::ZERO)).await?);
    }
    // Ratios divide by the raw figure of the same request type: rows 1 and 2
    // by row 0 (`http::Request` through `HttpToReqwest`), row 4 by row 3
    // (`reqwest::Request` to `reqwest::Client`).
    let names = [
        "raw reqwest",
        "layer: weighted round robin",
        "layer: least time",
        "raw reqwest, reqwest::Request",
        "layer over reqwest::Client: weighted round robin",
    ];
    let raw_of = [0, 0, 0, 3, 3];
    // Warm the connection pools and the allocator before measuring.
    for configuration in 0..names.len() {
        run(&backends, configuration).await?;
    }
    let mut per_round: Vec<[f64; 5]> = Vec::new();
    for round in 0..ROUNDS {
        let mut figures = [0.0; 5];
        for step in 0..names.len() {
            let configuration = (round + step) % names.len();
            figures[configuration] = run(&backends, configuration).await?;
        }
        println!(
            "round {round}: raw {:.2} µs, wrr {:.2} µs ({:.3}x), least time {:.2} µs ({:.3}x); \
             reqwest::Request: raw {:.2} µs, wrr {:.2} µs ({:.3}x)",
            figures[0],
            figures[1],
            figures[1] / figures[0],
            figures[2],
            figures[2] / figures[0],
            figures[3],
            figures[4],
            figures[4] / figures[3],
        );
        per_round.push(figures);
    }
    let mut rows = Vec::new();
    println!("\n| client | CPU µs per request (median) | vs raw, same round (median) |");
    println!("|---|---|---|");
    for (i, name) in names.iter().enumerate() {
        let mut cpu: Vec<f64> = per_round.iter().map(|r| r[i]).collect();
        let mut ratios: Vec<f64> = per_round.iter().map(|r| r[i] / r[raw_of[i]]).collect();
        let (cpu, ratio) = (median(&mut cpu), median(&mut ratios));
        println!("| {name} | {cpu:.2} | {ratio:.3}x |");
        rows.push(json!({"client": name, "cpu_us_per_request": cpu, "vs_raw": ratio}));
    }
    // The README's quick start (the layer over `HttpToReqwest`, sending
    // `http::Request`s) against plain reqwest with `reqwest::Request`s: the
    // layer and the adapter's conversion together.
    let mut quick_start: Vec<f64> = per_round.iter().map(|r| r[1] / r[3]).collect();
    let quick_start = median(&mut quick_start);
    println!(
        "\nthe README's quick start (layer: weighted round robin over HttpToReqwest) \
         vs raw reqwest::Request, same round (median): {quick_start:.3}x"
    );
    let path = json_path("cpu_per_request");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&json!({
            "rounds": ROUNDS,
            "requests_per_run": LOAD.max_requests,
            "concurrency": LOAD.concurrency,
            "rows": rows,
            "quick_start_vs_raw_reqwest_request": quick_start,
        }))?,
    )?;
    println!("\nwrote {}", path.display());
    Ok(())
}
