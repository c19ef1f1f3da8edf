//! Acceptance tests, written as a new user would, from the README, the
//! rustdoc and docs/*.md, against loopback servers: every front end, edge
//! inputs, and built-in policies inside custom ones. Each test states the
//! promise it checks. (First written as the review probes of issue 23; the
//! four about built-ins inside custom policies failed then.)

// Every front end, the middleware included.
#![cfg(feature = "reqwest-middleware")]
// `&String` arguments are what a user has at hand: the probes pass them.
#![allow(clippy::needless_borrows_for_generic_args)]

use crate::support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use support::policies::{ejecting_at_once, PreferZoneA};
use support::*;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_lb::{
    Balancer, BoxError, Candidates, Endpoint, Error, Labels, OutlierDetection, Percent,
    PickContext, Picker, Policy, RequestKey, Retries, SelectionPolicy, ServedBy, SessionKey,
    Subset,
};
use wiremock::ResponseTemplate;

// ---------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------

/// A policy that delegates everything to a built-in one, as the README's
/// "Your own policy" says a user's policy can.
#[derive(Debug)]
struct Wrap(Policy);

#[derive(Debug)]
struct WrapPicker(Box<dyn Picker>);

impl SelectionPolicy for Wrap {
    fn build(&self, endpoints: &Candidates<'_>) -> Box<dyn Picker> {
        Box::new(WrapPicker(self.0.build(endpoints)))
    }
}

impl Picker for WrapPicker {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        self.0.pick(ctx)
    }
    fn locate(&self, ctx: &PickContext<'_>) -> Option<usize> {
        self.0.locate(ctx)
    }
}

fn keyed(key: &str) -> http::Request<()> {
    let mut request = http::Request::get("/cart").body(()).unwrap();
    request.extensions_mut().insert(SessionKey::new(key));
    request
}

fn keyless() -> http::Request<()> {
    http::Request::get("/").body(()).unwrap()
}

/// Ejects `url` through failed selections.
fn eject(balancer: &Balancer, url: &str) {
    for _ in 0..50 {
        let selection = balancer.select(&keyless()).unwrap();
        if selection.endpoint() == url {
            selection.finish(http::StatusCode::SERVICE_UNAVAILABLE);
        } else {
            selection.finish(http::StatusCode::OK);
        }
        if balancer.stats().endpoint(url).map(|e| e.ejected) == Some(true) {
            return;
        }
    }
    panic!("{url} was not ejected");
}

const URLS: [&str; 3] = [
    "http://10.0.0.1:80",
    "http://10.0.0.2:80",
    "http://10.0.0.3:80",
];

// ---------------------------------------------------------------------
// Delegation to built-ins: do they keep their promises inside a custom
// policy? README: "The built-in `Policy` implements the same trait, so
// yours can delegate to one".
// ---------------------------------------------------------------------

