//! Active health checks, the sending side: one tokio task per balancer
//! that sends each endpoint an HTTP request on an interval and hands the
//! outcome to the balancer's health (`health/active.rs` says what an
//! outcome does).
//!
//! The balancer's layer sees its inner service only per call, so the
//! checks are given theirs: [`Balancer::health_checks`] takes a clone of
//! the inner service user requests go through (one for every endpoint),
//! [`PerEndpointService::health_checks`] uses each endpoint's own.
//!
//! Spread and bounded: an endpoint's first check runs within a tenth of
//! the interval of its arrival, the `n` endpoints of a set spread evenly
//! over that tenth; after that, endpoint `i` of `n` is checked every
//! interval at phase `i × interval / n`, plus a random jitter up to
//! `interval_jitter` drawn from the balancer's generator. At most
//! `concurrency` checks are in flight; a check due while that many run
//! waits for one to end.
//!
//! The task holds the balancer only by a weak reference, and ends when the
//! balancer is dropped (it is told at once, not at its next check), or
//! when checks are started again. An endpoint that leaves the set is no
//! longer checked, and a check of it still in flight changes nothing.
//! Requests never wait for the task or take a lock of it: it only moves
//! endpoints in and out of the ejection book, as outlier detection does.

use std::collections::{HashMap, HashSet};
use std::future::{poll_fn, Future};
use std::marker::PhantomData;
use std::pin::{pin, Pin};
use std::sync::{Arc, Weak};
use std::task::Poll;

use futures_util::stream::{FuturesUnordered, StreamExt};
use http::header::{HeaderValue, USER_AGENT};
use tokio::sync::{watch, Notify};
use tower_service::Service;

use crate::balancer::{Balancer, WeakBalancer};
use crate::clock::millis;
use crate::endpoint::EndpointState;
use crate::error::{BoxError, Error};
use crate::health::{ActiveHealthCheck, EndpointHealth};
use crate::per_endpoint::PerEndpointService;
use crate::request::sealed::Status;
use crate::request::BalanceResponse;
use crate::response::ServiceFor;

/// What a check request's `User-Agent` says.
const AGENT: &str = "tower-lb-health-check";

impl Balancer {
    /// Starts active health checks: `check`'s request to every endpoint
    /// on its interval, through `service`, the inner service user requests
    /// go through (a clone per check). Checks run on a task of the current
    /// tokio runtime until the balancer is dropped; calling this again
    /// replaces them. Every endpoint not checked yet is out until its
    /// first check passes (see [`ActiveHealthCheck`] and docs/health.md,
    /// "Active checks").
    ///
    /// Errors: [`Error::InvalidPolicy`] for settings out of range or when
    /// called outside a tokio runtime.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower::ServiceBuilder;
    /// use tower_lb::{ActiveHealthCheck, Balancer, HttpToReqwest};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_lb::Error> {
    /// let balancer = Balancer::builder()
    ///     .endpoint("http://127.0.0.1:8081")
    ///     .endpoint("http://127.0.0.1:8082")
    ///     .build()?;
    /// let inner = HttpToReqwest::new(reqwest::Client::new());
    /// balancer.health_checks::<_, reqwest::Body>(
    ///     ActiveHealthCheck::new("/healthz").interval(Duration::from_secs(5)),
    ///     inner.clone(),
    /// )?;
    /// let client = ServiceBuilder::new().layer(balancer.layer()).service(inner);
    /// # let _ = client;
    /// # Ok(())
    /// # }
    /// ```
    pub fn health_checks<S, B>(&self, check: ActiveHealthCheck, service: S) -> Result<(), Error>
    where
        S: Service<http::Request<B>> + Clone + Send + 'static,
        S::Future: Send,
        S::Response: BalanceResponse,
        S::Error: Into<BoxError>,
        B: Default + Send + 'static,
    {
        start(self, check, OneService(service))
    }
}

