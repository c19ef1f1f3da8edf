//! Bounded loads: under a skewed (Zipf) key stream no endpoint holds more
//! than c times the average of the requests in flight, while keys still
//! mostly go home.

use std::convert::Infallible;

use tokio::sync::watch;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_lb::{Balancer, ConsistentHash, Policy, RequestKey, SessionKey};

const ENDPOINTS: usize = 10;
const REQUESTS: usize = 2_000;
const DISTINCT_KEYS: usize = 1_000;

/// Key ranks drawn from a Zipf distribution with exponent 1: rank 1 is
/// drawn about 13% of the time, rank 1,000 about 0.013%.
fn zipf_keys(count: usize) -> Vec<usize> {
    let weights: Vec<f64> = (1..=DISTINCT_KEYS).map(|rank| 1.0 / rank as f64).collect();
    let total: f64 = weights.iter().sum();
    let cumulative: Vec<f64> = weights
        .iter()
        .scan(0.0, |sum, w| {
            *sum += w / total;
            Some(*sum)
        })
        .collect();
    let mut rng = fastrand::Rng::with_seed(7);
    (0..count)
        .map(|_| {
            let x = rng.f64();
            cumulative
                .partition_point(|&c| c < x)
                .min(DISTINCT_KEYS - 1)
        })
        .collect()
}

struct Run {
    /// Highest in-flight count of any endpoint, over the average, at the end.
    max_over_mean: f64,
    /// Whether every endpoint stayed within the bound after every request.
    bound_held: bool,
    /// Share of requests that went to their key's home endpoint.
    at_home: f64,
}

/// Sends REQUESTS Zipf-keyed requests and holds them all in flight.
async fn run(policy: ConsistentHash, factor: f64) -> Run {
    let urls: Vec<String> = (0..ENDPOINTS)
        .map(|i| format!("http://10.1.0.{}:80", i + 1))
        .collect();
    let build = |policy: ConsistentHash| {
        urls.iter()
            .fold(Balancer::builder(), |b, url| b.endpoint(url))
            .policy(policy.key(RequestKey::header("x-user")))
            .build()
            .unwrap()
    };
    let balancer = build(policy.clone());
    // The same policy with nothing in flight: where each key lives.
    let homes = build(policy);

    let (release, released) = watch::channel(false);
    let inner = service_fn(move |request: http::Request<()>| {
        let mut released = released.clone();
        async move {
            let _ = released.wait_for(|r| *r).await;
            Ok::<_, Infallible>(http::Response::new(
                request.uri().authority().map(|a| a.to_string()),
            ))
        }
    });
    let mut service = Layer::layer(&balancer.layer(), inner);

    let mut in_flight = Vec::with_capacity(REQUESTS);
    let mut bound_held = true;
    let mut at_home = 0;
    let mut previous = vec![0u64; ENDPOINTS];
    for (sent, key) in zipf_keys(REQUESTS).into_iter().enumerate() {
        let user = format!("user-{key}");
        let home = homes.locate(&SessionKey::new(&user)).unwrap();
        let request = http::Request::get("/")
            .header("x-user", &user)
            .body(())
            .unwrap();
        let response = service.ready().await.unwrap().call(request);
        in_flight.push(tokio::spawn(response));

        let stats = balancer.stats();
        let max = stats.endpoints.iter().map(|e| e.in_flight).max().unwrap();
        let bound = (factor * (sent + 1) as f64 / ENDPOINTS as f64).ceil() as u64;
        bound_held &= max <= bound;
        // The endpoint whose request count grew took this request.
        let counts: Vec<u64> = stats.endpoints.iter().map(|e| e.requests).collect();
        let chosen = counts
            .iter()
            .zip(&previous)
            .position(|(now, before)| now > before);
        at_home += usize::from(chosen.map(|i| stats.endpoints[i].url.as_str()) == Some(&*home));
        previous = counts;
    }
    let stats = balancer.stats();
    let max = stats.endpoints.iter().map(|e| e.in_flight).max().unwrap();
    let run = Run {
        max_over_mean: max as f64 / (REQUESTS as f64 / ENDPOINTS as f64),
        bound_held,
        at_home: at_home as f64 / REQUESTS as f64,
    };

    release.send(true).unwrap();
    for request in in_flight {
        request.await.unwrap().unwrap();
    }
    let stats = balancer.stats();
    assert_eq!(stats.in_flight(), 0);
    assert_eq!(stats.requests(), REQUESTS as u64);
    run
}

#[tokio::test(flavor = "current_thread")]
async fn no_endpoint_exceeds_c_times_the_average_under_a_zipf_stream() {
    for (name, policy) in [("ring", Policy::ring_hash()), ("maglev", Policy::maglev())] {
        let unbounded = run(policy.clone(), f64::INFINITY).await;
        let bounded = run(policy.bounded_loads(), 1.25).await;
        println!(
            "{name}: Zipf keys, {REQUESTS} in flight over {ENDPOINTS}: max/mean {:.2} unbounded, {:.2} with c = 1.25; {:.1}% of requests at their key's home",
            unbounded.max_over_mean,
            bounded.max_over_mean,
            bounded.at_home * 100.0
        );
        assert!(
            unbounded.max_over_mean > 1.25,
            "{name}: the stream is not skewed enough to test"
        );
        assert!(
            bounded.bound_held,
            "{name}: an endpoint went over c × average"
        );
        assert!(bounded.max_over_mean <= 1.25 + 1e-9);
        assert!(
            bounded.at_home > 0.5,
            "{name}: keys should mostly stay home"
        );
    }
}
