//! Metrics (feature `metrics`) against real loopback backends, read back
//! through `metrics-util`'s debugging recorder. Each test installs its own
//! recorder for its own thread only (`set_default_local_recorder`), and
//! runs on a current-thread runtime, so that the balancer's series (made
//! when it is built, when endpoints join, and at an endpoint's first
//! attempt of each kind, all on the test's thread) land in that recorder
//! and tests running at once never share one.
#![cfg(feature = "metrics")]

use crate::hedging::Backend;
use crate::support;

use std::collections::HashMap;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;
use proptest::prelude::*;
use support::*;
use tower::ServiceExt;
use tower_lb::{
    ActiveHealthCheck, Balancer, Detector, Hedging, HttpToReqwest, OutlierDetection, Policy,
    RequestKey, Retries, SuccessRate,
};
use wiremock::matchers::{any, path};
use wiremock::{Mock, ResponseTemplate};

/// A series: its name and its labels, sorted.
type Series = (String, Vec<(String, String)>);

/// What a test's recorder holds, added up over reads: the debugging
/// recorder hands each value over once (reading sets counters and gauges
/// to 0 and drains histograms). So counters and histograms are summed
/// here, as are the gauges the balancer moves up and down
/// ([`MOVED_GAUGES`]); a gauge the balancer sets reads as its last value
/// if it was set since the read before (else 0, which is left out).
struct Recorded {
    snapshotter: Snapshotter,
    counters: HashMap<Series, u64>,
    gauges: HashMap<Series, f64>,
    histograms: HashMap<Series, Vec<f64>>,
}

impl Recorded {
    fn new(recorder: &DebuggingRecorder) -> Self {
        Recorded {
            snapshotter: recorder.snapshotter(),
            counters: HashMap::new(),
            gauges: HashMap::new(),
            histograms: HashMap::new(),
        }
    }

    /// Reads the recorder now.
    fn read(&mut self) -> &Self {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let (kind, key) = key.into_parts();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            let series = (key.name().to_owned(), labels);
            match (kind, value) {
                (MetricKind::Counter, DebugValue::Counter(v)) => {
                    *self.counters.entry(series).or_default() += v;
                }
                (MetricKind::Gauge, DebugValue::Gauge(v)) if MOVED_GAUGES.contains(&&*series.0) => {
                    *self.gauges.entry(series).or_default() += v.into_inner();
                }
                (MetricKind::Gauge, DebugValue::Gauge(v)) => {
                    let v = v.into_inner();
                    let seen = self.gauges.entry(series).or_default();
                    if v != 0.0 {
                        *seen = v;
                    }
                }
                (MetricKind::Histogram, DebugValue::Histogram(vs)) => self
                    .histograms
                    .entry(series)
                    .or_default()
                    .extend(vs.into_iter().map(|v| v.into_inner())),
                (kind, value) => panic!("{kind:?} series with a {value:?}"),
            }
        }
        self
    }

    /// Every series of any kind, with its kind.
    fn series(&self) -> impl Iterator<Item = &Series> {
        self.counters
            .keys()
            .chain(self.gauges.keys())
            .chain(self.histograms.keys())
    }

    /// The sum of the counters named `name` whose labels include `labels`.
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        matching(&self.counters, name, labels).copied().sum()
    }

    /// The one gauge named `name` with labels including `labels`.
    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = matching(&self.gauges, name, labels).copied().collect();
        assert_eq!(found.len(), 1, "gauges {name} {labels:?}: {found:?}");
        found[0]
    }

    /// How many values the histograms named `name` with labels including
    /// `labels` recorded.
    fn recorded(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        matching(&self.histograms, name, labels).map(Vec::len).sum()
    }
}

fn matching<'a, V>(
    map: &'a HashMap<Series, V>,
    name: &'a str,
    labels: &'a [(&str, &str)],
) -> impl Iterator<Item = &'a V> {
    map.iter()
        .filter(move |((n, have), _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
        })
        .map(|(_, value)| value)
}

/// The port of a wiremock server, as `server.port` shows it.
fn port(server: &Server) -> String {
    server.address().port().to_string()
}

const DURATION: &str = "http.client.request.duration";
const ACTIVE: &str = "http.client.active_requests";
/// The gauges the balancer moves up and down rather than sets.
const MOVED_GAUGES: [&str; 2] = [ACTIVE, "tower_lb.affinity.learned_sessions"];

