//! Balanced gRPC clients (feature `tonic`) against real tonic servers on
//! loopback: a generated client over `Balancer::grpc()`, outcomes read from
//! `grpc-status`, a streaming call counted in flight until its end.
//!
//! The servers, sockets and connections are real, so these tests run on
//! the real clock: they wait on events, and poll with deadlines where a
//! time must pass (an ejection's end), never sleeping a fixed time.
#![cfg(feature = "tonic")]

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tonic::codegen::tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status};
use tower_lb::{
    BalancedChannel, Balancer, GrpcOptions, OutlierDetection, Policy, RequestKey, SessionKey,
};

use crate::support::RefusingPort;

/// The code generated from tests/proto/echo.proto.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod echo {
    include!("proto/echo.rs");
}

use echo::echo_client::EchoClient;
use echo::echo_server::{Echo, EchoServer};
use echo::{EchoReply, EchoRequest};

/// How a test server answers unary calls: its `Code` as a number.
pub(crate) const ANSWER_OK: u8 = 0;

/// A tonic Echo server on 127.0.0.1 that answers with its name, or with
/// the status code it is told to (switchable while it runs). Its streams
/// send one reply at once and each further one when a permit is added to
/// `stream_gate`. Stops when dropped.
pub(crate) struct EchoBackend {
    pub(crate) url: String,
    pub(crate) answer: Arc<AtomicU8>,
    /// A `grpc-retry-pushback-ms` sent with every error status, when set.
    pub(crate) pushback: Arc<std::sync::Mutex<Option<&'static str>>>,
    pub(crate) stream_gate: Arc<Semaphore>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct EchoService {
    name: String,
    answer: Arc<AtomicU8>,
    pushback: Arc<std::sync::Mutex<Option<&'static str>>>,
    stream_gate: Arc<Semaphore>,
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let code = Code::from(i32::from(self.answer.load(Ordering::Relaxed)));
        if code != Code::Ok {
            let mut metadata = tonic::metadata::MetadataMap::new();
            if let Some(ms) = *self.pushback.lock().unwrap() {
                metadata.insert("grpc-retry-pushback-ms", ms.parse().unwrap());
            }
            let message = format!("{} answers {code:?}", self.name);
            return Err(Status::with_metadata(code, message, metadata));
        }
        Ok(Response::new(EchoReply {
            server: self.name.clone(),
            message: request.into_inner().message,
        }))
    }

    type StreamStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

    async fn stream(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let count = request.get_ref().count;
        let server = self.name.clone();
        let gate = self.stream_gate.clone();
        let replies = futures::stream::unfold(0, move |sent| {
            let (server, gate) = (server.clone(), gate.clone());
            async move {
                if sent >= count {
                    return None;
                }
                if sent > 0 {
                    gate.acquire().await.ok()?.forget();
                }
                let reply = EchoReply {
                    server,
                    message: sent.to_string(),
                };
                Some((Ok(reply), sent + 1))
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }
}

pub(crate) async fn echo_backend() -> EchoBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answer = Arc::new(AtomicU8::new(ANSWER_OK));
    let stream_gate = Arc::new(Semaphore::new(0));
    let pushback = Arc::default();
    let service = EchoService {
        name: url.clone(),
        answer: answer.clone(),
        pushback: Arc::clone(&pushback),
        stream_gate: stream_gate.clone(),
    };
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(EchoServer::new(service))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
    });
    EchoBackend {
        url,
        answer,
        pushback,
        stream_gate,
        task,
    }
}

pub(crate) fn request(message: &str) -> EchoRequest {
    EchoRequest {
        message: message.to_owned(),
        count: 1,
    }
}

/// Calls `unary` `n` times in a row; how many answers each server gave,
/// and the errors' codes.
pub(crate) async fn call_unary(
    client: &mut EchoClient<BalancedChannel>,
    n: usize,
) -> (HashMap<String, usize>, Vec<Code>) {
    let mut served = HashMap::new();
    let mut errors = Vec::new();
    for i in 0..n {
        match client.unary(request(&i.to_string())).await {
            Ok(reply) => *served.entry(reply.into_inner().server).or_default() += 1,
            Err(status) => errors.push(status.code()),
        }
    }
    (served, errors)
}

