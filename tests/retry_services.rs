//! Which service a retry goes through, and what a request that may be
//! retried holds: the sending service's own inner service (a clone of it,
//! made ready first), after the service and the balancer are gone, with
//! every count settled; and a service over a `Send` but not `Sync` inner
//! service stays spawnable.

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceExt};
use tower_lb::{Balancer, BoxError, Error, Policy};

type Log = Arc<Mutex<Vec<(&'static str, String)>>>;

/// An inner service with per-clone state: a tag, and whether this clone
/// was made ready since its last call (the Tower contract).
struct Probe {
    tag: &'static str,
    log: Log,
    readied: bool,
    /// 0: ready; 1: pending; 2: poll_ready fails.
    mode: Arc<AtomicU8>,
    live: Arc<()>,
}

impl Clone for Probe {
    fn clone(&self) -> Self {
        Probe {
            tag: self.tag,
            log: self.log.clone(),
            readied: false,
            mode: self.mode.clone(),
            live: self.live.clone(),
        }
    }
}

impl Probe {
    fn new(tag: &'static str) -> Self {
        Probe {
            tag,
            log: Log::default(),
            readied: false,
            mode: Arc::default(),
            live: Arc::default(),
        }
    }
}

impl Service<http::Request<()>> for Probe {
    type Response = http::Response<()>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<http::Response<()>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self.mode.load(Ordering::SeqCst) {
            0 => {
                self.readied = true;
                Poll::Ready(Ok(()))
            }
            1 => Poll::Pending,
            _ => Poll::Ready(Err("not ready".into())),
        }
    }

    fn call(&mut self, request: http::Request<()>) -> Self::Future {
        assert!(self.readied, "called without poll_ready");
        self.readied = false;
        let authority = request.uri().authority().unwrap().to_string();
        self.log.lock().unwrap().push((self.tag, authority.clone()));
        std::future::ready(if authority.ends_with(":1") || authority.ends_with(":2") {
            Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into())
        } else {
            Ok(http::Response::new(()))
        })
    }
}

fn balancer(ports: &[u16]) -> Balancer {
    let mut builder = Balancer::builder().policy(Policy::round_robin());
    for port in ports {
        builder = builder.endpoint(format!("http://127.0.0.1:{port}"));
    }
    builder.build().unwrap()
}

fn settled(balancer: &Balancer) {
    for e in balancer.stats().endpoints {
        assert_eq!(e.in_flight, 0, "{} in flight: {e:?}", e.url);
        assert_eq!(
            e.requests,
            e.successes + e.failures.total() + e.cancelled + e.client_errors,
            "{e:?}"
        );
    }
}

fn get() -> http::Request<()> {
    http::Request::get("/").body(()).unwrap()
}

/// A clone whose inner service was changed through `get_mut` sends its
/// first attempts and its retries through the changed service, though
/// another clone sent first.
#[tokio::test]
async fn a_clone_changed_through_get_mut_retries_through_its_own_inner_service() {
    let balancer = balancer(&[1, 3]);
    let probe = Probe::new("a");
    let log = probe.log.clone();
    let mut a = balancer.layer().layer(probe);
    let mut b = a.clone();
    b.get_mut().tag = "b";
    let _ = a.ready().await.unwrap().call(get()).await;
    log.lock().unwrap().clear();
    for _ in 0..2 {
        b.ready().await.unwrap().call(get()).await.unwrap();
    }
    let log = log.lock().unwrap().clone();
    assert!(log.len() == 3, "one of two retried: {log:?}");
    assert!(
        log.iter().all(|(tag, _)| *tag == "b"),
        "b's requests went through: {log:?}"
    );
}

/// A retry of a retry, after the service and the balancer are dropped:
/// each attempt goes through a clone made ready first; nothing is left.
#[tokio::test]
async fn a_retry_of_a_retry_after_everything_is_dropped() {
    for first in 0..3 {
        let balancer = balancer(&[1, 2, 3]);
        let stats = balancer.clone();
        let probe = Probe::new("p");
        let (log, live) = (probe.log.clone(), probe.live.clone());
        let mut service = balancer.layer().layer(probe);
        for _ in 0..first {
            let _ = service.ready().await.unwrap().call(get()).await;
        }
        log.lock().unwrap().clear();
        let future = service.ready().await.unwrap().call(get());
        drop(service);
        drop(balancer);
        let result = future.await;
        let log = log.lock().unwrap().clone();
        assert!(result.is_ok(), "{result:?} {log:?}");
        assert_eq!(log.last().unwrap().1, "127.0.0.1:3", "{log:?}");
        assert_eq!(
            Arc::strong_count(&live),
            1,
            "clones of the inner service are left"
        );
        settled(&stats);
    }
}