/// Ten GETs: `n` of them, one after another.
async fn send_in_turn(client: &Client, n: usize) {
    for i in 0..n {
        let response = client.clone().oneshot(get(&format!("/r/{i}"))).await;
        assert!(response.is_ok(), "request {i}: {response:?}");
    }
}

/// Three backends, the third answering 503; round robin, failures of GETs
/// retried, three failures in a row eject. N = 30 requests give exactly:
/// three attempts on the failing backend (the third ejects it), each
/// retried once on another (K = 3 retries), 30 answers of 200, one
/// ejection, and nothing left in flight.
#[tokio::test]
async fn a_known_run_gives_exact_counts_n_requests_one_ejection_k_retries() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut recorded = Recorded::new(&recorder);
    let ok = backends(2).await;
    let failing = backend("c", ResponseTemplate::new(503)).await;
    let balancer = Balancer::builder()
        .endpoint(ok[0].uri())
        .endpoint(ok[1].uri())
        .endpoint(failing.uri())
        .policy(Policy::round_robin())
        .outlier_detection(
            OutlierDetection::default()
                .consecutive_failures(3)
                .base_ejection_time(Duration::from_secs(600))
                .max_ejection_time(Duration::from_secs(600)),
        )
        .retry(Retries::default().idempotent_failures())
        .build()
        .unwrap();
    send_in_turn(&client(&balancer), 30).await;
    assert_settled(&balancer);

    let m = recorded.read();
    assert_eq!(
        m.counter("tower_lb.attempts", &[("http.request.resend_count", "0")]),
        30
    );
    assert_eq!(
        m.counter("tower_lb.attempts", &[("http.request.resend_count", "1")]),
        3
    );
    assert_eq!(
        m.counter("tower_lb.attempts", &[("http.request.resend_count", "2")]),
        0
    );
    let failing_port = port(&failing);
    let on_failing = [
        ("server.address", "127.0.0.1"),
        ("server.port", failing_port.as_str()),
        ("http.request.method", "GET"),
        ("http.response.status_code", "503"),
        ("error.type", "503"),
    ];
    assert_eq!(m.recorded(DURATION, &on_failing), 3);
    assert_eq!(
        m.recorded(DURATION, &[("http.response.status_code", "200")]),
        33 - 3
    );
    assert_eq!(m.recorded(DURATION, &[]), 33);
    for server in ok.iter().chain([&failing]) {
        let port = port(server);
        let labels = [("server.port", port.as_str())];
        assert_eq!(m.gauge(ACTIVE, &labels), 0.0, "{port}");
    }
    assert_eq!(
        m.counter("tower_lb.ejections", &[("detector", "consecutive_5xx")]),
        1
    );
    assert_eq!(m.counter("tower_lb.ejections", &[]), 1);
    assert_eq!(m.counter("tower_lb.ejections.refused", &[]), 0);
    assert_eq!(m.counter("tower_lb.ejections.not_enforced", &[]), 0);
    assert_eq!(m.counter("tower_lb.hedges", &[]), 0);
    assert_eq!(m.counter("tower_lb.readmissions", &[]), 0);
    assert_eq!(m.gauge("tower_lb.endpoints", &[("state", "active")]), 2.0);
    assert_eq!(m.gauge("tower_lb.endpoints", &[("state", "ejected")]), 1.0);
    assert_eq!(m.gauge("tower_lb.endpoints", &[("state", "draining")]), 0.0);
    assert_eq!(m.gauge("tower_lb.panic_mode", &[]), 0.0);
    assert_eq!(m.counter("tower_lb.retry_budget.refusals", &[]), 0);
    // Every duration is a real one, in seconds: loopback answers well
    // under a second.
    let durations: Vec<f64> = m.histograms.values().flatten().copied().collect();
    assert!(
        durations.iter().all(|&s| s > 0.0 && s < 1.0),
        "{durations:?}"
    );
    // Unnamed: no balancer label anywhere.
    assert!(m
        .series()
        .all(|(_, labels)| labels.iter().all(|(k, _)| k != "tower_lb.balancer")));
}

