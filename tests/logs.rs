//! Tests that capture `tracing` output with a subscriber scoped to their
//! thread: a binary of their own. In the shared test binary, a log callsite
//! first reached on another thread while exactly one scoped subscriber
//! exists is cached as "never" for every thread (tracing-core 0.1.36,
//! `Dispatchers::rebuilder`), and a capture can come back empty
//! (docs/testing.md, "One test binary").

mod support;

mod privacy;

use std::io::Write;
use std::sync::{Arc, Mutex};

use tower_lb::{Balancer, Policy, SessionKey};

/// Collects everything `tracing` writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Captures every `tracing` event and span of this thread at `level`
    /// or above until the guard drops.
    fn start(level: tracing::Level) -> (Self, tracing::subscriber::DefaultGuard) {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_writer(move || writer.clone())
            .finish();
        (captured, tracing::subscriber::set_default(subscriber))
    }

    /// Everything captured so far.
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

#[test]
fn a_hashing_policy_that_finds_no_key_in_most_requests_warns_once() {
    let balancer = Balancer::builder()
        .endpoint("http://127.0.0.1:8081")
        .endpoint("http://127.0.0.1:8082")
        .policy(Policy::maglev())
        .build()
        .unwrap();
    let keyless = http::Request::get("/").body(()).unwrap();
    let mut keyed = http::Request::get("/").body(()).unwrap();
    keyed.extensions_mut().insert(SessionKey::new("user-1"));
    let (log, guard) = Captured::start(tracing::Level::WARN);
    // A few keyless requests among many keyed ones: no warning.
    for i in 0..2_000 {
        let request = if i % 20 == 0 { &keyless } else { &keyed };
        balancer
            .select(request)
            .unwrap()
            .finish(http::StatusCode::OK);
    }
    assert!(log.text().is_empty());
    // Then mostly keyless: one warning, however many follow.
    for _ in 0..20_000 {
        balancer
            .select(&keyless)
            .unwrap()
            .finish(http::StatusCode::OK);
    }
    drop(guard);
    let text = log.text();
    assert_eq!(
        text.matches("found no key in most requests").count(),
        1,
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_discovery_source_that_panics_is_logged_at_error_with_its_message() {
    let balancer = Balancer::builder().build().unwrap();
    let (log, guard) = Captured::start(tracing::Level::ERROR);
    // A stream that panics when first polled, on this thread's runtime.
    let source = futures::stream::poll_fn(
        |_| -> std::task::Poll<Option<Result<Vec<tower_lb::Endpoint>, std::io::Error>>> {
            panic!("watcher state corrupted")
        },
    );
    balancer.discover(source).unwrap();
    for _ in 0..100 {
        if balancer.stats().discovery.is_some_and(|d| d.ended) {
            break;
        }
        tokio::task::yield_now().await;
    }
    drop(guard);
    let text = log.text();
    assert!(text.contains("ERROR"), "{text}");
    assert!(text.contains("discovery task panicked"), "{text}");
    assert!(text.contains("watcher state corrupted"), "{text}");
}

/// README, "Observability": each request's outcome and latency are a
/// `debug` event. Under round robin only one request in 16 per endpoint
/// feeds the estimate; with a debug subscriber listening, every request is
/// timed for its event all the same.
#[tokio::test]
async fn with_debug_on_every_request_finished_event_carries_its_latency() {
    let servers = support::backends(2).await;
    let balancer = support::balancer_over(&servers, Policy::round_robin());
    let client = support::client(&balancer);
    let (log, guard) = Captured::start(tracing::Level::DEBUG);
    for _ in 0..40 {
        support::send(&client, "/").await.unwrap();
    }
    drop(guard);
    let text = log.text();
    let finished: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("request finished"))
        .collect();
    assert_eq!(finished.len(), 40, "{text}");
    for line in &finished {
        assert!(line.contains("latency_us="), "no latency: {line}");
        assert!(line.contains("outcome=Success"), "{line}");
    }
}
