//! Balanced gRPC calls with tonic: three Echo servers on 127.0.0.1, a
//! generated client over `Balancer::grpc()` with weights 3:2:1, one server
//! killed while calls run, and where the calls went.
//!
//! Run it with `cargo run --example grpc --features tonic`. It needs no
//! `protoc` (the Echo service's code is checked in: tests/proto/echo.rs),
//! sends 8,000 calls in all and finishes in seconds.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tower_lb::{BalancedChannel, Balancer, BoxError, OutlierDetection, Policy};

/// The Echo service's code, generated from tests/proto/echo.proto by
/// tonic-prost-build and checked in (the tests prove it current).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
mod echo {
    include!("../tests/proto/echo.rs");
}

use echo::echo_client::EchoClient;
use echo::echo_server::{Echo, EchoServer};
use echo::{EchoReply, EchoRequest};

const CONCURRENCY: usize = 32;
/// Calls in the phase in which a server is killed, and after how many
/// started calls it is killed.
const CRASH_PHASE_CALLS: usize = 3_000;
const KILL_AFTER: usize = 1_000;

/// The Echo service of one server: answers after `delay` with its name.
struct Named {
    name: &'static str,
    delay: Duration,
}

#[tonic::async_trait]
impl Echo for Named {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        tokio::time::sleep(self.delay).await;
        Ok(Response::new(EchoReply {
            server: self.name.to_owned(),
            message: request.into_inner().message,
        }))
    }

    type StreamStream = futures::stream::Empty<Result<EchoReply, Status>>;

    async fn stream(
        &self,
        _: Request<EchoRequest>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        Ok(Response::new(futures::stream::empty()))
    }
}

/// A tonic server on 127.0.0.1, on a thread and runtime of its own, so
/// that killing it ends its listener and every connection at once, as a
/// crashed process would (no GOAWAY, no graceful end).
struct Server {
    name: &'static str,
    weight: u32,
    url: String,
    kill: Arc<Mutex<Option<oneshot::Sender<()>>>>,
}

impl Server {
    fn start(name: &'static str, weight: u32, delay: Duration) -> Result<Self, BoxError> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}", listener.local_addr()?);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (kill, killed) = oneshot::channel::<()>();
        std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                // TCP_NODELAY, as tonic's `serve` sets it: with Nagle on, a
                // reply's last frames can wait 40 ms for the client's ACK.
                let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                let serve = tonic::transport::Server::builder()
                    .add_service(EchoServer::new(Named { name, delay }))
                    .serve_with_incoming(incoming);
                tokio::select! {
                    _ = serve => {}
                    _ = killed => {}
                }
            });
            // Dropping the runtime drops the connections' tasks: their
            // sockets close with calls still open on them.
            drop(runtime);
        });
        Ok(Server {
            name,
            weight,
            url,
            kill: Arc::new(Mutex::new(Some(kill))),
        })
    }

    /// What kills the server, once: callable from any task.
    fn killer(&self) -> impl Fn() + Clone {
        let kill = self.kill.clone();
        move || {
            let sender = kill.lock().ok().and_then(|mut kill| kill.take());
            if let Some(sender) = sender {
                let _ = sender.send(());
            }
        }
    }
}

/// Latencies of answered calls by the server that answered, and the
/// codes of the calls that failed.
#[derive(Default)]
struct Phase {
    latencies: BTreeMap<String, Vec<Duration>>,
    errors: BTreeMap<String, usize>,
    elapsed: Duration,
}

