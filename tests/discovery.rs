//! What `Balancer::discover` promises for any source: each full set
//! replaces the endpoint set with survivors' state kept; an invalid
//! endpoint is skipped and the rest applied; an error, an empty set or a
//! set with no valid endpoint keeps the last good set and is counted; the
//! task stops when the balancer goes.

use crate::support;

use std::time::Duration;

use futures::channel::mpsc;
use futures::stream::{self, BoxStream, StreamExt};
use support::*;
use tower_lb::{Balancer, BoxError, Endpoint, EndpointSource, Error, NotReadyReason, RefreshHints};

type Sets = mpsc::UnboundedSender<Result<Vec<Endpoint>, std::io::Error>>;

fn urls(balancer: &Balancer) -> Vec<String> {
    balancer
        .stats()
        .endpoints
        .into_iter()
        .map(|e| e.url)
        .collect()
}

fn set(urls: &[String]) -> Vec<Endpoint> {
    urls.iter().map(|u| Endpoint::new(u.as_str())).collect()
}

#[tokio::test(start_paused = true)]
async fn errors_empty_and_refused_sets_keep_the_last_good_set_and_survivors_keep_state() {
    let backends = backends(3).await;
    let url: Vec<String> = backends.iter().map(|b| b.uri()).collect();
    let balancer = Balancer::builder().build().unwrap();
    let (sets, source): (Sets, _) = mpsc::unbounded();
    balancer.discover(source).unwrap();

    sets.unbounded_send(Ok(set(&url[..2]))).unwrap();
    eventually(|| urls(&balancer) == url[..2]).await;
    let client = client(&balancer);
    for _ in 0..10 {
        send(&client, "/").await.unwrap();
    }
    let survivor_before = balancer.stats().endpoint(&url[1]).unwrap().requests;
    assert_eq!(survivor_before, 5);

    // Three kinds of bad answer: each keeps the set, and is counted.
    sets.unbounded_send(Err(std::io::Error::other("registry unreachable")))
        .unwrap();
    eventually(|| balancer.stats().discovery.unwrap().errors == 1).await;
    sets.unbounded_send(Ok(Vec::new())).unwrap();
    eventually(|| balancer.stats().discovery.unwrap().errors == 2).await;
    sets.unbounded_send(Ok(vec![Endpoint::new("ftp://127.0.0.1:21")]))
        .unwrap();
    eventually(|| balancer.stats().discovery.unwrap().errors == 3).await;
    assert_eq!(urls(&balancer), url[..2]);
    let discovery = balancer.stats().discovery.unwrap();
    assert_eq!(discovery.refreshes, 1);
    assert!(discovery
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("refused")));
    for _ in 0..10 {
        send(&client, "/").await.expect("the last good set serves");
    }

    // A good set again: the survivor keeps its counters, the newcomer
    // starts at 0, the one that left is gone.
    sets.unbounded_send(Ok(set(&url[1..]))).unwrap();
    eventually(|| urls(&balancer) == url[1..]).await;
    let stats = balancer.stats();
    assert_eq!(
        stats.endpoint(&url[1]).unwrap().requests,
        survivor_before + 5
    );
    assert_eq!(stats.endpoint(&url[2]).unwrap().requests, 0);
    assert_eq!(stats.discovery.unwrap().endpoints, 2);
}

#[tokio::test(start_paused = true)]
async fn the_task_stops_when_the_last_handle_to_the_balancer_drops() {
    let balancer = Balancer::builder().build().unwrap();
    let (sets, source): (Sets, _) = mpsc::unbounded();
    balancer.discover(source).unwrap();
    let copy = balancer.clone();
    drop(balancer);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!sets.is_closed(), "a handle is still alive");
    drop(copy);
    // The task drops its stream, which closes the channel.
    eventually(|| sets.is_closed()).await;
}

#[tokio::test(start_paused = true)]
async fn a_source_that_ends_leaves_its_last_set_and_says_so() {
    let balancer = Balancer::builder().build().unwrap();
    let one = vec![Endpoint::new("http://127.0.0.1:8081")];
    balancer
        .discover(stream::iter([Ok::<_, std::io::Error>(one)]))
        .unwrap();
    eventually(|| balancer.stats().discovery.is_some_and(|d| d.ended)).await;
    assert_eq!(urls(&balancer), ["http://127.0.0.1:8081"]);
}

