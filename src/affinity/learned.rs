//! Learned affinity: which endpoint issued each session cookie.
//!
//! When a backend answers with `Set-Cookie: JSESSIONID=…` (a cookie the
//! policy keys on), the balancer remembers that this value belongs to that
//! endpoint, as NGINX's `sticky learn` does; the next request carrying the
//! cookie goes back there while the endpoint takes requests. A value it has
//! not seen (another client instance issued it, or it was forgotten) is
//! placed by its hash like any other key.
//!
//! Only hashes are stored. The table is sharded so that requests on
//! different cores rarely meet on a lock, and bounded: each shard is a
//! least-recently-used cache (the `lru` crate), and a lookup counts as a
//! use, so a session in use is never forgotten before idle ones.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, Weak};

use http::header::{HeaderMap, SET_COOKIE};
use lru::LruCache;

use super::{cookie, key_hash};
use crate::endpoint::EndpointState;
#[cfg(feature = "metrics")]
use crate::telemetry::BalancerMetrics;

const SHARDS: usize = 16;
/// Sessions remembered per shard; 65,536 in all.
const SHARD_CAPACITY: NonZeroUsize = NonZeroUsize::new(4_096).expect("not zero"); // ok: constant

pub(crate) struct LearnedHomes {
    /// Cookie names whose values are learned.
    names: Box<[Box<str>]>,
    shards: Box<[Mutex<Shard>]>,
    /// The table's size goes to the balancer's metrics (no-ops unless set).
    #[cfg(feature = "metrics")]
    metrics: Arc<BalancerMetrics>,
}

type Shard = LruCache<u64, Weak<EndpointState>>;

/// The cookie names only: the table holds digests of session values, and
/// a `Debug` print takes no lock.
impl std::fmt::Debug for LearnedHomes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LearnedHomes")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl LearnedHomes {
    /// `None` when there are no cookie names to learn.
    pub(crate) fn new(names: Vec<Box<str>>) -> Option<Self> {
        (!names.is_empty()).then(|| LearnedHomes {
            names: names.into(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(SHARD_CAPACITY)))
                .collect(),
            #[cfg(feature = "metrics")]
            metrics: Arc::default(),
        })
    }

    /// The same, reporting its size to `metrics`.
    #[cfg(feature = "metrics")]
    pub(crate) fn with_metrics(mut self, metrics: Arc<BalancerMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, Shard> {
        let shard = &self.shards[(key >> 60) as usize % SHARDS];
        // A panic while holding a shard leaves a usable map behind.
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The endpoint that issued the cookie with this value hash, if known and
    /// still alive. Counts as a use of the session.
    pub(crate) fn home(&self, key: u64) -> Option<Arc<EndpointState>> {
        self.shard(key).get(&key).and_then(Weak::upgrade)
    }

    /// Learns the affinity cookies `endpoint` sets in `headers`.
    pub(crate) fn learn(&self, headers: &HeaderMap, endpoint: &Arc<EndpointState>) {
        for header in headers.get_all(SET_COOKIE) {
            // The cookie is the first `;`-separated part; attributes follow.
            let first = header
                .as_bytes()
                .split(|&b| b == b';')
                .next()
                .unwrap_or_default();
            let Some((name, value)) = cookie::name_value(first) else {
                continue;
            };
            if value.is_empty() || !self.names.iter().any(|n| n.as_bytes() == name) {
                continue;
            }
            let key = key_hash(value);
            let mut shard = self.shard(key);
            #[cfg(feature = "metrics")]
            let before = shard.len();
            shard.put(key, Arc::downgrade(endpoint));
            #[cfg(feature = "metrics")]
            self.metrics
                .learned_sessions(shard.len() as isize - before as isize);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::EndpointUrl;

    fn endpoint(port: u16) -> Arc<EndpointState> {
        let url = EndpointUrl::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        Arc::new(EndpointState::new(
            url,
            &crate::endpoint::Counters::default(),
        ))
    }

    #[test]
    fn learns_only_the_named_cookies_and_forgets_removed_endpoints() {
        let learned = LearnedHomes::new(vec!["sid".into()]).unwrap();
        let a = endpoint(1);
        let mut headers = HeaderMap::new();
        headers.append(SET_COOKIE, "theme=dark; Path=/".parse().unwrap());
        headers.append(SET_COOKIE, "sid=\"abc\"; Path=/; HttpOnly".parse().unwrap());
        learned.learn(&headers, &a);
        assert!(Arc::ptr_eq(&learned.home(key_hash(b"abc")).unwrap(), &a));
        assert!(learned.home(key_hash(b"dark")).is_none());
        drop(a);
        assert!(learned.home(key_hash(b"abc")).is_none());
        assert!(LearnedHomes::new(Vec::new()).is_none());
    }

    #[test]
    fn the_table_is_bounded_and_forgets_idle_sessions_first() {
        let learned = LearnedHomes::new(vec!["sid".into()]).unwrap();
        let a = endpoint(1);
        let learn = |i: usize| {
            let mut headers = HeaderMap::new();
            headers.append(SET_COOKIE, format!("sid=s{i}").parse().unwrap());
            learned.learn(&headers, &a);
        };
        learn(0);
        learn(1);
        let capacity = SHARDS * SHARD_CAPACITY.get();
        for i in 2..capacity * 2 {
            learn(i);
            // Session 0 is in use all along; session 1 is idle.
            if i % 1_000 == 0 {
                assert!(learned.home(key_hash(b"s0")).is_some(), "forgot s0 at {i}");
            }
        }
        let total: usize = learned.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(total <= capacity, "{total}");
        assert!(
            learned.home(key_hash(b"s0")).is_some(),
            "the session in use stays"
        );
        assert!(
            learned.home(key_hash(b"s1")).is_none(),
            "the idle one is forgotten"
        );
    }
}
