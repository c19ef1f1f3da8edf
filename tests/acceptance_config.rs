//! Acceptance probes of configuration from a file (feature `serde`), as a
//! user reads README.md ("Configured from a file") and
//! docs/configuration.md: each documented setting takes effect on real
//! backends, defaults are the builder's, documented shapes read in TOML,
//! YAML and JSON, and no input panics or gives an error without a path.
#![cfg(feature = "serde")]

use crate::support;

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use support::*;
use tower::ServiceExt;
use tower_lb::{Balancer, BalancerConfig, Error, OutlierDetection, Policy, Retries};
use wiremock::matchers::any as any_request;
use wiremock::{Mock, ResponseTemplate};

fn from_toml(text: &str) -> Result<BalancerConfig, Error> {
    let document = toml::Deserializer::parse(text).expect("TOML syntax");
    BalancerConfig::from_deserializer(document)
}

fn from_yaml(text: &str) -> Result<BalancerConfig, Error> {
    BalancerConfig::from_deserializer(serde_norway::Deserializer::from_str(text))
}

fn from_json(text: &str) -> Result<BalancerConfig, Error> {
    BalancerConfig::from_deserializer(&mut serde_json::Deserializer::from_str(text))
}

/// `{url}` in `template` replaced by each of `urls` in turn (`{0}`, `{1}`...).
fn with_urls(template: &str, urls: &[String]) -> String {
    (urls.iter().enumerate()).fold(template.to_owned(), |text, (i, url)| {
        text.replace(&format!("{{{i}}}"), url)
    })
}

fn debug(value: &dyn std::fmt::Debug) -> String {
    format!("{value:?}")
}

/// Which backend answered each of `n` keyless GETs, counted.
async fn spread(balancer: &Balancer, n: usize) -> BTreeMap<String, usize> {
    let client = client(balancer);
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        *seen.entry(send(&client, "/").await.unwrap()).or_default() += 1;
    }
    seen
}

// ---- the documented shapes read, in every format ----

