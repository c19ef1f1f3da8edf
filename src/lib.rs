//! Client-side HTTP load balancing as Tower layers.
//!
//! An application balances its own outgoing calls over a set of backends,
//! with no proxy in between: wrap the HTTP client (a `reqwest::Client`, or
//! any Tower service over [`http::Request`]) in a [`BalanceLayer`], and every
//! request is sent to an endpoint chosen by the [`Policy`], with its scheme
//! and authority rewritten to that endpoint's.
//!
//! ```no_run
//! use tower::{ServiceBuilder, ServiceExt};
//! # #[cfg(feature = "reqwest")]
//! use tower_lb::{Balancer, HttpToReqwest, Policy};
//!
//! # #[cfg(feature = "reqwest")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let balancer = Balancer::builder()
//!     .endpoint("http://127.0.0.1:8081") // weight 1
//!     .endpoint_weighted("http://127.0.0.1:8082", 3)
//!     .policy(Policy::weighted_round_robin())
//!     .build()?; // a typed error for bad input, never a panic
//! let client = ServiceBuilder::new()
//!     .layer(balancer.layer())
//!     .service(HttpToReqwest::new(reqwest::Client::new()));
//! // The request names a path; the balancer fills in the endpoint.
//! let request = http::Request::get("/users/42").body(reqwest::Body::from(""))?;
//! let response = client.oneshot(request).await?;
//! # Ok(())
//! # }
//! ```
//!
//! The pieces, in the order a request meets them:
//! - [`Balancer`]: the shared endpoint set, its policy and counters; cheap to
//!   clone; also the handle that changes the set at runtime ([`Balancer::add`],
//!   [`Balancer::drain`], [`Balancer::follow`] for a discovery stream).
//! - [`BalanceLayer`] and [`BalanceService`]: the Tower layer and service.
//! - [`Policy`]: smooth weighted round robin (the default), round robin, random,
//!   least response time ([`Policy::least_response_time`], [`LeastResponseTime`]),
//!   and consistent hashing ([`Policy::ring_hash`], [`Policy::maglev`], configured
//!   through [`ConsistentHash`]) of a request key ([`RequestKey`], [`SessionKey`]).
//! - [`Stats`]: per-endpoint counters: in flight, successes, failures by kind,
//!   cancelled, the response-time estimate, labels.
//! - [`Error`]: configuration errors, "no endpoint available", and the wrapped
//!   service's error.
//! - Metrics (feature `metrics`): OpenTelemetry's HTTP client series per
//!   endpoint and the balancer's own (`tower_lb.*`) through the `metrics`
//!   facade, to any exporter; name a balancer with
//!   `BalancerBuilder::name` (docs/metrics.md in the repository).
//!
//! Requests never take a lock: the endpoint set is an immutable snapshot
//! swapped atomically on change, and counters are atomics. A request whose
//! future is dropped releases its in-flight count.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]
#![warn(missing_debug_implementations)]

mod active_checks;
mod affinity;
mod balancer;
mod clock;
#[cfg(feature = "serde")]
mod config;
#[cfg(feature = "cookies")]
mod cookie_jar;
mod discovery;
mod endpoint;
mod error;
#[cfg(feature = "tonic")]
mod grpc;
mod health;
mod hedge;
mod lanes;
mod layer;
mod membership;
#[cfg(feature = "reqwest-middleware")]
mod middleware;
mod outcome;
mod overload;
mod per_endpoint;
mod percent;
mod pipeline;
mod policy;
mod random;
mod refresh;
mod request;
#[cfg(feature = "reqwest")]
mod reqwest_http;
#[cfg(feature = "reqwest")]
mod reqwest_url;
mod response;
mod selection;
mod service;
mod slow_start;
mod target;
#[cfg(feature = "metrics")]
mod telemetry;

pub use affinity::{key_hash, RequestInfo, RequestKey, SessionKey};
pub use balancer::{Balancer, BalancerBuilder};
#[cfg(feature = "serde")]
pub use config::{
    BalancerConfig, DiscoveryConfig, DnsConfig, EndpointConfig, EnforcingConfig, EtcdConfig,
    FailurePercentageConfig, FallbackConfig, HashConfig, IpFamily, KeySourceConfig,
    LeastTimeConfig, OutlierConfig, OutlierPreset, PolicyConfig, RetryBudgetConfig, RetryConfig,
    SlowStartConfig, SuccessRateConfig,
};
#[cfg(feature = "serde")]
pub use config::{HealthCheckConfig, HedgeConfig, OverloadConfig, StatusRange};
#[cfg(feature = "cookies")]
pub use cookie_jar::BalancedCookieJar;
#[cfg(feature = "dns")]
pub use discovery::DnsSource;
#[cfg(feature = "etcd")]
pub use discovery::EtcdSource;
pub use discovery::{Discovery, EndpointSource, RefreshHints};
pub use endpoint::{
    DiscoveryStats, Endpoint, EndpointStats, ExtraAttempts, FailureCounts, IntoEndpoint, Labels,
    ServedBy, Stats, MAX_WEIGHT,
};
pub use error::{BoxError, Error, NotReadyReason};
/// The etcd client [`EtcdSource`] uses, for its
/// [`ConnectOptions`](etcd_client::ConnectOptions) (feature `etcd`).
#[cfg(feature = "etcd")]
pub use etcd_client;
#[cfg(feature = "tonic")]
pub use grpc::{
    BalancedChannel, GrpcBody, GrpcOptions, GrpcResponseFuture, CONNECT_TIMEOUT,
    KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT, REQUEST_BUFFER,
};
pub use health::{
    ActiveHealthCheck, CheckStats, Detector, EjectionStats, FailurePercentage, HealthEvent,
    OutlierDetection, Retries, Retryable, SuccessRate,
};
pub use hedge::{Hedge, Hedging};
pub use layer::BalanceLayer;
pub use overload::{HoldReason, Overload};
pub use per_endpoint::PerEndpointService;
pub use percent::Percent;
pub use policy::{
    Candidates, ConsistentHash, LeastResponseTime, PickContext, Picker, Policy, SelectionPolicy,
    Subset, DEFAULT_LOAD_FACTOR, DEFAULT_VIRTUAL_NODES,
};
pub use request::{BalanceRequest, BalanceResponse};
#[cfg(feature = "reqwest")]
pub use reqwest_http::HttpToReqwest;
pub use response::ResponseFuture;
pub use selection::Selection;
pub use service::{BalanceService, NoRetries, WithRetries};
pub use slow_start::SlowStart;
pub use target::TargetRefusal;
/// The discovery event type [`Balancer::apply`] and [`Balancer::follow`] take.
pub use tower::discover::Change;
