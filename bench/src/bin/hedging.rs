//! Hedged requests against the tail: five loopback backends where 2% of
//! answers take 200 ms and the rest 2 ms, 32 workers, a bounded number of
//! requests, with and without hedging in the same run; then the same fleet
//! turning slow all at once (every answer 200 ms), where hedges must stay
//! within the budget they share with retries.
//!
//! `cargo run --release -p tower-lb-bench --bin hedging`
//!
//! Prints p50, p99, p99.9 and the extra requests (counted by the backends:
//! received minus answered to the workers), and writes the figures to
//! `target/bench/hedging.json`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};
use tower_lb::{Balancer, Hedging, Policy, Retries};
use tower_lb_bench::{backend_of, closed_loop, json_path, RunFigures};

const BACKENDS: usize = 5;
const CONCURRENCY: usize = 32;
const REQUESTS: usize = 30_000;
/// The slow turn's requests: about 10 s of them (every answer takes
/// 200 ms), a whole budget window.
const SLOW_REQUESTS: usize = 1_600;
/// Fast requests a fresh balancer answers before the slow turn.
const WARM: usize = 3_000;
const FAST: Duration = Duration::from_millis(2);
const SLOW: Duration = Duration::from_millis(200);
/// One answer in this many is slow.
const SLOW_ONE_IN: u64 = 50;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A backend whose `n`th answer is slow when a seeded hash of `n` says so
/// (2%), or every answer once `all_slow` is set.
struct Backend {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
}

/// SplitMix64: the seeded, per-answer draw.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

async fn start(index: u64, all_slow: Arc<AtomicBool>) -> std::io::Result<Backend> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let received = Arc::new(AtomicU64::new(0));
    let count = received.clone();
    let name = format!("b{index}");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (count, all_slow, name) = (count.clone(), all_slow.clone(), name.clone());
            tokio::spawn(async move {
                let answer = service_fn(move |_request| {
                    let n = count.fetch_add(1, Ordering::Relaxed);
                    let slow = all_slow.load(Ordering::Relaxed)
                        || mix(index << 40 | n).is_multiple_of(SLOW_ONE_IN);
                    let name = name.clone();
                    async move {
                        tokio::time::sleep(if slow { SLOW } else { FAST }).await;
                        let mut response = http::Response::new(Full::new(Bytes::new()));
                        if let Ok(value) = name.parse() {
                            response.headers_mut().insert("x-backend", value);
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), answer)
                    .await;
            });
        }
    });
    Ok(Backend { addr, received })
}

fn received(backends: &[Backend]) -> u64 {
    backends
        .iter()
        .map(|b| b.received.load(Ordering::Relaxed))
        .sum()
}

fn request() -> reqwest::Request {
    let url = reqwest::Url::parse("http://backend/item").expect("a valid placeholder URL");
    reqwest::Request::new(http::Method::GET, url)
}

fn balancer(backends: &[Backend], hedging: Option<Hedging>) -> Balancer {
    let builder = backends
        .iter()
        .fold(Balancer::builder(), |b, backend| {
            b.endpoint(format!("http://{}", backend.addr))
        })
        .policy(Policy::round_robin())
        .retry(Retries::default());
    let built = match hedging {
        Some(hedging) => builder.hedge(hedging),
        None => builder,
    }
    .build();
    match built {
        Ok(balancer) => balancer,
        Err(error) => panic!("the bench's balancer is valid: {error}"),
    }
}

/// `requests` requests from 32 workers through `balancer`; the figures and
/// the extra requests the backends received.
async fn run(balancer: &Balancer, backends: &[Backend], requests: usize) -> (RunFigures, u64) {
    let before = received(backends);
    let service = ServiceBuilder::new()
        .layer(balancer.layer())
        .service(reqwest::Client::new());
    let figures = closed_loop(CONCURRENCY, Duration::from_secs(600), requests, move || {
        let service = service.clone();
        async move {
            let response = service
                .oneshot(request())
                .await
                .map_err(|e| e.to_string())?;
            Ok(backend_of(&response))
        }
    })
    .await;
    // Losers still being answered are counted once their servers have
    // received them: they were, before the winner's answer came.
    let sent = received(backends) - before;
    let answered = (figures.answered() + figures.errors) as u64;
    (figures, sent.saturating_sub(answered))
}

