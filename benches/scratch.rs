use std::convert::Infallible;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use futures::FutureExt;
use tower::{service_fn, Layer, Service};
use tower_lb::{Balancer, Policy, Retries, SessionKey};

fn balancer(retry: bool) -> Balancer {
    (0..10)
        .fold(Balancer::builder(), |b, i| b.endpoint_weighted(&format!("http://10.0.{i}.1:8080"), 1 + (i % 3) as u32))
        .policy(Policy::weighted_round_robin())
        .retry(if retry { Retries::default() } else { Retries::disabled() })
        .build().unwrap()
}
fn req(n: u32, ext: bool) -> http::Request<()> {
    let mut r = http::Request::get("/users/42").body(()).unwrap();
    if ext { r.extensions_mut().insert(SessionKey::new(n.to_le_bytes())); }
    r
}
fn scratch(c: &mut Criterion) {
    let mut g = c.benchmark_group("scratch");
    for (name, retry, ext) in [("retry_ext", true, true), ("noretry_ext", false, true), ("retry_noext", true, false), ("noretry_noext", false, false)] {
        let b = balancer(retry);
        let mut s = b.layer().layer(service_fn(|_: http::Request<()>| async { Ok::<_, Infallible>(http::Response::new(())) }));
        let mut n = 0u32;
        g.bench_function(name, |bch| bch.iter_batched(|| { n += 1; req(n, ext) }, |r| s.call(r).now_or_never(), BatchSize::SmallInput));
    }
    let b = balancer(false);
    let r = req(1, false);
    g.bench_function("select_only", |bch| bch.iter(|| b.select(&r).map(|s| s.finish(http::StatusCode::OK))));
    g.bench_function("clone_ext_req", |bch| { let r = req(1, true); bch.iter(|| { let mut c = http::Request::new(()); *c.uri_mut() = r.uri().clone(); *c.headers_mut() = r.headers().clone(); *c.extensions_mut() = r.extensions().clone(); c }) });
    g.finish();
}
criterion_group!(benches, scratch);
criterion_main!(benches);