/// The generated code in tests/proto/echo.rs is what tonic-prost-build
/// makes of echo.proto now: the code is checked in so that building the
/// crate, with any feature, never needs protoc; this test (protoc is
/// installed where the tests run: README) proves it current.
#[test]
fn the_generated_code_is_what_the_proto_gives() {
    let dir = std::env::temp_dir().join(format!("tower-lb-echo-proto-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/proto");
    tonic_prost_build::configure()
        .out_dir(&dir)
        .emit_rerun_if_changed(false)
        .compile_protos(
            &[format!("{proto_dir}/echo.proto")],
            &[proto_dir.to_owned()],
        )
        .expect("protoc and tonic-prost-build compile tests/proto/echo.proto");
    let generated = std::fs::read_to_string(dir.join("echo.rs")).unwrap();
    let checked_in = std::fs::read_to_string(format!("{proto_dir}/echo.rs")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        generated == checked_in,
        "tests/proto/echo.rs is stale: copy the generated file over it"
    );
}

#[tokio::test]
async fn weighted_round_robin_gives_each_server_exactly_its_share_of_calls() {
    let backends = [
        echo_backend().await,
        echo_backend().await,
        echo_backend().await,
    ];
    let balancer = Balancer::builder()
        .endpoint_weighted(&backends[0].url, 1)
        .endpoint_weighted(&backends[1].url, 2)
        .endpoint_weighted(&backends[2].url, 3)
        .build()
        .unwrap();
    let mut client = EchoClient::new(balancer.grpc().unwrap());
    let (served, errors) = call_unary(&mut client, 60).await;
    assert_eq!(errors, []);
    // The answer names the endpoint that gave it.
    let reply = client.unary(request("x")).await.unwrap();
    let served_by = reply.extensions().get::<tower_lb::ServedBy>().unwrap();
    assert_eq!(served_by.url(), reply.get_ref().server);
    let extra = served_by.url().to_owned();
    for (backend, share) in backends.iter().zip([10, 20, 30]) {
        assert_eq!(served.get(&backend.url), Some(&share), "{served:?}");
        let stats = balancer.stats().endpoint(&backend.url).unwrap();
        let calls = share as u64 + u64::from(backend.url == extra);
        assert_eq!((stats.successes, stats.in_flight), (calls, 0));
    }
}

#[tokio::test]
async fn a_server_answering_unavailable_is_ejected_and_readmitted_when_it_recovers() {
    let good = echo_backend().await;
    let bad = echo_backend().await;
    bad.answer.store(Code::Unavailable as u8, Ordering::Relaxed);
    let balancer = Balancer::builder()
        .endpoint(&good.url)
        .endpoint(&bad.url)
        .outlier_detection(
            OutlierDetection::default()
                .consecutive_failures(3)
                .base_ejection_time(Duration::from_millis(300))
                .max_ejection_percent(50),
        )
        .build()
        .unwrap();
    let mut client = EchoClient::new(balancer.grpc().unwrap());
    // Round robin: the bad server's third UNAVAILABLE ejects it.
    let (_, errors) = call_unary(&mut client, 6).await;
    assert_eq!(errors, [Code::Unavailable; 3]);
    let stats = balancer.stats().endpoint(&bad.url).unwrap();
    assert!(stats.ejected, "{stats:?}");
    assert_eq!(stats.failures.server_error, 3);
    // Ejected, it gets no call.
    let (served, errors) = call_unary(&mut client, 20).await;
    assert_eq!((served.get(&good.url), errors.len()), (Some(&20), 0));

    // Recovered, it is back once its ejection ends.
    bad.answer.store(ANSWER_OK, Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (served, errors) = call_unary(&mut client, 2).await;
        assert_eq!(errors, []);
        if served.contains_key(&bad.url) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never re-admitted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = balancer.stats().endpoint(&bad.url).unwrap();
    assert!(!stats.ejected);
    assert_eq!(stats.in_flight, 0);
}

#[tokio::test]
async fn a_server_answering_resource_exhausted_is_held_off_not_ejected() {
    let good = echo_backend().await;
    let busy = echo_backend().await;
    busy.answer
        .store(Code::ResourceExhausted as u8, Ordering::Relaxed);
    let balancer = Balancer::builder()
        .endpoint(&good.url)
        .endpoint(&busy.url)
        .outlier_detection(
            OutlierDetection::default()
                .consecutive_failures(1)
                .max_ejection_percent(50),
        )
        .build()
        .unwrap();
    let mut client = EchoClient::new(balancer.grpc().unwrap());
    let (served, errors) = call_unary(&mut client, 40).await;
    // Its first RESOURCE_EXHAUSTED (no pushback) holds the busy server off
    // for the default 5 s: the good one takes the rest.
    assert_eq!(
        served.get(&good.url).copied().unwrap_or(0) + errors.len(),
        40
    );
    assert!(errors.len() <= 1, "{errors:?}");
    let stats = balancer.stats().endpoint(&busy.url).unwrap();
    assert!(!stats.ejected, "{stats:?}");
    assert_eq!(
        (stats.overloaded, stats.failures.total()),
        (errors.len() as u64, 0)
    );
    assert_eq!(balancer.stats().ejections.total, 0);
}

#[tokio::test]
async fn resource_exhausted_with_pushback_holds_the_server_off_that_long_and_never_ejects_it() {
    let good = echo_backend().await;
    let busy = echo_backend().await;
    busy.answer
        .store(Code::ResourceExhausted as u8, Ordering::Relaxed);
    *busy.pushback.lock().unwrap() = Some("1500");
    let balancer = Balancer::builder()
        .endpoint(&busy.url)
        .endpoint(&good.url)
        .policy(Policy::round_robin())
        .outlier_detection(OutlierDetection::default().consecutive_failures(1))
        .build()
        .unwrap();
    let mut client = EchoClient::new(balancer.grpc().unwrap());
    // Round robin: the first call reaches the busy server.
    let first = client.unary(request("0")).await.unwrap_err();
    assert_eq!(first.code(), Code::ResourceExhausted);
    let held_at = std::time::Instant::now();
    let stats = balancer.stats().endpoint(&busy.url).unwrap();
    let until = stats.held_off_until.expect("held off");
    let hold = until.saturating_duration_since(held_at);
    assert!(
        hold <= Duration::from_millis(1500) && hold > Duration::from_millis(1300),
        "held {hold:?} for a pushback of 1500 ms"
    );
    // While held, every call goes to the good server.
    let mut during = 0;
    while std::time::Instant::now() + Duration::from_millis(100) < until {
        let reply = client.unary(request("x")).await.unwrap();
        assert_eq!(reply.into_inner().server, good.url);
        during += 1;
        if during == 50 {
            break;
        }
    }
    // After it, the busy server gets calls again (and is held again).
    busy.answer.store(ANSWER_OK, Ordering::Relaxed);
    let wait = until.saturating_duration_since(std::time::Instant::now());
    tokio::time::sleep(wait + Duration::from_millis(20)).await;
    let (served, errors) = call_unary(&mut client, 4).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(served.get(&busy.url), Some(&2), "{served:?}");
    let stats = balancer.stats().endpoint(&busy.url).unwrap();
    assert!(!stats.ejected && stats.times_ejected == 0, "{stats:?}");
    assert_eq!((stats.overloaded, stats.failures.total()), (1, 0));
    println!("grpc: RESOURCE_EXHAUSTED with pushback 1500 ms: held {hold:?}, {during} calls meanwhile all to the other server");
}

#[tokio::test]
async fn deadline_exceeded_counts_as_a_timeout() {
    let slow = echo_backend().await;
    slow.answer
        .store(Code::DeadlineExceeded as u8, Ordering::Relaxed);
    let balancer = Balancer::builder().endpoint(&slow.url).build().unwrap();
    let mut client = EchoClient::new(balancer.grpc().unwrap());
    let (_, errors) = call_unary(&mut client, 2).await;
    assert_eq!(errors, [Code::DeadlineExceeded; 2]);
    let stats = balancer.stats().endpoint(&slow.url).unwrap();
    assert_eq!((stats.failures.timeout, stats.in_flight), (2, 0));
}

#[tokio::test]
async fn a_streaming_call_counts_in_flight_until_its_end_and_as_cancelled_when_dropped() {
    let backend = echo_backend().await;
    let balancer = Balancer::builder().endpoint(&backend.url).build().unwrap();
    let mut client = EchoClient::new(balancer.grpc().unwrap());
    let stats = || balancer.stats().endpoint(&backend.url).unwrap();
    let three = EchoRequest {
        message: String::new(),
        count: 3,
    };

    // Read to its end: in flight until the trailers came.
    let mut stream = client.stream(three.clone()).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().message, "0");
    assert_eq!((stats().in_flight, stats().successes), (1, 0));
    backend.stream_gate.add_permits(1);
    assert_eq!(stream.message().await.unwrap().unwrap().message, "1");
    assert_eq!(stats().in_flight, 1);
    backend.stream_gate.add_permits(1);
    assert_eq!(stream.message().await.unwrap().unwrap().message, "2");
    assert!(stream.message().await.unwrap().is_none());
    let ended = stats();
    assert_eq!(
        (ended.in_flight, ended.successes, ended.cancelled),
        (0, 1, 0)
    );

    // Dropped after one message: cancelled, not a failure.
    let mut stream = client.stream(three).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().message, "0");
    assert_eq!(stats().in_flight, 1);
    drop(stream);
    let dropped = stats();
    assert_eq!(
        (
            dropped.in_flight,
            dropped.cancelled,
            dropped.failures.total()
        ),
        (0, 1, 0)
    );
}

