//! The outlier-detection scenarios that were once wrong, each as it was
//! seen, on tokio's paused clock: time moves only when the test says so.
//! Requests are picked and reported through `Balancer::select`, as an
//! application sending them by hand would.

use std::sync::mpsc;
use std::time::Duration;

use http::StatusCode;
use tower_lb::{Balancer, Detector, HealthEvent, OutlierDetection, Policy, Retries, Selection};

fn url(i: usize) -> String {
    format!("http://10.0.0.{}:8080", i + 1)
}

fn balancer(n: usize, detection: OutlierDetection) -> Balancer {
    (0..n)
        .fold(Balancer::builder(), |b, i| b.endpoint(url(i)))
        .policy(Policy::round_robin())
        .outlier_detection(detection)
        .retry(Retries::disabled())
        .build()
        .unwrap()
}

/// Endpoints with `weights` under `policy` (default outlier detection,
/// whose 10% always allows one ejection), endpoint 0 ejected by five 503s.
fn weighted_with_first_ejected(weights: &[u32], policy: Policy) -> Balancer {
    let balancer = weights
        .iter()
        .enumerate()
        .fold(Balancer::builder(), |b, (i, &w)| {
            b.endpoint_weighted(url(i), w)
        })
        .policy(policy)
        .retry(Retries::disabled())
        .build()
        .unwrap();
    for _ in 0..5 {
        select_on(&balancer, 0).finish(StatusCode::SERVICE_UNAVAILABLE);
    }
    balancer
}

fn get() -> http::Request<()> {
    http::Request::get("/").body(()).unwrap()
}

/// Selections until one lands on endpoint `i` (the others answer 200).
fn select_on(balancer: &Balancer, i: usize) -> Selection {
    for _ in 0..100 {
        let selection = balancer.select(&get()).unwrap();
        if selection.endpoint() == url(i) {
            return selection;
        }
        selection.finish(StatusCode::OK);
    }
    panic!("endpoint {i} was never picked");
}

fn ejected(balancer: &Balancer) -> Vec<bool> {
    balancer
        .stats()
        .endpoints
        .iter()
        .map(|e| e.ejected)
        .collect()
}

/// Health events, delivered by the balancer's own thread.
fn events() -> (OutlierDetection, mpsc::Receiver<HealthEvent>) {
    let (sender, receiver) = mpsc::channel();
    let detection = OutlierDetection::default().on_event(move |event| {
        let _ = sender.send(event.clone());
    });
    (detection, receiver)
}

