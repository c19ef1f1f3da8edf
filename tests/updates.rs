//! Changing the endpoint set at runtime, with requests in flight.

use crate::support;

use std::time::Duration;

use futures::channel::mpsc;
use support::*;
use tower_lb::{Balancer, Change, Error};
use wiremock::ResponseTemplate;

const SLOW: Duration = Duration::from_millis(300);

/// Starts `count` requests in the background.
fn spawn_requests(
    client: &Client,
    count: usize,
) -> Vec<tokio::task::JoinHandle<Result<String, Error>>> {
    (0..count)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { send(&client, "/").await })
        })
        .collect()
}

async fn join_all(handles: Vec<tokio::task::JoinHandle<Result<String, Error>>>) -> Vec<String> {
    let mut names = Vec::new();
    for h in handles {
        names.push(h.await.unwrap().unwrap());
    }
    names
}

#[tokio::test]
async fn removed_endpoint_finishes_its_requests_and_gets_no_more() {
    let slow = backend("a", ResponseTemplate::new(200).set_delay(SLOW)).await;
    let fast = backend("b", ResponseTemplate::new(200)).await;
    let balancer = Balancer::builder().endpoint(slow.uri()).build().unwrap();
    let client = client(&balancer);

    let in_flight = spawn_requests(&client, 8);
    eventually(|| balancer.stats().in_flight() == 8).await;
    balancer.add(fast.uri(), 1).unwrap();
    balancer.remove(slow.uri()).unwrap();
    assert!(balancer.stats().endpoint(slow.uri()).is_none());

    // The eight finish on the removed endpoint, successfully.
    assert_eq!(join_all(in_flight).await, vec!["a"; 8]);
    // Everything after the removal goes to the endpoint that is left.
    for _ in 0..20 {
        assert_eq!(send(&client, "/").await.unwrap(), "b");
    }
    assert_eq!(received(&slow).await, 8);
    assert_eq!(received(&fast).await, 20);
    assert_settled(&balancer);
}

#[tokio::test]
async fn drained_endpoint_finishes_in_flight_requests_and_gets_no_new_ones() {
    let slow = backend("a", ResponseTemplate::new(200).set_delay(SLOW)).await;
    let fast = backend("b", ResponseTemplate::new(200)).await;
    let balancer = Balancer::builder()
        .endpoint(slow.uri())
        .endpoint(fast.uri())
        .build()
        .unwrap();
    let client = client(&balancer);

    let in_flight = spawn_requests(&client, 10);
    eventually(|| balancer.stats().endpoint(slow.uri()).unwrap().in_flight == 5).await;
    balancer.drain(slow.uri()).unwrap();

    for _ in 0..20 {
        assert_eq!(send(&client, "/").await.unwrap(), "b");
    }
    let names = join_all(in_flight).await;
    assert_eq!(names.iter().filter(|n| *n == "a").count(), 5);

    let drained = balancer.stats().endpoint(slow.uri()).unwrap();
    assert_eq!(drained.weight, 0);
    assert_eq!(
        (drained.requests, drained.successes, drained.in_flight),
        (5, 5, 0)
    );
    assert_eq!(received(&slow).await, 5);

    // Given a weight again, it is back in the rotation.
    balancer.set_weight(slow.uri(), 1).unwrap();
    let mut back = 0;
    for _ in 0..4 {
        back += usize::from(send(&client, "/").await.unwrap() == "a");
    }
    assert_eq!(back, 2);
    assert_settled(&balancer);
}

#[tokio::test]
async fn reweight_and_add_change_the_shares_exactly() {
    let servers = backends(3).await;
    let balancer = Balancer::builder()
        .endpoint(servers[0].uri())
        .endpoint(servers[1].uri())
        .build()
        .unwrap();
    let client = client(&balancer);
    for _ in 0..100 {
        send(&client, "/").await.unwrap();
    }
    assert_eq!(
        [received(&servers[0]).await, received(&servers[1]).await],
        [50, 50]
    );

    balancer.set_weight(servers[1].uri(), 3).unwrap();
    for _ in 0..400 {
        send(&client, "/").await.unwrap();
    }
    assert_eq!(
        [received(&servers[0]).await, received(&servers[1]).await],
        [150, 350]
    );

    balancer.add(servers[2].uri(), 4).unwrap();
    for _ in 0..800 {
        send(&client, "/").await.unwrap();
    }
    let counts = [
        received(&servers[0]).await,
        received(&servers[1]).await,
        received(&servers[2]).await,
    ];
    assert_eq!(counts, [250, 650, 400]);
}

