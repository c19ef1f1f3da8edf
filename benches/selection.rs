//! What selection costs: key lookups in the consistent-hash tables, table
//! builds, and one request through the layer for every policy, at 10, 100
//! and 1,000 endpoints.
//!
//! `cargo bench --bench selection`

use std::convert::Infallible;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use futures::FutureExt;
use tower::{service_fn, Layer, Service};
use tower_lb::{Balancer, Policy, SessionKey};

const SIZES: [usize; 3] = [10, 100, 1_000];

fn balancer(endpoints: usize, policy: impl Into<Policy>) -> Balancer {
    (0..endpoints)
        .fold(Balancer::builder(), |b, i| {
            b.endpoint_weighted(
                format!("http://10.{}.{}.1:8080", i / 250, i % 250),
                1 + (i % 3) as u32,
            )
        })
        .policy(policy)
        .build()
        .expect("a valid benchmark set")
}

fn policies() -> Vec<(&'static str, Policy)> {
    vec![
        ("weighted_round_robin", Policy::weighted_round_robin()),
        ("round_robin", Policy::round_robin()),
        ("random", Policy::random()),
        ("ring", Policy::ring_hash().into()),
        ("maglev", Policy::maglev().into()),
        ("ring_bounded", Policy::ring_hash().bounded_loads().into()),
        ("maglev_bounded", Policy::maglev().bounded_loads().into()),
    ]
}

fn hash_lookup(c: &mut Criterion) {
    let keys: Vec<SessionKey> = (0..4096)
        .map(|i| SessionKey::new(format!("user-{i}")))
        .collect();
    let mut group = c.benchmark_group("hash_lookup");
    for n in SIZES {
        for (name, policy) in policies().into_iter().filter(|(_, p)| p.is_hash()) {
            let balancer = balancer(n, policy);
            let mut next = 0;
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter(|| {
                    next = (next + 1) & 4095;
                    black_box(balancer.locate(&keys[next]))
                })
            });
        }
    }
    group.finish();
}

fn table_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("table_build");
    group.sample_size(10);
    for n in SIZES {
        for (name, policy) in [("ring", Policy::ring_hash()), ("maglev", Policy::maglev())] {
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter(|| black_box(balancer(n, policy.clone())))
            });
        }
    }
    group.finish();
}

/// A request for the `layer_call` group, keyed for the hashing policies.
fn request(n: u32) -> http::Request<()> {
    let mut request = http::Request::get("/users/42").body(()).expect("valid");
    request
        .extensions_mut()
        .insert(SessionKey::new(n.to_le_bytes()));
    request
}

fn trivial_service(
) -> impl Service<http::Request<()>, Response = http::Response<()>, Error = Infallible, Future: Send>
{
    service_fn(|_: http::Request<()>| async { Ok::<_, Infallible>(http::Response::new(())) })
}

fn layer_call(c: &mut Criterion) {
    let mut group = c.benchmark_group("layer_call");
    // The same request to the same trivial service with no balancer: what the
    // harness itself costs.
    let mut raw = trivial_service();
    let mut next = 0u32;
    group.bench_function("raw", |b| {
        b.iter_batched(
            || {
                next = next.wrapping_add(1);
                request(next)
            },
            |request| raw.call(request).now_or_never(),
            BatchSize::SmallInput,
        )
    });
    for n in SIZES {
        for (name, policy) in policies() {
            let balancer = balancer(n, policy);
            let inner = service_fn(|_: http::Request<()>| async {
                Ok::<_, Infallible>(http::Response::new(()))
            });
            let mut service = balancer.layer().layer(inner);
            let mut next = 0u32;
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter_batched(
                    || {
                        next = next.wrapping_add(1);
                        let mut request = http::Request::get("/users/42").body(()).expect("valid");
                        request
                            .extensions_mut()
                            .insert(SessionKey::new(next.to_le_bytes()));
                        request
                    },
                    |request| service.call(request).now_or_never(),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

/// The learned-affinity table's lookup: a least-recently-used cache (a hit
/// moves the session to the front) against the plain map it replaced, both
/// behind the shard's mutex, 4,096 sessions.
fn learned_lookup(c: &mut Criterion) {
    use std::collections::HashMap;
    use std::num::NonZeroUsize;
    use std::sync::Mutex;

    const SESSIONS: u64 = 4_096;
    let mut group = c.benchmark_group("learned_lookup");
    let lru = Mutex::new(lru::LruCache::<u64, u32>::new(
        NonZeroUsize::new(SESSIONS as usize).unwrap(),
    ));
    let map = Mutex::new(HashMap::<u64, u32>::new());
    for key in 0..SESSIONS {
        let hash = tower_lb::key_hash(&key.to_le_bytes());
        lru.lock().unwrap().put(hash, key as u32);
        map.lock().unwrap().insert(hash, key as u32);
    }
    let hashes: Vec<u64> = (0..SESSIONS)
        .map(|k| tower_lb::key_hash(&(k * 7 % SESSIONS).to_le_bytes()))
        .collect();
    let mut i = 0;
    group.bench_function("lru_get", |b| {
        b.iter(|| {
            i = (i + 1) % hashes.len();
            black_box(lru.lock().unwrap().get(&hashes[i]).copied())
        })
    });
    group.bench_function("hashmap_get", |b| {
        b.iter(|| {
            i = (i + 1) % hashes.len();
            black_box(map.lock().unwrap().get(&hashes[i]).copied())
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    hash_lookup,
    table_build,
    layer_call,
    learned_lookup
);
criterion_main!(benches);
