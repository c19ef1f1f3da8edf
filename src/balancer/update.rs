//! Changing the endpoint set at runtime: one endpoint at a time, batches of
//! discovery changes, or a discovery stream followed to its end.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;

use futures_util::StreamExt;
use tower::discover::{Change, Discover};

use super::Balancer;
use crate::endpoint::{
    Counters, Endpoint, EndpointState, EndpointUrl, IntoEndpoint, Labels, Member, MAX_WEIGHT,
};
use crate::membership::Snapshot;
use crate::slow_start::Ramps;
use crate::Error;

/// Most discovery changes applied in one rebuild of the set.
const DISCOVERY_BATCH: usize = 1024;

impl Balancer {
    /// Adds an endpoint with a weight (0 adds it drained).
    ///
    /// Errors: [`Error::InvalidUrl`], [`Error::InvalidWeight`],
    /// [`Error::DuplicateEndpoint`] if it is already in the set.
    ///
    /// `add`, [`remove`](Balancer::remove),
    /// [`set_weight`](Balancer::set_weight) and [`drain`](Balancer::drain)
    /// take the URL as anything that reads as one (`impl AsRef<str>`):
    /// `&str`, `String`, `&String`, `Arc<str>`.
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// let balancer = tower_lb::Balancer::builder().build()?;
    /// let url: String = String::from("http://127.0.0.1:8081");
    /// balancer.add(url.clone(), 2)?;
    /// balancer.set_weight(&url, 3)?;
    /// balancer.drain(url.clone())?;
    /// balancer.remove(Arc::<str>::from(url))?;
    /// assert!(balancer.stats().endpoints.is_empty());
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    pub fn add(&self, url: impl AsRef<str>, weight: u32) -> Result<(), Error> {
        let url = EndpointUrl::parse(url.as_ref())?;
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

    /// Adds an endpoint, or updates the weight and labels of the one at the
    /// same URL (its counters, estimate and health stay).
    ///
    /// Errors: [`Error::InvalidUrl`], [`Error::InvalidWeight`].
    ///
    /// ```
    /// use tower_lb::{Balancer, Endpoint};
    ///
    /// let balancer = Balancer::builder().endpoint("http://127.0.0.1:8081").build()?;
    /// balancer.insert(Endpoint::new("http://127.0.0.1:8081").with_label("zone", "b"))?;
    /// balancer.insert("http://127.0.0.1:8082")?;
    /// let stats = balancer.stats();
    /// assert_eq!(stats.endpoints.len(), 2);
    /// assert_eq!(stats.endpoints[0].labels.get("zone"), Some("b"));
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    pub fn insert(&self, endpoint: impl Into<Endpoint>) -> Result<(), Error> {
        let (url, weight, labels) = endpoint.into().parse()?;
        self.apply_parsed(vec![ParsedChange::Upsert(url, weight, labels)]);
        Ok(())
    }

    /// Replaces the whole set at once, for discovery sources that deliver
    /// full sets: endpoints of `endpoints` already in the set keep their
    /// counters, estimate and health and take the new weight and labels;
    /// new ones start fresh; the others are removed (their requests in
    /// flight finish). The set takes the order of `endpoints`. All or
    /// nothing: on an error the set is unchanged. An empty list, or one of
    /// drained endpoints only, is allowed: requests then fail with
    /// [`Error::NoEndpointAvailable`].
    ///
    /// Errors: [`Error::InvalidUrl`], [`Error::InvalidWeight`],
    /// [`Error::DuplicateEndpoint`].
    ///
    /// ```
    /// use tower_lb::Balancer;
    ///
    /// let balancer = Balancer::builder()
    ///     .endpoint("http://127.0.0.1:8081")
    ///     .endpoint("http://127.0.0.1:8082")
    ///     .build()?;
    /// balancer.replace(["http://127.0.0.1:8082", "http://127.0.0.1:8083"])?;
    /// let urls: Vec<_> = balancer.stats().endpoints.into_iter().map(|e| e.url).collect();
    /// assert_eq!(urls, ["http://127.0.0.1:8082", "http://127.0.0.1:8083"]);
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    pub fn replace<I>(&self, endpoints: I) -> Result<(), Error>
    where
        I: IntoIterator,
        I::Item: Into<Endpoint>,
    {
        let mut next: Vec<(EndpointUrl, u32, Labels)> = Vec::new();
        let mut seen = HashSet::new();
        for endpoint in endpoints {
            let (url, weight, labels) = endpoint.into().parse()?;
            if !seen.insert(url.as_str().to_owned()) {
                return Err(Error::DuplicateEndpoint {
                    url: url.as_str().to_owned(),
                });
            }
            next.push((url, weight, labels));
        }
        self.replace_parsed(next);
        Ok(())
    }

    /// Replaces the whole set with endpoints already checked (valid URLs
    /// and weights, no duplicates), as [`Balancer::replace`] does.
    pub(crate) fn replace_parsed(&self, next: Vec<(EndpointUrl, u32, Labels)>) {
        let counters = &self.shared.counters;
        self.update::<Infallible>(|members| {
            let survivors = std::mem::take(members);
            // By name, so that a set of n endpoints costs O(n), not O(n²):
            // discovery hands over whole sets of thousands.
            let by_url: HashMap<&str, &Member> = survivors
                .iter()
                .map(|m| (m.state.url.as_str(), m))
                .collect();
            *members = next
                .into_iter()
                .map(|(url, weight, labels)| match by_url.get(url.as_str()) {
                    Some(kept) => Member {
                        state: kept.state.clone(),
                        weight,
                        labels,
                    },
                    None => Member {
                        labels,
                        ..Member::new(url, weight, counters)
                    },
                })
                .collect();
            Ok(())
        })
        .unwrap_or_else(|never: Infallible| match never {})
    }

    /// Removes an endpoint. Requests already sent to it finish normally; its
    /// counters leave [`Balancer::stats`].
    ///
    /// Errors: [`Error::InvalidUrl`], [`Error::UnknownEndpoint`].
    pub fn remove(&self, url: impl AsRef<str>) -> Result<(), Error> {
        let url = EndpointUrl::parse(url.as_ref())?;
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
    pub fn set_weight(&self, url: impl AsRef<str>, weight: u32) -> Result<(), Error> {
        let url = EndpointUrl::parse(url.as_ref())?;
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
    pub fn drain(&self, url: impl AsRef<str>) -> Result<(), Error> {
        self.set_weight(url, 0)
    }

    /// Applies a batch of discovery changes at once, all or none.
    ///
    /// The key of each change is the endpoint's URL; the value in the
    /// service slot is a weight or a whole [`Endpoint`] (with labels; its
    /// URL must name the same endpoint as the key). `Change::Insert` adds
    /// the endpoint or, if it is already in the set, updates its weight and
    /// labels (its state stays); `Change::Remove(url)` removes it if
    /// present. The first invalid change is returned and nothing is applied.
    ///
    /// ```
    /// use tower::discover::Change;
    /// use tower_lb::Endpoint;
    /// # let balancer = tower_lb::Balancer::builder().build()?;
    /// balancer.apply([
    ///     Change::Insert("http://127.0.0.1:8081", 2),
    ///     Change::Remove("http://127.0.0.1:8082"),
    /// ])?;
    /// let canary = Endpoint::new("http://127.0.0.1:8083").with_label("canary", "true");
    /// balancer.apply([Change::Insert("http://127.0.0.1:8083", canary)])?;
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    pub fn apply<K, V, I>(&self, changes: I) -> Result<(), Error>
    where
        K: AsRef<str>,
        V: IntoEndpoint,
        I: IntoIterator<Item = Change<K, V>>,
    {
        let changes = changes
            .into_iter()
            .map(ParsedChange::parse)
            .collect::<Result<Vec<_>, _>>()?;
        self.apply_parsed(changes);
        Ok(())
    }

    /// Follows a discovery stream of `Change<url, weight or Endpoint>` events
    /// (any tower [`Discover`]: a `Stream` of `Result<Change<K, V>, E>` is
    /// one) until it ends, applying each as
    /// [`Balancer::apply`] does. Changes that arrive together are applied in
    /// one rebuild of the set.
    ///
    /// An invalid change (a bad URL or weight) is skipped and logged at
    /// `warn` level, so one bad record cannot stall discovery. The stream's
    /// own error ends the loop and is returned.
    ///
    /// The key may be any type that reads as the URL (`AsRef<str>`) and is
    /// `Eq`, as tower's `Discover` requires (`String`, `&str`, `Arc<str>`).
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
    pub async fn follow<D, K, V, E>(&self, changes: D) -> Result<(), E>
    where
        D: Discover<Key = K, Service = V, Error = E>,
        K: AsRef<str>,
        V: IntoEndpoint,
    {
        let mut changes = std::pin::pin!(changes);
        let changes = futures_util::stream::poll_fn(move |cx| changes.as_mut().poll_discover(cx));
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

    /// Adds the endpoint at `url` with weight 1 unless it is in the set
    /// (then its weight and state stay), and calls `with_state` on its state
    /// before the change is published, so that no request sees the
    /// endpoint before `with_state` ran.
    pub(crate) fn add_or_keep(
        &self,
        url: &str,
        with_state: impl FnOnce(&Arc<EndpointState>),
    ) -> Result<(), Error> {
        let url = EndpointUrl::parse(url)?;
        let counters = &self.shared.counters;
        self.update::<Infallible>(|members| {
            let index = match position(members, &url) {
                Some(index) => index,
                None => {
                    members.push(Member::new(url, 1, counters));
                    members.len() - 1
                }
            };
            with_state(&members[index].state);
            Ok(())
        })
        .map_err(|never| match never {})
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
        let writer = shared.writer.lock().unwrap_or_else(|p| p.into_inner());
        let before = shared.snapshot.load_full();
        let mut members = before.members().to_vec();
        edit(&mut members)?;
        if let Some(ramps) = &shared.counters.ramps {
            begin_ramps(ramps, before.members(), &members, &shared.counters);
        }
        // What responses name as the endpoint follows its labels.
        for member in &members {
            member.state.set_labels(&member.labels);
        }
        // A removed endpoint's health ends with its membership: it gives
        // back any ejection, and its late answers change nothing.
        let kept: HashSet<*const EndpointState> =
            members.iter().map(|m| Arc::as_ptr(&m.state)).collect();
        let mut removed = Vec::new();
        for gone in before.members() {
            if !kept.contains(&Arc::as_ptr(&gone.state)) {
                gone.state.retire();
                removed.push(gone.state.clone());
            }
        }
        let next = Snapshot::build(members, &shared.policy, &shared.counters);
        shared.snapshot.store(Arc::new(next));
        drop(writer);
        // What is kept per endpoint outside the balancer ends with it now.
        if !removed.is_empty() {
            self.removed(&removed);
        }
        Ok(())
    }
}

/// Begins the slow-start window of every endpoint of `after` that takes
/// requests and did not in `before` (new, or back from drained).
fn begin_ramps(ramps: &Ramps, before: &[Member], after: &[Member], counters: &Counters) {
    let took: HashSet<*const EndpointState> = before
        .iter()
        .filter(|m| m.weight > 0)
        .map(|m| Arc::as_ptr(&m.state))
        .collect();
    let mut now = None;
    for member in after {
        if member.weight > 0 && !took.contains(&Arc::as_ptr(&member.state)) {
            let at = *now.get_or_insert_with(|| counters.clock.now_ms().max(1));
            member.state.joined_at(at);
            ramps.begin(at);
        }
    }
}

/// A discovery change with its URL parsed and weight checked.
enum ParsedChange {
    Upsert(EndpointUrl, u32, Labels),
    Remove(EndpointUrl),
}

impl ParsedChange {
    fn parse<K: AsRef<str>, V: IntoEndpoint>(change: Change<K, V>) -> Result<Self, Error> {
        Ok(match change {
            Change::Insert(key, value) => {
                let (url, weight, labels) = value.into_endpoint(key.as_ref())?.parse()?;
                ParsedChange::Upsert(url, weight, labels)
            }
            Change::Remove(url) => ParsedChange::Remove(EndpointUrl::parse(url.as_ref())?),
        })
    }

    fn apply_to(self, members: &mut Vec<Member>, counters: &Counters) {
        match self {
            ParsedChange::Upsert(url, weight, labels) => match position(members, &url) {
                Some(i) => {
                    members[i].weight = weight;
                    members[i].labels = labels;
                }
                None => members.push(Member {
                    labels,
                    ..Member::new(url, weight, counters)
                }),
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

pub(super) fn check_weight(url: &EndpointUrl, weight: u32) -> Result<(), Error> {
    if weight > MAX_WEIGHT {
        return Err(Error::InvalidWeight {
            url: url.as_str().to_owned(),
            weight,
            max: MAX_WEIGHT,
        });
    }
    Ok(())
}

fn unknown(url: &EndpointUrl) -> Error {
    Error::UnknownEndpoint {
        url: url.as_str().to_owned(),
    }
}
