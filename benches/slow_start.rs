//! What slow start costs per request, in one run: one request through the
//! layer to a trivial in-process service at 10 endpoints, weighted round
//! robin and least time, with slow start off, on while no endpoint ramps
//! (`idle`: the one flag read), and on while one endpoint of the ten is in
//! its window (`ramping`: the clock read, the factor, the thinning).
//!
//! `cargo bench --bench slow_start`

use std::convert::Infallible;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use futures::FutureExt;
use tower::{service_fn, Layer, Service};
use tower_lb::{Balancer, Policy, Retries, SlowStart};

#[derive(Clone, Copy, PartialEq)]
enum Ramp {
    Off,
    Idle,
    Ramping,
}

fn url(i: u32) -> String {
    format!("http://10.0.{i}.1:8080")
}

/// Ten endpoints of weight 1; with `Ramping`, the tenth is added after
/// `build()` under a window far longer than the bench, so it ramps
/// throughout.
fn balancer(policy: Policy, ramp: Ramp) -> Balancer {
    let from_builder = if ramp == Ramp::Ramping { 9 } else { 10 };
    let mut builder = (0..from_builder)
        .fold(Balancer::builder(), |b, i| b.endpoint_weighted(url(i), 1))
        .policy(policy)
        .retry(Retries::disabled());
    if ramp != Ramp::Off {
        builder = builder.slow_start(SlowStart::new(Duration::from_secs(3_600)));
    }
    let balancer = builder.build().unwrap();
    if ramp == Ramp::Ramping {
        balancer.add(url(9), 1).unwrap();
    }
    balancer
}

fn req() -> http::Request<()> {
    http::Request::get("/item").body(()).unwrap()
}

fn slow_start(c: &mut Criterion) {
    let mut g = c.benchmark_group("slow_start");
    let policies = [
        ("wrr", Policy::weighted_round_robin()),
        ("least_time", Policy::least_response_time().into()),
    ];
    for (policy_name, policy) in policies {
        for (ramp_name, ramp) in [
            ("off", Ramp::Off),
            ("idle", Ramp::Idle),
            ("ramping", Ramp::Ramping),
        ] {
            let mut s = balancer(policy.clone(), ramp).layer().layer(service_fn(
                |_: http::Request<()>| async { Ok::<_, Infallible>(http::Response::new(())) },
            ));
            g.bench_function(format!("{policy_name}_{ramp_name}"), |b| {
                b.iter_batched(req, |r| s.call(r).now_or_never(), BatchSize::SmallInput)
            });
        }
    }
    g.finish();
}

criterion_group!(benches, slow_start);
criterion_main!(benches);
