//! One request through the layer to a trivial in-process service, at 10
//! endpoints, against the same request with no balancer (`raw`): weighted
//! round robin with retries off and with the default retries, least time,
//! ring hash keyed on a header. The request carries a path and one header.
//!
//! `cargo bench --bench request_path`; `bash bench/before_after.sh` runs this
//! same file against an older commit of the library and this one, in
//! alternating rounds, for a before/after table.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use futures::FutureExt;
use std::convert::Infallible;
use tower::{service_fn, Layer, Service};
use tower_lb::{Balancer, Policy, Retries as R};

fn balancer(policy: impl Into<Policy>, retry: bool) -> Balancer {
    (0..10)
        .fold(Balancer::builder(), |b, i| {
            b.endpoint_weighted(format!("http://10.0.{i}.1:8080"), 1)
        })
        .policy(policy)
        .retry(if retry { R::default() } else { R::disabled() })
        .build()
        .unwrap()
}
fn req(n: u32) -> http::Request<()> {
    let mut r = http::Request::get("/item").body(()).unwrap();
    r.headers_mut()
        .insert("x-user-id", http::HeaderValue::from(n));
    r
}
fn request_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_path");
    let mut raw =
        service_fn(|_: http::Request<()>| async { Ok::<_, Infallible>(http::Response::new(())) });
    let mut n = 0u32;
    g.bench_function("raw", |b| {
        b.iter_batched(
            || {
                n += 1;
                req(n)
            },
            |r| raw.call(r).now_or_never(),
            BatchSize::SmallInput,
        )
    });
    let header = || Policy::ring_hash().key(tower_lb::RequestKey::header("x-user-id"));
    let rows: Vec<(&str, Balancer)> = vec![
        (
            "wrr_retries_off",
            balancer(Policy::weighted_round_robin(), false),
        ),
        (
            "wrr_default_retries",
            balancer(Policy::weighted_round_robin(), true),
        ),
        (
            "least_time_retries_off",
            balancer(Policy::least_response_time(), false),
        ),
        ("ring_header_retries_off", balancer(header(), false)),
    ];
    for (name, b) in rows {
        let mut s = b.layer().layer(service_fn(|_: http::Request<()>| async {
            Ok::<_, Infallible>(http::Response::new(()))
        }));
        g.bench_function(name, |bch| {
            bch.iter_batched(
                || {
                    n += 1;
                    req(n)
                },
                |r| s.call(r).now_or_never(),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}
criterion_group!(benches, request_path);
criterion_main!(benches);
