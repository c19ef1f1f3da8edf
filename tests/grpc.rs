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
use std::sync::atomic::{AtomicU8, Ordering};
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
use tower_lb::{BalancedChannel, Balancer, OutlierDetection, Policy, RequestKey, SessionKey};

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
const ANSWER_OK: u8 = 0;

/// A tonic Echo server on 127.0.0.1 that answers with its name, or with
/// the status code it is told to (switchable while it runs). Its streams
/// send one reply at once and each further one when a permit is added to
/// `stream_gate`. Stops when dropped.
struct EchoBackend {
    url: String,
    answer: Arc<AtomicU8>,
    stream_gate: Arc<Semaphore>,
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
    stream_gate: Arc<Semaphore>,
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let code = Code::from(i32::from(self.answer.load(Ordering::Relaxed)));
        if code != Code::Ok {
            return Err(Status::new(code, format!("{} answers {code:?}", self.name)));
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

async fn echo_backend() -> EchoBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answer = Arc::new(AtomicU8::new(ANSWER_OK));
    let stream_gate = Arc::new(Semaphore::new(0));
    let service = EchoService {
        name: url.clone(),
        answer: answer.clone(),
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
        stream_gate,
        task,
    }
}

fn request(message: &str) -> EchoRequest {
    EchoRequest {
        message: message.to_owned(),
        count: 1,
    }
}

/// Calls `unary` `n` times in a row; how many answers each server gave,
/// and the errors' codes.
async fn call_unary(
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
async fn a_server_answering_resource_exhausted_is_not_ejected() {
    let good = echo_backend().await;
    let busy = echo_backend().await;
    busy.answer
        .store(Code::ResourceExhausted as u8, Ordering::Relaxed);
    let balancer = Balancer::builder()
        .endpoint(&good.url)
        .endpoint(&busy.url)
        .outlier_detection(
            OutlierDetection::default()
                .consecutive_failures(3)
                .max_ejection_percent(50),
        )
        .build()
        .unwrap();
    let mut client = EchoClient::new(balancer.grpc().unwrap());
    let (served, errors) = call_unary(&mut client, 40).await;
    // Every other call reaches the busy server, which keeps answering.
    assert_eq!(served.get(&good.url), Some(&20));
    assert_eq!(errors, [Code::ResourceExhausted; 20]);
    let stats = balancer.stats().endpoint(&busy.url).unwrap();
    assert!(!stats.ejected, "{stats:?}");
    assert_eq!((stats.successes, stats.failures.total()), (20, 0));
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
async fn h2_backend<F>(answer: F) -> String
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
