//! Hedged requests on real hyper servers on loopback, in paused time (the
//! servers sleep on the same clock, so a "200 ms" answer takes 200 ms of
//! the test's time): a slow backend's request is hedged to a fast one after
//! the delay and the fast answer wins, the loser is dropped and counted
//! cancelled; requests not safe to send twice are never hedged; the budget
//! stops hedges and counts its refusals; the attempts cap holds; and, over
//! generated latencies, never more than the cap, counts settle, and hedges
//! stay within the budget's allowance.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_lb::{Balancer, Hedge, Hedging, Policy, Retries};

use crate::support::{assert_settled, backend_name, client, Client, BACKEND};

/// A hyper server on 127.0.0.1 that answers `status` after `delay_ms` of
/// tokio time (changeable while it runs), naming itself, and counts the
/// requests it received by path (the metrics tests use it too).
pub(crate) struct Backend {
    addr: SocketAddr,
    delay_ms: Arc<AtomicU64>,
    status: Arc<AtomicU16>,
    paths: Arc<Mutex<HashMap<String, usize>>>,
}

impl Backend {
    pub(crate) async fn start(name: &'static str, delay_ms: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let delay = Arc::new(AtomicU64::new(delay_ms));
        let status = Arc::new(AtomicU16::new(200));
        let paths = Arc::<Mutex<HashMap<String, usize>>>::default();
        let state = (delay.clone(), status.clone(), paths.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (delay, status, paths) = state.clone();
                tokio::spawn(async move {
                    let answer = service_fn(move |request: http::Request<_>| {
                        *paths
                            .lock()
                            .unwrap()
                            .entry(request.uri().path().to_owned())
                            .or_default() += 1;
                        let delay = Duration::from_millis(delay.load(Ordering::SeqCst));
                        let status = status.load(Ordering::SeqCst);
                        async move {
                            tokio::time::sleep(delay).await;
                            let response = http::Response::builder()
                                .status(status)
                                .header(BACKEND, name)
                                .body(Full::new(Bytes::new()))
                                .unwrap();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), answer)
                        .await;
                });
            }
        });
        Backend {
            addr,
            delay_ms: delay,
            status,
            paths,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn received(&self) -> usize {
        self.paths.lock().unwrap().values().sum()
    }

    fn most_per_path(&self) -> HashMap<String, usize> {
        self.paths.lock().unwrap().clone()
    }
}

/// A round-robin balancer over `backends` with `hedging` and `retry`.
fn balancer(backends: &[Backend], hedging: Hedging, retry: Retries) -> Balancer {
    backends
        .iter()
        .fold(Balancer::builder(), |b, s| b.endpoint(s.url()))
        .policy(Policy::round_robin())
        .hedge(hedging)
        .retry(retry)
        .build()
        .unwrap()
}

fn request(method: http::Method, path: &str) -> http::Request<reqwest::Body> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .body(reqwest::Body::from("{}"))
        .unwrap()
}

/// Sends `request`; returns the backend that answered and how long it took.
async fn timed(client: &Client, request: http::Request<reqwest::Body>) -> (String, Duration) {
    let started = Instant::now();
    let response = client.clone().oneshot(request).await.expect("an answer");
    (backend_name(&response), started.elapsed())
}

