//! Passive health against real loopback servers: failing backends are
//! ejected, get nothing while out, come back by themselves, and ejection
//! never takes the whole fleet down.

use crate::support;

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use support::*;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_lb::{
    Balancer, HealthEvent, OutlierDetection, Percent, Policy, RequestKey, Retries, SessionKey,
};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

const EJECTION: Duration = Duration::from_millis(400);

/// Health events, in order. The balancer hands them to the callback on a
/// thread of its own.
#[derive(Clone, Default)]
struct Events(Arc<(Mutex<Vec<HealthEvent>>, Condvar)>);

impl Events {
    fn detection(&self) -> OutlierDetection {
        let events = self.clone();
        OutlierDetection::default()
            .consecutive_failures(5)
            .base_ejection_time(EJECTION)
            .max_ejection_time(Duration::from_secs(2))
            .on_event(move |e| {
                let (list, arrived) = &*events.0;
                list.lock().unwrap().push(e.clone());
                arrived.notify_all();
            })
    }

    /// The events so far, once there are at least `n` (waiting up to five
    /// seconds of real time for the delivery thread).
    fn at_least(&self, n: usize) -> Vec<HealthEvent> {
        let (list, arrived) = &*self.0;
        let (list, _) = arrived
            .wait_timeout_while(list.lock().unwrap(), Duration::from_secs(5), |l| {
                l.len() < n
            })
            .unwrap();
        assert!(
            list.len() >= n,
            "expected {n} health events, got {:?}",
            *list
        );
        list.clone()
    }
}

/// Makes `server` answer `status` (plus its name) from now on.
async fn answer(server: &Server, name: &str, status: u16) {
    server.reset().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(status).insert_header(BACKEND, name))
        .mount(server)
        .await;
}