#[tokio::test]
async fn calls_with_the_same_metadata_key_reach_the_same_server() {
    let backends = [
        echo_backend().await,
        echo_backend().await,
        echo_backend().await,
    ];
    let balancer = Balancer::builder()
        .endpoint(&backends[0].url)
        .endpoint(&backends[1].url)
        .endpoint(&backends[2].url)
        .policy(Policy::maglev().key(RequestKey::header("x-user-id")))
        .build()
        .unwrap();
    let mut client = EchoClient::new(balancer.grpc().unwrap());
    let mut homes = HashMap::new();
    for round in 0..3 {
        for user in 0..30 {
            let mut call = Request::new(request(&format!("{round}")));
            let id = format!("user-{user}");
            call.metadata_mut().insert("x-user-id", id.parse().unwrap());
            let server = client.unary(call).await.unwrap().into_inner().server;
            // The home the balancer names for the key, on every round.
            let located = balancer.locate(&SessionKey::new(id.as_str())).unwrap();
            assert_eq!(server, *located, "{id}");
            assert_eq!(homes.entry(id).or_insert(server.clone()), &server);
        }
    }
    // The keys spread: every server is some user's home.
    let distinct: std::collections::HashSet<&String> = homes.values().collect();
    assert_eq!(distinct.len(), 3);
}

#[tokio::test]
async fn a_refused_connection_is_unavailable_naming_the_endpoint_and_charged_as_a_connect_error() {
    let refusing = RefusingPort::new();
    let balancer = Balancer::builder()
        .endpoint(&refusing.url)
        .retry(tower_lb::Retries::disabled())
        .build()
        .unwrap();
    let mut client = EchoClient::new(balancer.grpc().unwrap());
    let status = client.unary(request("x")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains(&refusing.url), "{status:?}");
    let source = std::error::Error::source(&status).expect("the balancer's error");
    assert!(
        matches!(
            source.downcast_ref::<tower_lb::Error>(),
            Some(tower_lb::Error::Upstream { endpoint, .. }) if *endpoint == refusing.url
        ),
        "{source:?}"
    );
    let stats = balancer.stats().endpoint(&refusing.url).unwrap();
    assert_eq!((stats.failures.connect, stats.in_flight), (1, 0));
}

#[tokio::test]
async fn no_endpoint_is_unavailable_and_an_endpoint_with_a_path_is_refused() {
    let balancer = Balancer::builder().build().unwrap();
    let mut client = EchoClient::new(balancer.grpc().unwrap());
    let status = client.unary(request("x")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let source = std::error::Error::source(&status).unwrap();
    assert!(matches!(
        source.downcast_ref::<tower_lb::Error>(),
        Some(tower_lb::Error::NoEndpointAvailable)
    ));

    let with_path = Balancer::builder()
        .endpoint("http://127.0.0.1:50051/api")
        .build()
        .unwrap();
    assert!(matches!(
        with_path.grpc(),
        Err(tower_lb::Error::InvalidUrl { ref url, .. }) if url == "http://127.0.0.1:50051/api"
    ));

    // One with a path added later: its calls fail, charged to no endpoint.
    let channel = balancer.grpc().unwrap();
    balancer.add("http://127.0.0.1:50051/api", 1).unwrap();
    let status = EchoClient::new(channel)
        .unary(request("x"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    let stats = balancer
        .stats()
        .endpoint("http://127.0.0.1:50051/api")
        .unwrap();
    assert_eq!(
        (stats.client_errors, stats.failures.total(), stats.in_flight),
        (1, 0, 0)
    );
}

/// An HTTP/2 server on 127.0.0.1 that is not gRPC: it answers every
/// request with `answer`'s response. Stops with the test's runtime.
pub(crate) async fn h2_backend<F>(answer: F) -> String
where
    F: Fn() -> http::Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_: http::Request<hyper::body::Incoming>| {
                    let response = answer();
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    url
}

/// Answers that are not gRPC's, or break it: each has its documented
/// outcome (docs/grpc.md), the caller gets a status, and nothing stays in
/// flight.
#[tokio::test]
async fn answers_that_are_not_grpc_have_their_documented_outcome_and_leave_nothing_in_flight() {
    type Check = fn(&tower_lb::EndpointStats) -> bool;
    type Answer = fn() -> http::Response<Full<Bytes>>;
    let cases: [(&str, Answer, Code, Check); 4] = [
        (
            "200 without grpc-status",
            || http::Response::new(Full::new(Bytes::new())),
            Code::Unknown,
            |s| s.failures.other == 1,
        ),
        (
            "503 from a proxy",
            || {
                http::Response::builder()
                    .status(503)
                    .body(Full::new(Bytes::from_static(b"no healthy upstream")))
                    .unwrap()
            },
            // tonic reads the text as a message and fails on its framing.
            Code::Internal,
            |s| s.failures.server_error == 1,
        ),
        (
            "a malformed grpc-status",
            || {
                http::Response::builder()
                    .header("content-type", "application/grpc")
                    .header("grpc-status", "fourteen")
                    .body(Full::new(Bytes::new()))
                    .unwrap()
            },
            Code::Unknown,
            |s| s.failures.other == 1,
        ),
        (
            "grpc-status out of range",
            || {
                http::Response::builder()
                    .header("content-type", "application/grpc")
                    .header("grpc-status", "99")
                    .body(Full::new(Bytes::new()))
                    .unwrap()
            },
            Code::Unknown,
            |s| s.failures.other == 1,
        ),
    ];
    for (name, answer, code, check) in cases {
        let url = h2_backend(answer).await;
        let balancer = Balancer::builder().endpoint(&url).build().unwrap();
        let mut client = EchoClient::new(balancer.grpc().unwrap());
        let status = client.unary(request("x")).await.unwrap_err();
        assert_eq!(status.code(), code, "{name}: {status:?}");
        let stats = balancer.stats().endpoint(&url).unwrap();
        assert!(check(&stats), "{name}: {stats:?}");
        assert_eq!((stats.in_flight, stats.requests), (0, 1), "{name}");
    }
}

/// A tonic Echo server on 127.0.0.1 that can be killed as a crash kills
/// it: its serve task owns the listener and every connection, so aborting
/// the task closes them all at once, with no GOAWAY, and the port then
/// refuses connections. It can also send a graceful GOAWAY on every open
/// connection, and keep listening ([`KillableBackend::goaway`]) or not
/// ([`KillableBackend::drain`]): hyper's graceful shutdown, whose calls
/// in flight finish. Counts its open connections and the unary calls it
/// answered.
pub(crate) struct KillableBackend {
    pub(crate) url: String,
    addr: std::net::SocketAddr,
    pub(crate) open_connections: Arc<AtomicUsize>,
    /// Bumped for a GOAWAY: a connection accepted before shuts down
    /// gracefully.
    goaways: tokio::sync::watch::Sender<u32>,
    /// Set to stop listening.
    stop_listening: tokio::sync::watch::Sender<bool>,
    pub(crate) answered: Arc<AtomicUsize>,
    /// Unary calls wait, while this is set, for a permit that never comes.
    pub(crate) gated: Arc<std::sync::atomic::AtomicBool>,
    /// Unary calls that entered the handler.
    pub(crate) received: Arc<AtomicUsize>,
    /// Streams send one reply at once and each further one for a permit.
    pub(crate) stream_gate: Arc<Semaphore>,
    /// How long unary calls take, in ms (0 at first).
    pub(crate) delay_ms: Arc<AtomicUsize>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl KillableBackend {
    pub(crate) async fn start() -> Self {
        Self::start_at("127.0.0.1:0".parse().unwrap()).await
    }

    /// A server on `addr` (a killed server's, to start it again).
    async fn start_at(addr: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let url = format!("http://{addr}");
        let backend = KillableService {
            name: url.clone(),
            answered: Arc::default(),
            received: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
            gated: Arc::default(),
            delay_ms: Arc::default(),
            stream_gate: Arc::new(Semaphore::new(0)),
        };
        let open_connections = Arc::new(AtomicUsize::new(0));
        let (answered, received, gated, delay_ms, stream_gate) = (
            backend.answered.clone(),
            backend.received.clone(),
            backend.gated.clone(),
            backend.delay_ms.clone(),
            backend.stream_gate.clone(),
        );
        let routes = tonic::service::Routes::new(EchoServer::new(backend));
        let open = open_connections.clone();
        let (goaways, goaway) = tokio::sync::watch::channel(0u32);
        let (stop_listening, mut stop) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        if *stop.borrow() {
                            break;
                        }
                        let routes = routes.clone();
                        let open = OpenConnection::new(open.clone());
                        let mut goaway = goaway.clone();
                        let born = *goaway.borrow_and_update();
                        connections.spawn(async move {
                            let _open = open;
                            let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                                let mut routes = routes.clone();
                                async move {
                                    tower::Service::call(&mut routes, request.map(tonic::body::Body::new)).await
                                }
                            });
                            let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), service);
                            let mut connection = std::pin::pin!(connection);
                            tokio::select! {
                                _ = connection.as_mut() => return,
                                _ = goaway.wait_for(|g| *g > born) => {}
                            }
                            // GOAWAY; the calls open finish, then it closes.
                            connection.as_mut().graceful_shutdown();
                            let _ = connection.await;
                        });
                    }
                    Some(_) = connections.join_next() => {}
                    _ = stop.changed() => break,
                }
            }
            drop(listener);
            while connections.join_next().await.is_some() {}
        });
        KillableBackend {
            url,
            addr,
            open_connections,
            goaways,
            stop_listening,
            answered,
            gated,
            received,
            delay_ms,
            stream_gate,
            task: std::sync::Mutex::new(Some(task)),
        }
    }

    /// Sends a graceful GOAWAY on every open connection (hyper's graceful
    /// shutdown: the calls open finish, then the connection closes) and
    /// keeps listening, as a server does at a connection's maximum age.
    fn goaway(&self) {
        self.goaways.send_modify(|g| *g += 1);
    }

    /// Drains the server: it stops listening (the port refuses
    /// connections) and sends a graceful GOAWAY on every open connection;
    /// the calls open finish.
    pub(crate) fn drain(&self) {
        self.stop_listening.send_replace(true);
        self.goaway();
    }

    /// Kills the server: every connection closes at once and the port
    /// refuses connections.
    pub(crate) async fn kill(&self) {
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for KillableBackend {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }
}

