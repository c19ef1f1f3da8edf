//! A tight loop of requests for `perf record`, and the experiment that
//! shows where two cores lose time.
//!
//! `cargo build --release -p tower-lb-bench --bin request_loop`, then:
//! - `target/release/request_loop layer wrr [threads]` — requests through
//!   the layer over a service that answers at once (`raw` for none), from
//!   one thread or several, each with its own clone of the service;
//! - `target/release/request_loop select maglev 2` — `Balancer::select`
//!   on two threads sharing one balancer;
//! - `target/release/request_loop select maglev 2 separate` — the same,
//!   each thread with a balancer of its own over the same endpoints.
//!
//! Policies: `wrr`, `random`, `least_time`, `ring_header`, `maglev`;
//! `floor`: no balancer of ours, the least any balancer that rewrites URIs
//! does (a rotation per service clone and the URI set to the endpoint's
//! scheme and authority through `http`'s own types, nothing counted);
//! `floor_counted`: the same plus an in-flight count per endpoint, up when
//! sent and down when answered (one shared atomic each way).
//! - `target/release/request_loop convert http` — `HttpToReqwest` turning
//!   `http::Request`s into `reqwest::Request`s for a service that answers
//!   at once (`http-extensions`: each request carries a session key;
//!   `reqwest`: the same `reqwest::Request`s built directly from a URL, as
//!   `client.get(url)` does).
//!
//! `ENDPOINTS` (default 10) and `COUNT` (default 5,000,000 per thread)
//! set the size; `RETRIES=default` turns the default retries on (off
//! otherwise); `INNER=shared` makes the inner service one whose clones
//! share a reference count, as a `reqwest::Client`'s do. Prints ns per request (per thread, for `select`).

use std::hint::black_box;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::FutureExt;
use tower::{Layer, Service};
use tower_lb::{Balancer, Policy, RequestKey, Retries, SessionKey};
use tower_lb_bench::{Floor, Trivial};

/// A request with the key header and a session key.
fn request(n: usize) -> http::Request<()> {
    let mut request = http::Request::new(());
    *request.uri_mut() = http::Uri::from_static("/item");
    request
        .headers_mut()
        .insert("x-user-id", http::HeaderValue::from(n as u64));
    request
}

/// [`Trivial`] behind a shared reference count, cloned as a
/// `reqwest::Client` is.
#[derive(Clone)]
struct SharedTrivial(std::sync::Arc<Trivial>);

impl Service<http::Request<()>> for SharedTrivial {
    type Response = <Trivial as Service<http::Request<()>>>::Response;
    type Error = <Trivial as Service<http::Request<()>>>::Error;
    type Future = <Trivial as Service<http::Request<()>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let mut inner = *self.0;
        inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<()>) -> Self::Future {
        let mut inner = *self.0;
        inner.call(request)
    }
}

fn drive<S: Service<http::Request<()>>>(service: &mut S, request: http::Request<()>) {
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    if let Poll::Ready(Ok(())) = service.poll_ready(&mut cx) {
        let _ = black_box(service.call(request).now_or_never());
    }
}

/// A `reqwest` service that answers every request at once.
#[derive(Clone, Copy)]
struct Answer;

impl Service<reqwest::Request> for Answer {
    type Response = reqwest::Response;
    type Error = reqwest::Error;
    type Future = std::future::Ready<Result<reqwest::Response, reqwest::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), reqwest::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: reqwest::Request) -> Self::Future {
        black_box(&request);
        std::future::ready(Ok(reqwest::Response::from(http::Response::new(""))))
    }
}

/// `count` requests of `kind` (`http`, `http-extensions`, `reqwest`) to
/// [`Answer`], through `HttpToReqwest` for the `http` kinds.
fn convert(kind: &str, count: usize) {
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let url = "http://127.0.0.1:41234/item";
    let mut adapter = tower_lb::HttpToReqwest::new(Answer);
    let mut plain = Answer;
    for n in 0..count {
        if kind == "reqwest" {
            let Ok(url) = reqwest::Url::parse(url) else {
                return;
            };
            let request = reqwest::Request::new(http::Method::GET, url);
            if let Poll::Ready(Ok(())) = plain.poll_ready(&mut cx) {
                let _ = black_box(plain.call(request).now_or_never());
            }
            continue;
        }
        let Ok(mut request) = http::Request::get(url).body(reqwest::Body::from("")) else {
            return;
        };
        if kind == "http-extensions" {
            request
                .extensions_mut()
                .insert(SessionKey::new((n as u64).to_le_bytes()));
        }
        if let Poll::Ready(Ok(())) =
            Service::<http::Request<reqwest::Body>>::poll_ready(&mut adapter, &mut cx)
        {
            let _ = black_box(adapter.call(request).now_or_never());
        }
    }
}

