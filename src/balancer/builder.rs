//! Building a balancer from a static list of endpoints and its settings.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::{Balancer, Shared};
use crate::affinity::LearnedHomes;
use crate::clock::Clock;
use crate::endpoint::{Counters, Endpoint, EndpointUrl, Labels, Member};
use crate::health::{HealthShared, OutlierDetection, Retries};
use crate::hedge::Hedging;
use crate::membership::Snapshot;
use crate::overload::{Holds, Overload};
use crate::policy::Policy;
use crate::random::SharedRng;
use crate::slow_start::{Ramps, SlowStart};
use crate::Error;

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
    endpoints: Vec<(EndpointUrl, u32, Labels)>,
    policy: Policy,
    outlier_detection: OutlierDetection,
    overload: Overload,
    retry: Retries,
    hedge: Option<Hedging>,
    slow_start: Option<SlowStart>,
    seed: Option<u64>,
    error: Option<Error>,
    /// The balancer's name in its metrics.
    #[cfg(feature = "metrics")]
    name: Option<String>,
}

impl BalancerBuilder {
    /// Adds an endpoint: a URL (weight 1, no labels) or an [`Endpoint`]
    /// with its weight and labels.
    pub fn endpoint(mut self, endpoint: impl Into<Endpoint>) -> Self {
        if self.error.is_some() {
            return self;
        }
        let added = endpoint.into().parse().and_then(|(url, weight, labels)| {
            if self.endpoints.iter().any(|(known, ..)| *known == url) {
                return Err(Error::DuplicateEndpoint {
                    url: url.as_str().to_owned(),
                });
            }
            Ok((url, weight, labels))
        });
        match added {
            Ok(endpoint) => self.endpoints.push(endpoint),
            Err(error) => self.error = Some(error),
        }
        self
    }