#[test]
fn discover_outside_a_tokio_runtime_is_a_typed_error() {
    let balancer = Balancer::builder().build().unwrap();
    let source = stream::iter([Ok::<_, std::io::Error>(Vec::new())]);
    assert!(matches!(balancer.discover(source), Err(Error::NoRuntime)));
    assert!(balancer.stats().discovery.is_none());
}

/// One answer of a source, for the property below: a set of entries (a
/// port of a good endpoint, or `None` for an invalid one), no endpoint at
/// all, or an error.
#[derive(Clone, Debug)]
enum Answer {
    Set(Vec<Option<u8>>),
    Empty,
    Error,
}

fn answer() -> impl proptest::strategy::Strategy<Value = Answer> {
    use proptest::prelude::*;
    let entry = prop_oneof![4 => (0u8..6).prop_map(Some), 1 => Just(None)];
    prop_oneof![
        5 => proptest::collection::vec(entry, 1..6).prop_map(Answer::Set),
        1 => Just(Answer::Empty),
        1 => Just(Answer::Error),
    ]
}

/// The invalid endpoints a source may list, in turn.
fn invalid(turn: usize) -> Endpoint {
    match turn % 4 {
        0 => Endpoint::new("ftp://127.0.0.1:21"),
        1 => Endpoint::new("http://127.0.0.1:0"),
        2 => Endpoint::new("http://127.0.0.1:9000/?q=1"),
        _ => Endpoint::new("http://127.0.0.1:9001").with_weight(tower_lb::MAX_WEIGHT + 1),
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Each endpoint stands alone: a set's valid endpoints are applied
    /// (a repeated address once, with its first listing's weight), its
    /// invalid ones and repeats are counted as skipped, and a set with no
    /// valid endpoint, an empty set or an error leaves the set as it was.
    #[test]
    fn any_sequence_of_answers_leaves_exactly_the_valid_endpoints_of_the_last_good_set(
        answers in proptest::collection::vec(answer(), 1..12),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let balancer = Balancer::builder().build().unwrap();
            let (sets, source): (Sets, _) = mpsc::unbounded();
            balancer.discover(source).unwrap();
            let mut expected: Vec<(String, u32)> = Vec::new();
            let mut skipped = 0;
            for (seen, answer) in answers.iter().enumerate() {
                let sent = match answer {
                    Answer::Set(entries) => {
                        let mut good: Vec<(String, u32)> = Vec::new();
                        let mut listed = Vec::new();
                        for (turn, entry) in entries.iter().enumerate() {
                            let Some(port) = entry else {
                                listed.push(invalid(seen + turn));
                                skipped += 1;
                                continue;
                            };
                            let url = format!("http://127.0.0.1:{}", 9000 + u16::from(*port));
                            // Each listing its own weight: the first one's stays.
                            let weight = turn as u32 + 1;
                            if good.iter().any(|(known, _)| *known == url) {
                                skipped += 1;
                            } else {
                                good.push((url.clone(), weight));
                            }
                            listed.push(Endpoint::new(url).with_weight(weight));
                        }
                        if !good.is_empty() {
                            expected = good;
                        }
                        Ok(listed)
                    }
                    Answer::Empty => Ok(Vec::new()),
                    Answer::Error => Err(std::io::Error::other("down")),
                };
                sets.unbounded_send(sent).unwrap();
                eventually(|| {
                    balancer.stats().discovery.is_some_and(|d| {
                        (d.refreshes + d.errors) as usize == seen + 1
                    })
                })
                .await;
                let stats = balancer.stats();
                let now: Vec<(String, u32)> =
                    stats.endpoints.iter().map(|e| (e.url.clone(), e.weight)).collect();
                assert_eq!(now, expected, "after {:?}", &answers[..=seen]);
                assert_eq!(stats.discovery.unwrap().skipped, skipped);
            }
        });
    }
}

