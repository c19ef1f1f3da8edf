//! The balancer: the shared state behind every clone of the layer and its
//! services, read by requests; its builder (`builder`) and the handle that
//! changes the endpoint set (`update`) live beside it.
//!
//! Requests read the current [`Snapshot`] through `ArcSwap` and never lock.
//! Updates are serialised by a mutex that only writers take: each builds the
//! next snapshot beside the current one and publishes it with one store, so
//! a request in flight is never blocked or failed by an update.

mod builder;
mod handles;
mod update;

use std::sync::{Arc, Mutex, Weak};

use arc_swap::{ArcSwap, Guard};
use tokio::time::Instant;

pub use builder::BalancerBuilder;
pub(crate) use handles::{LaneHandle, LaneHandles};

#[cfg(feature = "cookies")]
use crate::affinity::SiteCookies;
use crate::affinity::{LearnedHomes, RequestInfo, RequestKey, SessionKey};
use crate::endpoint::{
    Counters, DiscoveryStats, EndpointCore, EndpointState, ExtraAttempts, Stats, Ticket,
};
use crate::health::{Extra, Retrying};
use crate::hedge::Hedger;
use crate::membership::Snapshot;
use crate::policy::Policy;
use crate::refresh::ConnectFailures;

/// A load balancer over a set of HTTP endpoints.
///
/// Cheap to clone: clones share one endpoint set, one set of counters and
/// one rotation. Make a [`BalanceLayer`](crate::BalanceLayer) with [`Balancer::layer`], and change
/// the set at runtime through the same value.
///
/// ```
/// use tower_lb::Balancer;
///
/// let balancer = Balancer::builder()
///     .endpoint("http://127.0.0.1:8081")
///     .endpoint_weighted("http://127.0.0.1:8082", 3)
///     .build()?;
/// balancer.add("http://127.0.0.1:8083", 1)?;
/// balancer.drain("http://127.0.0.1:8081")?; // in-flight requests finish
/// assert_eq!(balancer.stats().endpoints.len(), 3);
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Clone)]
pub struct Balancer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    snapshot: ArcSwap<Snapshot>,
    policy: Policy,
    counters: Counters,
    /// Retry settings and budget; `None` when retries are off.
    retrying: Option<Arc<Retrying>>,
    /// Hedging settings and latency estimate; `None` when hedging is off.
    hedger: Option<Hedger>,
    /// Which endpoint issued each affinity cookie, when the key reads cookies.
    learned: Option<Arc<LearnedHomes>>,
    /// The cookies of the client behind the balancer, filed under one
    /// site, once a cookie jar was asked for.
    #[cfg(feature = "cookies")]
    site_cookies: std::sync::OnceLock<Arc<SiteCookies>>,
    /// Taken by updates only, never by requests.
    writer: Mutex<()>,
    /// Where requests' keys come from, fixed when the balancer was built.
    request_key: Option<RequestKey>,
    /// Whether the policy's key reads [`SessionKey::HEADER`].
    reads_session_header: bool,
    /// Requests a hashing policy found no key in (see `warn_keyless`).
    keyless: std::sync::atomic::AtomicU64,
    /// Set once the "no key in most requests" warning was given.
    warned_keyless: std::sync::atomic::AtomicBool,
    /// What discovery did, once it was started.
    discovery: Mutex<Option<DiscoveryStats>>,
    /// Dropped with the balancer: tells its discovery tasks to stop.
    dropped: tokio::sync::watch::Sender<()>,
    /// The discovery task following the current source, stopped when
    /// another source takes over.
    discovery_task: Mutex<Option<tokio::task::AbortHandle>>,
    /// The active health checks' task, stopped when others take over.
    checks_task: Mutex<Option<tokio::task::AbortHandle>>,
    /// Told when endpoints leave the set (see [`OnRemoval`]); taken by
    /// updates and registrations only.
    on_removal: Mutex<Vec<Weak<dyn OnRemoval>>>,
}

/// State kept per endpoint outside the balancer (an endpoint's own inner
/// service or gRPC channel), told when endpoints leave the set so that it
/// ends with them, not at some later change.
pub(crate) trait OnRemoval: Send + Sync {
    /// `gone` left the set in one change; called after the change is
    /// published, outside the balancer's update lock.
    fn removed(&self, gone: &[Arc<EndpointState>]);
}

/// A reference to a balancer that does not keep it alive.
#[derive(Clone, Debug)]
pub(crate) struct WeakBalancer(std::sync::Weak<Shared>);