/// Bounded loads promise "no endpoint above 1.25 x its share in flight".
/// Inside a custom policy the balancer's total in flight is never counted
/// (`counts_total_in_flight` looks only at a top-level hash policy), so the
/// bound reads 0 in flight and turns into "any endpoint with a request in
/// flight is full": a key leaves its home as soon as one request is there.
/// The same policy, plain or wrapped, must place the same key on the same
/// endpoint under the same loads.
#[tokio::test]
async fn bounded_loads_inside_a_custom_policy_place_keys_as_the_plain_policy_does() {
    let build = |policy: Policy| {
        Balancer::builder()
            .endpoint(URLS[0])
            .endpoint(URLS[1])
            .policy(policy)
            .build()
            .unwrap()
    };
    let plain = build(Policy::maglev().bounded_loads().into());
    let wrapped = build(Policy::custom(Wrap(
        Policy::maglev().bounded_loads().into(),
    )));
    let mut disagreements = Vec::new();
    for k in 0..40 {
        let key = format!("user-{k}");
        // One request of this key in flight at its home, on both.
        let held_plain = plain.select(&keyed(&key)).unwrap();
        let held_wrapped = wrapped.select(&keyed(&key)).unwrap();
        assert_eq!(held_plain.endpoint(), held_wrapped.endpoint(), "same home");
        // The second request of the key: 2 in flight of 2 endpoints,
        // bound ceil(1.25 x 1/2 x 2) = 2, so the home still fits.
        let second_plain = plain.select(&keyed(&key)).unwrap();
        let second_wrapped = wrapped.select(&keyed(&key)).unwrap();
        if second_plain.endpoint() != second_wrapped.endpoint() {
            disagreements.push((
                key,
                second_plain.endpoint().to_owned(),
                second_wrapped.endpoint().to_owned(),
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of 40 keys placed differently by the wrapped bounded-load policy (key, plain, wrapped): {:?}",
        disagreements.len(),
        &disagreements[..disagreements.len().min(3)]
    );
}

/// The same, seen through `locate` (README: "With bounded loads the
/// answer depends on the loads of the moment"): two endpoints, one request
/// of the key in flight at its home. The plain policy keeps the key home
/// (bound ceil(1.25 x 1/2 x 2) = 2); wrapped, the key is located elsewhere.
#[tokio::test]
async fn locate_of_a_wrapped_bounded_load_policy_agrees_with_the_plain_one() {
    let build = |policy: Policy| {
        Balancer::builder()
            .endpoint(URLS[0])
            .endpoint(URLS[1])
            .policy(policy)
            .build()
            .unwrap()
    };
    let plain = build(Policy::ring_hash().bounded_loads().into());
    let wrapped = build(Policy::custom(Wrap(
        Policy::ring_hash().bounded_loads().into(),
    )));
    let key = SessionKey::new("user-7");
    let home = plain.locate(&key).unwrap();
    assert_eq!(wrapped.locate(&key).as_deref(), Some(&*home));
    let _held = (
        plain.select(&keyed("user-7")).unwrap(),
        wrapped.select(&keyed("user-7")).unwrap(),
    );
    assert_eq!(
        plain.locate(&key).as_deref(),
        Some(&*home),
        "plain: still home"
    );
    assert_eq!(
        wrapped.locate(&key).as_deref(),
        Some(&*home),
        "wrapped: moved away with one request at home"
    );
}

/// The churn, on a multi-threaded runtime: endpoints inserted and
/// removed through `follow` between requests (down to none), 64 requests
/// at once through the layer, half keyed, under Maglev and ring with
/// bounded loads, plain and delegated. No request panics; every counter
/// settles.
#[test]
fn churn_through_follow_with_concurrent_keyed_requests_never_panics() {
    use futures::StreamExt;
    use tower_lb::Change;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let servers = backends(2).await;
        let refusing = RefusingPort::new();
        let urls: Vec<String> = servers
            .iter()
            .map(|s| s.uri())
            .chain([refusing.url.clone()])
            .collect();
        let policies: Vec<Policy> = vec![
            Policy::maglev().bounded_loads().into(),
            Policy::ring_hash()
                .bounded_loads()
                .fallback(Policy::least_response_time())
                .into(),
            Policy::custom(PreferZoneA(Policy::maglev().bounded_loads().into())),
            Policy::custom(Wrap(Policy::ring_hash().into())),
        ];
        for policy in policies {
            let balancer = Balancer::builder().policy(policy.clone()).build().unwrap();
            let (tx, rx) = futures::channel::mpsc::unbounded::<
                Result<Change<String, u32>, std::convert::Infallible>,
            >();
            let follower = tokio::spawn({
                let balancer = balancer.clone();
                async move { balancer.follow(rx).await }
            });
            let churn = tokio::spawn({
                let urls = urls.clone();
                async move {
                    for step in 0..400usize {
                        let url = urls[step % urls.len()].clone();
                        let change = if (step / urls.len()).is_multiple_of(2) {
                            Change::Insert(url, 1 + (step % 3) as u32)
                        } else {
                            Change::Remove(url)
                        };
                        if tx.unbounded_send(Ok(change)).is_err() {
                            break;
                        }
                        // Paced by the scheduler, not the wall clock.
                        for _ in 0..8 {
                            tokio::task::yield_now().await;
                        }
                    }
                }
            });
            let client = client(&balancer);
            let results: Vec<Result<Result<(), Error>, tokio::task::JoinError>> =
                futures::stream::iter(0..2_000usize)
                    .map(|i| {
                        let client = client.clone();
                        tokio::spawn(async move {
                            let mut request = get(&format!("/r/{i}"));
                            if i % 2 == 0 {
                                request
                                    .extensions_mut()
                                    .insert(SessionKey::new(format!("user-{}", i % 50)));
                            }
                            client.oneshot(request).await.map(drop)
                        })
                    })
                    .buffer_unordered(64)
                    .collect()
                    .await;
            churn.await.unwrap();
            follower.abort();
            let panics = results
                .iter()
                .filter(|r| r.as_ref().is_err_and(|e| e.is_panic()))
                .count();
            assert_eq!(panics, 0, "{policy:?}: requests that panicked");
            tokio::task::yield_now().await;
            assert_settled(&balancer);
        }
    });
}

/// Least response time's settings (`failure_penalty`, `default_rtt`,
/// `decay`) live in the balancer's estimate model, which a custom policy
/// never configures (`Policy::rtt_model_on` gives a custom policy the
/// defaults). A wrapped least-time policy with a 5 s failure penalty must
/// count a failure as 5 s, as the plain one does.
#[tokio::test]
async fn least_time_settings_hold_inside_a_custom_policy() {
    let server = backend("a", ResponseTemplate::new(503)).await;
    let least = || {
        Policy::least_response_time()
            .failure_penalty(Duration::from_secs(5))
            .default_rtt(Duration::from_secs(2))
    };
    let mut estimates = Vec::new();
    for policy in [least().into(), Policy::custom(Wrap(least().into()))] {
        let balancer = Balancer::builder()
            .endpoint(server.uri())
            .policy(policy)
            .outlier_detection(OutlierDetection::disabled())
            .build()
            .unwrap();
        let before = balancer
            .stats()
            .endpoint(server.uri())
            .unwrap()
            .latency_ewma;
        let client = client(&balancer);
        send(&client, "/").await.unwrap();
        let after = balancer
            .stats()
            .endpoint(server.uri())
            .unwrap()
            .latency_ewma;
        estimates.push((before, after));
    }
    assert_eq!(
        estimates[0], estimates[1],
        "(plain least time) vs (the same wrapped): estimates (before, after one 503)"
    );
}

/// README, "Bad input": "hash options out of range or mismatched (...) →
/// `Error::InvalidPolicy` from `build()`". A custom policy that delegates
/// to a misconfigured built-in is built without a word, and the mistake is
/// silently ignored (the table size stays 65,537; the load factor below 1
/// is used as is).
#[tokio::test]
async fn a_misconfigured_builtin_inside_a_custom_policy_is_refused_at_build() {
    let cases: Vec<(&str, Policy)> = vec![
        ("table size 4", Policy::maglev().table_size(4).into()),
        ("load factor 0.5", Policy::maglev().load_factor(0.5).into()),
        (
            "ring option on Maglev",
            Policy::maglev().virtual_nodes(10).into(),
        ),
        (
            "bad header name",
            Policy::ring_hash()
                .key(RequestKey::header("not a header"))
                .into(),
        ),
        (
            "hashing fallback",
            Policy::ring_hash().fallback(Policy::maglev()).into(),
        ),
        (
            "least time decay 0",
            Policy::least_response_time().decay(Duration::ZERO).into(),
        ),
    ];
    let mut accepted = Vec::new();
    for (what, inner) in cases {
        let plain = Balancer::builder()
            .endpoint(URLS[0])
            .policy(inner.clone())
            .build();
        assert!(
            matches!(plain, Err(Error::InvalidPolicy { .. })),
            "{what}: plain"
        );
        let wrapped = Balancer::builder()
            .endpoint(URLS[0])
            .policy(Policy::custom(Wrap(inner)))
            .build();
        if !matches!(wrapped, Err(Error::InvalidPolicy { .. })) {
            accepted.push(what);
        }
    }
    assert!(accepted.is_empty(), "accepted when wrapped: {accepted:?}");
}

/// README: "`Balancer::locate` asks its picker where a key lives" for a
/// custom policy that delegates to a hashing one, over a Subset too; with
/// the home ejected, `locate` and `select` must still agree.
#[tokio::test]
async fn locate_agrees_with_select_for_a_subset_delegating_to_maglev_with_ejections() {
    let balancer = Balancer::builder()
        .endpoint(Endpoint::new(URLS[0]).with_label("zone", "a"))
        .endpoint(Endpoint::new(URLS[1]).with_label("zone", "a"))
        .endpoint(Endpoint::new(URLS[2]).with_label("zone", "b"))
        .policy(Policy::custom(PreferZoneA(Policy::maglev().into())))
        .outlier_detection(ejecting_at_once())
        .build()
        .unwrap();
    let check = |phase: &str| {
        for k in 0..50 {
            let key = format!("user-{k}");
            let located = balancer.locate(&SessionKey::new(&key));
            let selected = balancer.select(&keyed(&key)).ok();
            assert_eq!(
                located.as_deref(),
                selected.as_ref().map(|s| s.endpoint()),
                "{phase}: key {key}"
            );
            if let Some(s) = selected {
                s.finish(http::StatusCode::OK);
            }
        }
    };
    check("all up");
    // Every request is keyless here, so `eject` goes through the fallback.
    eject(&balancer, URLS[0]);
    check("a1 ejected");
    eject(&balancer, URLS[1]);
    check("zone a ejected");
}

// ---------------------------------------------------------------------
// Defect 2: shares with ejected endpoints, delegation patterns
// ---------------------------------------------------------------------

/// "Prefer zone a, else zone b, else any", three levels of delegation with
/// smooth WRR, zone a and zone b ejected: the share goes to zone c by
/// weight (1:2:3).
#[tokio::test]
async fn three_level_delegation_spreads_an_ejected_share_by_weight() {
    #[derive(Debug)]
    struct Tiered(Policy);
    #[derive(Debug)]
    struct TieredPicker(Vec<(Subset, Box<dyn Picker>)>, Box<dyn Picker>);
    impl SelectionPolicy for Tiered {
        fn build(&self, endpoints: &Candidates<'_>) -> Box<dyn Picker> {
            let tiers = ["a", "b"]
                .iter()
                .map(|zone| {
                    let subset =
                        endpoints.subset(|i| endpoints.labels(i).get("zone") == Some(zone));
                    let picker = self.0.build(&subset.candidates());
                    (subset, picker)
                })
                .collect();
            Box::new(TieredPicker(tiers, self.0.build(endpoints)))
        }
    }
    impl Picker for TieredPicker {
        fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
            self.0
                .iter()
                .find_map(|(subset, picker)| subset.pick(&**picker, ctx))
                .or_else(|| self.1.pick(ctx))
        }
    }
    let urls: Vec<String> = (1..=7).map(|n| format!("http://10.0.1.{n}:80")).collect();
    let balancer = Balancer::builder()
        .endpoint(Endpoint::new(&urls[0]).with_label("zone", "a"))
        .endpoint(Endpoint::new(&urls[1]).with_label("zone", "a"))
        .endpoint(Endpoint::new(&urls[2]).with_label("zone", "b"))
        .endpoint(Endpoint::new(&urls[3]).with_label("zone", "b"))
        .endpoint(
            Endpoint::new(&urls[4])
                .with_label("zone", "c")
                .with_weight(1),
        )
        .endpoint(
            Endpoint::new(&urls[5])
                .with_label("zone", "c")
                .with_weight(2),
        )
        .endpoint(
            Endpoint::new(&urls[6])
                .with_label("zone", "c")
                .with_weight(3),
        )
        .policy(Policy::custom(Tiered(Policy::weighted_round_robin())))
        .outlier_detection(ejecting_at_once())
        .build()
        .unwrap();
    for url in &urls[..4] {
        eject(&balancer, url);
    }
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..600 {
        let s = balancer.select(&keyless()).unwrap();
        *counts.entry(s.endpoint().to_owned()).or_default() += 1;
        s.finish(http::StatusCode::OK);
    }
    let shares: Vec<u32> = urls[4..]
        .iter()
        .map(|u| counts.get(u).copied().unwrap_or(0))
        .collect();
    for (share, want) in shares.iter().zip([100, 200, 300]) {
        assert!(
            share.abs_diff(want) <= 10,
            "shares {shares:?}, want 100/200/300"
        );
    }
}

