//! Endpoints from etcd: one key per endpoint under a prefix, each value a
//! small JSON document; read whole, then watched from the read's revision.

use std::collections::{btree_map, BTreeMap};
use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, KvClient, WatchOptions, WatchResponse,
    WatchStream,
};
use futures_util::stream::{self, BoxStream, FuturesUnordered, StreamExt};
use serde::Deserialize;
use tokio::time::Instant;

use super::{EndpointSource, RefreshHints};
use crate::clock::doubled_up_to;
use crate::endpoint::Endpoint;
use crate::error::BoxError;

/// Endpoints kept in etcd, for [`Balancer::discover`](crate::Balancer::discover)
/// (feature `etcd`; building etcd-client needs `protoc`).
///
/// Each key under the prefix is one endpoint; its value is a JSON document:
///
/// ```json
/// {"url": "http://10.0.0.7:8080", "weight": 2, "metadata": {"zone": "a"}}
/// ```
///
/// `weight` defaults to 1; `metadata` (string values) becomes the
/// endpoint's labels. Each key stands alone: a value that is not such a
/// document, or whose endpoint the balancer would refuse (a URL it cannot
/// route to, such as one with a query, a fragment or a scheme other than
/// `http`/`https`; a weight above [`MAX_WEIGHT`](crate::MAX_WEIGHT)), is
/// skipped, logged at `warn` with the key and the reason, and counted in
/// [`DiscoveryStats::skipped`](crate::DiscoveryStats::skipped); the other
/// keys are used. An address under two keys (an instance that registered
/// again before its old key expired) is one endpoint, with the weight and
/// labels of the key written last (the highest `mod_revision`; within one
/// transaction, the key first in key order); the other key counts as
/// skipped, and takes over when the winner is deleted.
///
/// The source reads every key under the prefix (in pages, at one
/// revision), then watches the prefix from the revision of that read, so
/// no change between the two is missed. Changes that arrive together
/// (each within 5 ms of the one before, for at most 50 ms) give one new
/// full set, and a set equal to the last one is not handed out.
/// It asks every member in `endpoints` at once and uses the first that
/// answers (within 2 s), so a dead or frozen member delays nothing. When
/// the watch fails (etcd restarted, unreachable, the member gone) or is
/// cancelled (its revision was compacted), the source asks the members
/// again at once, reads everything again and watches from there; while
/// none answers it retries after 100 ms, doubling up to 1 s (±20% at
/// random), and the last good set keeps serving. The connection checks the member with
/// keep-alive pings every second (1 s to answer), so a frozen etcd is
/// noticed in about 2 s.
///
/// ```no_run
/// use tower_lb::{Balancer, EtcdSource};
///
/// # async fn run() -> Result<(), tower_lb::Error> {
/// let balancer = Balancer::builder().build()?;
/// balancer.discover(EtcdSource::new(["http://127.0.0.1:2379"], "/services/api/"))?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct EtcdSource {
    endpoints: Vec<String>,
    prefix: String,
    min_retry: Duration,
    max_retry: Duration,
    /// The user's connect options; `None`: [`default_options`].
    options: Option<ConnectOptions>,
    /// The largest message taken from etcd; `None`: gRPC's 4 MiB.
    max_message_size: Option<usize>,
}

/// Keys per range request of a read: a page of 100 values of the 5 KB an
/// endpoint document hardly exceeds is 0.5 MB, well under gRPC's 4 MiB. A
/// page that is still too large (values near etcd's 1.5 MiB limit) is asked
/// for again in halves.
const PAGE: i64 = 100;

/// Changes are gathered into one set while each follows the one before
/// within this (a burst of registrations, or what queued while the
/// balancer applied the last set)...
const BATCH_QUIET: Duration = Duration::from_millis(5);

/// ... for at most this long after the first, so that a steady stream of
/// changes still gives a set this often.
const BATCH_MAX: Duration = Duration::from_millis(50);

/// How long one attempt waits for a member's first answer (connect, log
/// in, one small read) before it counts that member as failed.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// The connect options used unless [`EtcdSource::connect_options`] says
/// otherwise.
fn default_options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1))
        .with_keep_alive_while_idle(true)
}