/// A response future dropped while its retry's service gets ready
/// releases the retry's in-flight slot; a poll_ready error ends it too.
#[tokio::test]
async fn a_future_dropped_or_failed_while_readying_settles() {
    for mode in [1u8, 2] {
        let balancer = balancer(&[1, 3]);
        let probe = Probe::new("p");
        let (set, live) = (probe.mode.clone(), probe.live.clone());
        let mut service = balancer.layer().layer(probe);
        let mut seen_readying = false;
        for _ in 0..2 {
            set.store(0, Ordering::SeqCst);
            let mut future = Box::pin(service.ready().await.unwrap().call(get()));
            set.store(mode, Ordering::SeqCst);
            let polled = futures::poll!(future.as_mut());
            match polled {
                Poll::Pending => {
                    assert_eq!(mode, 1);
                    seen_readying = true;
                    let in_flight: u64 =
                        balancer.stats().endpoints.iter().map(|e| e.in_flight).sum();
                    assert_eq!(in_flight, 1);
                }
                Poll::Ready(Err(Error::NotReady(_))) => {
                    assert_eq!(mode, 2);
                    seen_readying = true;
                }
                Poll::Ready(other) => assert!(other.is_ok(), "{other:?}"),
            }
            drop(future);
            settled(&balancer);
        }
        assert!(seen_readying);
        drop(service);
        assert_eq!(Arc::strong_count(&live), 1);
    }
}

/// A retry of a retry through the endpoints' own services.
#[tokio::test]
async fn per_endpoint_retry_of_a_retry() {
    let balancer = balancer(&[1, 2, 3]);
    let log = Log::default();
    let service = balancer.per_endpoint({
        let log = log.clone();
        move |_: &str| {
            let mut p = Probe::new("e");
            p.log = log.clone();
            p
        }
    });
    for _ in 0..3 {
        let result = service.clone().oneshot(get()).await;
        assert!(result.is_ok(), "{result:?} {:?}", log.lock().unwrap());
    }
    settled(&balancer);
}

fn two_endpoints() -> Balancer {
    Balancer::builder()
        .endpoint("http://127.0.0.1:1")
        .endpoint("http://127.0.0.1:2")
        .build()
        .unwrap()
}

fn answer() -> impl tower::Service<
    http::Request<()>,
    Response = http::Response<()>,
    Error = BoxError,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(|_: http::Request<()>| async { Ok::<_, BoxError>(http::Response::new(())) })
}

/// `BoxCloneService` is `Send` but not `Sync`: the service and its response
/// future stay `Send` (what a retry holds needs no more of the inner service).
#[tokio::test]
async fn with_retries_over_box_clone_service_is_spawnable() {
    let inner: BoxCloneService<http::Request<()>, http::Response<()>, BoxError> =
        BoxCloneService::new(answer());
    let service = two_endpoints().layer().layer(inner);
    let response = tokio::spawn(service.oneshot(http::Request::new(())))
        .await
        .unwrap();
    assert!(response.is_ok());
}

/// `Send`, not `Sync`, not `Clone`: what `without_retries` is for.
struct NotSync(Cell<u32>);

impl tower::Service<http::Request<()>> for NotSync {
    type Response = http::Response<()>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<http::Response<()>, BoxError>>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: http::Request<()>) -> Self::Future {
        self.0.set(self.0.get() + 1);
        std::future::ready(Ok(http::Response::new(())))
    }
}

#[tokio::test]
async fn without_retries_over_a_send_not_sync_service_is_spawnable() {
    let inner = NotSync(Cell::new(0));
    let service = two_endpoints().layer().without_retries().layer(inner);
    let response = tokio::spawn(service.oneshot(http::Request::new(())))
        .await
        .unwrap();
    assert!(response.is_ok());
}
