//! What choosing an endpoint costs, for every policy of ours and for the
//! peers, at 10, 100 and 1,000 endpoints, on one thread and with two
//! threads picking from one shared balancer at once.
//!
//! `cargo bench -p tower-lb-bench --bench pick`
//!
//! Groups (criterion writes each figure to `target/criterion/<group>/...`,
//! which `--bin report` reads):
//! - `pick_one_thread`, `pick_two_threads`: one selection. Ours is
//!   `Balancer::select` and dropping the selection: the policy's choice
//!   plus the in-flight accounting every real request pays (two atomic
//!   increments, a clock read, the release). Pingora's is
//!   `LoadBalancer::select` (round robin, random, Ketama), which chooses
//!   and counts nothing. With two threads, the figure is the time per pick
//!   on each thread.
//! - `call_one_thread`: one request through `poll_ready` + `call` to a
//!   trivial in-process service: our layer against tower's
//!   `p2c::Balance` (PeakEWMA and pending-requests loads), which is only
//!   usable this way. `none` is the trivial service alone.
//! - `request_path`: the same, at 10 endpoints, for the per-request cost
//!   targets: weighted round robin with retries off and with the default
//!   retries, least time, ring hash keyed on a header, ring hash keyed on a
//!   cookie with the cookie jar attached (with the `cookies` feature:
//!   `--features cookies`) against the same without a jar, tower's
//!   pending-requests balancer, and `floor_rewrite` (`_counted`): no
//!   balancer, only a rotation and the URI rewrite (plus an in-flight
//!   count), the least a balancer that rewrites URIs does (see
//!   `tower_lb_bench::Floor`). Requests carry the key header and no cookie.

use std::hint::black_box;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use futures::FutureExt;
use pingora_load_balancing::selection::{Consistent, Random, RoundRobin};
use pingora_load_balancing::LoadBalancer;
use tower::balance::p2c::Balance as TowerBalance;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover, PendingRequestsDiscover};
use tower::{Layer, Service};
use tower_lb::{Balancer, Policy, Retries, SessionKey};
use tower_lb_bench::{Floor, Trivial};

const SIZES: [usize; 3] = [10, 100, 1_000];
/// Distinct keys the requests cycle through (hash policies see new keys).
const KEYS: usize = 1_024;

fn request(n: usize) -> http::Request<()> {
    let mut request = http::Request::new(());
    *request.uri_mut() = http::Uri::from_static("/item");
    request
        .extensions_mut()
        .insert(SessionKey::new(n.to_le_bytes()));
    request
}

/// Requests made up front, so that picking is all that is timed.
fn requests() -> Vec<http::Request<()>> {
    (0..KEYS).map(request).collect()
}

fn keys() -> Vec<[u8; 8]> {
    (0..KEYS).map(|n| n.to_le_bytes()).collect()
}

fn address(i: usize) -> String {
    format!("10.{}.{}.1:8080", i / 250, i % 250)
}

fn ours(endpoints: usize, policy: Policy) -> Balancer {
    let built = (0..endpoints)
        .fold(Balancer::builder(), |b, i| {
            b.endpoint(format!("http://{}", address(i)))
        })
        .policy(policy)
        .retry(Retries::disabled())
        .build();
    match built {
        Ok(balancer) => balancer,
        Err(error) => panic!("the bench's balancer is valid: {error}"),
    }
}

fn policies() -> Vec<(&'static str, Policy)> {
    vec![
        ("ours_weighted_round_robin", Policy::weighted_round_robin()),
        ("ours_round_robin", Policy::round_robin()),
        ("ours_random", Policy::random()),
        ("ours_least_time_p2c", Policy::least_response_time().into()),
        (
            "ours_least_time_exact",
            Policy::least_response_time().exact().into(),
        ),
        ("ours_ring_hash", Policy::ring_hash().into()),
        ("ours_maglev", Policy::maglev().into()),
    ]
}

/// Pingora's selectors over the same number of backends.
enum Pingora {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    Ketama(LoadBalancer<Consistent>),
}

