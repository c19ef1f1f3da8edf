//! Soak: four loopback hyper backends, a fault every few seconds (one
//! backend goes down, answers 503, or answers slowly, for 3 s), 32 workers
//! sending GETs through the layer over `reqwest::Client`. Prints the
//! figures every 10 s; at the end, checks that callers saw no error, that
//! in-flight counts went back to 0 and that memory stayed flat (the last
//! third of the run peaks at most 10% above the middle third). Exits
//! non-zero when one of these fails.
//!
//! `cargo run --release -p tower-lb-bench --bin soak -- [SECONDS]`
//! (default 150).
//!
//! A "down" backend drops its listener and every open connection, as a
//! killed process would, so requests it held fail with "connection closed
//! before message completed" and new connections are refused; it comes
//! back on the same port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::{Layer, ServiceExt};
use tower_lb::{Balancer, OutlierDetection, Policy, Retries};

const BACKENDS: usize = 4;
const WORKERS: usize = 32;
const FAULT_EVERY: Duration = Duration::from_secs(4);
const FAULT_LASTS: Duration = Duration::from_secs(3);
const SLOW: Duration = Duration::from_millis(300);
const REPORT_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Healthy,
    Down,
    Unavailable,
    Slow,
}

/// A backend whose mode the soak switches.
struct FaultyBackend {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
}

impl FaultyBackend {
    async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, modes) = watch::channel(Mode::Healthy);
        tokio::spawn(serve(listener, addr, modes));
        Ok(FaultyBackend { addr, mode })
    }

    fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

/// Accepts connections until the backend goes down; then drops the
/// listener, waits until it is up again and listens on the same address.
async fn serve(first: TcpListener, addr: SocketAddr, mut modes: watch::Receiver<Mode>) {
    let mut listener = Some(first);
    loop {
        let current = match listener.take() {
            Some(listener) => listener,
            None => {
                while *modes.borrow_and_update() == Mode::Down {
                    if modes.changed().await.is_err() {
                        return;
                    }
                }
                match bind_again(addr).await {
                    Some(listener) => listener,
                    None => return,
                }
            }
        };
        loop {
            tokio::select! {
                accepted = current.accept() => {
                    if let Ok((stream, _)) = accepted {
                        tokio::spawn(connection(stream, modes.clone()));
                    }
                }
                changed = modes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if *modes.borrow_and_update() == Mode::Down {
                        break;
                    }
                }
            }
        }
    }
}

