//! Acceptance probes of the balanced gRPC client (feature `tonic`), written
//! as a new tonic user reads README.md ("gRPC with tonic"), docs/grpc.md
//! and the rustdoc of `BalancedChannel`: each test checks one promise of
//! those documents against real tonic (or plain hyper) servers on
//! 127.0.0.1, reusing the servers of tests/grpc.rs.
#![cfg(feature = "tonic")]

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use prost::Message;
use tonic::{Code, Request};
use tower_lb::{
    BalancedChannel, Balancer, EndpointStats, Error, GrpcOptions, OutlierDetection, Policy,
    RequestKey, Retries, Retryable, SessionKey,
};

use crate::grpc::echo::echo_client::EchoClient;
use crate::grpc::echo::EchoRequest;
use crate::grpc::{
    call_unary, echo_backend, eventually, h2_backend, request, EchoBackend, KillableBackend,
    ANSWER_OK,
};
use crate::support::RefusingPort;

fn stats_of(balancer: &Balancer, url: &str) -> EndpointStats {
    balancer.stats().endpoint(url).unwrap()
}

fn nothing_in_flight(balancer: &Balancer) {
    for endpoint in balancer.stats().endpoints {
        assert_eq!(endpoint.in_flight, 0, "{endpoint:?}");
    }
}

/// The README's promise: a generated client over `balancer.grpc()` is a
/// type a user names and keeps in a struct, Clone + Send + Sync, usable
/// from many tasks at once.
#[tokio::test]
async fn a_generated_client_over_grpc_is_nameable_clone_send_sync_and_works_from_tasks() {
    fn clone_send_sync<T: Clone + Send + Sync + 'static>() {}
    clone_send_sync::<EchoClient<BalancedChannel>>();
    struct App {
        echo: EchoClient<BalancedChannel>,
    }
    let backends = [echo_backend().await, echo_backend().await];
    let balancer = Balancer::builder()
        .endpoint(&backends[0].url)
        .endpoint(&backends[1].url)
        .build()
        .unwrap();
    let app = std::sync::Arc::new(App {
        echo: EchoClient::new(balancer.grpc().unwrap()),
    });
    let calls = (0..20).map(|i| {
        let app = app.clone();
        tokio::spawn(async move {
            let mut echo = app.echo.clone();
            echo.unary(request(&i.to_string()))
                .await
                .map(|r| r.into_inner())
        })
    });
    for call in futures::future::join_all(calls).await {
        call.unwrap().unwrap();
    }
    nothing_in_flight(&balancer);
}

/// "any policy": round robin gives exact equal shares; random (seeded)
/// reaches every server; least time sends few calls to a slow server;
/// ring hash and Maglev by a metadata key send a key's calls to the
/// server `locate` names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_policy_balances_generated_client_calls_as_documented() {
    let backends = [
        echo_backend().await,
        echo_backend().await,
        echo_backend().await,
    ];
    let build = |policy: Policy| {
        let mut builder = Balancer::builder().policy(policy).seed(7);
        for backend in &backends {
            builder = builder.endpoint(&backend.url);
        }
        builder.build().unwrap()
    };

    let balancer = build(Policy::round_robin());
    let mut client = EchoClient::new(balancer.grpc().unwrap());
    let (served, errors) = call_unary(&mut client, 60).await;
    assert_eq!(errors, []);
    for backend in &backends {
        assert_eq!(served.get(&backend.url), Some(&20), "{served:?}");
    }

    let balancer = build(Policy::random());
    let mut client = EchoClient::new(balancer.grpc().unwrap());
    let (served, errors) = call_unary(&mut client, 90).await;
    assert_eq!(errors, []);
    assert_eq!(served.len(), 3, "{served:?}");
    nothing_in_flight(&balancer);

    for policy in [
        Policy::ring_hash().key(RequestKey::header("x-user-id")),
        Policy::maglev().key(RequestKey::header("x-user-id")),
    ] {
        let balancer = build(policy.into());
        let mut client = EchoClient::new(balancer.grpc().unwrap());
        let mut homes: HashMap<String, String> = HashMap::new();
        for round in 0..2 {
            for user in 0..20 {
                let id = format!("user-{user}");
                let mut call = Request::new(request(&round.to_string()));
                call.metadata_mut().insert("x-user-id", id.parse().unwrap());
                let server = client.unary(call).await.unwrap().into_inner().server;
                let located = balancer.locate(&SessionKey::new(id.as_str())).unwrap();
                assert_eq!(server, *located, "{id}");
                assert_eq!(homes.entry(id).or_insert(server.clone()), &server);
            }
        }
        nothing_in_flight(&balancer);
    }

    // Least time: one server 10x slower than the others gets few calls.
    let servers = futures::future::join_all((0..3).map(|_| KillableBackend::start())).await;
    servers[0].delay_ms.store(50, Ordering::SeqCst);
    servers[1].delay_ms.store(5, Ordering::SeqCst);
    servers[2].delay_ms.store(5, Ordering::SeqCst);
    let mut builder = Balancer::builder()
        .policy(Policy::least_response_time())
        .seed(7);
    for server in &servers {
        builder = builder.endpoint(&server.url);
    }
    let balancer = builder.build().unwrap();
    let client = EchoClient::new(balancer.grpc().unwrap());
    let errors = crate::grpc::burst(&client, 300, 4, || async {}).await;
    assert!(errors.is_empty(), "{errors:?}");
    let slow = servers[0].answered.load(Ordering::SeqCst);
    assert!(slow < 300 / 10, "the slow server answered {slow} of 300");
    nothing_in_flight(&balancer);
}