/// Retries the budget refuses are counted: a budget of no share and no
/// reserve allows none.
#[tokio::test]
async fn a_retry_the_budget_refuses_is_counted() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut recorded = Recorded::new(&recorder);
    let ok = backends(1).await;
    let refusing = RefusingPort::new();
    let balancer = Balancer::builder()
        .endpoint(refusing.url.as_str())
        .endpoint(ok[0].uri())
        .policy(Policy::round_robin())
        .outlier_detection(OutlierDetection::disabled())
        .retry(Retries::default().budget(Duration::from_secs(10), 0, 0))
        .build()
        .unwrap();
    let client = client(&balancer);
    let mut failed = 0;
    for i in 0..4 {
        failed += usize::from(client.clone().oneshot(get(&format!("/{i}"))).await.is_err());
    }
    assert_eq!(failed, 2, "the refused ones fail");
    let m = recorded.read();
    assert_eq!(
        m.counter("tower_lb.retry_budget.refusals", &[("kind", "retry")]),
        2
    );
    assert_eq!(m.counter("tower_lb.retry_budget.refusals", &[]), 2);
    assert_eq!(
        m.counter("tower_lb.attempts", &[("http.request.resend_count", "1")]),
        0
    );
    let refused = refusing.addr.port().to_string();
    assert_eq!(
        m.recorded(
            DURATION,
            &[
                ("server.port", refused.as_str()),
                ("error.type", "connect_error")
            ]
        ),
        2
    );
}

/// Two balancers in one process, named: every series of each carries its
/// name, and their counts stay apart though they share a backend.
#[tokio::test]
async fn the_balancer_name_tells_two_balancers_apart() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut recorded = Recorded::new(&recorder);
    let servers = backends(1).await;
    let named = |name: &str| {
        Balancer::builder()
            .endpoint(servers[0].uri())
            .name(name)
            .build()
            .unwrap()
    };
    let (payments, search) = (named("payments"), named("search"));
    send_in_turn(&client(&payments), 2).await;
    send_in_turn(&client(&search), 3).await;

    let m = recorded.read();
    for (name, sent) in [("payments", 2), ("search", 3)] {
        let by_name = [("tower_lb.balancer", name)];
        assert_eq!(m.counter("tower_lb.attempts", &by_name), sent);
        assert_eq!(m.recorded(DURATION, &by_name), sent as usize);
        assert_eq!(m.gauge(ACTIVE, &by_name), 0.0);
        assert_eq!(
            m.gauge(
                "tower_lb.endpoints",
                &[("tower_lb.balancer", name), ("state", "active")]
            ),
            1.0
        );
    }
    let unnamed: Vec<&Series> = m
        .series()
        .filter(|(_, labels)| labels.iter().all(|(k, _)| k != "tower_lb.balancer"))
        .collect();
    assert!(unnamed.is_empty(), "series without a name: {unnamed:?}");
}

/// A removed endpoint's series stay at their last values: its active
/// requests fall to 0 as its last request ends, its durations stop
/// growing; added again at the same address it continues them.
#[tokio::test]
async fn a_removed_endpoints_series_keep_their_last_values_and_continue_when_it_returns() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut recorded = Recorded::new(&recorder);
    let fast = backends(1).await;
    let slow = backend(
        "slow",
        ResponseTemplate::new(200).set_delay(Duration::from_millis(300)),
    )
    .await;
    let balancer = Balancer::builder()
        .endpoint(slow.uri())
        .endpoint(fast[0].uri())
        .policy(Policy::round_robin())
        .build()
        .unwrap();
    let client = client(&balancer);
    let slow_port = port(&slow);
    let on_slow = [("server.port", slow_port.as_str())];

    // One request to the slow endpoint, in flight while it is removed.
    let in_flight = tokio::spawn(client.clone().oneshot(get("/slow")));
    within(Duration::from_secs(5), "the request started", || {
        balancer.stats().endpoints[0].in_flight == 1
    })
    .await;
    balancer.remove(slow.uri()).unwrap();
    assert_eq!(recorded.read().gauge(ACTIVE, &on_slow), 1.0);
    assert_eq!(
        recorded
            .read()
            .gauge("tower_lb.endpoints", &[("state", "active")]),
        1.0
    );
    in_flight.await.unwrap().unwrap();
    send_in_turn(&client, 4).await;
    let m = recorded.read();
    assert_eq!(m.gauge(ACTIVE, &on_slow), 0.0, "its last request ended");
    assert_eq!(m.recorded(DURATION, &on_slow), 1, "and nothing since");

    // Back at the same address: the same series go on.
    balancer.add(slow.uri(), 1).unwrap();
    send_in_turn(&client, 4).await;
    let m = recorded.read();
    assert_eq!(m.recorded(DURATION, &on_slow), 1 + 2);
    assert_eq!(m.gauge(ACTIVE, &on_slow), 0.0);
    let slow_series = m
        .histograms
        .keys()
        .filter(|(_, labels)| {
            labels
                .iter()
                .any(|(k, v)| k == "server.port" && *v == slow_port)
        })
        .count();
    assert_eq!(slow_series, 1, "one duration series (GET, 200), not two");
    assert_eq!(m.gauge("tower_lb.endpoints", &[("state", "active")]), 2.0);
}

