//! The tower-lb demo: a few backends on 127.0.0.1, a reqwest client behind the
//! balancing layer, a few thousand requests, and where they went.
//!
//! Run it with `cargo run --release --example demo`. It needs nothing
//! installed and finishes in seconds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use tower::{ServiceBuilder, ServiceExt};
use tower_lb::{
    BalanceService, Balancer, BoxError, HttpToReqwest, OutlierDetection, Policy, RequestKey,
    SessionKey,
};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

type Client = BalanceService<HttpToReqwest>;

const CONCURRENCY: usize = 32;

/// A running backend: its name, address and the weight it is given.
struct Backend {
    name: &'static str,
    server: MockServer,
    weight: u32,
}

impl Backend {
    /// Starts a backend that answers every request after `delay`, naming
    /// itself in the `x-backend` header.
    async fn start(name: &'static str, weight: u32, delay: Duration) -> Self {
        let server = MockServer::start().await;
        Mock::given(any())
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("x-backend", name)
                    .set_delay(delay),
            )
            .mount(&server)
            .await;
        Backend {
            name,
            server,
            weight,
        }
    }
}

/// The name a backend gives itself in its answers.
fn backend_of(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned()
}

/// Latencies seen by the client, by the backend that answered.
type Latencies = BTreeMap<String, Vec<Duration>>;