// ---------------------------------------------------------------------
// ServedBy on every path
// ---------------------------------------------------------------------

fn served_url(extensions: &http::Extensions) -> Option<String> {
    extensions.get::<ServedBy>().map(|s| s.url().to_owned())
}

/// A 5xx is returned as a response: it still says who answered; and with
/// `idempotent_failures`, a 5xx retried elsewhere names the second.
#[tokio::test]
async fn served_by_on_5xx_and_after_a_5xx_retry_through_every_front_end() {
    let bad = backend("bad", ResponseTemplate::new(503)).await;
    let good = backend("good", ResponseTemplate::new(200)).await;
    let balancer = Balancer::builder()
        .endpoint(bad.uri())
        .endpoint(good.uri())
        .policy(Policy::round_robin())
        .outlier_detection(OutlierDetection::disabled())
        .retry(Retries::default().idempotent_failures())
        .build()
        .unwrap();
    let canonical = |s: &Server| balancer.stats().endpoint(s.uri()).unwrap().url;
    let http_layer = client(&balancer);
    let reqwest_layer = balancer.layer().layer(plain_reqwest());
    let middleware = reqwest_middleware::ClientBuilder::new(plain_reqwest())
        .with(balancer.clone())
        .build();
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let per_endpoint = balancer.per_endpoint(move |_: &str| hyper.clone());
    for round in 0..4 {
        // GET: a 503 is retried on the other; the answer is good's.
        let r = http_layer.clone().oneshot(get("/")).await.unwrap();
        assert_eq!(
            (backend_name(&r), served_url(r.extensions())),
            ("good".into(), Some(canonical(&good))),
            "http layer {round}"
        );
        let req = plain_reqwest().get("http://backend/").build().unwrap();
        let r = reqwest_layer.clone().oneshot(req).await.unwrap();
        assert_eq!(
            (backend_name(&r), served_url(r.extensions())),
            ("good".into(), Some(canonical(&good))),
            "reqwest layer {round}"
        );
        let r = middleware.get("http://backend/").send().await.unwrap();
        assert_eq!(
            (backend_name(&r), served_url(r.extensions())),
            ("good".into(), Some(canonical(&good))),
            "middleware {round}"
        );
        let req = http::Request::get("/")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let r = per_endpoint.clone().oneshot(req).await.unwrap();
        let name = r
            .headers()
            .get(BACKEND)
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            (name, served_url(r.extensions())),
            (Some("good".into()), Some(canonical(&good))),
            "per endpoint {round}"
        );
        // POST: not retried; the 503 comes back, naming bad.
        let post = http::Request::post("/")
            .body(reqwest::Body::from("x"))
            .unwrap();
        let r = http_layer.clone().oneshot(post).await.unwrap();
        if r.status() == 503 {
            assert_eq!(
                served_url(r.extensions()),
                Some(canonical(&bad)),
                "a 503 response names who sent it"
            );
        }
    }
    tokio::task::yield_now().await;
    assert_settled(&balancer);
}