impl WeakBalancer {
    pub(crate) fn upgrade(&self) -> Option<Balancer> {
        self.0.upgrade().map(|shared| Balancer { shared })
    }
}

/// The endpoint chosen for a request: one of the snapshot's, or the home
/// learned from its cookie.
enum Chosen<'s> {
    Active(&'s Arc<EndpointState>),
    Home(Arc<EndpointState>),
}

/// The endpoint chosen for a request.
#[derive(Debug)]
pub(crate) struct Picked {
    /// The lane of the endpoint's counters this thread writes.
    pub(crate) lane: Ticket,
    /// The endpoint itself, when the pick was asked to keep it.
    pub(crate) endpoint: Option<Arc<EndpointState>>,
    /// How many endpoints take requests (ejected ones included).
    pub(crate) takers: usize,
    /// The clock reading the pick was made at, if the clock was read; a
    /// timed request's latency is measured from it.
    pub(crate) at: Option<Instant>,
}

/// A summary: sizes and settings, never the tables.
impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let snapshot = self.snapshot();
        f.debug_struct("Balancer")
            .field("endpoints", &snapshot.members().len())
            .field("taking_requests", &snapshot.takers())
            .field("policy", &self.shared.policy)
            .field("retries", &self.shared.retrying.is_some())
            .finish_non_exhaustive()
    }
}

impl Balancer {
    /// Starts a [`BalancerBuilder`].
    pub fn builder() -> BalancerBuilder {
        BalancerBuilder::default()
    }

    /// Current counters of every endpoint.
    pub fn stats(&self) -> Stats {
        let mut stats = self.snapshot().stats();
        stats.discovery = self.discovery_stats().clone();
        stats.extra = self.extra_attempts();
        stats
    }

    /// The budget's grants and refusals, and the hedges that won.
    fn extra_attempts(&self) -> ExtraAttempts {
        let counts = self.shared.retrying.as_ref().map(|r| r.budget.counts());
        let counts = counts.unwrap_or_default();
        let (retry, hedge) = (Extra::Retry as usize, Extra::Hedge as usize);
        ExtraAttempts {
            retries: counts.granted[retry],
            hedges: counts.granted[hedge],
            retries_refused: counts.refused[retry],
            hedges_refused: counts.refused[hedge],
            hedges_won: self.shared.hedger.as_ref().map_or(0, Hedger::won),
        }
    }

    fn discovery_stats(&self) -> std::sync::MutexGuard<'_, Option<DiscoveryStats>> {
        // A panic while the lock was held leaves plain counters: keep them.
        self.shared
            .discovery
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes the discovery figures that `stats()` shows.
    pub(crate) fn update_discovery(&self, change: impl FnOnce(&mut DiscoveryStats)) {
        let mut stats = self.discovery_stats();
        let stats = stats.get_or_insert_with(Default::default);
        #[cfg(feature = "metrics")]
        let before = (stats.refreshes, stats.errors, stats.skipped);
        change(stats);
        // What the change added (a new source starts the figures again:
        // nothing is taken back from the counters).
        #[cfg(feature = "metrics")]
        self.shared.counters.metrics.discovery(
            stats.refreshes.saturating_sub(before.0),
            stats.errors.saturating_sub(before.1),
            stats.skipped.saturating_sub(before.2),
        );
    }

    /// Makes `task` the one discovery task, stopping the one before.
    /// Stops the discovery task, if one runs.
    pub(crate) fn stop_discovery_task(&self) {
        let previous = self
            .shared
            .discovery_task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(previous) = previous {
            previous.abort();
        }
    }

    /// Makes `task` the one active-check task, stopping the one before.
    pub(crate) fn replace_checks_task(&self, task: tokio::task::AbortHandle) {
        let mut current = self
            .shared
            .checks_task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(previous) = current.replace(task) {
            previous.abort();
        }
    }

    /// The balancer's health: ejections, detectors, checks.
    pub(crate) fn health(&self) -> &Arc<crate::health::HealthShared> {
        &self.shared.counters.health
    }

    /// The endpoints taking requests now (ejected ones included).
    pub(crate) fn active_endpoints(&self) -> Vec<Arc<EndpointState>> {
        self.snapshot().active().to_vec()
    }

    pub(crate) fn replace_discovery_task(&self, task: tokio::task::AbortHandle) {
        let mut current = self
            .shared
            .discovery_task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(previous) = current.replace(task) {
            previous.abort();
        }
    }