/// Sends `count` GETs through `client`, `CONCURRENCY` at a time.
async fn send(client: &Client, count: usize) -> Result<(Latencies, Duration), BoxError> {
    let started = Instant::now();
    let results: Vec<_> = stream::iter(0..count)
        .map(|i| {
            let client = client.clone();
            async move {
                let request =
                    http::Request::get(format!("/items/{i}")).body(reqwest::Body::from(""))?;
                let sent = Instant::now();
                let response = client.oneshot(request).await?;
                Ok::<_, BoxError>((backend_of(&response), sent.elapsed()))
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut latencies = Latencies::new();
    for result in results {
        let (name, latency) = result?;
        latencies.entry(name).or_default().push(latency);
    }
    Ok((latencies, started.elapsed()))
}

/// The nearest-rank percentile of sorted samples; `None` if there are none.
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Prints one row per backend: weight, requests, share against the fair
/// share, latency percentiles, and the balancer's own response-time estimate.
fn print_table(
    title: &str,
    backends: &[Backend],
    balancer: &Balancer,
    phase: (Latencies, Duration),
) {
    let (mut latencies, elapsed) = phase;
    let total: usize = latencies.values().map(Vec::len).sum();
    let stats = balancer.stats();
    let total_weight: u32 = backends
        .iter()
        .filter_map(|b| stats.endpoint(b.server.uri()))
        .map(|e| e.weight)
        .sum();
    println!("\n{title}");
    println!(
        "{total} requests in {:.2} s ({:.0} req/s), concurrency {CONCURRENCY}",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "{:<8} {:>6} {:>9} {:>8} {:>9} {:>10} {:>10} {:>10} {:>9}",
        "backend", "weight", "requests", "share", "expected", "p50", "p99", "ewma", "failures"
    );
    for backend in backends {
        let Some(endpoint) = stats.endpoint(backend.server.uri()) else {
            println!("{:<8} (removed)", backend.name);
            continue;
        };
        let mut seen = latencies.remove(backend.name).unwrap_or_default();
        seen.sort();
        let share = seen.len() as f64 / total.max(1) as f64;
        let expected = f64::from(endpoint.weight) / f64::from(total_weight.max(1));
        println!(
            "{:<8} {:>6} {:>9} {:>7.2}% {:>8.2}% {:>10} {:>10} {:>10} {:>9}",
            backend.name,
            endpoint.weight,
            seen.len(),
            share * 100.0,
            expected * 100.0,
            percentile(&seen, 50.0).map_or_else(|| "-".into(), ms),
            percentile(&seen, 99.0).map_or_else(|| "-".into(), ms),
            endpoint.latency_ewma.map_or_else(|| "-".into(), ms),
            endpoint.failures.total(),
        );
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut backends = vec![
        Backend::start("alpha", 5, Duration::from_millis(2)).await,
        Backend::start("bravo", 3, Duration::from_millis(2)).await,
        Backend::start("charlie", 1, Duration::from_millis(4)).await,
        Backend::start("delta", 1, Duration::from_millis(4)).await,
    ];
    let balancer = backends
        .iter()
        .fold(Balancer::builder(), |b, backend| {
            b.endpoint_weighted(backend.server.uri(), backend.weight)
        })
        .policy(Policy::weighted_round_robin())
        .build()?;
    let client = ServiceBuilder::new()
        .layer(balancer.layer())
        .service(HttpToReqwest::new(reqwest::Client::new()));

    println!("tower-lb demo: {} backends on 127.0.0.1", backends.len());
    for b in &backends {
        println!("  {:<8} {}  weight {}", b.name, b.server.uri(), b.weight);
    }

    let phase = send(&client, 4_000).await?;
    print_table(
        "1. Smooth weighted round robin, weights 5:3:1:1",
        &backends,
        &balancer,
        phase,
    );

    // Change the set at runtime: drain one backend, add another.
    let echo = Backend::start("echo", 2, Duration::from_millis(2)).await;
    balancer.add(echo.server.uri(), echo.weight)?;
    balancer.drain(backends[3].server.uri())?;
    backends.push(echo);
    let phase = send(&client, 2_000).await?;
    print_table(
        "2. At runtime: delta drained (weight 0), echo added with weight 2",
        &backends,
        &balancer,
        phase,
    );

    sticky_sessions(&backends).await?;
    slow_backend().await?;
    failing_backend().await?;

    let stats = balancer.stats();
    println!(
        "\nall requests answered; the weighted balancer sent {1} in all and has {0} in flight",
        stats.in_flight(),
        stats.requests()
    );
    Ok(())
}

/// Scenario 3, session affinity: 500 users, 8 requests each, every request
/// carrying the user's `SessionKey`. Each user stays on one backend;
/// draining one backend moves only its users.
async fn sticky_sessions(backends: &[Backend]) -> Result<(), BoxError> {
    const USERS: usize = 500;
    const REQUESTS_PER_USER: usize = 8;
    let balancer = backends
        .iter()
        .fold(Balancer::builder(), |b, backend| {
            b.endpoint(backend.server.uri())
        })
        .policy(Policy::maglev().key(RequestKey::session()))
        .build()?;
    let client = ServiceBuilder::new()
        .layer(balancer.layer())
        .service(HttpToReqwest::new(reqwest::Client::new()));

    // Which backend each user landed on, for every one of their requests.
    let homes = |client: Client| async move {
        let requests = (0..USERS).flat_map(|u| (0..REQUESTS_PER_USER).map(move |_| u));
        let seen: Vec<Result<(usize, String), BoxError>> = stream::iter(requests)
            .map(|user| {
                let client = client.clone();
                async move {
                    let mut request = http::Request::get("/cart").body(reqwest::Body::from(""))?;
                    request
                        .extensions_mut()
                        .insert(SessionKey::new(format!("user-{user}")));
                    let response = client.oneshot(request).await?;
                    Ok((user, backend_of(&response)))
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut homes: Vec<BTreeSet<String>> = vec![BTreeSet::new(); USERS];
        for result in seen {
            let (user, name) = result?;
            homes[user].insert(name);
        }
        Ok::<_, BoxError>(homes)
    };

    let before = homes(client.clone()).await?;
    let drained = backends[0].name;
    balancer.drain(backends[0].server.uri())?;
    let after = homes(client).await?;

    println!("\n3. Sticky sessions: Maglev over the SessionKey, {USERS} users x {REQUESTS_PER_USER} requests");
    println!(
        "{:<8} {:>14} {:>20}",
        "backend", "users", "users after drain"
    );
    for backend in backends {
        let count =
            |homes: &[BTreeSet<String>]| homes.iter().filter(|h| h.contains(backend.name)).count();
        println!(
            "{:<8} {:>14} {:>20}",
            backend.name,
            count(&before),
            count(&after)
        );
    }
    let split = before.iter().filter(|h| h.len() != 1).count();
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let moved_from_drained = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b != a && b.contains(drained))
        .count();
    println!(
        "users seen on more than one backend: {split}; after draining {drained}: {moved} users moved, {moved_from_drained} of them were on {drained}"
    );
    Ok(())
}

/// Scenario 4, one slow backend: three answer in 2 ms, one in 20 ms. Round
/// robin gives the slow one its quarter; least response time routes round it.
async fn slow_backend() -> Result<(), BoxError> {
    let backends = [
        Backend::start("fast-1", 1, Duration::from_millis(2)).await,
        Backend::start("fast-2", 1, Duration::from_millis(2)).await,
        Backend::start("fast-3", 1, Duration::from_millis(2)).await,
        Backend::start("slow", 1, Duration::from_millis(20)).await,
    ];
    println!("\n4. One slow backend (20 ms; the others 2 ms), 3000 requests per policy");
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "policy", "fast-1", "fast-2", "fast-3", "slow", "p50", "p99"
    );
    let policies: [(&str, Policy); 2] = [
        ("round robin", Policy::round_robin()),
        ("least response time", Policy::least_response_time().into()),
    ];
    for (name, policy) in policies {
        let balancer = backends
            .iter()
            .fold(Balancer::builder(), |b, backend| {
                b.endpoint(backend.server.uri())
            })
            .policy(policy)
            .build()?;
        let client = ServiceBuilder::new()
            .layer(balancer.layer())
            .service(HttpToReqwest::new(reqwest::Client::new()));
        let (latencies, _) = send(&client, 3_000).await?;
        let mut all: Vec<Duration> = latencies.values().flatten().copied().collect();
        all.sort();
        let share = |backend: &str| {
            let n = latencies.get(backend).map_or(0, Vec::len);
            format!("{:.1}%", n as f64 / all.len().max(1) as f64 * 100.0)
        };
        println!(
            "{:<22} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10}",
            name,
            share("fast-1"),
            share("fast-2"),
            share("fast-3"),
            share("slow"),
            percentile(&all, 50.0).map_or_else(|| "-".into(), ms),
            percentile(&all, 99.0).map_or_else(|| "-".into(), ms),
        );
    }
    Ok(())
}

/// Scenario 5, a backend that fails and recovers: it starts answering 503,
/// is ejected after five failures, gets nothing while out, and is
/// re-admitted by itself once its ejection time is over.
async fn failing_backend() -> Result<(), BoxError> {
    const EJECTION: Duration = Duration::from_secs(3);
    let backends = [
        Backend::start("one", 1, Duration::from_millis(2)).await,
        Backend::start("two", 1, Duration::from_millis(2)).await,
        Backend::start("three", 1, Duration::from_millis(2)).await,
        Backend::start("four", 1, Duration::from_millis(2)).await,
    ];
    let events = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let detection = OutlierDetection::default()
        .base_ejection_time(EJECTION)
        .on_event({
            let events = events.clone();
            move |event| {
                if let Ok(mut events) = events.lock() {
                    events.push((started.elapsed(), event.clone()));
                }
            }
        });
    let balancer = backends
        .iter()
        .fold(Balancer::builder(), |b, backend| {
            b.endpoint(backend.server.uri())
        })
        .policy(Policy::round_robin())
        .outlier_detection(detection)
        .build()?;
    let client = ServiceBuilder::new()
        .layer(balancer.layer())
        .service(HttpToReqwest::new(reqwest::Client::new()));
    let four = &backends[3];
    let answer_with = |status: u16| async move {
        four.server.reset().await;
        Mock::given(any())
            .respond_with(ResponseTemplate::new(status).insert_header("x-backend", four.name))
            .mount(&four.server)
            .await;
    };

    println!(
        "\n5. A backend fails and recovers (round robin over four; ejection {} s)",
        EJECTION.as_secs()
    );
    println!(
        "{:<30} {:>9} {:>11} {:>10}",
        "phase", "requests", "to \"four\"", "503s seen"
    );
    let phase = |name: &'static str, count: usize| {
        let client = client.clone();
        async move {
            let before = four.server.received_requests().await.map_or(0, |r| r.len());
            let mut errors = 0;
            for i in 0..count {
                let request =
                    http::Request::get(format!("/p/{i}")).body(reqwest::Body::from(""))?;
                let response = client.clone().oneshot(request).await?;
                errors += usize::from(response.status().is_server_error());
            }
            let after = four.server.received_requests().await.map_or(0, |r| r.len());
            println!("{name:<30} {count:>9} {:>11} {errors:>10}", after - before);
            Ok::<_, BoxError>(())
        }
    };
    phase("healthy", 200).await?;
    answer_with(503).await;
    phase("\"four\" starts answering 503", 100).await?;
    phase("\"four\" ejected", 200).await?;
    answer_with(200).await;
    let ejected_at = events
        .lock()
        .ok()
        .and_then(|e| e.first().map(|(at, _)| *at))
        .unwrap_or_default();
    tokio::time::sleep(
        (ejected_at + EJECTION).saturating_sub(started.elapsed()) + Duration::from_millis(50),
    )
    .await;
    phase("healthy again, re-admitted", 200).await?;
    for (at, event) in events.lock().map(|e| e.clone()).unwrap_or_default() {
        println!("  at {:>6.0} ms: {event:?}", at.as_secs_f64() * 1e3);
    }
    Ok(())
}