fn next_event(events: &mpsc::Receiver<HealthEvent>) -> HealthEvent {
    events
        .recv_timeout(Duration::from_secs(5))
        .expect("an event within five seconds")
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_removed_with_failures_in_flight_leaves_its_slot_and_the_next_failing_one_is_ejected(
) {
    // 10% of 4 endpoints: one ejection slot.
    let balancer = balancer(4, OutlierDetection::default());
    let in_flight: Vec<Selection> = (0..8).map(|_| select_on(&balancer, 0)).collect();
    balancer.remove(url(0)).unwrap();
    // Its late failures land after it is gone: they change nothing.
    for selection in in_flight {
        selection.finish(StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(balancer.stats().endpoints.len(), 3);
    // Now endpoint 1 starts failing: five in a row eject it.
    for _ in 0..5 {
        select_on(&balancer, 1).finish(StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(ejected(&balancer), [true, false, false]);
}

#[tokio::test(start_paused = true)]
async fn panic_mode_ends_by_itself_when_ejections_expire() {
    let (detection, events) = events();
    let detection = detection
        .max_ejection_percent(100)
        .base_ejection_time(Duration::from_secs(30));
    let balancer = balancer(4, detection);
    for i in 0..3 {
        for _ in 0..5 {
            select_on(&balancer, i).finish(StatusCode::SERVICE_UNAVAILABLE);
        }
    }
    assert_eq!(ejected(&balancer), [true, true, true, false]);
    assert!(balancer.stats().panic_mode, "one healthy of four");
    // In panic, traffic goes to all four.
    let mut counts = [0; 4];
    for _ in 0..200 {
        let selection = balancer.select(&get()).unwrap();
        counts[(0..4).position(|i| url(i) == selection.endpoint()).unwrap()] += 1;
        selection.finish(StatusCode::OK);
    }
    assert_eq!(counts, [50, 50, 50, 50]);

    // Well past the ejection time, the next pick ends all three ejections.
    tokio::time::advance(Duration::from_secs(31)).await;
    balancer.select(&get()).unwrap().finish(StatusCode::OK);
    let mut readmitted = 0;
    while readmitted < 3 {
        if let HealthEvent::Readmitted { .. } = next_event(&events) {
            readmitted += 1;
        }
    }
    assert!(!balancer.stats().panic_mode);
    // Endpoint 2 still fails: five fresh failures eject it again, for twice as long.
    for _ in 0..5 {
        select_on(&balancer, 2).finish(StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(ejected(&balancer), [false, false, true, false]);
    let stats = balancer.stats();
    assert_eq!(stats.endpoints[2].times_ejected, 2);
}

#[tokio::test(start_paused = true)]
async fn failures_landing_while_ejected_do_not_count_after_the_return() {
    let detection = OutlierDetection::default()
        .max_ejection_percent(50)
        .base_ejection_time(Duration::from_millis(400));
    let balancer = balancer(2, detection);
    // Twenty requests at once, ten to endpoint 0, which answers 503.
    let to_a: Vec<Selection> = (0..10).map(|_| select_on(&balancer, 0)).collect();
    let mut answers = to_a.into_iter();
    for selection in answers.by_ref().take(5) {
        selection.finish(StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(ejected(&balancer), [true, false]);
    // The other five land while it is out.
    for selection in answers {
        selection.finish(StatusCode::SERVICE_UNAVAILABLE);
    }
    tokio::time::advance(Duration::from_millis(401)).await;
    balancer.select(&get()).unwrap().finish(StatusCode::OK);
    assert_eq!(ejected(&balancer), [false, false]);
    // Back, it needs five fresh failures.
    for i in 1..=5 {
        select_on(&balancer, 0).finish(StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ejected(&balancer)[0], i == 5, "after {i} fresh failures");
    }
}

#[tokio::test(start_paused = true)]
async fn an_ejection_refused_by_the_limit_clears_the_count() {
    // One slot among four endpoints: endpoint 0 takes it.
    let balancer = balancer(4, OutlierDetection::default());
    for _ in 0..5 {
        select_on(&balancer, 0).finish(StatusCode::SERVICE_UNAVAILABLE);
    }
    // Endpoint 1 reaches the threshold with no slot left: refused, and its count cleared.
    for _ in 0..5 {
        select_on(&balancer, 1).finish(StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(ejected(&balancer), [true, false, false, false]);
    tokio::time::advance(Duration::from_secs(31)).await;
    balancer.select(&get()).unwrap().finish(StatusCode::OK);
    // With the slot free, one more failure is not enough: it needs five.
    select_on(&balancer, 1).finish(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ejected(&balancer), [false, false, false, false]);
    for _ in 0..4 {
        select_on(&balancer, 1).finish(StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(ejected(&balancer), [false, true, false, false]);
}

#[tokio::test(start_paused = true)]
async fn round_robin_and_weighted_round_robin_share_an_ejected_endpoints_turns_by_weight() {
    for (weights, policy, expected) in [
        (
            vec![1, 1, 1, 1],
            Policy::round_robin(),
            vec![0usize, 100, 100, 100],
        ),
        (
            vec![5, 1, 1],
            Policy::weighted_round_robin(),
            vec![0, 140, 140],
        ),
    ] {
        let balancer = weighted_with_first_ejected(&weights, policy);
        let total: usize = expected.iter().sum();
        let mut counts = vec![0; weights.len()];
        for _ in 0..total {
            let selection = balancer.select(&get()).unwrap();
            counts[(0..weights.len())
                .position(|i| url(i) == selection.endpoint())
                .unwrap()] += 1;
            selection.finish(StatusCode::OK);
        }
        assert_eq!(counts, expected, "weights {weights:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn an_ejection_ends_at_its_time_with_no_request_and_the_event_and_stats_show_it() {
    let (detection, events) = events();
    let detection = detection.base_ejection_time(Duration::from_secs(1));
    let balancer = balancer(2, detection.max_ejection_percent(50));
    for _ in 0..5 {
        select_on(&balancer, 0).finish(StatusCode::SERVICE_UNAVAILABLE);
    }
    assert!(matches!(
        next_event(&events),
        HealthEvent::Ejected {
            detector: Detector::ConsecutiveFailures,
            ..
        }
    ));
    let stats = balancer.stats();
    assert_eq!(
        stats.endpoints[0].ejected_by,
        Some(Detector::ConsecutiveFailures)
    );
    assert_eq!(stats.ejections.active, 1);
    assert_eq!(stats.ejections.enforced(Detector::ConsecutiveFailures), 1);
    // Not a moment early: reading stats changes nothing.
    tokio::time::advance(Duration::from_millis(999)).await;
    assert!(balancer.stats().endpoints[0].ejected);
    assert!(events.recv_timeout(Duration::from_millis(50)).is_err());
    // At its time, with no request: the sweeper re-admits it (this task
    // waits without blocking the runtime the sweeper runs on).
    tokio::time::sleep(Duration::from_millis(1)).await;
    let waiting = std::time::Instant::now();
    let event = loop {
        if let Ok(event) = events.try_recv() {
            break event;
        }
        assert!(waiting.elapsed() < Duration::from_secs(5), "no return");
        tokio::task::yield_now().await;
    };
    match event {
        HealthEvent::Readmitted {
            endpoint, after, ..
        } => {
            assert_eq!(endpoint, url(0));
            assert_eq!(after, Duration::from_secs(1));
        }
        other => panic!("expected a return, got {other:?}"),
    }
    let stats = balancer.stats();
    assert!(!stats.endpoints[0].ejected);
    assert_eq!(stats.endpoints[0].ejected_by, None);
    assert_eq!(stats.ejections.active, 0);
    assert_eq!(stats.ejections.total, 1);
}

#[tokio::test(start_paused = true)]
async fn a_callback_that_blocks_does_not_hold_up_requests() {
    // The callback blocks until the test lets it go: were it called on the
    // request path, the first ejection would hang its request for good.
    let (entered, callback_entered) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    let released = std::sync::Mutex::new(released);
    let detection = OutlierDetection::default()
        .consecutive_failures(1)
        .max_ejection_percent(50)
        .base_ejection_time(Duration::from_millis(10))
        .max_ejection_time(Duration::from_millis(10))
        .on_event(move |event| {
            let _ = entered.send(event.clone());
            let _ = released.lock().unwrap().recv();
        });
    let balancer = balancer(2, detection);
    for _ in 0..40 {
        balancer
            .select(&get())
            .unwrap()
            .finish(StatusCode::SERVICE_UNAVAILABLE);
        tokio::time::advance(Duration::from_millis(11)).await;
    }
    // Forty requests done; the callback is still inside the first event.
    let first = callback_entered
        .recv_timeout(Duration::from_secs(5))
        .unwrap();
    assert!(matches!(first, HealthEvent::Ejected { .. }));
    assert!(callback_entered.try_recv().is_err());
    // Let it go: every event queued meanwhile arrives, in order, none dropped.
    let mut delivered = vec![first];
    while delivered.len() < 40 {
        release.send(()).unwrap();
        delivered.push(
            callback_entered
                .recv_timeout(Duration::from_secs(5))
                .unwrap(),
        );
    }
    release.send(()).unwrap();
    let ejections = delivered
        .iter()
        .filter(|e| matches!(e, HealthEvent::Ejected { .. }))
        .count();
    assert!(ejections >= 20, "{delivered:?}");
    assert_eq!(balancer.stats().health_events_dropped, 0);
}

#[tokio::test(start_paused = true)]
async fn with_every_endpoint_ejected_and_panic_mode_off_requests_fail_fast_until_one_returns() {
    let policies: Vec<Policy> = vec![
        Policy::round_robin(),
        Policy::weighted_round_robin(),
        Policy::random(),
        Policy::least_response_time().into(),
        Policy::ring_hash().into(),
        Policy::maglev().bounded_loads().into(),
    ];
    for policy in policies {
        let detection = OutlierDetection::default()
            .consecutive_failures(1)
            .max_ejection_percent(100)
            .panic_threshold(0)
            .base_ejection_time(Duration::from_secs(10));
        let balancer = (0..3)
            .fold(Balancer::builder(), |b, i| {
                b.endpoint_weighted(url(i), 10_000 - i as u32)
            })
            .policy(policy.clone())
            .outlier_detection(detection)
            .retry(Retries::disabled())
            .build()
            .unwrap();
        // Each failure ejects the endpoint it reached; the next pick skips it.
        for _ in 0..3 {
            balancer
                .select(&get())
                .unwrap()
                .finish(StatusCode::SERVICE_UNAVAILABLE);
        }
        assert_eq!(ejected(&balancer), [true, true, true], "{policy:?}");
        let mut keyed = get();
        keyed
            .extensions_mut()
            .insert(tower_lb::SessionKey::new("user-1"));
        for request in [get(), keyed] {
            assert!(
                matches!(
                    balancer.select(&request),
                    Err(tower_lb::Error::NoEndpointAvailable)
                ),
                "{policy:?}"
            );
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(balancer.select(&get()).is_ok(), "{policy:?}");
    }
}

#[test]
fn rotations_hand_over_turns_under_concurrency_without_ever_failing() {
    for (weights, policy) in [
        (vec![1u32, 1], Policy::round_robin()),
        (vec![10_000, 1], Policy::weighted_round_robin()),
    ] {
        // Every turn of the ejected endpoint 0 is handed over, by many
        // threads at once.
        let balancer = weighted_with_first_ejected(&weights, policy);
        assert_eq!(ejected(&balancer), [true, false]);
        std::thread::scope(|s| {
            for _ in 0..4 {
                let balancer = balancer.clone();
                s.spawn(move || {
                    for _ in 0..5_000 {
                        let selection = balancer.select(&get()).expect("endpoint 1 is available");
                        assert_eq!(selection.endpoint(), url(1));
                    }
                });
            }
        });
    }
}

/// The sweeper task holds only a weak reference: dropping the balancer
/// ends it, an ejection waiting to end included.
#[tokio::test(start_paused = true)]
async fn the_sweeper_task_ends_when_the_balancer_is_dropped() {
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let before = tasks();
    let balancer = balancer(4, OutlierDetection::default());
    assert_eq!(tasks(), before + 1, "one sweeper per balancer");
    for _ in 0..5 {
        select_on(&balancer, 0).finish(StatusCode::SERVICE_UNAVAILABLE);
    }
    assert!(balancer.stats().endpoints[0].ejected);
    tokio::task::yield_now().await;
    drop(balancer);
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
    assert_eq!(tasks(), before, "the sweeper outlived its balancer");
}

/// A balancer built outside any runtime starts its sweeper from its first
/// pick inside one: the success rate then judges at the interval.
#[test]
fn a_balancer_built_outside_a_runtime_starts_its_sweeper_from_the_first_pick_in_one() {
    let detection = OutlierDetection::disabled()
        .success_rate(tower_lb::SuccessRate::default().request_volume(10))
        .interval(Duration::from_secs(10));
    let balancer = balancer(5, detection);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        // Round robin: 20 requests each; endpoint 3 fails 10 of its 20.
        let mut sent = [0; 5];
        for _ in 0..100 {
            let selection = balancer.select(&get()).unwrap();
            let i = (0..5).position(|i| url(i) == selection.endpoint()).unwrap();
            let failed = i == 3 && sent[i] < 10;
            sent[i] += 1;
            selection.finish(if failed {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            });
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        tokio::task::yield_now().await;
        let by: Vec<_> = balancer
            .stats()
            .endpoints
            .iter()
            .map(|e| e.ejected_by)
            .collect();
        assert_eq!(by, [None, None, None, Some(Detector::SuccessRate), None]);
    });
}
