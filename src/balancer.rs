//! The balancer: the shared state behind every clone of the layer and its
//! services, its builder, and the handle that changes the endpoint set.
//!
//! Requests read the current [`Snapshot`] through `ArcSwap` and never lock.
//! Updates are serialised by a mutex that only writers take: each builds the
//! next snapshot beside the current one and publishes it with one store, so
//! a request in flight is never blocked or failed by an update.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use futures::{Stream, StreamExt};
use tower::discover::Change;

use crate::affinity::LearnedHomes;
use crate::clock::Clock;
use crate::endpoint::{Counters, EndpointState, EndpointUrl, Member, Snapshot, Stats, MAX_WEIGHT};
use crate::health::{HealthShared, Retrying};
use crate::random::SharedRng;
use crate::{
    BalanceLayer, BalanceRequest, Error, OutlierDetection, Policy, RequestInfo, RetryPolicy,
    Selection, SessionKey,
};

/// Most discovery changes applied in one rebuild of the set.
const DISCOVERY_BATCH: usize = 1024;

/// A load balancer over a set of HTTP endpoints.
///
/// Cheap to clone: clones share one endpoint set, one set of counters and
/// one rotation. Make a [`BalanceLayer`] with [`Balancer::layer`], and change
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
#[derive(Clone, Debug)]
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
    /// Which endpoint issued each affinity cookie, when the key reads cookies.
    learned: Option<Arc<LearnedHomes>>,
    /// The cookie store handed to reqwest, once asked for.
    #[cfg(feature = "cookies")]
    jar: std::sync::OnceLock<Arc<crate::BalancedCookieJar>>,
    /// Taken by updates only, never by requests.
    writer: Mutex<()>,
}

/// A reference to a balancer that does not keep it alive.
#[cfg(feature = "cookies")]
#[derive(Debug)]
pub(crate) struct WeakBalancer(std::sync::Weak<Shared>);

#[cfg(feature = "cookies")]
impl WeakBalancer {
    pub(crate) fn upgrade(&self) -> Option<Balancer> {
        self.0.upgrade().map(|shared| Balancer { shared })
    }
}

impl Balancer {
    /// Starts a [`BalancerBuilder`].
    pub fn builder() -> BalancerBuilder {
        BalancerBuilder::default()
    }

    /// A [`BalanceLayer`] that sends requests through this balancer.
    pub fn layer(&self) -> BalanceLayer {
        BalanceLayer::new(self.clone())
    }

    /// Current counters of every endpoint.
    pub fn stats(&self) -> Stats {
        self.snapshot().stats()
    }

