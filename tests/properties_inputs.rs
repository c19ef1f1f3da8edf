//! What user input reaches, over arbitrary bytes and strings: endpoint URLs,
//! request targets, header- and cookie-derived keys; and the in-flight count
//! after random cancellation. Nothing panics; each input gets a typed error
//! or a documented result.
//!
//! `cargo test --test properties_inputs` (a few thousand cases in all).

use std::convert::Infallible;
use std::time::Duration;

use proptest::prelude::*;
use tower::{service_fn, Layer, ServiceExt};
use tower_lb::{key_hash, Balancer, Error, Policy, RequestKey, SessionKey};

/// Strings that look like URLs, with the characters that break parsers.
fn url_like() -> impl Strategy<Value = String> {
    let scheme = prop_oneof![
        Just(""),
        Just("http://"),
        Just("https://"),
        Just("HTTP://"),
        Just("ftp://"),
        Just("http:/")
    ];
    let host = "[a-zA-Z0-9.\\-\\[\\]:@%_~]{0,20}";
    let port = prop_oneof![
        Just(String::new()),
        (0u32..70_000).prop_map(|p| format!(":{p}")),
        Just(":".to_owned())
    ];
    let rest = "[a-zA-Z0-9/._~%?#=&\\- ]{0,16}";
    (scheme, host, port, rest).prop_map(|(s, h, p, r)| format!("{s}{h}{p}{r}"))
}

fn any_string() -> impl Strategy<Value = String> {
    prop_oneof![
        url_like(),
        ".{0,40}",
        prop::collection::vec(any::<u8>(), 0..40)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

/// Paths built from the pieces that climb: dot segments in every spelling,
/// encoded and backslash separators, names.
fn climbing_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just(".."),
        Just("."),
        Just("%2e%2e"),
        Just("%2E."),
        Just(".%2e"),
        Just("%2e"),
        Just("..%2f"),
        Just("..%5C"),
        Just("..\\"),
        Just(""),
        Just("a"),
        Just("b.c"),
        Just("..."),
    ];
    (
        prop::collection::vec(piece, 0..8),
        prop_oneof![Just(""), Just("?q=1")],
    )
        .prop_map(|(pieces, query)| format!("/{}{query}", pieces.join("/")))
}

