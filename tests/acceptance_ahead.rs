//! Acceptance probes for issue 28 (slow start, overload signals, hedged
//! requests), written as a user reads the docs: each checks one concrete
//! promise of docs/slow-start.md, docs/health.md ("Overload signals") or
//! docs/hedging.md at its edges, on real loopback servers (wiremock, and
//! the hedging tests' hyper backend that sleeps on the paused clock).

use std::time::{Duration, SystemTime};

use tower::ServiceExt;
use tower_lb::{
    Balancer, Error, Hedge, Hedging, OutlierDetection, Overload, Percent, Policy, SlowStart,
};
use wiremock::matchers::any;
use wiremock::{Mock, ResponseTemplate};

use crate::hedging::Backend;
use crate::support::*;

/// Two wiremock backends, round robin, the first answering `template`.
async fn first_answers(template: ResponseTemplate, overload: Overload) -> (Vec<Server>, Balancer) {
    let servers = backends(2).await;
    servers[0].reset().await;
    Mock::given(any())
        .respond_with(template.insert_header(BACKEND, "a"))
        .mount(&servers[0])
        .await;
    let balancer = Balancer::builder()
        .endpoint(servers[0].uri())
        .endpoint(servers[1].uri())
        .policy(Policy::round_robin())
        .outlier_detection(OutlierDetection::default().consecutive_failures(1))
        .overload(overload)
        .build()
        .unwrap();
    (servers, balancer)
}

/// The hold one answer of the first backend starts, as docs/health.md's
/// table gives it: `None` for no hold.
async fn hold_after(status: u16, retry_after: Option<&str>) -> Option<Duration> {
    hold_with(Overload::default(), status, retry_after).await
}

async fn hold_with(overload: Overload, status: u16, retry_after: Option<&str>) -> Option<Duration> {
    let mut template = ResponseTemplate::new(status);
    if let Some(value) = retry_after {
        template = template.insert_header("retry-after", value);
    }
    let (servers, balancer) = first_answers(template, overload).await;
    let response = client(&balancer).oneshot(get("/")).await.unwrap();
    assert_eq!(response.status(), status);
    let now = tokio::time::Instant::now().into_std();
    let stats = balancer.stats().endpoint(servers[0].uri()).unwrap();
    assert_eq!(
        (stats.overloaded, stats.failures.total(), stats.ejected),
        (1, 0, false),
        "{retry_after:?}: {stats:?}"
    );
    stats.held_off_until.map(|until| until - now)
}

#[tokio::test(start_paused = true)]
async fn retry_after_forms_give_the_documented_hold() {
    let _clock = hold_clock();
    let secs = Duration::from_secs;
    let penalty = Some(secs(5));
    let cap = Some(secs(300));
    let past = httpdate::fmt_http_date(SystemTime::now() - secs(3600));
    let years = httpdate::fmt_http_date(SystemTime::now() + secs(5 * 365 * 86_400));
    let forms: [(&str, Option<Duration>); 13] = [
        ("Sunday, 06-Nov-94 08:49:37 GMT", None),
        ("Sun Nov  6 08:49:37 1994", None),
        ("3", Some(secs(3))),
        (" 3 ", Some(secs(3))),
        ("0", None),
        (&past, None),
        ("-5", penalty),
        ("1.5", penalty),
        ("soon", penalty),
        ("", penalty),
        ("99999999999999999999999999", cap),
        ("301", cap),
        (&years, cap),
    ];
    for (value, want) in forms {
        assert_eq!(hold_after(429, Some(value)).await, want, "429 {value:?}");
    }
    assert_eq!(hold_after(429, None).await, penalty, "a bare 429");
    assert_eq!(hold_after(503, Some("3")).await, Some(secs(3)), "503 + 3");
    assert_eq!(hold_after(503, Some("soon")).await, penalty, "503 + soon");
    // An HTTP date 20 s ahead holds until then, to the second.
    let soon = httpdate::fmt_http_date(SystemTime::now() + secs(20));
    let hold = hold_after(429, Some(&soon)).await.expect("held");
    assert!(hold > secs(18) && hold <= secs(20), "{hold:?}");
}