/// Drained endpoints are counted as draining, and the learned-affinity
/// table's size follows the sessions learned.
#[tokio::test]
async fn draining_endpoints_and_learned_sessions_are_counted() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut recorded = Recorded::new(&recorder);
    let servers = backends(2).await;
    for (i, server) in servers.iter().enumerate() {
        server.reset().await;
        Mock::given(any())
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("set-cookie", format!("sid=session-{i}; Path=/")),
            )
            .mount(server)
            .await;
    }
    let balancer = Balancer::builder()
        .endpoint(servers[0].uri())
        .endpoint(servers[1].uri())
        .policy(
            Policy::ring_hash()
                .key(RequestKey::cookie("sid"))
                .fallback(Policy::round_robin()),
        )
        .build()
        .unwrap();
    send_in_turn(&client(&balancer), 4).await;
    balancer.drain(servers[1].uri()).unwrap();
    let m = recorded.read();
    assert_eq!(m.gauge("tower_lb.affinity.learned_sessions", &[]), 2.0);
    assert_eq!(m.gauge("tower_lb.endpoints", &[("state", "draining")]), 1.0);
    assert_eq!(m.gauge("tower_lb.endpoints", &[("state", "active")]), 1.0);
}

/// Discovery's applied sets, failed answers and skipped endpoints.
#[tokio::test]
async fn discovery_refreshes_errors_and_skips_are_counted() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut recorded = Recorded::new(&recorder);
    let servers = backends(2).await;
    let balancer = Balancer::builder().build().unwrap();
    let sets = vec![
        Ok(vec![tower_lb::Endpoint::new(servers[0].uri())]),
        Err(std::io::Error::other("registry down")),
        Ok(vec![
            tower_lb::Endpoint::new(servers[0].uri()),
            tower_lb::Endpoint::new(servers[1].uri()),
            tower_lb::Endpoint::new("not a url"),
        ]),
        Ok(vec![]),
    ];
    balancer
        .discover(futures::stream::iter(sets).chain(futures::stream::pending()))
        .unwrap();
    within(Duration::from_secs(5), "four answers", || {
        balancer
            .stats()
            .discovery
            .is_some_and(|d| d.refreshes + d.errors == 4)
    })
    .await;
    let m = recorded.read();
    assert_eq!(m.counter("tower_lb.discovery.refreshes", &[]), 2);
    assert_eq!(m.counter("tower_lb.discovery.errors", &[]), 2);
    assert_eq!(m.counter("tower_lb.discovery.skipped", &[]), 1);
    assert_eq!(m.gauge("tower_lb.endpoints", &[("state", "active")]), 2.0);
}

/// Lets the sweeper task run what the clock made due.
async fn let_the_sweeper_run() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