/// Counts a connection open until dropped (the connection's task ended or
/// was aborted).
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn new(open: Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::SeqCst);
        OpenConnection(open)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct KillableService {
    name: String,
    answered: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    gated: Arc<std::sync::atomic::AtomicBool>,
    delay_ms: Arc<AtomicUsize>,
    stream_gate: Arc<Semaphore>,
}

#[tonic::async_trait]
impl Echo for KillableService {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        self.received.fetch_add(1, Ordering::SeqCst);
        if self.gated.load(Ordering::SeqCst) {
            let _ = self.gate.acquire().await.map(|p| p.forget());
        }
        let delay = self.delay_ms.load(Ordering::SeqCst) as u64;
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        self.answered.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(EchoReply {
            server: self.name.clone(),
            message: request.into_inner().message,
        }))
    }

    type StreamStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

    async fn stream(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let count = request.get_ref().count;
        let server = self.name.clone();
        let gate = self.stream_gate.clone();
        let replies = futures::stream::unfold(0, move |sent| {
            let (server, gate) = (server.clone(), gate.clone());
            async move {
                if sent >= count {
                    return None;
                }
                if sent > 0 {
                    gate.acquire().await.ok()?.forget();
                }
                let reply = EchoReply {
                    server,
                    message: sent.to_string(),
                };
                Some((Ok(reply), sent + 1))
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }
}

/// Waits until `done` holds, polling; panics with `what` after 10 s.
pub(crate) async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sends `total` unary calls, `concurrency` at a time, through `client`;
/// calls `at_half` once half of them are answered. Returns the errors.
pub(crate) async fn burst<F, Fut>(
    client: &EchoClient<BalancedChannel>,
    total: usize,
    concurrency: usize,
    at_half: F,
) -> Vec<Status>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::StreamExt;
    let calls = futures::stream::iter(0..total)
        .map(|i| {
            let mut client = client.clone();
            async move { client.unary(request(&i.to_string())).await.err() }
        })
        .buffer_unordered(concurrency);
    let mut calls = std::pin::pin!(calls);
    let mut errors = Vec::new();
    let mut done = 0;
    let mut at_half = Some(at_half);
    while let Some(error) = calls.next().await {
        errors.extend(error);
        done += 1;
        if done == total / 2 {
            if let Some(at_half) = at_half.take() {
                at_half().await;
            }
        }
    }
    errors
}

/// The goal: a server killed while unary calls run at c=32 costs
/// the caller nothing. Calls that never reached it (refused connections,
/// calls queued on its connection as it closed) go to another endpoint;
/// the calls it held when it died are marked safe to send twice here, so
/// they go again too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_costs_no_caller_error_for_unary_calls_at_concurrency_32() {
    let backends = futures::future::join_all((0..4).map(|_| KillableBackend::start())).await;
    let mut builder = Balancer::builder();
    for backend in &backends {
        builder = builder.endpoint(&backend.url);
    }
    let balancer = builder.build().unwrap();
    let channel = balancer
        .grpc_options(GrpcOptions::new().safe_to_retry(["/echo.Echo/Unary"]))
        .unwrap();
    let client = EchoClient::new(channel);
    let victim = &backends[3];
    let mut answered_before_kill = 0;
    let errors = burst(&client, 4_000, 32, || async {
        victim.kill().await;
        answered_before_kill = victim.answered.load(Ordering::SeqCst);
    })
    .await;
    assert!(
        errors.is_empty(),
        "{} errors: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(answered_before_kill > 0);
    // Nothing new reached it: hyper runs each stream's handler as a task of
    // its own, which the kill does not abort, so the (at most 32) calls it
    // held may still finish their handlers after `kill` returns; their
    // answers go nowhere, and the retries answered every caller.
    let answered_after = victim.answered.load(Ordering::SeqCst);
    assert!(
        answered_after <= answered_before_kill + 32,
        "{answered_after} answered, {answered_before_kill} before the kill"
    );
    let stats = balancer.stats();
    let dead = stats.endpoint(&victim.url).unwrap();
    assert!(dead.ejected, "{dead:?}");
    assert!(dead.failures.connect + dead.failures.closed > 0, "{dead:?}");
    for endpoint in &stats.endpoints {
        assert_eq!(endpoint.in_flight, 0, "{endpoint:?}");
    }
}

/// Unmarked unary calls: the kill fails only calls the dead server may
/// have processed (its connection closed under them:
/// `MayHaveBeenProcessed`); no call fails for a refused connection, and
/// none after those the server held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_fails_only_the_unary_calls_it_may_have_processed() {
    let backends = futures::future::join_all((0..4).map(|_| KillableBackend::start())).await;
    let mut builder = Balancer::builder();
    for backend in &backends {
        builder = builder.endpoint(&backend.url);
    }
    let balancer = builder.build().unwrap();
    let client = EchoClient::new(balancer.grpc().unwrap());
    let victim = &backends[3];
    let errors = burst(&client, 4_000, 32, || victim.kill()).await;
    // At most the calls in flight when it died.
    assert!(errors.len() <= 32, "{} errors", errors.len());
    for status in &errors {
        let source = std::error::Error::source(status).expect("the balancer's error");
        assert!(
            matches!(
                source.downcast_ref::<tower_lb::Error>(),
                Some(tower_lb::Error::MayHaveBeenProcessed { endpoint, .. }) if *endpoint == victim.url
            ),
            "{status:?}"
        );
    }
    let dead = balancer.stats().endpoint(&victim.url).unwrap();
    assert_eq!(dead.failures.closed, errors.len() as u64, "{dead:?}");
    assert_eq!(dead.in_flight, 0);
}

