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
//! - **Never down to nothing by accident.** A source error, an empty set or
//!   a set the balancer refuses (a bad URL) keeps the last good set; each
//!   is logged at `warn` and counted in [`Stats::discovery`].
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
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::SystemTime;

use futures::stream::BoxStream;
use futures::{FutureExt, Stream, StreamExt};

use crate::balancer::{Balancer, WeakBalancer};
use crate::endpoint::{DiscoveryStats, Endpoint};
use crate::error::{BoxError, Error};
use crate::refresh::ConnectFailures;

#[cfg(feature = "dns")]
pub use dns::DnsSource;
#[cfg(feature = "etcd")]
pub use etcd::EtcdSource;

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
/// (three since the source last looked) suggests the set is stale. It also
/// carries one figure back: the endpoints a source skipped.
#[derive(Clone, Debug)]
pub struct RefreshHints {
    failures: Arc<ConnectFailures>,
    /// Where [`RefreshHints::skipped`] counts; `None` when detached.
    balancer: Option<Arc<WeakBalancer>>,
}

impl RefreshHints {
    /// Waits until the balancer has seen a burst of connect failures since
    /// the last [`RefreshHints::refreshed`]; returns at once if one came
    /// meanwhile.
    pub async fn connect_failures(&self) {
        self.failures.burst().await;
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
    /// [`Balancer::replace`] does (survivors keep their state). An error,
    /// an empty set or a set with an invalid endpoint keeps the last good
    /// set, and is logged at `warn` and counted in
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
    /// `last_error` "the discovery source panicked: " and its message,
    /// `ended`), and the last good set keeps serving. (Under
    /// `panic = "abort"` no panic can be caught.)
    ///
    /// Errors: [`Error::NoRuntime`] outside a tokio runtime.
    pub fn discover(&self, source: impl EndpointSource) -> Result<(), Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let hints = RefreshHints {
            failures: self.connect_failures().clone(),
            balancer: Some(Arc::new(self.downgrade())),
        };
        self.update_discovery(|stats| *stats = DiscoveryStats::default());
        let weak = self.downgrade();
        let dropped = self.dropped();
        // `into_sets` runs in the task too, so that its panic is caught
        // with the stream's.
        let following = async move { follow(weak, dropped, source.into_sets(hints)).await };
        let task = runtime.spawn(survive_panics(self.downgrade(), following));
        self.replace_discovery_task(task.abort_handle());
        Ok(())
    }
}

/// Runs `following` to its end; a panic in it (the source's code, or the
/// task's) ends the task as a counted error instead of silently.
async fn survive_panics(balancer: WeakBalancer, following: impl Future<Output = ()>) {
    let Err(panic) = AssertUnwindSafe(following).catch_unwind().await else {
        return;
    };
    let message = panic_message(panic.as_ref());
    tracing::error!(
        panic = %message,
        "discovery source panicked; it is stopped and the last good set stays"
    );
    if let Some(balancer) = balancer.upgrade() {
        balancer.update_discovery(|stats| {
            stats.errors += 1;
            stats.last_error = Some(format!("the discovery source panicked: {message}"));
            stats.last_error_at = Some(SystemTime::now());
            stats.ended = true;
        });
    }
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
    mut dropped: tokio::sync::watch::Receiver<()>,
    mut sets: BoxStream<'static, Result<Vec<Endpoint>, BoxError>>,
) {
    loop {
        let next = tokio::select! {
            next = sets.next() => next,
            // The sender lives in the balancer: an error means it is gone.
            _ = dropped.changed() => return,
        };
        let Some(balancer) = balancer.upgrade() else {
            return;
        };
        let Some(next) = next else {
            balancer.update_discovery(|stats| stats.ended = true);
            tracing::warn!("discovery source ended; the last set stays");
            return;
        };
        let failure = match next {
            Ok(set) if set.is_empty() => Some("the source answered with no endpoint".to_owned()),
            Ok(set) => {
                let count = set.len();
                match balancer.replace(set) {
                    Ok(()) => {
                        balancer.update_discovery(|stats| {
                            stats.refreshes += 1;
                            stats.last_refresh = Some(SystemTime::now());
                            stats.endpoints = count;
                        });
                        None
                    }
                    Err(error) => Some(format!("the set was refused: {error}")),
                }
            }
            Err(error) => Some(format!("source error: {error}")),
        };
        if let Some(failure) = failure {
            tracing::warn!(%failure, "discovery: the last good set stays");
            balancer.update_discovery(|stats| {
                stats.errors += 1;
                stats.last_error = Some(failure);
                stats.last_error_at = Some(SystemTime::now());
            });
        }
    }
}