#[tokio::test(start_paused = true)]
async fn overload_settings_cap_and_set_the_penalty() {
    let _clock = hold_clock();
    let secs = Duration::from_secs;
    let capped = Overload::default().max_hold(secs(2));
    assert_eq!(hold_with(capped, 429, Some("60")).await, Some(secs(2)));
    // "it caps the default penalty too"
    assert_eq!(hold_with(capped, 429, None).await, Some(secs(2)));
    let no_penalty = Overload::default().default_penalty(Duration::ZERO);
    assert_eq!(hold_with(no_penalty, 429, Some("soon")).await, None);
}

#[tokio::test(start_paused = true)]
async fn a_later_signal_extends_a_hold_and_never_shortens_it() {
    let _clock = hold_clock();
    let server = backend(
        "a",
        ResponseTemplate::new(429).insert_header("retry-after", "60"),
    )
    .await;
    let balancer = Balancer::builder().endpoint(server.uri()).build().unwrap();
    let client = client(&balancer);
    client.clone().oneshot(get("/")).await.unwrap();
    let until = balancer
        .stats()
        .endpoint(server.uri())
        .unwrap()
        .held_off_until;
    let until = until.expect("held 60 s");
    for shorter in ["1", "0", "soon"] {
        server.reset().await;
        Mock::given(any())
            .respond_with(ResponseTemplate::new(429).insert_header("retry-after", shorter))
            .mount(&server)
            .await;
        tokio::time::advance(Duration::from_secs(1)).await;
        // Every endpoint held: the soonest (the only one) takes it.
        client.clone().oneshot(get("/")).await.unwrap();
        let now = balancer
            .stats()
            .endpoint(server.uri())
            .unwrap()
            .held_off_until;
        assert_eq!(now, Some(until), "after Retry-After: {shorter}");
    }
    assert_settled(&balancer);
}

#[tokio::test(start_paused = true)]
async fn a_429_endpoint_is_never_ejected_even_with_consecutive_failures_1() {
    let _clock = hold_clock();
    // `Retry-After: 0` holds nothing, so "a" keeps taking its turns.
    let (servers, balancer) = first_answers(
        ResponseTemplate::new(429).insert_header("retry-after", "0"),
        Overload::default(),
    )
    .await;
    let client = client(&balancer);
    for _ in 0..20 {
        client.clone().oneshot(get("/")).await.unwrap();
    }
    let stats = balancer.stats().endpoint(servers[0].uri()).unwrap();
    assert_eq!((stats.overloaded, stats.failures.total()), (10, 0));
    assert!(!stats.ejected && stats.times_ejected == 0, "{stats:?}");
    assert_settled(&balancer);
}

#[tokio::test(start_paused = true)]
async fn every_endpoint_held_fails_open_to_the_soonest_with_its_own_answer() {
    let _clock = hold_clock();
    // One endpoint, a bare 429: held 5 s, yet every request still gets its
    // answer (no error naming the wait).
    let server = backend("a", ResponseTemplate::new(429)).await;
    let balancer = Balancer::builder().endpoint(server.uri()).build().unwrap();
    let client = client(&balancer);
    for _ in 0..3 {
        let response = client.clone().oneshot(get("/")).await.unwrap();
        assert_eq!(response.status(), 429);
    }
    assert_eq!(received(&server).await, 3);
    assert_settled(&balancer);
}

fn hedged(backends: &[Backend], hedging: Hedging) -> Balancer {
    backends
        .iter()
        .fold(Balancer::builder(), |b, s| b.endpoint(s.url()))
        .policy(Policy::round_robin())
        .hedge(hedging)
        .build()
        .unwrap()
}

