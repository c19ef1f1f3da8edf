//! An inner service per endpoint: a hyper HTTP/2 client per backend under
//! the balancer, against small hyper HTTP/2 servers on loopback.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::ServiceExt;
use tower_lb::{Balancer, PerEndpointService, Policy};

use crate::support::RefusingPort;

/// An HTTP/2 (prior knowledge) server on 127.0.0.1 that answers with its
/// name; counts the connections it accepted. Stops with the test's runtime.
struct H2Server {
    url: String,
    connections: Arc<AtomicUsize>,
}

async fn h2_server(name: &'static str) -> H2Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let answer = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let version = request.version();
                    async move {
                        let body = format!("{name} {version:?}");
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), answer)
                    .await;
            });
        }
    });
    H2Server { url, connections }
}

type H2Client = Client<HttpConnector, Empty<Bytes>>;

/// A client that speaks HTTP/2 only: one multiplexed connection per host.
fn h2_client() -> H2Client {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

async fn body_text(response: http::Response<hyper::body::Incoming>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_backend_gets_its_own_http2_client_and_one_connection() {
    let servers = [
        h2_server("a").await,
        h2_server("b").await,
        h2_server("c").await,
    ];
    let balancer = servers
        .iter()
        .enumerate()
        .fold(Balancer::builder(), |b, (i, s)| {
            b.endpoint_weighted(&s.url, i as u32 + 1)
        })
        .policy(Policy::weighted_round_robin())
        .build()
        .unwrap();
    let made: Arc<Mutex<Vec<String>>> = Arc::default();
    let service = balancer.per_endpoint({
        let made = made.clone();
        move |url: &str| {
            made.lock().unwrap().push(url.to_owned());
            h2_client()
        }
    });

    let answers: Vec<String> = futures::stream::iter(0..600)
        .map(|_| {
            let service = service.clone();
            async move {
                let request = http::Request::get("/hello").body(Empty::new()).unwrap();
                body_text(service.oneshot(request).await.unwrap()).await
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;

    let mut per_backend: HashMap<String, usize> = HashMap::new();
    for answer in answers {
        *per_backend.entry(answer).or_default() += 1;
    }
    // Weights 1:2:3, every answer over HTTP/2.
    assert_eq!(
        per_backend,
        HashMap::from([
            ("a HTTP/2.0".to_owned(), 100),
            ("b HTTP/2.0".to_owned(), 200),
            ("c HTTP/2.0".to_owned(), 300)
        ])
    );
    // One client made per endpoint, however many requests raced for it,
    // and each holds one connection to its backend.
    let mut made = made.lock().unwrap().clone();
    made.sort();
    let mut urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
    urls.sort();
    assert_eq!(made, urls);
    for server in &servers {
        assert_eq!(
            server.connections.load(Ordering::Relaxed),
            1,
            "{}",
            server.url
        );
    }
    assert_eq!(balancer.stats().in_flight(), 0);
}

#[tokio::test]
async fn a_refused_connection_is_retried_through_the_next_endpoints_client() {
    let up = h2_server("up").await;
    let refusing = RefusingPort::new();
    let down = refusing.url.clone();
    let balancer = Balancer::builder()
        .endpoint(&down)
        .endpoint(&up.url)
        .policy(Policy::round_robin())
        .build()
        .unwrap();
    let service = balancer.per_endpoint(|_: &str| h2_client());
    for _ in 0..10 {
        let request = http::Request::get("/").body(Empty::new()).unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(body_text(response).await, "up HTTP/2.0");
    }
    let stats = balancer.stats();
    assert!(stats.endpoint(&down).unwrap().failures.connect >= 1);
    assert_eq!(stats.endpoint(&up.url).unwrap().successes, 10);
}

#[tokio::test]
async fn a_retry_happens_after_the_service_and_the_balancer_are_dropped() {
    let up = h2_server("up").await;
    let refusing = RefusingPort::new();
    let down = refusing.url.clone();
    for _ in 0..10 {
        // The refusing endpoint takes most first attempts; the response
        // future is all that is left when the retry is decided.
        let balancer = Balancer::builder()
            .endpoint_weighted(down.as_str(), 100)
            .endpoint_weighted(up.url.as_str(), 1)
            .build()
            .unwrap();
        let service = balancer.per_endpoint(|_: &str| h2_client());
        drop(balancer);
        let request = http::Request::get("/").body(Empty::new()).unwrap();
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(body_text(response).await, "up HTTP/2.0");
    }
}

#[tokio::test]
async fn a_removed_endpoints_client_is_dropped_and_a_readded_one_gets_a_new_client() {
    let (a, b) = (h2_server("a").await, h2_server("b").await);
    let balancer = Balancer::builder().endpoint(&a.url).build().unwrap();
    // Each client carries a token; its strong count tells who still holds it.
    let tokens: Arc<Mutex<Vec<Arc<()>>>> = Arc::default();
    let service = balancer.per_endpoint({
        let tokens = tokens.clone();
        move |_: &str| {
            let token = Arc::new(());
            tokens.lock().unwrap().push(token.clone());
            let client = h2_client();
            tower::service_fn(move |request: http::Request<Empty<Bytes>>| {
                let _held = &token;
                client.request(request)
            })
        }
    });
    let send = |service: tower_lb::PerEndpointService<_>| async move {
        let request = http::Request::get("/").body(Empty::new()).unwrap();
        body_text(service.oneshot(request).await.unwrap()).await
    };
    assert_eq!(send(service.clone()).await, "a HTTP/2.0");
    balancer.remove(&a.url).unwrap();
    // Gone with its endpoint, not at some later request.
    assert_eq!(
        Arc::strong_count(&tokens.lock().unwrap()[0]),
        1,
        "a's client is gone"
    );
    balancer.add(&b.url, 1).unwrap();
    assert_eq!(send(service.clone()).await, "b HTTP/2.0");
    balancer.remove(&b.url).unwrap();
    balancer.add(&a.url, 1).unwrap();
    assert_eq!(send(service.clone()).await, "a HTTP/2.0");
    assert_eq!(
        tokens.lock().unwrap().len(),
        3,
        "re-added a got a new client"
    );
}

/// `follow` called as generic code over tower's `Discover` calls it.
async fn follow_any<D>(service: &PerEndpointService<H2Client>, discover: D) -> Result<(), D::Error>
where
    D: tower::discover::Discover<Key = String, Service = H2Client>,
{
    service.follow(discover).await
}

#[tokio::test]
async fn services_from_discovery_serve_their_endpoints_and_leave_with_them() {
    let (a, b) = (h2_server("a").await, h2_server("b").await);
    let balancer = Balancer::builder()
        .policy(Policy::round_robin())
        .build()
        .unwrap();
    let service = balancer.per_endpoint_discovered::<H2Client>();
    let (client_a, client_b) = (h2_client(), h2_client());
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<_, Infallible>>();
    let follower = tokio::spawn({
        let service = service.clone();
        async move { follow_any(&service, rx).await }
    });
    let send = || async {
        let request = http::Request::get("/").body(Empty::new()).unwrap();
        body_text(service.clone().oneshot(request).await.unwrap()).await
    };
    let settled = |n: usize| {
        let balancer = balancer.clone();
        async move {
            for _ in 0..100_000 {
                if balancer.stats().endpoints.len() == n {
                    return;
                }
                tokio::task::yield_now().await;
            }
            panic!("discovery did not reach {n} endpoints");
        }
    };

    tx.unbounded_send(Ok(tower::discover::Change::Insert(a.url.clone(), client_a)))
        .unwrap();
    tx.unbounded_send(Ok(tower::discover::Change::Insert(b.url.clone(), client_b)))
        .unwrap();
    settled(2).await;
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..4 {
        seen.push(send().await);
    }
    seen.sort();
    assert_eq!(
        seen,
        ["a HTTP/2.0", "a HTTP/2.0", "b HTTP/2.0", "b HTTP/2.0"]
    );

    tx.unbounded_send(Ok(tower::discover::Change::Remove(a.url.clone())))
        .unwrap();
    settled(1).await;
    for _ in 0..4 {
        assert_eq!(send().await, "b HTTP/2.0");
    }
    // Each discovered client held one connection to its backend.
    assert_eq!(a.connections.load(Ordering::Relaxed), 1);
    assert_eq!(b.connections.load(Ordering::Relaxed), 1);
    drop(tx);
    follower.await.unwrap().unwrap();

    // An endpoint added some other way has no service: a clear error.
    balancer.add(&a.url, 1).unwrap();
    let mut failures = 0;
    for _ in 0..4 {
        let request = http::Request::get("/").body(Empty::new()).unwrap();
        if let Err(error) = service.clone().oneshot(request).await {
            assert!(matches!(error, tower_lb::Error::NotReady(_)), "{error}");
            failures += 1;
        }
    }
    assert_eq!(failures, 2, "round robin: every other request goes to a");
}