/// The outcome table, row by row, against a tonic server answering each
/// status 1 to 16 (trailers-only, as tonic answers an error): the caller
/// gets the code; the endpoint's stats count it as the table says; an
/// unmarked call is never retried; a call marked safe is retried on
/// UNAVAILABLE, and on DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED only under
/// `Retries::idempotent_failures()`.
#[tokio::test]
async fn every_grpc_status_is_counted_charged_and_retried_as_the_outcome_table_says() {
    let bad = echo_backend().await;
    let good = echo_backend().await;
    for code in 1..=16u8 {
        bad.answer.store(code, Ordering::Relaxed);
        let expected = Code::from(i32::from(code));
        for (marked, idempotent_failures) in [(false, false), (true, false), (true, true)] {
            let retries = if idempotent_failures {
                Retries::default().idempotent_failures()
            } else {
                Retries::default()
            };
            let balancer = Balancer::builder()
                .endpoint(&bad.url)
                .endpoint(&good.url)
                .policy(Policy::round_robin())
                .retry(retries)
                .outlier_detection(OutlierDetection::disabled())
                .build()
                .unwrap();
            let mut client = EchoClient::new(balancer.grpc().unwrap());
            let mut call = Request::new(request("x"));
            if marked {
                call.extensions_mut().insert(Retryable);
            }
            // Round robin: the first call goes to the first endpoint.
            let answer = client.unary(call).await;
            // RESOURCE_EXHAUSTED is an overload signal, retried as a
            // timeout is (docs/health.md, "Overload signals").
            let retried =
                marked && (code == 14 || ((code == 4 || code == 8) && idempotent_failures));
            let case = format!("code {code}, marked {marked}, idempotent {idempotent_failures}");
            match &answer {
                Ok(reply) => {
                    assert!(
                        retried && reply.get_ref().server == good.url,
                        "{case}: {reply:?}"
                    );
                    // The answer names the endpoint that gave it.
                    let served_by = reply.extensions().get::<tower_lb::ServedBy>().unwrap();
                    assert_eq!(served_by.url(), good.url, "{case}");
                }
                Err(status) => {
                    assert!(!retried, "{case}: {status:?}");
                    assert_eq!(status.code(), expected, "{case}: {status:?}");
                }
            }
            let stats = stats_of(&balancer, &bad.url);
            let counted = match code {
                4 => stats.failures.timeout == 1 && stats.failures.total() == 1,
                14 => stats.failures.server_error == 1 && stats.failures.total() == 1,
                8 => stats.overloaded == 1 && stats.failures.total() == 0,
                _ => stats.successes == 1 && stats.failures.total() == 0,
            };
            assert!(counted, "{case}: {stats:?}");
            assert_eq!((stats.requests, stats.in_flight), (1, 0), "{case}");
            let other = stats_of(&balancer, &good.url);
            assert_eq!(other.requests, u64::from(retried), "{case}: {other:?}");
            nothing_in_flight(&balancer);
        }
    }
    bad.answer.store(ANSWER_OK, Ordering::Relaxed);
}

