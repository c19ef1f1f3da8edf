//! Endpoints from the systems that hold them: a source hands the balancer
//! full sets of endpoints, and a task the balancer owns applies each one.
//!
//! - **One small trait.** [`EndpointSource`] turns a source into a stream
//!   of full sets. Any `Stream` of `Result<Vec<Endpoint>, E>` is a source;
//!   [`DnsSource`] (feature `dns`) and [`EtcdSource`] (feature `etcd`) are
//!   the built-in ones.
//! - **Off the request path.** [`Balancer::discover`] spawns the task on
//!   the current tokio runtime. It holds the balancer weakly and stops when
//!   the last handle is dropped (or the source ends).
//! - **Survivors keep their state.** Each set goes through
//!   [`Balancer::replace`]: endpoints still listed keep their counters,
//!   response-time estimate, health and hash positions; new ones start
//!   fresh; the others leave, their requests in flight finishing.
//! - **One bad endpoint never blocks the set.** Each endpoint of a set is
//!   checked on its own: one with a bad URL or weight, or an address listed
//!   again, is skipped (logged at `warn`, counted as `skipped`) and the
//!   rest is applied; a repeated address keeps its first listing.
//! - **Never down to nothing by accident.** A source error, an empty set or
//!   a set with no valid endpoint keeps the last good set; each is logged
//!   at `warn` and counted in [`Stats::discovery`].
//! - **A service can wait for its first set.** [`Balancer::discover`]
//!   returns a [`Discovery`] handle whose `ready` resolves once the first
//!   set is applied (or fails with the source's last error when a time
//!   limit passes or the source ends first), so a service does not fail
//!   its first requests while discovery starts.
//! - **A panic is a counted error, not silence.** A source that panics (in
//!   `into_sets` or while its stream is polled) is stopped: the panic is
//!   caught, logged at `error`, counted in [`Stats::discovery`] with its
//!   message, and marked `ended`; the last good set keeps serving. It is
//!   not restarted, since `into_sets` consumed it; calling
//!   [`Balancer::discover`] again follows a new one.
//!
//! [`Stats::discovery`]: crate::Stats::discovery

#[cfg(feature = "dns")]
mod dns;
#[cfg(feature = "etcd")]
mod etcd;

use std::any::Any;
use std::collections::HashSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::{self, Either};
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::sync::watch;

use crate::balancer::{Balancer, WeakBalancer};
use crate::endpoint::{DiscoveryStats, Endpoint, EndpointUrl, Labels};
use crate::error::{BoxError, Error, NotReadyReason};
use crate::refresh::ConnectFailures;

#[cfg(feature = "dns")]
pub use dns::DnsSource;
#[cfg(all(feature = "dns", feature = "serde"))]
pub(crate) use dns::{
    DEFAULT_MAX_REFRESH, DEFAULT_MIN_REFRESH, DEFAULT_QUERY_TIMEOUT, DEFAULT_RETRIES,
};
#[cfg(feature = "etcd")]
pub use etcd::EtcdSource;
#[cfg(all(feature = "etcd", feature = "serde"))]
pub(crate) use etcd::{DEFAULT_MAX_RETRY, DEFAULT_MIN_RETRY};

/// A source of endpoint sets: it becomes a stream whose every item is the
/// whole current set (or an error), and the balancer applies each one.
///
/// Any `Stream<Item = Result<Vec<Endpoint>, E>>` is a source, so a
/// Kubernetes or Consul watcher needs only to map its answers
/// (docs/discovery.md shows both).
///
/// ```
/// use futures::stream;
/// use tower_lb::{Balancer, Endpoint};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_lb::Error> {
/// let balancer = Balancer::builder().build()?;
/// let sets = stream::iter([Ok::<_, std::io::Error>(vec![
///     Endpoint::new("http://127.0.0.1:8081"),
///     Endpoint::new("http://127.0.0.1:8082").with_weight(2),
/// ])]);
/// balancer.discover(sets)?;
/// # for _ in 0..100 { tokio::task::yield_now().await; }
/// # assert_eq!(balancer.stats().endpoints.len(), 2);
/// # Ok(()) }
/// ```
pub trait EndpointSource: Send + 'static {
    /// The stream of full sets. `hints` tells a source that polls when the
    /// balancer sees a burst of connect failures, so that it can look again
    /// sooner; a source that is pushed changes may ignore it.
    fn into_sets(self, hints: RefreshHints) -> BoxStream<'static, Result<Vec<Endpoint>, BoxError>>;
}

