//! What choosing an endpoint costs, per request, for every policy of ours and
//! for tower's p2c balancer (PeakEWMA and pending-requests loads), each
//! driven through `poll_ready` + `call` on trivial in-process services, at
//! 10, 100 and 1,000 endpoints. Ours also with both cores picking at once
//! on one shared balancer.
//!
//! `cargo run --release -p tower-lb-bench --bin pick_cost`
//!
//! Prints a table and writes `target/bench/pick_cost.json`. Figures are
//! from one run on a shared machine: compare within a run.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::FutureExt;
use serde_json::json;
use tower::balance::p2c::Balance as TowerBalance;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover, PendingRequestsDiscover};
use tower::{Layer, Service};
use tower_lb::{Balancer, Policy, RetryPolicy, SessionKey};
use tower_lb_bench::json_path;

const SIZES: [usize; 3] = [10, 100, 1_000];
const MEASURE: Duration = Duration::from_millis(700);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An in-process service that answers at once.
#[derive(Clone, Copy)]
struct Trivial;

impl Service<http::Request<()>> for Trivial {
    type Response = http::Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<http::Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<()>) -> Self::Future {
        ready(Ok(http::Response::new(())))
    }
}

fn request(n: u32) -> http::Request<()> {
    let mut request = http::Request::new(());
    *request.uri_mut() = http::Uri::from_static("/item");
    request
        .extensions_mut()
        .insert(SessionKey::new(n.to_le_bytes()));
    request
}

/// Nanoseconds per request of `step`, run for about `MEASURE`.
fn time_per_call(mut step: impl FnMut(u32)) -> f64 {
    for i in 0..10_000 {
        step(i);
    }
    let started = Instant::now();
    let mut calls = 0u32;
    while started.elapsed() < MEASURE {
        for _ in 0..1_000 {
            step(calls);
            calls = calls.wrapping_add(1);
        }
    }
    started.elapsed().as_nanos() as f64 / f64::from(calls)
}

/// Drives a tower service through `poll_ready` + `call` + completion.
fn drive<S>(service: &mut S, n: u32)
where
    S: Service<http::Request<()>>,
    S::Error: std::fmt::Debug,
{
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    match service.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {
            let _ = service.call(request(n)).now_or_never();
        }
        other => panic!(
            "a trivial service is always ready: {:?}",
            other.map(|r| r.err())
        ),
    }
}

fn ours(endpoints: usize, policy: Policy) -> Balancer {
    let built = (0..endpoints)
        .fold(Balancer::builder(), |b, i| {
            b.endpoint(&format!("http://10.{}.{}.1:8080", i / 250, i % 250))
        })
        .policy(policy)
        .retry(RetryPolicy::disabled())
        .build();
    match built {
        Ok(balancer) => balancer,
        Err(error) => panic!("the bench's balancer is valid: {error}"),
    }
}

fn policies() -> Vec<(&'static str, Policy)> {
    vec![
        ("ours: weighted round robin", Policy::weighted_round_robin()),
        ("ours: round robin", Policy::round_robin()),
        ("ours: random", Policy::random()),
        (
            "ours: least time (p2c)",
            Policy::least_response_time().into(),
        ),
        ("ours: ring hash", Policy::ring_hash().into()),
        ("ours: maglev", Policy::maglev().into()),
    ]
}

/// Per-call cost with two threads calling at once through clones of one
/// balanced service: the contention on shared state.
fn two_threads(balancer: &Balancer) -> f64 {
    let per_thread: Vec<f64> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let mut service = balancer.layer().layer(Trivial);
                scope.spawn(move || time_per_call(|n| drive(&mut service, n)))
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    per_thread.iter().sum::<f64>() / per_thread.len().max(1) as f64
}

fn main() -> Result<(), BoxError> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "pick cost: ns per request through poll_ready + call to a trivial service; {cores} cores"
    );
    println!(
        "{:<34} {:>10} {:>10} {:>10}   {:>14}",
        "balancer", "10", "100", "1000", "2 threads, 100"
    );
    let mut rows = Vec::new();
    let raw = time_per_call(|n| drive(&mut Trivial, n));
    println!("{:<34} {:>10.0} {:>10} {:>10}", "no balancer", raw, "", "");
    rows.push(json!({ "balancer": "no balancer", "ns": { "any": raw } }));

    for (name, policy) in policies() {
        let mut ns = Vec::new();
        for endpoints in SIZES {
            let balancer = ours(endpoints, policy.clone());
            let mut service = balancer.layer().layer(Trivial);
            ns.push(time_per_call(|n| drive(&mut service, n)));
        }
        let contended = two_threads(&ours(100, policy));
        println!(
            "{:<34} {:>10.0} {:>10.0} {:>10.0}   {:>14.0}",
            name, ns[0], ns[1], ns[2], contended
        );
        rows.push(json!({
            "balancer": name,
            "ns": { "10": ns[0], "100": ns[1], "1000": ns[2] },
            "ns_two_threads_100": contended,
        }));
    }

    for (name, peak) in [
        ("tower p2c, PeakEwma", true),
        ("tower p2c, PendingRequests", false),
    ] {
        let mut ns = Vec::new();
        for endpoints in SIZES {
            let services = ServiceList::new(vec![Trivial; endpoints]);
            ns.push(if peak {
                let mut balance = TowerBalance::new(PeakEwmaDiscover::new(
                    services,
                    Duration::from_millis(30),
                    Duration::from_secs(10),
                    CompleteOnResponse::default(),
                ));
                time_per_call(|n| drive(&mut balance, n))
            } else {
                let mut balance = TowerBalance::new(PendingRequestsDiscover::new(
                    services,
                    CompleteOnResponse::default(),
                ));
                time_per_call(|n| drive(&mut balance, n))
            });
        }
        println!(
            "{:<34} {:>10.0} {:>10.0} {:>10.0}   {:>14}",
            name, ns[0], ns[1], ns[2], "not shareable"
        );
        rows.push(json!({
            "balancer": name,
            "ns": { "10": ns[0], "100": ns[1], "1000": ns[2] },
            "ns_two_threads_100": null,
        }));
    }
    println!("\n(tower's Balance is not Clone: sharing it between threads takes a Buffer, a channel to one task)");

    let path = json_path("pick_cost");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &path,
        serde_json::to_string_pretty(
            &json!({ "bench": "pick_cost", "cores": cores, "rows": rows }),
        )?,
    )?;
    println!("figures written to {}", path.display());
    Ok(())
}