    /// Where a request with this key goes now, by canonical URL, without
    /// sending anything: for tests, dashboards and "which backend holds
    /// user 42?". A session cookie's value learned from a backend's
    /// `Set-Cookie` is located at that backend. `None` unless the policy
    /// hashes (only hashing places keys),
    /// or when no endpoint takes requests. With bounded loads the answer
    /// depends on the loads of the moment.
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
        if !self.shared.policy.is_hash() {
            return None;
        }
        let snapshot = self.snapshot();
        let learned = self
            .shared
            .learned
            .as_ref()
            .and_then(|l| l.home(key.hash()));
        match learned.filter(|home| snapshot.takes(home)) {
            Some(home) => Some(home.url.shared_name()),
            None => snapshot
                .pick(Some(key.hash()), &[])
                .map(|e| e.url.shared_name()),
        }
    }

    /// Picks an endpoint for `request` as the layer would (policy, key,
    /// health) and counts the request in flight on it, for requests sent
    /// some other way than through the layer. Report the outcome with
    /// [`Selection::finish`] or [`Selection::fail`]; a selection dropped
    /// unreported counts as cancelled.
    ///
    /// Errors: [`Error::NoEndpointAvailable`].
    ///
    /// ```
    /// use tower_lb::{Balancer, Policy, SessionKey};
    ///
    /// let balancer = Balancer::builder()
    ///     .endpoint("http://127.0.0.1:8081")
    ///     .endpoint("http://127.0.0.1:8082")
    ///     .policy(Policy::maglev())
    ///     .build()?;
    /// let mut request = http::Request::get("/cart").body(())?;
    /// request.extensions_mut().insert(SessionKey::new("user-42"));
    /// let selection = balancer.select(&request)?;
    /// assert_eq!(
    ///     Some(selection.endpoint()),
    ///     balancer.locate(&SessionKey::new("user-42")).as_deref()
    /// );
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn select<R: BalanceRequest>(&self, request: &R) -> Result<Selection, Error> {
        match self.pick(request, &[]) {
            Some(endpoint) => Ok(Selection::start(endpoint)),
            None => Err(Error::NoEndpointAvailable),
        }
    }

    /// Adds an endpoint with a weight (0 adds it drained).
    ///
    /// Errors: [`Error::InvalidUrl`], [`Error::InvalidWeight`],
    /// [`Error::DuplicateEndpoint`] if it is already in the set.
    pub fn add(&self, url: &str, weight: u32) -> Result<(), Error> {
        let url = EndpointUrl::parse(url)?;
        check_weight(&url, weight)?;
        let counters = &self.shared.counters;
        self.update(|members| {
            if position(members, &url).is_some() {
                return Err(Error::DuplicateEndpoint {
                    url: url.as_str().to_owned(),
                });
            }
            members.push(Member::new(url, weight, counters));
            Ok(())
        })
    }

    /// Removes an endpoint. Requests already sent to it finish normally; its
    /// counters leave [`Balancer::stats`].
    ///
    /// Errors: [`Error::InvalidUrl`], [`Error::UnknownEndpoint`].
    pub fn remove(&self, url: &str) -> Result<(), Error> {
        let url = EndpointUrl::parse(url)?;
        self.update(|members| {
            let index = position(members, &url).ok_or_else(|| unknown(&url))?;
            members.remove(index);
            Ok(())
        })
    }

    /// Changes an endpoint's weight; 0 drains it.
    ///
    /// Errors: [`Error::InvalidUrl`], [`Error::InvalidWeight`],
    /// [`Error::UnknownEndpoint`].
    pub fn set_weight(&self, url: &str, weight: u32) -> Result<(), Error> {
        let url = EndpointUrl::parse(url)?;
        check_weight(&url, weight)?;
        self.update(|members| {
            let index = position(members, &url).ok_or_else(|| unknown(&url))?;
            members[index].weight = weight;
            Ok(())
        })
    }

    /// Drains an endpoint: it gets no new requests, and the ones in flight
    /// finish. Same as `set_weight(url, 0)`; give it a weight again to
    /// bring it back.
    pub fn drain(&self, url: &str) -> Result<(), Error> {
        self.set_weight(url, 0)
    }

    /// Applies a batch of discovery changes at once, all or none.
    ///
    /// `Change::Insert(url, weight)` adds the endpoint or, if it is already
    /// in the set, sets its weight; `Change::Remove(url)` removes it if
    /// present. The first invalid change is returned and nothing is applied.
    ///
    /// ```
    /// use tower::discover::Change;
    /// # let balancer = tower_lb::Balancer::builder().build()?;
    /// balancer.apply([
    ///     Change::Insert("http://127.0.0.1:8081", 2),
    ///     Change::Remove("http://127.0.0.1:8082"),
    /// ])?;
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    pub fn apply<K, I>(&self, changes: I) -> Result<(), Error>
    where
        K: AsRef<str>,
        I: IntoIterator<Item = Change<K, u32>>,
    {
        let changes = changes
            .into_iter()
            .map(ParsedChange::parse)
            .collect::<Result<Vec<_>, _>>()?;
        self.apply_parsed(changes);
        Ok(())
    }

    /// Follows a discovery stream of `Change<url, weight>` events (the
    /// [`tower::discover`] model) until it ends, applying each as
    /// [`Balancer::apply`] does. Changes that arrive together are applied in
    /// one rebuild of the set.
    ///
    /// An invalid change (a bad URL or weight) is skipped and logged at
    /// `warn` level, so one bad record cannot stall discovery. The stream's
    /// own error ends the loop and is returned.
    ///
    /// ```no_run
    /// # async fn run(balancer: tower_lb::Balancer) {
    /// use tower::discover::Change;
    /// let (tx, rx) = futures::channel::mpsc::unbounded::<Result<_, std::convert::Infallible>>();
    /// tokio::spawn({
    ///     let balancer = balancer.clone();
    ///     async move { balancer.follow(rx).await }
    /// });
    /// tx.unbounded_send(Ok(Change::Insert("http://127.0.0.1:8083", 1))).ok();
    /// # }
    /// ```
    pub async fn follow<S, K, E>(&self, changes: S) -> Result<(), E>
    where
        S: Stream<Item = Result<Change<K, u32>, E>>,
        K: AsRef<str>,
    {
        let mut batches = std::pin::pin!(changes.ready_chunks(DISCOVERY_BATCH));
        while let Some(batch) = batches.next().await {
            let mut parsed = Vec::with_capacity(batch.len());
            let mut failure = None;
            for change in batch {
                match change {
                    Ok(change) => match ParsedChange::parse(change) {
                        Ok(change) => parsed.push(change),
                        Err(error) => tracing::warn!(%error, "discovery change skipped"),
                    },
                    Err(error) => {
                        failure = Some(error);
                        break;
                    }
                }
            }
            if !parsed.is_empty() {
                self.apply_parsed(parsed);
            }
            if let Some(error) = failure {
                return Err(error);
            }
        }
        Ok(())
    }

    /// The current snapshot, loaded without a lock.
    fn snapshot(&self) -> Guard<Arc<Snapshot>> {
        self.shared.snapshot.load()
    }

    /// Chooses the endpoint for `request`, or `None` when no endpoint takes
    /// requests.
    pub(crate) fn pick<R: BalanceRequest>(
        &self,
        request: &R,
        excluded: &[Arc<EndpointState>],
    ) -> Option<Arc<EndpointState>> {
        self.pick_for(&request.info(), excluded)
    }

    /// Chooses the endpoint for a request described by `request`: the
    /// endpoint that issued its session cookie if known and taking requests,
    /// else the policy's choice.
    pub(crate) fn pick_for(
        &self,
        request: &RequestInfo<'_>,
        excluded: &[Arc<EndpointState>],
    ) -> Option<Arc<EndpointState>> {
        let snapshot = self.snapshot();
        let Some(request_key) = self.shared.policy.request_key() else {
            return snapshot.pick(None, excluded).cloned();
        };
        #[cfg(feature = "cookies")]
        let stored = self.jar_cookies(request, &snapshot);
        #[cfg(feature = "cookies")]
        let request = &RequestInfo {
            jar_cookies: stored.as_ref(),
            ..*request
        };
        let key = request_key.hash(request);
        if let (Some(learned), Some(key)) = (&self.shared.learned, key) {
            let fresh = |home: &Arc<EndpointState>| !excluded.iter().any(|e| Arc::ptr_eq(e, home));
            if let Some(home) = learned
                .home(key)
                .filter(|home| snapshot.takes(home) && fresh(home))
            {
                return Some(home);
            }
        }
        snapshot.pick(key, excluded).cloned()
    }

    /// The retry settings and budget, when retries are on.
    pub(crate) fn retrying(&self) -> Option<&Arc<Retrying>> {
        self.shared.retrying.as_ref()
    }

    /// The affinity cookies the jar holds for `request`, if a jar is in use
    /// and the request carries no `Cookie` header of its own.
    #[cfg(feature = "cookies")]
    fn jar_cookies(
        &self,
        request: &RequestInfo<'_>,
        snapshot: &Snapshot,
    ) -> Option<http::HeaderValue> {
        let jar = self.shared.jar.get()?;
        if self.shared.learned.is_none() || request.headers.contains_key(http::header::COOKIE) {
            return None;
        }
        let (secure, base_path) = snapshot.cookie_view();
        jar.site_cookies(secure, base_path, request.path)
    }

    /// The learned affinity table, when the policy keys on cookies.
    pub(crate) fn learned(&self) -> Option<&Arc<LearnedHomes>> {
        self.shared.learned.as_ref()
    }

    /// A cookie store to give the `reqwest::Client` under the balancer, so
    /// that a backend's session cookie brings the client back to it
    /// ("learned affinity"). Needs the `cookies` feature and a policy keyed
    /// on a cookie ([`RequestKey::cookie`](crate::RequestKey::cookie)).
    ///
    /// Every call returns the same store.
    ///
    /// ```
    /// use tower_lb::{Balancer, Policy, RequestKey};
    ///
    /// let balancer = Balancer::builder()
    ///     .endpoint("http://127.0.0.1:8081")
    ///     .policy(Policy::ring_hash().key(RequestKey::cookie("JSESSIONID")))
    ///     .build()?;
    /// let http = reqwest::Client::builder()
    ///     .cookie_provider(balancer.cookie_jar())
    ///     .build()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "cookies")]
    pub fn cookie_jar(&self) -> Arc<crate::BalancedCookieJar> {
        self.shared
            .jar
            .get_or_init(|| {
                let weak = WeakBalancer(Arc::downgrade(&self.shared));
                Arc::new(crate::BalancedCookieJar::new(weak))
            })
            .clone()
    }

    /// Whether `url` points at one of the endpoints.
    #[cfg(feature = "cookies")]
    pub(crate) fn serves(&self, url: &reqwest::Url) -> bool {
        self.snapshot()
            .members()
            .iter()
            .any(|m| m.state.url.serves(url))
    }

    fn apply_parsed(&self, changes: Vec<ParsedChange>) {
        let counters = &self.shared.counters;
        let Ok(()) = self.update::<Infallible>(|members| {
            changes
                .into_iter()
                .for_each(|c| c.apply_to(members, counters));
            Ok(())
        });
    }

    /// Runs `edit` on a copy of the member list and publishes the result,
    /// unless `edit` fails.
    fn update<E>(&self, edit: impl FnOnce(&mut Vec<Member>) -> Result<(), E>) -> Result<(), E> {
        let shared = &self.shared;
        // A panic elsewhere while holding the lock left no half-written
        // state (the snapshot is swapped whole), so a poisoned lock is fine.
        let _writer = shared.writer.lock().unwrap_or_else(|p| p.into_inner());
        let before = shared.snapshot.load_full();
        let mut members = before.members().to_vec();
        edit(&mut members)?;
        // A removed endpoint's health ends with its membership: it gives
        // back any ejection, and its late answers change nothing.
        for gone in before.members() {
            if !members.iter().any(|m| Arc::ptr_eq(&m.state, &gone.state)) {
                gone.state.retire();
            }
        }
        let next = Snapshot::build(members, &shared.policy, &shared.counters);
        shared.snapshot.store(Arc::new(next));
        Ok(())
    }
}

