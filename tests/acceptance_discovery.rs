//! Acceptance tests of discovery against real registries (first written as
//! the review of issue 24; its four findings failed then): user-style probes of what README.md, docs/discovery.md and the rustdoc of
//! `EtcdSource`, `DnsSource`, `Discovery`, `RefreshHints` and
//! `DiscoveryStats` promise, at the edges, against a real etcd, a real DNS
//! server (hickory, in process) and wiremock backends.
//!
//! Real clock (real servers); waits poll with deadlines. Figures are
//! printed (`-- --nocapture`).

use crate::support;

use std::time::{Duration, Instant};

use futures::stream::{self, BoxStream, StreamExt};
use support::*;
use tower_lb::{
    Balancer, BoxError, DiscoveryStats, Endpoint, EndpointSource, Error, NotReadyReason,
    RefreshHints,
};

fn discovery(balancer: &Balancer) -> DiscoveryStats {
    balancer.stats().discovery.unwrap_or_default()
}

fn not_ready(result: Result<(), Error>) -> (NotReadyReason, Option<String>) {
    match result {
        Err(Error::DiscoveryNotReady { reason, last_error }) => (reason, last_error),
        other => panic!("expected DiscoveryNotReady, got {other:?}"),
    }
}

// ---------------------------------------------------------------------
// Any source: ready(), invalid and duplicate endpoints, the task's life.
// ---------------------------------------------------------------------

/// The first set is all invalid: `ready` must not resolve (nothing to send
/// to), the time-out carries the reason, and the counters say what
/// happened; a good set after it makes the handle ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_first_set_all_invalid_then_good() {
    let backends = backends(1).await;
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Vec<Endpoint>, std::io::Error>>();
    let balancer = Balancer::builder().build().unwrap();
    let handle = balancer.discover(rx).unwrap();
    tx.unbounded_send(Ok(vec![
        Endpoint::new("ftp://127.0.0.1:21"),
        Endpoint::new("http://127.0.0.1:1/?q=1"),
        Endpoint::new("http://127.0.0.1:2").with_weight(10_001),
    ]))
    .unwrap();
    let (reason, last) = not_ready(handle.ready_within(Duration::from_millis(300)).await);
    assert_eq!(reason, NotReadyReason::TimedOut(Duration::from_millis(300)));
    let last = last.expect("the refusal's words");
    assert!(last.contains("refused"), "{last}");
    let d = discovery(&balancer);
    assert_eq!((d.errors, d.skipped, d.refreshes), (1, 3, 0), "{d:?}");
    assert!(!handle.is_ready());
    tx.unbounded_send(Ok(vec![Endpoint::new(backends[0].uri())]))
        .unwrap();
    handle.ready_within(Duration::from_secs(2)).await.unwrap();
    assert!(handle.is_ready());
    // A later failure does not undo it; zero and MAX limits do not panic.
    tx.unbounded_send(Err(std::io::Error::other("boom")))
        .unwrap();
    handle.ready_within(Duration::ZERO).await.unwrap();
    handle.ready_within(Duration::MAX).await.unwrap();
    let d = discovery(&balancer);
    assert_eq!((d.refreshes, d.endpoints), (1, 1), "{d:?}");
}

/// The source errors first, then answers: ready resolves with the set; the
/// error before is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_after_source_error_first() {
    let backends = backends(1).await;
    let url = backends[0].uri();
    let source = stream::iter([
        Err::<Vec<Endpoint>, _>(std::io::Error::other("registry unavailable")),
        Ok(vec![Endpoint::new(url.clone())]),
    ])
    .chain(stream::pending());
    let balancer = Balancer::builder().build().unwrap();
    let handle = balancer.discover(source).unwrap();
    handle.ready_within(Duration::from_secs(2)).await.unwrap();
    assert_eq!(sorted_urls(&balancer), [url]);
    let d = discovery(&balancer);
    assert_eq!((d.errors, d.refreshes), (1, 1), "{d:?}");
    assert!(d.last_error.unwrap().contains("registry unavailable"));
}

/// `discover` twice: the first handle says Stopped (not SourceEnded, not a
/// hang); the second is ready; the first source's counters are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_discover_twice() {
    let backends = backends(1).await;
    let balancer = Balancer::builder().build().unwrap();
    let first = balancer
        .discover(
            stream::iter([Err::<Vec<Endpoint>, _>(std::io::Error::other("first"))])
                .chain(stream::pending()),
        )
        .unwrap();
    // Let the first task count its error.
    within(Duration::from_secs(2), "the first error", || {
        discovery(&balancer).errors == 1
    })
    .await;
    let second = balancer
        .discover(
            stream::iter([Ok::<_, std::io::Error>(vec![Endpoint::new(
                backends[0].uri(),
            )])])
            .chain(stream::pending()),
        )
        .unwrap();
    let (reason, last) = not_ready(first.ready_within(Duration::from_secs(2)).await);
    assert_eq!(reason, NotReadyReason::Stopped);
    assert!(last.is_some_and(|l| l.contains("first")));
    second.ready_within(Duration::from_secs(2)).await.unwrap();
    let d = discovery(&balancer);
    assert_eq!((d.errors, d.refreshes), (0, 1), "{d:?}");
}