/// Answers that are not gRPC's, beyond those tests/grpc.rs checks: a 200
/// carrying a message but no trailers, `grpc-status: 014` (documented as
/// malformed), and a malformed `grpc-status` in the trailers after a
/// message. Each is an other error charged to the endpoint, the caller
/// gets a status, nothing stays in flight.
#[tokio::test]
async fn more_answers_that_are_not_grpc_are_other_errors_and_leave_nothing_in_flight() {
    type Answer = fn() -> http::Response<Full<Bytes>>;
    fn framed() -> Bytes {
        let reply = crate::grpc::echo::EchoReply {
            server: "proxy".into(),
            message: "x".into(),
        };
        let message = reply.encode_to_vec();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(&message);
        Bytes::from(frame)
    }
    let cases: [(&str, Answer); 2] = [
        ("200 with a message, no trailers", || {
            http::Response::builder()
                .header("content-type", "application/grpc")
                .body(Full::new(framed()))
                .unwrap()
        }),
        ("grpc-status 014", || {
            http::Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", "014")
                .body(Full::new(Bytes::new()))
                .unwrap()
        }),
    ];
    for (name, answer) in cases {
        let url = h2_backend(answer).await;
        let balancer = Balancer::builder().endpoint(&url).build().unwrap();
        let mut client = EchoClient::new(balancer.grpc().unwrap());
        let result = client.unary(request("x")).await;
        let stats = stats_of(&balancer, &url);
        assert!(result.is_err(), "{name}: {result:?}");
        assert_eq!(stats.failures.other, 1, "{name}: {result:?} {stats:?}");
        assert_eq!((stats.in_flight, stats.requests), (0, 1), "{name}");
    }
}