/// Builds a [`Balancer`] from a static list of endpoints and a policy.
///
/// Mistakes are remembered and returned by [`BalancerBuilder::build`], so
/// calls chain.
///
/// An empty list is allowed: requests then fail with
/// [`Error::NoEndpointAvailable`] until endpoints are added at runtime.
#[derive(Debug, Default)]
#[must_use]
pub struct BalancerBuilder {
    endpoints: Vec<(EndpointUrl, u32)>,
    policy: Policy,
    outlier_detection: OutlierDetection,
    retry: RetryPolicy,
    seed: Option<u64>,
    error: Option<Error>,
}

impl BalancerBuilder {
    /// Adds an endpoint with weight 1.
    pub fn endpoint(self, url: &str) -> Self {
        self.endpoint_weighted(url, 1)
    }

    /// Adds an endpoint with a weight between 0 (drained) and
    /// [`MAX_WEIGHT`](crate::MAX_WEIGHT).
    pub fn endpoint_weighted(mut self, url: &str, weight: u32) -> Self {
        if self.error.is_some() {
            return self;
        }
        let added = EndpointUrl::parse(url).and_then(|url| {
            check_weight(&url, weight)?;
            if self.endpoints.iter().any(|(known, _)| *known == url) {
                return Err(Error::DuplicateEndpoint {
                    url: url.as_str().to_owned(),
                });
            }
            Ok((url, weight))
        });
        match added {
            Ok(endpoint) => self.endpoints.push(endpoint),
            Err(error) => self.error = Some(error),
        }
        self
    }