impl<S> PerEndpointService<S>
where
    S: Clone + Send + Sync + 'static,
{
    /// Starts active health checks through each endpoint's own service
    /// (made as for its requests), as [`Balancer::health_checks`] does.
    ///
    /// ```
    /// use tower_lb::{ActiveHealthCheck, Balancer, HttpToReqwest};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_lb::Error> {
    /// let balancer = Balancer::builder().endpoint("http://127.0.0.1:8081").build()?;
    /// let client = reqwest::Client::new();
    /// let service = balancer.per_endpoint(move |_url: &str| HttpToReqwest::new(client.clone()));
    /// service.health_checks::<reqwest::Body>(ActiveHealthCheck::new("/healthz"))?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn health_checks<B>(&self, check: ActiveHealthCheck) -> Result<(), Error>
    where
        S: Service<http::Request<B>>,
        S::Future: Send,
        S::Response: BalanceResponse,
        S::Error: Into<BoxError>,
        B: Default + Send + 'static,
    {
        let (balancer, service_for) = self.check_parts();
        start(balancer, check, EachService(service_for.clone()))
    }
}

/// Which service sends an endpoint's check.
trait Target: Send + 'static {
    type Service;
    fn service(&self, endpoint: &Arc<EndpointState>) -> Option<Self::Service>;
}

/// One service for every endpoint.
struct OneService<S>(S);

impl<S: Clone + Send + 'static> Target for OneService<S> {
    type Service = S;
    fn service(&self, _: &Arc<EndpointState>) -> Option<S> {
        Some(self.0.clone())
    }
}

/// Each endpoint's own.
struct EachService<S>(ServiceFor<S>);

impl<S: 'static> Target for EachService<S> {
    type Service = S;
    fn service(&self, endpoint: &Arc<EndpointState>) -> Option<S> {
        (self.0)(endpoint)
    }
}

fn start<S, B, T>(balancer: &Balancer, check: ActiveHealthCheck, target: T) -> Result<(), Error>
where
    S: Service<http::Request<B>> + Send + 'static,
    S::Future: Send,
    S::Response: BalanceResponse,
    S::Error: Into<BoxError>,
    B: Default + Send + 'static,
    T: Target<Service = S>,
{
    if check.is_grpc() {
        return Err(Error::InvalidPolicy {
            reason: "active health check: a gRPC check goes through BalancedChannel::health_checks"
                .into(),
        });
    }
    let probe = HttpProbe {
        target,
        check: Arc::new(check.clone()),
        body: PhantomData,
    };
    start_probing(balancer, check, probe)
}

/// Starts the checks' task with `probe` sending each check.
pub(crate) fn start_probing<P: Probe>(
    balancer: &Balancer,
    check: ActiveHealthCheck,
    probe: P,
) -> Result<(), Error> {
    check.validate()?;
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::InvalidPolicy {
        reason: "active health checks run on a tokio runtime: start them inside one".into(),
    })?;
    let health = balancer.health();
    let generation = health.start_checks(&check);
    let mut checker = Checker {
        balancer: balancer.downgrade(),
        wake: health.checks_wake(),
        interval: millis(check.interval).max(1),
        jitter: check.jitter_ms(),
        check: Arc::new(check),
        slots: HashMap::new(),
    };
    // The first round's times count from now, not from the task's start.
    checker.follow(&balancer.active_endpoints(), health.now_ms());
    let task = runtime.spawn(checker.run(balancer.dropped(), probe, generation));
    balancer.replace_checks_task(task.abort_handle());
    Ok(())
}

/// One check's answer: whether it passed.
pub(crate) type Verdict = Pin<Box<dyn Future<Output = bool> + Send>>;

/// How a check is sent: an HTTP request, or gRPC's health protocol.
pub(crate) trait Probe: Send + 'static {
    /// Checks `endpoint` at `uri` (its URL and the check's path; `None`
    /// when they make no URI), within the check's timeout.
    fn probe(&self, endpoint: &Arc<EndpointState>, uri: Option<http::Uri>) -> Verdict;
}

