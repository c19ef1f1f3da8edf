//! Membership owns per-endpoint state: over random sequences of full-set
//! replacements, discovery changes and removals, a survivor keeps its
//! counters, a newcomer (a re-added address too) starts fresh, and the
//! stats list exactly the set asked for, in its order, with its weights and
//! labels.
//!
//! `cargo test --test properties_membership`

use std::collections::HashMap;

use proptest::prelude::*;
use tower::discover::Change;
use tower_lb::{Balancer, Endpoint, Error, Policy};

const POOL: usize = 8;

fn url(i: usize) -> String {
    format!("http://10.0.0.{}:80", i + 1)
}

/// One endpoint of the pool with a weight and a label.
fn endpoint() -> impl Strategy<Value = (usize, u32, u8)> {
    (0..POOL, 0u32..5, 0u8..3)
}

#[derive(Clone, Debug)]
enum Step {
    /// Sends this many requests (each finished at once).
    Send(usize),
    /// Replaces the whole set.
    Replace(Vec<(usize, u32, u8)>),
    /// Applies a batch of discovery changes: `Some` inserts, `None` removes.
    Apply(Vec<(usize, Option<(u32, u8)>)>),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (1usize..40).prop_map(Step::Send),
        prop::collection::vec(endpoint(), 0..POOL).prop_map(Step::Replace),
        prop::collection::vec((0..POOL, prop::option::of((0u32..5, 0u8..3))), 1..4)
            .prop_map(Step::Apply),
    ]
}

fn described((i, weight, zone): (usize, u32, u8)) -> Endpoint {
    Endpoint::new(url(i))
        .with_weight(weight)
        .with_label("zone", zone.to_string())
}

/// What the set should be: URL → (weight, zone, requests so far), in order.
#[derive(Default)]
struct Model {
    order: Vec<String>,
    entries: HashMap<String, (u32, String, u64)>,
}

impl Model {
    fn upsert(&mut self, url: String, weight: u32, zone: String) {
        match self.entries.get_mut(&url) {
            Some(entry) => (entry.0, entry.1) = (weight, zone),
            None => {
                self.order.push(url.clone());
                self.entries.insert(url, (weight, zone, 0));
            }
        }
    }

    fn remove(&mut self, url: &str) {
        self.order.retain(|u| u != url);
        self.entries.remove(url);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn survivors_keep_their_counters_newcomers_and_readded_addresses_start_fresh(
        steps in prop::collection::vec(step(), 1..12),
    ) {
        let balancer = Balancer::builder()
            .policy(Policy::round_robin())
            .seed(1)
            .build()
            .unwrap();
        let mut model = Model::default();
        let request = http::Request::get("/").body(()).unwrap();
        for step in steps {
            match step {
                Step::Send(n) => {
                    for _ in 0..n {
                        match balancer.select(&request) {
                            Ok(selection) => {
                                let chosen = selection.endpoint().to_owned();
                                selection.finish(http::StatusCode::OK);
                                let entry = model.entries.get_mut(&chosen).unwrap();
                                prop_assert!(entry.0 > 0, "a drained endpoint was chosen");
                                entry.2 += 1;
                            }
                            Err(Error::NoEndpointAvailable) => prop_assert!(
                                model.entries.values().all(|e| e.0 == 0),
                                "no endpoint, yet one has a weight"
                            ),
                            Err(other) => prop_assert!(false, "unexpected {other}"),
                        }
                    }
                }
                Step::Replace(list) => {
                    let duplicated = (0..POOL)
                        .any(|i| list.iter().filter(|(j, ..)| *j == i).count() > 1);
                    let result = balancer.replace(list.iter().copied().map(described));
                    if duplicated {
                        prop_assert!(
                            matches!(result, Err(Error::DuplicateEndpoint { .. })),
                            "a duplicate was accepted"
                        );
                        // All or nothing: the model stays as it was.
                    } else {
                        prop_assert!(result.is_ok());
                        let before = std::mem::take(&mut model);
                        for (i, weight, zone) in list {
                            let kept = before.entries.get(&url(i)).map_or(0, |e| e.2);
                            model.order.push(url(i));
                            model.entries.insert(url(i), (weight, zone.to_string(), kept));
                        }
                    }
                }
                Step::Apply(changes) => {
                    let batch = changes.iter().map(|(i, change)| match change {
                        Some(e) => Change::Insert(url(*i), described((*i, e.0, e.1))),
                        None => Change::Remove(url(*i)),
                    });
                    prop_assert!(balancer.apply(batch.collect::<Vec<_>>()).is_ok());
                    for (i, change) in changes {
                        match change {
                            Some((weight, zone)) => model.upsert(url(i), weight, zone.to_string()),
                            None => model.remove(&url(i)),
                        }
                    }
                }
            }
            let stats = balancer.stats();
            let urls: Vec<&str> = stats.endpoints.iter().map(|e| e.url.as_str()).collect();
            prop_assert_eq!(&urls, &model.order);
            for e in &stats.endpoints {
                let (weight, zone, requests) = &model.entries[&e.url];
                prop_assert_eq!(e.weight, *weight);
                prop_assert_eq!(e.labels.get("zone"), Some(zone.as_str()));
                prop_assert_eq!(e.requests, *requests, "{}", e.url);
            }
        }
    }
}

#[test]
fn a_change_whose_endpoint_names_another_url_than_its_key_is_refused() {
    let balancer = Balancer::builder().build().unwrap();
    let mismatched = Change::Insert(url(0), Endpoint::new(url(1)));
    assert!(matches!(
        balancer.apply([mismatched]),
        Err(Error::InvalidUrl { .. })
    ));
    // The same endpoint spelled another way is the same key.
    let respelled = Change::Insert("HTTP://10.0.0.1", Endpoint::new(url(0)));
    assert!(balancer.apply([respelled]).is_ok());
    assert_eq!(balancer.stats().endpoints.len(), 1);
}