/// The first wait before an attempt after a failed one, by default.
pub(crate) const DEFAULT_MIN_RETRY: Duration = Duration::from_millis(100);
/// The longest wait between attempts, by default.
pub(crate) const DEFAULT_MAX_RETRY: Duration = Duration::from_secs(1);

/// One endpoint's value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    url: String,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

impl EtcdSource {
    /// The keys under `prefix`, on the etcd cluster at `endpoints`
    /// (`http://host:2379` each).
    pub fn new(
        endpoints: impl IntoIterator<Item = impl Into<String>>,
        prefix: impl Into<String>,
    ) -> Self {
        EtcdSource {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: prefix.into(),
            min_retry: DEFAULT_MIN_RETRY,
            max_retry: DEFAULT_MAX_RETRY,
            options: None,
            max_message_size: None,
        }
    }

    /// Connects with `options` (etcd-client's, re-exported as
    /// [`tower_lb::etcd_client`](crate::etcd_client)): user and password,
    /// TLS, timeouts, keep-alive, `require_leader`. They replace the
    /// defaults as a whole: a 2 s connect timeout and keep-alive pings every
    /// second with 1 s to answer, also while idle (which is how a frozen
    /// etcd is noticed in about 2 s); set those again if you want them.
    /// For TLS, enable etcd-client's `tls` feature in your own
    /// `Cargo.toml` (`etcd-client = { version = "0.21", features = ["tls"] }`):
    /// Cargo builds one etcd-client for both.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_lb::{etcd_client::ConnectOptions, EtcdSource};
    ///
    /// let options = ConnectOptions::new()
    ///     .with_user("discovery", "secret")
    ///     .with_connect_timeout(Duration::from_secs(1))
    ///     .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1))
    ///     .with_keep_alive_while_idle(true);
    /// let source = EtcdSource::new(["http://127.0.0.1:2379"], "/services/api/")
    ///     .connect_options(options);
    /// # drop(source);
    /// ```
    pub fn connect_options(mut self, options: ConnectOptions) -> Self {
        self.options = Some(options);
        self
    }