    /// Adds an endpoint with a weight between 0 (drained) and
    /// [`MAX_WEIGHT`](crate::MAX_WEIGHT).
    ///
    /// Every method that takes a URL takes anything that reads as one
    /// (`impl AsRef<str>`): `&str`, `String`, `&String`, `Arc<str>`.
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// let url = String::from("http://127.0.0.1:8082");
    /// let balancer = tower_lb::Balancer::builder()
    ///     .endpoint_weighted(String::from("http://127.0.0.1:8081"), 2)
    ///     .endpoint_weighted(&url, 3)
    ///     .endpoint_weighted(Arc::<str>::from("http://127.0.0.1:8083"), 1)
    ///     .build()?;
    /// assert_eq!(balancer.stats().endpoint(url).map(|e| e.weight), Some(3));
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    pub fn endpoint_weighted(self, url: impl AsRef<str>, weight: u32) -> Self {
        self.endpoint(Endpoint::new(url).with_weight(weight))
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

    /// Sets how endpoints that signal overload (a 429, a 503 with
    /// `Retry-After`, gRPC RESOURCE_EXHAUSTED or pushback) are held off;
    /// the default is [`Overload::default`] (5 s where the answer names no
    /// time, 300 s at most), and [`Overload::disabled`] turns it off. See
    /// docs/health.md, "Overload signals".
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_lb::{Balancer, Overload};
    ///
    /// let balancer = Balancer::builder()
    ///     .endpoint("http://127.0.0.1:8081")
    ///     .overload(Overload::default().max_hold(Duration::from_secs(30)))
    ///     .build()?;
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    pub fn overload(mut self, overload: Overload) -> Self {
        self.overload = overload;
        self
    }

    /// Sets when failed requests are retried on another endpoint; the
    /// default is [`Retries::default`]: connect errors only, within a
    /// budget. [`Retries::disabled`] turns retries off.
    pub fn retry(mut self, retry: Retries) -> Self {
        self.retry = retry;
        self
    }

    /// Hedges slow requests: a request safe to send twice that has had no
    /// answer after a delay is sent to another endpoint too, and the first
    /// answer wins (see [`Hedging`]). Off by default. Hedges draw on the
    /// retry budget set with [`Retries::budget`], shared with retries
    /// (kept even when retries are [`Retries::disabled`]).
    ///
    /// ```
    /// use tower_lb::{Balancer, Hedging};
    ///
    /// let balancer = Balancer::builder()
    ///     .endpoint("http://127.0.0.1:8081")
    ///     .endpoint("http://127.0.0.1:8082")
    ///     .hedge(Hedging::default().max_attempts(3))
    ///     .build()?;
    /// assert_eq!(balancer.stats().extra.hedges, 0);
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    pub fn hedge(mut self, hedging: Hedging) -> Self {
        self.hedge = Some(hedging);
        self
    }

    /// Ramps endpoints up over a window as they join the set (added after
    /// `build`, by hand or by discovery, or brought back from drained) and
    /// as they come back from an ejection, instead of giving them their
    /// whole share at once (see [`SlowStart`]). Off by default, as in
    /// Envoy: with it, a returning endpoint stays under-used for the whole
    /// window even when it is warm; turn it on for backends that are slow
    /// while cold (caches, JIT, connection pools).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_lb::{Balancer, SlowStart};
    ///
    /// let balancer = Balancer::builder()
    ///     .endpoint("http://127.0.0.1:8081")
    ///     .slow_start(SlowStart::new(Duration::from_secs(30)))
    ///     .build()?;
    /// balancer.add("http://127.0.0.1:8082", 1)?; // 10% of its share at first
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    pub fn slow_start(mut self, slow_start: SlowStart) -> Self {
        self.slow_start = Some(slow_start);
        self
    }

    /// Seeds the balancer's random number generator, from which every
    /// random choice is drawn (the random policy, the candidates of least
    /// time). Two balancers with the same seed, the same endpoints and the
    /// same answers make the same picks, on any thread: for tests and
    /// replays. Every core's draws then write one shared counter, and least
    /// time keeps one memory of its last pick. Without a seed, each thread
    /// draws from its own generator and least time keeps a memory per lane
    /// (one per core), so cores picking at once do not share a cache line.
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

    /// Names the balancer in its metrics (feature `metrics`): every series
    /// it records carries the label `tower_lb.balancer` with this value,
    /// so that two balancers in one process are told apart. Unnamed, the
    /// label is left out.
    ///
    /// The series are registered when the balancer is built and when an
    /// endpoint joins it, with the recorder in effect then: install the
    /// exporter's recorder first (docs/metrics.md).
    ///
    /// ```
    /// let payments = tower_lb::Balancer::builder()
    ///     .endpoint("http://127.0.0.1:8081")
    ///     .name("payments")
    ///     .build()?;
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    #[cfg(feature = "metrics")]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
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
        let policy = self.policy.for_one_balancer();
        if policy.is_custom() {
            // A trial build over the endpoints (on counters of its own, so
            // no rotation moves) records what the built-in policies it
            // delegates to need of the balancer, and their mistakes.
            let trial = Counters::default();
            let members: Vec<Member> = (self.endpoints.iter())
                .filter(|(_, weight, _)| *weight > 0)
                .map(|(url, weight, labels)| Member {
                    labels: labels.clone(),
                    ..Member::new(url.clone(), *weight, &trial)
                })
                .collect();
            drop(policy.picker(&members, &trial));
        }
        policy.validate()?;
        self.outlier_detection.validate()?;
        self.retry.validate()?;
        if let Some(hedge) = &self.hedge {
            hedge.validate()?;
        }
        if let Some(slow_start) = &self.slow_start {
            slow_start.validate()?;
        }
        if !self.endpoints.is_empty() && self.endpoints.iter().all(|(_, weight, _)| *weight == 0) {
            return Err(Error::ZeroTotalWeight);
        }
        let clock = Clock::default();
        let rng = Arc::new(self.seed.map_or_else(SharedRng::unseeded, SharedRng::new));
        #[cfg(feature = "metrics")]
        let metrics = Arc::new(crate::telemetry::BalancerMetrics::register(
            self.name.as_deref(),
            self.retry
                .max_retries
                .max(self.hedge.as_ref().map_or(0, |h| h.max_extra_attempts())),
            &crate::health::Detector::ALL.map(crate::health::Detector::envoy_name),
        ));
        #[cfg(feature = "metrics")]
        let health =
            HealthShared::reporting(self.outlier_detection, clock, rng.clone(), metrics.clone());
        #[cfg(not(feature = "metrics"))]
        let health = HealthShared::new(self.outlier_detection, clock, rng.clone());
        let counters = Counters {
            #[cfg(feature = "metrics")]
            metrics: metrics.clone(),
            clock,
            rng: rng.clone(),
            rtt: Arc::new(
                policy
                    .rtt_model_on(clock)
                    .timing_every_request(policy.reads_latency()),
            ),
            health,
            holds: Arc::new(Holds::new(self.overload)),
            in_flight: policy.counts_total_in_flight().then(Default::default),
            ramps: self
                .slow_start
                .map(|settings| Arc::new(Ramps::new(settings))),
            ..Counters::default()
        };
        if let Some(ramps) = &counters.ramps {
            counters.health.ramp_returns(ramps.clone());
        }
        let members = self
            .endpoints
            .into_iter()
            .map(|(url, weight, labels)| Member {
                labels,
                ..Member::new(url, weight, &counters)
            })
            .collect::<Vec<Member>>();
        for member in &members {
            member.state.set_labels(&member.labels);
        }
        let snapshot = Snapshot::build(members, &policy, &counters);
        // Fixed now, after the first build: a custom policy's key source is
        // the one it delegated to then (see `SelectionPolicy::request_key`),
        // as are the in-flight count and the estimates' settings above.
        let request_key = policy.request_key().cloned();
        let reads_session_header = request_key
            .as_ref()
            .is_some_and(|key| key.reads_session_header());
        let cookie_names = request_key
            .as_ref()
            .map(|key| key.cookie_names())
            .unwrap_or_default();
        Ok(Balancer {
            shared: Arc::new(Shared {
                snapshot: ArcSwap::from_pointee(snapshot),
                policy,
                request_key,
                counters,
                learned: LearnedHomes::new(cookie_names).map(|learned| {
                    #[cfg(feature = "metrics")]
                    let learned = learned.with_metrics(metrics);
                    Arc::new(learned)
                }),
                retrying: self.retry.start(clock, self.hedge.is_some()),
                hedger: self.hedge.map(|hedge| hedge.start(clock)),
                #[cfg(feature = "cookies")]
                site_cookies: std::sync::OnceLock::new(),
                writer: Mutex::new(()),
                reads_session_header,
                keyless: Default::default(),
                warned_keyless: Default::default(),
                discovery: Mutex::new(None),
                dropped: tokio::sync::watch::channel(()).0,
                discovery_task: Mutex::new(None),
                checks_task: Mutex::new(None),
                on_removal: Mutex::new(Vec::new()),
            }),
        })
    }
}
