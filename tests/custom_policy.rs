//! A user-written policy over the public trait: prefer the endpoints of one
//! zone (a label), fall back to all. Loopback backends show the traffic;
//! a property test holds the promise over random sets.

use crate::support;

use std::collections::HashMap;

use proptest::prelude::*;
use support::*;
use tower_lb::{
    Balancer, Candidates, Endpoint, Error, PickContext, Picker, Policy, SelectionPolicy, Subset,
};

/// Requests go to endpoints labelled `zone=<zone>` by `inner`; to the
/// others only when none of those can take the request.
#[derive(Debug)]
struct PreferZone {
    zone: &'static str,
    inner: Policy,
}

#[derive(Debug)]
struct PreferZonePicker {
    local: Subset,
    local_picker: Box<dyn Picker>,
    any_picker: Box<dyn Picker>,
}

impl SelectionPolicy for PreferZone {
    fn build(&self, endpoints: &Candidates<'_>) -> Box<dyn Picker> {
        let local = endpoints.subset(|i| endpoints.labels(i).get("zone") == Some(self.zone));
        Box::new(PreferZonePicker {
            local_picker: self.inner.build(&local.candidates()),
            local,
            any_picker: self.inner.build(endpoints),
        })
    }
}

impl Picker for PreferZonePicker {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        self.local
            .pick(&*self.local_picker, ctx)
            .or_else(|| self.any_picker.pick(ctx))
    }
}

fn in_zone(url: String, zone: &str) -> Endpoint {
    Endpoint::new(url).with_label("zone", zone)
}

#[tokio::test]
async fn the_local_zone_takes_every_request_while_it_can_and_the_rest_after() {
    let servers = backends(4).await;
    let zones = ["a", "a", "b", "b"];
    let balancer = servers
        .iter()
        .zip(zones)
        .fold(Balancer::builder(), |b, (s, zone)| {
            b.endpoint(in_zone(s.uri(), zone))
        })
        .policy(Policy::custom(PreferZone {
            zone: "a",
            inner: Policy::weighted_round_robin(),
        }))
        .build()
        .unwrap();
    let client = client(&balancer);
    let count = |results: Vec<Result<String, Error>>| {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for name in results {
            *seen.entry(name.unwrap()).or_default() += 1;
        }
        seen
    };

    let seen = count(send_many(&client, 40, 4).await);
    assert_eq!(seen, HashMap::from([("a".into(), 20), ("b".into(), 20)]));

    balancer.drain(servers[0].uri()).unwrap();
    balancer.drain(servers[1].uri()).unwrap();
    let seen = count(send_many(&client, 40, 4).await);
    assert_eq!(seen, HashMap::from([("c".into(), 20), ("d".into(), 20)]));
    assert_settled(&balancer);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Over random zones and weights (0 drains), no request leaves zone
    /// "a" while an endpoint of it takes requests; every request gets an
    /// endpoint with a weight whenever one exists.
    #[test]
    fn no_request_leaves_the_preferred_zone_while_it_has_an_endpoint(
        fleet in prop::collection::vec((any::<bool>(), 0u32..4), 1..12),
        seed in any::<u64>(),
        policy in 0u8..3,
    ) {
        let inner = match policy {
            0 => Policy::round_robin(),
            1 => Policy::random(),
            _ => Policy::least_response_time().into(),
        };
        let endpoints: Vec<Endpoint> = fleet
            .iter()
            .enumerate()
            .map(|(i, (local, weight))| {
                in_zone(format!("http://10.0.0.{}:80", i + 1), if *local { "a" } else { "b" })
                    .with_weight(*weight)
            })
            .collect();
        let balancer = Balancer::builder()
            .policy(Policy::custom(PreferZone { zone: "a", inner }))
            .seed(seed)
            .build()
            .unwrap();
        balancer.replace(endpoints).unwrap();
        let local_up = fleet.iter().any(|(local, weight)| *local && *weight > 0);
        let any_up = fleet.iter().any(|(_, weight)| *weight > 0);
        let request = http::Request::get("/").body(()).unwrap();
        for _ in 0..50 {
            match balancer.select(&request) {
                Ok(selection) => {
                    let i: usize = selection.endpoint()["http://10.0.0.".len()..]
                        .trim_end_matches(":80")
                        .parse::<usize>()
                        .unwrap()
                        - 1;
                    let (local, weight) = fleet[i];
                    prop_assert!(weight > 0, "a drained endpoint was chosen");
                    prop_assert!(local || !local_up, "left the zone while it had an endpoint");
                }
                Err(error) => {
                    prop_assert!(matches!(error, Error::NoEndpointAvailable));
                    prop_assert!(!any_up, "no endpoint, yet one has a weight");
                }
            }
        }
    }
}