impl Pingora {
    fn all(endpoints: usize) -> Vec<(&'static str, Pingora)> {
        let addresses: Vec<String> = (0..endpoints).map(address).collect();
        let built = || -> std::io::Result<Vec<(&'static str, Pingora)>> {
            let addrs = || addresses.iter().map(String::as_str);
            Ok(vec![
                (
                    "pingora_round_robin",
                    Pingora::RoundRobin(LoadBalancer::try_from_iter(addrs())?),
                ),
                (
                    "pingora_random",
                    Pingora::Random(LoadBalancer::try_from_iter(addrs())?),
                ),
                (
                    "pingora_ketama",
                    Pingora::Ketama(LoadBalancer::try_from_iter(addrs())?),
                ),
            ])
        };
        match built() {
            Ok(all) => all,
            Err(error) => panic!("pingora's balancer over static addresses: {error}"),
        }
    }

    /// `max_iterations` as pingora's own examples set it.
    fn select(&self, key: &[u8]) -> bool {
        match self {
            Pingora::RoundRobin(lb) => lb.select(key, 256).is_some(),
            Pingora::Random(lb) => lb.select(key, 256).is_some(),
            Pingora::Ketama(lb) => lb.select(key, 256).is_some(),
        }
    }
}

fn select_ours(balancer: &Balancer, requests: &[http::Request<()>], n: usize) {
    match balancer.select(&requests[n % KEYS]) {
        Ok(selection) => drop(black_box(selection)),
        Err(error) => panic!("a static balancer always selects: {error}"),
    }
}

/// Runs `pick(n)` `iters` times on each of two threads at once; returns
/// the longer thread's time, so the figure is the time per pick per thread.
fn on_two_threads<P: Fn(usize) + Sync>(iters: u64, pick: P) -> Duration {
    let times: Vec<Duration> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|t| {
                let pick = &pick;
                scope.spawn(move || {
                    let started = Instant::now();
                    for n in 0..iters as usize {
                        pick(n.wrapping_mul(7).wrapping_add(t));
                    }
                    started.elapsed()
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    times.into_iter().max().unwrap_or_default()
}

fn pick_one_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick_one_thread");
    let requests = requests();
    let keys = keys();
    for endpoints in SIZES {
        for (name, policy) in policies() {
            let balancer = ours(endpoints, policy);
            let mut n = 0usize;
            group.bench_function(BenchmarkId::new(name, endpoints), |b| {
                b.iter(|| {
                    n = n.wrapping_add(1);
                    select_ours(&balancer, &requests, n);
                })
            });
        }
        for (name, lb) in Pingora::all(endpoints) {
            let mut n = 0usize;
            group.bench_function(BenchmarkId::new(name, endpoints), |b| {
                b.iter(|| {
                    n = n.wrapping_add(1);
                    black_box(lb.select(&keys[n % KEYS]))
                })
            });
        }
    }
    group.finish();
}

fn pick_two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick_two_threads");
    let requests = requests();
    let keys = keys();
    for endpoints in SIZES {
        for (name, policy) in policies() {
            let balancer = ours(endpoints, policy);
            group.bench_function(BenchmarkId::new(name, endpoints), |b| {
                b.iter_custom(|iters| {
                    on_two_threads(iters, |n| select_ours(&balancer, &requests, n))
                })
            });
        }
        for (name, lb) in Pingora::all(endpoints) {
            group.bench_function(BenchmarkId::new(name, endpoints), |b| {
                b.iter_custom(|iters| {
                    on_two_threads(iters, |n| {
                        black_box(lb.select(&keys[n % KEYS]));
                    })
                })
            });
        }
    }
    group.finish();
}

/// Drives a tower service through `poll_ready` + `call` + completion.
fn drive<S>(service: &mut S, request: http::Request<()>)
where
    S: Service<http::Request<()>>,
    S::Error: std::fmt::Debug,
{
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    match service.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {
            let _ = black_box(service.call(request).now_or_never());
        }
        other => panic!(
            "a trivial service is always ready: {:?}",
            other.map(|r| r.err())
        ),
    }
}