    /// Tells `listener` of every later change that removes endpoints, for
    /// as long as it lives.
    pub(crate) fn on_removal(&self, listener: Weak<dyn OnRemoval>) {
        let mut listeners = self
            .shared
            .on_removal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        listeners.retain(|l| l.strong_count() > 0);
        listeners.push(listener);
    }

    /// Tells the listeners that `gone` left the set.
    fn removed(&self, gone: &[Arc<EndpointState>]) {
        let listeners: Vec<Arc<dyn OnRemoval>> = self
            .shared
            .on_removal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for listener in listeners {
            listener.removed(gone);
        }
    }

    /// Resolves when the balancer is dropped (its last handle).
    pub(crate) fn dropped(&self) -> tokio::sync::watch::Receiver<()> {
        self.shared.dropped.subscribe()
    }

    /// Whether an endpoint of the set is ejected after connect failures
    /// (its last failure was one): a hint that the set may be stale.
    pub(crate) fn ejected_after_connect_failures(&self) -> bool {
        self.snapshot()
            .members()
            .iter()
            .any(|member| member.state.ejected_after_connect_failures())
    }

    /// Connect failures since discovery last looked.
    pub(crate) fn connect_failures(&self) -> &Arc<ConnectFailures> {
        &self.shared.counters.connect_failures
    }

    /// Where a request with this key goes now, by canonical URL, without
    /// sending anything: for tests, dashboards and "which backend holds
    /// user 42?". A session cookie's value learned from a backend's
    /// `Set-Cookie` is located at that backend. `None` unless the policy
    /// reads keys (a hashing policy, or a custom policy that reads them:
    /// its picker answers through [`Picker::locate`](crate::Picker::locate)),
    /// or when no endpoint may take the request. With bounded loads the
    /// answer depends on the loads of the moment.
    ///
    /// ```
    /// use tower_lb::{Balancer, Policy, SessionKey};
    ///
    /// let balancer = Balancer::builder()
    ///     .endpoint("http://127.0.0.1:8081")
    ///     .endpoint("http://127.0.0.1:8082")
    ///     .policy(Policy::maglev())
    ///     .build()?;
    /// let home = balancer.locate(&SessionKey::new("user-42"));
    /// assert!(home.is_some());
    /// assert_eq!(balancer.locate(&SessionKey::new("user-42")), home);
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    pub fn locate(&self, key: &SessionKey) -> Option<Arc<str>> {
        self.shared.request_key.as_ref()?;
        let snapshot = self.snapshot();
        let learned = self
            .shared
            .learned
            .as_ref()
            .and_then(|l| l.home(key.digest()));
        match learned.filter(|home| snapshot.takes(home)) {
            Some(home) => Some(home.url.shared_name()),
            None => snapshot.locate(key.digest()).map(|e| e.url.shared_name()),
        }
    }

    /// The current snapshot, loaded without a lock.
    fn snapshot(&self) -> Guard<Arc<Snapshot>> {
        self.shared.snapshot.load()
    }

    /// Chooses the endpoint for a request described by `request`, none of
    /// `excluded`: the endpoint that issued its session cookie if known and
    /// taking requests, else the policy's choice. `None` when no endpoint
    /// may take it.
    ///
    /// The endpoint's own handle comes with the pick only when `keep` asks
    /// for it (to learn its cookies, to find its service): taking it
    /// writes a reference count that every core's requests to the endpoint
    /// share, where the lane's is this thread's.
    pub(crate) fn pick_for(
        &self,
        request: &RequestInfo<'_>,
        excluded: &[Arc<EndpointCore>],
        keep: bool,
    ) -> Option<Picked> {
        let snapshot = self.snapshot();
        let clock = &self.shared.counters.clock;
        // The clock is read here only when the policy reads response times
        // or the retry budget needs the time; a request that is timed reads
        // it when it starts otherwise.
        let reads_clock =
            self.shared.counters.rtt.times_every_request() || self.shared.retrying.is_some();
        let now = reads_clock.then(|| clock.now());
        let picked = |endpoint: &Arc<EndpointState>| Picked {
            lane: endpoint.ticket(),
            endpoint: keep.then(|| endpoint.clone()),
            takers: snapshot.takers(),
            at: now,
        };
        match self.pick_in(&snapshot, request, excluded, now)? {
            Chosen::Home(home) => Some(picked(&home)),
            Chosen::Active(endpoint) => Some(picked(endpoint)),
        }
    }

    /// The balancer's clock now.
    pub(crate) fn now(&self) -> Instant {
        self.shared.counters.clock.now()
    }

