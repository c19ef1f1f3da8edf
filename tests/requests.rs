//! What the balancer does to requests: rewriting, both request types,
//! `poll_ready`, and the typed errors for bad configuration.

use crate::support;

use std::future::Ready;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use support::*;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_lb::{Balancer, BoxError, Error, MAX_WEIGHT};
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, ResponseTemplate};

#[tokio::test]
async fn path_query_and_headers_are_kept_and_the_base_path_is_prefixed() {
    let server = Server::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v2/users/42"))
        .and(query_param("full", "1"))
        .and(header("x-trace", "t1"))
        .respond_with(ResponseTemplate::new(201))
        .expect(1)
        .mount(&server)
        .await;
    let balancer = Balancer::builder()
        .endpoint(format!("{}/api/v2/", server.uri()))
        .build()
        .unwrap();
    let request = http::Request::post("/users/42?full=1")
        .header("x-trace", "t1")
        .body(reqwest::Body::from("{}"))
        .unwrap();
    let response = client(&balancer).oneshot(request).await.unwrap();
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn a_reqwest_client_takes_reqwest_requests_with_a_placeholder_host() {
    let server = Server::start().await;
    Mock::given(path("/users/7"))
        .and(query_param("q", "a b"))
        .respond_with(ResponseTemplate::new(200).set_body_string("seven"))
        .expect(1)
        .mount(&server)
        .await;
    let balancer = Balancer::builder().endpoint(server.uri()).build().unwrap();
    let client = ServiceBuilder::new()
        .layer(balancer.layer())
        .service(reqwest::Client::new());
    let request = reqwest::Client::new()
        .get("https://backend.invalid/users/7?q=a%20b")
        .build()
        .unwrap();
    let response = client.oneshot(request).await.unwrap();
    assert_eq!(response.text().await.unwrap(), "seven");
    assert_eq!(balancer.stats().endpoints[0].successes, 1);
}

/// An `http` service that is ready only when told, or fails when told.
#[derive(Clone)]
struct Gate {
    open: Arc<AtomicBool>,
    broken: bool,
}

impl Service<http::Request<()>> for Gate {
    type Response = http::Response<String>;
    type Error = BoxError;
    type Future = Ready<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.broken {
            Poll::Ready(Err("connection pool closed".into()))
        } else if self.open.load(Ordering::SeqCst) {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn call(&mut self, request: http::Request<()>) -> Self::Future {
        std::future::ready(Ok(http::Response::new(request.uri().to_string())))
    }
}

#[tokio::test]
async fn poll_ready_is_the_wrapped_services() {
    let balancer = Balancer::builder()
        .endpoint("http://127.0.0.1:8081")
        .build()
        .unwrap();
    let open = Arc::new(AtomicBool::new(false));
    let mut service = Layer::layer(
        &balancer.layer(),
        Gate {
            open: open.clone(),
            broken: false,
        },
    );
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(service.poll_ready(&mut cx).is_pending());
    open.store(true, Ordering::SeqCst);
    assert!(matches!(service.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    // A generic `http` service sees the rewritten URI.
    let response = service
        .call(http::Request::get("/x?y=1").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.body(), "http://127.0.0.1:8081/x?y=1");

    let mut broken = Layer::layer(&balancer.layer(), Gate { open, broken: true });
    match broken.poll_ready(&mut cx) {
        Poll::Ready(Err(Error::NotReady(source))) => {
            assert_eq!(source.to_string(), "connection pool closed")
        }
        other => panic!("expected NotReady, got {other:?}"),
    }
}

#[test]
fn bad_configuration_gets_a_typed_error() {
    let build = |urls: &[(&str, u32)]| {
        urls.iter()
            .fold(Balancer::builder(), |b, (url, w)| {
                b.endpoint_weighted(url, *w)
            })
            .build()
            .map(|_| ())
    };
    assert!(matches!(
        build(&[("localhost:8080", 1)]),
        Err(Error::InvalidUrl { .. })
    ));
    assert!(matches!(
        build(&[("http://127.0.0.1:8080", 1), ("not a url", 1)]),
        Err(Error::InvalidUrl { .. })
    ));
    assert!(matches!(
        build(&[("http://127.0.0.1:8080", 0), ("http://127.0.0.1:8081", 0)]),
        Err(Error::ZeroTotalWeight)
    ));
    assert!(matches!(
        build(&[("http://127.0.0.1:8080", MAX_WEIGHT + 1)]),
        Err(Error::InvalidWeight { weight, .. }) if weight == MAX_WEIGHT + 1
    ));
    // Two spellings of one endpoint are one endpoint.
    match build(&[("http://LocalHost", 1), ("http://localhost:80/", 2)]) {
        Err(Error::DuplicateEndpoint { url, .. }) => assert_eq!(url, "http://localhost:80"),
        other => panic!("expected a duplicate, got {other:?}"),
    }
    // An empty list is allowed, and a drained endpoint beside a live one.
    assert!(build(&[]).is_ok());
    assert!(build(&[("http://127.0.0.1:8080", 0), ("http://127.0.0.1:8081", 1)]).is_ok());

    let balancer = Balancer::builder()
        .endpoint("http://127.0.0.1:8080")
        .build()
        .unwrap();
    assert!(matches!(
        balancer.add("http://127.0.0.1:8080", 1),
        Err(Error::DuplicateEndpoint { .. })
    ));
    assert!(matches!(
        balancer.remove("http://127.0.0.1:9"),
        Err(Error::UnknownEndpoint { .. })
    ));
    assert!(matches!(
        balancer.set_weight("http://127.0.0.1:8080", u32::MAX),
        Err(Error::InvalidWeight { .. })
    ));
    assert!(matches!(
        balancer.drain("ftp://127.0.0.1"),
        Err(Error::InvalidUrl { .. })
    ));
    // Failed updates leave the set as it was.
    let stats = balancer.stats();
    assert_eq!(stats.endpoints.len(), 1);
    assert_eq!(stats.endpoints[0].weight, 1);
}

#[test]
fn errors_read_well_and_travel_as_box_errors() {
    let err = Balancer::builder()
        .endpoint("http://127.0.0.1:8080/x?y")
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid endpoint URL \"http://127.0.0.1:8080/x?y\": an endpoint URL cannot carry a query"
    );
    let boxed: BoxError = err.into();
    assert!(boxed.downcast_ref::<Error>().is_some());
}

/// Sends one POST with `body` through a balancer over two endpoints, the
/// first of which refuses every connection (an in-process service, so the
/// refusal is certain). Returns the endpoints called, in order.
async fn endpoints_called<B: Send + 'static>(body: B) -> Vec<String> {
    let balancer = Balancer::builder()
        .endpoint("http://127.0.0.1:1")
        .endpoint("http://127.0.0.1:2")
        .policy(tower_lb::Policy::round_robin())
        .build()
        .unwrap();
    let called = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let inner = tower::service_fn({
        let called = called.clone();
        move |request: http::Request<B>| {
            let authority = request.uri().authority().unwrap().to_string();
            called.lock().unwrap().push(authority.clone());
            async move {
                if authority.ends_with(":1") {
                    Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
                } else {
                    Ok(http::Response::new(()))
                }
            }
        }
    });
    let request = http::Request::post("/orders").body(body).unwrap();
    let result = balancer.layer().layer(inner).oneshot(request).await;
    let called = called.lock().unwrap().clone();
    assert_eq!(result.is_ok(), called.len() == 2, "{called:?}");
    called
}

#[tokio::test]
async fn every_in_memory_body_is_replayed_on_a_refused_connection() {
    use bytes::Bytes;
    use http_body_util::{Empty, Full};
    let both = ["127.0.0.1:1", "127.0.0.1:2"];
    assert_eq!(endpoints_called(()).await, both);
    assert_eq!(endpoints_called("payload").await, both, "&'static str");
    assert_eq!(endpoints_called(&b"payload"[..]).await, both, "&[u8]");
    assert_eq!(endpoints_called(String::from("payload")).await, both);
    assert_eq!(endpoints_called(b"payload".to_vec()).await, both);
    assert_eq!(endpoints_called(Bytes::from("payload")).await, both);
    assert_eq!(endpoints_called(Full::new(Bytes::from("p"))).await, both);
    assert_eq!(endpoints_called(Empty::<Bytes>::new()).await, both);
    assert_eq!(endpoints_called(reqwest::Body::from("payload")).await, both);
    // A body reqwest streams (any wrapped body) cannot be sent twice: one
    // attempt, and its error stands.
    assert_eq!(
        endpoints_called(reqwest::Body::wrap(Full::new(Bytes::from("p")))).await,
        ["127.0.0.1:1"]
    );
}

#[test]
fn debug_output_is_a_short_summary_not_the_tables() {
    let balancer = (0..50)
        .fold(Balancer::builder(), |b, i| {
            b.endpoint(format!("http://127.0.0.1:{}", 9000 + i))
        })
        .policy(tower_lb::Policy::maglev())
        .build()
        .unwrap();
    let layer = balancer.layer();
    let service = layer.layer(tower::service_fn(|_: http::Request<()>| async {
        Ok::<_, BoxError>(http::Response::new(()))
    }));
    for shown in [
        format!("{balancer:?}"),
        format!("{layer:?}"),
        format!("{:?}", service.balancer()),
    ] {
        assert!(shown.len() < 300, "{} characters: {shown}", shown.len());
        assert!(shown.contains("endpoints: 50"), "{shown}");
    }
    let future = service.clone().call(http::Request::new(()));
    assert!(format!("{future:?}").contains("127.0.0.1:9"));
}

/// A service that cannot be cloned: refuses the connection to port 1,
/// answers elsewhere.
struct NotClone(Arc<std::sync::Mutex<Vec<String>>>);

impl Service<http::Request<()>> for NotClone {
    type Response = http::Response<()>;
    type Error = std::io::Error;
    type Future = Ready<Result<http::Response<()>, std::io::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<()>) -> Self::Future {
        let authority = request.uri().authority().unwrap().to_string();
        self.0.lock().unwrap().push(authority.clone());
        std::future::ready(if authority.ends_with(":1") {
            Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
        } else {
            Ok(http::Response::new(()))
        })
    }
}

#[tokio::test]
async fn an_inner_service_that_is_not_clone_works_without_retries() {
    let balancer = Balancer::builder()
        .endpoint("http://127.0.0.1:1")
        .endpoint("http://127.0.0.1:2")
        .policy(tower_lb::Policy::round_robin())
        .build()
        .unwrap();
    let called = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut service = balancer
        .layer()
        .without_retries()
        .layer(NotClone(called.clone()));
    let first = service.call(http::Request::new(())).await;
    assert!(
        matches!(first, Err(Error::Upstream { .. })),
        "sent once, not retried"
    );
    assert!(service.call(http::Request::new(())).await.is_ok());
    assert_eq!(*called.lock().unwrap(), ["127.0.0.1:1", "127.0.0.1:2"]);
    let stats = balancer.stats();
    assert_eq!(
        stats
            .endpoint("http://127.0.0.1:1")
            .unwrap()
            .failures
            .connect,
        1
    );
}
