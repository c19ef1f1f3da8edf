//! Active health checks on real servers (wiremock on 127.0.0.1), on tokio's
//! paused clock held still while the servers answer (`hold_clock`): the
//! clock moves only by `step`, and each step waits (on the wall clock) for
//! the checks it made due to be answered and counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tower::ServiceExt;
use tower_lb::{
    ActiveHealthCheck, Balancer, Detector, HttpToReqwest, OutlierDetection, Policy, Retries,
};
use wiremock::matchers::{any, path};
use wiremock::{Mock, ResponseTemplate};

use crate::support::{
    assert_settled, client, hold_clock, name, plain_reqwest, send, RefusingPort, Server,
};

/// Every check the inner service sent: the backend's authority and the
/// paused clock's time; and how many were in flight at once.
#[derive(Default)]
struct Recorder {
    checks: Mutex<Vec<(String, Instant)>>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

impl Recorder {
    fn count(&self, authority: &str) -> usize {
        let checks = self.checks.lock().unwrap();
        checks.iter().filter(|(a, _)| a == authority).count()
    }

    fn total(&self) -> usize {
        self.checks.lock().unwrap().len()
    }
}

/// The inner service for the checks: the same reqwest client the users'
/// requests go through, recording each check.
fn recording(
    recorder: Arc<Recorder>,
) -> impl tower::Service<
    http::Request<reqwest::Body>,
    Response = reqwest::Response,
    Error = reqwest::Error,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    let inner = HttpToReqwest::new(plain_reqwest());
    tower::service_fn(move |request: http::Request<reqwest::Body>| {
        let inner = inner.clone();
        let recorder = recorder.clone();
        async move {
            let authority = request.uri().authority().map(|a| a.to_string());
            recorder
                .checks
                .lock()
                .unwrap()
                .push((authority.unwrap_or_default(), Instant::now()));
            let now = recorder.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            recorder.most_in_flight.fetch_max(now, Ordering::SeqCst);
            let answer = inner.oneshot(request).await;
            recorder.in_flight.fetch_sub(1, Ordering::SeqCst);
            answer
        }
    })
}

/// Mounts `name`'s answers: `health` on /health, `status` elsewhere.
async fn answer(server: &Server, name: &str, health: u16, status: u16) {
    server.reset().await;
    Mock::given(path("/health"))
        .respond_with(ResponseTemplate::new(health))
        .with_priority(1)
        .mount(server)
        .await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(status).insert_header("x-backend", name))
        .mount(server)
        .await;
}

async fn backends(n: usize) -> Vec<Server> {
    let mut servers = Vec::new();
    for i in 0..n {
        let server = Server::start().await;
        answer(&server, &name(i), 200, 200).await;
        servers.push(server);
    }
    servers
}

fn authority(server: &Server) -> String {
    server.address().to_string()
}

/// User requests (not checks) a server received.
async fn user_requests(server: &Server) -> usize {
    let received = server.received_requests().await.unwrap_or_default();
    received
        .iter()
        .filter(|r| r.url.path() != "/health")
        .count()
}

/// Waits on the wall clock until `check` holds.
async fn settle(what: &str, mut check: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !check() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: not settled"
        );
        tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(2)))
            .await
            .unwrap();
    }
}

/// Moves the paused clock by `ms`, then waits until every check sent is
/// answered and counted.
async fn step(balancer: &Balancer, recorder: &Recorder, ms: u64) {
    tokio::time::advance(Duration::from_millis(ms)).await;
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    settle("checks answered", || {
        let stats = balancer.stats();
        recorder.in_flight.load(Ordering::SeqCst) == 0
            && stats
                .endpoints
                .iter()
                .all(|e| e.checks.passed + e.checks.failed == e.checks.sent)
    })
    .await;
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
}

fn balancer(servers: &[Server], detection: OutlierDetection) -> Balancer {
    servers
        .iter()
        .fold(Balancer::builder(), |b, s| b.endpoint(s.uri()))
        .policy(Policy::round_robin())
        .outlier_detection(detection)
        .retry(Retries::disabled())
        .seed(11)
        .build()
        .unwrap()
}

