//! Key values never appear in clear: not in logs, `Debug` output or stats.
//! In a test binary of its own, so that no other test's threads race the
//! scoped `tracing` subscriber.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use support::*;
use tower_lb::{Balancer, Policy, RequestKey, SessionKey};

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

#[tokio::test]
async fn key_values_never_appear_in_logs_debug_output_or_stats() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let servers = backends(3).await;
    let urls: Vec<String> = servers.iter().map(|s| s.uri()).collect();
    let balancer = urls
        .iter()
        .fold(Balancer::builder(), |b, url| b.endpoint(url))
        .policy(Policy::ring_hash().key(RequestKey::session()))
        .build()
        .unwrap();
    let secret = "secret-user-7f3a";
    let key = SessionKey::new(secret);
    let response = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(balancer.clone())
        .build()
        .get("http://backend/")
        .with_extension(key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("tower_lb"),
        "the request should have been logged: {logs}"
    );
    for shown in [
        logs,
        format!("{key:?}"),
        format!("{balancer:?}"),
        format!("{:?}", balancer.stats()),
    ] {
        assert!(!shown.contains(secret), "the key leaked: {shown}");
    }
}
