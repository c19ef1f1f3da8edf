//! Nothing a user does to the endpoint set, and nothing a custom picker
//! answers, panics a request: empty sets, sets emptied by every update
//! method, all endpoints drained or ejected, keyed requests under every
//! policy, pickers that answer out of range or are used over another set.
//! Each example below panicked before its fix; the property at the end
//! drives generated change sequences through `select`, `locate` and the
//! layer under every policy.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::policies::{ejecting_at_once, PreferZoneA};
use proptest::prelude::*;
use tower::discover::Change;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_lb::{
    Balancer, BoxError, Candidates, ConsistentHash, Endpoint, Error, OutlierDetection, PickContext,
    Picker, Policy, RequestKey, Retries, SelectionPolicy, SessionKey, Subset,
};

const A: &str = "http://10.0.0.1:80";
const B: &str = "http://10.0.0.2:80";

fn keyed(key: &str) -> http::Request<()> {
    let mut request = http::Request::get("/").body(()).unwrap();
    request.extensions_mut().insert(SessionKey::new(key));
    request
}

fn keyless() -> http::Request<()> {
    http::Request::get("/").body(()).unwrap()
}

/// Every hashing policy shape: ring and Maglev (small and default tables),
/// plain, with bounded loads, with a fallback.
fn hashing_policies() -> Vec<ConsistentHash> {
    let mut policies = Vec::new();
    for table in [
        Policy::maglev(),
        Policy::maglev().table_size(7),
        Policy::ring_hash(),
        Policy::ring_hash().virtual_nodes(1),
    ] {
        policies.push(table.clone());
        policies.push(table.clone().bounded_loads());
        policies.push(
            table
                .clone()
                .bounded_loads()
                .fallback(Policy::least_response_time()),
        );
        policies.push(table.fallback(Policy::round_robin()));
    }
    policies
}

/// The service the layer wraps: answers at once, with the endpoint's
/// authority in the body.
fn answering() -> impl Service<
    http::Request<()>,
    Response = http::Response<String>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<http::Response<String>, Infallible>> + Send,
> + Clone {
    service_fn(|request: http::Request<()>| async move {
        let authority = request.uri().authority().map(|a| a.to_string());
        Ok::<_, Infallible>(http::Response::new(authority.unwrap_or_default()))
    })
}

/// Every way to empty a set, each leaving a balancer with no endpoint.
async fn emptied(policy: &ConsistentHash) -> Vec<(&'static str, Balancer)> {
    let two = || {
        Balancer::builder()
            .endpoint(A)
            .endpoint(B)
            .policy(policy.clone())
            .build()
            .unwrap()
    };
    let built_empty = Balancer::builder().policy(policy.clone()).build().unwrap();
    let removed = two();
    removed.remove(A).unwrap();
    removed.remove(B).unwrap();
    let replaced = two();
    replaced.replace(Vec::<Endpoint>::new()).unwrap();
    let drained = two();
    drained.drain(A).unwrap();
    drained.drain(B).unwrap();
    let applied = two();
    applied
        .apply([Change::<_, u32>::Remove(A), Change::Remove(B)])
        .unwrap();
    let followed = two();
    let changes = futures::stream::iter([
        Ok::<_, Infallible>(Change::<_, u32>::Remove(A)),
        Ok(Change::Remove(B)),
    ]);
    followed.follow(changes).await.unwrap();
    vec![
        ("built with none", built_empty),
        ("remove", removed),
        ("replace([])", replaced),
        ("drain", drained),
        ("apply", applied),
        ("follow", followed),
    ]
}