/// A server killed while it holds a unary call and a stream: the unary
/// call fails as "may have been processed" (UNKNOWN), unless marked safe
/// to send twice (then another server answers it); the stream fails at its
/// next message; nothing stays in flight.
#[tokio::test]
async fn a_server_killed_with_calls_in_flight_fails_them_and_leaves_nothing_in_flight() {
    let victim = KillableBackend::start().await;
    let other = KillableBackend::start().await;
    let balancer = Balancer::builder()
        .endpoint(&victim.url)
        .endpoint(&other.url)
        .policy(Policy::round_robin())
        .build()
        .unwrap();
    let client = EchoClient::new(balancer.grpc().unwrap());
    victim.gated.store(true, Ordering::SeqCst);
    let stats = |url: &str| balancer.stats().endpoint(url).unwrap();

    // Round robin: the first call goes to the victim, and waits there.
    let plain = tokio::spawn({
        let mut client = client.clone();
        async move { client.unary(request("plain")).await }
    });
    eventually("the victim holds the first call", || {
        victim.received.load(Ordering::SeqCst) == 1
    })
    .await;
    // The next goes to the other server; the third, marked, to the victim.
    let mut client2 = client.clone();
    client2.unary(request("between")).await.unwrap();
    let marked = tokio::spawn({
        let mut client = client.clone();
        async move {
            let mut call = Request::new(request("marked"));
            call.extensions_mut().insert(tower_lb::Retryable);
            client.unary(call).await
        }
    });
    eventually("the victim holds both calls", || {
        victim.received.load(Ordering::SeqCst) == 2
    })
    .await;
    // A stream to the other server... and one to the victim.
    let three = EchoRequest {
        message: String::new(),
        count: 3,
    };
    let _ = client2.stream(three.clone()).await.unwrap().into_inner();
    let mut stream = client2.stream(three).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.server, victim.url);
    assert_eq!(stats(&victim.url).in_flight, 3);

    victim.kill().await;
    let status = plain.await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    let source = std::error::Error::source(&status).unwrap();
    assert!(
        matches!(
            source.downcast_ref::<tower_lb::Error>(),
            Some(tower_lb::Error::MayHaveBeenProcessed { .. })
        ),
        "{source:?}"
    );
    let reply = marked.await.unwrap().unwrap().into_inner();
    assert_eq!(reply.server, other.url);
    let status = stream.message().await.unwrap_err();
    assert_ne!(status.code(), Code::Ok);
    let dead = stats(&victim.url);
    assert_eq!((dead.in_flight, dead.failures.closed), (0, 3), "{dead:?}");
    assert_eq!(stats(&other.url).in_flight, 0);
}

/// A call that never reaches its endpoint (a refused connection) goes to
/// another; a body past the request buffer is sent once.
#[tokio::test]
async fn a_refused_call_goes_to_another_endpoint_when_its_body_was_kept() {
    let refusing = RefusingPort::new();
    let good = echo_backend().await;
    let balancer = Balancer::builder()
        .endpoint(&refusing.url)
        .endpoint(&good.url)
        .policy(Policy::round_robin())
        .outlier_detection(OutlierDetection::default().consecutive_failures(1000))
        .build()
        .unwrap();
    let mut client = EchoClient::new(balancer.grpc().unwrap());
    let (served, errors) = call_unary(&mut client, 10).await;
    assert_eq!((served.get(&good.url), errors), (Some(&10), vec![]));
    let refused = balancer.stats().endpoint(&refusing.url).unwrap();
    assert_eq!((refused.failures.connect, refused.in_flight), (5, 0));

    // Past the buffer: sent once.
    let mut small = EchoClient::new(
        balancer
            .grpc_options(GrpcOptions::new().request_buffer(64))
            .unwrap(),
    );
    let big = || request(&"x".repeat(100));
    let mut codes = Vec::new();
    for _ in 0..2 {
        codes.push(small.unary(big()).await.err().map(|s| s.code()));
    }
    codes.sort_by_key(|c| c.is_some());
    assert_eq!(codes, [None, Some(Code::Unavailable)]);
    // Within it, both answered.
    for _ in 0..2 {
        small.unary(request("small")).await.unwrap();
    }
}

/// Removing an endpoint drops its channel at once: the server sees its
/// connection closed.
#[tokio::test]
async fn a_removed_endpoints_connection_closes_when_it_leaves_the_set() {
    let leaving = KillableBackend::start().await;
    let staying = KillableBackend::start().await;
    let balancer = Balancer::builder()
        .endpoint(&leaving.url)
        .endpoint(&staying.url)
        .build()
        .unwrap();
    let mut client = EchoClient::new(balancer.grpc().unwrap());
    call_unary(&mut client, 4).await;
    assert_eq!(leaving.open_connections.load(Ordering::SeqCst), 1);
    balancer.remove(&leaving.url).unwrap();
    eventually("the removed endpoint's connection closes", || {
        leaving.open_connections.load(Ordering::SeqCst) == 0
    })
    .await;
    assert_eq!(staying.open_connections.load(Ordering::SeqCst), 1);
    let (served, errors) = call_unary(&mut client, 4).await;
    assert_eq!((served.get(&staying.url), errors), (Some(&4), vec![]));
}