fn balancer(urls: &[String], policy: impl Into<Policy>, detection: OutlierDetection) -> Balancer {
    urls.iter()
        .fold(Balancer::builder(), |b, url| b.endpoint(url))
        .policy(policy)
        .outlier_detection(detection)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_503_backend_is_ejected_gets_nothing_while_out_and_comes_back() {
    // Time moves only when the test says: the balancer's sweeper waits for
    // the ejection to end, and waiting for wiremock would jump it there.
    let _clock = hold_clock();
    let servers = backends(5).await;
    answer(&servers[2], "c", 503).await;
    let urls: Vec<String> = servers.iter().map(|s| s.uri()).collect();
    let events = Events::default();
    let balancer = balancer(&urls, Policy::round_robin(), events.detection());
    let client = client(&balancer);

    // Round robin: every fifth request reaches "c"; its fifth 503 ejects it.
    for _ in 0..25 {
        send(&client, "/").await.unwrap();
    }
    assert_eq!(received(&servers[2]).await, 5);
    let ejected_at = Instant::now();
    match events.at_least(1).as_slice() {
        [HealthEvent::Ejected {
            endpoint,
            times: 1,
            duration,
            ..
        }] => {
            assert_eq!(endpoint, &urls[2]);
            assert_eq!(*duration, EJECTION);
        }
        other => panic!("expected one ejection, got {other:?}"),
    }
    assert!(balancer.stats().endpoint(&urls[2]).unwrap().ejected);

    // While ejected: not one request reaches it; the others share its turns.
    let while_out = 100;
    let mut others = [0; 5];
    for _ in 0..while_out {
        let name = send(&client, "/").await.unwrap();
        others[(name.as_bytes()[0] - b'a') as usize] += 1;
    }
    assert_eq!(others, [25, 25, 0, 25, 25]);
    assert_eq!(
        received(&servers[2]).await,
        5,
        "the ejected backend got requests"
    );

    // It comes back by itself once its time is up, and not a moment before.
    answer(&servers[2], "c", 200).await;
    tokio::time::advance(EJECTION - Duration::from_millis(1)).await;
    send(&client, "/").await.unwrap();
    assert!(balancer.stats().endpoint(&urls[2]).unwrap().ejected);
    tokio::time::advance(Duration::from_millis(1)).await;
    let mut back = 0;
    for _ in 0..10 {
        back += usize::from(send(&client, "/").await.unwrap() == "c");
    }
    assert_eq!(back, 2, "re-admitted, it takes its turns again");
    assert!(matches!(
        events.at_least(2)[1],
        HealthEvent::Readmitted { ref endpoint, .. } if *endpoint == urls[2]
    ));
    println!(
        "health: 503 backend ejected after 5 failures; {while_out} requests while out, 0 reached it; re-admitted {} ms after ejection, at its time",
        ejected_at.elapsed().as_millis()
    );
    assert!(!balancer.stats().endpoint(&urls[2]).unwrap().ejected);
    assert_settled(&balancer);
}

#[tokio::test(start_paused = true)]
async fn a_refused_backend_is_ejected_and_readmitted_when_it_listens_again() {
    let _clock = hold_clock();
    let servers = backends(3).await;
    // A port that refuses, kept to listen on later.
    let refusing = RefusingPort::new();
    let down = refusing.url.clone();
    let mut urls: Vec<String> = servers.iter().map(|s| s.uri()).collect();
    urls.push(down.clone());
    let events = Events::default();
    let balancer = balancer(&urls, Policy::round_robin(), events.detection());
    let client = client(&balancer);

    let mut errors = 0;
    for _ in 0..40 {
        errors += usize::from(send(&client, "/").await.is_err());
    }
    // Each refused connection was retried on another backend.
    assert_eq!(errors, 0, "connect errors are retried elsewhere");
    let stats = balancer.stats();
    let e = stats.endpoint(&down).unwrap();
    assert!(e.ejected);
    assert_eq!(e.failures.connect, 5);

    // A server comes up on that port; after the ejection time it is used.
    let listener = refusing.listen();
    let revived = Server::from(MockServer::builder().listener(listener).start().await);
    answer(&revived, "revived", 200).await;
    tokio::time::advance(EJECTION).await;
    let mut reached = 0;
    for _ in 0..8 {
        reached += usize::from(send(&client, "/").await.unwrap() == "revived");
    }
    assert_eq!(reached, 2);
    assert!(events
        .at_least(2)
        .iter()
        .any(|e| matches!(e, HealthEvent::Readmitted { endpoint, .. } if *endpoint == down)));
    assert_settled(&balancer);
}

#[tokio::test]
async fn a_refusing_port_refuses_connects_and_no_server_can_take_it() {
    let refusing = RefusingPort::new();
    for _ in 0..3 {
        let connect = tokio::net::TcpStream::connect(refusing.addr).await;
        assert_eq!(
            connect.map(drop).unwrap_err().kind(),
            std::io::ErrorKind::ConnectionRefused
        );
    }
    // Servers (std's and tokio's listeners set SO_REUSEADDR) cannot bind it.
    let std_bind = std::net::TcpListener::bind(refusing.addr);
    assert_eq!(
        std_bind.map(drop).unwrap_err().kind(),
        std::io::ErrorKind::AddrInUse
    );
    let tokio_bind = tokio::net::TcpListener::bind(refusing.addr).await;
    assert_eq!(
        tokio_bind.map(drop).unwrap_err().kind(),
        std::io::ErrorKind::AddrInUse
    );
    // And through the balancer: a connect error, charged as one.
    let balancer = Balancer::builder().endpoint(&refusing.url).build().unwrap();
    assert!(send(&client(&balancer), "/").await.is_err());
    assert_eq!(balancer.stats().endpoints[0].failures.connect, 1);
    // Listening later serves on the same port.
    let addr = refusing.addr;
    let server = Server::from(
        MockServer::builder()
            .listener(refusing.listen())
            .start()
            .await,
    );
    answer(&server, "up", 200).await;
    let balancer = Balancer::builder()
        .endpoint(format!("http://{addr}"))
        .build()
        .unwrap();
    assert_eq!(send(&client(&balancer), "/").await.unwrap(), "up");
}

/// One of five backends refuses connections; 200 requests. Errors the
/// caller saw, and connection attempts the dead backend got.
async fn one_hard_down_of_five(retry: Retries) -> (usize, u64) {
    let servers = backends(4).await;
    let refusing = RefusingPort::new();
    let down = refusing.url.clone();
    let mut urls: Vec<String> = servers.iter().map(|s| s.uri()).collect();
    urls.insert(2, down.clone());
    let balancer = urls
        .iter()
        .fold(Balancer::builder(), |b, url| b.endpoint(url))
        .policy(Policy::round_robin())
        // Out for longer than the run takes on any machine: 200 requests
        // on a busy one once outlasted a 400 ms ejection, and the dead
        // backend came back for five more failures.
        .outlier_detection(
            OutlierDetection::default()
                .consecutive_failures(5)
                .base_ejection_time(Duration::from_secs(600))
                .max_ejection_time(Duration::from_secs(600)),
        )
        .retry(retry)
        .build()
        .unwrap();
    let client = client(&balancer);
    let mut errors = 0;
    for _ in 0..200 {
        errors += usize::from(send(&client, "/").await.is_err());
    }
    let attempts = balancer.stats().endpoint(&down).unwrap().failures.connect;
    assert_settled(&balancer);
    (errors, attempts)
}

#[tokio::test]
async fn one_hard_down_backend_of_five_surfaces_no_errors_with_retry() {
    let (errors_off, attempts_off) = one_hard_down_of_five(Retries::disabled()).await;
    let (errors_on, attempts_on) = one_hard_down_of_five(Retries::default()).await;
    println!(
        "health: 1 of 5 hard-down, 200 requests: {errors_off} errors to the caller with retry off, {errors_on} with retry on; the dead backend got {attempts_off} / {attempts_on} connection attempts, none while ejected"
    );
    assert_eq!(
        errors_off, 5,
        "without retry: the consecutive-failure threshold"
    );
    assert_eq!(errors_on, 0, "with retry: none");
    assert_eq!(
        (attempts_off, attempts_on),
        (5, 5),
        "nothing reached it while ejected"
    );
}

#[tokio::test]
async fn retries_are_bounded_by_the_budget() {
    // Every backend refuses: each request fails; retries stop when the
    // budget (no reserve, 20% of requests) runs out.
    let refusing: Vec<RefusingPort> = (0..3).map(|_| RefusingPort::new()).collect();
    let urls: Vec<String> = refusing.iter().map(|port| port.url.clone()).collect();
    let balancer = urls
        .iter()
        .fold(Balancer::builder(), |b, url| b.endpoint(url))
        .outlier_detection(OutlierDetection::disabled())
        .retry(Retries::default().budget(Duration::from_secs(10), 20, 0))
        .build()
        .unwrap();
    let client = client(&balancer);
    for _ in 0..100 {
        assert!(send(&client, "/").await.is_err());
    }
    let attempts: u64 = balancer
        .stats()
        .endpoints
        .iter()
        .map(|e| e.failures.connect)
        .sum();
    println!(
        "health: all backends refusing, 100 requests: {attempts} connection attempts (budget 20%)"
    );
    assert_eq!(attempts, 120, "100 first attempts and 20 retries");
}

#[tokio::test]
async fn at_most_the_max_ejection_percent_is_out_under_mass_failure() {
    let servers = backends(10).await;
    for (i, server) in servers.iter().enumerate() {
        answer(server, &name(i), 503).await;
    }
    let urls: Vec<String> = servers.iter().map(|s| s.uri()).collect();
    let detection = Events::default()
        .detection()
        .max_ejection_percent(20)
        .panic_threshold(0);
    let balancer = balancer(&urls, Policy::round_robin(), detection);
    let client = client(&balancer);
    let mut most_out = 0;
    for _ in 0..300 {
        // 5xx answers are answers: every request gets one.
        let response = client.clone().oneshot(get("/")).await.unwrap();
        assert_eq!(response.status(), 503);
        let out = balancer
            .stats()
            .endpoints
            .iter()
            .filter(|e| e.ejected)
            .count();
        most_out = most_out.max(out);
    }
    println!("health: 10 of 10 backends failing, max 20% ejected: at most {most_out} out at once");
    assert_eq!(most_out, 2);
    assert_settled(&balancer);
}

#[tokio::test]
async fn panic_mode_spreads_over_all_when_too_few_are_healthy() {
    let servers = backends(4).await;
    for (i, server) in servers.iter().enumerate().take(3) {
        answer(server, &name(i), 503).await;
    }
    let urls: Vec<String> = servers.iter().map(|s| s.uri()).collect();
    let detection = Events::default().detection().max_ejection_percent(100);
    let balancer = balancer(&urls, Policy::round_robin(), detection);
    let client = client(&balancer);
    for _ in 0..60 {
        client.clone().oneshot(get("/")).await.unwrap();
    }
    let stats = balancer.stats();
    let out = stats.endpoints.iter().filter(|e| e.ejected).count();
    assert_eq!(out, 3, "all three failing backends were ejected");
    assert!(
        stats.panic_mode,
        "one healthy of four is below the 50% threshold"
    );
    // In panic the failing ones still get their turns: the healthy one is
    // not left to carry everything.
    let before = received(&servers[0]).await;
    for _ in 0..8 {
        client.clone().oneshot(get("/")).await.unwrap();
    }
    assert_eq!(received(&servers[0]).await, before + 2);
    assert_settled(&balancer);
}

#[tokio::test(start_paused = true)]
async fn a_key_walks_on_while_its_backend_is_ejected_and_comes_back() {
    let servers = backends(5).await;
    let urls: Vec<String> = servers.iter().map(|s| s.uri()).collect();
    let events = Events::default();
    let policy = Policy::maglev().key(RequestKey::session());
    let balancer = balancer(&urls, policy, events.detection());
    let client = client(&balancer);
    let keys: Vec<SessionKey> = (0..200)
        .map(|k| SessionKey::new(format!("user-{k}")))
        .collect();
    let homes: Vec<_> = keys.iter().map(|k| balancer.locate(k).unwrap()).collect();
    let send_key = |key: SessionKey| {
        let client = client.clone();
        async move {
            let mut request = get("/");
            request.extensions_mut().insert(key);
            client.oneshot(request).await.unwrap()
        }
    };

    answer(&servers[1], "b", 503).await;
    let on_b: Vec<usize> = (0..keys.len()).filter(|&i| *homes[i] == *urls[1]).collect();
    for &i in on_b.iter().cycle().take(5) {
        send_key(keys[i]).await;
    }
    assert!(balancer.stats().endpoint(&urls[1]).unwrap().ejected);
    for (i, key) in keys.iter().enumerate() {
        let now = balancer.locate(key).unwrap();
        if on_b.contains(&i) {
            assert_ne!(*now, *urls[1]);
        } else {
            assert_eq!(now, homes[i], "a key whose backend is fine moved");
        }
    }
    answer(&servers[1], "b", 200).await;
    tokio::time::advance(EJECTION).await;
    // A pick ends the ejection; locating a key is a pure read.
    send_key(keys[0]).await;
    let after: Vec<_> = keys.iter().map(|k| balancer.locate(k).unwrap()).collect();
    assert_eq!(after, homes, "keys come back when the backend does");
    println!(
        "health: ejecting 1 of 5 moved its {} of 200 keys only; all came back on re-admission",
        on_b.len()
    );
}

#[test]
fn bad_outlier_settings_get_a_typed_error_naming_the_setting() {
    let bad = [
        (
            OutlierDetection::default().consecutive_failures(0),
            "consecutive-failure",
        ),
        (
            OutlierDetection::default().failure_percentage(150, 10),
            "failure_percentage",
        ),
        (
            OutlierDetection::default().base_ejection_time(Duration::ZERO),
            "base ejection time",
        ),
        (
            OutlierDetection::default()
                .base_ejection_time(Duration::from_secs(60))
                .max_ejection_time(Duration::from_secs(10)),
            "maximum ejection time",
        ),
        (
            OutlierDetection::default().max_ejection_percent(101),
            "max_ejection_percent",
        ),
        (
            OutlierDetection::default().panic_threshold(200),
            "panic_threshold",
        ),
    ];
    for (detection, setting) in bad {
        let result = Balancer::builder()
            .endpoint("http://127.0.0.1:8081")
            .outlier_detection(detection.clone())
            .build();
        match result {
            Err(tower_lb::Error::InvalidPolicy { reason, .. }) => {
                assert!(reason.contains(setting), "{reason} ({detection:?})")
            }
            other => panic!("{detection:?} gave {other:?}"),
        }
    }
}

#[test]
fn bad_retry_settings_get_a_typed_error_naming_the_setting() {
    let ten_s = Duration::from_secs(10);
    let bad = [
        (Retries::default().budget(Duration::ZERO, 20, 10), "window"),
        (
            Retries::default().budget(Duration::from_secs(61), 20, 10),
            "window",
        ),
        (
            Retries::default().budget(ten_s, Percent::new(-1.0), 10),
            "budget's percent",
        ),
        (
            Retries::default().budget(ten_s, 1_001, 10),
            "budget's percent",
        ),
        (
            Retries::default().budget(ten_s, Percent::new(1_000.5), 10),
            "budget's percent",
        ),
        (Retries::default().max_retries(11), "retries"),
    ];
    for (retries, setting) in bad {
        let result = Balancer::builder()
            .endpoint("http://127.0.0.1:8081")
            .retry(retries.clone())
            .build();
        match result {
            Err(tower_lb::Error::InvalidPolicy { reason, .. }) => {
                assert!(reason.contains(setting), "{reason} ({retries:?})")
            }
            other => panic!("{retries:?} gave {other:?}"),
        }
    }
    // The bounds themselves are fine: 0% (no retries beyond the reserve)
    // and 1,000%, whole or fractional.
    for percent in [0.into(), 20.into(), Percent::new(12.5), 1_000.into()] {
        let retries = Retries::default().budget(ten_s, percent, 0);
        assert!(Balancer::builder().retry(retries).build().is_ok());
    }
}

/// Every percentage setting, given NaN, an infinity, a negative or an
/// absurd value, and the largest value allowed: the bad ones are refused at
/// `build()` with `InvalidPolicy` naming the setting, never a panic.
#[test]
fn nan_infinite_negative_and_absurd_percentages_are_refused_at_build_naming_the_setting() {
    type Setter = fn(Percent) -> Result<Balancer, tower_lb::Error>;
    let settings: [(&str, f64, Setter); 4] = [
        ("budget's percent", 1_000.0, |p| {
            Balancer::builder()
                .endpoint("http://127.0.0.1:8081")
                .retry(Retries::default().budget(Duration::from_secs(10), p, 10))
                .build()
        }),
        ("failure_percentage", 100.0, |p| {
            Balancer::builder()
                .outlier_detection(OutlierDetection::default().failure_percentage(p, 10))
                .build()
        }),
        ("max_ejection_percent", 100.0, |p| {
            Balancer::builder()
                .outlier_detection(OutlierDetection::default().max_ejection_percent(p))
                .build()
        }),
        ("panic_threshold", 100.0, |p| {
            Balancer::builder()
                .outlier_detection(OutlierDetection::default().panic_threshold(p))
                .build()
        }),
    ];
    for (setting, max, set) in settings {
        for bad in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.5,
            max + 0.001,
            1e300,
            f64::MAX,
        ] {
            match set(Percent::new(bad)) {
                Err(tower_lb::Error::InvalidPolicy { reason, .. }) => {
                    assert!(reason.contains(setting), "{bad}: {reason}");
                    assert!(reason.contains(&Percent::new(bad).to_string()), "{reason}");
                }
                other => panic!("{setting} = {bad} gave {other:?}"),
            }
        }
        for good in [0.0, 0.5, max] {
            assert!(set(Percent::new(good)).is_ok(), "{setting} = {good}");
        }
    }
}