/// "an HTTP 503 from a proxy": a plain hyper server speaking HTTP/1.1 only
/// (most proxies' error pages), answering 503 to anything. tonic speaks
/// HTTP/2 only, so the connection breaks: the caller gets a status naming
/// the endpoint, nothing panics, nothing stays in flight.
#[tokio::test]
async fn an_http1_proxy_answering_503_fails_the_call_naming_the_endpoint_and_leaves_nothing_in_flight(
) {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_: http::Request<hyper::body::Incoming>| async {
                    Ok::<_, std::convert::Infallible>(
                        http::Response::builder()
                            .status(503)
                            .body(Full::new(Bytes::from_static(b"no healthy upstream")))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let balancer = Balancer::builder()
        .endpoint(&url)
        .retry(Retries::disabled())
        .build()
        .unwrap();
    let mut client = EchoClient::new(balancer.grpc().unwrap());
    let status = tokio::time::timeout(Duration::from_secs(10), client.unary(request("x")))
        .await
        .expect("the call ends")
        .unwrap_err();
    let stats = stats_of(&balancer, &url);
    assert!(status.message().contains(&url), "{status:?}");
    assert_eq!((stats.in_flight, stats.requests), (0, 1), "{stats:?}");
    // As docs/grpc.md says: the connection breaks under the call (closed,
    // UNKNOWN, `MayHaveBeenProcessed`), charged to the endpoint.
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert_eq!(stats.failures.closed, 1, "{stats:?}");
}

/// "an endpoint URL with a path → a typed error"; one with only a slash
/// or nothing after the authority has no path.
#[tokio::test]
async fn an_endpoint_url_with_a_path_is_refused_with_a_typed_error_and_a_bare_slash_is_not() {
    for url in ["http://127.0.0.1:50051/api", "http://127.0.0.1:50051/a/b/"] {
        let balancer = Balancer::builder().endpoint(url).build().unwrap();
        assert!(
            matches!(balancer.grpc(), Err(Error::InvalidUrl { .. })),
            "{url}"
        );
    }
    for url in ["http://127.0.0.1:50051", "http://127.0.0.1:50051/"] {
        let balancer = Balancer::builder().endpoint(url).build().unwrap();
        assert!(balancer.grpc().is_ok(), "{url}");
    }
}

/// `NoEndpointAvailable` is UNAVAILABLE "no endpoint available: ...",
/// whether the set is empty or every endpoint is drained.
#[tokio::test]
async fn no_endpoint_available_is_unavailable_with_a_clear_message() {
    let backend = echo_backend().await;
    let balancer = Balancer::builder().endpoint(&backend.url).build().unwrap();
    let mut client = EchoClient::new(balancer.grpc().unwrap());
    balancer.drain(&backend.url).unwrap();
    let status = client.unary(request("x")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().starts_with("no endpoint available"),
        "{status:?}"
    );
    let source = std::error::Error::source(&status).unwrap();
    assert!(matches!(
        source.downcast_ref::<Error>(),
        Some(Error::NoEndpointAvailable)
    ));
    nothing_in_flight(&balancer);
}

/// "After retries, the status is the last attempt's and names the last
/// endpoint tried": two refusing ports, retries on.
#[tokio::test]
async fn a_connect_failure_after_retries_names_the_last_endpoint_tried() {
    let (first, second) = (RefusingPort::new(), RefusingPort::new());
    let balancer = Balancer::builder()
        .endpoint(&first.url)
        .endpoint(&second.url)
        .policy(Policy::round_robin())
        .outlier_detection(OutlierDetection::disabled())
        .build()
        .unwrap();
    let mut client = EchoClient::new(balancer.grpc().unwrap());
    let status = client.unary(request("x")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains(&second.url), "{status:?}");
    for url in [&first.url, &second.url] {
        let stats = stats_of(&balancer, url);
        assert_eq!((stats.failures.connect, stats.in_flight), (1, 0), "{url}");
    }
}

/// The bytes of a unary call's request body as tonic frames it: the
/// 5-byte gRPC header and the encoded message.
fn framed_len(message: &EchoRequest) -> usize {
    5 + message.encoded_len()
}

/// `request_buffer`: a unary body of exactly the limit is kept (a refused
/// call goes to the other endpoint); one byte over it is sent once (the
/// caller gets the refusal).
#[tokio::test]
async fn a_unary_body_at_the_request_buffer_is_retried_and_one_byte_over_is_sent_once() {
    let refusing = RefusingPort::new();
    let good = echo_backend().await;
    let message = EchoRequest {
        message: "m".repeat(1000),
        count: 1,
    };
    let size = framed_len(&message);
    for (limit, retried) in [(size, true), (size - 1, false)] {
        let balancer = Balancer::builder()
            .endpoint(&refusing.url)
            .endpoint(&good.url)
            .policy(Policy::round_robin())
            .outlier_detection(OutlierDetection::disabled())
            .build()
            .unwrap();
        let channel = balancer
            .grpc_options(GrpcOptions::new().request_buffer(limit))
            .unwrap();
        let answer = EchoClient::new(channel).unary(message.clone()).await;
        assert_eq!(
            answer.is_ok(),
            retried,
            "limit {limit}, body {size}: {answer:?}"
        );
        assert_eq!(
            stats_of(&balancer, &good.url).requests,
            u64::from(retried),
            "limit {limit}"
        );
        nothing_in_flight(&balancer);
    }

    // The default, 64 KiB: a body of exactly 65,536 bytes is kept.
    let mut message = EchoRequest {
        message: String::new(),
        count: 1,
    };
    while framed_len(&message) < tower_lb::REQUEST_BUFFER {
        message.message.push('m');
    }
    assert_eq!(framed_len(&message), tower_lb::REQUEST_BUFFER);
    for (message, retried) in [(message.clone(), true), {
        let mut over = message;
        over.message.push('m');
        (over, false)
    }] {
        let balancer = Balancer::builder()
            .endpoint(&refusing.url)
            .endpoint(&good.url)
            .policy(Policy::round_robin())
            .outlier_detection(OutlierDetection::disabled())
            .build()
            .unwrap();
        let answer = EchoClient::new(balancer.grpc().unwrap())
            .unary(message.clone())
            .await;
        let size = framed_len(&message);
        assert_eq!(answer.is_ok(), retried, "default limit, body {size}");
        nothing_in_flight(&balancer);
    }
}

/// `safe_to_retry`: a method in the list (by name or by `Service/*`) is
/// retried on UNAVAILABLE; a method not in it, and an unmarked call, are
/// not.
#[tokio::test]
async fn safe_to_retry_marks_the_listed_methods_only() {
    let bad = echo_backend().await;
    let good = echo_backend().await;
    bad.answer.store(Code::Unavailable as u8, Ordering::Relaxed);
    for (list, retried) in [
        (vec!["/echo.Echo/Unary"], true),
        (vec!["/echo.Echo/*"], true),
        (vec!["/echo.Echo/Stream"], false),
        (vec!["/echo.Ech/*"], false),
        (vec![], false),
    ] {
        let balancer = Balancer::builder()
            .endpoint(&bad.url)
            .endpoint(&good.url)
            .policy(Policy::round_robin())
            .outlier_detection(OutlierDetection::disabled())
            .build()
            .unwrap();
        let channel = balancer
            .grpc_options(GrpcOptions::new().safe_to_retry(list.clone()))
            .unwrap();
        let answer = EchoClient::new(channel).unary(request("x")).await;
        assert_eq!(answer.is_ok(), retried, "{list:?}: {answer:?}");
        if let Err(status) = answer {
            assert_eq!(status.code(), Code::Unavailable);
        }
        nothing_in_flight(&balancer);
    }
}

/// A stream open on an endpoint that is drained, then removed, reads to
/// its end: the drain and the removal stop new calls, not the open ones;
/// the stream counts in flight until its end and as a success.
#[tokio::test]
async fn a_stream_open_when_its_endpoint_is_drained_or_removed_reads_to_its_end() {
    let a = echo_backend().await;
    let b = echo_backend().await;
    let three = EchoRequest {
        message: String::new(),
        count: 3,
    };
    async fn read_on(
        stream: &mut tonic::Streaming<crate::grpc::echo::EchoReply>,
        backend: &EchoBackend,
    ) {
        backend.stream_gate.add_permits(1);
        let reply = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("the stream goes on")
            .unwrap()
            .unwrap();
        assert_eq!(reply.server, backend.url);
    }

    // Drained.
    let balancer = Balancer::builder()
        .endpoint(&a.url)
        .endpoint(&b.url)
        .policy(Policy::round_robin())
        .build()
        .unwrap();
    let mut client = EchoClient::new(balancer.grpc().unwrap());
    let mut stream = client.stream(three.clone()).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().server, a.url);
    balancer.drain(&a.url).unwrap();
    let (served, errors) = call_unary(&mut client, 4).await;
    assert_eq!((served.get(&b.url), errors.len()), (Some(&4), 0));
    assert_eq!(stats_of(&balancer, &a.url).in_flight, 1);
    read_on(&mut stream, &a).await;
    read_on(&mut stream, &a).await;
    assert!(stream.message().await.unwrap().is_none());
    let stats = stats_of(&balancer, &a.url);
    assert_eq!((stats.in_flight, stats.successes), (0, 1), "{stats:?}");

    // Removed.
    let balancer = Balancer::builder()
        .endpoint(&a.url)
        .endpoint(&b.url)
        .policy(Policy::round_robin())
        .build()
        .unwrap();
    let mut client = EchoClient::new(balancer.grpc().unwrap());
    let mut stream = client.stream(three).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().server, a.url);
    balancer.remove(&a.url).unwrap();
    let (served, errors) = call_unary(&mut client, 4).await;
    assert_eq!((served.get(&b.url), errors.len()), (Some(&4), 0));
    read_on(&mut stream, &a).await;
    read_on(&mut stream, &a).await;
    assert!(stream.message().await.unwrap().is_none());
    nothing_in_flight(&balancer);
}

