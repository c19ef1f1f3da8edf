//! Endpoints from etcd: one key per endpoint under a prefix, each value a
//! small JSON document; read whole, then watched from the read's revision.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions, WatchStream};
use futures::stream::{self, BoxStream, StreamExt};
use serde::Deserialize;

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
/// endpoint's labels. A value that is not such a document is skipped and
/// logged at `warn`, so one bad key cannot hold the others back.
///
/// The source reads every key under the prefix, then watches the prefix
/// from the revision of that read, so no change between the two is missed;
/// each change gives a new full set. When the watch fails (etcd restarted,
/// unreachable) or is cancelled (its revision was compacted), the source
/// reads everything again and watches from there, retrying after 200 ms,
/// doubling up to 5 s while etcd stays away; meanwhile the last good set
/// keeps serving. The connection checks the server with keep-alive pings
/// every second (1 s to answer), so a frozen etcd is noticed in about 2 s.
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
}

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
            min_retry: Duration::from_millis(200),
            max_retry: Duration::from_secs(5),
        }
    }

    /// Waits between attempts while etcd is unreachable: `min`, doubling
    /// up to `max` (defaults 200 ms and 5 s).
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

    async fn connect(&self) -> Result<Client, BoxError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1))
            .with_keep_alive_while_idle(true);
        Ok(Client::connect(&self.endpoints, Some(options)).await?)
    }
}

/// The endpoint a key's value describes, or why it does not.
fn parse(value: &[u8]) -> Result<Endpoint, String> {
    let document: Document =
        serde_json::from_slice(value).map_err(|e| format!("not an endpoint document: {e}"))?;
    Ok(document.metadata.into_iter().fold(
        Endpoint::new(document.url).with_weight(document.weight),
        |endpoint, (k, v)| endpoint.with_label(&k, &v),
    ))
}

/// The stream's state: the set as etcd holds it, and the watch that keeps
/// it current.
struct Watching {
    source: EtcdSource,
    set: BTreeMap<Vec<u8>, Endpoint>,
    watch: Option<(Client, WatchStream)>,
    retry: Duration,
}

impl Watching {
    /// Puts (or, for a bad value, removes) the key's endpoint.
    fn put(&mut self, key: &[u8], value: &[u8]) {
        match parse(value) {
            Ok(endpoint) => {
                self.set.insert(key.to_vec(), endpoint);
            }
            Err(error) => {
                let key = String::from_utf8_lossy(key);
                tracing::warn!(%key, %error, "etcd discovery: key skipped");
                self.set.remove(key.as_bytes());
            }
        }
    }

    fn current(&self) -> Vec<Endpoint> {
        self.set.values().cloned().collect()
    }

    /// Reads every key under the prefix and starts a watch from that
    /// revision.
    async fn read_all(&mut self) -> Result<(), BoxError> {
        let mut client = self.source.connect().await?;
        let prefix = self.source.prefix.clone();
        let answer = client
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await?;
        let revision = answer.header().map_or(0, |h| h.revision());
        self.set.clear();
        for kv in answer.kvs() {
            self.put(kv.key(), kv.value());
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let watch = client.watch(prefix.as_str(), Some(options)).await?;
        self.watch = Some((client, watch));
        Ok(())
    }

    /// The next full set: after a (re)read, or after a change.
    async fn next_set(&mut self) -> Result<Vec<Endpoint>, BoxError> {
        loop {
            let Some((_, watch)) = self.watch.as_mut() else {
                return match self.read_all().await {
                    Ok(()) => {
                        self.retry = self.source.min_retry;
                        Ok(self.current())
                    }
                    Err(error) => {
                        // tokio caps a sleep at about 30 years itself.
                        tokio::time::sleep(self.retry).await;
                        self.retry = doubled_up_to(self.retry, self.source.max_retry);
                        Err(error)
                    }
                };
            };
            let answer = match watch.message().await {
                Ok(Some(answer)) => answer,
                Ok(None) | Err(_) => {
                    tracing::debug!("etcd discovery: watch ended; reading again");
                    self.watch = None;
                    continue;
                }
            };
            if answer.canceled() {
                tracing::debug!(
                    compacted = answer.compact_revision(),
                    "etcd discovery: watch cancelled; reading again"
                );
                self.watch = None;
                continue;
            }
            if answer.events().is_empty() {
                continue;
            }
            for event in answer.events() {
                let Some(kv) = event.kv() else { continue };
                match event.event_type() {
                    EventType::Put => self.put(kv.key(), kv.value()),
                    EventType::Delete => {
                        self.set.remove(kv.key());
                    }
                }
            }
            return Ok(self.current());
        }
    }
}

impl EndpointSource for EtcdSource {
    fn into_sets(self, _: RefreshHints) -> BoxStream<'static, Result<Vec<Endpoint>, BoxError>> {
        let watching = Watching {
            retry: self.min_retry,
            source: self,
            set: BTreeMap::new(),
            watch: None,
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
        let endpoint =
            parse(br#"{"url": "http://10.0.0.7:8080", "weight": 2, "metadata": {"zone": "a"}}"#)
                .unwrap();
        assert_eq!(endpoint.url(), "http://10.0.0.7:8080");
        assert_eq!(endpoint.weight(), 2);
        assert_eq!(endpoint.labels().get("zone"), Some("a"));
        assert!(parse(br#"{"url": "http://10.0.0.7:8080"}"#).is_ok());
        for bad in [
            &b"not json"[..],
            br#"{"weight": 2}"#,
            br#"{"url": 7}"#,
            br#"{"url": "http://a:1", "extra": 1}"#,
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
