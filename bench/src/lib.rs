//! Shared pieces of the tower-lb benchmarks: loopback backends with a fixed
//! latency, a closed-loop load generator, and the figures it reports.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// An in-process service that answers every `http::Request<()>` at once:
/// the inner service of the per-request benchmarks, so that what they time
/// is the layer.
#[derive(Clone, Copy, Debug)]
pub struct Trivial;

impl tower::Service<http::Request<()>> for Trivial {
    type Response = http::Response<()>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<http::Response<()>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<()>) -> Self::Future {
        std::future::ready(Ok(http::Response::new(())))
    }
}

/// What [`Floor`] sends to: scheme and authority per endpoint, and an
/// in-flight count each.
type Origins = Arc<[(Scheme, Authority, AtomicU64)]>;

/// The least any balancer that rewrites URIs does, over [`Trivial`]: a
/// rotation per service clone (no shared counter) and the request's URI
/// set to the endpoint's scheme and authority through `http`'s own types;
/// nothing else. [`Floor::new`]`(endpoints, true)` also counts requests in
/// flight per endpoint, one shared atomic up when sent and down when
/// answered. What the per-request figures of a real balancer compare to.
#[derive(Clone)]
pub struct Floor {
    inner: Trivial,
    origins: Origins,
    next: usize,
    counted: bool,
}

impl Floor {
    /// `endpoints` endpoints; `counted`: count requests in flight.
    pub fn new(endpoints: usize, counted: bool) -> Self {
        let origins = (0..endpoints)
            .map(|i| {
                let authority = format!("10.0.{}.{}:8080", i / 200, i % 200 + 1);
                match Authority::try_from(authority.as_str()) {
                    Ok(authority) => (Scheme::HTTP, authority, AtomicU64::new(0)),
                    Err(error) => panic!("the floor's authority is valid: {error}"),
                }
            })
            .collect();
        Floor {
            inner: Trivial,
            origins,
            next: 0,
            counted,
        }
    }
}

impl tower::Service<http::Request<()>> for Floor {
    type Response = http::Response<()>;
    type Error = Infallible;
    type Future = Counted<<Trivial as tower::Service<http::Request<()>>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<()>) -> Self::Future {
        let i = self.next;
        self.next = if i + 1 == self.origins.len() {
            0
        } else {
            i + 1
        };
        let (scheme, authority, in_flight) = &self.origins[i];
        let mut parts = std::mem::take(request.uri_mut()).into_parts();
        parts.scheme = Some(scheme.clone());
        parts.authority = Some(authority.clone());
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
        let release = self.counted.then(|| {
            in_flight.fetch_add(1, Ordering::Relaxed);
            (self.origins.clone(), i)
        });
        Counted {
            inner: self.inner.call(request),
            release,
        }
    }
}

/// [`Floor`]'s response future: releases the in-flight count when answered.
pub struct Counted<F> {
    inner: F,
    release: Option<(Origins, usize)>,
}

impl<F: Future + Unpin> Future for Counted<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let output = std::task::ready!(Pin::new(&mut self.inner).poll(cx));
        if let Some((origins, i)) = self.release.take() {
            origins[i].2.fetch_sub(1, Ordering::Relaxed);
        }
        Poll::Ready(output)
    }
}

/// The header a backend names itself in.
pub const BACKEND: &str = "x-backend";

/// How a backend answers: after `delay`, with `status`.
#[derive(Clone, Copy, Debug)]
pub struct Behaviour {
    pub delay: Duration,
    pub status: StatusCode,
}

impl Behaviour {
    pub fn ok_after(delay: Duration) -> Self {
        Behaviour {
            delay,
            status: StatusCode::OK,
        }
    }

    pub fn fails_at_once() -> Self {
        Behaviour {
            delay: Duration::ZERO,
            status: StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A running backend on 127.0.0.1. It stops when the runtime does.
#[derive(Clone, Debug)]
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
}

impl Backend {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Starts a hyper HTTP/1 server on 127.0.0.1 that answers every request as
/// `behaviour` says, naming itself `name`.
pub async fn start_backend(name: &str, behaviour: Behaviour) -> std::io::Result<Backend> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let header = name.to_owned();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let header = header.clone();
            tokio::spawn(async move {
                let answer = service_fn(move |_request| {
                    let header = header.clone();
                    async move {
                        if !behaviour.delay.is_zero() {
                            tokio::time::sleep(behaviour.delay).await;
                        }
                        let mut response = Response::new(Full::new(Bytes::new()));
                        *response.status_mut() = behaviour.status;
                        if let Ok(value) = header.parse() {
                            response.headers_mut().insert(BACKEND, value);
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), answer)
                    .await;
            });
        }
    });
    Ok(Backend {
        name: name.to_owned(),
        addr,
    })
}

/// What one closed-loop run measured.
#[derive(Clone, Debug, Default)]
pub struct RunFigures {
    /// Latency of every answered request, sorted.
    pub latencies: Vec<Duration>,
    /// Answers per backend name.
    pub per_backend: Vec<(String, usize)>,
    pub errors: usize,
    pub elapsed: Duration,
}

impl RunFigures {
    pub fn answered(&self) -> usize {
        self.latencies.len()
    }