impl<S, E> EndpointSource for S
where
    S: Stream<Item = Result<Vec<Endpoint>, E>> + Send + 'static,
    E: Into<BoxError>,
{
    fn into_sets(self, _: RefreshHints) -> BoxStream<'static, Result<Vec<Endpoint>, BoxError>> {
        self.map(|set| set.map_err(Into::into)).boxed()
    }
}

/// What the request path tells discovery: a burst of connect failures
/// (three since the source last looked) suggests the set is stale, and so
/// does an endpoint ejected after connect failures, from which no more
/// failures come while it is out. It also carries one figure back: the
/// endpoints a source skipped.
#[derive(Clone, Debug)]
pub struct RefreshHints {
    failures: Arc<ConnectFailures>,
    /// The balancer, to ask about ejections; `None` when detached.
    balancer: Option<WeakBalancer>,
}

impl RefreshHints {
    /// Waits until the balancer has seen a burst of connect failures since
    /// the last [`RefreshHints::refreshed`]; returns at once if one came
    /// meanwhile.
    pub async fn connect_failures(&self) {
        self.failures.burst().await;
    }

    /// Whether the set looks stale now: an endpoint is ejected after
    /// connect failures (its last failure was one), or a connect failure
    /// came since the last [`RefreshHints::refreshed`]. A polling source
    /// keeps looking up again at its minimum interval (with back-off) while
    /// this holds, since an ejected endpoint brings no more failures to
    /// wake it. A few atomic reads per endpoint; call it between look-ups,
    /// not per request.
    ///
    /// ```
    /// let hints = tower_lb::RefreshHints::detached();
    /// assert!(!hints.connect_failing());
    /// ```
    pub fn connect_failing(&self) -> bool {
        self.failures.any_since_refresh()
            || self
                .balancer
                .as_ref()
                .and_then(WeakBalancer::upgrade)
                .is_some_and(|balancer| balancer.ejected_after_connect_failures())
    }

    /// Tells the hints the source just looked the set up.
    pub fn refreshed(&self) {
        self.failures.refreshed();
    }

    /// Tells the balancer the source left `count` endpoints it listed out
    /// of the sets it yields, as invalid (a bad URL or weight, a duplicate
    /// address): added to [`DiscoveryStats::skipped`]. A source that skips
    /// on its own (as the etcd source does, to name the key in its log)
    /// reports here; detached hints count nowhere.
    ///
    /// ```
    /// tower_lb::RefreshHints::detached().skipped(1);
    /// ```
    pub fn skipped(&self, count: u64) {
        if let Some(balancer) = self.balancer.as_ref().and_then(|b| b.upgrade()) {
            balancer.update_discovery(|stats| stats.skipped += count);
        }
    }

    /// Hints no balancer feeds, for driving a source by hand (in a test).
    pub fn detached() -> Self {
        RefreshHints {
            failures: Arc::default(),
            balancer: None,
        }
    }
}

impl Balancer {
    /// Follows `source` in a task of its own on the current tokio runtime:
    /// each full set it yields replaces the endpoint set as
    /// [`Balancer::replace`] does (survivors keep their state), except
    /// that each endpoint stands alone: one with a bad URL or weight, or an
    /// address listed again (the first listing wins), is skipped, logged at
    /// `warn` and counted as `skipped`, and the others are applied. An
    /// error, an empty set or a set with no valid endpoint keeps the last
    /// good set, and is logged at `warn` and counted in
    /// [`Stats::discovery`](crate::Stats::discovery). The task stops when
    /// the source ends or the last handle to the balancer is dropped.
    ///
    /// One source at a time: calling `discover` again stops the previous
    /// source's task and follows the new one (its figures start again).
    ///
    /// A source that panics, in [`EndpointSource::into_sets`] or in its
    /// stream, is stopped rather than restarted (it was consumed): the
    /// panic is caught, logged at `error` and counted in
    /// [`Stats::discovery`](crate::Stats::discovery) (`errors` + 1,
    /// `last_error` "the discovery task panicked (its source, or a policy
    /// building the set): " and its message,
    /// `ended`), and the last good set keeps serving. (Under
    /// `panic = "abort"` no panic can be caught.)
    ///
    /// Returns a [`Discovery`] handle whose [`Discovery::ready`] waits for
    /// the first set to be applied; dropping the handle changes nothing
    /// (`balancer.discover(source)?;` is enough when nothing waits).
    ///
    /// Errors: [`Error::NoRuntime`] outside a tokio runtime.
    pub fn discover(&self, source: impl EndpointSource) -> Result<Discovery, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let hints = RefreshHints {
            failures: self.connect_failures().clone(),
            balancer: Some(self.downgrade()),
        };
        // The old source stops before the figures start again, so that it
        // does not count into the new one's.
        self.stop_discovery_task();
        self.update_discovery(|stats| *stats = DiscoveryStats::default());
        let (progress, watched) = watch::channel(Progress::default());
        let progress = Arc::new(progress);
        let weak = self.downgrade();
        let dropped = self.dropped();
        // `into_sets` runs in the task too, so that its panic is caught
        // with the stream's.
        let told = progress.clone();
        let following = async move { follow(weak, dropped, told, source.into_sets(hints)).await };
        let task = runtime.spawn(survive_panics(self.downgrade(), progress, following));
        self.replace_discovery_task(task.abort_handle());
        Ok(Discovery { progress: watched })
    }
}