#[tokio::test]
async fn a_keyed_request_on_an_emptied_set_gets_no_endpoint_under_every_hashing_policy() {
    for policy in hashing_policies() {
        for (how, balancer) in emptied(&policy).await {
            let what = format!("{policy:?} emptied by {how}");
            assert!(
                matches!(
                    balancer.select(&keyed("user-1")),
                    Err(Error::NoEndpointAvailable)
                ),
                "select: {what}"
            );
            assert!(
                matches!(balancer.select(&keyless()), Err(Error::NoEndpointAvailable)),
                "select without a key: {what}"
            );
            assert_eq!(
                balancer.locate(&SessionKey::new("user-1")),
                None,
                "locate: {what}"
            );
            let mut service = Layer::layer(&balancer.layer(), answering());
            let result = service.ready().await.unwrap().call(keyed("user-1")).await;
            assert!(
                matches!(result, Err(Error::NoEndpointAvailable)),
                "layer: {what}: {result:?}"
            );
            // And the set comes back to life.
            balancer.replace([Endpoint::new(A)]).unwrap();
            assert_eq!(
                balancer.locate(&SessionKey::new("user-1")).as_deref(),
                Some(A)
            );
            assert_eq!(balancer.select(&keyed("user-1")).unwrap().endpoint(), A);
        }
    }
}

/// A custom picker that walks a list of its own, which may name
/// endpoints that do not exist.
#[derive(Debug)]
struct Walks(Vec<usize>);

impl SelectionPolicy for Walks {
    fn build(&self, _: &Candidates<'_>) -> Box<dyn Picker> {
        Box::new(WalksPicker(self.0.clone()))
    }
}

#[derive(Debug)]
struct WalksPicker(Vec<usize>);

impl Picker for WalksPicker {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        ctx.first_available(self.0.iter().copied())
    }
}

/// Ejects `url` through one failed request.
fn eject(balancer: &Balancer, url: &str) {
    for _ in 0..10 {
        let selection = balancer.select(&keyless()).unwrap();
        if selection.endpoint() == url {
            selection.finish(http::StatusCode::SERVICE_UNAVAILABLE);
        } else {
            selection.finish(http::StatusCode::OK);
        }
        let stats = balancer.stats();
        if stats.endpoint(url).map(|e| e.ejected) == Some(true) {
            return;
        }
    }
    panic!("{url} was not ejected");
}

#[tokio::test]
async fn first_available_over_indices_out_of_range_skips_them_with_an_endpoint_ejected() {
    // Endpoint 1 first (to eject it), then 7 and 9, which do not exist,
    // then 0.
    let balancer = Balancer::builder()
        .endpoint(A)
        .endpoint(B)
        .policy(Policy::custom(Walks(vec![1, 7, 9, 0])))
        .outlier_detection(ejecting_at_once())
        .build()
        .unwrap();
    eject(&balancer, B);
    for _ in 0..4 {
        assert_eq!(balancer.select(&keyless()).unwrap().endpoint(), A);
    }
    // And on a retry: the layer retries a GET answered 503 by A on B, which
    // is ejected, and the walk meets 7 and 9 again.
    let service = service_fn(|request: http::Request<()>| async move {
        let status = match request.uri().authority().map(|a| a.as_str()) {
            Some("10.0.0.1:80") => http::StatusCode::SERVICE_UNAVAILABLE,
            _ => http::StatusCode::OK,
        };
        let mut response = http::Response::new(());
        *response.status_mut() = status;
        Ok::<_, Infallible>(response)
    });
    let mut service = Layer::layer(&balancer.layer(), service);
    let answer = service.ready().await.unwrap().call(keyless()).await;
    assert!(answer.is_ok(), "{answer:?}");
}

/// "Avoid canaries", with the two pickers swapped by mistake: the subset
/// picks with a picker built over the whole set.
#[derive(Debug)]
struct SwappedPickers(Policy);

#[derive(Debug)]
struct SwappedPicker {
    stable: Subset,
    whole: Box<dyn Picker>,
}

impl SelectionPolicy for SwappedPickers {
    fn build(&self, endpoints: &Candidates<'_>) -> Box<dyn Picker> {
        let stable = endpoints.subset(|i| endpoints.labels(i).get("canary") != Some("true"));
        Box::new(SwappedPicker {
            whole: self.0.build(endpoints),
            stable,
        })
    }
}

impl Picker for SwappedPicker {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        self.stable
            .pick(&*self.whole, ctx)
            .or_else(|| self.whole.pick(ctx))
    }
}