/// `grpc_with`'s template takes effect: `Endpoint::timeout` ends a call
/// to a slow server at the timeout, counted as a timeout (the table's
/// last transport row), not retried for an unmarked call.
#[tokio::test]
async fn grpc_with_an_endpoint_timeout_ends_slow_calls_as_timeouts() {
    let slow = KillableBackend::start().await;
    slow.delay_ms.store(2_000, Ordering::SeqCst);
    let balancer = Balancer::builder().endpoint(&slow.url).build().unwrap();
    let channel = balancer
        .grpc_with(|endpoint| Ok(endpoint.timeout(Duration::from_millis(150))))
        .unwrap();
    let started = tokio::time::Instant::now();
    let status = EchoClient::new(channel)
        .unary(request("x"))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "{status:?}"
    );
    assert!(status.message().contains(&slow.url), "{status:?}");
    let stats = stats_of(&balancer, &slow.url);
    assert_eq!(
        (
            stats.failures.timeout,
            stats.failures.total(),
            stats.in_flight
        ),
        (1, 1, 0),
        "{status:?} {stats:?}"
    );
    eventually("the slow server got one call", || {
        slow.received.load(Ordering::SeqCst) == 1
    })
    .await;
}

/// docs/grpc.md, "Errors": a status the server sent reaches the caller
/// as the server wrote it (its code and message; no source of the
/// balancer's: the endpoint answered, nothing failed on the way), while a
/// failure on the way names the endpoint and has the balancer's error as
/// its source. The answer's endpoint is not in a server's status.
#[tokio::test]
async fn a_status_the_server_sent_is_passed_on_as_it_is_and_a_transport_failure_names_the_endpoint()
{
    let bad = echo_backend().await;
    bad.answer.store(Code::Unavailable as u8, Ordering::Relaxed);
    let balancer = Balancer::builder().endpoint(&bad.url).build().unwrap();
    let status = EchoClient::new(balancer.grpc().unwrap())
        .unary(request("x"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    // The test server's own message (which happens to hold its URL).
    assert_eq!(status.message(), format!("{} answers Unavailable", bad.url));
    assert!(std::error::Error::source(&status).is_none(), "{status:?}");

    let refusing = RefusingPort::new();
    let balancer = Balancer::builder().endpoint(&refusing.url).build().unwrap();
    let status = EchoClient::new(balancer.grpc().unwrap())
        .unary(request("x"))
        .await
        .unwrap_err();
    assert!(status.message().contains(&refusing.url), "{status:?}");
    let source = std::error::Error::source(&status).unwrap();
    assert!(source.downcast_ref::<Error>().is_some(), "{source:?}");
}

/// README: a unary call's body is kept so it can be sent again. A
/// server-streaming call's request is one message too, ready at once: it
/// is kept as well, and a refused connection sends it to another endpoint.
#[tokio::test]
async fn a_server_streaming_call_refused_by_one_endpoint_goes_to_another() {
    let refusing = RefusingPort::new();
    let good = echo_backend().await;
    let balancer = Balancer::builder()
        .endpoint(&refusing.url)
        .endpoint(&good.url)
        .policy(Policy::round_robin())
        .build()
        .unwrap();
    let one = EchoRequest {
        message: String::new(),
        count: 1,
    };
    let mut stream = EchoClient::new(balancer.grpc().unwrap())
        .stream(one)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().server, good.url);
    assert!(stream.message().await.unwrap().is_none());
    assert_eq!(stats_of(&balancer, &refusing.url).failures.connect, 1);
    nothing_in_flight(&balancer);
}

/// A call made outside a tokio runtime (`futures::executor::block_on`)
/// fails with UNAVAILABLE, `Error::NoRuntime` as its source and a message
/// that says what is wrong with the call; nothing panics.
#[test]
fn a_call_outside_a_tokio_runtime_is_unavailable_with_a_message_about_the_runtime() {
    let balancer = Balancer::builder()
        .endpoint("http://127.0.0.1:1")
        .build()
        .unwrap();
    let mut client = EchoClient::new(balancer.grpc().unwrap());
    let status = futures::executor::block_on(client.unary(request("x"))).unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let source = std::error::Error::source(&status).unwrap();
    assert!(matches!(
        source.downcast_ref::<Error>(),
        Some(Error::NoRuntime)
    ));
    assert!(
        status.message().contains("tokio runtime") && !status.message().contains("discover"),
        "{status:?}"
    );
}

/// "A body dropped before its end counts as cancelled, charged to no
/// endpoint; so does a call whose future is dropped": a unary call the
/// server holds, dropped by the caller (a timeout of its own).
#[tokio::test]
async fn a_unary_call_dropped_while_the_server_holds_it_is_cancelled_and_charged_to_none() {
    let server = KillableBackend::start().await;
    server.gated.store(true, Ordering::SeqCst);
    let balancer = Balancer::builder().endpoint(&server.url).build().unwrap();
    let mut client = EchoClient::new(balancer.grpc().unwrap());
    // Boxed, so that dropping it drops the call.
    let mut call = Box::pin(client.unary(request("x")));
    tokio::select! {
        _ = call.as_mut() => panic!("the server holds the call"),
        () = eventually("the server got the call", || {
            server.received.load(Ordering::SeqCst) == 1
        }) => {}
    }
    assert_eq!(stats_of(&balancer, &server.url).in_flight, 1);
    drop(call);
    let stats = stats_of(&balancer, &server.url);
    assert_eq!(
        (stats.in_flight, stats.cancelled, stats.failures.total()),
        (0, 1, 0),
        "{stats:?}"
    );
}