/// A handle on one [`Balancer::discover`] task: wait for its first set.
///
/// Cheap to clone; dropping it leaves the task running (it stops when
/// the source ends, another source replaces it, or the balancer is
/// dropped).
///
/// ```
/// use std::time::Duration;
/// use futures::{stream, StreamExt};
/// use tower_lb::{Balancer, Endpoint};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_lb::Error> {
/// let balancer = Balancer::builder().build()?;
/// let sets = stream::iter([Ok::<_, std::io::Error>(vec![
///     Endpoint::new("http://127.0.0.1:8081"),
/// ])])
/// .chain(stream::pending());
/// let discovery = balancer.discover(sets)?;
/// // Serve only once there is somewhere to send requests.
/// discovery.ready_within(Duration::from_secs(5)).await?;
/// assert_eq!(balancer.stats().endpoints.len(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Discovery {
    progress: watch::Receiver<Progress>,
}

/// What a discovery task tells its handles.
#[derive(Clone, Debug, Default)]
struct Progress {
    /// A set was applied.
    applied: bool,
    /// The source ended or panicked.
    ended: bool,
    /// The source's last failure, in words.
    last_error: Option<String>,
}

impl Discovery {
    /// Resolves once the task has applied its first set (at once if it
    /// already has), even if later answers fail.
    ///
    /// Errors: [`Error::DiscoveryNotReady`] with
    /// [`NotReadyReason::SourceEnded`] if the source ended or panicked
    /// first, or [`NotReadyReason::Stopped`] if the task was stopped first
    /// (another source replaced it, or the balancer was dropped); each with
    /// the source's last error. It waits as long as the source keeps
    /// failing: bound the wait with [`Discovery::ready_within`].
    pub async fn ready(&self) -> Result<(), Error> {
        let mut progress = self.progress.clone();
        let reason = match progress.wait_for(|p| p.applied || p.ended).await {
            Ok(seen) if seen.applied => return Ok(()),
            Ok(_) => NotReadyReason::SourceEnded,
            Err(_) => NotReadyReason::Stopped,
        };
        let seen = progress.borrow();
        if seen.applied {
            return Ok(());
        }
        Err(Error::DiscoveryNotReady {
            reason,
            last_error: seen.last_error.clone(),
        })
    }

    /// [`Discovery::ready`], waiting at most `limit`: on time out,
    /// [`Error::DiscoveryNotReady`] with [`NotReadyReason::TimedOut`] and
    /// the source's last error (for DNS, the failed look-up's words).
    pub async fn ready_within(&self, limit: Duration) -> Result<(), Error> {
        match tokio::time::timeout(limit, self.ready()).await {
            Ok(ready) => ready,
            Err(_) => Err(Error::DiscoveryNotReady {
                reason: NotReadyReason::TimedOut(limit),
                last_error: self.progress.borrow().last_error.clone(),
            }),
        }
    }

    /// Whether the task has applied a set yet; never waits.
    pub fn is_ready(&self) -> bool {
        self.progress.borrow().applied
    }
}