#[tokio::test]
async fn a_subset_picking_with_a_picker_built_over_the_whole_set_never_panics() {
    let inner: Vec<Policy> = vec![
        Policy::least_response_time().into(),
        Policy::least_response_time().exact().into(),
        Policy::maglev()
            .key(RequestKey::session())
            .bounded_loads()
            .into(),
        Policy::ring_hash().bounded_loads().into(),
        Policy::round_robin(),
        Policy::random(),
    ];
    for policy in inner {
        let balancer = (0..8)
            .fold(Balancer::builder(), |b, i| {
                let endpoint = Endpoint::new(format!("http://10.0.0.{}:80", i + 1));
                // Most are canaries, so the whole set's picker meets indices
                // past the end of the stable subset.
                b.endpoint(if i < 2 {
                    endpoint
                } else {
                    endpoint.with_label("canary", "true")
                })
            })
            .policy(Policy::custom(SwappedPickers(policy.clone())))
            .seed(7)
            .build()
            .unwrap();
        for i in 0..200 {
            let request = if i % 2 == 0 {
                keyed(&format!("user-{i}"))
            } else {
                keyless()
            };
            let selection = balancer.select(&request).unwrap();
            selection.finish(http::StatusCode::OK);
        }
    }
}

/// A custom policy whose pickers answer what the generated case says:
/// an index (possibly out of range), a walk over indices, a subset picked
/// with the whole set's picker, or a zone preference done right.
#[derive(Clone, Debug)]
enum Custom {
    Answer(usize),
    Walk(Vec<usize>),
    Swapped(u8),
    PreferZone(u8),
}

#[derive(Debug)]
struct Generated(Custom);

#[derive(Debug)]
struct Answer(usize);

impl Picker for Answer {
    fn pick(&self, _: &PickContext<'_>) -> Option<usize> {
        Some(self.0)
    }
}

impl SelectionPolicy for Generated {
    fn build(&self, endpoints: &Candidates<'_>) -> Box<dyn Picker> {
        match &self.0 {
            Custom::Answer(i) => Box::new(Answer(*i)),
            Custom::Walk(list) => Box::new(WalksPicker(list.clone())),
            Custom::Swapped(inner) => SwappedPickers(builtin(*inner)).build(endpoints),
            Custom::PreferZone(inner) => PreferZoneA(builtin(*inner)).build(endpoints),
        }
    }
}

/// The built-in policies, by number.
fn builtin(n: u8) -> Policy {
    let hashing = hashing_policies();
    match n {
        0 => Policy::round_robin(),
        1 => Policy::weighted_round_robin(),
        2 => Policy::random(),
        3 => Policy::least_response_time().into(),
        4 => Policy::least_response_time().exact().into(),
        n => hashing[usize::from(n - 5) % hashing.len()].clone().into(),
    }
}

fn any_policy() -> impl Strategy<Value = Policy> {
    let custom = prop_oneof![
        (0usize..12).prop_map(Custom::Answer),
        prop::collection::vec(0usize..12, 0..6).prop_map(Custom::Walk),
        (0u8..21).prop_map(Custom::Swapped),
        (0u8..21).prop_map(Custom::PreferZone),
    ];
    prop_oneof![
        (0u8..21).prop_map(builtin),
        custom.prop_map(|c| Policy::custom(Generated(c))),
    ]
}

/// One step of a generated run. Endpoints are `http://10.0.0.N:80`, N from
/// 1 to 6: 1 and 2 answer 503, 3 fails (a refused connect), the others
/// answer 200; odd N are in zone "a".
#[derive(Clone, Debug)]
enum Step {
    Add(u8, u32),
    Remove(u8),
    Replace(Vec<(u8, u32)>),
    Drain(u8),
    SetWeight(u8, u32),
    Apply(Vec<(bool, u8, u32)>),
    Follow(Vec<(bool, u8, u32)>),
    Select { key: Option<u8>, hold: bool },
    Finish,
    Locate(u8),
    Layer { key: Option<u8> },
    Advance(u64),
}

fn url(n: u8) -> String {
    format!("http://10.0.0.{n}:80")
}