#[test]
fn the_readme_and_docs_examples_read_and_build() {
    let readme = r#"
endpoints = [
    { url = "http://10.0.0.1:8080", weight = 5, labels = { zone = "a" } },
    "http://10.0.0.2:8080",
]

[policy.maglev]
key = ["session", { header = "x-user-id" }]
bounded_loads = true

[outlier]
consecutive_failures = 3
base_ejection = "15s"

[retry]
budget = { percent = 10 }
"#;
    let balancer = from_toml(readme).unwrap().build().unwrap();
    let stats = balancer.stats();
    let first = stats.endpoint("http://10.0.0.1:8080").unwrap();
    assert_eq!((first.weight, first.labels.get("zone")), (5, Some("a")));

    // The policy shapes docs/configuration.md shows, in each format.
    let shapes: [(&str, Result<BalancerConfig, Error>, Policy); 6] = [
        (
            "toml name",
            from_toml("policy = \"round_robin\""),
            Policy::round_robin(),
        ),
        (
            "toml table",
            from_toml("[policy.maglev]\nbounded_loads = true"),
            Policy::maglev().bounded_loads().into(),
        ),
        (
            "yaml name",
            from_yaml("policy: round_robin"),
            Policy::round_robin(),
        ),
        (
            "yaml map",
            from_yaml("policy: { maglev: { bounded_loads: true } }"),
            Policy::maglev().bounded_loads().into(),
        ),
        (
            "json name",
            from_json(r#"{"policy": "round_robin"}"#),
            Policy::round_robin(),
        ),
        (
            "json map",
            from_json(r#"{"policy": {"maglev": {"bounded_loads": true}}}"#),
            Policy::maglev().bounded_loads().into(),
        ),
    ];
    for (what, config, policy) in shapes {
        let config = config.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            debug(&config.policy.as_ref().unwrap().to_policy().unwrap()),
            debug(&policy),
            "{what}"
        );
    }

    // Every key source the docs list.
    let keys = r#"
[policy.ring_hash]
key = ["session", { header = "x-user-id" }, { cookie = "JSESSIONID" }, { query = "user" }, "path"]
virtual_nodes = 100
load_factor = 1.5
fallback = { least_response_time = { decay = "5s", default_rtt = "30ms", failure_penalty = "1s", exact = true } }
"#;
    from_toml(keys).unwrap().build().unwrap();
}

#[test]
fn settings_left_out_are_the_builders_defaults() {
    let url = "http://127.0.0.1:8081";
    let built = |config: Result<BalancerConfig, Error>| debug(&config.unwrap().build().unwrap());
    let code = Balancer::builder().endpoint(url).build().unwrap();
    for config in [
        from_toml(&format!("endpoints = [\"{url}\"]")),
        from_yaml(&format!(
            "endpoints: [\"{url}\"]\noutlier: {{}}\nretry: {{}}\n"
        )),
        from_json(&format!(
            r#"{{"endpoints": [{{"url": "{url}"}}], "policy": "weighted_round_robin", "outlier": {{"enabled": true}}, "retry": {{"enabled": true, "budget": {{}}}}}}"#
        )),
    ] {
        assert_eq!(built(config), debug(&code));
    }
    let code = Balancer::builder()
        .endpoint(url)
        .policy(Policy::maglev())
        .outlier_detection(OutlierDetection::default())
        .retry(Retries::default())
        .build()
        .unwrap();
    assert_eq!(
        built(from_toml(&format!(
            "endpoints = [\"{url}\"]\n[policy.maglev]\n[outlier]\n[retry]\n"
        ))),
        debug(&code)
    );
    let code = Balancer::builder()
        .endpoint(url)
        .policy(Policy::least_response_time())
        .build()
        .unwrap();
    assert_eq!(
        built(from_yaml(&format!(
            "endpoints: [\"{url}\"]\npolicy: least_response_time\n"
        ))),
        debug(&code)
    );
}

// ---- each setting takes effect on real backends ----

#[tokio::test]
async fn a_policy_and_its_options_change_where_requests_go() {
    let servers = backends(3).await;
    let urls: Vec<String> = servers.iter().map(|s| s.uri()).collect();
    let endpoints = r#"endpoints = [{ url = "{0}", weight = 5 }, "{1}", "{2}"]"#;
    let build = |policy: &str| {
        let text = with_urls(&format!("{endpoints}\n{policy}"), &urls);
        from_toml(&text).unwrap().build().unwrap()
    };
    let counts = |a, b, c| -> BTreeMap<String, usize> {
        [("a".into(), a), ("b".into(), b), ("c".into(), c)].into()
    };
    // Left out: weighted round robin, 5:1:1 exactly.
    assert_eq!(spread(&build(""), 70).await, counts(50, 10, 10));
    // Plain round robin reads no weights.
    assert_eq!(
        spread(&build("policy = \"round_robin\""), 69).await,
        counts(23, 23, 23)
    );
    // A hashing policy's fallback decides where keyless requests go.
    let weighted = build("[policy.maglev]\nfallback = \"weighted_round_robin\"");
    assert_eq!(spread(&weighted, 70).await, counts(50, 10, 10));
    let plain = build("[policy.maglev]\nfallback = \"round_robin\"");
    assert_eq!(spread(&plain, 69).await, counts(23, 23, 23));

    // A key source: the same `user` query parameter, the same backend.
    let sticky = build("[policy.maglev]\nkey = [{ query = \"user\" }]");
    let client = client(&sticky);
    let mut homes = BTreeMap::new();
    for round in 0..3 {
        for user in 0..20 {
            let home = send(&client, &format!("/cart?user=u{user}")).await.unwrap();
            let first = homes.entry(user).or_insert_with(|| home.clone());
            assert_eq!(*first, home, "user u{user} moved in round {round}");
        }
    }
    let used: std::collections::BTreeSet<_> = homes.values().collect();
    assert!(used.len() > 1, "every user on one backend: {homes:?}");
}

/// Makes `server` answer `status` (plus its name) from now on.
async fn answer(server: &Server, name: &str, status: u16) {
    server.reset().await;
    Mock::given(any_request())
        .respond_with(ResponseTemplate::new(status).insert_header(BACKEND, name))
        .mount(server)
        .await;
}

#[tokio::test(start_paused = true)]
async fn outlier_settings_eject_as_configured() {
    // The paused clock stays where the test puts it while wiremock answers
    // (the balancer's sweeper has a timer set while "c" is out).
    let _clock = hold_clock();
    let servers = backends(3).await;
    answer(&servers[2], "c", 500).await;
    let urls: Vec<String> = servers.iter().map(|s| s.uri()).collect();
    let yaml = with_urls(
        r#"
endpoints: ["{0}", "{1}", "{2}"]
policy: round_robin
retry: { enabled: false }
outlier:
  consecutive_failures: 2
  base_ejection: 7s
  max_ejection: 1m
  max_ejection_percent: 50
"#,
        &urls,
    );
    let balancer = from_yaml(&yaml).unwrap().build().unwrap();
    let requests = client(&balancer);
    // Round robin: every third request reaches "c"; its second 500 ejects it.
    for _ in 0..6 {
        let _ = send(&requests, "/").await;
    }
    assert_eq!(received(&servers[2]).await, 2);
    assert!(balancer.stats().endpoint(&urls[2]).unwrap().ejected);
    for _ in 0..10 {
        assert_ne!(send(&requests, "/").await.unwrap(), "c");
    }
    // Out for base_ejection exactly.
    answer(&servers[2], "c", 200).await;
    tokio::time::advance(Duration::from_millis(6_999)).await;
    send(&requests, "/").await.unwrap();
    assert!(balancer.stats().endpoint(&urls[2]).unwrap().ejected);
    tokio::time::advance(Duration::from_millis(1)).await;
    let back = spread(&balancer, 9).await;
    assert_eq!(back.get("c"), Some(&3), "{back:?}");
    assert_settled(&balancer);

    // gateway_statuses_only: a 500 is no failure, nothing is ejected.
    let yaml = with_urls(
        "endpoints: [\"{0}\", \"{1}\", \"{2}\"]\npolicy: round_robin\nretry: { enabled: false }\noutlier: { consecutive_failures: 2, gateway_statuses_only: true, max_ejection_percent: 50 }\n",
        &urls,
    );
    answer(&servers[2], "c", 500).await;
    let balancer = from_yaml(&yaml).unwrap().build().unwrap();
    let requests = client(&balancer);
    for _ in 0..30 {
        let _ = send(&requests, "/").await;
    }
    assert!(!balancer.stats().endpoint(&urls[2]).unwrap().ejected);

    // enabled = false: nothing is ever ejected.
    let json = with_urls(
        r#"{"endpoints": ["{0}", "{1}", "{2}"], "policy": "round_robin", "retry": {"enabled": false}, "outlier": {"enabled": false}}"#,
        &urls,
    );
    let balancer = from_json(&json).unwrap().build().unwrap();
    let requests = client(&balancer);
    for _ in 0..60 {
        let _ = send(&requests, "/").await;
    }
    assert!(balancer.stats().endpoints.iter().all(|e| !e.ejected));
}

/// Answers 503 to `percent` of its requests, evenly spread (request `n`
/// fails when `⌊(n + 1) × p / 100⌋` steps up: never two in a row under 50%).
struct Spread {
    name: String,
    percent: u64,
    answered: std::sync::atomic::AtomicU64,
}

impl wiremock::Respond for Spread {
    fn respond(&self, _: &wiremock::Request) -> ResponseTemplate {
        let n = (self.answered).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let fails = (n + 1) * self.percent / 100 > n * self.percent / 100;
        ResponseTemplate::new(if fails { 503 } else { 200 })
            .insert_header(BACKEND, self.name.as_str())
    }
}

#[tokio::test(start_paused = true)]
async fn a_configured_success_rate_ejects_a_backend_failing_30_percent_within_two_intervals() {
    // The paused clock stays put while wiremock answers (the sweeper has
    // an interval timer pending).
    let _clock = hold_clock();
    let mut servers = Vec::new();
    for i in 0..10u64 {
        let server = Server::start().await;
        Mock::given(any_request())
            .respond_with(Spread {
                name: format!("s{i}"),
                percent: if i == 2 { 30 } else { 0 },
                answered: Default::default(),
            })
            .mount(&server)
            .await;
        servers.push(server);
    }
    let urls: Vec<String> = servers.iter().map(|s| s.uri()).collect();
    let list = (urls.iter().map(|u| format!("\"{u}\""))).collect::<Vec<_>>();
    // Success rate on; the consecutive-failure streak never reaches 5 here
    // (no two 503s in a row).
    let toml = format!(
        r#"
endpoints = [{}]
policy = "round_robin"
retry = {{ enabled = false }}

[outlier]
success_rate = {{ stdev_factor = 1.9, request_volume = 50, minimum_hosts = 5 }}
interval = "2s"
"#,
        list.join(", ")
    );
    let balancer = from_toml(&toml).unwrap().build().unwrap();
    let requests = client(&balancer);
    let bad = &urls[2];
    let mut intervals = 0;
    while !balancer.stats().endpoint(bad).unwrap().ejected {
        assert!(intervals < 2, "not ejected within two intervals");
        // 60 requests per backend: above request_volume.
        let answers = send_many(&requests, 600, 16).await;
        assert!(answers.iter().all(Result::is_ok), "every request answered");
        tokio::time::advance(Duration::from_secs(2)).await;
        tokio::task::yield_now().await;
        intervals += 1;
    }
    let stats = balancer.stats();
    let entry = stats.endpoint(bad).unwrap();
    assert_eq!(entry.ejected_by, Some(tower_lb::Detector::SuccessRate));
    assert_eq!(stats.ejections.active, 1, "only the bad one: {stats:?}");
    // Out: no request reaches it.
    let before = received(&servers[2]).await;
    let answers = send_many(&requests, 90, 16).await;
    assert!(answers
        .iter()
        .all(|a| a.as_deref().is_ok_and(|name| name != "s2")));
    assert_eq!(received(&servers[2]).await, before);
    assert_settled(&balancer);
    println!(
        "config success rate: 30% 503s among 10 backends ejected after {intervals} interval(s)"
    );
}

/// Attempts that reached `servers` (both answering 503) for 10 GETs
/// through a balancer with `retry` in its config.
async fn attempts(servers: &[Server], retry: &str) -> usize {
    for (server, name) in servers.iter().zip(["a", "b"]) {
        answer(server, name, 503).await;
    }
    let urls: Vec<String> = servers.iter().map(|s| s.uri()).collect();
    let text = with_urls(
        &format!("endpoints = [\"{{0}}\", \"{{1}}\"]\npolicy = \"round_robin\"\n[outlier]\nenabled = false\n{retry}"),
        &urls,
    );
    let balancer = from_toml(&text).unwrap().build().unwrap();
    let requests = client(&balancer);
    for _ in 0..10 {
        let response = requests.clone().oneshot(get("/")).await.unwrap();
        assert_eq!(response.status(), 503);
    }
    assert_settled(&balancer);
    let mut total = 0;
    for server in servers {
        total += received(server).await;
    }
    total
}

#[tokio::test]
async fn retry_settings_retry_as_configured() {
    let servers = backends(2).await;
    // Left out: a 503 is not retried.
    assert_eq!(attempts(&servers, "").await, 10);
    // idempotent_failures: a GET's 503 is, up to max_retries times.
    let retried = "[retry]\nidempotent_failures = true\nmax_retries = 1";
    assert_eq!(attempts(&servers, retried).await, 20);
    // A budget of nothing: no retry at all.
    let no_budget =
        "[retry]\nidempotent_failures = true\nbudget = { percent = 0, reserve_per_second = 0 }";
    assert_eq!(attempts(&servers, no_budget).await, 10);
}

#[test]
fn labels_and_weights_show_in_stats_from_every_format() {
    let toml = r#"endpoints = [{ url = "http://127.0.0.1:8081", weight = 3, labels = { zone = "eu-1", "ключ" = "значение ☃" } }, { url = "http://127.0.0.1:8082", weight = 0 }, "http://127.0.0.1:8083"]"#;
    let yaml = "endpoints:\n  - url: http://127.0.0.1:8081\n    weight: 3\n    labels: { zone: eu-1, ключ: значение ☃ }\n  - { url: http://127.0.0.1:8082, weight: 0 }\n  - http://127.0.0.1:8083\n";
    let json = r#"{"endpoints": [{"url": "http://127.0.0.1:8081", "weight": 3, "labels": {"zone": "eu-1", "ключ": "значение ☃"}}, {"url": "http://127.0.0.1:8082", "weight": 0}, "http://127.0.0.1:8083"]}"#;
    for config in [from_toml(toml), from_yaml(yaml), from_json(json)] {
        let stats = config.unwrap().build().unwrap().stats();
        let first = stats.endpoint("http://127.0.0.1:8081").unwrap();
        assert_eq!(first.weight, 3);
        assert_eq!(first.labels.get("zone"), Some("eu-1"));
        assert_eq!(first.labels.get("ключ"), Some("значение ☃"));
        assert_eq!(stats.endpoint("http://127.0.0.1:8082").unwrap().weight, 0);
        assert_eq!(stats.endpoint("http://127.0.0.1:8083").unwrap().weight, 1);
    }
}

#[cfg(feature = "dns")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yaml_dns_service_follows_its_srv_records_and_weights() {
    use support::dns_server::DnsServer;

    let dns = DnsServer::start("test.").await;
    let servers = backends(2).await;
    let (pa, pb) = (servers[0].address().port(), servers[1].address().port());
    dns.set_addresses("host.test.", &[std::net::Ipv4Addr::LOCALHOST], 1)
        .await;
    dns.set_service(
        "_http._tcp.api.test.",
        &[(0, 3, pa, "host.test."), (0, 1, pb, "host.test.")],
        1,
    )
    .await;
    let yaml = format!(
        "discovery:\n  dns:\n    service: _http._tcp.api.test.\n    ip: ipv4\n    name_server: \"{}\"\n    refresh_min: 200ms\n    refresh_max: 2s\n    query_timeout: 500ms\n    query_retries: 1\n",
        dns.addr
    );
    let (balancer, discovery) = from_yaml(&yaml).unwrap().build_with_discovery().unwrap();
    discovery
        .expect("a discovery handle")
        .ready_within(Duration::from_secs(5))
        .await
        .unwrap();
    let stats = balancer.stats();
    let weight = |port: u16| {
        stats
            .endpoint(format!("http://127.0.0.1:{port}"))
            .map(|e| e.weight)
    };
    assert_eq!((weight(pa), weight(pb)), (Some(3), Some(1)));
    let seen = spread(&balancer, 8).await;
    assert_eq!(seen, [("a".into(), 6), ("b".into(), 2)].into());
}