fn check() -> ActiveHealthCheck {
    ActiveHealthCheck::new("/health")
        .interval(Duration::from_secs(1))
        .unhealthy_threshold(2)
}

fn is_out(balancer: &Balancer, server: &Server) -> bool {
    balancer
        .stats()
        .endpoint(server.uri())
        .is_some_and(|e| e.ejected)
}

#[tokio::test(start_paused = true)]
async fn a_backend_whose_health_path_fails_is_out_before_any_user_request_reaches_it() {
    let _clock = hold_clock();
    let servers = backends(3).await;
    let balancer = balancer(&servers, OutlierDetection::default());
    let recorder = Arc::new(Recorder::default());
    balancer
        .health_checks(check(), recording(recorder.clone()))
        .unwrap();
    let users = client(&balancer);
    // Not checked yet: every endpoint is out (panic mode spreads over all).
    assert!(balancer.stats().endpoints.iter().all(|e| e.ejected));
    step(&balancer, &recorder, 100).await;
    assert!(
        balancer.stats().endpoints.iter().all(|e| !e.ejected),
        "in after the first round: {:?}",
        balancer.stats()
    );
    for _ in 0..30 {
        send(&users, "/r").await.unwrap();
    }
    let reached = user_requests(&servers[2]).await;
    // "c" is going away: its health path fails first, then it is gone.
    answer(&servers[2], "c", 503, 200).await;
    let mut steps = 0;
    while !is_out(&balancer, &servers[2]) {
        step(&balancer, &recorder, 100).await;
        steps += 1;
        assert!(steps < 40, "out within the unhealthy threshold's checks");
    }
    let entry = balancer.stats().endpoint(servers[2].uri()).unwrap();
    assert_eq!(entry.ejected_by, Some(Detector::ActiveCheck));
    assert!(entry.checks.failing);
    assert_eq!(
        balancer.stats().ejections.enforced(Detector::ActiveCheck),
        1
    );
    assert_eq!(
        user_requests(&servers[2]).await,
        0,
        "none since its health failed"
    );
    // Now it is dead: every request it gets fails.
    answer(&servers[2], "c", 503, 500).await;
    // 60 user requests over the next three intervals: none fails, none
    // went to "c".
    for _ in 0..3 {
        for _ in 0..20 {
            let answered = send(&users, "/r").await;
            assert!(answered.is_ok(), "a user-visible failure: {answered:?}");
        }
        step(&balancer, &recorder, 1_000).await;
    }
    assert_eq!(reached, 10, "c had its share before, none after");
    assert_eq!(user_requests(&servers[2]).await, 0);
    let stats = balancer.stats();
    let gone = stats.endpoint(servers[2].uri()).unwrap();
    assert_eq!(gone.requests, 10, "{gone:?}");
    assert!(gone.ejected && gone.checks.failed >= 5, "{gone:?}");
    // Checks are not requests ("c"'s record went with its reset answers).
    for (i, server) in servers[..2].iter().enumerate() {
        let entry = stats.endpoint(server.uri()).unwrap();
        assert_eq!(entry.requests as usize, user_requests(server).await, "{i}");
        assert!(entry.checks.sent >= 4);
    }
    assert_settled(&balancer);
}