fn endpoint(n: u8, weight: u32) -> Endpoint {
    let zone = if n % 2 == 1 { "a" } else { "b" };
    Endpoint::new(url(n))
        .with_weight(weight)
        .with_label("zone", zone)
}

fn any_step() -> impl Strategy<Value = Step> {
    let n = 1u8..=6;
    // Weights 0 (drained) to 3, and now and then an absurd one.
    let weight = prop_oneof![8 => 0u32..4, 1 => Just(u32::MAX), 1 => Just(10_000)];
    let change = (any::<bool>(), n.clone(), weight.clone());
    let key = prop::option::of(0u8..20);
    prop_oneof![
        1 => (n.clone(), weight.clone()).prop_map(|(n, w)| Step::Add(n, w)),
        1 => n.clone().prop_map(Step::Remove),
        1 => prop::collection::vec((n.clone(), weight.clone()), 0..5).prop_map(Step::Replace),
        1 => n.clone().prop_map(Step::Drain),
        1 => (n.clone(), weight).prop_map(|(n, w)| Step::SetWeight(n, w)),
        1 => prop::collection::vec(change.clone(), 0..5).prop_map(Step::Apply),
        1 => prop::collection::vec(change, 0..5).prop_map(Step::Follow),
        3 => (key.clone(), any::<bool>()).prop_map(|(key, hold)| Step::Select { key, hold }),
        1 => Just(Step::Finish),
        1 => (0u8..20).prop_map(Step::Locate),
        3 => key.prop_map(|key| Step::Layer { key }),
        1 => (0u64..5_000).prop_map(Step::Advance),
    ]
}

fn request(key: Option<u8>) -> http::Request<()> {
    match key {
        Some(k) => keyed(&format!("user-{k}")),
        None => keyless(),
    }
}

fn changes(list: &[(bool, u8, u32)]) -> Vec<Change<String, Endpoint>> {
    list.iter()
        .map(|&(insert, n, w)| match insert {
            true => Change::Insert(url(n), endpoint(n, w)),
            false => Change::Remove(url(n)),
        })
        .collect()
}