/// Waits on the wall clock (the paused one held still) until `check`
/// holds, for at most 10 s.
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let started = std::time::Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: not within 10 s"
        );
        tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(2)))
            .await
            .unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_configured_hedge_delay_sends_the_slow_requests_hedge_to_another_backend() {
    // The paused clock moves only when the test advances it: the hedge's
    // 20 ms are the test's, while "a" holds its answer for 30 s of the
    // wall clock (wiremock's own runtime).
    let _clock = hold_clock();
    let slow = backend(
        "a",
        ResponseTemplate::new(200).set_delay(Duration::from_secs(30)),
    )
    .await;
    let fast = backend("b", ResponseTemplate::new(200)).await;
    let urls = [slow.uri(), fast.uri()];
    let config = |hedge: &str| {
        let text = format!(
            "endpoints = [\"{{0}}\", \"{{1}}\"]\npolicy = \"round_robin\"\n[hedge]\n{hedge}"
        );
        from_toml(&with_urls(&text, &urls)).unwrap()
    };
    let balancer = config("delay = \"20ms\"").build().unwrap();
    let requests = client(&balancer);
    let started = tokio::time::Instant::now();
    let answer = tokio::spawn({
        let requests = requests.clone();
        async move { send(&requests, "/search").await }
    });
    // Round robin: the first attempt goes to "a", which holds it.
    until("the first attempt reached a", || async {
        received(&slow).await == 1
    })
    .await;
    tokio::time::advance(Duration::from_millis(19)).await;
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
    tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(50)))
        .await
        .unwrap();
    assert_eq!(received(&fast).await, 0, "no hedge before the delay");
    assert!(!answer.is_finished());
    // At 20 ms the hedge goes to "b", whose answer wins.
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(answer.await.unwrap().unwrap(), "b");
    assert_eq!(started.elapsed(), Duration::from_millis(20));
    assert_eq!((received(&slow).await, received(&fast).await), (1, 1));
    let extra = balancer.stats().extra;
    assert_eq!((extra.hedges, extra.hedges_won), (1, 1), "{extra:?}");
    assert_eq!(balancer.stats().endpoint(&urls[0]).unwrap().cancelled, 1);
    assert_settled(&balancer);

    // on_request: a request that does not ask is never hedged.
    let balancer = config("delay = \"20ms\"\non_request = true")
        .build()
        .unwrap();
    let requests = client(&balancer);
    let answer = tokio::spawn({
        let requests = requests.clone();
        async move { send(&requests, "/search").await }
    });
    until("the request reached a", || async {
        received(&slow).await == 2
    })
    .await;
    tokio::time::advance(Duration::from_secs(1)).await;
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
    tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(50)))
        .await
        .unwrap();
    assert_eq!(received(&fast).await, 1, "not hedged");
    assert_eq!(balancer.stats().extra.hedges, 0);
    answer.abort();
    let _ = answer.await;
    assert_settled(&balancer);
}