#[tokio::test]
async fn failure_statuses_are_retried_only_when_opted_in_and_only_if_idempotent() {
    let servers = backends(2).await;
    answer(&servers[0], "a", 503).await;
    let urls: Vec<String> = servers.iter().map(|s| s.uri()).collect();
    let run = |retry: Retries, method: http::Method| {
        let balancer = urls
            .iter()
            .fold(Balancer::builder(), |b, url| b.endpoint(url))
            .policy(Policy::round_robin())
            .outlier_detection(OutlierDetection::disabled())
            .retry(retry)
            .build()
            .unwrap();
        async move {
            let client = client(&balancer);
            let mut unavailable = 0;
            for _ in 0..10 {
                let request = http::Request::builder()
                    .method(method.clone())
                    .uri("/")
                    .body(reqwest::Body::from("{}"))
                    .unwrap();
                let response = client.clone().oneshot(request).await.unwrap();
                unavailable += usize::from(response.status() == 503);
            }
            unavailable
        }
    };
    assert_eq!(run(Retries::default(), http::Method::GET).await, 5);
    let opted_in = Retries::default().idempotent_failures();
    assert_eq!(run(opted_in.clone(), http::Method::GET).await, 0);
    assert_eq!(
        run(opted_in, http::Method::POST).await,
        5,
        "POST is not idempotent"
    );
}