/// After a connect-error retry through the middleware, the layer over
/// reqwest::Request and `without_retries` (no retry: the error names the
/// endpoint).
#[tokio::test]
async fn served_by_after_a_connect_retry_names_the_endpoint_that_answered() {
    let refusing = RefusingPort::new();
    let good = backend("good", ResponseTemplate::new(200)).await;
    let balancer = Balancer::builder()
        .endpoint(refusing.url.as_str())
        .endpoint(good.uri())
        .policy(Policy::round_robin())
        .outlier_detection(OutlierDetection::disabled())
        .build()
        .unwrap();
    let good_url = balancer.stats().endpoint(good.uri()).unwrap().url;
    let middleware = reqwest_middleware::ClientBuilder::new(plain_reqwest())
        .with(balancer.clone())
        .build();
    let reqwest_layer = balancer.layer().layer(plain_reqwest());
    let once = balancer
        .layer()
        .without_retries()
        .layer(tower_lb::HttpToReqwest::new(plain_reqwest()));
    for _ in 0..4 {
        let r = middleware
            .post("http://backend/")
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(
            served_url(r.extensions()),
            Some(good_url.clone()),
            "middleware"
        );
        let req = plain_reqwest()
            .post("http://backend/")
            .body("x")
            .build()
            .unwrap();
        let r = reqwest_layer.clone().oneshot(req).await.unwrap();
        assert_eq!(
            served_url(r.extensions()),
            Some(good_url.clone()),
            "reqwest layer"
        );
        match once.clone().oneshot(get("/")).await {
            Ok(r) => assert_eq!(
                served_url(r.extensions()),
                Some(good_url.clone()),
                "without retries"
            ),
            Err(Error::Upstream { endpoint, .. }) => assert_eq!(endpoint, refusing.url),
            Err(other) => panic!("without retries: {other}"),
        }
    }
    assert_settled(&balancer);
}