#[tokio::test]
async fn updates_never_fail_requests_that_are_flowing() {
    let servers = backends(4).await;
    let urls: Vec<String> = servers.iter().map(|s| s.uri()).collect();
    let balancer = Balancer::builder()
        .endpoint(&urls[0])
        .endpoint(&urls[1])
        .build()
        .unwrap();
    let client = client(&balancer);

    // Keep two endpoints always present; churn the other two meanwhile.
    let churn = tokio::spawn({
        let balancer = balancer.clone();
        let urls = urls.clone();
        async move {
            for round in 0..200u32 {
                let _ = balancer.add(&urls[2], 1 + round % 3);
                let _ = balancer.set_weight(&urls[3], round % 2);
                tokio::task::yield_now().await;
                let _ = balancer.remove(&urls[2]);
                let _ = balancer.add(&urls[3], 2);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    let results = send_many(&client, 3_000, 32).await;
    churn.await.unwrap();
    assert!(
        results.iter().all(|r| r.is_ok()),
        "a request failed during updates"
    );
    assert_settled(&balancer);
}

/// `follow` called as generic code over tower's `Discover` calls it (a
/// `Stream` of `Result<Change>` is one).
async fn follow_any<D>(balancer: &Balancer, discover: D) -> Result<(), D::Error>
where
    D: tower::discover::Discover<Key = String, Service = u32>,
{
    balancer.follow(discover).await
}

#[tokio::test]
async fn discovery_stream_drives_the_set() {
    let servers = backends(2).await;
    let (a, b) = (servers[0].uri(), servers[1].uri());
    let balancer = Balancer::builder().build().unwrap();
    let client = client(&balancer);
    assert!(matches!(
        send(&client, "/").await,
        Err(Error::NoEndpointAvailable)
    ));

    let (tx, rx) = mpsc::unbounded::<Result<Change<String, u32>, &'static str>>();
    let follower = tokio::spawn({
        let balancer = balancer.clone();
        async move { follow_any(&balancer, rx).await }
    });

    tx.unbounded_send(Ok(Change::Insert(a.clone(), 1))).unwrap();
    tx.unbounded_send(Ok(Change::Insert(b.clone(), 1))).unwrap();
    eventually(|| balancer.stats().endpoints.len() == 2).await;
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(send(&client, "/").await.unwrap());
    }
    names.sort();
    assert_eq!(names, ["a", "a", "b", "b"]);

    // Insert of a known endpoint changes its weight; a bad record is skipped.
    tx.unbounded_send(Ok(Change::Insert("not a url".into(), 1)))
        .unwrap();
    tx.unbounded_send(Ok(Change::Insert(a.clone(), 0))).unwrap();
    eventually(|| balancer.stats().endpoint(&a).unwrap().weight == 0).await;
    assert_eq!(balancer.stats().endpoints.len(), 2);
    for _ in 0..4 {
        assert_eq!(send(&client, "/").await.unwrap(), "b");
    }

    tx.unbounded_send(Ok(Change::Remove(a.clone()))).unwrap();
    eventually(|| balancer.stats().endpoints.len() == 1).await;

    // The stream's own error ends the loop and comes back to the caller.
    tx.unbounded_send(Err("registry unreachable")).unwrap();
    assert_eq!(follower.await.unwrap(), Err("registry unreachable"));
    assert_eq!(send(&client, "/").await.unwrap(), "b");
}

#[tokio::test]
async fn a_batch_with_one_bad_change_applies_nothing() {
    let balancer = Balancer::builder()
        .endpoint("http://127.0.0.1:9001")
        .build()
        .unwrap();
    let result = balancer.apply([
        Change::Insert("http://127.0.0.1:9002", 1),
        Change::Insert("http://127.0.0.1:9003", 20_000),
    ]);
    assert!(matches!(
        result,
        Err(Error::InvalidWeight { weight: 20_000, .. })
    ));
    assert_eq!(balancer.stats().endpoints.len(), 1);

    balancer
        .apply([
            Change::Insert("http://127.0.0.1:9002", 1),
            Change::Remove("http://127.0.0.1:9001"),
            Change::Remove("http://127.0.0.1:9999"), // absent: nothing to do
        ])
        .unwrap();
    let urls: Vec<String> = balancer
        .stats()
        .endpoints
        .into_iter()
        .map(|e| e.url)
        .collect();
    assert_eq!(urls, ["http://127.0.0.1:9002"]);
}