/// Sends `count` unary calls, `CONCURRENCY` at a time; `on_start(i)` runs
/// as the `i`-th call starts.
async fn send(
    client: &EchoClient<BalancedChannel>,
    count: usize,
    on_start: impl Fn(usize) + Clone,
) -> Phase {
    let started = Instant::now();
    let results: Vec<Result<(String, Duration), Status>> = stream::iter(0..count)
        .map(|i| {
            let mut client = client.clone();
            let on_start = on_start.clone();
            async move {
                on_start(i);
                let sent = Instant::now();
                let reply = client
                    .unary(EchoRequest {
                        message: i.to_string(),
                        count: 1,
                    })
                    .await?;
                Ok((reply.into_inner().server, sent.elapsed()))
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut phase = Phase::default();
    for result in results {
        match result {
            Ok((server, latency)) => phase.latencies.entry(server).or_default().push(latency),
            Err(status) => {
                *phase
                    .errors
                    .entry(format!("{:?}", status.code()))
                    .or_default() += 1
            }
        }
    }
    phase.elapsed = started.elapsed();
    phase
}

/// The nearest-rank percentile of sorted samples; `None` if there are none.
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// One row per server, as the demo prints them: weight, calls answered,
/// share against the weight's share, latency percentiles, the balancer's
/// response-time estimate, failures it counted and whether it is ejected;
/// then the errors the caller got.
fn print_table(title: &str, servers: &[Server], balancer: &Balancer, mut phase: Phase) {
    let answered: usize = phase.latencies.values().map(Vec::len).sum();
    let failed: usize = phase.errors.values().sum();
    let stats = balancer.stats();
    let total_weight: u32 = servers.iter().map(|s| s.weight).sum();
    println!("\n{title}");
    println!(
        "{} calls in {:.2} s ({:.0} calls/s), concurrency {CONCURRENCY}",
        answered + failed,
        phase.elapsed.as_secs_f64(),
        (answered + failed) as f64 / phase.elapsed.as_secs_f64()
    );
    println!(
        "{:<8} {:>6} {:>7} {:>8} {:>9} {:>10} {:>10} {:>10} {:>9} {:>8}",
        "server",
        "weight",
        "calls",
        "share",
        "expected",
        "p50",
        "p99",
        "ewma",
        "failures",
        "ejected"
    );
    for server in servers {
        let Some(endpoint) = stats.endpoint(&server.url) else {
            println!("{:<8} (removed)", server.name);
            continue;
        };
        let mut seen = phase.latencies.remove(server.name).unwrap_or_default();
        seen.sort();
        let share = seen.len() as f64 / answered.max(1) as f64;
        let expected = f64::from(server.weight) / f64::from(total_weight.max(1));
        println!(
            "{:<8} {:>6} {:>7} {:>7.2}% {:>8.2}% {:>10} {:>10} {:>10} {:>9} {:>8}",
            server.name,
            endpoint.weight,
            seen.len(),
            share * 100.0,
            expected * 100.0,
            percentile(&seen, 50.0).map_or_else(|| "-".into(), ms),
            percentile(&seen, 99.0).map_or_else(|| "-".into(), ms),
            endpoint.latency_ewma.map_or_else(|| "-".into(), ms),
            endpoint.failures.total(),
            if endpoint.ejected { "yes" } else { "no" },
        );
    }
    if phase.errors.is_empty() {
        println!("errors returned to the caller: none");
    } else {
        let codes: Vec<String> = phase
            .errors
            .iter()
            .map(|(code, n)| format!("{n} {code}"))
            .collect();
        println!(
            "errors returned to the caller: {failed} ({})",
            codes.join(", ")
        );
        println!(
            "  (calls open on a server when it dies fail: it may have processed them; \
             calls marked safe to repeat would be retried. Calls refused before they \
             reached it went to another server.)"
        );
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let servers = vec![
        Server::start("alpha", 3, Duration::from_millis(1))?,
        Server::start("bravo", 2, Duration::from_millis(1))?,
        Server::start("charlie", 1, Duration::from_millis(1))?,
    ];
    let balancer = servers
        .iter()
        .fold(Balancer::builder(), |b, server| {
            b.endpoint_weighted(&server.url, server.weight)
        })
        .policy(Policy::weighted_round_robin())
        // Five failures in a row eject a server for 30 s.
        .outlier_detection(OutlierDetection::default())
        .build()?;
    // Every call is bounded: 2 s at most, connecting included.
    let channel = balancer.grpc_with(|endpoint| {
        Ok(endpoint
            .timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(1)))
    })?;
    let client = EchoClient::new(channel);

    println!(
        "tower-lb gRPC example: {} tonic servers on 127.0.0.1",
        servers.len()
    );
    for s in &servers {
        println!("  {:<8} {}  weight {}", s.name, s.url, s.weight);
    }

    let phase = send(&client, 3_000, |_| {}).await;
    print_table(
        "1. Smooth weighted round robin, weights 3:2:1",
        &servers,
        &balancer,
        phase,
    );

    // Kill charlie as the KILL_AFTER-th call starts, with calls in flight.
    let kill = servers[2].killer();
    let phase = send(&client, CRASH_PHASE_CALLS, move |i| {
        if i == KILL_AFTER {
            kill();
        }
    })
    .await;
    print_table(
        "2. charlie killed after 1,000 of 3,000 calls (its connections closed, its port refused)",
        &servers,
        &balancer,
        phase,
    );

    let phase = send(&client, 2_000, |_| {}).await;
    print_table(
        "3. After the crash: charlie ejected, the others share its calls 3:2",
        &servers,
        &balancer,
        phase,
    );

    let stats = balancer.stats();
    println!(
        "\n{} calls in all, {} in flight now",
        stats.requests(),
        stats.in_flight()
    );
    Ok(())
}