/// Five backends, two answering 503 to everything, success rate alone
/// (factor 1, 10 requests an interval): at the interval's end the sweeper
/// judges both outliers, ejects one (`detector="success_rate"`) and the
/// maximum ejection percent refuses the other; 30 s later (the base
/// ejection time) the sweeper task takes the ejected one back on the
/// clock, with no request to notice: one re-admission, `time_up`.
#[tokio::test(start_paused = true)]
async fn a_success_rate_ejection_is_counted_under_its_detector_one_refused_by_max_percent_and_the_sweepers_readmission(
) {
    let _clock = hold_clock();
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut recorded = Recorded::new(&recorder);
    let mut servers = backends(3).await;
    servers.push(backend("d", ResponseTemplate::new(503)).await);
    servers.push(backend("e", ResponseTemplate::new(503)).await);
    let interval = Duration::from_secs(10);
    let balancer = servers
        .iter()
        .fold(Balancer::builder(), |b, s| b.endpoint(s.uri()))
        .policy(Policy::round_robin())
        .outlier_detection(
            OutlierDetection::disabled()
                .success_rate(SuccessRate::default().stdev_factor(1.0).request_volume(10))
                .interval(interval)
                .base_ejection_time(Duration::from_secs(30)),
        )
        .retry(Retries::disabled())
        .build()
        .unwrap();
    send_in_turn(&client(&balancer), 100).await;
    tokio::time::advance(interval).await;
    let_the_sweeper_run().await;

    let stats = balancer.stats();
    assert_eq!(stats.ejections.enforced(Detector::SuccessRate), 1);
    assert_eq!(stats.ejections.refused_by_max_percent, 1);
    let m = recorded.read();
    let by_rate = [("detector", "success_rate")];
    assert_eq!(m.counter("tower_lb.ejections", &by_rate), 1);
    assert_eq!(m.counter("tower_lb.ejections", &[]), 1);
    assert_eq!(m.counter("tower_lb.ejections.refused", &by_rate), 1);
    assert_eq!(m.counter("tower_lb.ejections.refused", &[]), 1);
    assert_eq!(m.counter("tower_lb.ejections.not_enforced", &[]), 0);
    assert_eq!(m.gauge("tower_lb.endpoints", &[("state", "ejected")]), 1.0);
    assert_eq!(m.gauge("tower_lb.endpoints", &[("state", "active")]), 4.0);
    assert_eq!(m.counter("tower_lb.readmissions", &[]), 0);
    // Every detector has its series, at 0 but the one that fired.
    for detector in [
        "consecutive_5xx",
        "consecutive_gateway_failure",
        "consecutive_local_origin_failure",
        "failure_percentage",
        "success_rate_local_origin",
        "failure_percentage_local_origin",
    ] {
        assert_eq!(
            m.counter("tower_lb.ejections", &[("detector", detector)]),
            0
        );
        assert!(m
            .counters
            .keys()
            .any(|(name, labels)| name == "tower_lb.ejections"
                && labels.iter().any(|(k, v)| k == "detector" && v == detector)));
    }

    // No request from here on: the sweeper's timer ends the ejection.
    tokio::time::advance(Duration::from_secs(30)).await;
    let_the_sweeper_run().await;
    let m = recorded.read();
    assert_eq!(
        m.counter("tower_lb.readmissions", &[("reason", "time_up")]),
        1
    );
    assert_eq!(m.counter("tower_lb.readmissions", &[]), 1);
    // (A gauge set back to 0 reads as unset here: the active ones show it.)
    assert_eq!(m.gauge("tower_lb.endpoints", &[("state", "active")]), 5.0);
    assert_eq!(balancer.stats().ejections.active, 0);
    assert_settled(&balancer);
}

/// An ejection ends early when the set shrinks below what the ejections
/// may hold (half of the set, at least one not promised): counted as
/// `set_shrank`, not `time_up`.
#[tokio::test]
async fn an_ejection_ended_by_the_set_shrinking_is_counted_as_set_shrank() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut recorded = Recorded::new(&recorder);
    let ok = backends(2).await;
    let failing = backend("c", ResponseTemplate::new(503)).await;
    let balancer = Balancer::builder()
        .endpoint(ok[0].uri())
        .endpoint(ok[1].uri())
        .endpoint(failing.uri())
        .policy(Policy::round_robin())
        .outlier_detection(
            OutlierDetection::default()
                .consecutive_failures(1)
                .max_ejection_percent(50)
                .always_eject_one(false)
                .base_ejection_time(Duration::from_secs(600))
                .max_ejection_time(Duration::from_secs(600)),
        )
        .retry(Retries::disabled())
        .build()
        .unwrap();
    send_in_turn(&client(&balancer), 3).await;
    let m = recorded.read();
    assert_eq!(
        m.counter("tower_lb.ejections", &[("detector", "consecutive_5xx")]),
        1
    );
    // Three in the set allow one ejection, two still do, one none.
    balancer.remove(ok[0].uri()).unwrap();
    assert_eq!(recorded.read().counter("tower_lb.readmissions", &[]), 0);
    balancer.remove(ok[1].uri()).unwrap();
    let m = recorded.read();
    assert_eq!(
        m.counter("tower_lb.readmissions", &[("reason", "set_shrank")]),
        1
    );
    assert_eq!(
        m.counter("tower_lb.readmissions", &[("reason", "time_up")]),
        0
    );
    assert_eq!(m.gauge("tower_lb.endpoints", &[("state", "active")]), 1.0);
    assert_eq!(balancer.stats().ejections.active, 0);
}