    fn pick_in<'s>(
        &self,
        snapshot: &'s Snapshot,
        request: &RequestInfo<'_>,
        excluded: &[Arc<EndpointCore>],
        now: Option<Instant>,
    ) -> Option<Chosen<'s>> {
        let Some(request_key) = self.shared.request_key.as_ref() else {
            return snapshot.pick(None, excluded, now).map(Chosen::Active);
        };
        #[cfg(feature = "cookies")]
        let stored = self.jar_cookies(request, snapshot);
        #[cfg(feature = "cookies")]
        let request = &RequestInfo {
            jar_cookies: stored.as_ref(),
            ..*request
        };
        let key = request_key.hash(request);
        if key.is_none() {
            self.note_keyless(snapshot);
        }
        if let (Some(learned), Some(key)) = (&self.shared.learned, key) {
            let fresh = |home: &Arc<EndpointState>| !excluded.iter().any(|e| home.has_core(e));
            if let Some(home) = learned
                .home(key)
                .filter(|home| snapshot.takes(home) && fresh(home))
            {
                return Some(Chosen::Home(home));
            }
        }
        snapshot.pick(key, excluded, now).map(Chosen::Active)
    }

    /// Whether the policy reads session keys, so that requests may carry
    /// [`SessionKey::HEADER`], which must not leave the process.
    pub(crate) fn reads_session_header(&self) -> bool {
        self.shared.reads_session_header
    }

    /// Counts a request the hashing policy found no key in (it goes to the
    /// fallback policy), and warns once when such requests are most of the
    /// traffic: checked when their count reaches 64, 128, 256, ..., so a
    /// keyed request costs nothing and a keyless one one counter.
    fn note_keyless(&self, snapshot: &Snapshot) {
        use std::sync::atomic::Ordering::Relaxed;
        let keyless = self.shared.keyless.fetch_add(1, Relaxed) + 1;
        if keyless < 64 || !keyless.is_power_of_two() || self.shared.warned_keyless.load(Relaxed) {
            return;
        }
        let requests = snapshot.requests_started();
        if keyless * 2 > requests && !self.shared.warned_keyless.swap(true, Relaxed) {
            tracing::warn!(
                keyless,
                requests,
                "the hashing policy found no key in most requests, so the fallback policy \
                 placed them: check the RequestKey sources (a reqwest::Request carries a \
                 SessionKey in a header: SessionKey::attach)"
            );
        }
    }

    /// The retry settings and budget, when retries are on.
    pub(crate) fn retrying(&self) -> Option<&Arc<Retrying>> {
        self.shared.retrying.as_ref()
    }

    /// The balancer's own metric series.
    #[cfg(feature = "metrics")]
    pub(crate) fn metrics(&self) -> &crate::telemetry::BalancerMetrics {
        &self.shared.counters.metrics
    }

    /// The hedging settings and latency estimate, when hedging is on.
    pub(crate) fn hedger(&self) -> Option<&Hedger> {
        self.shared.hedger.as_ref()
    }

    /// The affinity cookies the jar holds for `request`, if a jar is in use,
    /// holds cookies for the balanced site, and the request carries no
    /// `Cookie` header of its own. Without stored cookies this is two loads:
    /// no lock, no allocation.
    #[cfg(feature = "cookies")]
    fn jar_cookies(
        &self,
        request: &RequestInfo<'_>,
        snapshot: &Snapshot,
    ) -> Option<http::HeaderValue> {
        let site = self.shared.site_cookies.get()?;
        if !site.holds_any()
            || self.shared.learned.is_none()
            || request.headers.contains_key(http::header::COOKIE)
        {
            return None;
        }
        let (secure, base_path) = snapshot.cookie_view();
        site.for_request(secure, base_path, request.path)
    }

    /// The learned affinity table, when the policy keys on cookies.
    pub(crate) fn learned(&self) -> Option<&Arc<LearnedHomes>> {
        self.shared.learned.as_ref()
    }

    /// Whether `url` points at one of the endpoints.
    #[cfg(feature = "cookies")]
    pub(crate) fn serves(&self, url: &reqwest::Url) -> bool {
        self.snapshot()
            .members()
            .iter()
            .any(|m| m.state.url.serves(url))
    }

    /// A reference that does not keep the balancer alive.
    pub(crate) fn downgrade(&self) -> WeakBalancer {
        WeakBalancer(Arc::downgrade(&self.shared))
    }

    /// The cookies of the client behind the balancer, made on first use.
    #[cfg(feature = "cookies")]
    pub(crate) fn site_cookies(&self) -> &Arc<SiteCookies> {
        self.shared.site_cookies.get_or_init(Default::default)
    }
}