/// An HTTP check through a service of `target`'s.
struct HttpProbe<T, B> {
    target: T,
    check: Arc<ActiveHealthCheck>,
    body: PhantomData<fn() -> B>,
}

impl<B, T> Probe for HttpProbe<T, B>
where
    T: Target,
    T::Service: Service<http::Request<B>> + Send + 'static,
    <T::Service as Service<http::Request<B>>>::Future: Send,
    <T::Service as Service<http::Request<B>>>::Response: BalanceResponse,
    <T::Service as Service<http::Request<B>>>::Error: Into<BoxError>,
    B: Default + Send + 'static,
{
    fn probe(&self, endpoint: &Arc<EndpointState>, uri: Option<http::Uri>) -> Verdict {
        let request = uri.and_then(|uri| {
            http::Request::builder()
                .method(self.check.method.clone())
                .uri(uri)
                .header(USER_AGENT, HeaderValue::from_static(AGENT))
                .body(B::default())
                .ok()
        });
        send(self.target.service(endpoint), request, self.check.clone())
    }
}

/// A check in flight: the endpoint's key and whether it passed.
type Running = Pin<Box<dyn Future<Output = (usize, bool)> + Send>>;

/// One endpoint's checks.
struct Slot {
    /// Keeps the endpoint's address from naming another (its key).
    endpoint: Weak<EndpointState>,
    health: Arc<EndpointHealth>,
    uri: Option<http::Uri>,
    /// Its phase: checks are due at `base + round × interval` (+ jitter).
    base: u64,
    round: u64,
    due: u64,
    running: bool,
}

struct Checker {
    balancer: WeakBalancer,
    wake: Arc<Notify>,
    check: Arc<ActiveHealthCheck>,
    interval: u64,
    jitter: u64,
    slots: HashMap<usize, Slot>,
}

/// Turns the checks' side of the book off when the task ends other than
/// by being replaced (its runtime shut down under a living balancer).
struct Stops(WeakBalancer, u64);

impl Drop for Stops {
    fn drop(&mut self) {
        if let Some(balancer) = self.0.upgrade() {
            balancer.health().stop_checks(self.1);
        }
    }
}

/// What woke the task.
enum Woke {
    Done(usize, bool),
    Due,
    Dropped,
}

