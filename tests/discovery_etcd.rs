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

fn key(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// Defect: a value whose JSON parsed but whose endpoint the balancer
/// refused (a query, a fragment, a scheme other than http(s), a weight over
/// `MAX_WEIGHT`, an address another key holds too) made the whole set be
/// refused: at start no set at all, later every good key put after it
/// ignored. Each key now stands alone; a duplicate address is one endpoint,
/// with the weight and labels of the newest registration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_key_is_skipped_alone_at_start_and_good_keys_put_after_one_are_applied() {
    let Some(etcd) = EtcdServer::start().await else {
        return;
    };
    let backends = backends(3).await;
    let url = |i: usize| backends[i].uri();
    // An older registration of a's address (spelled with a trailing slash):
    // the newer key "a" wins it.
    etcd.put(&key("a-old"), &document(&format!("{}/", url(0)), 5, "old"))
        .await;
    etcd.put(&key("a"), &document(&url(0), 1, "east")).await;
    etcd.put(&key("b"), &document(&url(1), 2, "west")).await;
    for (name, value) in [
        ("query", document(&format!("{}/?x=1", url(2)), 1, "east")),
        ("fragment", document(&format!("{}/#top", url(2)), 1, "east")),
        ("scheme", document("ftp://127.0.0.1:21", 1, "east")),
        ("weight", document(&url(2), 10_001, "east")),
    ] {
        etcd.put(&key(name), &value).await;
    }
    let balancer = Balancer::builder().build().unwrap();
    balancer
        .discover(EtcdSource::new([etcd.url.clone()], PREFIX))
        .unwrap();
    within(
        Duration::from_secs(5),
        "the first set, beside bad keys",
        || sorted_urls(&balancer).len() == 2,
    )
    .await;
    assert_eq!(sorted_urls(&balancer), sorted(vec![url(0), url(1)]));
    let stats = balancer.stats();
    let a = stats.endpoint(url(0)).unwrap();
    assert_eq!((a.weight, a.labels.get("zone")), (1, Some("east")));
    let discovery = stats.discovery.unwrap();
    assert_eq!(discovery.skipped, 5, "four bad keys and one shadowed");
    assert_eq!(discovery.errors, 0);
    let client = client(&balancer);
    for _ in 0..20 {
        send(&client, "/").await.unwrap();
    }

    // On a running balancer: a bad key, then a good one.
    etcd.put(
        &key("late-bad"),
        &document("http://127.0.0.1:9/?q", 1, "east"),
    )
    .await;
    etcd.put(&key("c"), &document(&url(2), 1, "east")).await;
    within(
        Duration::from_secs(1),
        "a good key put after a bad one",
        || sorted_urls(&balancer).len() == 3,
    )
    .await;
    assert_eq!(balancer.stats().discovery.unwrap().skipped, 6);
    let reached = send_many(&client, 30, 3).await;
    assert!(reached.iter().all(Result::is_ok), "{reached:?}");
    assert!(reached.iter().any(|r| matches!(r.as_deref(), Ok("c"))));

    // A newer registration of a's address takes its weight and labels;
    // deleted, the address goes back to the newest key left.
    etcd.put(&key("a-new"), &document(&url(0), 3, "new")).await;
    let weight_and_zone = |balancer: &Balancer| {
        let stats = balancer.stats();
        let a = stats.endpoint(url(0)).unwrap();
        (a.weight, a.labels.get("zone").map(str::to_owned))
    };
    within(Duration::from_secs(1), "the newest registration", || {
        weight_and_zone(&balancer) == (3, Some("new".to_owned()))
    })
    .await;
    etcd.delete(&key("a-new")).await;
    within(Duration::from_secs(1), "the registration before", || {
        weight_and_zone(&balancer) == (1, Some("east".to_owned()))
    })
    .await;
    assert_eq!(sorted_urls(&balancer).len(), 3);
    assert_eq!(balancer.stats().discovery.unwrap().errors, 0);
}