#[tokio::test(start_paused = true)]
async fn an_overload_sections_penalty_holds_a_429_endpoint_that_long() {
    let _clock = hold_clock();
    let servers = backends(3).await;
    answer(&servers[0], "a", 429).await;
    let urls: Vec<String> = servers.iter().map(|s| s.uri()).collect();
    let build = |overload: &str| {
        let text = format!(
            "endpoints = [\"{{0}}\", \"{{1}}\", \"{{2}}\"]\npolicy = \"round_robin\"\n[overload]\n{overload}"
        );
        from_toml(&with_urls(&text, &urls))
            .unwrap()
            .build()
            .unwrap()
    };
    let balancer = build("default_penalty = \"3s\"\nmax_hold = \"1m\"");
    let requests = client(&balancer);
    // Round robin: the first request reaches "a"; its 429 names no time.
    let response = requests.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(response.status(), 429);
    let held_at = tokio::time::Instant::now();
    let stats = balancer.stats().endpoint(&urls[0]).unwrap();
    assert_eq!(
        stats.held_off_until,
        Some((held_at + Duration::from_secs(3)).into_std())
    );
    assert!(!stats.ejected);
    answer(&servers[0], "a", 200).await;
    for _ in 0..10 {
        assert_ne!(send(&requests, "/").await.unwrap(), "a");
    }
    tokio::time::advance(Duration::from_millis(2_999)).await;
    for _ in 0..10 {
        assert_ne!(send(&requests, "/").await.unwrap(), "a");
    }
    // (Counted since `answer` reset it, after the 429.)
    assert_eq!(received(&servers[0]).await, 0, "held off for 3 s");
    tokio::time::advance(Duration::from_millis(1)).await;
    let back = spread(&balancer, 9).await;
    assert_eq!(back.get("a"), Some(&3), "{back:?}");
    assert_settled(&balancer);

    // max_hold caps the time the answer names.
    servers[0].reset().await;
    Mock::given(any_request())
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "600")
                .insert_header(BACKEND, "a"),
        )
        .mount(&servers[0])
        .await;
    let balancer = build("max_hold = \"1m\"");
    let response = client(&balancer).oneshot(get("/")).await.unwrap();
    assert_eq!(response.status(), 429);
    let now = tokio::time::Instant::now();
    let stats = balancer.stats().endpoint(&urls[0]).unwrap();
    assert_eq!(
        stats.held_off_until,
        Some((now + Duration::from_secs(60)).into_std())
    );

    // enabled = false: a 429 holds nothing.
    let balancer = build("enabled = false");
    let seen = spread(&balancer, 9).await;
    assert_eq!(seen.get("a"), Some(&3), "{seen:?}");
    assert_eq!(
        balancer.stats().endpoint(&urls[0]).unwrap().held_off_until,
        None
    );
}