/// A detector that fires while its enforcement percentage is 0 ejects
/// nothing; each time is counted under it as `not_enforced`.
#[tokio::test]
async fn a_detection_the_enforcement_draw_skips_is_counted_as_not_enforced() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut recorded = Recorded::new(&recorder);
    let ok = backends(1).await;
    let failing = backend("b", ResponseTemplate::new(503)).await;
    let balancer = Balancer::builder()
        .endpoint(ok[0].uri())
        .endpoint(failing.uri())
        .policy(Policy::round_robin())
        .outlier_detection(
            OutlierDetection::default()
                .consecutive_failures(1)
                .enforcing(Detector::ConsecutiveFailures, 0),
        )
        .retry(Retries::disabled())
        .build()
        .unwrap();
    send_in_turn(&client(&balancer), 4).await;
    let m = recorded.read();
    assert_eq!(
        m.counter(
            "tower_lb.ejections.not_enforced",
            &[("detector", "consecutive_5xx")]
        ),
        2
    );
    assert_eq!(m.counter("tower_lb.ejections", &[]), 0);
    assert_eq!(balancer.stats().ejections.not_enforced, 2);
}

/// Mounts a wiremock server's health path answering `health` (and 200
/// elsewhere).
async fn health_answers(server: &Server, health: u16) {
    server.reset().await;
    Mock::given(path("/health"))
        .respond_with(ResponseTemplate::new(health))
        .with_priority(1)
        .mount(server)
        .await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .mount(server)
        .await;
}

/// Moves the paused clock on by 50 ms steps, up to `ms`, until `done`
/// holds; after each step, waits on the wall clock until every check sent
/// is answered and counted (the checks go to real servers).
async fn advance_until(balancer: &Balancer, ms: u64, what: &str, mut done: impl FnMut() -> bool) {
    let answered = || {
        (balancer.stats().endpoints.iter())
            .all(|e| e.checks.passed + e.checks.failed == e.checks.sent)
    };
    for _ in 0..ms.div_ceil(50) {
        tokio::time::advance(Duration::from_millis(50)).await;
        let stepped = std::time::Instant::now();
        loop {
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
            if answered() {
                break;
            }
            assert!(
                stepped.elapsed() < Duration::from_secs(10),
                "{what}: checks unanswered"
            );
            tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(2)))
                .await
                .unwrap();
        }
        if done() {
            return;
        }
    }
    panic!("{what}: not within {ms} ms");
}

/// Active checks: endpoints waiting for their first check are neither
/// ejections nor re-admissions; a failing check takes one out, counted
/// under `detector="active_health_check"`; a passing one lets it back,
/// counted as `reason="check_passed"`.
#[tokio::test(start_paused = true)]
async fn an_active_checks_ejection_and_the_passing_check_that_ends_it_are_counted() {
    let _clock = hold_clock();
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut recorded = Recorded::new(&recorder);
    let servers = backends(3).await;
    for server in &servers {
        health_answers(server, 200).await;
    }
    let balancer = servers
        .iter()
        .fold(Balancer::builder(), |b, s| b.endpoint(s.uri()))
        .policy(Policy::round_robin())
        .build()
        .unwrap();
    let check = ActiveHealthCheck::new("/health")
        .interval(Duration::from_secs(1))
        .unhealthy_threshold(1)
        .healthy_threshold(1);
    balancer
        .health_checks::<_, reqwest::Body>(check, HttpToReqwest::new(plain_reqwest()))
        .unwrap();
    let out = |i: usize| balancer.stats().endpoints[i].ejected;
    advance_until(&balancer, 1_500, "in after the first checks", || {
        (0..3).all(|i| !out(i))
    })
    .await;
    let m = recorded.read();
    assert_eq!(m.counter("tower_lb.ejections", &[]), 0);
    assert_eq!(m.counter("tower_lb.readmissions", &[]), 0);

    health_answers(&servers[2], 503).await;
    advance_until(&balancer, 3_000, "out for a failing check", || out(2)).await;
    health_answers(&servers[2], 200).await;
    advance_until(&balancer, 3_000, "back for a passing check", || !out(2)).await;
    let m = recorded.read();
    assert_eq!(
        m.counter("tower_lb.ejections", &[("detector", "active_health_check")]),
        1
    );
    assert_eq!(m.counter("tower_lb.ejections", &[]), 1);
    assert_eq!(
        m.counter("tower_lb.readmissions", &[("reason", "check_passed")]),
        1
    );
    assert_eq!(m.counter("tower_lb.readmissions", &[]), 1);
}