fn row(name: &str, figures: &RunFigures, extra: u64, balancer: &Balancer) -> serde_json::Value {
    let requests = figures.answered() + figures.errors;
    let stats = balancer.stats().extra;
    println!(
        "{:<40} {:>8} {:>8.2} {:>8.2} {:>9.2} {:>8} {:>7.2}% {:>9} {:>7}",
        name,
        requests,
        figures.percentile_ms(50.0),
        figures.percentile_ms(99.0),
        figures.percentile_ms(99.9),
        extra,
        extra as f64 * 100.0 / requests.max(1) as f64,
        stats.hedges_refused,
        figures.errors,
    );
    json!({
        "run": name,
        "requests": requests,
        "errors": figures.errors,
        "p50_ms": figures.percentile_ms(50.0),
        "p99_ms": figures.percentile_ms(99.0),
        "p99_9_ms": figures.percentile_ms(99.9),
        "extra_requests": extra,
        "extra_percent": extra as f64 * 100.0 / requests.max(1) as f64,
        "hedges": stats.hedges,
        "hedges_won": stats.hedges_won,
        "hedges_refused": stats.hedges_refused,
        "retries": stats.retries,
    })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "hedging: {BACKENDS} loopback backends, 1 in {SLOW_ONE_IN} answers {} ms and the rest {} ms, \
         {CONCURRENCY} workers, {REQUESTS} requests per run, {cores} cores",
        SLOW.as_millis(),
        FAST.as_millis()
    );
    let all_slow = Arc::new(AtomicBool::new(false));
    let mut backends = Vec::new();
    for i in 0..BACKENDS {
        backends.push(start(i as u64, all_slow.clone()).await?);
    }
    println!(
        "\n{:<40} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>9} {:>7}",
        "run", "requests", "p50 ms", "p99 ms", "p99.9 ms", "extra", "extra%", "refused", "errors"
    );
    let plain = balancer(&backends, None);
    let (figures, extra) = run(&plain, &backends, REQUESTS).await;
    let unhedged = row("no hedging", &figures, extra, &plain);
    let hedged_balancer = balancer(&backends, Some(Hedging::default()));
    let (figures, extra) = run(&hedged_balancer, &backends, REQUESTS).await;
    let hedged = row(
        "hedged after p95 (default)",
        &figures,
        extra,
        &hedged_balancer,
    );

    // The whole fleet turns slow, on fresh balancers: one hedging after
    // the p95 it learned from WARM fast requests (2 ms, so every request
    // passes it until the estimate catches up), one after a fixed 20 ms
    // (every request passes it for good). The budget (20% of the last
    // 10 s's requests plus 10 a second) bounds the hedges meanwhile.
    let mut turns = Vec::new();
    let mut slow_turns = Vec::new();
    for (name, hedging, warm) in [
        (
            "every backend slow, hedged after p95",
            Hedging::default(),
            WARM,
        ),
        (
            "every backend slow, hedged after 20 ms",
            Hedging::after(Duration::from_millis(20)),
            0,
        ),
    ] {
        all_slow.store(false, Ordering::Relaxed);
        let balancer = balancer(&backends, Some(hedging));
        if warm > 0 {
            run(&balancer, &backends, warm).await;
        }
        let before = balancer.stats().extra;
        all_slow.store(true, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let (figures, extra) = run(&balancer, &backends, SLOW_REQUESTS).await;
        let seconds = started.elapsed().as_secs_f64();
        turns.push(row(name, &figures, extra, &balancer));
        let after = balancer.stats().extra;
        let hedges = after.hedges - before.hedges;
        // Over a run of T seconds the budget grants at most 20% of every
        // request it counted plus 10 a second over T and one window.
        let bound = (warm + SLOW_REQUESTS) as f64 * 0.2 + 10.0 * (seconds + 10.0);
        println!(
            "  {hedges} hedges in {seconds:.1} s, {} refused; the budget allows at most {bound:.0}",
            after.hedges_refused - before.hedges_refused
        );
        slow_turns.push(json!({
            "run": name,
            "warm_requests": warm,
            "seconds": seconds,
            "hedges": hedges,
            "refused": after.hedges_refused - before.hedges_refused,
            "budget_bound": bound,
        }));
    }
    let path = json_path("hedging");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&json!({
            "backends": BACKENDS,
            "concurrency": CONCURRENCY,
            "cores": cores,
            "runs": [unhedged, hedged],
            "slow_turns": turns,
            "slow_turn_budget": slow_turns,
        }))?,
    )?;
    println!("figures written to {}", path.display());
    Ok(())
}