async fn bind_again(addr: SocketAddr) -> Option<TcpListener> {
    for _ in 0..200 {
        if let Ok(listener) = TcpListener::bind(addr).await {
            return Some(listener);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("could not listen on {addr} again");
    None
}

/// Serves one connection until it ends or the backend goes down.
async fn connection(stream: TcpStream, mut modes: watch::Receiver<Mode>) {
    let handler_modes = modes.clone();
    let answer = service_fn(move |_request| {
        let mode = *handler_modes.borrow();
        async move {
            let status = match mode {
                Mode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                Mode::Slow => {
                    tokio::time::sleep(SLOW).await;
                    StatusCode::OK
                }
                Mode::Healthy | Mode::Down => StatusCode::OK,
            };
            let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
            *response.status_mut() = status;
            Ok::<_, Infallible>(response)
        }
    });
    let served = http1::Builder::new().serve_connection(TokioIo::new(stream), answer);
    let down = async move {
        loop {
            if *modes.borrow_and_update() == Mode::Down || modes.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = served => {}
        _ = down => {}
    }
}

/// Resident memory of this process in KiB, from /proc.
fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    not_ok_status: AtomicU64,
    errors: AtomicU64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    let run_for = Duration::from_secs(seconds);
    let mut backends = Vec::new();
    for _ in 0..BACKENDS {
        backends.push(Arc::new(FaultyBackend::start().await?));
    }
    let balancer = backends
        .iter()
        .fold(Balancer::builder(), |b, backend| {
            b.endpoint(format!("http://{}", backend.addr))
        })
        .policy(Policy::least_response_time())
        .outlier_detection(OutlierDetection::default())
        .retry(Retries::default().idempotent_failures())
        .build()?;
    let client = balancer.layer().layer(reqwest::Client::new());
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let deadline = started + run_for;

    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let (client, tally) = (client.clone(), tally.clone());
        workers.push(tokio::spawn(async move {
            let url =
                reqwest::Url::parse(&format!("http://backend/item/{worker}")).expect("a valid URL");
            let mut first_errors = Vec::new();
            while Instant::now() < deadline {
                let request = reqwest::Request::new(http::Method::GET, url.clone());
                match client.clone().oneshot(request).await {
                    Ok(response) if response.status().is_success() => {
                        // Read the body, as a caller would.
                        let _ = response.bytes().await;
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {
                        tally.not_ok_status.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => {
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                        if first_errors.len() < 3 {
                            first_errors.push(format!("{error}: {:?}", error.upstream()));
                        }
                    }
                }
            }
            first_errors
        }));
    }

    let faults = {
        let backends = backends.clone();
        tokio::spawn(async move {
            let kinds = [Mode::Down, Mode::Unavailable, Mode::Slow];
            let mut n = 0usize;
            loop {
                tokio::time::sleep(FAULT_EVERY - FAULT_LASTS).await;
                if Instant::now() + FAULT_LASTS > deadline {
                    return n;
                }
                let backend = &backends[n % BACKENDS];
                backend.set(kinds[n % kinds.len()]);
                tokio::time::sleep(FAULT_LASTS).await;
                backend.set(Mode::Healthy);
                n += 1;
            }
        })
    };

    println!("soak: {BACKENDS} backends, {WORKERS} workers, GETs, a fault (down / 503 / slow {SLOW:?}) for {FAULT_LASTS:?} every {FAULT_EVERY:?}, {seconds} s");
    println!("| s | requests | 2xx | non-2xx | caller errors | in flight | ejected | RSS KiB |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut rss_samples: Vec<(u64, u64)> = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(REPORT_EVERY.min(deadline.saturating_duration_since(Instant::now())))
            .await;
        let stats = balancer.stats();
        let in_flight: u64 = stats.endpoints.iter().map(|e| e.in_flight).sum();
        let ejected = stats.endpoints.iter().filter(|e| e.ejected).count();
        let rss = rss_kib();
        let elapsed = started.elapsed().as_secs();
        rss_samples.push((elapsed, rss));
        let (ok, bad, errors) = (
            tally.ok.load(Ordering::Relaxed),
            tally.not_ok_status.load(Ordering::Relaxed),
            tally.errors.load(Ordering::Relaxed),
        );
        println!(
            "| {elapsed} | {} | {ok} | {bad} | {errors} | {in_flight} | {ejected} | {rss} |",
            ok + bad + errors
        );
    }
    let mut first_errors = Vec::new();
    for worker in workers {
        first_errors.extend(worker.await?);
    }
    let fault_count = faults.await?;
    let stats = balancer.stats();
    let in_flight: u64 = stats.endpoints.iter().map(|e| e.in_flight).sum();
    let (ok, bad, errors) = (
        tally.ok.load(Ordering::Relaxed),
        tally.not_ok_status.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
    );
    let failures: u64 = stats.endpoints.iter().map(|e| e.failures.total()).sum();
    let closed: u64 = stats.endpoints.iter().map(|e| e.failures.closed).sum();
    let connect: u64 = stats.endpoints.iter().map(|e| e.failures.connect).sum();
    // Flat: the last third of the run peaks no higher than 10% over the
    // middle third (the first third is the allocator's and the pools'
    // warm-up).
    let third = seconds / 3;
    let peak = |from: u64, to: u64| {
        rss_samples
            .iter()
            .filter(|(t, _)| *t > from && *t <= to)
            .map(|(_, rss)| *rss)
            .max()
            .unwrap_or(0)
    };
    let (middle, last) = (peak(third, 2 * third), peak(2 * third, u64::MAX));
    let growth = last as f64 / middle.max(1) as f64;
    println!();
    println!("faults injected: {fault_count}");
    println!(
        "requests: {}, 2xx: {ok}, non-2xx: {bad}, caller errors: {errors}",
        ok + bad + errors
    );
    println!("attempt failures seen by the balancer: {failures} (connection closed: {closed}, connect: {connect}), all absorbed by retries");
    println!("in flight after the run: {in_flight}");
    println!(
        "RSS peak: {middle} KiB in the middle third, {last} KiB in the last third ({growth:.2}x)"
    );
    for error in &first_errors {
        println!("error: {error}");
    }
    let memory_flat = middle > 0 && growth <= 1.10;
    if errors == 0 && bad == 0 && in_flight == 0 && memory_flat {
        println!("PASS: 0 caller errors, 0 non-2xx, in flight back to 0, memory flat");
        Ok(())
    } else {
        println!("FAIL");
        std::process::exit(1)
    }
}