/// A GET to a slow backend is hedged to a fast one after 100 ms and the
/// hedge wins: one hedge sent and won, the hedge's attempt counted with
/// `http.request.resend_count` 1, the first attempt's duration recorded
/// as cancelled when it loses.
#[tokio::test(start_paused = true)]
async fn a_hedge_is_counted_sent_and_won_with_resend_count_one() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut recorded = Recorded::new(&recorder);
    let slow = Backend::start("slow", 10_000).await;
    let fast = Backend::start("fast", 5).await;
    let balancer = Balancer::builder()
        .endpoint(slow.url())
        .endpoint(fast.url())
        .policy(Policy::round_robin())
        .hedge(Hedging::after(Duration::from_millis(100)))
        .build()
        .unwrap();
    let response = client(&balancer).oneshot(get("/a")).await.unwrap();
    assert_eq!(backend_name(&response), "fast");
    assert_settled(&balancer);

    let m = recorded.read();
    assert_eq!(m.counter("tower_lb.hedges", &[]), 1);
    assert_eq!(m.counter("tower_lb.hedges.won", &[]), 1);
    assert_eq!(
        m.counter("tower_lb.attempts", &[("http.request.resend_count", "0")]),
        1
    );
    assert_eq!(
        m.counter("tower_lb.attempts", &[("http.request.resend_count", "1")]),
        1
    );
    assert_eq!(m.counter("tower_lb.retry_budget.refusals", &[]), 0);
    let (slow_port, fast_port) = (slow.url(), fast.url());
    let (slow_port, fast_port) = (
        slow_port.rsplit(':').next().unwrap(),
        fast_port.rsplit(':').next().unwrap(),
    );
    assert_eq!(
        m.recorded(
            DURATION,
            &[("server.port", slow_port), ("error.type", "cancelled")]
        ),
        1
    );
    assert_eq!(
        m.recorded(
            DURATION,
            &[
                ("server.port", fast_port),
                ("http.response.status_code", "200")
            ]
        ),
        1
    );
    assert_eq!(m.recorded(DURATION, &[]), 2);
    for port in [slow_port, fast_port] {
        assert_eq!(m.gauge(ACTIVE, &[("server.port", port)]), 0.0);
    }
}

