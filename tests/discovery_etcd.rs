//! etcd discovery against a real etcd (Debian's `etcd-server`, started on
//! free loopback ports) and real backends: puts and deletes move traffic
//! within 1 s; etcd killed and restarted mid-run loses no request and the
//! watch resumes. In CI a missing etcd fails these tests; locally they are
//! skipped with a message.
//!
//! The real clock runs here (a real etcd and real sockets); the tests poll
//! with deadlines and print their figures (`-- --nocapture`).
#![cfg(feature = "etcd")]

use crate::support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::etcd_server::EtcdServer;
use support::*;
use tower_lb::{Balancer, EtcdSource};

const PREFIX: &str = "/services/api/";

fn document(url: &str, weight: u32, zone: &str) -> String {
    format!(r#"{{"url": "{url}", "weight": {weight}, "metadata": {{"zone": "{zone}"}}}}"#)
}

fn sorted(mut urls: Vec<String>) -> Vec<String> {
    urls.sort();
    urls
}

/// Sends requests back to back until stopped; counts them and the failed.
fn traffic(
    client: Client,
) -> (
    Arc<AtomicBool>,
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    tokio::task::JoinHandle<()>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let task = tokio::spawn({
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                if send(&client, "/").await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                sent.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    (stop, sent, failed, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_and_deletes_move_traffic_within_a_second_and_survivors_keep_their_state() {
    let Some(etcd) = EtcdServer::start().await else {
        return;
    };
    let backends = backends(3).await;
    let url = |i: usize| backends[i].uri();
    etcd.put(&format!("{PREFIX}a"), &document(&url(0), 1, "east"))
        .await;
    etcd.put(&format!("{PREFIX}b"), &document(&url(1), 2, "west"))
        .await;
    // A bad value is skipped, and holds nothing back.
    etcd.put(&format!("{PREFIX}broken"), "not json").await;
    let balancer = Balancer::builder().build().unwrap();
    balancer
        .discover(EtcdSource::new([etcd.url.clone()], PREFIX))
        .unwrap();
    let first = within(Duration::from_secs(5), "first set", || {
        sorted_urls(&balancer).len() == 2
    })
    .await;
    assert_eq!(sorted_urls(&balancer), sorted(vec![url(0), url(1)]));
    let stats = balancer.stats();
    let b = stats.endpoint(url(1)).unwrap();
    assert_eq!(b.weight, 2);
    assert_eq!(b.labels.get("zone"), Some("west"));

    let client = client(&balancer);
    for _ in 0..30 {
        send(&client, "/").await.unwrap();
    }
    let survivor_before = balancer.stats().endpoint(url(1)).unwrap().requests;

    // A put: the first request reaches the new backend within 1 s.
    let put_at = Instant::now();
    etcd.put(&format!("{PREFIX}c"), &document(&url(2), 1, "east"))
        .await;
    let to_new = loop {
        if send(&client, "/").await.unwrap() == name(2) {
            break put_at.elapsed();
        }
        assert!(
            put_at.elapsed() < Duration::from_secs(1),
            "no request reached the new backend within 1 s"
        );
    };
    // The survivor kept its counters (a fresh entry would start at 0).
    assert!(survivor_before > 0);
    let survivor = balancer.stats().endpoint(url(1)).unwrap().requests;
    assert!(
        survivor >= survivor_before,
        "{survivor} < {survivor_before}"
    );

    // A delete: the endpoint leaves within 1 s.
    let deleted_at = Instant::now();
    etcd.delete(&format!("{PREFIX}a")).await;
    let removed = within(Duration::from_secs(1), "the delete", || {
        sorted_urls(&balancer) == sorted(vec![url(1), url(2)])
    })
    .await;
    let before = received(&backends[0]).await;
    for _ in 0..20 {
        send(&client, "/").await.unwrap();
    }
    assert_eq!(
        received(&backends[0]).await,
        before,
        "the deleted endpoint got requests"
    );
    let refreshes = balancer.stats().discovery.unwrap().refreshes;
    assert!(refreshes >= 3);
    println!(
        "first set after {first:?}; put to first request at the new backend {to_new:?}; \
         delete to removal {removed:?} (after {:?})",
        deleted_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_killed_and_restarted_mid_run_loses_no_request_and_the_watch_resumes() {
    let Some(mut etcd) = EtcdServer::start().await else {
        return;
    };
    let backends = backends(3).await;
    let url = |i: usize| backends[i].uri();
    etcd.put(&format!("{PREFIX}a"), &document(&url(0), 1, "east"))
        .await;
    etcd.put(&format!("{PREFIX}b"), &document(&url(1), 1, "west"))
        .await;
    let balancer = Balancer::builder().build().unwrap();
    balancer
        .discover(EtcdSource::new([etcd.url.clone()], PREFIX))
        .unwrap();
    within(Duration::from_secs(5), "first set", || {
        sorted_urls(&balancer).len() == 2
    })
    .await;
    let (stop, sent, failed, task) = traffic(client(&balancer));

    // etcd dies: the set stays, and every request is answered.
    etcd.kill();
    let killed = Instant::now();
    within(Duration::from_secs(10), "the failure seen", || {
        balancer.stats().discovery.unwrap().errors > 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sorted_urls(&balancer), sorted(vec![url(0), url(1)]));
    let during_outage = sent.load(Ordering::Relaxed);

    // Back: the source reads again and follows new changes.
    etcd.restart().await;
    let restarted = killed.elapsed();
    etcd.put(&format!("{PREFIX}c"), &document(&url(2), 1, "east"))
        .await;
    let put_at = Instant::now();
    let resumed = within(Duration::from_secs(10), "updates after the restart", || {
        sorted_urls(&balancer).len() == 3
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    let errors = balancer.stats().discovery.unwrap().errors;
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed");
    println!(
        "etcd down {restarted:?}: {during_outage} requests sent by then, {} in all, 0 failed; \
         {errors} discovery errors counted; a put after the restart was applied {resumed:?} \
         later (after {:?})",
        sent.load(Ordering::Relaxed),
        put_at.elapsed()
    );
}