/// The balancer is dropped while a source never answers: the waiter gets
/// Stopped at once, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_balancer_dropped() {
    let balancer = Balancer::builder().build().unwrap();
    let handle = balancer
        .discover(stream::pending::<Result<Vec<Endpoint>, std::io::Error>>())
        .unwrap();
    let waiting = tokio::spawn({
        let handle = handle.clone();
        async move { handle.ready().await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(balancer);
    let result = tokio::time::timeout(Duration::from_secs(2), waiting)
        .await
        .expect("ready() returns once the balancer is dropped")
        .unwrap();
    let (reason, _) = not_ready(result);
    assert_eq!(reason, NotReadyReason::Stopped);
}

/// A source that panics before any set: SourceEnded with the panic's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_source_panics_first() {
    struct Panics;
    impl EndpointSource for Panics {
        fn into_sets(self, _: RefreshHints) -> BoxStream<'static, Result<Vec<Endpoint>, BoxError>> {
            stream::once(async { panic!("registry client bug") }).boxed()
        }
    }
    let balancer = Balancer::builder().build().unwrap();
    let handle = balancer.discover(Panics).unwrap();
    let (reason, last) = not_ready(handle.ready_within(Duration::from_secs(2)).await);
    assert_eq!(reason, NotReadyReason::SourceEnded);
    assert!(last.is_some_and(|l| l.contains("registry client bug")));
    let d = discovery(&balancer);
    assert!(d.ended && d.errors == 1, "{d:?}");
}

/// A user source with duplicates spelled differently and invalid entries:
/// the first listing wins with its weight and labels, each skipped listing
/// counts, at every set (whole-set sources count each set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_source_duplicates_and_invalid() {
    let backends = backends(2).await;
    let a = backends[0].uri();
    let b = backends[1].uri();
    let set = vec![
        Endpoint::new(format!("{}/", a.to_uppercase()))
            .with_weight(5)
            .with_label("zone", "first"),
        Endpoint::new(a.clone())
            .with_weight(1)
            .with_label("zone", "second"),
        Endpoint::new(b.clone()),
        Endpoint::new(b.clone()),
        Endpoint::new("http://127.0.0.1:0"),
        Endpoint::new("http://user:pw@127.0.0.1:80"),
        Endpoint::new(""),
    ];
    let balancer = Balancer::builder().build().unwrap();
    balancer
        .discover(
            stream::iter([Ok::<_, std::io::Error>(set.clone()), Ok(set)]).chain(stream::pending()),
        )
        .unwrap()
        .ready_within(Duration::from_secs(2))
        .await
        .unwrap();
    within(Duration::from_secs(2), "both sets", || {
        discovery(&balancer).refreshes == 2
    })
    .await;
    let stats = balancer.stats();
    let first = stats.endpoint(&a).unwrap();
    assert_eq!((first.weight, first.labels.get("zone")), (5, Some("first")));
    assert_eq!(stats.endpoints.len(), 2);
    let d = stats.discovery.unwrap();
    assert_eq!((d.skipped, d.errors), (10, 0), "{d:?}");
    let client = client(&balancer);
    let sent = send_many(&client, 12, 3).await;
    assert!(sent.iter().all(Result::is_ok), "{sent:?}");
}

// ---------------------------------------------------------------------
// etcd
// ---------------------------------------------------------------------

#[cfg(feature = "etcd")]
mod etcd {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use support::etcd_server::EtcdServer;
    use tower_lb::EtcdSource;

    const PREFIX: &str = "/review24/api/";

    fn key(name: &str) -> String {
        format!("{PREFIX}{name}")
    }

    /// A balancer following the prefix, its first set applied.
    async fn following(etcd: &EtcdServer) -> Balancer {
        let balancer = Balancer::builder().build().unwrap();
        balancer
            .discover(EtcdSource::new([etcd.url.clone()], PREFIX))
            .unwrap()
            .ready_within(Duration::from_secs(5))
            .await
            .unwrap();
        balancer
    }

