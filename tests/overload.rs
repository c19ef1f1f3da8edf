//! Overload signals against real loopback servers and, for the header
//! forms, through `Balancer::select` in paused time: a 429 (or a 503 with
//! `Retry-After`) holds its endpoint off for the time it names, capped,
//! never ejects it, and when every endpoint is held the one back soonest
//! takes the request.

use crate::support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, StatusCode};
use proptest::prelude::*;
use support::*;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_lb::{
    Balancer, HealthEvent, HoldReason, OutlierDetection, Overload, Policy, RequestKey, Retries,
};
use wiremock::matchers::any;
use wiremock::{Mock, ResponseTemplate};

/// Makes `server` answer `template` (plus its name) from now on.
async fn answer(server: &Server, name: &str, template: ResponseTemplate) {
    server.reset().await;
    Mock::given(any())
        .respond_with(template.insert_header(BACKEND, name))
        .mount(server)
        .await;
}

fn too_many(retry_after: &str) -> ResponseTemplate {
    ResponseTemplate::new(429).insert_header("retry-after", retry_after)
}

/// Health events, in order (the callback runs on a thread of its own).
fn recorded() -> (OutlierDetection, Arc<Mutex<Vec<HealthEvent>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let detection = OutlierDetection::default()
        // One failure would eject: a 429 must not count as one.
        .consecutive_failures(1)
        .max_ejection_percent(100)
        .on_event(move |e| sink.lock().unwrap().push(e.clone()));
    (detection, events)
}