fn call_one_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("call_one_thread");
    // Requests are made inside the timed loop (the layer consumes them);
    // `none` shows what that and the trivial service cost alone.
    let mut n = 0usize;
    group.bench_function(BenchmarkId::new("none", 1), |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            drive(&mut Trivial, request(n % KEYS));
        })
    });
    for endpoints in SIZES {
        for (name, policy) in [
            (
                "ours_layer_least_time_p2c",
                Policy::least_response_time().into(),
            ),
            ("ours_layer_round_robin", Policy::round_robin()),
        ] {
            let mut service = ours(endpoints, policy).layer().layer(Trivial);
            group.bench_function(BenchmarkId::new(name, endpoints), |b| {
                b.iter(|| {
                    n = n.wrapping_add(1);
                    drive(&mut service, request(n % KEYS));
                })
            });
        }
        let services = || ServiceList::new(vec![Trivial; endpoints]);
        let mut peak = TowerBalance::new(PeakEwmaDiscover::new(
            services(),
            Duration::from_millis(30),
            Duration::from_secs(10),
            CompleteOnResponse::default(),
        ));
        group.bench_function(BenchmarkId::new("tower_p2c_peak_ewma", endpoints), |b| {
            b.iter(|| {
                n = n.wrapping_add(1);
                drive(&mut peak, request(n % KEYS));
            })
        });
        let mut pending = TowerBalance::new(PendingRequestsDiscover::new(
            services(),
            CompleteOnResponse::default(),
        ));
        group.bench_function(BenchmarkId::new("tower_p2c_pending", endpoints), |b| {
            b.iter(|| {
                n = n.wrapping_add(1);
                drive(&mut pending, request(n % KEYS));
            })
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
        .without_plots()
}

/// A request for `request_path`: a path and the key header, nothing else.
fn keyed_request(n: usize) -> http::Request<()> {
    let mut request = http::Request::new(());
    *request.uri_mut() = http::Uri::from_static("/item");
    request
        .headers_mut()
        .insert("x-user-id", http::HeaderValue::from(n as u64));
    request
}

fn ours_with(policy: impl Into<Policy>, retries: Retries) -> Balancer {
    let built = (0..10)
        .fold(Balancer::builder(), |b, i| {
            b.endpoint(format!("http://{}", address(i)))
        })
        .policy(policy)
        .retry(retries)
        .build();
    match built {
        Ok(balancer) => balancer,
        Err(error) => panic!("the bench's balancer is valid: {error}"),
    }
}

fn request_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("request_path");
    let mut n = 0usize;
    group.bench_function(BenchmarkId::new("none", 10), |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            drive(&mut Trivial, keyed_request(n % KEYS));
        })
    });
    let header_key = || Policy::ring_hash().key(tower_lb::RequestKey::header("x-user-id"));
    let mut ours: Vec<(&str, Balancer)> = vec![
        (
            "ours_wrr",
            ours_with(Policy::weighted_round_robin(), Retries::disabled()),
        ),
        (
            "ours_wrr_default_retries",
            ours_with(Policy::weighted_round_robin(), Retries::default()),
        ),
        (
            "ours_least_time",
            ours_with(Policy::least_response_time(), Retries::disabled()),
        ),
        (
            "ours_ring_header_key",
            ours_with(header_key(), Retries::disabled()),
        ),
    ];
    if cfg!(feature = "cookies") {
        let cookie_key = || Policy::ring_hash().key(tower_lb::RequestKey::cookie("sid"));
        ours.push((
            "ours_ring_cookie_key_no_jar",
            ours_with(cookie_key(), Retries::disabled()),
        ));
        let with_jar = ours_with(cookie_key(), Retries::disabled());
        #[cfg(feature = "cookies")]
        drop(with_jar.cookie_jar());
        ours.push(("ours_ring_cookie_key_jar", with_jar));
    }
    for (name, balancer) in ours {
        let mut service = balancer.layer().layer(Trivial);
        group.bench_function(BenchmarkId::new(name, 10), |b| {
            b.iter(|| {
                n = n.wrapping_add(1);
                drive(&mut service, keyed_request(n % KEYS));
            })
        });
    }
    for (name, counted) in [("floor_rewrite", false), ("floor_rewrite_counted", true)] {
        let mut floor = Floor::new(10, counted);
        group.bench_function(BenchmarkId::new(name, 10), |b| {
            b.iter(|| {
                n = n.wrapping_add(1);
                drive(&mut floor, keyed_request(n % KEYS));
            })
        });
    }
    let mut pending = TowerBalance::new(PendingRequestsDiscover::new(
        ServiceList::new(vec![Trivial; 10]),
        CompleteOnResponse::default(),
    ));
    group.bench_function(BenchmarkId::new("tower_p2c_pending", 10), |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            drive(&mut pending, keyed_request(n % KEYS));
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = pick_one_thread, pick_two_threads, call_one_thread, request_path
}
criterion_main!(benches);