/// Whether `path` holds a dot segment, `%2e` spellings included.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| {
        let s = s.to_ascii_lowercase().replace("%2e", ".");
        s == "." || s == ".."
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn any_climbing_path_stays_under_the_base_path_on_every_front_end_or_is_refused(
        base in prop_oneof![Just(""), Just("/api"), Just("/a/b")],
        target in climbing_path(),
    ) {
        let balancer = Balancer::builder()
            .endpoint(format!("http://127.0.0.1:8080{base}"))
            .build()
            .unwrap();
        let inside = |path: &str| path.starts_with(&format!("{base}/")) && !has_dot_segment(path);
        // http::Request: the path as written.
        if let Ok(uri) = target.parse::<http::Uri>() {
            let mut request = http::Request::get(uri).body(()).unwrap();
            let selection = balancer.select(&request).unwrap();
            match selection.route(&mut request) {
                Ok(()) => prop_assert!(inside(request.uri().path()), "{target:?} went to {}", request.uri()),
                Err(Error::InvalidTarget { .. }) => {}
                Err(other) => prop_assert!(false, "{target:?}: unexpected {other:?}"),
            }
        }
        // reqwest::Request: the url crate has resolved dots already.
        let url = reqwest::Url::parse(&format!("http://backend{target}")).unwrap();
        let mut request = reqwest::Request::new(http::Method::GET, url);
        let selection = balancer.select(&request).unwrap();
        match selection.route(&mut request) {
            Ok(()) => prop_assert!(inside(request.url().path()), "{target:?} went to {}", request.url()),
            Err(Error::InvalidTarget { .. }) => {}
            Err(other) => prop_assert!(false, "{target:?}: unexpected {other:?}"),
        }
    }

    #[test]
    fn any_endpoint_url_is_refused_with_a_reason_or_accepted_under_a_name_that_parses_back(
        url in any_string(),
    ) {
        match Balancer::builder().endpoint(&url).build() {
            Ok(balancer) => {
                let name = balancer.stats().endpoints[0].url.clone();
                // The canonical name manages the endpoint.
                let again = Balancer::builder().endpoint(&name).build();
                prop_assert!(again.is_ok(), "{url:?} was accepted as {name:?}, which is refused");
                prop_assert_eq!(&again.unwrap().stats().endpoints[0].url, &name);
                prop_assert!(balancer.set_weight(&name, 2).is_ok());
                prop_assert!(balancer.remove(&name).is_ok());
            }
            Err(Error::InvalidUrl { url: given, reason, .. }) => {
                prop_assert_eq!(given, url);
                prop_assert!(!reason.is_empty());
            }
            Err(other) => prop_assert!(false, "{url:?}: unexpected {other:?}"),
        }
    }

    #[test]
    fn any_request_target_stays_under_the_base_path_or_is_refused_with_a_typed_error(
        base in prop_oneof![Just(""), Just("/api"), Just("/a/b")],
        target in any_string(),
    ) {
        let balancer = Balancer::builder()
            .endpoint(format!("http://127.0.0.1:8080{base}"))
            .build()
            .unwrap();
        let Ok(uri) = target.parse::<http::Uri>() else {
            return Ok(()); // http refuses it before we see it
        };
        let mut request = http::Request::get(uri).body(()).unwrap();
        let selection = balancer.select(&request).unwrap();
        match selection.route(&mut request) {
            Ok(()) => {
                let routed = request.uri();
                prop_assert_eq!(routed.scheme_str(), Some("http"));
                prop_assert_eq!(routed.authority().map(|a| a.as_str()), Some("127.0.0.1:8080"));
                let path = routed.path();
                prop_assert!(path.starts_with(&format!("{base}/")), "{target:?} went to {path:?}");
                prop_assert!(!has_dot_segment(path), "{target:?} kept a dot segment: {path:?}");
            }
            Err(Error::InvalidTarget { .. } | Error::InvalidRequest { .. }) => {}
            Err(other) => prop_assert!(false, "{target:?}: unexpected {other:?}"),
        }
    }

    #[test]
    fn any_header_value_gives_the_hash_of_its_bytes_and_any_cookie_header_never_panics(
        value in prop::collection::vec(any::<u8>(), 0..200),
        cookie in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let balancer = Balancer::builder()
            .endpoint("http://127.0.0.1:8081")
            .endpoint("http://127.0.0.1:8082")
            .policy(Policy::maglev().key(RequestKey::cookie("sid").or(RequestKey::header("x-user"))))
            .build()
            .unwrap();
        let mut request = http::Request::get("/").body(()).unwrap();
        if let Ok(value) = http::HeaderValue::from_bytes(&value) {
            request.headers_mut().insert("x-user", value.clone());
            // Without a cookie, the header is the key: the same endpoint as
            // an explicit key with the same bytes.
            let selection = balancer.select(&request).unwrap();
            let home = balancer.locate(&SessionKey::new(value.as_bytes())).unwrap();
            prop_assert_eq!(selection.endpoint(), &*home);
            prop_assert_eq!(SessionKey::new(value.as_bytes()).digest(), key_hash(value.as_bytes()));
        }
        if let Ok(cookie) = http::HeaderValue::from_bytes(&cookie) {
            request.headers_mut().insert(http::header::COOKIE, cookie);
            prop_assert!(balancer.select(&request).is_ok());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn in_flight_counts_return_to_zero_after_random_cancellation(
        plan in prop::collection::vec((0u64..50, any::<bool>(), 0u64..60), 1..60),
        policy in 0u8..3,
    ) {
        let policy: Policy = match policy {
            0 => Policy::round_robin(),
            1 => Policy::least_response_time().into(),
            _ => Policy::maglev().bounded_loads().into(),
        };
        let balancer = Balancer::builder()
            .endpoint("http://127.0.0.1:8081")
            .endpoint("http://127.0.0.1:8082")
            .endpoint("http://127.0.0.1:8083")
            .policy(policy)
            .build()
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            // An inner service that answers after a delay taken from the request.
            let inner = service_fn(|request: http::Request<()>| async move {
                let ms: u64 = request.uri().path().trim_start_matches('/').parse().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, Infallible>(http::Response::new(()))
            });
            let service = balancer.layer().layer(inner);
            let mut running = Vec::new();
            for (i, &(delay, cancel, cancel_after)) in plan.iter().enumerate() {
                let mut request = http::Request::get(format!("/{delay}")).body(()).unwrap();
                request.extensions_mut().insert(SessionKey::new(i.to_le_bytes()));
                let call = service.clone().oneshot(request);
                let task = tokio::spawn(call);
                if cancel {
                    let handle = task.abort_handle();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(cancel_after)).await;
                        handle.abort();
                    });
                }
                running.push(task);
                tokio::time::advance(Duration::from_millis(1)).await;
            }
            for task in running {
                let _ = task.await;
            }
        });
        let stats = balancer.stats();
        prop_assert_eq!(stats.in_flight(), 0);
        for e in &stats.endpoints {
            prop_assert_eq!(
                e.requests,
                e.successes + e.failures.total() + e.cancelled + e.client_errors
            );
        }
        prop_assert_eq!(stats.requests(), plan.len() as u64);
    }
}

#[test]
fn mangled_urls_found_by_hand_are_refused_or_round_trip() {
    for url in [
        "http://.[:]:8",
        "http://[::1]:8080",
        "http://[::1",
        "http://a:b:c",
        "http://%41:80",
        "http://127.0.0.1:8080/a/../b",
        "http://127.0.0.1:8080#frag",
        "http://127.0.0.1:8080/x?q",
        "http://exa mple",
        "https://EXAMPLE.com.:443/",
    ] {
        match Balancer::builder().endpoint(url).build() {
            Ok(balancer) => {
                let name = balancer.stats().endpoints[0].url.clone();
                let again = Balancer::builder().endpoint(&name).build();
                assert!(
                    again.is_ok_and(|b| b.stats().endpoints[0].url == name),
                    "{url:?} was accepted as {name:?}, which does not parse back to itself"
                );
            }
            Err(Error::InvalidUrl { reason, .. }) => assert!(!reason.is_empty()),
            Err(other) => panic!("{url:?}: {other:?}"),
        }
    }
}