    /// The largest message taken from etcd, in bytes (default: gRPC's
    /// 4 MiB). Reads are paged (100 keys a request, fewer when a page is
    /// too large), so a large prefix needs no larger limit; one watch
    /// answer holds the changes of one revision, and a transaction that
    /// writes more than 4 MiB under the prefix at once needs one (without
    /// it, the watch fails and the source reads the prefix again, paged).
    ///
    /// ```
    /// let source = tower_lb::EtcdSource::new(["http://127.0.0.1:2379"], "/services/api/")
    ///     .max_message_size(16 << 20);
    /// # drop(source);
    /// ```
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = Some(bytes);
        self
    }

    /// Waits between attempts while etcd is unreachable: `min`, doubling
    /// up to `max` (defaults 100 ms and 1 s), each wait drawn at random
    /// within ±20% so that clients that lost etcd together do not come
    /// back in step. The ceiling bounds how long a restarted etcd waits
    /// for the source: at most `max` + 20% after it answers again.
    ///
    /// Out-of-range values have a fixed meaning, never a panic: `min`
    /// below 10 ms (zero included) is raised to 10 ms, `max` below `min`
    /// is raised to `min`, and `Duration::MAX` means never (as `max`: no
    /// ceiling on the doubling; as `min`: after the first failure, no
    /// retry). A wait too long for the clock becomes one of about 30
    /// years.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_lb::EtcdSource;
    ///
    /// let source = EtcdSource::new(["http://127.0.0.1:2379"], "/services/api/")
    ///     .retry_between(Duration::from_millis(500), Duration::from_secs(60));
    /// # drop(source);
    /// ```
    pub fn retry_between(mut self, min: Duration, max: Duration) -> Self {
        self.min_retry = min.max(Duration::from_millis(10));
        self.max_retry = max.max(self.min_retry);
        self
    }

    /// A client of the first member that answers: every member is asked
    /// at once (connect, log in, a one-key read of the prefix, within
    /// [`ATTEMPT_TIMEOUT`]), so a dead or frozen member costs one attempt
    /// beside the others, never a wait before them. The losers' attempts
    /// are dropped.
    async fn connect(&self) -> Result<(Client, KvClient), BoxError> {
        let options = self.options.clone().unwrap_or_else(default_options);
        let prefix = self.prefix.as_bytes();
        let mut attempts: FuturesUnordered<_> = self
            .endpoints
            .iter()
            .map(|member| {
                let options = options.clone();
                let attempt = async move {
                    let client = Client::connect([member.as_str()], Some(options)).await?;
                    let mut kv = self.kv(&client);
                    let probe = GetOptions::new()
                        .with_range(prefix_end(prefix))
                        .with_limit(1)
                        .with_keys_only();
                    kv.get(first_key(prefix), Some(probe)).await?;
                    Ok::<_, etcd_client::Error>((client, kv))
                };
                async move {
                    match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
                        Ok(Ok(found)) => Ok(found),
                        Ok(Err(error)) => Err(format!("{member}: {error}")),
                        Err(_) => Err(format!("{member}: no answer within {ATTEMPT_TIMEOUT:?}")),
                    }
                }
            })
            .collect();
        let mut failures = Vec::new();
        while let Some(attempt) = attempts.next().await {
            match attempt {
                Ok(found) => return Ok(found),
                Err(failure) => failures.push(failure),
            }
        }
        if failures.is_empty() {
            return Err("no etcd endpoint was given".into());
        }
        Err(format!("no etcd member answered: {}", failures.join("; ")).into())
    }

    /// The client's key-value half, with the message limit.
    fn kv(&self, client: &Client) -> KvClient {
        match self.max_message_size {
            Some(bytes) => client.kv_client().max_decoding_message_size(bytes),
            None => client.kv_client(),
        }
    }

    /// Watches the prefix from `revision`.
    async fn watch(&self, client: &Client, revision: i64) -> Result<WatchStream, BoxError> {
        let mut watch = match self.max_message_size {
            Some(bytes) => client.watch_client().max_decoding_message_size(bytes),
            None => client.watch_client(),
        };
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        Ok(watch.watch(self.prefix.as_str(), Some(options)).await?)
    }
}

/// The first key after every key that starts with `prefix`, as etcd's
/// prefix ranges end (`\0`, every key, when there is none).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// `wait` ±20%, at random: clients that lost etcd at the same moment
/// spread their retries instead of arriving together. A wait too long to
/// scale (`Duration::MAX`, "never") stays as it is.
fn jittered(wait: Duration) -> Duration {
    let factor = 0.8 + 0.4 * fastrand::f64();
    Duration::try_from_secs_f64(wait.as_secs_f64() * factor).unwrap_or(wait)
}

/// The first key of a prefix range: the prefix itself, or `\0` for the
/// whole key space (etcd takes no empty key).
fn first_key(prefix: &[u8]) -> Vec<u8> {
    if prefix.is_empty() {
        vec![0]
    } else {
        prefix.to_vec()
    }
}

/// Whether `error` is gRPC's "decoded message length too large" (tonic's
/// words; etcd's own out-of-range answers, such as a compacted revision,
/// say other things).
fn too_large(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status)
        if status.message().contains("message length too large"))
}