    fn doc(url: &str, weight: u32) -> String {
        format!(r#"{{"url": "{url}", "weight": {weight}}}"#)
    }

    fn bad_values(url: &str) -> Vec<(&'static str, String)> {
        vec![
            ("json", "{not json".to_owned()),
            ("nourl", r#"{"weight": 1}"#.to_owned()),
            ("unknown", format!(r#"{{"url": "{url}", "wieght": 2}}"#)),
            ("query", doc(&format!("{url}/?x=1"), 1)),
            ("fragment", doc(&format!("{url}/#top"), 1)),
            ("scheme", doc("ftp://127.0.0.1:21", 1)),
            ("weight", doc(url, 10_001)),
            ("port0", doc("http://127.0.0.1:0", 1)),
            ("userinfo", doc("http://u:p@127.0.0.1:80", 1)),
        ]
    }

    /// Every key bad at start: no set, ready times out with a reason; the
    /// count of skipped keys is exact; fixing one key applies it at once;
    /// deleting the bad ones changes nothing and costs no refresh.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_all_keys_bad_at_start_then_fixed() {
        let Some(etcd) = EtcdServer::start().await else {
            return;
        };
        let backends = backends(1).await;
        let url = backends[0].uri();
        let bad = bad_values(&url);
        for (name, value) in &bad {
            etcd.put(&key(name), value).await;
        }
        let balancer = Balancer::builder().build().unwrap();
        let handle = balancer
            .discover(EtcdSource::new([etcd.url.clone()], PREFIX))
            .unwrap();
        let (reason, last) = not_ready(handle.ready_within(Duration::from_secs(1)).await);
        assert!(matches!(reason, NotReadyReason::TimedOut(_)));
        let d = discovery(&balancer);
        println!("all keys bad: last_error {last:?}; stats {d:?}");
        assert_eq!(d.skipped, bad.len() as u64, "{d:?}");
        assert_eq!((d.errors, d.refreshes), (1, 0), "{d:?}");
        // Fix one key: the set appears.
        let fixed_at = Instant::now();
        etcd.put(&key("query"), &doc(&url, 2)).await;
        handle.ready_within(Duration::from_secs(1)).await.unwrap();
        println!("fixed key applied {:?} after the put", fixed_at.elapsed());
        assert_eq!(sorted_urls(&balancer), std::slice::from_ref(&url));
        // Delete the others: the set is unchanged, no refresh, no error.
        for (name, _) in &bad {
            if *name != "query" {
                etcd.delete(&key(name)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let d = discovery(&balancer);
        assert_eq!((d.refreshes, d.errors), (1, 1), "{d:?}");
        assert_eq!(d.skipped, bad.len() as u64, "no key counted twice: {d:?}");
    }

    /// On a running balancer: each kind of bad key, each followed by a good
    /// key, which must be applied within 1 s; `skipped` rises by exactly
    /// one per bad key; no error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_each_bad_kind_on_a_running_balancer() {
        let Some(etcd) = EtcdServer::start().await else {
            return;
        };
        let bad = bad_values("http://127.0.0.1:9");
        let backends = backends(1).await;
        etcd.put(&key("base"), &doc(&backends[0].uri(), 1)).await;
        let balancer = following(&etcd).await;
        for (i, (name, value)) in bad.iter().enumerate() {
            etcd.put(&key(&format!("bad-{name}")), value).await;
            etcd.put(
                &key(&format!("good-{i}")),
                &doc(&format!("http://127.0.0.1:{}", 30_000 + i), 1),
            )
            .await;
            within(
                Duration::from_secs(1),
                &format!("a good key after bad {name}"),
                || balancer.stats().endpoints.len() == i + 2,
            )
            .await;
            let d = discovery(&balancer);
            assert_eq!(d.skipped, i as u64 + 1, "after {name}: {d:?}");
            assert_eq!(d.errors, 0, "{d:?}");
        }
        // A bad key fixed: applied.
        etcd.put(&key("bad-weight"), &doc("http://127.0.0.1:31000", 7))
            .await;
        within(Duration::from_secs(1), "the fixed key", || {
            balancer
                .stats()
                .endpoint("http://127.0.0.1:31000")
                .is_some_and(|e| e.weight == 7)
        })
        .await;
    }

    /// An address under two keys, the winner deleted (the loser takes
    /// over with its weight), re-registered, then the loser deleted, then
    /// both: the address leaves. `skipped` counts each time the loser
    /// becomes skipped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_duplicate_winner_deleted_and_back() {
        let Some(etcd) = EtcdServer::start().await else {
            return;
        };
        let backends = backends(2).await;
        let (a, b) = (backends[0].uri(), backends[1].uri());
        etcd.put(&key("other"), &doc(&b, 1)).await;
        etcd.put(&key("z-old"), &doc(&a, 5)).await;
        etcd.put(&key("a-new"), &doc(&format!("{}/", a.to_uppercase()), 3))
            .await;
        let balancer = following(&etcd).await;
        let weight = |balancer: &Balancer| balancer.stats().endpoint(&a).map(|e| e.weight);
        assert_eq!(weight(&balancer), Some(3));
        assert_eq!(discovery(&balancer).skipped, 1);
        etcd.delete(&key("a-new")).await;
        within(Duration::from_secs(1), "the loser takes over", || {
            weight(&balancer) == Some(5)
        })
        .await;
        etcd.put(&key("a-new"), &doc(&a, 4)).await;
        within(Duration::from_secs(1), "the new winner", || {
            weight(&balancer) == Some(4)
        })
        .await;
        assert_eq!(discovery(&balancer).skipped, 2);
        etcd.delete(&key("z-old")).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(weight(&balancer), Some(4));
        etcd.delete(&key("a-new")).await;
        within(Duration::from_secs(1), "the address leaves", || {
            weight(&balancer).is_none()
        })
        .await;
        assert_eq!(sorted_urls(&balancer), [b]);
        let d = discovery(&balancer);
        assert_eq!((d.errors, d.skipped), (0, 2), "{d:?}");
    }

    /// The prefix emptied (every instance deregistered). docs/discovery.md's
    /// etcd section says "Only a failure to read etcd keeps the last good
    /// set"; the general table says an empty set keeps it. Probe which one
    /// holds, and that keys put again are applied.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_prefix_emptied_and_refilled() {
        let Some(etcd) = EtcdServer::start().await else {
            return;
        };
        let backends = backends(2).await;
        let (a, b) = (backends[0].uri(), backends[1].uri());
        etcd.put(&key("a"), &doc(&a, 1)).await;
        etcd.put(&key("b"), &doc(&b, 1)).await;
        let balancer = following(&etcd).await;
        etcd.delete(&key("a")).await;
        etcd.delete(&key("b")).await;
        within(Duration::from_secs(1), "the empty prefix counted", || {
            discovery(&balancer).errors >= 1
        })
        .await;
        let d = discovery(&balancer);
        println!(
            "prefix emptied: endpoints {:?}, {d:?}",
            sorted_urls(&balancer)
        );
        // The last good set stays: not empty (the two deletes may arrive
        // as two sets, so `a` may have left before the prefix was empty).
        assert!(!sorted_urls(&balancer).is_empty());
        let refreshes = d.refreshes;
        // Refilled with the same two keys: the balancer's set is the same.
        etcd.put(&key("a"), &doc(&a, 1)).await;
        etcd.put(&key("b"), &doc(&b, 1)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let d = discovery(&balancer);
        println!(
            "refilled with the same keys: refreshes {} -> {} (the balancer's set did not change)",
            refreshes, d.refreshes
        );
    }

    /// Weight 0 in etcd drains: a prefix of drained keys only. Docs: ready
    /// "does not resolve on an error, an empty set or a set with no valid
    /// endpoint, which leave nothing to send to".
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_weight_zero_only_ready_but_nothing_to_send_to() {
        let Some(etcd) = EtcdServer::start().await else {
            return;
        };
        let backends = backends(1).await;
        etcd.put(&key("a"), &doc(&backends[0].uri(), 0)).await;
        let balancer = Balancer::builder().build().unwrap();
        let ready = balancer
            .discover(EtcdSource::new([etcd.url.clone()], PREFIX))
            .unwrap()
            .ready_within(Duration::from_secs(2))
            .await;
        let client = client(&balancer);
        let sent = send(&client, "/").await;
        println!("weight 0 only: ready {ready:?}; first request {sent:?}");
        assert!(
            !(ready.is_ok() && sent.is_err()),
            "ready() resolved but there is nothing to send to: {sent:?}"
        );
    }

    /// A huge prefix: 4,000 keys (1 KB values). The first set, then single
    /// puts on the running balancer. Docs: "put to the first request at the
    /// new backend: 4 to 10 ms".
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "figures (timing): cargo test --all-features --test integration acceptance_discovery -- --ignored --nocapture"]
    async fn etcd_huge_prefix_put_latency() {
        let Some(etcd) = EtcdServer::start().await else {
            return;
        };
        let pad = "x".repeat(1_000);
        let mut figures = Vec::new();
        let mut total = 0usize;
        for count in [500usize, 4_000] {
            let pairs: Vec<(String, String)> = (total..count)
                .map(|i| {
                    (
                        key(&format!("k{i:05}")),
                        format!(
                            r#"{{"url": "http://10.{}.{}.{}:8080", "metadata": {{"pad": "{pad}"}}}}"#,
                            i / 65_536,
                            (i / 256) % 256,
                            i % 256
                        ),
                    )
                })
                .collect();
            etcd.put_all(&pairs).await;
            total = count;
            let balancer = Balancer::builder().build().unwrap();
            let started = Instant::now();
            balancer
                .discover(EtcdSource::new([etcd.url.clone()], PREFIX))
                .unwrap()
                .ready_within(Duration::from_secs(30))
                .await
                .unwrap();
            let first = started.elapsed();
            assert_eq!(balancer.stats().endpoints.len(), count);
            let mut puts = Vec::new();
            for j in 0..5 {
                let put_at = Instant::now();
                etcd.put(
                    &key(&format!("extra-{count}-{j}")),
                    &doc(&format!("http://127.0.0.1:{}", 40_000 + j), 1),
                )
                .await;
                let want = count + j + 1;
                let took = within(Duration::from_secs(10), "a single put", || {
                    balancer.stats().endpoints.len() == want
                })
                .await;
                puts.push(put_at.elapsed().max(took));
            }
            for j in 0..5 {
                etcd.delete(&key(&format!("extra-{count}-{j}"))).await;
            }
            figures.push((count, first, puts));
        }
        for (count, first, puts) in &figures {
            println!("{count} keys: first set {first:?}; single puts applied after {puts:?}");
        }
        // Linear, not quadratic: 8x the keys may cost up to 8x per put
        // (x3 for noise), where the quadratic update cost about 15x.
        let median = |puts: &Vec<Duration>| {
            let mut sorted = puts.clone();
            sorted.sort();
            sorted[sorted.len() / 2]
        };
        let (small, big) = (median(&figures[0].2), median(&figures[1].2));
        assert!(
            big < small * 24,
            "a single put on 4,000 keys took {big:?}, on 500 keys {small:?}"
        );
    }

    /// A steady stream of puts from several writers for 2 s. Docs: changes
    /// are gathered "for at most 50 ms after the first, so that a steady
    /// stream of changes still gives a set this often".
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_steady_stream_still_gives_sets() {
        let Some(etcd) = EtcdServer::start().await else {
            return;
        };
        etcd.put(&key("seed"), &doc("http://127.0.0.1:20000", 1))
            .await;
        let balancer = following(&etcd).await;
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let mut writers = Vec::new();
        for w in 0..8u64 {
            let mut client = etcd.client().await.unwrap();
            let (stop, written) = (stop.clone(), written.clone());
            writers.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let k = format!("{PREFIX}w{w}-{}", i % 50);
                    let v = doc(
                        &format!("http://127.0.{w}.{}:8080", i % 50),
                        1 + (i % 7) as u32,
                    );
                    client.put(k, v, None).await.unwrap();
                    written.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            }));
        }
        let started = Instant::now();
        let mut last_refreshes = discovery(&balancer).refreshes;
        let mut last_change = Instant::now();
        let mut longest_gap = Duration::ZERO;
        while started.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(2)).await;
            let now = discovery(&balancer).refreshes;
            if now != last_refreshes {
                longest_gap = longest_gap.max(last_change.elapsed());
                last_refreshes = now;
                last_change = Instant::now();
            }
        }
        longest_gap = longest_gap.max(last_change.elapsed());
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            writer.await.unwrap();
        }
        let d = discovery(&balancer);
        println!(
            "steady stream: {} puts in 2 s, {} sets, longest gap between sets {longest_gap:?}",
            written.load(Ordering::Relaxed),
            d.refreshes
        );
        // Then the whole set arrives.
        within(Duration::from_secs(2), "the whole set", || {
            balancer.stats().endpoints.len() == 1 + 8 * 50
        })
        .await;
        // Not starved: sets keep coming while the writes do. (A bound on
        // liveness, not on speed: 300 ms failed once on a machine busy with
        // other builds; a starved follower shows no set at all for the
        // stream's 2 s.)
        assert!(
            longest_gap < Duration::from_secs(1),
            "no set for {longest_gap:?} during a steady stream"
        );
    }

    /// Bursts of puts and deletes from several writers: the final set is
    /// exactly what etcd holds, weights included; no error, nothing
    /// skipped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_burst_of_puts_and_deletes_final_set_exact() {
        let Some(etcd) = EtcdServer::start().await else {
            return;
        };
        etcd.put(&key("seed"), &doc("http://127.0.0.1:20000", 1))
            .await;
        let balancer = following(&etcd).await;
        let mut tasks = Vec::new();
        for w in 0..6u32 {
            let mut client = etcd.client().await.unwrap();
            tasks.push(tokio::spawn(async move {
                for round in 0..3u32 {
                    for i in 0..40u32 {
                        let k = format!("{PREFIX}w{w}-{i}");
                        client
                            .put(
                                k.clone(),
                                doc(&format!("http://127.1.{w}.{i}:80"), 1 + round),
                                None,
                            )
                            .await
                            .unwrap();
                        if i % 3 == 0 {
                            client.delete(k, None).await.unwrap();
                        }
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let expected: usize = 1 + 6 * (40 - 14);
        let took = within(Duration::from_secs(2), "the final set", || {
            let stats = balancer.stats();
            stats.endpoints.len() == expected
                && stats
                    .endpoints
                    .iter()
                    .filter(|e| e.url != "http://127.0.0.1:20000")
                    .all(|e| e.weight == 3)
        })
        .await;
        let stats = balancer.stats();
        let d = stats.discovery.unwrap();
        println!("burst of puts and deletes: final set {took:?} after the last, {d:?}");
        assert_eq!((d.errors, d.skipped), (0, 0), "{d:?}");
    }

    /// etcd is down when discovery starts and comes back after the
    /// back-off reached its ceiling: docs "A restarted etcd is found at
    /// most max + 20% (1.2 s) after it answers again".
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_down_at_start_ready_soon_after_it_answers() {
        let Some(mut etcd) = EtcdServer::start().await else {
            return;
        };
        let backends = backends(1).await;
        etcd.put(&key("a"), &doc(&backends[0].uri(), 1)).await;
        let mut worst = Duration::ZERO;
        for down in [
            Duration::from_millis(250),
            Duration::from_millis(1_700),
            Duration::from_secs(4),
        ] {
            etcd.kill();
            let balancer = Balancer::builder().build().unwrap();
            let handle = balancer
                .discover(EtcdSource::new([etcd.url.clone()], PREFIX))
                .unwrap();
            tokio::time::sleep(down).await;
            assert!(!handle.is_ready());
            etcd.restart().await; // returns once etcd answers
            let back = Instant::now();
            handle.ready_within(Duration::from_secs(5)).await.unwrap();
            let took = back.elapsed();
            let d = discovery(&balancer);
            println!(
                "etcd down {down:?} at start: ready {took:?} after it answered; errors {}",
                d.errors
            );
            worst = worst.max(took);
        }
        assert!(
            worst <= Duration::from_millis(1_300),
            "ready {worst:?} after etcd answered"
        );
    }

    /// etcd killed and restarted at several moments on a running balancer;
    /// a put right after it answers must be applied within the documented
    /// 1.2 s.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_restart_moments_put_after() {
        let Some(mut etcd) = EtcdServer::start().await else {
            return;
        };
        let backends = backends(1).await;
        etcd.put(&key("a"), &doc(&backends[0].uri(), 1)).await;
        let balancer = following(&etcd).await;
        let mut figures = Vec::new();
        for (n, away) in [0u64, 120, 450, 1_100, 2_600].into_iter().enumerate() {
            etcd.kill();
            tokio::time::sleep(Duration::from_millis(away)).await;
            etcd.restart().await;
            let put_at = Instant::now();
            etcd.put(
                &key(&format!("after-{n}")),
                &doc(&format!("http://127.0.0.1:{}", 41_000 + n), 1),
            )
            .await;
            let want = n + 2;
            let took = within(Duration::from_secs(5), "a put after the restart", || {
                balancer.stats().endpoints.len() == want
            })
            .await;
            figures.push((away, put_at.elapsed().max(took)));
        }
        println!("etcd restarts (ms away, put to applied): {figures:?}");
        let d = discovery(&balancer);
        println!("{d:?}");
        let worst = figures.iter().map(|(_, t)| *t).max().unwrap();
        assert!(worst <= Duration::from_millis(1_300), "{figures:?}");
    }

    /// The member list: empty, all dead, [dead, live] with the live one
    /// restarted later. No panic; errors counted; the live one followed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_member_lists() {
        let balancer = Balancer::builder().build().unwrap();
        let handle = balancer
            .discover(EtcdSource::new(Vec::<String>::new(), PREFIX))
            .unwrap();
        let (_, last) = not_ready(handle.ready_within(Duration::from_millis(500)).await);
        println!("no member: {last:?}, {:?}", discovery(&balancer));
        let dead = [RefusingPort::new(), RefusingPort::new()];
        let handle = balancer
            .discover(EtcdSource::new(
                [
                    dead[0].url.clone(),
                    "not a url at all".to_owned(),
                    dead[1].url.clone(),
                ],
                PREFIX,
            ))
            .unwrap();
        let (_, last) = not_ready(handle.ready_within(Duration::from_millis(800)).await);
        println!("dead members: {last:?}, {:?}", discovery(&balancer));
        assert!(discovery(&balancer).errors >= 1);

        let Some(mut etcd) = EtcdServer::start().await else {
            return;
        };
        let backends = backends(1).await;
        etcd.put(&key("a"), &doc(&backends[0].uri(), 1)).await;
        let started = Instant::now();
        balancer
            .discover(EtcdSource::new(
                [dead[0].url.clone(), etcd.url.clone()],
                PREFIX,
            ))
            .unwrap()
            .ready_within(Duration::from_secs(1))
            .await
            .unwrap();
        println!("[dead, live]: ready in {:?}", started.elapsed());
        etcd.kill();
        tokio::time::sleep(Duration::from_millis(700)).await;
        etcd.restart().await;
        let put_at = Instant::now();
        etcd.put(&key("b"), &doc("http://127.0.0.1:42000", 1)).await;
        within(
            Duration::from_secs(3),
            "a put after the live member restarted",
            || balancer.stats().endpoints.len() == 2,
        )
        .await;
        println!(
            "[dead, live], live restarted: put applied after {:?}",
            put_at.elapsed()
        );
        assert!(put_at.elapsed() < Duration::from_millis(1_300));
    }
}

// ---------------------------------------------------------------------
// DNS
// ---------------------------------------------------------------------

#[cfg(feature = "dns")]
mod dns {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use support::dns_server::DnsServer;
    use tower_lb::DnsSource;

    fn look_ups(dns: &DnsServer, name: &str) -> usize {
        dns.queries_for(name).len()
    }

    /// ipv4_only on a name with AAAA records only: a failed look-up (no
    /// records), ready times out with the words; both families work.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dns_ipv4_only_on_an_aaaa_only_name() {
        let dns = DnsServer::start("test.").await;
        dns.set_ipv6_addresses("six.test.", &[Ipv6Addr::LOCALHOST], 1)
            .await;
        let balancer = Balancer::builder().build().unwrap();
        let handle = balancer
            .discover(
                DnsSource::addresses("six.test.", 8080)
                    .name_server(dns.addr)
                    .ipv4_only(),
            )
            .unwrap();
        let (reason, last) = not_ready(handle.ready_within(Duration::from_millis(1_500)).await);
        println!(
            "ipv4_only on AAAA only: {reason:?} {last:?}; queries {:?}",
            dns.queries_for("six.test.")
        );
        assert!(last.is_some());
        assert!(dns.queries_for("six.test.").iter().all(|t| t == "A"));
        let both = Balancer::builder().build().unwrap();
        both.discover(DnsSource::addresses("six.test.", 8080).name_server(dns.addr))
            .unwrap()
            .ready_within(Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(sorted_urls(&both), ["http://[::1]:8080"]);
        let six = Balancer::builder().build().unwrap();
        six.discover(
            DnsSource::addresses("six.test.", 8080)
                .name_server(dns.addr)
                .ipv6_only(),
        )
        .unwrap()
        .ready_within(Duration::from_secs(2))
        .await
        .unwrap();
    }

    /// Refresh bounds of zero with a TTL of 0: raised to 100 ms, so about
    /// 10 look-ups (20 queries) a second, never a busy loop. min above max:
    /// a fixed wait of min.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dns_absurd_refresh_bounds() {
        let dns = DnsServer::start("test.").await;
        dns.set_addresses("zero.test.", &[Ipv4Addr::new(127, 0, 0, 1)], 0)
            .await;
        dns.set_addresses("crossed.test.", &[Ipv4Addr::new(127, 0, 0, 1)], 0)
            .await;
        let zero = Balancer::builder().build().unwrap();
        zero.discover(
            DnsSource::addresses("zero.test.", 8080)
                .name_server(dns.addr)
                .refresh_between(Duration::ZERO, Duration::ZERO),
        )
        .unwrap();
        let crossed = Balancer::builder().build().unwrap();
        crossed
            .discover(
                DnsSource::addresses("crossed.test.", 8080)
                    .name_server(dns.addr)
                    .refresh_between(Duration::from_millis(700), Duration::from_millis(100)),
            )
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let z = look_ups(&dns, "zero.test.");
        let c = look_ups(&dns, "crossed.test.");
        println!(
            "2 s: zero bounds {z} queries ({:?}); min 700 ms > max 100 ms: {c} queries",
            discovery(&zero)
        );
        assert!(
            (30..=46).contains(&z),
            "{z} queries in 2 s with bounds raised to 100 ms"
        );
        assert!((4..=8).contains(&c), "{c} queries in 2 s at a fixed 700 ms");
    }

    /// A long TTL and a dead backend that stays in the answer: the chase
    /// looks up at min, 2 min, 4 min ... and must neither stop nor spin.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dns_long_ttl_dead_backend_stays_in_answer() {
        let dns = DnsServer::start("test.").await;
        let live = backends(1).await;
        let live_addr: std::net::SocketAddr = live[0].address().to_owned();
        let dead = RefusingPort::at((Ipv4Addr::new(127, 0, 0, 8), live_addr.port()).into())
            .expect("the live port free on 127.0.0.8");
        dns.set_addresses(
            "stays.test.",
            &[Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 0, 8)],
            300,
        )
        .await;
        let balancer = Balancer::builder()
            .policy(tower_lb::Policy::round_robin())
            .build()
            .unwrap();
        balancer
            .discover(
                DnsSource::addresses("stays.test.", live_addr.port())
                    .name_server(dns.addr)
                    .ipv4_only()
                    .refresh_between(Duration::from_millis(100), Duration::from_secs(10)),
            )
            .unwrap()
            .ready_within(Duration::from_secs(2))
            .await
            .unwrap();
        let client = client(&balancer);
        let started = Instant::now();
        let mut failed = 0;
        while started.elapsed() < Duration::from_secs(5) {
            failed += usize::from(send(&client, "/").await.is_err());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let queries = look_ups(&dns, "stays.test.");
        let ejected = balancer.stats().endpoint(&dead.url).map(|e| e.ejected);
        println!(
            "dead address stays in the answer, 5 s: {queries} look-ups, ejected {ejected:?}, {failed} failed, {:?}",
            discovery(&balancer)
        );
        // 1 at start, 1 brought forward, then 0.1, 0.3, 0.7, 1.5, 3.1 s.
        assert!((5..=12).contains(&queries), "{queries} look-ups in 5 s");
    }

    /// A user-given port 0: docs say a bad URL "cannot come from an A/AAAA
    /// answer". Probe what happens (no panic; what is counted).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dns_port_zero() {
        let dns = DnsServer::start("test.").await;
        dns.set_addresses(
            "p0.test.",
            &[Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 0, 2)],
            1,
        )
        .await;
        let balancer = Balancer::builder().build().unwrap();
        let handle = balancer
            .discover(DnsSource::addresses("p0.test.", 0).name_server(dns.addr))
            .unwrap();
        let result = handle.ready_within(Duration::from_millis(2_500)).await;
        let d = discovery(&balancer);
        println!("addresses(name, 0): ready {result:?}; {d:?}");
        // SRV with port 0 beside a good record: the good one is used.
        dns.set_addresses("t.test.", &[Ipv4Addr::LOCALHOST], 1)
            .await;
        dns.set_service(
            "_http._tcp.s.test.",
            &[(1, 1, 0, "t.test."), (1, 1, 8080, "t.test.")],
            1,
        )
        .await;
        let srv = Balancer::builder().build().unwrap();
        srv.discover(DnsSource::service("_http._tcp.s.test.").name_server(dns.addr))
            .unwrap()
            .ready_within(Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(sorted_urls(&srv), ["http://127.0.0.1:8080"]);
        assert_eq!(discovery(&srv).skipped, 1);
        assert!(result.is_err());
    }
}