/// A user source lists two good endpoints and one bad one of each kind:
/// the good ones are applied and take requests, the others are skipped
/// and counted. Before each endpoint stood alone, the whole set was
/// refused and no request could be sent.
#[tokio::test(start_paused = true)]
async fn one_bad_endpoint_of_any_kind_never_blocks_the_good_ones_of_its_set() {
    let backends = backends(2).await;
    let url: Vec<String> = backends.iter().map(|b| b.uri()).collect();
    let balancer = Balancer::builder().build().unwrap();
    let (sets, source): (Sets, _) = mpsc::unbounded();
    balancer.discover(source).unwrap();
    sets.unbounded_send(Ok(vec![
        Endpoint::new(url[0].as_str()).with_label("listing", "first"),
        Endpoint::new("ftp://127.0.0.1:21"),
        Endpoint::new(format!("{}/?version=2", url[1])),
        Endpoint::new(url[1].as_str()).with_weight(tower_lb::MAX_WEIGHT + 1),
        Endpoint::new(url[1].as_str()).with_weight(2),
        // The same address again (a registration left behind): the first
        // listing's weight and labels stay.
        Endpoint::new(url[0].as_str())
            .with_weight(5)
            .with_label("listing", "second"),
    ]))
    .unwrap();
    eventually(|| balancer.stats().discovery.is_some_and(|d| d.refreshes == 1)).await;
    let stats = balancer.stats();
    let discovery = stats.discovery.clone().unwrap();
    assert_eq!(
        (discovery.skipped, discovery.errors),
        (4, 0),
        "{discovery:?}"
    );
    assert_eq!(urls(&balancer), url);
    let first = stats.endpoint(&url[0]).unwrap();
    assert_eq!(
        (first.weight, first.labels.get("listing")),
        (1, Some("first"))
    );
    assert_eq!(stats.endpoint(&url[1]).unwrap().weight, 2);
    let client = client(&balancer);
    for _ in 0..30 {
        send(&client, "/").await.expect("the good endpoints serve");
    }
    assert_eq!(
        (received(&backends[0]).await, received(&backends[1]).await),
        (10, 20)
    );

    // A set with no valid endpoint at all keeps the last good set.
    sets.unbounded_send(Ok(vec![Endpoint::new("ftp://127.0.0.1:21")]))
        .unwrap();
    eventually(|| balancer.stats().discovery.is_some_and(|d| d.errors == 1)).await;
    assert_eq!(urls(&balancer), url);
    assert_eq!(balancer.stats().discovery.unwrap().skipped, 5);
}

#[tokio::test(start_paused = true)]
async fn a_second_source_replaces_the_first() {
    let balancer = Balancer::builder().build().unwrap();
    let (first, source): (Sets, _) = mpsc::unbounded();
    balancer.discover(source).unwrap();
    first
        .unbounded_send(Ok(vec![Endpoint::new("http://127.0.0.1:8081")]))
        .unwrap();
    eventually(|| urls(&balancer) == ["http://127.0.0.1:8081"]).await;
    let (second, source): (Sets, _) = mpsc::unbounded();
    balancer.discover(source).unwrap();
    // The first source's task is stopped: its stream is dropped.
    eventually(|| first.is_closed()).await;
    second
        .unbounded_send(Ok(vec![Endpoint::new("http://127.0.0.1:8082")]))
        .unwrap();
    eventually(|| urls(&balancer) == ["http://127.0.0.1:8082"]).await;
    assert_eq!(balancer.stats().discovery.unwrap().refreshes, 1);
}

/// A user's source with a bug: it hands out `set`, then panics when polled
/// again (or at once in `into_sets`, with `panic_at_start`).
struct Buggy {
    set: Vec<Endpoint>,
    panic_at_start: bool,
}

impl EndpointSource for Buggy {
    fn into_sets(self, _: RefreshHints) -> BoxStream<'static, Result<Vec<Endpoint>, BoxError>> {
        assert!(!self.panic_at_start, "the registry client is misconfigured");
        let mut set = Some(self.set);
        stream::poll_fn(move |_| match set.take() {
            Some(set) => std::task::Poll::Ready(Some(Ok(set))),
            None => panic!("registry answer out of range: {}", 7),
        })
        .boxed()
    }
}

#[tokio::test(start_paused = true)]
async fn a_source_that_panics_is_a_counted_error_and_the_last_good_set_keeps_serving() {
    let backends = backends(2).await;
    let url: Vec<String> = backends.iter().map(|b| b.uri()).collect();
    let balancer = Balancer::builder().build().unwrap();
    balancer
        .discover(Buggy {
            set: set(&url),
            panic_at_start: false,
        })
        .unwrap();
    eventually(|| balancer.stats().discovery.is_some_and(|d| d.ended)).await;
    let discovery = balancer.stats().discovery.unwrap();
    assert_eq!((discovery.refreshes, discovery.errors), (1, 1));
    assert_eq!(
        discovery.last_error.as_deref(),
        Some("the discovery task panicked (its source, or a policy building the set): registry answer out of range: 7")
    );
    assert!(discovery.last_error_at.is_some());
    assert_eq!(urls(&balancer), url);
    let client = client(&balancer);
    for _ in 0..10 {
        send(&client, "/").await.expect("the last good set serves");
    }
    assert_eq!(
        (received(&backends[0]).await, received(&backends[1]).await),
        (5, 5)
    );

    // A source that panics in `into_sets` itself: counted the same way,
    // and the set it would have replaced stays.
    balancer
        .discover(Buggy {
            set: Vec::new(),
            panic_at_start: true,
        })
        .unwrap();
    eventually(|| balancer.stats().discovery.is_some_and(|d| d.ended)).await;
    let discovery = balancer.stats().discovery.unwrap();
    assert_eq!((discovery.refreshes, discovery.errors), (0, 1));
    assert!(discovery
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("the registry client is misconfigured")));
    assert_eq!(urls(&balancer), url);
    send(&client, "/").await.expect("the last good set serves");
}