/// Every key under `prefix`, read in pages at one revision (the first
/// page's, so the keys are one consistent set), and that revision.
async fn read_prefix(
    kv: &mut KvClient,
    prefix: &[u8],
) -> Result<(i64, BTreeMap<Vec<u8>, Registration>), BoxError> {
    let end = prefix_end(prefix);
    let mut from = first_key(prefix);
    let mut revision = None;
    let mut limit = PAGE;
    let mut keys = BTreeMap::new();
    loop {
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(limit);
        if let Some(revision) = revision {
            options = options.with_revision(revision);
        }
        let page = match kv.get(from.clone(), Some(options)).await {
            Ok(page) => page,
            Err(error) if limit > 1 && too_large(&error) => {
                limit /= 2;
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        let at = *revision.get_or_insert_with(|| page.header().map_or(0, |h| h.revision()));
        for kv in page.kvs() {
            let registration = Registration::new(kv.mod_revision(), kv.value());
            keys.insert(kv.key().to_vec(), registration);
        }
        match page.kvs().last() {
            Some(last) if page.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok((at, keys)),
        }
    }
}

/// The endpoint a key's value describes, with its canonical address, or
/// why the balancer would refuse it: the balancer's own check of the URL
/// and the weight, so that a key that passes here is never refused there.
fn parse(value: &[u8]) -> Result<(String, Endpoint), String> {
    let document: Document =
        serde_json::from_slice(value).map_err(|e| format!("not an endpoint document: {e}"))?;
    let endpoint = document.metadata.into_iter().fold(
        Endpoint::new(document.url).with_weight(document.weight),
        |endpoint, (k, v)| endpoint.with_label(&k, &v),
    );
    let (url, ..) = endpoint.clone().parse().map_err(|e| e.to_string())?;
    Ok((url.as_str().to_owned(), endpoint))
}

/// One key as the source holds it.
#[derive(Debug)]
struct Registration {
    /// The key's `mod_revision`: when it was last written.
    revision: i64,
    /// The endpoint with its canonical address, or why the key is skipped.
    endpoint: Result<(String, Endpoint), String>,
}

impl Registration {
    fn new(revision: i64, value: &[u8]) -> Self {
        Registration {
            revision,
            endpoint: parse(value),
        }
    }
}

/// A key left out of the set: its revision and why.
type Skipped = BTreeMap<Vec<u8>, (i64, String)>;

/// The set the keys describe, in key order, and the keys left out: those
/// with a bad value, and those whose address a key written later holds
/// (within one revision, the first key in key order wins).
fn resolve(keys: &BTreeMap<Vec<u8>, Registration>) -> (Vec<Endpoint>, Skipped) {
    let mut owners: BTreeMap<&str, (&[u8], i64)> = BTreeMap::new();
    for (key, registration) in keys {
        let Ok((url, _)) = &registration.endpoint else {
            continue;
        };
        match owners.entry(url) {
            btree_map::Entry::Vacant(entry) => {
                entry.insert((key, registration.revision));
            }
            btree_map::Entry::Occupied(mut entry) => {
                if registration.revision > entry.get().1 {
                    entry.insert((key, registration.revision));
                }
            }
        }
    }
    let mut set = Vec::new();
    let mut skipped = Skipped::new();
    for (key, registration) in keys {
        let reason = match &registration.endpoint {
            Err(reason) => reason.clone(),
            Ok((url, endpoint)) => match owners.get(url.as_str()) {
                Some((owner, _)) if *owner != key.as_slice() => format!(
                    "its address {url} is also under key {}, written later, whose weight and \
                     labels are used",
                    String::from_utf8_lossy(owner)
                ),
                _ => {
                    set.push(endpoint.clone());
                    continue;
                }
            },
        };
        skipped.insert(key.clone(), (registration.revision, reason));
    }
    (set, skipped)
}

/// The stream's state: the keys as etcd holds them, and the watch that
/// keeps them current.
struct Watching {
    source: EtcdSource,
    hints: RefreshHints,
    keys: BTreeMap<Vec<u8>, Registration>,
    /// The keys left out of the last set, with their revisions: a key is
    /// logged and counted when it becomes skipped, not on every set.
    skipped: Skipped,
    watch: Option<(Client, WatchStream)>,
    retry: Duration,
    /// The last set handed out.
    last: Option<Vec<Endpoint>>,
}

impl Watching {
    /// The set the keys describe. Keys skipped since the last set are
    /// logged at `warn` and counted.
    fn current(&mut self) -> Vec<Endpoint> {
        let (set, skipped) = resolve(&self.keys);
        let mut newly = 0;
        for (key, (revision, reason)) in &skipped {
            if self.skipped.get(key).map(|(r, _)| r) != Some(revision) {
                newly += 1;
                let key = String::from_utf8_lossy(key);
                tracing::warn!(%key, %reason, "etcd discovery: key skipped; the other keys are used");
            }
        }
        if newly > 0 {
            self.hints.skipped(newly);
        }
        self.skipped = skipped;
        set
    }

    /// Reads every key under the prefix (in pages, at one revision) and
    /// starts a watch from that revision.
    async fn read_all(&mut self) -> Result<(), BoxError> {
        let (client, mut kv) = self.source.connect().await?;
        let (revision, keys) = read_prefix(&mut kv, self.source.prefix.as_bytes()).await?;
        let watch = self.source.watch(&client, revision).await?;
        self.keys = keys;
        self.watch = Some((client, watch));
        Ok(())
    }

    /// The next full set that differs from the last one handed out: after
    /// a (re)read, or after changes. Changes that follow one another
    /// closely (each within [`BATCH_QUIET`] of the one before, for at most
    /// [`BATCH_MAX`]) are one set.
    async fn next_set(&mut self) -> Result<Vec<Endpoint>, BoxError> {
        loop {
            let Some((_, watch)) = self.watch.as_mut() else {
                match self.read_all().await {
                    Ok(()) => {
                        self.retry = self.source.min_retry;
                        match self.changed() {
                            Some(set) => return Ok(set),
                            None => continue,
                        }
                    }
                    Err(error) => {
                        // tokio caps a sleep at about 30 years itself.
                        tokio::time::sleep(jittered(self.retry)).await;
                        self.retry = doubled_up_to(self.retry, self.source.max_retry);
                        return Err(error);
                    }
                }
            };
            let answer = watch.message().await;
            if !self.apply(answer) {
                continue;
            }
            let first = Instant::now();
            let mut last = first;
            while let Some((_, watch)) = self.watch.as_mut() {
                let until = (last + BATCH_QUIET).min(first + BATCH_MAX);
                let Ok(answer) = tokio::time::timeout_at(until, watch.message()).await else {
                    break;
                };
                if self.apply(answer) {
                    last = Instant::now();
                }
            }
            if let Some(set) = self.changed() {
                return Ok(set);
            }
        }
    }

    /// Applies one watch answer's changes to the keys; false if it held
    /// none. A watch that failed, ended or was cancelled (its revision
    /// compacted) is dropped, and the next turn reads everything again.
    fn apply(&mut self, answer: Result<Option<WatchResponse>, etcd_client::Error>) -> bool {
        let answer = match answer {
            Ok(Some(answer)) => answer,
            Ok(None) | Err(_) => {
                tracing::debug!("etcd discovery: watch ended; reading again");
                self.watch = None;
                return false;
            }
        };
        if answer.canceled() {
            tracing::debug!(
                compacted = answer.compact_revision(),
                "etcd discovery: watch cancelled; reading again"
            );
            self.watch = None;
            return false;
        }
        for event in answer.events() {
            let Some(kv) = event.kv() else { continue };
            match event.event_type() {
                EventType::Put => {
                    let registration = Registration::new(kv.mod_revision(), kv.value());
                    self.keys.insert(kv.key().to_vec(), registration);
                }
                EventType::Delete => {
                    self.keys.remove(kv.key());
                }
            }
        }
        !answer.events().is_empty()
    }

    /// The set the keys describe, if it differs from the last one handed
    /// out: a put of the same value, or changes that undo each other, give
    /// no set (and no refresh).
    fn changed(&mut self) -> Option<Vec<Endpoint>> {
        let set = self.current();
        if self.last.as_ref() == Some(&set) {
            return None;
        }
        self.last = Some(set.clone());
        Some(set)
    }
}

impl EndpointSource for EtcdSource {
    fn into_sets(self, hints: RefreshHints) -> BoxStream<'static, Result<Vec<Endpoint>, BoxError>> {
        let watching = Watching {
            retry: self.min_retry,
            source: self,
            hints,
            keys: BTreeMap::new(),
            skipped: Skipped::new(),
            watch: None,
            last: None,
        };
        stream::unfold(watching, |mut watching| async move {
            let set = watching.next_set().await;
            Some((set, watching))
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_ends_after_every_key_that_starts_with_it() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), [0]);
        assert_eq!(prefix_end(b""), [0]);
    }

    #[test]
    fn retries_are_spread_twenty_percent_either_way_and_never_is_kept() {
        let wait = Duration::from_secs(1);
        let draws: Vec<Duration> = (0..1_000).map(|_| jittered(wait)).collect();
        assert!(draws
            .iter()
            .all(|d| (Duration::from_millis(800)..=Duration::from_millis(1_200)).contains(d)));
        assert!(draws.iter().any(|d| *d < Duration::from_millis(850)));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(1_150)));
        assert!(jittered(Duration::MAX) >= Duration::from_secs(u64::MAX / 2));
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn absurd_retry_bounds_get_their_documented_meaning() {
        let source =
            |min, max| EtcdSource::new(["http://127.0.0.1:2379"], "/p/").retry_between(min, max);
        let zero = source(Duration::ZERO, Duration::ZERO);
        assert_eq!(
            (zero.min_retry, zero.max_retry),
            (Duration::from_millis(10), Duration::from_millis(10))
        );
        let crossed = source(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(
            (crossed.min_retry, crossed.max_retry),
            (Duration::from_secs(5), Duration::from_secs(5))
        );
        let never = source(Duration::MAX, Duration::ZERO);
        assert_eq!(
            (never.min_retry, never.max_retry),
            (Duration::MAX, Duration::MAX)
        );
    }

    #[test]
    fn documents_give_url_weight_and_labels_and_bad_ones_say_why() {
        let (url, endpoint) =
            parse(br#"{"url": "HTTP://10.0.0.7:8080/", "weight": 2, "metadata": {"zone": "a"}}"#)
                .unwrap();
        assert_eq!(url, "http://10.0.0.7:8080");
        assert_eq!(endpoint.url(), "HTTP://10.0.0.7:8080/");
        assert_eq!(endpoint.weight(), 2);
        assert_eq!(endpoint.labels().get("zone"), Some("a"));
        assert!(parse(br#"{"url": "http://10.0.0.7:8080"}"#).is_ok());
        for bad in [
            &b"not json"[..],
            br#"{"weight": 2}"#,
            br#"{"url": 7}"#,
            br#"{"url": "http://a:1", "extra": 1}"#,
            br#"{"url": "http://a:1/?q=1"}"#,
            br#"{"url": "http://a:1/#top"}"#,
            br#"{"url": "ftp://a:21"}"#,
            br#"{"url": "http://a:1", "weight": 10001}"#,
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(parse(br#"{"url": "http://a:1", "weight": 10000}"#).is_ok());
    }

    #[test]
    fn an_address_under_two_keys_is_one_endpoint_with_the_newest_keys_weight() {
        let keys = |entries: &[(&str, i64, &str)]| -> BTreeMap<Vec<u8>, Registration> {
            entries
                .iter()
                .map(|(key, revision, value)| {
                    (
                        key.as_bytes().to_vec(),
                        Registration::new(*revision, value.as_bytes()),
                    )
                })
                .collect()
        };
        let old = r#"{"url": "http://a:1/", "weight": 5}"#;
        let new = r#"{"url": "http://A:1", "weight": 3}"#;
        let other = r#"{"url": "http://b:1"}"#;
        // The newer key wins whatever the key order.
        for (first, second) in [("k1", "k2"), ("k2", "k1")] {
            let (set, skipped) =
                resolve(&keys(&[(first, 7, old), (second, 9, new), ("z", 8, other)]));
            assert_eq!(
                set.iter()
                    .map(|e| (e.url(), e.weight()))
                    .collect::<Vec<_>>(),
                [("http://A:1", 3), ("http://b:1", 1)]
            );
            assert_eq!(skipped.keys().collect::<Vec<_>>(), [first.as_bytes()]);
        }
        // Within one revision, the first key in key order.
        let (set, skipped) = resolve(&keys(&[("k1", 7, old), ("k2", 7, new), ("bad", 7, "{}")]));
        assert_eq!(set.iter().map(Endpoint::weight).collect::<Vec<_>>(), [5]);
        assert_eq!(
            skipped.keys().collect::<Vec<_>>(),
            [&b"bad"[..], &b"k2"[..]]
        );
    }
}