/// Runs `following` to its end; a panic in it (the source's code, or the
/// task's) ends the task as a counted error instead of silently.
async fn survive_panics(
    balancer: WeakBalancer,
    progress: Arc<watch::Sender<Progress>>,
    following: impl Future<Output = ()>,
) {
    let Err(panic) = AssertUnwindSafe(following).catch_unwind().await else {
        return;
    };
    let message = panic_message(panic.as_ref());
    tracing::error!(
        panic = %message,
        "discovery task panicked; the source is stopped and the last good set stays"
    );
    let failure = format!(
        "the discovery task panicked (its source, or a policy building the set): {message}"
    );
    // The figures first, then the waiters: whoever `ready()` wakes reads
    // `stats()` with the panic counted.
    if let Some(balancer) = balancer.upgrade() {
        balancer.update_discovery(|stats| {
            stats.errors += 1;
            stats.last_error = Some(failure.clone());
            stats.last_error_at = Some(SystemTime::now());
            stats.ended = true;
        });
    }
    progress.send_modify(|p| {
        p.ended = true;
        p.last_error = Some(failure);
    });
}

/// The text a panic was raised with, when it has one.
fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(text) = panic.downcast_ref::<&'static str>() {
        text
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text
    } else {
        "(a panic with no message)"
    }
}

/// Applies each set of `sets` to the balancer while it lives.
async fn follow(
    balancer: WeakBalancer,
    mut dropped: watch::Receiver<()>,
    progress: Arc<watch::Sender<Progress>>,
    mut sets: BoxStream<'static, Result<Vec<Endpoint>, BoxError>>,
) {
    loop {
        // The sender lives in the balancer: `changed` ends when it is gone.
        let gone = std::pin::pin!(dropped.changed());
        let next = match future::select(sets.next(), gone).await {
            Either::Left((next, _)) => next,
            Either::Right(_) => return,
        };
        let Some(balancer) = balancer.upgrade() else {
            return;
        };
        let Some(next) = next else {
            balancer.update_discovery(|stats| stats.ended = true);
            progress.send_modify(|p| p.ended = true);
            tracing::warn!("discovery source ended; the last set stays");
            return;
        };
        let failure = match next {
            Ok(set) if set.is_empty() => Some("the source answered with no endpoint".to_owned()),
            Ok(set) => {
                let listed = set.len();
                let admitted = admit(set);
                let skipped = (listed - admitted.len()) as u64;
                if skipped > 0 {
                    balancer.update_discovery(|stats| stats.skipped += skipped);
                }
                if admitted.is_empty() {
                    Some(format!(
                        "every endpoint of the set was refused ({listed} skipped)"
                    ))
                } else if admitted.iter().all(|(_, weight, _)| *weight == 0) {
                    // Nothing to send to, as an empty set: never down to
                    // nothing by a registry's mistake.
                    Some(format!(
                        "every endpoint of the set has weight 0 ({} listed)",
                        admitted.len()
                    ))
                } else {
                    let count = admitted.len();
                    balancer.replace_parsed(admitted);
                    balancer.update_discovery(|stats| {
                        stats.refreshes += 1;
                        stats.last_refresh = Some(SystemTime::now());
                        stats.endpoints = count;
                    });
                    progress.send_if_modified(|p| !std::mem::replace(&mut p.applied, true));
                    None
                }
            }
            Err(error) => Some(format!("source error: {error}")),
        };
        if let Some(failure) = failure {
            tracing::warn!(%failure, "discovery: the last good set stays");
            progress.send_modify(|p| p.last_error = Some(failure.clone()));
            balancer.update_discovery(|stats| {
                stats.errors += 1;
                stats.last_error = Some(failure);
                stats.last_error_at = Some(SystemTime::now());
            });
        }
    }
}

/// The endpoints of `set` the balancer can take, each checked on its own:
/// one with a bad URL or weight is skipped, and an address listed again
/// (the same canonical URL) is skipped in favour of its first listing,
/// whose weight and labels stay. Each skip is logged at `warn` with the
/// endpoint and the reason.
fn admit(set: Vec<Endpoint>) -> Vec<(EndpointUrl, u32, Labels)> {
    let mut admitted = Vec::with_capacity(set.len());
    let mut seen: HashSet<Arc<str>> = HashSet::with_capacity(set.len());
    for endpoint in set {
        let listed = endpoint.url().to_owned();
        match endpoint.parse() {
            Ok((url, weight, labels)) => {
                if seen.insert(url.shared_name()) {
                    admitted.push((url, weight, labels));
                } else {
                    tracing::warn!(
                        endpoint = %listed,
                        reason = "the address is listed more than once: the first listing is used",
                        "discovery: endpoint skipped; the others are applied"
                    );
                }
            }
            Err(error) => tracing::warn!(
                endpoint = %listed,
                reason = %error,
                "discovery: endpoint skipped; the others are applied"
            ),
        }
    }
    admitted
}