/// Discovery changes the set while calls run: servers added take calls,
/// a removed server's calls end normally, the caller sees no error, and
/// nothing stays in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_changing_the_set_while_calls_run_costs_no_caller_error() {
    use tower_lb::Change;
    let backends = futures::future::join_all((0..4).map(|_| KillableBackend::start())).await;
    let balancer = Balancer::builder()
        .endpoint(&backends[0].url)
        .endpoint(&backends[1].url)
        .build()
        .unwrap();
    let (changes, feed) =
        futures::channel::mpsc::unbounded::<Result<Change<String, u32>, Infallible>>();
    let following = tokio::spawn({
        let balancer = balancer.clone();
        async move { balancer.follow(feed).await }
    });
    let client = EchoClient::new(balancer.grpc().unwrap());
    let errors = burst(&client, 3_000, 32, || async {
        changes
            .unbounded_send(Ok(Change::Insert(backends[2].url.clone(), 1)))
            .unwrap();
        changes
            .unbounded_send(Ok(Change::Insert(backends[3].url.clone(), 2)))
            .unwrap();
        changes
            .unbounded_send(Ok(Change::Remove(backends[0].url.clone())))
            .unwrap();
    })
    .await;
    assert!(errors.is_empty(), "{errors:?}");
    let answered_by_removed = backends[0].answered.load(Ordering::SeqCst);
    assert!(backends[2].answered.load(Ordering::SeqCst) > 0);
    assert!(backends[3].answered.load(Ordering::SeqCst) > 0);
    // The removed server gets nothing more, and its connection closes.
    let (_, errors) = call_unary(&mut client.clone(), 30).await;
    assert!(errors.is_empty());
    assert_eq!(
        backends[0].answered.load(Ordering::SeqCst),
        answered_by_removed
    );
    eventually("the removed server's connection closes", || {
        backends[0].open_connections.load(Ordering::SeqCst) == 0
    })
    .await;
    let stats = balancer.stats();
    assert_eq!(stats.endpoints.len(), 3);
    for endpoint in &stats.endpoints {
        assert_eq!(endpoint.in_flight, 0, "{endpoint:?}");
    }
    drop(changes);
    following.await.unwrap().unwrap();
}

/// A `SessionKey` put in a `tonic::Request`'s extensions reaches the
/// balancer (tonic carries the extensions into the HTTP request).
#[tokio::test]
async fn a_session_key_in_the_tonic_requests_extensions_picks_the_endpoint() {
    let backends = [
        echo_backend().await,
        echo_backend().await,
        echo_backend().await,
    ];
    let balancer = Balancer::builder()
        .endpoint(&backends[0].url)
        .endpoint(&backends[1].url)
        .endpoint(&backends[2].url)
        .policy(Policy::ring_hash().key(RequestKey::session()))
        .build()
        .unwrap();
    let mut client = EchoClient::new(balancer.grpc().unwrap());
    let mut homes = std::collections::HashSet::new();
    for user in 0..30 {
        let key = SessionKey::new(format!("user-{user}"));
        let home = balancer.locate(&key).unwrap();
        for _ in 0..2 {
            let mut call = Request::new(request("x"));
            call.extensions_mut().insert(key);
            let server = client.unary(call).await.unwrap().into_inner().server;
            assert_eq!(server, *home);
        }
        homes.insert(home.to_string());
    }
    assert_eq!(homes.len(), 3);
}

/// A server that answers the first request's stream with a graceful
/// GOAWAY whose last stream id is 0 (RFC 9113 section 6.8: the stream
/// was not processed), written as raw HTTP/2 frames so that the GOAWAY
/// surely comes after the stream was sent. Returns its URL; it stops with
/// the test's runtime.
pub(crate) async fn goaway_backend() -> String {
    goaway_backend_after(Duration::ZERO).await
}

/// [`goaway_backend`], whose GOAWAY comes `delay` after the HEADERS.
async fn goaway_backend_after(delay: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut preface = [0u8; 24];
                if socket.read_exact(&mut preface).await.is_err() {
                    return;
                }
                // Frames until the first HEADERS (type 1).
                loop {
                    let mut head = [0u8; 9];
                    if socket.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    let length = usize::from(head[0]) << 16
                        | usize::from(head[1]) << 8
                        | usize::from(head[2]);
                    let mut payload = vec![0u8; length];
                    if socket.read_exact(&mut payload).await.is_err() {
                        return;
                    }
                    if head[3] == 1 {
                        break;
                    }
                }
                tokio::time::sleep(delay).await;
                let settings = [0, 0, 0, 4, 0, 0, 0, 0, 0];
                // GOAWAY: length 8, type 7, stream 0; last stream id 0, NO_ERROR.
                let goaway = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                let _ = socket.write_all(&settings).await;
                let _ = socket.write_all(&goaway).await;
                let _ = socket.flush().await;
                // Hold the connection a moment, then close it.
                let mut rest = [0u8; 1024];
                while matches!(socket.read(&mut rest).await, Ok(n) if n > 0) {}
            });
        }
    });
    url
}

/// A call caught by a graceful GOAWAY before its stream was processed is
/// sent to another endpoint: the caller sees no error.
#[tokio::test]
async fn a_call_refused_by_a_goaway_goes_to_another_endpoint() {
    let going_away = goaway_backend().await;
    let good = echo_backend().await;
    let balancer = Balancer::builder()
        .endpoint(&going_away)
        .endpoint(&good.url)
        .policy(Policy::round_robin())
        .build()
        .unwrap();
    let mut client = EchoClient::new(balancer.grpc().unwrap());
    let reply = client.unary(request("x")).await.unwrap().into_inner();
    assert_eq!(reply.server, good.url);
    // Sent there once more (its channel connects again: GOAWAY again),
    // then to the other; a connection going away is charged to no
    // endpoint.
    let refused = balancer.stats().endpoint(&going_away).unwrap();
    assert_eq!(
        (
            refused.client_errors,
            refused.failures.total(),
            refused.in_flight
        ),
        (1, 0, 0),
        "{refused:?}"
    );
}

/// How many unary calls the servers answered, together.
fn answered_by_all(backends: &[KillableBackend]) -> usize {
    backends
        .iter()
        .map(|b| b.answered.load(Ordering::SeqCst))
        .sum()
}

