//! A backend that crashes while it holds requests: GETs it held are answered
//! by the other backends, POSTs fail with `MayHaveBeenProcessed` and are
//! never sent again. Real hyper servers on loopback; the backends' own
//! counters say what each received.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::{Layer, ServiceExt};
use tower_lb::{Balancer, Error, Policy, Retries};

/// An HTTP/1 server on 127.0.0.1 that counts requests by method; if
/// `holds`, it never answers, until [`CrashingBackend::crash`] drops every
/// connection and the listener, as a killed process would.
struct Backend {
    addr: SocketAddr,
    gets: Arc<AtomicUsize>,
    posts: Arc<AtomicUsize>,
    crash: watch::Sender<bool>,
}

impl Backend {
    async fn start(holds: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (crash, crashed) = watch::channel(false);
        let (gets, posts) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let counters = (gets.clone(), posts.clone());
        let mut stop = crashed.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => return,
                    },
                    _ = stop.changed() => return,
                };
                let (gets, posts) = counters.clone();
                let mut stop = crashed.clone();
                tokio::spawn(async move {
                    let answer = service_fn(move |request: http::Request<_>| {
                        let counter = if request.method() == http::Method::POST {
                            &posts
                        } else {
                            &gets
                        };
                        counter.fetch_add(1, Ordering::SeqCst);
                        async move {
                            if holds {
                                std::future::pending::<()>().await;
                            }
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
                        }
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), answer);
                    tokio::select! {
                        _ = connection => {}
                        // Dropping the connection closes the socket.
                        _ = stop.changed() => {}
                    }
                });
            }
        });
        Backend {
            addr,
            gets,
            posts,
            crash,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn crash(&self) {
        let _ = self.crash.send(true);
    }

    fn received(&self, method: &http::Method) -> usize {
        let counter = if method == http::Method::POST {
            &self.posts
        } else {
            &self.gets
        };
        counter.load(Ordering::SeqCst)
    }
}

const REQUESTS: usize = 30;