    /// Sets the selection policy; the default is
    /// [`Policy::weighted_round_robin`].
    pub fn policy(mut self, policy: impl Into<Policy>) -> Self {
        self.policy = policy.into();
        self
    }

    /// Sets passive health checking; the default is
    /// [`OutlierDetection::default`] (Envoy's defaults), and
    /// [`OutlierDetection::disabled`] turns it off.
    pub fn outlier_detection(mut self, detection: OutlierDetection) -> Self {
        self.outlier_detection = detection;
        self
    }

    /// Sets when failed requests are retried on another endpoint; the
    /// default is [`RetryPolicy::default`]: connect errors only, within a
    /// budget. [`RetryPolicy::disabled`] turns retries off.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Seeds the balancer's random number generator, from which every
    /// random choice is drawn (the random policy, the candidates of least
    /// time). Two balancers with the same seed, the same endpoints and the
    /// same answers make the same picks, on any thread: for tests and
    /// replays. Without a seed, one is drawn at random.
    ///
    /// ```
    /// use tower_lb::{Balancer, Policy};
    ///
    /// let picks = |seed| {
    ///     let balancer = Balancer::builder()
    ///         .endpoint("http://127.0.0.1:8081")
    ///         .endpoint("http://127.0.0.1:8082")
    ///         .endpoint("http://127.0.0.1:8083")
    ///         .policy(Policy::random())
    ///         .seed(seed)
    ///         .build()?;
    ///     let request = http::Request::get("/").body(())?;
    ///     (0..20)
    ///         .map(|_| Ok(balancer.select(&request)?.endpoint().to_owned()))
    ///         .collect::<Result<Vec<_>, Box<dyn std::error::Error>>>()
    /// };
    /// assert_eq!(picks(7)?, picks(7)?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Checks the configuration and builds the balancer.
    ///
    /// Errors: the first invalid endpoint ([`Error::InvalidUrl`],
    /// [`Error::InvalidWeight`], [`Error::DuplicateEndpoint`]),
    /// [`Error::InvalidPolicy`], or [`Error::ZeroTotalWeight`] if endpoints
    /// were given but all with weight 0.
    pub fn build(self) -> Result<Balancer, Error> {
        if let Some(error) = self.error {
            return Err(error);
        }
        self.policy.validate()?;
        self.outlier_detection.validate()?;
        self.retry.validate()?;
        if !self.endpoints.is_empty() && self.endpoints.iter().all(|(_, w)| *w == 0) {
            return Err(Error::ZeroTotalWeight);
        }
        let clock = Clock::default();
        let seed = self.seed.unwrap_or_else(SharedRng::random_seed);
        let counters = Counters {
            clock,
            rng: Arc::new(SharedRng::new(seed)),
            rtt: Arc::new(self.policy.rtt_model_on(clock)),
            health: Arc::new(HealthShared::new(self.outlier_detection, clock)),
            in_flight: self.policy.counts_total_in_flight().then(Default::default),
            ..Counters::default()
        };
        let members = self
            .endpoints
            .into_iter()
            .map(|(url, weight)| Member::new(url, weight, &counters))
            .collect();
        let snapshot = Snapshot::build(members, &self.policy, &counters);
        let cookie_names = self
            .policy
            .request_key()
            .map(|key| key.cookie_names())
            .unwrap_or_default();
        Ok(Balancer {
            shared: Arc::new(Shared {
                snapshot: ArcSwap::from_pointee(snapshot),
                policy: self.policy,
                counters,
                learned: LearnedHomes::new(cookie_names).map(Arc::new),
                retrying: self.retry.start(clock),
                #[cfg(feature = "cookies")]
                jar: std::sync::OnceLock::new(),
                writer: Mutex::new(()),
            }),
        })
    }
}