/// The goal for a drain: a server that drains while unary calls
/// (not marked safe) run 32 at a time (hyper's graceful shutdown: GOAWAY
/// on its connection, then it stops listening, the calls it holds finish)
/// costs the caller nothing. Every call is answered exactly once, the
/// drained server answers the calls it held and takes no more, and nothing
/// stays in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_server_costs_no_caller_error_and_finishes_the_calls_it_holds() {
    let backends = futures::future::join_all((0..4).map(|_| KillableBackend::start())).await;
    let mut builder = Balancer::builder();
    for backend in &backends {
        backend.delay_ms.store(1, Ordering::SeqCst);
        builder = builder.endpoint(&backend.url);
    }
    let balancer = builder.build().unwrap();
    let client = EchoClient::new(balancer.grpc().unwrap());
    let victim = &backends[3];
    let mut answered_at_drain = 0;
    let errors = burst(&client, 4_000, 32, || async {
        answered_at_drain = victim.answered.load(Ordering::SeqCst);
        victim.drain();
    })
    .await;
    assert!(errors.is_empty(), "{} errors: {:?}", errors.len(), errors);
    assert_eq!(answered_by_all(&backends), 4_000);
    eventually("the drained server's connection closes", || {
        victim.open_connections.load(Ordering::SeqCst) == 0
    })
    .await;
    // It answered every call it took (none was cut), at most the calls
    // open at the drain after it, and it listens no more.
    let answered = victim.answered.load(Ordering::SeqCst);
    assert!(answered_at_drain > 0);
    assert_eq!(victim.received.load(Ordering::SeqCst), answered);
    assert!(
        answered - answered_at_drain <= 32,
        "{answered_at_drain} then {answered}"
    );
    assert!(tokio::net::TcpStream::connect(victim.addr).await.is_err());
    let stats = balancer.stats();
    let drained = stats.endpoint(&victim.url).unwrap();
    assert_eq!(drained.successes, answered as u64, "{drained:?}");
    assert_eq!(drained.failures.closed, 0, "{drained:?}");
    for endpoint in &stats.endpoints {
        assert_eq!(endpoint.in_flight, 0, "{endpoint:?}");
    }
}

/// Servers that send a graceful GOAWAY and keep listening (as at a
/// connection's maximum age), all four at once while unary calls (not
/// marked safe) run 32 at a time: the caller sees no error, every call is
/// answered once, every server takes calls on a new connection after, and
/// nothing stays in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_sending_goaway_and_listening_on_cost_no_caller_error_and_keep_taking_calls() {
    let backends = futures::future::join_all((0..4).map(|_| KillableBackend::start())).await;
    let mut builder = Balancer::builder();
    for backend in &backends {
        backend.delay_ms.store(1, Ordering::SeqCst);
        builder = builder.endpoint(&backend.url);
    }
    let balancer = builder.policy(Policy::round_robin()).build().unwrap();
    let client = EchoClient::new(balancer.grpc().unwrap());
    let mut answered_at_goaway = Vec::new();
    let errors = burst(&client, 4_000, 32, || async {
        for backend in &backends {
            answered_at_goaway.push(backend.answered.load(Ordering::SeqCst));
            backend.goaway();
        }
    })
    .await;
    assert!(errors.is_empty(), "{} errors: {:?}", errors.len(), errors);
    assert_eq!(answered_by_all(&backends), 4_000);
    let stats = balancer.stats();
    for (backend, before) in backends.iter().zip(answered_at_goaway) {
        // Round robin: each takes a quarter of the calls after the GOAWAY.
        let after = backend.answered.load(Ordering::SeqCst) - before;
        assert!(
            after >= 400,
            "{}: {after} calls after its GOAWAY",
            backend.url
        );
        let endpoint = stats.endpoint(&backend.url).unwrap();
        assert_eq!(
            (endpoint.in_flight, endpoint.ejected),
            (0, false),
            "{endpoint:?}"
        );
        // A connection going away is no failure of the server's.
        assert_eq!(endpoint.failures.total(), 0, "{endpoint:?}");
    }
    // The old connections closed, the new ones stay.
    for backend in &backends {
        eventually("one connection per server", || {
            backend.open_connections.load(Ordering::SeqCst) == 1
        })
        .await;
    }
}

/// A GOAWAY after a stream started: the stream finishes on its
/// connection (a success, its messages all read), a new call goes to the
/// same server, and the connection closes once its calls ended; when the server then dies
/// under a stream, the stream fails and counts as closed. Nothing stays
/// in flight, no call is lost from the counts.
#[tokio::test]
async fn a_goaway_after_a_stream_started_lets_it_finish_and_a_connection_closed_under_it_counts_as_closed(
) {
    let server = KillableBackend::start().await;
    let balancer = Balancer::builder().endpoint(&server.url).build().unwrap();
    let mut client = EchoClient::new(balancer.grpc().unwrap());
    let stats = || balancer.stats().endpoint(&server.url).unwrap();
    let three = EchoRequest {
        message: String::new(),
        count: 3,
    };

    let mut stream = client.stream(three.clone()).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().message, "0");
    server.goaway();
    // A new call goes to the same server.
    let reply = client.unary(request("after")).await.unwrap().into_inner();
    assert_eq!(reply.server, server.url);
    assert_eq!(stats().in_flight, 1);
    server.stream_gate.add_permits(2);
    assert_eq!(stream.message().await.unwrap().unwrap().message, "1");
    assert_eq!(stream.message().await.unwrap().unwrap().message, "2");
    assert!(stream.message().await.unwrap().is_none());
    let ended = stats();
    assert_eq!(
        (ended.successes, ended.failures.total(), ended.in_flight),
        (2, 0, 0),
        "{ended:?}"
    );
    eventually(
        "the connection that sent the GOAWAY closes once its calls ended",
        || server.open_connections.load(Ordering::SeqCst) == 0,
    )
    .await;

    // A GOAWAY, then the server dies with the stream open (on a new
    // connection: the channel connects again).
    let mut stream = client.stream(three).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().message, "0");
    server.goaway();
    server.kill().await;
    let status = stream.message().await.unwrap_err();
    assert_ne!(status.code(), Code::Ok);
    let died = stats();
    assert_eq!(
        (
            died.requests,
            died.successes,
            died.failures.closed,
            died.failures.total(),
            died.in_flight
        ),
        (3, 2, 1, 1, 0),
        "{died:?}"
    );
}