fn over(servers: &[Server], policy: impl Into<Policy>, detection: OutlierDetection) -> Balancer {
    servers
        .iter()
        .fold(Balancer::builder(), |b, s| b.endpoint(s.uri()))
        .policy(policy)
        .outlier_detection(detection)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_429_with_retry_after_2_gets_no_request_for_2_seconds_then_comes_back_never_ejected() {
    let _clock = hold_clock();
    let servers = backends(3).await;
    answer(&servers[0], "a", too_many("2")).await;
    let (detection, events) = recorded();
    let balancer = over(&servers, Policy::round_robin(), detection);
    let client = client(&balancer);
    let url = servers[0].uri();

    // Round robin: the first request reaches "a", which answers 429.
    let response = client.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(response.status(), 429, "the 429 is passed on as it is");
    let held_at = Instant::now();
    let stats = balancer.stats().endpoint(&url).unwrap();
    assert_eq!((stats.overloaded, stats.failures.total()), (1, 0));
    assert!(!stats.ejected, "{stats:?}");
    assert_eq!(stats.latency_ewma, None, "a 429 is no response time");
    let until = stats.held_off_until.expect("held off");
    assert_eq!(until, (held_at + Duration::from_secs(2)).into_std());

    // For 2 s, not one request reaches it: the others share its turns.
    for step in 0..20 {
        for _ in 0..5 {
            assert_ne!(send(&client, "/").await.unwrap(), "a", "step {step}");
        }
        tokio::time::advance(Duration::from_millis(99)).await;
    }
    tokio::time::advance(Duration::from_secs(2) - held_at.elapsed() - Duration::from_millis(1))
        .await;
    assert_ne!(send(&client, "/").await.unwrap(), "a");
    assert_eq!(received(&servers[0]).await, 1);

    // Then it comes back, and takes its turns again.
    answer(&servers[0], "a", ResponseTemplate::new(200)).await;
    tokio::time::advance(Duration::from_millis(1)).await;
    let names: Vec<String> = futures::future::join_all((0..6).map(|_| send(&client, "/")))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(names.iter().filter(|n| *n == "a").count(), 2, "{names:?}");
    let stats = balancer.stats().endpoint(&url).unwrap();
    assert!(!stats.ejected && stats.times_ejected == 0, "{stats:?}");
    assert_eq!(stats.held_off_until, None);
    assert_eq!(balancer.stats().ejections.total, 0);
    for _ in 0..500 {
        if !events.lock().unwrap().is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    match events.lock().unwrap().as_slice() {
        [HealthEvent::HeldOff {
            endpoint,
            duration,
            reason: HoldReason::TooManyRequests,
            ..
        }] => assert_eq!((endpoint, *duration), (&url, Duration::from_secs(2))),
        other => panic!("expected one hold and nothing else, got {other:?}"),
    }
    assert_settled(&balancer);
}

#[tokio::test(start_paused = true)]
async fn when_every_endpoint_is_held_off_the_one_back_soonest_takes_the_requests() {
    let _clock = hold_clock();
    let servers = backends(3).await;
    answer(&servers[0], "a", too_many("5")).await;
    answer(&servers[1], "b", too_many("3")).await;
    answer(&servers[2], "c", too_many("60")).await;
    let balancer = over(&servers, Policy::round_robin(), OutlierDetection::default());
    let client = client(&balancer);
    for _ in 0..3 {
        client.clone().oneshot(get("/")).await.unwrap();
    }
    // All held: "b" (3 s) is back first, so it takes every request; each of
    // its 429s holds it 3 s from then, still the soonest.
    for _ in 0..10 {
        assert_eq!(send(&client, "/").await.unwrap(), "b");
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    assert_eq!(
        [
            received(&servers[0]).await,
            received(&servers[1]).await,
            received(&servers[2]).await
        ],
        [1, 11, 1]
    );
    assert_eq!(balancer.stats().ejections.total, 0);
    assert_settled(&balancer);
}

#[tokio::test(start_paused = true)]
async fn a_hashed_key_goes_to_its_next_endpoint_while_its_home_is_held_and_back_after() {
    let _clock = hold_clock();
    let servers = backends(4).await;
    let balancer = over(
        &servers,
        Policy::ring_hash().key(RequestKey::header("x-user")),
        OutlierDetection::default(),
    );
    let client = client(&balancer);
    let keyed = || {
        let mut request = get("/");
        request
            .headers_mut()
            .insert("x-user", HeaderValue::from_static("user-42"));
        client.clone().oneshot(request)
    };
    let home = backend_name(&keyed().await.unwrap());
    let home_index = (home.as_bytes()[0] - b'a') as usize;
    answer(&servers[home_index], &home, too_many("2")).await;
    assert_eq!(keyed().await.unwrap().status(), 429);

    // Held: the key goes to one other endpoint, the same every time.
    let mut elsewhere = Vec::new();
    for _ in 0..10 {
        elsewhere.push(backend_name(&keyed().await.unwrap()));
    }
    assert!(
        elsewhere.iter().all(|n| *n == elsewhere[0] && *n != home),
        "{elsewhere:?}"
    );

    answer(&servers[home_index], &home, ResponseTemplate::new(200)).await;
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(backend_name(&keyed().await.unwrap()), home);
    assert_settled(&balancer);
}

#[tokio::test(start_paused = true)]
async fn least_time_takes_no_response_time_from_a_429() {
    let _clock = hold_clock();
    let servers = backends(2).await;
    answer(&servers[0], "a", ResponseTemplate::new(429)).await;
    let balancer = over(
        &servers[..1],
        Policy::least_response_time(),
        OutlierDetection::default(),
    );
    let client = client(&balancer);
    // Alone and held (no header: the default 5 s), it still takes every
    // request, each timed under least time; none feeds its estimate.
    for _ in 0..5 {
        client.clone().oneshot(get("/")).await.unwrap();
    }
    let busy = balancer.stats().endpoint(servers[0].uri()).unwrap();
    assert_eq!((busy.requests, busy.overloaded), (5, 5));
    assert_eq!(busy.latency_ewma, None, "a 429 fed the estimate");
    assert!(busy.held_off_until.is_some());
    // A real answer does.
    answer(&servers[0], "a", ResponseTemplate::new(200)).await;
    client.clone().oneshot(get("/")).await.unwrap();
    let stats = balancer.stats().endpoint(servers[0].uri()).unwrap();
    assert!(stats.latency_ewma.is_some());
    assert_settled(&balancer);
}

#[tokio::test(start_paused = true)]
async fn a_429_is_retried_on_another_endpoint_at_once_when_retries_allow() {
    let _clock = hold_clock();
    let servers = backends(2).await;
    answer(&servers[0], "a", too_many("30")).await;
    let balancer = servers
        .iter()
        .fold(Balancer::builder(), |b, s| b.endpoint(s.uri()))
        .policy(Policy::round_robin())
        .retry(Retries::default().idempotent_failures())
        .build()
        .unwrap();
    let client = client(&balancer);
    let response = client.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(
        (response.status().as_u16(), backend_name(&response)),
        (200, "b".into())
    );
    assert_eq!(balancer.stats().extra.retries, 1);
    assert_settled(&balancer);
}

#[tokio::test(start_paused = true)]
async fn a_503_without_retry_after_stays_a_health_failure_and_holds_nothing() {
    let _clock = hold_clock();
    let servers = backends(2).await;
    answer(&servers[0], "a", ResponseTemplate::new(503)).await;
    let balancer = over(&servers, Policy::round_robin(), OutlierDetection::default());
    let client = client(&balancer);
    for _ in 0..4 {
        client.clone().oneshot(get("/")).await.unwrap();
    }
    let stats = balancer.stats().endpoint(servers[0].uri()).unwrap();
    assert_eq!((stats.failures.server_error, stats.overloaded), (2, 0));
    assert_eq!(stats.held_off_until, None);

    // With Retry-After, it is a hold, not a failure.
    answer(
        &servers[0],
        "a",
        ResponseTemplate::new(503).insert_header("retry-after", "1"),
    )
    .await;
    for _ in 0..2 {
        client.clone().oneshot(get("/")).await.unwrap();
    }
    let stats = balancer.stats().endpoint(servers[0].uri()).unwrap();
    assert_eq!((stats.failures.server_error, stats.overloaded), (2, 1));
    assert!(stats.held_off_until.is_some());
    assert_settled(&balancer);
}

#[tokio::test(start_paused = true)]
async fn with_overload_disabled_a_429_is_an_answer_like_any_other() {
    let _clock = hold_clock();
    let servers = backends(2).await;
    answer(&servers[0], "a", too_many("30")).await;
    let balancer = servers
        .iter()
        .fold(Balancer::builder(), |b, s| b.endpoint(s.uri()))
        .policy(Policy::round_robin())
        .overload(Overload::disabled())
        .build()
        .unwrap();
    let client = client(&balancer);
    for _ in 0..10 {
        client.clone().oneshot(get("/")).await.unwrap();
    }
    let stats = balancer.stats().endpoint(servers[0].uri()).unwrap();
    assert_eq!((stats.successes, stats.overloaded), (5, 0));
    assert_eq!(stats.held_off_until, None);
}

// Header forms, through `select` in paused time: no server needed.

fn paused<F: std::future::Future>(test: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(test)
}

fn balancer_of(n: usize, overload: Overload) -> Balancer {
    (0..n)
        .fold(Balancer::builder(), |b, i| {
            b.endpoint(format!("http://127.0.0.1:{}", 9100 + i))
        })
        .policy(Policy::round_robin())
        .overload(overload)
        .build()
        .unwrap()
}

/// Sends one request by hand; the endpoint it went to answers `status`
/// with `retry_after` (if any). Returns that endpoint.
fn answer_by_hand(balancer: &Balancer, status: u16, retry_after: Option<&str>) -> String {
    let selection = balancer
        .select(&http::Request::get("/").body(()).unwrap())
        .unwrap();
    let endpoint = selection.endpoint().to_owned();
    let mut headers = HeaderMap::new();
    if let Some(value) = retry_after {
        headers.insert("retry-after", HeaderValue::from_str(value).unwrap());
    }
    selection.finish_with_headers(StatusCode::from_u16(status).unwrap(), &headers);
    endpoint
}

/// The endpoints `n` picks go to (each answered 200).
fn picks(balancer: &Balancer, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| answer_by_hand(balancer, 200, None))
        .collect()
}

/// How long `endpoint` stays held from now, as its stats tell.
async fn held_for(balancer: &Balancer, endpoint: &str) -> Option<Duration> {
    let until = balancer.stats().endpoint(endpoint)?.held_off_until?;
    Some(until.saturating_duration_since(Instant::now().into_std()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// `Retry-After: n` holds for n seconds, at most the cap; the held
    /// endpoint gets no pick until then, and picks again after.
    #[test]
    fn delta_seconds_hold_exactly_that_long_capped_and_picks_skip_the_endpoint_until_then(
        seconds in 0u64..1_000,
        cap in 1u64..600,
    ) {
        paused(async move {
            let overload = Overload::default().max_hold(Duration::from_secs(cap));
            let balancer = balancer_of(3, overload);
            let held = answer_by_hand(&balancer, 429, Some(&seconds.to_string()));
            let expected = seconds.min(cap);
            let wait = held_for(&balancer, &held).await;
            if expected == 0 {
                prop_assert_eq!(wait, None);
                return Ok(());
            }
            prop_assert_eq!(wait, Some(Duration::from_secs(expected)));
            tokio::time::advance(Duration::from_secs(expected) - Duration::from_millis(1)).await;
            prop_assert!(!picks(&balancer, 6).contains(&held));
            tokio::time::advance(Duration::from_millis(1)).await;
            prop_assert_eq!(picks(&balancer, 3).iter().filter(|e| **e == held).count(), 1);
            Ok(())
        })?;
    }

    /// An HTTP date holds until that time (to the second it is written
    /// in), at most the cap; a date in the past holds nothing.
    #[test]
    fn an_http_date_holds_until_then_capped_and_a_past_one_holds_nothing(
        ahead in -1_000i64..100_000,
    ) {
        paused(async move {
            let balancer = balancer_of(2, Overload::default());
            let now = SystemTime::now();
            let date = if ahead >= 0 {
                now + Duration::from_secs(ahead as u64)
            } else {
                now - Duration::from_secs(ahead.unsigned_abs())
            };
            let held = answer_by_hand(&balancer, 429, Some(&httpdate::fmt_http_date(date)));
            let wait = held_for(&balancer, &held).await;
            // The date is written in whole seconds, down: up to 1 s less.
            let expected = Duration::from_secs(ahead.clamp(0, 300) as u64);
            match wait {
                None => prop_assert!(ahead <= 1, "no hold for {}", ahead),
                Some(wait) => {
                    prop_assert!(wait <= expected, "{:?} > {:?}", wait, expected);
                    prop_assert!(
                        wait + Duration::from_secs(1) >= expected,
                        "{:?} for {} s ahead", wait, ahead
                    );
                }
            }
            Ok(())
        })?;
    }

    /// A value that is neither delta-seconds nor an HTTP date (negative,
    /// fractional, words, empty) holds for the default penalty; so does a
    /// 429 with no header at all.
    #[test]
    fn a_malformed_retry_after_holds_for_the_default_penalty(
        value in prop_oneof![
            (1u64..10_000).prop_map(|n| format!("-{n}")),
            (0u64..100, 1u64..100).prop_map(|(a, b)| format!("{a}.{b}")),
            "[a-z]{1,12}",
            Just(String::new()),
        ],
        penalty_ms in 1u64..10_000,
        with_header in proptest::bool::ANY,
    ) {
        paused(async move {
            let penalty = Duration::from_millis(penalty_ms);
            let balancer = balancer_of(2, Overload::default().default_penalty(penalty));
            let header = with_header.then_some(value.as_str());
            let held = answer_by_hand(&balancer, 429, header);
            prop_assert_eq!(held_for(&balancer, &held).await, Some(penalty));
            Ok(())
        })?;
    }

    /// When every endpoint is held, each request goes to the one whose hold
    /// ends first (the first in the set among equals), and its answer
    /// counts as usual.
    #[test]
    fn when_all_are_held_the_request_goes_to_the_one_back_soonest(
        waits in proptest::collection::vec(1u64..300, 2..6),
    ) {
        paused(async move {
            let balancer = balancer_of(waits.len(), Overload::default());
            let mut held = Vec::new();
            for wait in &waits {
                held.push(answer_by_hand(&balancer, 429, Some(&wait.to_string())));
            }
            let soonest = waits
                .iter()
                .enumerate()
                .min_by_key(|(i, w)| (**w, held[*i].clone()))
                .map(|(i, _)| held[i].clone())
                .unwrap();
            prop_assert_eq!(picks(&balancer, 5), vec![soonest; 5]);
            let stats = balancer.stats();
            prop_assert_eq!(stats.ejections.total, 0);
            prop_assert!(stats.endpoints.iter().all(|e| e.overloaded == 1 && e.held_off_until.is_some()));
            Ok(())
        })?;
    }
}