fn policy(name: &str) -> Policy {
    match name {
        "random" => Policy::random(),
        "least_time" => Policy::least_response_time().into(),
        "ring_header" => Policy::ring_hash()
            .key(RequestKey::header("x-user-id"))
            .into(),
        "maglev" => Policy::maglev().into(),
        _ => Policy::weighted_round_robin(),
    }
}

fn balancer(endpoints: usize, name: &str) -> Balancer {
    let built = (0..endpoints)
        .fold(Balancer::builder(), |b, i| {
            b.endpoint(format!("http://10.0.{}.{}:8080", i / 200, i % 200 + 1))
        })
        .policy(policy(name))
        .retry(if std::env::var_os("RETRIES").is_some() {
            Retries::default()
        } else {
            Retries::disabled()
        })
        .build();
    match built {
        Ok(balancer) => balancer,
        Err(error) => panic!("the loop's balancer is valid: {error}"),
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.into());
    let (mode, name) = (arg(0, "layer"), arg(1, "wrr"));
    let endpoints = env("ENDPOINTS", 10);
    let count = env("COUNT", 5_000_000);
    let started = Instant::now();
    if mode == "convert" {
        convert(&name, count);
    } else if mode == "select" {
        let threads: usize = arg(2, "1").parse().unwrap_or(1);
        let separate = arg(3, "") == "separate";
        let shared = balancer(endpoints, &name);
        let requests: Vec<_> = (0..1024)
            .map(|n| {
                let mut r = request(n);
                r.extensions_mut()
                    .insert(SessionKey::new((n as u64).to_le_bytes()));
                r
            })
            .collect();
        std::thread::scope(|scope| {
            for t in 0..threads {
                let (shared, requests, name) = (&shared, &requests, &name);
                scope.spawn(move || {
                    let own = separate.then(|| balancer(endpoints, name));
                    let balancer = own.as_ref().unwrap_or(shared);
                    for n in 0..count {
                        if let Ok(selection) = balancer.select(&requests[(n * 7 + t) % 1024]) {
                            drop(black_box(selection));
                        }
                    }
                });
            }
        });
    } else {
        // Each thread sends through its own clone of the service, all over
        // one balancer, as tokio's workers do.
        let threads: usize = arg(2, "1").parse().unwrap_or(1);
        let floor = name
            .starts_with("floor")
            .then(|| Floor::new(endpoints, name == "floor_counted"));
        let shared_inner = std::env::var("INNER").is_ok_and(|inner| inner == "shared");
        let service = (name != "raw" && floor.is_none() && !shared_inner)
            .then(|| balancer(endpoints, &name).layer().layer(Trivial));
        let shared = (name != "raw" && shared_inner).then(|| {
            balancer(endpoints, &name)
                .layer()
                .layer(SharedTrivial(std::sync::Arc::new(Trivial)))
        });
        std::thread::scope(|scope| {
            for _ in 0..threads {
                let (mut service, mut floor) = (service.clone(), floor.clone());
                let mut shared = shared.clone();
                scope.spawn(move || {
                    for n in 0..count {
                        if let Some(shared) = shared.as_mut() {
                            drive(shared, request(n % 1024));
                            continue;
                        }
                        match (service.as_mut(), floor.as_mut()) {
                            (Some(service), _) => drive(service, request(n % 1024)),
                            (None, Some(floor)) => drive(floor, request(n % 1024)),
                            (None, None) => drive(&mut Trivial, request(n % 1024)),
                        }
                    }
                });
            }
        });
    }
    let per = started.elapsed().as_nanos() as f64 / count as f64;
    println!("{mode} {name}: {per:.0} ns per request");
}