/// What one set costs the discovery task as the set grows (any source, no
/// labels): one endpoint added to a set of n. Linear work would keep the
/// time per endpoint flat; the task runs on a runtime worker, so the time
/// is also how long that worker is blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "figures (timing): cargo test --all-features --test integration acceptance_discovery -- --ignored --nocapture"]
async fn set_cost_grows_with_the_set() {
    let mut figures = Vec::new();
    for n in [1_000usize, 4_000, 8_000] {
        let set = |extra: usize| -> Vec<Endpoint> {
            (0..n + extra)
                .map(|i| {
                    Endpoint::new(format!(
                        "http://10.{}.{}.{}:8080",
                        i / 65_536,
                        (i / 256) % 256,
                        i % 256
                    ))
                })
                .collect()
        };
        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Vec<Endpoint>, std::io::Error>>();
        let balancer = Balancer::builder().build().unwrap();
        let handle = balancer.discover(rx).unwrap();
        tx.unbounded_send(Ok(set(0))).unwrap();
        handle.ready_within(Duration::from_secs(30)).await.unwrap();
        let mut times = Vec::new();
        for extra in 1..=3 {
            let next = set(extra);
            let sent = Instant::now();
            tx.unbounded_send(Ok(next)).unwrap();
            within(Duration::from_secs(30), "the next set", || {
                discovery(&balancer).endpoints == n + extra
            })
            .await;
            times.push(sent.elapsed());
        }
        figures.push((n, times));
    }
    println!("one endpoint added to a set of n (debug build): {figures:?}");
    let small = figures[0].1.iter().min().copied().unwrap();
    let large = figures[2].1.iter().min().copied().unwrap();
    assert!(
        large < small * 16,
        "8x the endpoints cost {:.1}x the time: {figures:?}",
        large.as_secs_f64() / small.as_secs_f64()
    );
}