    pub fn throughput(&self) -> f64 {
        self.answered() as f64 / self.elapsed.as_secs_f64()
    }

    /// The nearest-rank percentile, in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1].as_secs_f64() * 1e3
    }

    pub fn mean_ms(&self) -> f64 {
        let total: Duration = self.latencies.iter().sum();
        total.as_secs_f64() * 1e3 / self.latencies.len().max(1) as f64
    }

    /// The share of answers that came from `backend`.
    pub fn share(&self, backend: &str) -> f64 {
        let from = self
            .per_backend
            .iter()
            .find(|(name, _)| name == backend)
            .map_or(0, |(_, n)| *n);
        from as f64 / self.answered().max(1) as f64
    }
}

/// Runs `concurrency` workers that each send one request at a time through
/// `send` until `duration` has passed or `max_requests` were sent, and
/// gathers latencies and the answering backend of each.
pub async fn closed_loop<F, Fut>(
    concurrency: usize,
    duration: Duration,
    max_requests: usize,
    send: F,
) -> RunFigures
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<String, String>> + Send,
{
    let started = Instant::now();
    let deadline = started + duration;
    let budget = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(max_requests));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let send = send.clone();
            let budget = budget.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut errors = 0;
                while Instant::now() < deadline
                    && budget
                        .fetch_update(
                            std::sync::atomic::Ordering::Relaxed,
                            std::sync::atomic::Ordering::Relaxed,
                            |b| b.checked_sub(1),
                        )
                        .is_ok()
                {
                    let sent = Instant::now();
                    match send().await {
                        Ok(backend) => seen.push((backend, sent.elapsed())),
                        Err(_) => errors += 1,
                    }
                }
                (seen, errors)
            })
        })
        .collect();
    let mut figures = RunFigures::default();
    for worker in workers {
        let Ok((seen, errors)) = worker.await else {
            continue;
        };
        figures.errors += errors;
        for (backend, latency) in seen {
            figures.latencies.push(latency);
            match figures.per_backend.iter_mut().find(|(n, _)| *n == backend) {
                Some((_, count)) => *count += 1,
                None => figures.per_backend.push((backend, 1)),
            }
        }
    }
    figures.elapsed = started.elapsed();
    figures.latencies.sort();
    figures.per_backend.sort();
    figures
}

/// The backend name in an answer's header.
pub fn backend_of(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(BACKEND)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned()
}

/// Where a bench writes its JSON: `target/bench/NAME.json` of the workspace.
pub fn json_path(name: &str) -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("bench").join(format!("{name}.json"))
}

/// The `reqwest-lb` crate's middleware (round robin) over `backends`, set up
/// as its README does (a registry maps the `lb://` host to the backends'
/// URLs), driven by a closed loop like every other client here.
pub async fn run_reqwest_lb(
    backends: &[Backend],
    concurrency: usize,
    duration: Duration,
    max_requests: usize,
) -> RunFigures {
    let urls: Vec<reqwest::Url> = backends
        .iter()
        .filter_map(|b| reqwest::Url::parse(&b.url()).ok())
        .collect();
    let mut registry = reqwest_lb::LoadBalancerRegistry::default();
    registry.add(
        "backends",
        reqwest_lb::LoadBalancer::new(urls, reqwest_lb::LoadBalancerPolicy::RoundRobin),
    );
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(reqwest_lb::LoadBalancerMiddleware::new(registry))
        .build();
    closed_loop(concurrency, duration, max_requests, move || {
        let client = client.clone();
        async move {
            let response = client
                .get("lb://backends/item")
                .send()
                .await
                .map_err(|e| e.to_string())?;
            Ok(backend_of(&response))
        }
    })
    .await
}

/// A balancer over `backends` (weight 1 each) with `policy` and `retry`.
pub fn balancer_over(
    backends: &[Backend],
    policy: tower_lb::Policy,
    retry: tower_lb::Retries,
) -> tower_lb::Balancer {
    let built = backends
        .iter()
        .fold(tower_lb::Balancer::builder(), |b, backend| {
            b.endpoint(backend.url())
        })
        .policy(policy)
        .retry(retry)
        .build();
    match built {
        Ok(balancer) => balancer,
        Err(error) => panic!("the bench's balancer is valid: {error}"),
    }
}

/// Each backend's `/item` URL, for clients that address requests by hand.
pub fn item_urls(backends: &[Backend]) -> std::sync::Arc<Vec<String>> {
    std::sync::Arc::new(
        backends
            .iter()
            .map(|b| format!("{}/item", b.url()))
            .collect(),
    )
}