/// Defect: with 1,000 keys of 5 KB under the prefix, the one read answered
/// more than gRPC's 4 MiB limit and failed forever. The read is paged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_over_four_mebibytes_is_read_whole_and_then_followed() {
    let Some(etcd) = EtcdServer::start().await else {
        return;
    };
    let padding = "x".repeat(5_000);
    let pairs: Vec<(String, String)> = (0..1_000)
        .map(|i| {
            let url = format!("http://127.0.0.1:{}", 20_000 + i);
            let value = format!(
                r#"{{"url": "{url}", "metadata": {{"zone": "a", "padding": "{padding}"}}}}"#
            );
            (key(&format!("{i:04}")), value)
        })
        .collect();
    assert!(pairs.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() > 5_000_000);
    etcd.put_all(&pairs).await;
    let balancer = Balancer::builder().build().unwrap();
    balancer
        .discover(EtcdSource::new([etcd.url.clone()], PREFIX))
        .unwrap();
    let read = within(Duration::from_secs(10), "1,000 keys of 5 KB", || {
        balancer.stats().endpoints.len() == 1_000
    })
    .await;
    let stats = balancer.stats();
    assert!(stats.endpoint("http://127.0.0.1:20999").is_some());
    assert_eq!(stats.discovery.unwrap().errors, 0);
    // The watch starts after the paged read.
    etcd.put(&key("new"), &document("http://127.0.0.1:21000", 1, "a"))
        .await;
    within(Duration::from_secs(2), "a put after the paged read", || {
        balancer.stats().endpoints.len() == 1_001
    })
    .await;
    // A limit under one page's size: the pages are asked for in halves.
    let small = Balancer::builder().build().unwrap();
    let options = tower_lb::etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1));
    small
        .discover(
            EtcdSource::new([etcd.url.clone()], PREFIX)
                .connect_options(options)
                .max_message_size(64 << 10),
        )
        .unwrap();
    let halved = within(
        Duration::from_secs(10),
        "pages under a 64 KiB limit",
        || small.stats().endpoints.len() == 1_001,
    )
    .await;
    assert_eq!(small.stats().discovery.unwrap().errors, 0);
    println!(
        "1,000 keys of 5 KB read and applied in {read:?}; under a 64 KiB message limit {halved:?}"
    );
}

/// A port that accepts connections and never answers on them: a frozen
/// etcd member (the connect succeeds, no gRPC answer comes).
struct SilentPort {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl SilentPort {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        SilentPort { url, task }
    }
}

impl Drop for SilentPort {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Defect: `EtcdSource::new([dead, live], ..)` got no set within 3 s in 3
/// of 8 fresh starts. A dead member (refusing) or a frozen one (silent) in
/// the list, first or last, now costs at most one attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_frozen_member_first_or_last_in_the_list_delays_no_start() {
    let Some(etcd) = EtcdServer::start().await else {
        return;
    };
    let backends = backends(1).await;
    etcd.put(&key("a"), &document(&backends[0].uri(), 1, "east"))
        .await;
    let dead = RefusingPort::new();
    let frozen = SilentPort::start().await;
    let mut slowest = Duration::ZERO;
    for bad in [&dead.url, &frozen.url] {
        for members in [[bad, &etcd.url], [&etcd.url, bad]] {
            for _ in 0..4 {
                let balancer = Balancer::builder().build().unwrap();
                let started = Instant::now();
                balancer.discover(EtcdSource::new(members, PREFIX)).unwrap();
                within(
                    Duration::from_secs(1),
                    &format!("a set from {members:?}"),
                    || balancer.stats().endpoints.len() == 1,
                )
                .await;
                slowest = slowest.max(started.elapsed());
                // A put on the running balancer is followed too.
                let put = key("probe");
                etcd.put(&put, &document("http://127.0.0.1:20001", 1, "east"))
                    .await;
                within(
                    Duration::from_secs(1),
                    "a put on the running balancer",
                    || balancer.stats().endpoints.len() == 2,
                )
                .await;
                etcd.delete(&put).await;
            }
        }
    }
    println!("a dead or frozen member in the list: slowest first set {slowest:?}");
}

/// Recovery after an etcd restart: the time from a put made as soon as
/// etcd answers again to the set holding it. etcd comes back at the worst
/// moment for the source: just after a retry failed, once `outage` has
/// passed. (While etcd is away its port accepts and closes connections, so
/// the retries can be seen.)
async fn recovery_after(outage: Duration) -> Duration {
    let mut etcd = EtcdServer::start().await.expect("etcd is installed");
    let backends = backends(2).await;
    etcd.put(&key("a"), &document(&backends[0].uri(), 1, "east"))
        .await;
    let balancer = Balancer::builder().build().unwrap();
    balancer
        .discover(EtcdSource::new([etcd.url.clone()], PREFIX))
        .unwrap();
    within(Duration::from_secs(5), "first set", || {
        sorted_urls(&balancer).len() == 1
    })
    .await;
    etcd.kill();
    let killed = Instant::now();
    let door = tokio::net::TcpListener::bind(("127.0.0.1", etcd.client_port()))
        .await
        .expect("etcd's port, free once it is killed");
    let (tried, mut tries) = tokio::sync::mpsc::unbounded_channel();
    let door = tokio::spawn(async move {
        while let Ok((connection, _)) = door.accept().await {
            drop(connection);
            let _ = tried.send(Instant::now());
        }
    });
    // The outage is the scenario: etcd stays away this long, and returns
    // right after the source's next attempt.
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(15), tries.recv())
            .await
            .expect("the source retries within 15 s")
            .expect("the door is open");
        if attempt.duration_since(killed) >= outage {
            break;
        }
    }
    door.abort();
    let _ = door.await;
    etcd.restart().await;
    let put_at = Instant::now();
    etcd.put(&key("b"), &document(&backends[1].uri(), 1, "east"))
        .await;
    within(Duration::from_secs(10), "a put after the restart", || {
        sorted_urls(&balancer).len() == 2
    })
    .await;
    put_at.elapsed()
}