/// A discovery change with its URL parsed and weight checked.
enum ParsedChange {
    Upsert(EndpointUrl, u32),
    Remove(EndpointUrl),
}

impl ParsedChange {
    fn parse<K: AsRef<str>>(change: Change<K, u32>) -> Result<Self, Error> {
        Ok(match change {
            Change::Insert(url, weight) => {
                let url = EndpointUrl::parse(url.as_ref())?;
                check_weight(&url, weight)?;
                ParsedChange::Upsert(url, weight)
            }
            Change::Remove(url) => ParsedChange::Remove(EndpointUrl::parse(url.as_ref())?),
        })
    }

    fn apply_to(self, members: &mut Vec<Member>, counters: &Counters) {
        match self {
            ParsedChange::Upsert(url, weight) => match position(members, &url) {
                Some(i) => members[i].weight = weight,
                None => members.push(Member::new(url, weight, counters)),
            },
            ParsedChange::Remove(url) => {
                if let Some(i) = position(members, &url) {
                    members.remove(i);
                }
            }
        }
    }
}

fn position(members: &[Member], url: &EndpointUrl) -> Option<usize> {
    members.iter().position(|m| m.state.url == *url)
}

fn check_weight(url: &EndpointUrl, weight: u32) -> Result<(), Error> {
    if weight > MAX_WEIGHT {
        return Err(Error::InvalidWeight {
            url: url.as_str().to_owned(),
            weight,
        });
    }
    Ok(())
}

fn unknown(url: &EndpointUrl) -> Error {
    Error::UnknownEndpoint {
        url: url.as_str().to_owned(),
    }
}