#[tokio::test]
async fn a_policy_that_delegates_to_maglev_reads_maglevs_keys_without_forwarding_them() {
    use tower_lb::SessionKey;
    // Every endpoint is in zone "a", so the inner Maglev places every
    // request; `PreferZone` does not forward `request_key`.
    let servers = backends(3).await;
    let balancer = servers
        .iter()
        .fold(Balancer::builder(), |b, s| {
            b.endpoint(in_zone(s.uri(), "a"))
        })
        .policy(Policy::custom(PreferZone {
            zone: "a",
            inner: Policy::maglev().into(),
        }))
        .build()
        .unwrap();
    let plain_maglev = servers
        .iter()
        .fold(Balancer::builder(), |b, s| b.endpoint(s.uri()))
        .policy(Policy::maglev())
        .build()
        .unwrap();
    let mut homes = std::collections::HashSet::new();
    for user in 0..60 {
        let key = SessionKey::new(format!("user-{user}"));
        let mut request = http::Request::get("/").body(()).unwrap();
        request.extensions_mut().insert(key);
        let first = balancer.select(&request).unwrap().endpoint().to_owned();
        for _ in 0..3 {
            let again = balancer.select(&request).unwrap();
            assert_eq!(again.endpoint(), first, "user-{user} moved");
        }
        // The same table as Maglev's own over the same endpoints, and the
        // custom policy says where the key lives (it answered `None`).
        assert_eq!(Some(first.as_str()), plain_maglev.locate(&key).as_deref());
        assert_eq!(Some(first.as_str()), balancer.locate(&key).as_deref());
        homes.insert(first);
    }
    assert_eq!(homes.len(), 3, "keys spread over every endpoint");
}

/// Delegates to Maglev when there are endpoints, and builds a picker that
/// picks nothing for an empty set (so it delegates to nothing then).
#[derive(Debug)]
struct MaglevWhenAny;

#[derive(Debug)]
struct NoPick;

impl Picker for NoPick {
    fn pick(&self, _: &PickContext<'_>) -> Option<usize> {
        None
    }
}

impl SelectionPolicy for MaglevWhenAny {
    fn build(&self, endpoints: &Candidates<'_>) -> Box<dyn Picker> {
        if endpoints.is_empty() {
            return Box::new(NoPick);
        }
        Policy::from(Policy::maglev()).build(endpoints)
    }
}

#[tokio::test]
async fn a_delegated_key_source_is_fixed_per_balancer_when_it_is_built() {
    use tower::ServiceExt;
    use tower_lb::SessionKey;
    let servers = backends(3).await;
    let policy = Policy::custom(MaglevWhenAny);
    // Built with endpoints: it delegated to Maglev, so it reads session
    // keys, sticks by them and removes their header.
    let keyed = balancer_over(&servers, policy.clone());
    // The same policy, built empty: it delegated to nothing then, so it
    // reads no key, whatever the other balancer recorded, and leaves the
    // header alone once endpoints arrive.
    let keyless = Balancer::builder().policy(policy).build().unwrap();
    for server in &servers {
        keyless.add(server.uri(), 1).unwrap();
    }
    let send = |balancer: &Balancer, user: usize| {
        let client = client(balancer);
        async move {
            let mut request = get("/");
            let key = SessionKey::new(format!("user-{user}"));
            request
                .headers_mut()
                .insert(SessionKey::HEADER, key.header_value());
            backend_name(&client.oneshot(request).await.unwrap())
        }
    };
    for user in 0..10 {
        let first = send(&keyed, user).await;
        assert_eq!(send(&keyed, user).await, first, "user-{user} moved");
    }
    let mut with_header = 0;
    for server in &servers {
        for request in server.received_requests().await.unwrap() {
            with_header += usize::from(request.headers.contains_key(SessionKey::HEADER));
        }
    }
    assert_eq!(with_header, 0, "the keyed balancer let the header through");
    for user in 0..10 {
        send(&keyless, user).await;
    }
    let mut with_header = 0;
    for server in &servers {
        for request in server.received_requests().await.unwrap() {
            with_header += usize::from(request.headers.contains_key(SessionKey::HEADER));
        }
    }
    assert_eq!(
        with_header, 10,
        "the keyless balancer read a key it was not built with"
    );
}