/// Mounts `name`'s answers: `health` on /healthz, 200 elsewhere.
async fn health(server: &Server, name: &str, health: u16) {
    server.reset().await;
    Mock::given(wiremock::matchers::path("/healthz"))
        .respond_with(ResponseTemplate::new(health))
        .with_priority(1)
        .mount(server)
        .await;
    Mock::given(any_request())
        .respond_with(ResponseTemplate::new(200).insert_header(BACKEND, name))
        .mount(server)
        .await;
}

/// Moves the paused clock by `ms`, then waits until every check sent is
/// answered and counted.
async fn step(balancer: &Balancer, ms: u64) {
    tokio::time::advance(Duration::from_millis(ms)).await;
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    until("checks answered", || async {
        (balancer.stats().endpoints.iter())
            .all(|e| e.checks.passed + e.checks.failed == e.checks.sent)
    })
    .await;
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn health_checks_from_config_take_a_backend_with_a_failing_health_path_out() {
    let _clock = hold_clock();
    let mut servers = Vec::new();
    for i in 0..3 {
        let server = Server::start().await;
        health(&server, &name(i), 200).await;
        servers.push(server);
    }
    let urls: Vec<String> = servers.iter().map(|s| s.uri()).collect();
    let text = with_urls(
        r#"
endpoints = ["{0}", "{1}", "{2}"]
policy = "round_robin"
retry = { enabled = false }

[health_checks]
path = "/healthz"
expected_statuses = ["200-299"]
interval = "1s"
interval_jitter = "0s"
timeout = "500ms"
unhealthy_threshold = 2
"#,
        &urls,
    );
    let config = from_toml(&text).unwrap();
    let balancer = config.build().unwrap();
    let inner = tower_lb::HttpToReqwest::new(plain_reqwest());
    // As docs/configuration.md shows it.
    if let Some(check) = config.health_checks().unwrap() {
        balancer
            .health_checks::<_, reqwest::Body>(check, inner.clone())
            .unwrap();
    }
    step(&balancer, 100).await;
    let in_all = |b: &Balancer| b.stats().endpoints.iter().all(|e| !e.ejected);
    assert!(
        in_all(&balancer),
        "in after the first checks: {:?}",
        balancer.stats()
    );

    // "b"'s health path fails: out after two failed checks.
    health(&servers[1], "b", 503).await;
    let mut intervals = 0;
    while !balancer.stats().endpoint(&urls[1]).unwrap().ejected {
        step(&balancer, 1_000).await;
        intervals += 1;
        assert!(
            intervals <= 3,
            "out within the unhealthy threshold's checks"
        );
    }
    let stats = balancer.stats();
    let b = stats.endpoint(&urls[1]).unwrap();
    assert_eq!(b.ejected_by, Some(tower_lb::Detector::ActiveCheck));
    assert!(b.checks.failing && b.checks.failed >= 2, "{:?}", b.checks);
    let seen = spread(&balancer, 30).await;
    assert_eq!(seen.get("b"), None, "{seen:?}");
    let user_requests = (servers[1].received_requests().await.unwrap())
        .iter()
        .filter(|r| r.url.path() != "/healthz")
        .count();
    assert_eq!(user_requests, 0);
    assert_settled(&balancer);
}

// ---- errors: the path, the reason as documented ----

#[test]
fn a_yaml_unknown_field_reads_as_the_docs_show() {
    // docs/configuration.md: `outlier.base_ejection_time: unknown field
    // `base_ejection_time`, expected one of ...` whatever the format.
    let cases = [
        (
            "outlier:\n  base_ejection_time: 30s\n",
            "outlier.base_ejection_time: unknown field `base_ejection_time`, expected one of",
        ),
        (
            "endpoints:\n  - http://127.0.0.1:1\n  - { url: http://127.0.0.1:2, wieght: 2 }\n",
            "endpoints[1].wieght: unknown field `wieght`, expected one of",
        ),
        (
            "retry:\n  budget:\n    x: 1\n",
            "retry.budget.x: unknown field `x`, expected one of",
        ),
        (
            "discovery:\n  dns:\n    nmae: x\n",
            "discovery.dns.nmae: unknown field `nmae`, expected one of",
        ),
        (
            "policy:\n  maglev:\n    fallback:\n      least_response_time: { x: 1 }\n",
            "policy.maglev.fallback.least_response_time.x: unknown field `x`, expected one of",
        ),
        (
            "color: blue\n",
            "color: unknown field `color`, expected one of",
        ),
    ];
    for (yaml, start) in cases {
        let shown = from_yaml(yaml).unwrap_err().to_string();
        assert!(
            shown.starts_with(start),
            "{yaml}\n  shown:    {shown}\n  expected: {start} ..."
        );
    }
}

#[test]
fn nested_mistakes_name_their_place_in_every_format() {
    let toml = r#"endpoints = ["http://127.0.0.1:1", "http://127.0.0.1:2", { url = "http://127.0.0.1:3", weight = 100000 }]"#;
    let yaml = "endpoints:\n  - http://127.0.0.1:1\n  - http://127.0.0.1:2\n  - { url: http://127.0.0.1:3, weight: 100000 }\n";
    let json = r#"{"endpoints": ["http://127.0.0.1:1", "http://127.0.0.1:2", {"url": "http://127.0.0.1:3", "weight": 100000}]}"#;
    for config in [from_toml(toml), from_yaml(yaml), from_json(json)] {
        assert_eq!(
            config.unwrap().build().unwrap_err().to_string(),
            "endpoints[2].weight: weight 100000 of endpoint http://127.0.0.1:3 is above the maximum of 10000"
        );
    }
    let cases = [
        (r#"{"endpoints": ["http://127.0.0.1:1", {"url": "http://127.0.0.1:2", "weight": 4294967296}]}"#, "endpoints[1].weight: invalid value: integer `4294967296`, expected u32"),
        (r#"{"endpoints": [{"url": "http://127.0.0.1:2", "weight": 1.5}]}"#, "endpoints[0].weight: invalid type: floating point `1.5`, expected u32"),
        (r#"{"endpoints": ["http://127.0.0.1:1", "http://127.0.0.1:1"]}"#, "endpoints[1].url: endpoint http://127.0.0.1:1 is listed twice"),
        (r#"{"endpoints": ["http://127.0.0.1:1", {"url": "http://127.0.0.1:2", "labels": {"a": 1}}]}"#, "endpoints[1].labels.a: invalid type: integer `1`, expected a string"),
        (r#"{"policy": {"maglev": {}, "ring_hash": {}}}"#, "policy: one name with its options, not two (`maglev` and `ring_hash`)"),
        (r#"{"outlier": {"max_ejection_percent": 100.1}}"#, "outlier.max_ejection_percent: max_ejection_percent must be 0 to 100 percent, not 100.1%"),
        (r#"{"outlier": {"panic_threshold": -1}}"#, "outlier.panic_threshold: panic_threshold must be 0 to 100 percent, not -1%"),
        (r#"{"outlier": {"interval": "0s"}}"#, "outlier.interval: the interval and the base ejection time must be above zero"),
        (r#"{"outlier": {"base_ejection": "-1s"}}"#, r#"outlier.base_ejection: invalid duration "-1s" (expected a number and a unit, as "250ms", "30s" or "1m30s")"#),
        (r#"{"outlier": {"base_ejection": "18446744073709551616s"}}"#, r#"outlier.base_ejection: invalid duration "18446744073709551616s" (expected a number and a unit, as "250ms", "30s" or "1m30s")"#),
        (r#"{"policy": {"ring_hash": {"key": ["session", {"header": "ü"}]}}}"#, r#"policy.ring_hash.key[1].header: "ü" is not a valid header name"#),
    ];
    for (json, message) in cases {
        let shown = match from_json(json) {
            Ok(config) => config.build().unwrap_err().to_string(),
            Err(error) => error.to_string(),
        };
        let shown = shown
            .split(" at line ")
            .next()
            .unwrap_or_default()
            .to_owned();
        assert_eq!(shown, message, "{json}");
    }
}

#[test]
fn extreme_durations_build_and_serve_without_a_panic() {
    // The largest duration text reads; every duration setting takes it.
    let max = "18446744073709551615s";
    let text = format!(
        r#"
endpoints = ["http://127.0.0.1:1"]
[outlier]
interval = "{max}"
max_ejection = "{max}"
base_ejection = "{max}"
max_ejection_jitter = "{max}"
[policy.least_response_time]
decay = "{max}"
default_rtt = "{max}"
failure_penalty = "{max}"
"#
    );
    let config = from_toml(&text).unwrap();
    config.build().unwrap();
    // ... and writes back to text that reads the same.
    let back = from_toml(&toml::to_string(&config).unwrap()).unwrap();
    assert_eq!(back, config);
}

// ---- never a panic, always a path ----

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{json, Value};
    let names = prop::sample::select(vec![
        "seed",
        "endpoints",
        "url",
        "weight",
        "labels",
        "policy",
        "maglev",
        "ring_hash",
        "least_response_time",
        "round_robin",
        "key",
        "header",
        "session",
        "fallback",
        "table_size",
        "virtual_nodes",
        "load_factor",
        "bounded_loads",
        "outlier",
        "enabled",
        "consecutive_failures",
        "interval",
        "base_ejection",
        "max_ejection",
        "max_ejection_percent",
        "panic_threshold",
        "failure_percentage",
        "percent",
        "min_requests",
        "minimum_hosts",
        "success_rate",
        "stdev_factor",
        "request_volume",
        "enforcing",
        "preset",
        "split_local_origin_errors",
        "consecutive_local_origin_failures",
        "max_ejection_jitter",
        "always_eject_one",
        "retry",
        "max_retries",
        "budget",
        "window",
        "discovery",
        "dns",
        "etcd",
        "name",
        "port",
        "service",
        "prefix",
        "hedge",
        "delay",
        "percentile",
        "max_attempts",
        "on_request",
        "overload",
        "default_penalty",
        "max_hold",
        "health_checks",
        "path",
        "method",
        "expected_statuses",
        "timeout",
        "interval_jitter",
        "unhealthy_threshold",
        "healthy_threshold",
        "concurrency",
        "grpc_service",
        "x",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(vec![
            "30s",
            "0s",
            "-1s",
            "1.5s",
            "18446744073709551615s",
            "3x",
            "",
            "http://127.0.0.1:1",
            "ftp://x",
            "maglev",
            "round_robin",
            "session",
            "path",
            "ü",
            "weighted_round_robin",
            "envoy",
            "/healthz",
            "GET",
            "200-299",
            "2xx",
        ])
        .prop_map(|s| json!(s)),
        "\\PC{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::vec((names.clone(), inner), 0..4).prop_map(|entries| {
                Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect(),
                )
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_json_value_is_a_config_or_an_error_with_a_path(value in json_value()) {
        let outcome = std::panic::catch_unwind(|| {
            BalancerConfig::from_deserializer(value.clone()).and_then(|config| config.build())
        });
        let Ok(result) = outcome else {
            return Err(TestCaseError::fail(format!("panicked on {value}")));
        };
        match result {
            Ok(_) | Err(Error::NoRuntime) => {}
            Err(Error::InvalidConfig { path, reason, .. }) => {
                prop_assert!(!path.is_empty(), "no path: {reason} for {value}");
                prop_assert!(!reason.is_empty(), "no reason at {path} for {value}");
            }
            Err(other) => prop_assert!(false, "not InvalidConfig: {other:?} for {value}"),
        }
    }
}

#[test]
fn a_list_where_a_table_belongs_is_an_error_in_every_format() {
    // docs/configuration.md: `outlier`, `retry`, `budget`, a policy's
    // options... are tables; JSON and TOML lists must not fill their
    // fields by position (`[true, 3]` as enabled = true,
    // consecutive_failures = 3), as YAML already refuses.
    let cases = [
        (from_json(r#"{"outlier": [true, 3]}"#), "outlier"),
        (from_json(r#"{"outlier": []}"#), "outlier"),
        (
            from_json(r#"{"outlier": {"failure_percentage": [50, 20]}}"#),
            "outlier.failure_percentage",
        ),
        (from_json(r#"{"retry": [true]}"#), "retry"),
        (
            from_json(r#"{"retry": {"budget": ["10s", 20]}}"#),
            "retry.budget",
        ),
        (
            from_json(r#"{"policy": {"maglev": [["session"]]}}"#),
            "policy.maglev",
        ),
        (
            from_json(r#"{"policy": {"maglev": {"fallback": {"least_response_time": ["5s"]}}}}"#),
            "policy.maglev.fallback.least_response_time",
        ),
        (
            from_json(r#"{"discovery": [{"name": "x", "port": 1}]}"#),
            "discovery",
        ),
        (
            from_json(r#"{"discovery": {"etcd": [["http://127.0.0.1:2379"], "/a/"]}}"#),
            "discovery.etcd",
        ),
        (from_json(r#"{"hedge": ["20ms"]}"#), "hedge"),
        (from_json(r#"{"overload": [false]}"#), "overload"),
        (
            from_json(r#"{"health_checks": ["/healthz"]}"#),
            "health_checks",
        ),
        (from_json("[7, []]"), "."),
        (from_toml("outlier = [true, 3]"), "outlier"),
        (from_yaml("outlier: [true, 3]"), "outlier"),
    ];
    for (config, place) in cases {
        match config {
            Err(Error::InvalidConfig { path, reason, .. }) => {
                assert_eq!(path, place, "{reason}");
                assert!(
                    reason.contains("invalid type: sequence"),
                    "{path}: {reason}"
                );
            }
            other => panic!("{place}: a list read as a table: {other:?}"),
        }
    }
    // A YAML table left empty is still its defaults.
    let yaml = from_yaml("policy:\n  maglev:\noutlier:\n").unwrap();
    assert_eq!(yaml.policy, from_toml("[policy.maglev]").unwrap().policy);
}