/// Defect: the retry back-off reached 5 s, so a put right after etcd came
/// back could wait 3.4 to 3.8 s. With jitter and a 1 s ceiling, even a
/// restart just after a failed retry gives a recovery under 1.5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_after_an_etcd_restart_is_applied_within_1_5_s_at_any_restart_moment() {
    if support::etcd_server::etcd_binary().is_none() {
        return;
    }
    for outage in [500, 2_000, 4_000] {
        let outage = Duration::from_millis(outage);
        let recovery = recovery_after(outage).await;
        println!("etcd away {outage:?}: put after the restart applied in {recovery:?}");
        assert!(
            recovery < Duration::from_millis(1_500),
            "after {outage:?} away: {recovery:?}"
        );
    }
}

/// The figures of docs/discovery.md: `cargo test -j 2 --all-features --test
/// integration recovery_figures -- --ignored --nocapture` (about 85 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a minute of outages: run for the figures in docs/discovery.md"]
async fn etcd_recovery_figures_at_several_restart_moments() {
    for outage in [500, 2_000, 5_000, 10_000] {
        let mut figures = Vec::new();
        for _ in 0..3 {
            figures.push(recovery_after(Duration::from_millis(outage)).await);
        }
        println!("etcd away {outage} ms: put after the restart applied in {figures:?}");
    }
}

/// Defect: every watch event rebuilt the whole set (999 puts, 999
/// rebuilds; the full set 2.1 to 3.7 s after the last put). Events that
/// arrive together are one set, and only changed sets count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_puts_is_applied_in_far_fewer_sets_and_the_last_set_is_whole() {
    let Some(etcd) = EtcdServer::start().await else {
        return;
    };
    etcd.put(&key("0000"), &document("http://127.0.0.1:20000", 1, "a"))
        .await;
    let balancer = Balancer::builder().build().unwrap();
    balancer
        .discover(EtcdSource::new([etcd.url.clone()], PREFIX))
        .unwrap();
    within(Duration::from_secs(5), "first set", || {
        balancer.stats().endpoints.len() == 1
    })
    .await;
    let before = balancer.stats().discovery.unwrap().refreshes;
    // Ten writers registering 30 instances each at once, as a fleet does.
    let mut writers = Vec::new();
    for w in 0..10 {
        let mut client = etcd.client().await.expect("etcd answers");
        writers.push(tokio::spawn(async move {
            for i in 1..=30 {
                let n = w * 30 + i;
                let url = format!("http://127.0.0.1:{}", 20_000 + n);
                client
                    .put(key(&format!("{n:04}")), document(&url, 1, "a"), None)
                    .await
                    .expect("put");
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let whole = within(Duration::from_secs(10), "all 301 endpoints", || {
        balancer.stats().endpoints.len() == 301
    })
    .await;
    let burst = balancer.stats().discovery.unwrap().refreshes - before;
    // The same value again changes nothing, and is no refresh.
    etcd.put(&key("0000"), &document("http://127.0.0.1:20000", 1, "a"))
        .await;
    etcd.put(&key("0301"), &document("http://127.0.0.1:20301", 1, "a"))
        .await;
    within(Duration::from_secs(1), "one more", || {
        balancer.stats().endpoints.len() == 302
    })
    .await;
    let refreshes = balancer.stats().discovery.unwrap().refreshes - before;
    println!("300 puts from 10 writers: {burst} sets; whole {whole:?} after the last put");
    assert!(burst <= 60, "{burst} sets for 300 puts");
    assert_eq!(
        refreshes,
        burst + 1,
        "an unchanged value counted as a refresh"
    );
}

/// The figure of docs/discovery.md: 999 puts one after the other, and the
/// time from the last to the whole set.
/// `cargo test -j 2 --all-features --test integration figures_of_999 -- --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_of_999_single_puts_sets_and_time_to_the_whole_set() {
    let Some(etcd) = EtcdServer::start().await else {
        return;
    };
    etcd.put(&key("0000"), &document("http://127.0.0.1:20000", 1, "a"))
        .await;
    let balancer = Balancer::builder().build().unwrap();
    balancer
        .discover(EtcdSource::new([etcd.url.clone()], PREFIX))
        .unwrap();
    within(Duration::from_secs(5), "first set", || {
        balancer.stats().endpoints.len() == 1
    })
    .await;
    let mut client = etcd.client().await.unwrap();
    let started = Instant::now();
    for n in 1..=999 {
        let url = format!("http://127.0.0.1:{}", 20_000 + n);
        client
            .put(key(&format!("{n:04}")), document(&url, 1, "a"), None)
            .await
            .unwrap();
    }
    let puts = started.elapsed();
    let whole = within(Duration::from_secs(20), "all 1,000 endpoints", || {
        balancer.stats().endpoints.len() == 1_000
    })
    .await;
    let refreshes = balancer.stats().discovery.unwrap().refreshes;
    println!(
        "999 single puts in {puts:?}: {refreshes} sets in all; whole set {whole:?} after the last"
    );
    assert!(refreshes < 999, "{refreshes} sets for 999 puts");
}