#[cfg(feature = "reqwest-middleware")]
#[tokio::test]
async fn the_middleware_retries_refused_connections_too() {
    let servers = backends(2).await;
    let refusing = RefusingPort::new();
    let down = refusing.url.clone();
    let urls = [servers[0].uri(), down, servers[1].uri()];
    let balancer = urls
        .iter()
        .fold(Balancer::builder(), |b, url| b.endpoint(url))
        .policy(Policy::round_robin())
        .build()
        .unwrap();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(balancer.clone())
        .build();
    for _ in 0..30 {
        let response = client.post("http://backend/orders").body("{}").send().await;
        assert_eq!(response.unwrap().status(), 200);
    }
    assert_settled(&balancer);
}

#[tokio::test]
async fn retries_do_not_take_turns_from_the_round_robin() {
    let servers = backends(2).await;
    answer(&servers[0], "a", 503).await;
    let balancer = servers
        .iter()
        .fold(Balancer::builder(), |b, s| b.endpoint(s.uri()))
        .policy(Policy::round_robin())
        .outlier_detection(OutlierDetection::disabled())
        .retry(Retries::default().idempotent_failures())
        .build()
        .unwrap();
    let client = client(&balancer);
    for _ in 0..10 {
        assert_eq!(send(&client, "/").await.unwrap(), "b");
    }
    // Five first attempts each: every failure on "a" retried on "b".
    assert_eq!(received(&servers[0]).await, 5);
    assert_eq!(received(&servers[1]).await, 10);
    assert_settled(&balancer);
}

/// A response future carries what its retries need: the request is retried
/// even when the service that sent it held the last handle on the balancer
/// and is gone (`oneshot` drops it once it has called it).
#[tokio::test]
async fn a_retry_happens_after_the_last_balancer_handle_is_dropped() {
    let servers = backends(1).await;
    let refusing = RefusingPort::new();
    let dead = refusing.url.clone();
    for _ in 0..10 {
        // The refusing endpoint takes most first attempts.
        let balancer = Balancer::builder()
            .endpoint_weighted(dead.as_str(), 100)
            .endpoint_weighted(servers[0].uri().as_str(), 1)
            .build()
            .unwrap();
        let client = client(&balancer);
        drop(balancer);
        let answer = client.oneshot(get("/")).await;
        assert_eq!(answer.unwrap().status(), 200);
    }
}