fn request(method: http::Method) -> http::Request<reqwest::Body> {
    http::Request::builder()
        .method(method)
        .uri("/")
        .body(reqwest::Body::from("{}"))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_post_without_idempotency_key_is_never_hedged_a_get_is_and_its_loser_is_cancelled() {
    let backends = [
        Backend::start("slow", 1_000).await,
        Backend::start("fast", 5).await,
    ];
    let balancer = hedged(&backends, Hedging::after(Duration::from_millis(50)));
    let client = client(&balancer);
    let post = client.clone().oneshot(request(http::Method::POST)).await;
    assert_eq!(backend_name(&post.unwrap()), "slow");
    assert_eq!(balancer.stats().extra.hedges, 0);
    client
        .clone()
        .oneshot(request(http::Method::GET))
        .await
        .unwrap(); // "fast"'s turn
    let answer = client.clone().oneshot(request(http::Method::GET)).await;
    assert_eq!(backend_name(&answer.unwrap()), "fast");
    let extra = balancer.stats().extra;
    assert_eq!((extra.hedges, extra.hedges_won), (1, 1));
    let loser = balancer.stats().endpoint(backends[0].url()).unwrap();
    assert_eq!((loser.in_flight, loser.cancelled), (0, 1), "{loser:?}");
    assert_eq!(loser.failures.total(), 0);
    assert_settled(&balancer);
}

#[tokio::test(start_paused = true)]
async fn hedge_off_on_one_request_keeps_it_unhedged() {
    let backends = [
        Backend::start("slow", 1_000).await,
        Backend::start("fast", 5).await,
    ];
    let balancer = hedged(&backends, Hedging::after(Duration::from_millis(50)));
    let mut off = request(http::Method::GET);
    off.extensions_mut().insert(Hedge::Off);
    let answer = client(&balancer).oneshot(off).await.unwrap();
    assert_eq!(backend_name(&answer), "slow");
    assert_eq!(balancer.stats().extra.hedges, 0);
    assert_settled(&balancer);
}

#[test]
fn max_attempts_out_of_range_is_a_typed_error() {
    for attempts in [0, 1, 6, u32::MAX] {
        let built = Balancer::builder()
            .endpoint("http://127.0.0.1:1")
            .hedge(Hedging::default().max_attempts(attempts))
            .build();
        assert!(
            matches!(built, Err(Error::InvalidPolicy { .. })),
            "{attempts}: {built:?}"
        );
    }
    for attempts in 2..=5 {
        let built = Balancer::builder()
            .endpoint("http://127.0.0.1:1")
            .hedge(Hedging::default().max_attempts(attempts))
            .build();
        assert!(built.is_ok(), "{attempts}");
    }
}

const OLD: &str = "http://127.0.0.1:1";
const NEW: &str = "http://127.0.0.1:2";

/// The share of `NEW` over `picks` picks.
fn share_of_new(balancer: &Balancer, picks: usize) -> f64 {
    let mut new = 0;
    for _ in 0..picks {
        let selection = balancer.select(&get("/")).expect("an endpoint");
        new += usize::from(selection.endpoint() == NEW);
        selection.finish(http::StatusCode::OK);
    }
    new as f64 / picks as f64
}

fn slow_start() -> SlowStart {
    SlowStart::new(Duration::from_secs(10))
}

#[tokio::test(start_paused = true)]
async fn a_new_endpoints_share_after_the_window_equals_its_weight() {
    for policy in [Policy::weighted_round_robin(), Policy::random()] {
        let balancer = Balancer::builder()
            .endpoint(OLD)
            .policy(policy)
            .slow_start(slow_start())
            .build()
            .unwrap();
        balancer.add(NEW, 3).unwrap();
        let early = share_of_new(&balancer, 4_000);
        assert!(early < 0.3, "ramping: {early}");
        tokio::time::advance(Duration::from_secs(10)).await;
        let share = share_of_new(&balancer, 4_000);
        assert!((share - 0.75).abs() < 0.03, "after the window: {share}");
    }
}

#[tokio::test(start_paused = true)]
async fn builder_endpoints_start_at_their_whole_share() {
    let balancer = Balancer::builder()
        .endpoint_weighted(OLD, 1)
        .endpoint_weighted(NEW, 3)
        .policy(Policy::weighted_round_robin())
        .slow_start(slow_start())
        .build()
        .unwrap();
    assert_eq!(share_of_new(&balancer, 4_000), 0.75);
}

#[test]
fn slow_start_settings_the_docs_call_invalid_are_typed_errors() {
    let invalid = [
        SlowStart::new(Duration::ZERO),
        SlowStart::new(Duration::from_micros(999)),
        slow_start().aggression(0.0),
        slow_start().aggression(-1.0),
        slow_start().aggression(f64::NAN),
        slow_start().aggression(f64::INFINITY),
        slow_start().min_weight_percent(101),
        slow_start().min_weight_percent(Percent::new(-1.0)),
        slow_start().min_weight_percent(Percent::new(f64::NAN)),
    ];
    for settings in invalid {
        let built = Balancer::builder()
            .endpoint(OLD)
            .slow_start(settings)
            .build();
        assert!(
            matches!(built, Err(Error::InvalidPolicy { .. })),
            "{settings:?}: {built:?}"
        );
    }
    for settings in [
        SlowStart::new(Duration::from_millis(1)),
        slow_start().min_weight_percent(0),
        slow_start().min_weight_percent(100),
        slow_start().aggression(0.01),
    ] {
        let built = Balancer::builder()
            .endpoint(OLD)
            .slow_start(settings)
            .build();
        assert!(built.is_ok(), "{built:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_drained_endpoint_brought_back_ramps_then_has_its_whole_share() {
    let balancer = Balancer::builder()
        .endpoint_weighted(OLD, 1)
        .endpoint_weighted(NEW, 1)
        .policy(Policy::weighted_round_robin())
        .slow_start(slow_start())
        .build()
        .unwrap();
    balancer.drain(NEW).unwrap();
    assert_eq!(share_of_new(&balancer, 100), 0.0);
    balancer.set_weight(NEW, 1).unwrap();
    let early = share_of_new(&balancer, 4_000);
    assert!(early < 0.15, "ramping from drained: {early}");
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(share_of_new(&balancer, 4_000), 0.5);
}

#[tokio::test(start_paused = true)]
async fn a_streaming_body_is_never_hedged() {
    let backends = [
        Backend::start("slow", 1_000).await,
        Backend::start("fast", 5).await,
    ];
    let balancer = hedged(&backends, Hedging::after(Duration::from_millis(50)));
    let frame = hyper::body::Frame::data(bytes::Bytes::from("{}"));
    let chunks = futures::stream::iter([Ok::<_, std::io::Error>(frame)]);
    let streaming = http::Request::put("/")
        .body(reqwest::Body::wrap(http_body_util::StreamBody::new(chunks)))
        .unwrap();
    let answer = client(&balancer).oneshot(streaming).await.unwrap();
    assert_eq!(backend_name(&answer), "slow");
    assert_eq!(balancer.stats().extra.hedges, 0);
    assert_settled(&balancer);
}

#[cfg(feature = "serde")]
#[test]
fn slow_start_settings_invalid_in_a_config_file_name_the_field() {
    for (setting, field) in [
        (r#"window = "0s""#, "slow_start.window"),
        (
            r#"window = "30s", aggression = 0.0"#,
            "slow_start.aggression",
        ),
        (
            r#"window = "30s", min_weight_percent = 101"#,
            "slow_start.min_weight_percent",
        ),
    ] {
        let text = format!("endpoints = [\"{OLD}\"]\nslow_start = {{ {setting} }}\n");
        let document = toml::Deserializer::parse(&text).expect("TOML syntax");
        let error = tower_lb::BalancerConfig::from_deserializer(document)
            .and_then(|config| config.build())
            .unwrap_err();
        assert!(
            matches!(&error, Error::InvalidConfig { path, .. } if path == field),
            "{setting}: {error:?}"
        );
    }
}