/// A server killed, its calls sent to the other server by a transparent
/// retry (a refused connection), ejected, then started again on the same
/// port: once its ejection ends it takes calls again, through the same
/// endpoint's channel, and the caller never saw an error.
#[tokio::test]
async fn a_server_started_again_on_its_port_gets_calls_once_readmitted() {
    let victim = KillableBackend::start().await;
    let other = KillableBackend::start().await;
    let balancer = Balancer::builder()
        .endpoint(&victim.url)
        .endpoint(&other.url)
        .policy(Policy::round_robin())
        .outlier_detection(
            OutlierDetection::default()
                .consecutive_failures(1)
                .base_ejection_time(Duration::from_millis(200))
                .max_ejection_percent(50),
        )
        .build()
        .unwrap();
    let mut client = EchoClient::new(balancer.grpc().unwrap());
    let (served, errors) = call_unary(&mut client, 4).await;
    assert_eq!((served.get(&victim.url), errors), (Some(&2), vec![]));

    victim.kill().await;
    let (served, errors) = call_unary(&mut client, 4).await;
    assert_eq!((served.get(&other.url), errors), (Some(&4), vec![]));
    let dead = balancer.stats().endpoint(&victim.url).unwrap();
    assert!(dead.ejected, "{dead:?}");
    assert_eq!(
        (dead.failures.connect, dead.failures.total()),
        (1, 1),
        "{dead:?}"
    );

    let addr = victim.addr;
    drop(victim);
    let back = KillableBackend::start_at(addr).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while back.answered.load(Ordering::SeqCst) == 0 {
        let (_, errors) = call_unary(&mut client, 2).await;
        assert_eq!(errors, []);
        assert!(tokio::time::Instant::now() < deadline, "never re-admitted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Back in the rotation: every other call.
    let (served, errors) = call_unary(&mut client, 10).await;
    assert_eq!((served.get(&back.url), errors), (Some(&5), vec![]));
    let stats = balancer.stats();
    let readmitted = stats.endpoint(&back.url).unwrap();
    assert!(!readmitted.ejected, "{readmitted:?}");
    for endpoint in &stats.endpoints {
        assert_eq!(endpoint.in_flight, 0, "{endpoint:?}");
    }
}

/// A tonic Echo server on 127.0.0.1 that records the `grpc-timeout` of
/// each call it gets (`None` for a call without one). Stops with the
/// test's runtime.
pub(crate) async fn timeout_recording_backend(
) -> (String, Arc<std::sync::Mutex<Vec<Option<String>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let routes = tonic::service::Routes::new(EchoServer::new(EchoService {
        name: url.clone(),
        answer: Arc::new(AtomicU8::new(ANSWER_OK)),
        pushback: Arc::default(),
        stream_gate: Arc::new(Semaphore::new(0)),
    }));
    let recorder = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (routes, recorder) = (routes.clone(), recorder.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let timeout = request
                        .headers()
                        .get("grpc-timeout")
                        .map(|v| v.to_str().unwrap().to_owned());
                    recorder.lock().unwrap().push(timeout);
                    let mut routes = routes.clone();
                    async move {
                        tower::Service::call(&mut routes, request.map(tonic::body::Body::new)).await
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, seen)
}

/// A `grpc-timeout` value in the format the balancer and tonic write:
/// digits, then one of `m`, `u`, `n`.
pub(crate) fn grpc_timeout(value: &str) -> Duration {
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().unwrap();
    match unit {
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        other => panic!("unit {other} in {value}"),
    }
}

/// A retry's `grpc-timeout` is the caller's less the time the failed
/// attempt took: a call with a 2 s timeout, refused by a GOAWAY 300 ms
/// after it was sent (not processed), sent there once more (its
/// connection went away: the channel connects again) and refused again,
/// reaches the other server with at most 1.4 s left. A `grpc-timeout` that does
/// not follow the format reaches it as the caller wrote it. A call sent
/// once keeps its header as it was.
#[tokio::test]
async fn a_retry_carries_the_callers_grpc_timeout_less_the_time_already_spent() {
    let going_away = goaway_backend_after(Duration::from_millis(300)).await;
    let (recording, seen) = timeout_recording_backend().await;
    let balancer = Balancer::builder()
        .endpoint(&going_away)
        .endpoint(&recording)
        .policy(Policy::round_robin())
        .outlier_detection(OutlierDetection::disabled())
        .build()
        .unwrap();
    let mut client = EchoClient::new(balancer.grpc().unwrap());

    // Round robin: the first call goes to the server that sends GOAWAY.
    let mut call = Request::new(request("retried"));
    call.set_timeout(Duration::from_secs(2));
    let reply = client.unary(call).await.unwrap().into_inner();
    assert_eq!(reply.server, recording);
    let left = grpc_timeout(seen.lock().unwrap()[0].as_deref().unwrap());
    assert!(
        left <= Duration::from_millis(1_400) && left >= Duration::from_millis(900),
        "{left:?} left"
    );

    // The second goes to the recording server at once: the caller's value.
    let mut call = Request::new(request("direct"));
    call.set_timeout(Duration::from_secs(2));
    client.unary(call).await.unwrap();
    assert_eq!(seen.lock().unwrap()[1].as_deref(), Some("2000000u"));

    // A malformed value: passed on as it is, on the retry too.
    let mut call = Request::new(request("malformed"));
    call.metadata_mut()
        .insert("grpc-timeout", "soon".parse().unwrap());
    let reply = client.unary(call).await.unwrap().into_inner();
    assert_eq!(reply.server, recording);
    assert_eq!(seen.lock().unwrap()[2].as_deref(), Some("soon"));
    let stats = balancer.stats();
    for endpoint in &stats.endpoints {
        assert_eq!(endpoint.in_flight, 0, "{endpoint:?}");
    }
}

/// A call whose deadline is spent when its attempt fails is not sent
/// again: it ends with DEADLINE_EXCEEDED, and the next server never sees
/// it. Here the first server holds the call past the caller's 300 ms
/// (its GOAWAY would come at 300 ms): tonic's own timer, from the
/// `grpc-timeout`, ends the attempt at the deadline, with the call marked
/// safe to retry.
#[tokio::test]
async fn a_call_whose_deadline_is_spent_is_not_sent_again_and_ends_with_deadline_exceeded() {
    let going_away = goaway_backend_after(Duration::from_millis(300)).await;
    let (recording, seen) = timeout_recording_backend().await;
    let balancer = Balancer::builder()
        .endpoint(&going_away)
        .endpoint(&recording)
        .policy(Policy::round_robin())
        .outlier_detection(OutlierDetection::disabled())
        .build()
        .unwrap();
    let mut client = EchoClient::new(
        balancer
            .grpc_options(GrpcOptions::new().safe_to_retry(["/echo.Echo/Unary"]))
            .unwrap(),
    );
    let mut call = Request::new(request("late"));
    call.set_timeout(Duration::from_millis(300));
    let status = client.unary(call).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // The last attempt's own status under it: tonic's timer, which ends
    // the attempt at the deadline (CANCELLED, "Timeout expired").
    let source = std::error::Error::source(&status).unwrap();
    let attempt = source.downcast_ref::<Status>().unwrap();
    assert_eq!(attempt.code(), Code::Cancelled, "{attempt:?}");
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
    let stats = balancer.stats();
    for endpoint in &stats.endpoints {
        assert_eq!(endpoint.in_flight, 0, "{endpoint:?}");
    }
}

/// A balancer of one endpoint (a load balancer's address, say) whose
/// server sends GOAWAY while unary calls run 32 at a time: there is no
/// other endpoint to retry on, but a call its connection dropped unsent
/// is sent once more to the same one, so the caller sees no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_endpoint_sending_goaway_under_load_costs_no_caller_error() {
    let server = KillableBackend::start().await;
    server.delay_ms.store(1, Ordering::SeqCst);
    let balancer = Balancer::builder().endpoint(&server.url).build().unwrap();
    let client = EchoClient::new(balancer.grpc().unwrap());
    let errors = burst(&client, 2_000, 32, || async {
        server.goaway();
    })
    .await;
    assert!(errors.is_empty(), "{} errors: {:?}", errors.len(), errors);
    assert_eq!(server.answered.load(Ordering::SeqCst), 2_000);
    let stats = balancer.stats().endpoint(&server.url).unwrap();
    assert_eq!(
        (stats.in_flight, stats.failures.total()),
        (0, 0),
        "{stats:?}"
    );
}