// ---------------------------------------------------------------------
// User info: one rule for every front end, per_endpoint included, and the
// edge spellings reqwest itself accepts.
// ---------------------------------------------------------------------

#[tokio::test]
async fn user_info_edge_spellings_match_reqwests_builder_on_every_front_end() {
    use http::header::AUTHORIZATION;
    let server = backend("a", ResponseTemplate::new(200)).await;
    let balancer = Balancer::builder().endpoint(server.uri()).build().unwrap();
    let http_layer = client(&balancer);
    let reqwest_layer = balancer.layer().layer(plain_reqwest());
    let middleware = reqwest_middleware::ClientBuilder::new(plain_reqwest())
        .with(balancer.clone())
        .build();
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let per_endpoint = balancer.per_endpoint(move |_: &str| hyper.clone());
    let mut problems = Vec::new();
    for target in [
        "http://user@backend/x",
        "http://:pw@backend/x",
        "http://user:@backend/x",
        "http://%C3%A9t%C3%A9:p%40ss@backend/x",
    ] {
        let reference = plain_reqwest().get(target).build().unwrap();
        let expected: Vec<_> = reference
            .headers()
            .get_all(AUTHORIZATION)
            .iter()
            .cloned()
            .collect();
        let url = reqwest::Url::parse(target).unwrap();
        let mut sent: Vec<(&str, Result<(), String>)> = Vec::new();
        sent.push((
            "layer http",
            http_layer
                .clone()
                .oneshot(
                    http::Request::get(target)
                        .body(reqwest::Body::from(""))
                        .unwrap(),
                )
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
        ));
        sent.push((
            "layer reqwest",
            reqwest_layer
                .clone()
                .oneshot(reqwest::Request::new(http::Method::GET, url.clone()))
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
        ));
        sent.push((
            "middleware Request::new",
            middleware
                .execute(reqwest::Request::new(http::Method::GET, url.clone()))
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
        ));
        sent.push((
            "per endpoint (hyper)",
            per_endpoint
                .clone()
                .oneshot(
                    http::Request::get(target)
                        .body(http_body_util::Full::new(bytes::Bytes::new()))
                        .unwrap(),
                )
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
        ));
        let mut request = reqwest::Request::new(http::Method::GET, url.clone());
        let selection = balancer.select(&request).unwrap();
        let routed = selection.route(&mut request).map_err(|e| e.to_string());
        let routed = match routed {
            Ok(()) => plain_reqwest()
                .execute(request)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        selection.finish(http::StatusCode::OK);
        sent.push(("select + route, reqwest::Request", routed));
        let received = server.received_requests().await.unwrap();
        let last = &received[received.len() - sent.iter().filter(|(_, r)| r.is_ok()).count()..];
        let mut i = 0;
        for (front_end, result) in &sent {
            if let Err(e) = result {
                problems.push(format!("{target} via {front_end}: error {e}"));
                continue;
            }
            let got: Vec<_> = last[i]
                .headers
                .get_all(AUTHORIZATION)
                .iter()
                .cloned()
                .collect();
            i += 1;
            if got != expected {
                problems.push(format!(
                    "{target} via {front_end}: {got:?}, reqwest's builder: {expected:?}"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

// ---------------------------------------------------------------------
// Counters: cancelled futures at every stage
// ---------------------------------------------------------------------

/// A response future dropped while a retry's service gets ready (per
/// endpoint, the next endpoint's service never ready) and while a retry is
/// in flight (the layer): everything settles, nothing stays in flight.
#[tokio::test]
async fn futures_dropped_mid_retry_settle_every_counter() {
    let refusing = RefusingPort::new();
    let slow = backend(
        "slow",
        ResponseTemplate::new(200).set_delay(Duration::from_secs(30)),
    )
    .await;
    let balancer = Balancer::builder()
        .endpoint(refusing.url.as_str())
        .endpoint(slow.uri())
        .policy(Policy::round_robin())
        .outlier_detection(OutlierDetection::disabled())
        .build()
        .unwrap();
    let client = client(&balancer);
    for _ in 0..4 {
        let future = client.clone().oneshot(get("/"));
        let _ = tokio::time::timeout(Duration::from_millis(300), future).await;
    }
    // Per endpoint: a service that is never ready.
    #[derive(Clone)]
    struct NeverReady;
    impl Service<http::Request<()>> for NeverReady {
        type Response = http::Response<()>;
        type Error = BoxError;
        type Future = std::future::Ready<Result<http::Response<()>, BoxError>>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), BoxError>> {
            std::task::Poll::Pending
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            std::future::ready(Ok(http::Response::new(())))
        }
    }
    let per = balancer.per_endpoint(|_: &str| NeverReady);
    for _ in 0..4 {
        let _ =
            tokio::time::timeout(Duration::from_millis(50), per.clone().oneshot(keyless())).await;
    }
    tokio::task::yield_now().await;
    assert_settled(&balancer);
    let total: u64 = balancer.stats().endpoints.iter().map(|e| e.cancelled).sum();
    assert!(total >= 4, "cancelled counted: {total}");
}

// ---------------------------------------------------------------------
// The API, as a new user meets it
// ---------------------------------------------------------------------

/// Every one-liner the issue lists compiles and works with the argument
/// types a user has at hand.
#[tokio::test]
async fn api_one_liners_compile_with_the_types_a_user_has() {
    let server = Server::start().await;
    let uri: String = server.uri();
    let balancer = Balancer::builder()
        .endpoint(server.uri())
        .endpoint_weighted(format!("{uri}/v2"), 2)
        .endpoint(&format!("{uri}/v3"))
        .build()
        .unwrap();
    let e = balancer.stats().endpoint(&uri).unwrap();
    assert_eq!(e.weight, 1);
    balancer.add(format!("{uri}/v4"), 1).unwrap();
    balancer.add(&format!("{uri}/v5"), 1).unwrap();
    balancer.set_weight(format!("{uri}/v4"), 3).unwrap();
    balancer.set_weight(&uri, 2).unwrap();
    balancer.drain(format!("{uri}/v5")).unwrap();
    balancer.remove(format!("{uri}/v5")).unwrap();
    let arc: std::sync::Arc<str> = format!("{uri}/v6").into();
    balancer.insert(Endpoint::new(&arc).with_weight(1)).unwrap();
    balancer.remove(&*arc).unwrap();
    // Another spelling of the same endpoint.
    let loud = uri.replace("http", "HTTP") + "/";
    assert_eq!(balancer.stats().endpoint(loud).map(|e| e.weight), Some(2));
    // replace with nothing, and an empty Vec.
    balancer.replace(Vec::<String>::new()).unwrap();
    assert!(balancer.stats().endpoints.is_empty());
}

/// Percentages: one type, whole numbers where a user writes them, and a
/// typed error for every absurd value on every setting.
#[test]
fn every_percent_setting_refuses_absurd_values_with_invalid_policy() {
    let detection = |d: OutlierDetection| {
        Balancer::builder()
            .endpoint(URLS[0])
            .outlier_detection(d)
            .build()
    };
    let retries = |p: Percent| {
        Balancer::builder()
            .endpoint(URLS[0])
            .retry(Retries::default().budget(Duration::from_secs(10), p, 10))
            .build()
    };
    for bad in [
        Percent::new(-1.0),
        Percent::new(100.5),
        Percent::new(f64::NAN),
        Percent::new(f64::INFINITY),
        Percent::new(f64::NEG_INFINITY),
    ] {
        for (what, result) in [
            (
                "max_ejection_percent",
                detection(OutlierDetection::default().max_ejection_percent(bad)),
            ),
            (
                "panic_threshold",
                detection(OutlierDetection::default().panic_threshold(bad)),
            ),
            (
                "failure_percentage",
                detection(OutlierDetection::default().failure_percentage(bad, 10)),
            ),
        ] {
            assert!(
                matches!(result, Err(Error::InvalidPolicy { .. })),
                "{what} {bad}"
            );
        }
    }
    for bad in [
        Percent::new(-0.5),
        Percent::new(1_000.5),
        Percent::new(f64::NAN),
        Percent::new(f64::INFINITY),
    ] {
        assert!(
            matches!(retries(bad), Err(Error::InvalidPolicy { .. })),
            "budget {bad}"
        );
    }
    // Whole numbers as users write them, and the edges.
    assert!(detection(
        OutlierDetection::default()
            .max_ejection_percent(100)
            .panic_threshold(0)
            .failure_percentage(0, 0)
    )
    .is_ok());
    assert!(retries(Percent::from(1_000)).is_ok());
    assert!(retries(Percent::new(0.0)).is_ok());
}

/// `Labels`: len, is_empty, from a map, from an iterator of pairs, last
/// value of a key wins.
#[test]
fn labels_build_from_maps_and_pairs() {
    let from_hash: Labels = HashMap::from([("zone", "a"), ("tier", "gold")]).into();
    let from_btree: Labels = BTreeMap::from([
        ("zone".to_owned(), "a".to_owned()),
        ("tier".to_owned(), "gold".to_owned()),
    ])
    .into();
    let from_iter: Labels = [("zone", "b"), ("tier", "gold"), ("zone", "a")]
        .into_iter()
        .collect();
    let from_vec: Labels = vec![
        (String::from("zone"), String::from("a")),
        (String::from("tier"), String::from("gold")),
    ]
    .into();
    for labels in [&from_hash, &from_btree, &from_iter, &from_vec] {
        assert_eq!(labels.len(), 2, "{labels:?}");
        assert!(!labels.is_empty());
        assert_eq!(labels.get("zone"), Some("a"), "{labels:?}");
    }
    assert_eq!(
        from_hash, from_iter,
        "equal whatever the order they came in"
    );
    assert!(Labels::default().is_empty());
    let endpoint = Endpoint::new(URLS[0])
        .with_labels(from_hash)
        .with_label("zone", "c");
    assert_eq!(endpoint.labels().get("zone"), Some("c"));
    assert_eq!(endpoint.labels().len(), 2);
}

/// `HttpToReqwest::new(c).map_err(BoxError::from)` under the layer,
/// without a turbofish, sent for real.
#[tokio::test]
async fn http_to_reqwest_map_err_works_under_the_layer() {
    let servers = backends(1).await;
    let balancer = balancer_over(&servers, Policy::round_robin());
    let client = ServiceBuilder::new()
        .layer(balancer.layer())
        .service(tower_lb::HttpToReqwest::new(plain_reqwest()).map_err(BoxError::from));
    let response = client.oneshot(get("/")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.extensions().get::<ServedBy>().is_some());
}

/// `Selection`'s Debug is a summary, even with many labels and Maglev.
#[test]
fn selection_debug_is_a_summary() {
    let balancer = Balancer::builder()
        .endpoint(
            Endpoint::new(URLS[0])
                .with_label("zone", "a")
                .with_label("secret-ish", "x"),
        )
        .policy(Policy::maglev())
        .build()
        .unwrap();
    let selection = balancer.select(&keyed("user-1")).unwrap();
    let shown = format!("{selection:?}");
    assert!(shown.len() < 100, "{} bytes: {shown}", shown.len());
    let served = format!("{:?}", selection.served_by());
    assert!(served.len() < 200, "{} bytes: {served}", served.len());
}

// ---------------------------------------------------------------------
// Defect 1 leftovers: panics a user can reach
// ---------------------------------------------------------------------

/// A key on an empty set through every front end and `locate`, every
/// hashing policy, plain and wrapped: a typed error or `None`.
#[tokio::test]
async fn keyed_requests_on_an_empty_set_through_every_front_end_never_panic() {
    let policies: Vec<Policy> = vec![
        Policy::maglev().into(),
        Policy::maglev().table_size(2).bounded_loads().into(),
        Policy::ring_hash().virtual_nodes(1).bounded_loads().into(),
        Policy::custom(Wrap(Policy::maglev().bounded_loads().into())),
        Policy::custom(PreferZoneA(Policy::ring_hash().into())),
    ];
    for policy in policies {
        let balancer = Balancer::builder().policy(policy).build().unwrap();
        assert_eq!(balancer.locate(&SessionKey::new("k")), None);
        assert!(matches!(
            balancer.select(&keyed("k")),
            Err(Error::NoEndpointAvailable)
        ));
        let mut request = get("/");
        request.extensions_mut().insert(SessionKey::new("k"));
        let result = client(&balancer).oneshot(request).await;
        assert!(
            matches!(result, Err(Error::NoEndpointAvailable)),
            "{result:?}"
        );
        let middleware = reqwest_middleware::ClientBuilder::new(plain_reqwest())
            .with(balancer.clone())
            .build();
        let result = middleware
            .get("http://backend/")
            .with_extension(SessionKey::new("k"))
            .send()
            .await;
        assert!(result.is_err());
        let mut req = plain_reqwest().get("http://backend/").build().unwrap();
        SessionKey::new("k").attach(&mut req);
        let result = balancer.layer().layer(plain_reqwest()).oneshot(req).await;
        assert!(
            matches!(result, Err(Error::NoEndpointAvailable)),
            "{result:?}"
        );
    }
}

/// A custom picker's answer is "no answer" when unavailable: with the
/// answer ejected, a request gets NoEndpointAvailable while another
/// endpoint is up (documented), and `first_available` over absurd indices
/// never panics.
#[tokio::test]
async fn custom_picker_answers_anything_without_panicking() {
    #[derive(Debug)]
    struct Absurd;
    #[derive(Debug)]
    struct AbsurdPicker;
    impl SelectionPolicy for Absurd {
        fn build(&self, _: &Candidates<'_>) -> Box<dyn Picker> {
            Box::new(AbsurdPicker)
        }
    }
    impl Picker for AbsurdPicker {
        fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
            let walk = [usize::MAX, ctx.len(), ctx.len() + 1, 0, 1];
            let _ = ctx.in_flight(usize::MAX);
            let _ = ctx.is_available(usize::MAX);
            let _ = ctx.random_below(0);
            ctx.first_available(walk.into_iter()).or(Some(usize::MAX))
        }
    }
    let balancer = Balancer::builder()
        .endpoint(URLS[0])
        .endpoint(URLS[1])
        .policy(Policy::custom(Absurd))
        .outlier_detection(ejecting_at_once())
        .build()
        .unwrap();
    assert_eq!(balancer.select(&keyless()).unwrap().endpoint(), URLS[0]);
    eject(&balancer, URLS[0]);
    assert_eq!(balancer.select(&keyless()).unwrap().endpoint(), URLS[1]);
    eject(&balancer, URLS[1]);
    assert!(matches!(
        balancer.select(&keyless()),
        Err(Error::NoEndpointAvailable)
    ));
}

/// A panic inside the user's `SelectionPolicy::build` while discovery
/// applies a set: counted, and the balancer still takes updates (its
/// writers' lock not poisoned into refusing).
#[tokio::test]
async fn a_policy_that_panics_while_discovery_applies_a_set_is_counted_and_updates_go_on() {
    #[derive(Debug)]
    struct PanicsOnFour;
    impl SelectionPolicy for PanicsOnFour {
        fn build(&self, endpoints: &Candidates<'_>) -> Box<dyn Picker> {
            assert!(endpoints.len() != 4, "four is too many");
            Policy::round_robin().build(endpoints)
        }
    }
    let balancer = Balancer::builder()
        .endpoint(URLS[0])
        .policy(Policy::custom(PanicsOnFour))
        .build()
        .unwrap();
    let four: Vec<Endpoint> = (1..=4)
        .map(|n| Endpoint::new(format!("http://10.0.2.{n}:80")))
        .collect();
    balancer
        .discover(futures::stream::iter([Ok::<_, std::io::Error>(four)]))
        .unwrap();
    let mut discovery = None;
    for _ in 0..200 {
        tokio::task::yield_now().await;
        discovery = balancer.stats().discovery;
        if discovery.as_ref().is_some_and(|d| d.errors > 0 || d.ended) {
            break;
        }
    }
    let discovery = discovery.expect("discovery stats");
    assert_eq!(discovery.errors, 1, "{discovery:?}");
    assert!(discovery
        .last_error
        .is_some_and(|e| e.contains("four is too many")));
    assert_eq!(
        balancer.stats().endpoints.len(),
        1,
        "the last good set stays"
    );
    balancer.add(URLS[1], 1).unwrap();
    assert!(balancer.select(&keyless()).is_ok());
}

/// README, "Consistent hashing": keys from `RequestKey::session().or(
/// RequestKey::header("x-user-id"))`, then "Where does user 42 live right
/// now? `balancer.locate(&SessionKey::new("user-42"))`". A request that
/// carries the key in the header goes where `locate` says, and so does
/// one with the key in a query parameter, a cookie or the SessionKey
/// header (`attach`), on each front end that reads it.
#[tokio::test]
async fn locate_answers_for_keys_from_every_source_as_requests_go() {
    let balancer = Balancer::builder()
        .endpoint(URLS[0])
        .endpoint(URLS[1])
        .endpoint(URLS[2])
        .policy(
            Policy::maglev().key(
                RequestKey::header("x-user-id")
                    .or(RequestKey::cookie("sid"))
                    .or(RequestKey::query("user")),
            ),
        )
        .build()
        .unwrap();
    let mut wrong = Vec::new();
    for k in 0..30 {
        let value = format!("user-{k}");
        let located = balancer.locate(&SessionKey::new(&value)).unwrap();
        let requests = [
            (
                "header",
                http::Request::get("/")
                    .header("x-user-id", &value)
                    .body(())
                    .unwrap(),
            ),
            (
                "cookie",
                http::Request::get("/")
                    .header("cookie", format!("a=1; sid={value}"))
                    .body(())
                    .unwrap(),
            ),
            (
                "query",
                http::Request::get(format!("/x?user={value}"))
                    .body(())
                    .unwrap(),
            ),
        ];
        for (source, request) in requests {
            let selection = balancer.select(&request).unwrap();
            if selection.endpoint() != &*located {
                wrong.push((source, value.clone()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} keys located elsewhere than they went: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(4)]
    );
}