fn stats_of(balancer: &Balancer, backend: &Backend) -> tower_lb::EndpointStats {
    balancer.stats().endpoint(backend.url()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_slow_backends_request_is_hedged_to_a_fast_one_and_the_fast_answer_wins() {
    let slow = Backend::start("slow", 10_000).await;
    let fast = Backend::start("fast", 5).await;
    let backends = [slow, fast];
    let balancer = balancer(
        &backends,
        Hedging::after(Duration::from_millis(100)),
        Retries::default(),
    );
    let client = client(&balancer);
    // Round robin: the first request goes to the slow one.
    let (answered, took) = timed(&client, request(http::Method::GET, "/a")).await;
    assert_eq!(answered, "fast");
    assert!(
        took >= Duration::from_millis(105) && took < Duration::from_millis(200),
        "{took:?}"
    );
    let loser = stats_of(&balancer, &backends[0]);
    assert_eq!((loser.in_flight, loser.cancelled), (0, 1), "{loser:?}");
    assert_eq!(loser.failures.total(), 0, "cancelled, not failed");
    let extra = balancer.stats().extra;
    assert_eq!((extra.hedges, extra.hedges_won), (1, 1));
    // The next one goes to the fast one first: answered before the delay.
    let (answered, took) = timed(&client, request(http::Method::GET, "/b")).await;
    assert_eq!(answered, "fast");
    assert!(took < Duration::from_millis(100));
    assert_eq!(balancer.stats().extra.hedges, 1);
    assert_settled(&balancer);
}

#[tokio::test(start_paused = true)]
async fn a_post_is_never_hedged_unless_marked_safe_to_send_twice() {
    let backends = [
        Backend::start("slow", 1_000).await,
        Backend::start("fast", 5).await,
    ];
    let balancer = balancer(
        &backends,
        Hedging::after(Duration::from_millis(50)),
        Retries::default(),
    );
    let client = client(&balancer);
    let (answered, took) = timed(&client, request(http::Method::POST, "/orders")).await;
    assert_eq!(
        (answered.as_str(), took >= Duration::from_secs(1)),
        ("slow", true)
    );
    assert_eq!(balancer.stats().extra.hedges, 0);
    assert_eq!(backends[1].received(), 0);
    // Round robin again at the slow one: with an Idempotency-Key it is.
    timed(&client, request(http::Method::GET, "/skip")).await;
    let mut keyed = request(http::Method::POST, "/orders");
    keyed
        .headers_mut()
        .insert("idempotency-key", http::HeaderValue::from_static("k1"));
    let (answered, _) = timed(&client, keyed).await;
    assert_eq!(answered, "fast");
    assert_eq!(balancer.stats().extra.hedges, 1);
    assert_settled(&balancer);
}

#[tokio::test(start_paused = true)]
async fn a_request_turns_hedging_off_or_on_with_its_own_delay() {
    let backends = [
        Backend::start("slow", 1_000).await,
        Backend::start("fast", 5).await,
    ];
    let on_request = Hedging::after(Duration::from_millis(50)).on_request();
    let balancer = balancer(&backends, on_request, Retries::default());
    let client = client(&balancer);
    // Not asked: not hedged.
    let (answered, _) = timed(&client, request(http::Method::GET, "/1")).await;
    assert_eq!(answered, "slow");
    timed(&client, request(http::Method::GET, "/2")).await;
    // Asked, with its own delay.
    let mut asked = request(http::Method::GET, "/3");
    asked
        .extensions_mut()
        .insert(Hedge::After(Duration::from_millis(300)));
    let (answered, took) = timed(&client, asked).await;
    assert_eq!(answered, "fast");
    assert!(took >= Duration::from_millis(305) && took < Duration::from_millis(400));

    // On every request by default; `Hedge::Off` keeps one out.
    let balancer = self::balancer(
        &backends,
        Hedging::after(Duration::from_millis(50)),
        Retries::default(),
    );
    let client = crate::support::client(&balancer);
    let mut off = request(http::Method::GET, "/4");
    off.extensions_mut().insert(Hedge::Off);
    let (answered, _) = timed(&client, off).await;
    assert_eq!(answered, "slow");
    assert_eq!(balancer.stats().extra.hedges, 0);
}

#[tokio::test(start_paused = true)]
async fn the_budget_refuses_hedges_and_counts_the_refusals() {
    let backends = [
        Backend::start("a", 1_000).await,
        Backend::start("b", 1_000).await,
    ];
    // 10% of the requests of the last 10 s, no reserve: 40 requests at
    // once allow 4 hedges.
    let retry = Retries::disabled().budget(Duration::from_secs(10), 10, 0);
    let balancer = balancer(&backends, Hedging::after(Duration::from_millis(10)), retry);
    let client = client(&balancer);
    let answers = stream::iter(0..40)
        .map(|i| timed(&client, request(http::Method::GET, &format!("/{i}"))))
        .buffer_unordered(40)
        .collect::<Vec<_>>()
        .await;
    assert_eq!(answers.len(), 40);
    let extra = balancer.stats().extra;
    assert_eq!((extra.hedges, extra.hedges_refused), (4, 36), "{extra:?}");
    assert_eq!((extra.retries, extra.retries_refused), (0, 0));
    assert_eq!(backends[0].received() + backends[1].received(), 44);
    assert_settled(&balancer);
}

#[tokio::test(start_paused = true)]
async fn at_most_max_attempts_are_sent_to_distinct_endpoints() {
    let mut backends = Vec::new();
    for name in ["a", "b", "c", "d", "e"] {
        backends.push(Backend::start(name, 1_000).await);
    }
    let hedging = Hedging::after(Duration::from_millis(10)).max_attempts(3);
    let balancer = balancer(&backends, hedging, Retries::default());
    let client = client(&balancer);
    let (answered, took) = timed(&client, request(http::Method::GET, "/x")).await;
    assert_eq!(answered, "a", "the first attempt answers first");
    assert!(took < Duration::from_millis(1_010));
    let per_backend: Vec<usize> = backends.iter().map(Backend::received).collect();
    assert_eq!(
        per_backend,
        [1, 1, 1, 0, 0],
        "three attempts, three endpoints"
    );
    let stats = balancer.stats();
    assert_eq!(stats.extra.hedges, 2);
    let cancelled: u64 = stats.endpoints.iter().map(|e| e.cancelled).sum();
    assert_eq!(cancelled, 2);
    assert_settled(&balancer);
}

#[tokio::test(start_paused = true)]
async fn a_hedge_that_fails_while_the_first_waits_does_not_end_the_request() {
    let backends = [
        Backend::start("slow", 200).await,
        Backend::start("broken", 5).await,
    ];
    backends[1].status.store(503, Ordering::SeqCst);
    let balancer = balancer(
        &backends,
        Hedging::after(Duration::from_millis(20)),
        Retries::default().idempotent_failures(),
    );
    let client = client(&balancer);
    let response = client
        .clone()
        .oneshot(request(http::Method::GET, "/y"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(backend_name(&response), "slow");
    let broken = stats_of(&balancer, &backends[1]);
    assert_eq!(broken.failures.server_error, 1);
    // The last attempt standing is the first: nothing more is sent.
    assert_eq!(backends[0].received() + backends[1].received(), 2);
    assert_settled(&balancer);
}

#[tokio::test(start_paused = true)]
async fn the_default_delay_is_the_sets_recent_p95() {
    let backends = [Backend::start("a", 4).await, Backend::start("b", 4).await];
    let balancer = balancer(&backends, Hedging::default(), Retries::default());
    let client = client(&balancer);
    for i in 0..60 {
        timed(&client, request(http::Method::GET, &format!("/warm/{i}"))).await;
    }
    assert_eq!(balancer.stats().extra.hedges, 0);
    backends[0].delay_ms.store(1_000, Ordering::SeqCst);
    // The next request goes to "a" (60 were even): hedged after about the
    // p95 of 4 ms (a bucket's upper bound, within 20%).
    let (answered, took) = timed(&client, request(http::Method::GET, "/slow")).await;
    assert_eq!(answered, "b");
    assert!(took < Duration::from_millis(15), "{took:?}");
    assert_eq!(balancer.stats().extra.hedges_won, 1);
    assert_settled(&balancer);
}

/// One generated fleet: each backend's latency, the cap, the delay, the
/// budget's share and the concurrency.
#[derive(Debug, Clone)]
struct Fleet {
    latencies_ms: Vec<u64>,
    max_attempts: u32,
    delay_ms: u64,
    budget_percent: u32,
    requests: usize,
}

fn fleets() -> impl Strategy<Value = Fleet> {
    (
        prop::collection::vec(1u64..400, 2..=5),
        2u32..=5,
        1u64..100,
        0u32..=100,
        1usize..40,
    )
        .prop_map(
            |(latencies_ms, max_attempts, delay_ms, budget_percent, requests)| Fleet {
                latencies_ms,
                max_attempts,
                delay_ms,
                budget_percent,
                requests,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn hedges_never_exceed_the_cap_or_the_budget_and_counts_settle(fleet in fleets()) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut backends = Vec::new();
            for latency in &fleet.latencies_ms {
                backends.push(Backend::start("x", *latency).await);
            }
            let retry = Retries::disabled()
                .budget(Duration::from_secs(10), fleet.budget_percent, 0);
            let hedging = Hedging::after(Duration::from_millis(fleet.delay_ms))
                .max_attempts(fleet.max_attempts);
            let balancer = balancer(&backends, hedging, retry);
            let client = client(&balancer);
            let answers = stream::iter(0..fleet.requests)
                .map(|i| timed(&client, request(http::Method::GET, &format!("/{i}"))))
                .buffer_unordered(fleet.requests)
                .collect::<Vec<_>>()
                .await;
            prop_assert_eq!(answers.len(), fleet.requests);
            // Per request (its path), at most the cap over all backends.
            let mut attempts: HashMap<String, usize> = HashMap::new();
            for backend in &backends {
                for (path, n) in backend.most_per_path() {
                    prop_assert!(n <= 1, "an endpoint got one request twice");
                    *attempts.entry(path).or_default() += n;
                }
            }
            let cap = fleet.max_attempts.min(fleet.latencies_ms.len() as u32) as usize;
            prop_assert!(attempts.values().all(|&n| n <= cap), "{:?}", attempts);
            // All requests were sent within the budget's window.
            let extra = balancer.stats().extra;
            let allowance = fleet.requests as f64 * f64::from(fleet.budget_percent) / 100.0;
            prop_assert!(extra.hedges as f64 <= allowance, "{:?} > {}", extra, allowance);
            // Every attempt the balancer made is counted on its endpoint; a
            // hedge sent at the instant the first attempt answers may be
            // cancelled before its server reads it, so the servers may see
            // fewer (a generated fleet with latency = delay did).
            let sent: usize = attempts.values().sum();
            prop_assert!(sent as u64 <= fleet.requests as u64 + extra.hedges);
            prop_assert!(sent >= fleet.requests);
            let stats = balancer.stats();
            let attempted: u64 = stats.endpoints.iter().map(|e| e.requests).sum();
            prop_assert_eq!(attempted, fleet.requests as u64 + extra.hedges);
            prop_assert_eq!(stats.in_flight(), 0);
            for e in &stats.endpoints {
                prop_assert_eq!(
                    e.requests,
                    e.successes + e.failures.total() + e.cancelled + e.client_errors
                );
            }
            Ok(())
        })?;
    }
}