/// How hard a closed loop drives: workers, and when it stops.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub concurrency: usize,
    pub duration: Duration,
    pub max_requests: usize,
}

/// Drives `service` in a closed loop under `load`, with the `n`-th
/// request made by `make(n)`; each answer names its backend.
async fn drive_loop<S, R>(
    service: S,
    load: Load,
    make: impl Fn(usize) -> Result<R, String> + Clone + Send + Sync + 'static,
) -> RunFigures
where
    S: tower::Service<R, Response = reqwest::Response> + Clone + Send + 'static,
    S::Error: std::fmt::Display,
    S::Future: Send,
    R: Send,
{
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::ServiceExt;
    let next = std::sync::Arc::new(AtomicUsize::new(0));
    closed_loop(
        load.concurrency,
        load.duration,
        load.max_requests,
        move || {
            let (service, make) = (service.clone(), make.clone());
            let n = next.fetch_add(1, Ordering::Relaxed);
            async move {
                let request = make(n)?;
                let response = service.oneshot(request).await.map_err(|e| e.to_string())?;
                Ok(backend_of(&response))
            }
        },
    )
    .await
}

/// reqwest with requests addressed to the backends by hand, round robin,
/// through the same client stack as the layer's (`HttpToReqwest`): the
/// baseline.
pub async fn raw_requests(backends: &[Backend], load: Load) -> RunFigures {
    let urls = item_urls(backends);
    let service = tower_lb::HttpToReqwest::new(reqwest::Client::new());
    drive_loop(service, load, move |n| {
        http::Request::get(urls[n % urls.len()].as_str())
            .body(reqwest::Body::from(""))
            .map_err(|e| e.to_string())
    })
    .await
}

/// `reqwest::Request`s straight to `reqwest::Client`, each URL parsed as it
/// is sent (as `client.get(url)` does), round robin over the backends by
/// hand.
pub async fn raw_reqwest_requests(backends: &[Backend], load: Load) -> RunFigures {
    let urls = item_urls(backends);
    drive_loop(reqwest::Client::new(), load, move |n| {
        let url = reqwest::Url::parse(&urls[n % urls.len()]).map_err(|e| e.to_string())?;
        Ok(reqwest::Request::new(http::Method::GET, url))
    })
    .await
}

/// The same `reqwest::Request`s, to a placeholder host, through the layer
/// over `reqwest::Client` (the README's stack) with `policy` and `retry`.
pub async fn layer_reqwest_requests(
    backends: &[Backend],
    policy: tower_lb::Policy,
    retry: tower_lb::Retries,
    load: Load,
) -> RunFigures {
    let service = tower::ServiceBuilder::new()
        .layer(balancer_over(backends, policy, retry).layer())
        .service(reqwest::Client::new());
    drive_loop(service, load, |_| {
        let url = reqwest::Url::parse("http://backend/item").map_err(|e| e.to_string())?;
        Ok(reqwest::Request::new(http::Method::GET, url))
    })
    .await
}

/// The requests of [`layer_requests`] (no session key) through the layer
/// of `balancer`, built by the caller (with its metrics, say).
pub async fn layer_requests_through(balancer: &tower_lb::Balancer, load: Load) -> RunFigures {
    let service = tower::ServiceBuilder::new()
        .layer(balancer.layer())
        .service(tower_lb::HttpToReqwest::new(reqwest::Client::new()));
    drive_loop(service, load, move |_| {
        http::Request::get("/item")
            .body(reqwest::Body::from(""))
            .map_err(|e| e.to_string())
    })
    .await
}

/// The same requests through the layer with `policy` and `retry`; for a
/// hashing policy each carries a session key (10,000 users). Other
/// policies read no key, so their requests carry no extensions, like the
/// raw ones and the README's quick start: a request with extensions takes
/// `HttpToReqwest`'s slower conversion (reqwest's own, about 150 ns more),
/// which would be charged to the layer.
pub async fn layer_requests(
    backends: &[Backend],
    policy: tower_lb::Policy,
    retry: tower_lb::Retries,
    load: Load,
) -> RunFigures {
    let keyed = policy.is_hash();
    let service = tower::ServiceBuilder::new()
        .layer(balancer_over(backends, policy, retry).layer())
        .service(tower_lb::HttpToReqwest::new(reqwest::Client::new()));
    drive_loop(service, load, move |n| {
        let mut request = http::Request::get("/item")
            .body(reqwest::Body::from(""))
            .map_err(|e| e.to_string())?;
        if keyed {
            request
                .extensions_mut()
                .insert(tower_lb::SessionKey::new((n % 10_000).to_le_bytes()));
        }
        Ok(request)
    })
    .await
}