/// Forty GETs at once to two slow backends, hedged after 10 ms, under a
/// budget of 10% of requests and no reserve: 4 hedges are sent, the
/// budget refuses 36, counted as `kind="hedge"` (and no retry refusal).
#[tokio::test(start_paused = true)]
async fn a_hedge_the_budget_refuses_is_counted_by_its_kind() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut recorded = Recorded::new(&recorder);
    let backends = [
        Backend::start("a", 1_000).await,
        Backend::start("b", 1_000).await,
    ];
    let balancer = Balancer::builder()
        .endpoint(backends[0].url())
        .endpoint(backends[1].url())
        .policy(Policy::round_robin())
        .hedge(Hedging::after(Duration::from_millis(10)))
        .retry(Retries::disabled().budget(Duration::from_secs(10), 10, 0))
        .build()
        .unwrap();
    let client = client(&balancer);
    let answered = stream::iter(0..40)
        .map(|i| client.clone().oneshot(get(&format!("/{i}"))))
        .buffer_unordered(40)
        .filter(|answer| std::future::ready(answer.is_ok()))
        .count()
        .await;
    assert_eq!(answered, 40);
    assert_settled(&balancer);

    let m = recorded.read();
    assert_eq!(
        m.counter("tower_lb.retry_budget.refusals", &[("kind", "hedge")]),
        36
    );
    assert_eq!(
        m.counter("tower_lb.retry_budget.refusals", &[("kind", "retry")]),
        0
    );
    assert_eq!(m.counter("tower_lb.hedges", &[]), 4);
    assert_eq!(
        m.counter("tower_lb.attempts", &[("http.request.resend_count", "0")]),
        40
    );
    assert_eq!(
        m.counter("tower_lb.attempts", &[("http.request.resend_count", "1")]),
        4
    );
    let extra = balancer.stats().extra;
    assert_eq!((extra.hedges, extra.hedges_refused), (4, 36));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Whatever a request carries in its path, query, session-key header
    /// and cookie, and whatever session cookie a backend sets, none of it
    /// appears in any metric's name or label.
    #[test]
    fn no_path_query_cookie_or_session_key_ever_appears_in_a_metric(
        path in "[a-z0-9]{6,12}",
        query in "[a-z0-9]{6,12}",
        key in "[a-z0-9]{6,12}",
        cookie in "[a-z0-9]{6,12}",
        issued in "[a-z0-9]{6,12}",
        status in prop::sample::select(vec![200u16, 404, 503]),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let recorder = DebuggingRecorder::new();
        let _local = metrics::set_default_local_recorder(&recorder);
        let mut recorded = Recorded::new(&recorder);
        runtime.block_on(async {
            let server = backend(
                "a",
                ResponseTemplate::new(status).insert_header("set-cookie", format!("sid={issued}")),
            )
            .await;
            let balancer = Balancer::builder()
                .endpoint(format!("{}/base{path}", server.uri()))
                .policy(
                    Policy::ring_hash()
                        .key(RequestKey::header("x-user").or(RequestKey::cookie("sid")))
                        .fallback(Policy::round_robin()),
                )
                .name("p")
                .build()
                .unwrap();
            for with_cookie in [false, true] {
                let mut request = get(&format!("/{path}/item?{query}={key}"));
                request.headers_mut().insert("x-user", key.parse().unwrap());
                if with_cookie {
                    request
                        .headers_mut()
                        .insert("cookie", format!("sid={cookie}").parse().unwrap());
                }
                let _ = client(&balancer).oneshot(request).await;
            }
        });
        let m = recorded.read();
        prop_assert!(m.recorded(DURATION, &[]) == 2);
        for (name, labels) in m.series() {
            for secret in [&path, &query, &key, &cookie, &issued] {
                prop_assert!(!name.contains(secret.as_str()), "{name}");
                for (k, v) in labels {
                    prop_assert!(
                        !k.contains(secret.as_str()) && !v.contains(secret.as_str()),
                        "{secret} in {name} {k}={v}"
                    );
                }
            }
        }
    }
}

/// An overload signal is its own series: a backend answering 429 with
/// `Retry-After: 60` among two that answer 200, round robin, 30 requests
/// in turn: it answers once, is held off for the rest (one hold, by its
/// reason), and is never ejected.
#[tokio::test]
async fn a_429_with_retry_after_is_one_hold_by_its_reason_and_no_ejection() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut recorded = Recorded::new(&recorder);
    let ok = backends(2).await;
    let limited = backend(
        "c",
        ResponseTemplate::new(429).insert_header("retry-after", "60"),
    )
    .await;
    let balancer = Balancer::builder()
        .endpoint(ok[0].uri())
        .endpoint(ok[1].uri())
        .endpoint(limited.uri())
        .policy(Policy::round_robin())
        .outlier_detection(OutlierDetection::default().consecutive_failures(1))
        .retry(Retries::disabled())
        .build()
        .unwrap();
    send_in_turn(&client(&balancer), 30).await;
    assert_settled(&balancer);

    let m = recorded.read();
    assert_eq!(
        m.counter("tower_lb.holds", &[("reason", "too_many_requests")]),
        1
    );
    assert_eq!(m.counter("tower_lb.holds", &[]), 1);
    assert_eq!(
        m.recorded(DURATION, &[("http.response.status_code", "429")]),
        1
    );
    assert_eq!(m.counter("tower_lb.ejections", &[]), 0);
    assert_eq!(m.gauge("tower_lb.endpoints", &[("state", "ejected")]), 0.0);
    let stats = balancer.stats();
    let held = stats.endpoint(limited.uri()).unwrap();
    assert_eq!((held.overloaded, held.requests), (1, 1));
}