#[tokio::test(start_paused = true)]
async fn an_ejected_dead_backend_gets_no_user_requests_while_its_check_fails_and_returns_within_an_interval_of_a_pass(
) {
    let _clock = hold_clock();
    let servers = backends(3).await;
    let detection = OutlierDetection::default()
        .consecutive_failures(3)
        .base_ejection_time(Duration::from_secs(2))
        .max_ejection_percent(50);
    let balancer = balancer(&servers, detection);
    let recorder = Arc::new(Recorder::default());
    balancer
        .health_checks(
            check().unhealthy_threshold(5).healthy_threshold(1),
            recording(recorder.clone()),
        )
        .unwrap();
    let users = client(&balancer);
    step(&balancer, &recorder, 100).await;
    // "c" dies: its requests and its health path fail.
    answer(&servers[2], "c", 503, 500).await;
    let mut failures = 0;
    while !is_out(&balancer, &servers[2]) {
        if send(&users, "/r").await.is_err() {
            failures += 1;
        }
        assert!(failures < 100);
    }
    let entry = balancer.stats().endpoint(servers[2].uri()).unwrap();
    assert_eq!(entry.ejected_by, Some(Detector::ConsecutiveFailures));
    let reached = user_requests(&servers[2]).await;
    // Ten seconds, five times its ejection time: its checks fail, so it
    // stays out, and gets no user request.
    for _ in 0..10 {
        for _ in 0..10 {
            send(&users, "/r").await.unwrap();
        }
        step(&balancer, &recorder, 1_000).await;
        assert!(is_out(&balancer, &servers[2]));
    }
    assert_eq!(user_requests(&servers[2]).await, reached);
    let entry = balancer.stats().endpoint(servers[2].uri()).unwrap();
    assert!(entry.checks.failing, "five failed checks: {entry:?}");
    // It comes back to life: in at its next passing check, within one
    // interval (and its jitter).
    answer(&servers[2], "c", 200, 200).await;
    let revived = Instant::now();
    while is_out(&balancer, &servers[2]) {
        step(&balancer, &recorder, 10).await;
        assert!(revived.elapsed() <= Duration::from_millis(1_100));
    }
    let checks = recorder.checks.lock().unwrap().clone();
    let last_check = checks
        .iter()
        .filter(|(a, _)| *a == authority(&servers[2]))
        .map(|(_, at)| *at)
        .max()
        .unwrap();
    assert!(last_check >= revived && last_check.elapsed() <= Duration::from_millis(10));
    for _ in 0..9 {
        send(&users, "/r").await.unwrap();
    }
    // (Its server's record was reset with its answers.)
    assert!(user_requests(&servers[2]).await > 0);
    assert_settled(&balancer);
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_passing_checks_but_failing_requests_is_still_ejected_by_the_detectors() {
    let _clock = hold_clock();
    let servers = backends(3).await;
    let detection = OutlierDetection::default()
        .consecutive_failures(2)
        .base_ejection_time(Duration::from_secs(3))
        .max_ejection_percent(50);
    let balancer = balancer(&servers, detection);
    let recorder = Arc::new(Recorder::default());
    balancer
        .health_checks(check(), recording(recorder.clone()))
        .unwrap();
    let users = client(&balancer);
    step(&balancer, &recorder, 100).await;
    answer(&servers[1], "b", 200, 500).await;
    for _ in 0..6 {
        let _ = send(&users, "/r").await;
    }
    let entry = balancer.stats().endpoint(servers[1].uri()).unwrap();
    assert!(entry.ejected && !entry.checks.failing, "{entry:?}");
    assert_eq!(entry.ejected_by, Some(Detector::ConsecutiveFailures));
    // Out for its time though its checks pass; back after it.
    for _ in 0..2 {
        step(&balancer, &recorder, 1_000).await;
        assert!(is_out(&balancer, &servers[1]));
    }
    for _ in 0..3 {
        step(&balancer, &recorder, 1_000).await;
    }
    assert!(!is_out(&balancer, &servers[1]));
}

#[tokio::test(start_paused = true)]
async fn a_removed_endpoint_is_no_longer_checked() {
    let _clock = hold_clock();
    let servers = backends(3).await;
    let balancer = balancer(&servers, OutlierDetection::default());
    let recorder = Arc::new(Recorder::default());
    balancer
        .health_checks(
            check().interval_jitter(Duration::ZERO),
            recording(recorder.clone()),
        )
        .unwrap();
    step(&balancer, &recorder, 1_000).await;
    balancer.remove(servers[2].uri()).unwrap();
    let before = recorder.count(&authority(&servers[2]));
    let others = recorder.count(&authority(&servers[0]));
    for _ in 0..3 {
        step(&balancer, &recorder, 1_000).await;
    }
    assert_eq!(recorder.count(&authority(&servers[2])), before);
    assert_eq!(recorder.count(&authority(&servers[0])), others + 3);
    // Back in the set: out until its first check passes, which comes
    // within a tenth of the interval.
    balancer.add(servers[2].uri(), 1).unwrap();
    assert!(is_out(&balancer, &servers[2]));
    step(&balancer, &recorder, 100).await;
    assert!(!is_out(&balancer, &servers[2]));
}

#[tokio::test(start_paused = true)]
async fn dropping_the_balancer_stops_the_checks() {
    let _clock = hold_clock();
    let servers = backends(2).await;
    let balancer = balancer(&servers, OutlierDetection::default());
    let recorder = Arc::new(Recorder::default());
    balancer
        .health_checks(check(), recording(recorder.clone()))
        .unwrap();
    let users = client(&balancer);
    step(&balancer, &recorder, 1_000).await;
    send(&users, "/r").await.unwrap();
    let sent = recorder.total();
    assert!(sent >= 2);
    drop(users);
    drop(balancer);
    // The task ends at once and drops its service (the one holder of the
    // recorder besides this test).
    settle("the checker ended", || Arc::strong_count(&recorder) == 1).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(recorder.total(), sent);
}

#[tokio::test(start_paused = true)]
async fn checks_are_spread_over_the_interval_never_at_one_instant() {
    let _clock = hold_clock();
    let servers = backends(5).await;
    let balancer = balancer(&servers, OutlierDetection::default());
    let recorder = Arc::new(Recorder::default());
    balancer
        .health_checks(check(), recording(recorder.clone()))
        .unwrap();
    // Three intervals, a millisecond at a time.
    let mut checks = 0;
    for _ in 0..3_000 {
        tokio::time::advance(Duration::from_millis(1)).await;
        tokio::task::yield_now().await;
        if recorder.total() != checks {
            step(&balancer, &recorder, 0).await;
            checks = recorder.total();
        }
    }
    let recorded = recorder.checks.lock().unwrap().clone();
    let mut at: HashMap<Instant, Vec<&str>> = HashMap::new();
    for (authority, when) in &recorded {
        at.entry(*when).or_default().push(authority);
    }
    assert!(
        at.values().all(|v| v.len() == 1),
        "two checks at one instant: {at:?}"
    );
    // Each endpoint: one check per interval, give or take the jitter (a
    // tenth of it), after its first.
    for server in &servers {
        let times: Vec<Instant> = recorded
            .iter()
            .filter(|(a, _)| *a == authority(server))
            .map(|(_, t)| *t)
            .collect();
        assert!(times.len() >= 3, "{times:?}");
        for pair in times[1..].windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap >= Duration::from_millis(900) && gap <= Duration::from_millis(1_100),
                "{gap:?}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn at_most_concurrency_checks_are_in_flight() {
    let _clock = hold_clock();
    let servers = backends(6).await;
    for server in &servers {
        server.reset().await;
        Mock::given(path("/health"))
            .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(50)))
            .mount(server)
            .await;
    }
    let balancer = balancer(&servers, OutlierDetection::default());
    let recorder = Arc::new(Recorder::default());
    balancer
        .health_checks(check().concurrency(2), recording(recorder.clone()))
        .unwrap();
    // One jump past the first round: all six are due at once.
    step(&balancer, &recorder, 1_000).await;
    settle("every endpoint checked", || {
        balancer
            .stats()
            .endpoints
            .iter()
            .all(|e| e.checks.passed == 1)
    })
    .await;
    assert_eq!(recorder.total(), 6);
    assert_eq!(recorder.most_in_flight.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn per_endpoint_services_carry_the_checks_and_a_dead_backend_is_out() {
    let _clock = hold_clock();
    let servers = backends(2).await;
    // A backend that is gone: its port refuses connections.
    let dead = RefusingPort::new();
    let balancer = Balancer::builder()
        .endpoint(servers[0].uri())
        .endpoint(servers[1].uri())
        .endpoint(&dead.url)
        .policy(Policy::round_robin())
        .retry(Retries::disabled())
        .build()
        .unwrap();
    let made = Arc::new(AtomicUsize::new(0));
    let service = {
        let made = made.clone();
        balancer.per_endpoint(move |_url: &str| {
            made.fetch_add(1, Ordering::SeqCst);
            HttpToReqwest::new(plain_reqwest())
        })
    };
    service
        .health_checks::<reqwest::Body>(check().interval_jitter(Duration::ZERO))
        .unwrap();
    let dead_url = dead.url.clone();
    let recorder = Recorder::default();
    step(&balancer, &recorder, 100).await;
    assert_eq!(made.load(Ordering::SeqCst), 3, "one service per endpoint");
    let stats = balancer.stats();
    let out: Vec<bool> = stats.endpoints.iter().map(|e| e.ejected).collect();
    assert_eq!(out, [false, false, true], "{stats:?}");
    assert_eq!(
        stats.endpoint(&dead_url).unwrap().ejected_by,
        Some(Detector::ActiveCheck)
    );
    for _ in 0..10 {
        let answer = service
            .clone()
            .oneshot(crate::support::get("/r"))
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
}

#[test]
fn bad_settings_are_typed_errors_and_checks_need_a_runtime() {
    let balancer = Balancer::builder()
        .endpoint("http://127.0.0.1:1")
        .build()
        .unwrap();
    let service = HttpToReqwest::new(plain_reqwest());
    let outside = balancer.health_checks::<_, reqwest::Body>(check(), service.clone());
    assert!(
        matches!(&outside, Err(tower_lb::Error::InvalidPolicy { reason, .. }) if reason.contains("runtime")),
        "{outside:?}"
    );
    let bad = [
        ActiveHealthCheck::new("health"),
        ActiveHealthCheck::new("/a b"),
        check().interval(Duration::ZERO),
        check().timeout(Duration::ZERO),
        check().unhealthy_threshold(0),
        check().healthy_threshold(0),
        check().concurrency(0),
        check().expected_statuses([]),
        // Reversed: empty (as a user's computed bounds may come out).
        #[allow(clippy::reversed_empty_ranges)]
        check().expected_statuses([300..=200]),
        check().expected_statuses([0..=1_000]),
    ];
    for setting in bad {
        let error = balancer.health_checks::<_, reqwest::Body>(setting.clone(), service.clone());
        assert!(
            matches!(&error, Err(tower_lb::Error::InvalidPolicy { .. })),
            "{setting:?}: {error:?}"
        );
    }
    // Nothing was started: no endpoint waits for a check.
    assert!(!balancer.stats().endpoints[0].ejected);
}

#[test]
fn extreme_settings_never_panic_and_a_runtime_gone_lets_the_endpoints_back() {
    let balancer = Balancer::builder()
        .endpoint("http://127.0.0.1:1")
        .endpoint("http://127.0.0.1:2")
        .build()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let extreme = ActiveHealthCheck::new("/h")
            .interval(Duration::MAX)
            .interval_jitter(Duration::MAX)
            .timeout(Duration::MAX)
            .unhealthy_threshold(u32::MAX)
            .healthy_threshold(u32::MAX)
            .concurrency(usize::MAX);
        balancer
            .health_checks::<_, reqwest::Body>(extreme, HttpToReqwest::new(plain_reqwest()))
            .unwrap();
        assert!(balancer.stats().endpoints.iter().all(|e| e.ejected));
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    // The runtime, and the checks' task with it, is gone: nothing holds
    // the endpoints out for checks that never come.
    drop(runtime);
    let stats = balancer.stats();
    assert!(stats.endpoints.iter().all(|e| !e.ejected), "{stats:?}");
    let request = http::Request::get("/").body(()).unwrap();
    assert!(balancer.select(&request).is_ok());
}