/// How endpoint `10.0.0.N` answers: 503 for N = 1, 2; a refused connect
/// for N = 3; 200 otherwise.
fn backend_answer(request: http::Request<()>) -> Result<http::Response<()>, BoxError> {
    let host = request.uri().host().unwrap_or_default().to_owned();
    let mut response = http::Response::new(());
    match host.as_str() {
        "10.0.0.1" | "10.0.0.2" => *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE,
        "10.0.0.3" => {
            return Err(Box::new(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            )))
        }
        _ => {}
    }
    Ok(response)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any sequence of set changes (to empty, all drained, one endpoint,
    /// absurd weights) and requests (keyed or not, through `select`,
    /// `locate` and the layer with retries), under any built-in policy
    /// with and without bounded loads and any custom picker's answer:
    /// every call returns (a typed error at worst), nothing panics, and
    /// once every request has ended nothing is left in flight.
    #[test]
    fn no_sequence_of_set_changes_and_requests_panics_under_any_policy_or_picker(
        policy in any_policy(),
        initial in prop::collection::vec((1u8..=6, 0u32..4), 0..4),
        steps in prop::collection::vec(any_step(), 1..40),
        seed in any::<u64>(),
        detection in prop_oneof![
            Just(OutlierDetection::default()),
            Just(ejecting_at_once()),
            Just(OutlierDetection::disabled()),
        ],
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut unique = initial.clone();
            unique.sort_by_key(|&(n, _)| n);
            unique.dedup_by_key(|&mut (n, _)| n);
            let built = unique
                .iter()
                .fold(Balancer::builder(), |b, &(n, w)| b.endpoint(endpoint(n, w)))
                .policy(policy.clone())
                .outlier_detection(detection.clone())
                .retry(Retries::default())
                .seed(seed)
                .build();
            let balancer = match built {
                Ok(balancer) => balancer,
                // All weights 0: refused with a typed error.
                Err(error) => {
                    prop_assert!(matches!(error, Error::ZeroTotalWeight), "{error}");
                    Balancer::builder().policy(policy).seed(seed).build().unwrap()
                }
            };
            let calls = Arc::new(AtomicUsize::new(0));
            let inner = {
                let calls = calls.clone();
                service_fn(move |request: http::Request<()>| {
                    calls.fetch_add(1, Ordering::Relaxed);
                    async move { backend_answer(request) }
                })
            };
            let mut service = Layer::layer(&balancer.layer(), inner);
            let mut held = Vec::new();
            for step in steps {
                match step {
                    Step::Add(n, w) => drop(balancer.add(url(n), w)),
                    Step::Remove(n) => drop(balancer.remove(url(n))),
                    Step::Replace(list) => {
                        drop(balancer.replace(list.iter().map(|&(n, w)| endpoint(n, w))))
                    }
                    Step::Drain(n) => drop(balancer.drain(url(n))),
                    Step::SetWeight(n, w) => drop(balancer.set_weight(url(n), w)),
                    Step::Apply(list) => drop(balancer.apply(changes(&list))),
                    Step::Follow(list) => {
                        let stream = futures::stream::iter(
                            changes(&list).into_iter().map(Ok::<_, Infallible>),
                        );
                        balancer.follow(stream).await.unwrap();
                    }
                    Step::Select { key, hold } => match balancer.select(&request(key)) {
                        Ok(selection) if hold => held.push(selection),
                        Ok(selection) => selection.finish(http::StatusCode::OK),
                        Err(error) => {
                            prop_assert!(matches!(error, Error::NoEndpointAvailable), "{error}")
                        }
                    },
                    Step::Finish => {
                        if let Some(selection) = held.pop() {
                            selection.finish(http::StatusCode::SERVICE_UNAVAILABLE);
                        }
                    }
                    Step::Locate(k) => {
                        let home = balancer.locate(&SessionKey::new(format!("user-{k}")));
                        if let Some(home) = home {
                            let listed = balancer.stats().endpoint(&home).is_some();
                            prop_assert!(listed, "located at {home}, not in the set");
                        }
                    }
                    Step::Layer { key } => {
                        let ready = service.ready().await;
                        prop_assert!(ready.is_ok());
                        // Any answer or a typed error: the call returns.
                        let _ = service.call(request(key)).await;
                    }
                    Step::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
                }
            }
            // Half the held requests end, the rest are dropped (cancelled).
            let half = held.len() / 2;
            for selection in held.drain(..half) {
                selection.finish(http::StatusCode::OK);
            }
            drop(held);
            let stats = balancer.stats();
            prop_assert_eq!(stats.in_flight(), 0);
            for e in &stats.endpoints {
                prop_assert_eq!(
                    e.requests,
                    e.successes + e.failures.total() + e.cancelled + e.client_errors,
                    "{:?}", e
                );
            }
            Ok(())
        })?;
    }
}

#[tokio::test(start_paused = true)]
async fn an_ejection_time_too_long_for_milliseconds_means_as_long_as_can_be_not_a_wrapped_remainder(
) {
    // 2^62 s in milliseconds does not fit a u64: truncated, it was 0 (an
    // ejection of 1 ms); saturated it is "for ever", as is Duration::MAX.
    for long in [Duration::from_secs(1 << 62), Duration::MAX] {
        let balancer = Balancer::builder()
            .endpoint(A)
            .endpoint(B)
            .policy(Policy::round_robin())
            .outlier_detection(
                OutlierDetection::default()
                    .consecutive_failures(1)
                    .max_ejection_percent(50)
                    .base_ejection_time(long)
                    .max_ejection_time(long),
            )
            .build()
            .unwrap();
        eject(&balancer, B);
        tokio::time::advance(Duration::from_secs(10 * 365 * 24 * 3_600)).await;
        for _ in 0..4 {
            let selection = balancer.select(&keyless()).unwrap();
            assert_eq!(selection.endpoint(), A, "{long:?}");
            selection.finish(http::StatusCode::OK);
        }
        let stats = balancer.stats();
        assert_eq!(stats.endpoint(B).map(|e| e.ejected), Some(true), "{long:?}");
    }
}