impl Checker {
    async fn run<P: Probe>(mut self, mut dropped: watch::Receiver<()>, probe: P, generation: u64) {
        let _stops = Stops(self.balancer.clone(), generation);
        let mut running: FuturesUnordered<Running> = FuturesUnordered::new();
        let mut done = None;
        loop {
            let next = {
                let Some(balancer) = self.balancer.upgrade() else {
                    return;
                };
                let health = balancer.health().clone();
                let now = health.now_ms();
                self.follow(&balancer.active_endpoints(), now);
                if let Some((key, passed)) = done.take() {
                    self.finished(key, passed, now, &health);
                }
                self.launch(now, &health, &probe, &mut running);
                let next = if running.len() >= self.check.concurrency {
                    None
                } else {
                    let due = self.slots.values().filter(|s| !s.running);
                    due.map(|s| s.due).min()
                };
                next.map(|ms| health.instant_at(ms))
            };
            let woke = {
                let mut sleep = next.map(|at| Box::pin(tokio::time::sleep_until(at)));
                let mut notified = pin!(self.wake.notified());
                let mut gone = pin!(dropped.changed());
                poll_fn(|cx| {
                    if let Poll::Ready(Some((key, passed))) = running.poll_next_unpin(cx) {
                        return Poll::Ready(Woke::Done(key, passed));
                    }
                    if gone.as_mut().poll(cx).is_ready() {
                        // Nothing is ever sent: only the balancer's drop
                        // ends the wait.
                        return Poll::Ready(Woke::Dropped);
                    }
                    if notified.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Woke::Due);
                    }
                    if let Some(sleep) = sleep.as_mut() {
                        if sleep.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Woke::Due);
                        }
                    }
                    Poll::Pending
                })
                .await
            };
            match woke {
                Woke::Dropped => return,
                Woke::Done(key, passed) => done = Some((key, passed)),
                Woke::Due => {}
            }
        }
    }

    /// Follows the set: endpoints that left it are no longer checked (a
    /// check of theirs in flight is forgotten); newcomers get a phase.
    fn follow(&mut self, active: &[Arc<EndpointState>], now: u64) {
        let keys: HashSet<usize> = active.iter().map(key).collect();
        self.slots.retain(|k, _| keys.contains(k));
        let n = active.len().max(1) as u64;
        for (i, endpoint) in active.iter().enumerate() {
            let interval = self.interval;
            let path = &self.check.path;
            self.slots.entry(key(endpoint)).or_insert_with(|| {
                let phase = (i as u64).saturating_mul(interval) / n;
                // From its arrival in the set, if the task is late to see it.
                let now = endpoint
                    .health()
                    .checks
                    .waiting_since()
                    .map_or(now, |t| t.min(now));
                Slot {
                    endpoint: Arc::downgrade(endpoint),
                    health: endpoint.health().clone(),
                    uri: format!("{}{}", endpoint.url.as_str(), path).parse().ok(),
                    base: now.saturating_add(phase),
                    round: 0,
                    due: now.saturating_add(phase / 10),
                    running: false,
                }
            });
        }
    }

    /// Hands a check's outcome to the endpoint's health, and sets its next
    /// check: the next round of its phase after now, plus the jitter.
    fn finished(
        &mut self,
        key: usize,
        passed: bool,
        now: u64,
        health: &crate::health::HealthShared,
    ) {
        let Some(slot) = self.slots.get_mut(&key) else {
            return;
        };
        slot.running = false;
        health.check_outcome(&slot.health, passed);
        let interval = self.interval;
        let mut round = slot.round.saturating_add(1);
        let at = |round: u64| slot.base.saturating_add(round.saturating_mul(interval));
        if at(round) <= now {
            round = (now.saturating_sub(slot.base) / interval).saturating_add(1);
        }
        slot.round = round;
        slot.due = at(round).saturating_add(health.draw(self.jitter.saturating_add(1)));
    }

    /// Sends the checks due by `now`, earliest first, while fewer than
    /// `concurrency` are in flight.
    fn launch<P: Probe>(
        &mut self,
        now: u64,
        health: &crate::health::HealthShared,
        probe: &P,
        running: &mut FuturesUnordered<Running>,
    ) {
        let mut due: Vec<(u64, usize)> = (self.slots.iter())
            .filter(|(_, s)| !s.running && s.due <= now)
            .map(|(k, s)| (s.due, *k))
            .collect();
        due.sort_unstable();
        for (_, key) in due {
            if running.len() >= self.check.concurrency {
                break;
            }
            let Some(slot) = self.slots.get_mut(&key) else {
                continue;
            };
            let Some(endpoint) = slot.endpoint.upgrade() else {
                continue;
            };
            slot.running = true;
            health.check_sent(&slot.health);
            let verdict = probe.probe(&endpoint, slot.uri.clone());
            running.push(Box::pin(async move { (key, verdict.await) }));
        }
    }
}

/// One check: whether `service` answers `request` within the timeout with
/// an expected status.
fn send<S, B>(
    service: Option<S>,
    request: Option<http::Request<B>>,
    check: Arc<ActiveHealthCheck>,
) -> Verdict
where
    S: Service<http::Request<B>> + Send + 'static,
    S::Future: Send,
    S::Response: BalanceResponse,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    Box::pin(async move {
        let (Some(mut service), Some(request)) = (service, request) else {
            return false;
        };
        let call = async {
            poll_fn(|cx| service.poll_ready(cx)).await.ok()?;
            service.call(request).await.ok().map(|r| r.status())
        };
        matches!(
            tokio::time::timeout(check.timeout, call).await,
            Ok(Some(status)) if check.passes(status)
        )
    })
}

fn key(endpoint: &Arc<EndpointState>) -> usize {
    Arc::as_ptr(endpoint) as usize
}