/// `ready` waits for the first applied set: not after an error, nor after
/// a set with no valid endpoint; then at once, on every clone.
#[tokio::test(start_paused = true)]
async fn ready_resolves_with_the_first_applied_set_and_a_time_limit_gives_the_last_error() {
    let backends = backends(1).await;
    let balancer = Balancer::builder().build().unwrap();
    let (sets, source): (Sets, _) = mpsc::unbounded();
    let discovery = balancer.discover(source).unwrap();
    assert!(!discovery.is_ready());
    sets.unbounded_send(Err(std::io::Error::other("registry unreachable")))
        .unwrap();
    sets.unbounded_send(Ok(vec![Endpoint::new("ftp://127.0.0.1:21")]))
        .unwrap();
    let waited = discovery.ready_within(Duration::from_secs(2)).await;
    let Err(Error::DiscoveryNotReady { reason, last_error }) = waited else {
        panic!("no set was applied: {waited:?}");
    };
    assert_eq!(reason, NotReadyReason::TimedOut(Duration::from_secs(2)));
    assert_eq!(
        last_error.as_deref(),
        Some("every endpoint of the set was refused (1 skipped)")
    );
    let error = balancer.stats().discovery.unwrap().last_error;
    assert_eq!(error, last_error);

    let waiting = tokio::spawn({
        let discovery = discovery.clone();
        async move { discovery.ready().await }
    });
    sets.unbounded_send(Ok(vec![Endpoint::new(backends[0].uri())]))
        .unwrap();
    waiting
        .await
        .unwrap()
        .expect("ready once the set is applied");
    // No polling: the set is there when `ready` resolves.
    let client = client(&balancer);
    send(&client, "/").await.expect("the first set serves");
    // Later failures change nothing: ready stays ready.
    sets.unbounded_send(Err(std::io::Error::other("down")))
        .unwrap();
    eventually(|| balancer.stats().discovery.unwrap().errors == 2).await;
    discovery.ready().await.unwrap();
    assert!(discovery.is_ready());
}

/// A source that ends, or panics, before any set it yields could be applied:
/// `ready` fails at once with its last error instead of waiting forever; a
/// task replaced by another source's says so.
#[tokio::test(start_paused = true)]
async fn ready_fails_when_the_source_ends_panics_or_is_replaced_before_a_set() {
    let balancer = Balancer::builder().build().unwrap();
    let empty = stream::iter([Ok::<_, std::io::Error>(Vec::new())]);
    let waited = balancer.discover(empty).unwrap().ready().await;
    let Err(Error::DiscoveryNotReady { reason, last_error }) = waited else {
        panic!("the source ended empty: {waited:?}");
    };
    assert_eq!(reason, NotReadyReason::SourceEnded);
    assert_eq!(
        last_error.as_deref(),
        Some("the source answered with no endpoint")
    );

    let waited = balancer
        .discover(Buggy {
            set: Vec::new(),
            panic_at_start: true,
        })
        .unwrap()
        .ready()
        .await;
    let Err(Error::DiscoveryNotReady { reason, last_error }) = waited else {
        panic!("the source panicked: {waited:?}");
    };
    assert_eq!(reason, NotReadyReason::SourceEnded);
    assert!(last_error
        .as_deref()
        .is_some_and(|e| e.contains("the registry client is misconfigured")));

    let (_first, source): (Sets, _) = mpsc::unbounded();
    let first = balancer.discover(source).unwrap();
    let (_second, source): (Sets, _) = mpsc::unbounded();
    let _second = balancer.discover(source).unwrap();
    let waited = first.ready().await;
    assert!(
        matches!(
            waited,
            Err(Error::DiscoveryNotReady {
                reason: NotReadyReason::Stopped,
                ..
            })
        ),
        "{waited:?}"
    );
}