/// Three backends in round robin, the first of which holds its requests;
/// `REQUESTS` requests with `method` sent at once from tasks on both
/// worker threads. Once every request has reached a backend, the first
/// crashes with its share (about a third: each thread keeps its own turn)
/// held. Returns the backends, how many requests the first held, and each
/// request's result.
async fn crash_with_requests_in_flight(
    method: http::Method,
) -> (Vec<Backend>, usize, Balancer, Vec<Result<u16, Error>>) {
    let backends = vec![
        Backend::start(true).await,
        Backend::start(false).await,
        Backend::start(false).await,
    ];
    let balancer = backends
        .iter()
        .fold(Balancer::builder(), |b, backend| b.endpoint(backend.url()))
        .policy(Policy::round_robin())
        .retry(Retries::default())
        .build()
        .unwrap();
    let client = balancer.layer().layer(reqwest::Client::new());
    let mut requests = Vec::new();
    for i in 0..REQUESTS {
        let url = reqwest::Url::parse(&format!("http://backend/orders/{i}")).unwrap();
        let mut request = reqwest::Request::new(method.clone(), url);
        *request.body_mut() = Some(reqwest::Body::from(format!("order {i}")));
        let client = client.clone();
        requests.push(tokio::spawn(async move {
            client
                .oneshot(request)
                .await
                .map(|response| response.status().as_u16())
        }));
    }
    let received = || backends.iter().map(|b| b.received(&method)).sum::<usize>();
    let mut waited = 0;
    while received() < REQUESTS {
        assert!(waited < 1_000, "the requests never all reached a backend");
        tokio::time::sleep(Duration::from_millis(5)).await;
        waited += 1;
    }
    let held = backends[0].received(&method);
    assert!(
        (REQUESTS / 3 - 2..=REQUESTS / 3 + 2).contains(&held),
        "round robin gives the first backend about a third, held {held}"
    );
    backends[0].crash();
    let mut results = Vec::new();
    for request in requests {
        results.push(request.await.unwrap());
    }
    (backends, held, balancer, results)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_held_by_a_crashing_backend_are_all_answered_by_the_others() {
    let (backends, held, balancer, results) =
        crash_with_requests_in_flight(http::Method::GET).await;
    let errors: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
    assert!(errors.is_empty(), "caller errors: {errors:?}");
    assert!(results.iter().all(|r| matches!(r, Ok(200))));
    // The held third was sent again, to the two others.
    let get = http::Method::GET;
    assert_eq!(backends[0].received(&get), held);
    assert_eq!(
        backends[1].received(&get) + backends[2].received(&get),
        REQUESTS
    );
    let stats = balancer.stats();
    assert!(stats.endpoints.iter().all(|e| e.in_flight == 0));
    let crashed = stats.endpoint(backends[0].url()).unwrap();
    assert_eq!(crashed.failures.closed, held as u64);
    assert_eq!(crashed.failures.connect, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_held_by_a_crashing_backend_fail_as_may_have_been_processed_and_are_not_sent_again() {
    let (backends, held, balancer, results) =
        crash_with_requests_in_flight(http::Method::POST).await;
    let processed_maybe = results
        .iter()
        .filter(|r| matches!(r, Err(Error::MayHaveBeenProcessed { .. })))
        .count();
    assert_eq!(processed_maybe, held, "{results:?}");
    assert_eq!(
        results.iter().filter(|r| matches!(r, Ok(200))).count(),
        REQUESTS - held
    );
    // Every POST reached exactly one backend: none was sent twice.
    let post = http::Method::POST;
    assert_eq!(backends[0].received(&post), held);
    assert_eq!(
        backends[1].received(&post) + backends[2].received(&post),
        REQUESTS - held
    );
    let stats = balancer.stats();
    assert!(stats.endpoints.iter().all(|e| e.in_flight == 0));
    assert_eq!(
        stats.endpoint(backends[0].url()).unwrap().failures.closed,
        held as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_with_an_idempotency_key_is_sent_again_after_a_crash() {
    let backends = [Backend::start(true).await, Backend::start(false).await];
    let balancer = backends
        .iter()
        .fold(Balancer::builder(), |b, backend| b.endpoint(backend.url()))
        .policy(Policy::round_robin())
        .build()
        .unwrap();
    let client = balancer.layer().layer(reqwest::Client::new());
    let mut request = reqwest::Request::new(
        http::Method::POST,
        reqwest::Url::parse("http://backend/orders").unwrap(),
    );
    request
        .headers_mut()
        .insert("idempotency-key", http::HeaderValue::from_static("order-7"));
    *request.body_mut() = Some(reqwest::Body::from("order 7"));
    let sent = tokio::spawn(client.oneshot(request));
    while backends[0].received(&http::Method::POST) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    backends[0].crash();
    let response = sent.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(backends[1].received(&http::Method::POST), 1);
}

/// A request body that fails after its first chunk: the caller's own error.
struct FailingBody {
    sent: bool,
}

impl hyper::body::Body for FailingBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        if self.sent {
            return std::task::Poll::Ready(Some(Err(std::io::Error::other(
                "the caller's stream failed",
            ))));
        }
        self.sent = true;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(
            b"part",
        )))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_request_body_is_the_callers_error_and_charges_no_endpoint() {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use tower_lb::OutlierDetection;

    let backend = Backend::start(false).await;
    let balancer = Balancer::builder()
        .endpoint(backend.url())
        .outlier_detection(OutlierDetection::default().consecutive_failures(1))
        .build()
        .unwrap();
    let hyper_client: Client<_, FailingBody> = Client::builder(TokioExecutor::new()).build_http();
    let client = balancer.layer().layer(hyper_client);
    for _ in 0..5 {
        let request = http::Request::post("/upload")
            .body(FailingBody { sent: false })
            .unwrap();
        let error = client.clone().oneshot(request).await.unwrap_err();
        assert!(matches!(error, Error::Client { .. }), "{error:?}");
    }
    let stats = balancer.stats();
    let endpoint = &stats.endpoints[0];
    assert_eq!(endpoint.client_errors, 5);
    assert_eq!(endpoint.failures.total(), 0);
    assert_eq!(endpoint.requests, 5);
    assert!(!endpoint.ejected);
    assert_eq!(endpoint.latency_ewma, None);
    // Every request ends as exactly one outcome, client errors included.
    assert_eq!(endpoint.in_flight, 0);
    assert_eq!(
        endpoint.requests,
        endpoint.successes
            + endpoint.failures.total()
            + endpoint.cancelled
            + endpoint.client_errors
    );
}
