//! A balancer from a configuration file (feature `serde`): the example file
//! builds the same balancer as the same settings in code, every format reads
//! the same config, configs round-trip, and each kind of mistake is reported
//! at its field with its reason.
#![cfg(feature = "serde")]

use crate::support;

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use support::*;
use tower::ServiceExt;
use tower_lb::{
    ActiveHealthCheck, HealthCheckConfig, HedgeConfig, Hedging, Overload, OverloadConfig,
    StatusRange,
};
use tower_lb::{
    Balancer, BalancerConfig, Detector, DiscoveryConfig, DnsConfig, EndpointConfig,
    EnforcingConfig, Error, EtcdConfig, FailurePercentage, FailurePercentageConfig, FallbackConfig,
    HashConfig, IpFamily, KeySourceConfig, LeastTimeConfig, OutlierConfig, OutlierDetection,
    OutlierPreset, Policy, PolicyConfig, RequestKey, Retries, RetryBudgetConfig, RetryConfig,
    SlowStart, SlowStartConfig, SuccessRate, SuccessRateConfig,
};

const EXAMPLE: &str = include_str!("../examples/tower-lb.toml");

fn from_toml(text: &str) -> Result<BalancerConfig, Error> {
    let document = toml::Deserializer::parse(text).expect("TOML syntax");
    BalancerConfig::from_deserializer(document)
}

/// The example file, read.
fn example() -> BalancerConfig {
    from_toml(EXAMPLE).expect("the example file reads")
}

/// The example file's settings, written in code, over `urls`.
fn example_in_code(urls: &[String]) -> Balancer {
    Balancer::builder()
        .seed(7)
        .endpoint(
            tower_lb::Endpoint::new(&urls[0])
                .with_weight(5)
                .with_label("zone", "eu-west-1a"),
        )
        .endpoint(tower_lb::Endpoint::new(&urls[1]).with_label("zone", "eu-west-1b"))
        .endpoint(&urls[2])
        .policy(example_policy())
        .outlier_detection(example_outlier())
        .retry(example_retries())
        .hedge(example_hedging())
        .overload(example_overload())
        .build()
        .expect("the example's settings build")
}

fn example_hedging() -> Hedging {
    Hedging::after(Duration::from_millis(50))
        .max_attempts(2)
        .on_request()
}

fn example_overload() -> Overload {
    Overload::default()
        .default_penalty(Duration::from_secs(2))
        .max_hold(Duration::from_secs(60))
}

fn example_check() -> ActiveHealthCheck {
    ActiveHealthCheck::new("/healthz")
        .method(http::Method::GET)
        .expected_statuses([200..=200, 204..=206])
        .interval(Duration::from_secs(5))
        .interval_jitter(Duration::from_millis(500))
        .timeout(Duration::from_secs(1))
        .unhealthy_threshold(3)
        .healthy_threshold(2)
        .concurrency(4)
}

fn example_policy() -> Policy {
    Policy::maglev()
        .key(RequestKey::session().or(RequestKey::header("x-user-id")))
        .bounded_loads()
        .fallback(Policy::weighted_round_robin())
        .into()
}

fn example_outlier() -> OutlierDetection {
    OutlierDetection::default()
        .consecutive_failures(3)
        .consecutive_gateway_failures(2)
        .split_local_origin_errors(true)
        .consecutive_local_origin_failures(4)
        .success_rate(
            SuccessRate::default()
                .stdev_factor(1.9)
                .request_volume(100)
                .minimum_hosts(5),
        )
        .failure_percentage_with(
            FailurePercentage::default()
                .threshold(50)
                .request_volume(20)
                .minimum_hosts(3),
        )
        .enforcing(Detector::SuccessRate, 100)
        .enforcing(Detector::FailurePercentage, 50)
        .interval(Duration::from_secs(10))
        .base_ejection_time(Duration::from_secs(15))
        .max_ejection_time(Duration::from_secs(120))
        .max_ejection_time_jitter(Duration::from_secs(1))
        .max_ejection_percent(34)
        .always_eject_one(true)
        .panic_threshold(50)
}

fn example_retries() -> Retries {
    Retries::default()
        .idempotent_failures()
        .max_retries(2)
        .budget(Duration::from_secs(10), 20, 5)
}

/// Which backend answered how many of: 70 requests without a key, then
/// one each for users u0..u59.
async fn traffic(balancer: &Balancer) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let client = client(balancer);
    let mut keyless = BTreeMap::new();
    for _ in 0..70 {
        *keyless
            .entry(send(&client, "/").await.unwrap())
            .or_default() += 1;
    }
    let mut keyed = BTreeMap::new();
    for user in 0..60 {
        let mut request = get("/cart");
        request
            .headers_mut()
            .insert("x-user-id", format!("u{user}").parse().unwrap());
        let response = client.clone().oneshot(request).await.unwrap();
        *keyed.entry(backend_name(&response)).or_default() += 1;
    }
    (keyless, keyed)
}

#[tokio::test]
async fn the_example_file_builds_the_same_balancer_as_code() {
    let servers = backends(3).await;
    let urls: Vec<String> = servers.iter().map(|s| s.uri()).collect();
    let mut config = example();
    // The file names fixed ports; the test's backends have their own.
    for (endpoint, url) in config.endpoints.iter_mut().zip(&urls) {
        endpoint.url = url.clone();
    }
    let from_file = config.build().unwrap();
    let in_code = example_in_code(&urls);

    // The settings: each part, and the balancer, print the same.
    let debug = |value: &dyn std::fmt::Debug| format!("{value:?}");
    assert_eq!(debug(&from_file), debug(&in_code));
    assert_eq!(
        debug(&config.policy.as_ref().unwrap().to_policy().unwrap()),
        debug(&example_policy())
    );
    assert_eq!(
        debug(
            &config
                .outlier
                .as_ref()
                .unwrap()
                .to_outlier_detection()
                .unwrap()
        ),
        debug(&example_outlier())
    );
    assert_eq!(
        debug(&config.retry.as_ref().unwrap().to_retries().unwrap()),
        debug(&example_retries())
    );
    assert_eq!(
        debug(&config.hedge.as_ref().unwrap().to_hedging().unwrap()),
        debug(&example_hedging())
    );
    assert_eq!(
        config.overload.as_ref().unwrap().to_overload().unwrap(),
        example_overload()
    );
    assert_eq!(
        debug(&config.health_checks().unwrap().expect("a check")),
        debug(&example_check())
    );
    let endpoints = |b: &Balancer| {
        let mut seen: Vec<_> = (b.stats().endpoints.iter())
            .map(|e| (e.url.clone(), e.weight, debug(&e.labels)))
            .collect();
        seen.sort();
        seen
    };
    assert_eq!(endpoints(&from_file), endpoints(&in_code));

    // The behaviour: the same backends get the same requests.
    let file_traffic = traffic(&from_file).await;
    let code_traffic = traffic(&in_code).await;
    assert_eq!(file_traffic, code_traffic);
    // Keyless requests go round by weight, 5:1:1, exactly.
    let expected: BTreeMap<String, usize> =
        [("a".into(), 50), ("b".into(), 10), ("c".into(), 10)].into();
    assert_eq!(file_traffic.0, expected);
    assert_eq!(file_traffic.1.values().sum::<usize>(), 60);
    assert_eq!(
        file_traffic.1.len(),
        3,
        "keys spread over every backend: {:?}",
        file_traffic.1
    );
    println!("keyless {:?}, keyed {:?}", file_traffic.0, file_traffic.1);
}

#[test]
fn the_example_reads_the_same_from_toml_yaml_and_json() {
    let config = example();
    let json = serde_json::to_string_pretty(&config).unwrap();
    let yaml = serde_norway::to_string(&config).unwrap();
    let from_json =
        BalancerConfig::from_deserializer(&mut serde_json::Deserializer::from_str(&json));
    let from_yaml = BalancerConfig::from_deserializer(serde_norway::Deserializer::from_str(&yaml));
    assert_eq!(from_json.unwrap(), config, "{json}");
    assert_eq!(from_yaml.unwrap(), config, "{yaml}");

    // The same settings as written by hand in each format.
    let yaml = r#"
seed: 7
endpoints:
  - url: http://127.0.0.1:8081
    weight: 5
    labels: { zone: eu-west-1a }
  - url: http://127.0.0.1:8082
    labels: { zone: eu-west-1b }
  - http://127.0.0.1:8083
policy:
  maglev:
    key: [session, { header: x-user-id }]
    bounded_loads: true
    fallback: weighted_round_robin
outlier:
  consecutive_failures: 3
  consecutive_gateway_failures: 2
  split_local_origin_errors: true
  consecutive_local_origin_failures: 4
  success_rate: { stdev_factor: 1.9, request_volume: 100, minimum_hosts: 5 }
  failure_percentage: { percent: 50, min_requests: 20, minimum_hosts: 3 }
  enforcing: { success_rate: 100, failure_percentage: 50 }
  interval: 10s
  base_ejection: 15s
  max_ejection: 2m
  max_ejection_jitter: 1s
  max_ejection_percent: 34
  always_eject_one: true
  panic_threshold: 50
retry:
  idempotent_failures: true
  max_retries: 2
  budget: { window: 10s, percent: 20, reserve_per_second: 5 }
hedge: { delay: 50ms, max_attempts: 2, on_request: true }
overload: { default_penalty: 2s, max_hold: 1m }
health_checks:
  path: /healthz
  method: GET
  expected_statuses: [200, 204-206]
  interval: 5s
  interval_jitter: 500ms
  timeout: 1s
  unhealthy_threshold: 3
  healthy_threshold: 2
  concurrency: 4
"#;
    let from_yaml =
        BalancerConfig::from_deserializer(serde_norway::Deserializer::from_str(yaml)).unwrap();
    assert_eq!(from_yaml, config);
    let json = serde_json::json!({
        "seed": 7,
        "endpoints": [
            { "url": "http://127.0.0.1:8081", "weight": 5, "labels": { "zone": "eu-west-1a" } },
            { "url": "http://127.0.0.1:8082", "labels": { "zone": "eu-west-1b" } },
            "http://127.0.0.1:8083"
        ],
        "policy": { "maglev": {
            "key": ["session", { "header": "x-user-id" }],
            "bounded_loads": true,
            "fallback": "weighted_round_robin"
        } },
        "outlier": {
            "consecutive_failures": 3, "consecutive_gateway_failures": 2,
            "split_local_origin_errors": true, "consecutive_local_origin_failures": 4,
            "success_rate": { "stdev_factor": 1.9, "request_volume": 100, "minimum_hosts": 5 },
            "failure_percentage": { "percent": 50, "min_requests": 20, "minimum_hosts": 3 },
            "enforcing": { "success_rate": 100, "failure_percentage": 50 },
            "interval": "10s", "base_ejection": "15s", "max_ejection": "2m",
            "max_ejection_jitter": "1s", "max_ejection_percent": 34,
            "always_eject_one": true, "panic_threshold": 50
        },
        "retry": {
            "idempotent_failures": true, "max_retries": 2,
            "budget": { "window": "10s", "percent": 20, "reserve_per_second": 5 }
        },
        "hedge": { "delay": "50ms", "max_attempts": 2, "on_request": true },
        "overload": { "default_penalty": "2s", "max_hold": "1m" },
        "health_checks": {
            "path": "/healthz", "method": "GET", "expected_statuses": [200, "204-206"],
            "interval": "5s", "interval_jitter": "500ms", "timeout": "1s",
            "unhealthy_threshold": 3, "healthy_threshold": 2, "concurrency": 4
        }
    });
    assert_eq!(BalancerConfig::from_deserializer(json).unwrap(), config);
}

/// The error a JSON config gives, as shown.
fn json_error(json: serde_json::Value) -> String {
    match BalancerConfig::from_deserializer(json).and_then(|config| config.build()) {
        Ok(_) => panic!("the config was accepted"),
        Err(error) => {
            assert!(matches!(error, Error::InvalidConfig { .. }), "{error:?}");
            error.to_string()
        }
    }
}

#[test]
fn each_kind_of_mistake_names_its_field_and_reason() {
    use serde_json::json;
    let url = "http://127.0.0.1:8081";
    let cases = [
        // Read by serde: the format's own words, at the path.
        (
            json!({ "outlier": { "base_ejection": "3x" } }),
            r#"outlier.base_ejection: invalid duration "3x" (expected a number and a unit, as "250ms", "30s" or "1m30s")"#,
        ),
        (
            json!({ "retry": { "budget": { "window": 10 } } }),
            r#"retry.budget.window: invalid type: integer `10`, expected a duration: a number and a unit, as "250ms", "30s" or "1m30s""#,
        ),
        (
            json!({ "outlier": { "base_ejection_time": "30s" } }),
            "outlier.base_ejection_time: unknown field `base_ejection_time`, expected one of `enabled`, `preset`, `consecutive_failures`, `consecutive_gateway_failures`, `consecutive_local_origin_failures`, `split_local_origin_errors`, `success_rate`, `failure_percentage`, `enforcing`, `interval`, `base_ejection`, `max_ejection`, `max_ejection_jitter`, `max_ejection_percent`, `always_eject_one`, `panic_threshold`, `gateway_statuses_only`",
        ),
        (
            json!({ "outlier": { "enforcing": { "consecutive_5xx": 50, "success_rates": 100 } } }),
            "outlier.enforcing.success_rates: unknown field `success_rates`, expected one of `consecutive_5xx`, `consecutive_failures`, `consecutive_gateway_failure`, `consecutive_gateway_failures`, `consecutive_local_origin_failure`, `consecutive_local_origin_failures`, `success_rate`, `failure_percentage`, `local_origin_success_rate`, `success_rate_local_origin`, `failure_percentage_local_origin`, `local_origin_failure_percentage`",
        ),
        (
            json!({ "outlier": { "preset": "istio" } }),
            "outlier.preset: unknown variant `istio`, expected `envoy`",
        ),
        (
            json!({ "outlier": { "success_rate": { "stdev_factor": 1.9, "min_requests": 20 } } }),
            "outlier.success_rate.min_requests: unknown field `min_requests`, expected one of `stdev_factor`, `request_volume`, `minimum_hosts`",
        ),
        (
            json!({ "outlier": { "failure_percentage": { "minimum_hosts": -1 } } }),
            "outlier.failure_percentage.minimum_hosts: invalid value: integer `-1`, expected u32",
        ),
        (
            json!({ "outlier": { "max_ejection_jitter": 1 } }),
            r#"outlier.max_ejection_jitter: invalid type: integer `1`, expected a duration: a number and a unit, as "250ms", "30s" or "1m30s""#,
        ),
        (
            json!({ "outlier": { "always_eject_one": "no" } }),
            r#"outlier.always_eject_one: invalid type: string "no", expected a boolean"#,
        ),
        (
            json!({ "endpoints": [url, { "url": url, "wieght": 2 }] }),
            "endpoints[1].wieght: unknown field `wieght`, expected one of `url`, `weight`, `labels`",
        ),
        (
            json!({ "endpoints": [{ "url": url, "weight": "3" }] }),
            r#"endpoints[0].weight: invalid type: string "3", expected u32"#,
        ),
        (
            json!({ "endpoints": [{ "url": url, "weight": -1 }] }),
            "endpoints[0].weight: invalid value: integer `-1`, expected u32",
        ),
        (
            json!({ "policy": "least_connections" }),
            "policy: unknown variant `least_connections`, expected one of `weighted_round_robin`, `round_robin`, `random`, `least_response_time`, `ring_hash`, `maglev`",
        ),
        (
            json!({ "policy": { "maglev": { "fallback": "ring_hash" } } }),
            "policy.maglev.fallback: unknown variant `ring_hash`, expected one of `weighted_round_robin`, `round_robin`, `random`, `least_response_time`",
        ),
        (
            json!({ "policy": { "ring_hash": { "key": [{ "body": "id" }] } } }),
            "policy.ring_hash.key[0]: unknown variant `body`, expected one of `session`, `header`, `cookie`, `query`, `path`",
        ),
        (
            json!({ "color": "blue" }),
            "color: unknown field `color`, expected one of `seed`, `endpoints`, `policy`, `outlier`, `retry`, `slow_start`, `discovery`, `hedge`, `overload`, `health_checks`",
        ),
        // Found while building: the builder's words, at the field.
        (
            json!({ "endpoints": [url, "ftp://127.0.0.1:21"] }),
            r#"endpoints[1].url: invalid endpoint URL "ftp://127.0.0.1:21": the scheme must be http or https"#,
        ),
        (
            json!({ "endpoints": [{ "url": url, "weight": 100_000_000 }] }),
            "endpoints[0].weight: weight 100000000 of endpoint http://127.0.0.1:8081 is above the maximum of 10000",
        ),
        (
            json!({ "endpoints": [url, "http://127.0.0.1:8081/"] }),
            "endpoints[1].url: endpoint http://127.0.0.1:8081 is listed twice",
        ),
        (
            json!({ "endpoints": [{ "url": url, "weight": 0 }] }),
            "endpoints: every endpoint has weight 0, so no request could ever be sent",
        ),
        (
            json!({ "outlier": { "max_ejection_percent": 150 } }),
            "outlier.max_ejection_percent: max_ejection_percent must be 0 to 100 percent, not 150%",
        ),
        (
            json!({ "outlier": { "failure_percentage": { "percent": -5, "min_requests": 10 } } }),
            "outlier.failure_percentage.percent: failure_percentage must be 0 to 100 percent, not -5%",
        ),
        (
            json!({ "outlier": { "base_ejection": "1m", "max_ejection": "30s" } }),
            "outlier.max_ejection: the maximum ejection time is below the base ejection time",
        ),
        (
            json!({ "outlier": { "enabled": false, "consecutive_failures": 3 } }),
            "outlier.consecutive_failures: set while outlier detection is off (enabled = false)",
        ),
        (
            json!({ "outlier": { "enabled": false, "success_rate": {} } }),
            "outlier.success_rate: set while outlier detection is off (enabled = false)",
        ),
        (
            json!({ "outlier": { "enabled": false, "preset": "envoy" } }),
            "outlier.preset: set while outlier detection is off (enabled = false)",
        ),
        (
            json!({ "outlier": { "success_rate": { "stdev_factor": -1 } } }),
            "outlier.success_rate.stdev_factor: success_rate stdev_factor must be a finite number of standard deviations, 0 or more, not -1",
        ),
        (
            json!({ "outlier": { "failure_percentage": { "minimum_hosts": 3, "percent": 101 } } }),
            "outlier.failure_percentage.percent: failure_percentage must be 0 to 100 percent, not 101%",
        ),
        (
            json!({ "outlier": { "preset": "envoy", "enforcing": { "failure_percentage": 150 } } }),
            "outlier.enforcing.failure_percentage: enforcing failure_percentage must be 0 to 100 percent, not 150%",
        ),
        (
            json!({ "retry": { "budget": { "window": "2m" } } }),
            "retry.budget.window: the budget window must be 1 to 60 s, not 120s",
        ),
        (
            json!({ "retry": { "budget": { "percent": 5000 } } }),
            "retry.budget.percent: the budget's percent of recent requests must be 0 to 1000 percent, not 5000%",
        ),
        (
            json!({ "retry": { "max_retries": 11 } }),
            "retry.max_retries: at most 10 retries per request, not 11",
        ),
        (
            json!({ "retry": { "enabled": false, "max_retries": 1 } }),
            "retry.max_retries: set while retries are off (enabled = false)",
        ),
        (
            json!({ "policy": { "least_response_time": { "decay": "0s" } } }),
            "policy.least_response_time.decay: the decay time must be above zero",
        ),
        (
            json!({ "policy": { "maglev": { "fallback": { "least_response_time": { "decay": "0s" } } } } }),
            "policy.maglev.fallback.least_response_time.decay: the decay time must be above zero",
        ),
        (
            json!({ "policy": { "maglev": { "table_size": 1000 } } }),
            "policy.maglev.table_size: the Maglev table size must be a prime up to 16777216, not 1000",
        ),
        (
            json!({ "policy": { "maglev": { "virtual_nodes": 100 } } }),
            "policy.maglev.virtual_nodes: virtual_nodes applies to the ring, not to Maglev",
        ),
        (
            json!({ "policy": { "ring_hash": { "load_factor": 0.5 } } }),
            "policy.ring_hash.load_factor: the load factor must be a number of at least 1, not 0.5",
        ),
        (
            json!({ "policy": { "ring_hash": { "bounded_loads": false, "load_factor": 1.5 } } }),
            "policy.ring_hash.bounded_loads: false, but load_factor bounds loads: leave one of them out",
        ),
        (
            json!({ "policy": { "ring_hash": { "key": ["session", { "header": "bad header" }] } } }),
            r#"policy.ring_hash.key[1].header: "bad header" is not a valid header name"#,
        ),
        (
            json!({ "policy": { "maglev": { "key": [{ "cookie": "a=b" }] } } }),
            r#"policy.maglev.key[0].cookie: "a=b" is not a valid cookie name"#,
        ),
        // Hedging, overload signals, active health checks.
        (
            json!({ "hedge": { "after": "20ms" } }),
            "hedge.after: unknown field `after`, expected one of `delay`, `percentile`, `max_attempts`, `on_request`",
        ),
        (
            json!({ "hedge": { "delay": "20ms", "percentile": 95 } }),
            "hedge.percentile: give delay or percentile, not both",
        ),
        (
            json!({ "hedge": { "percentile": 150 } }),
            "hedge.percentile: the delay's percentile must be 0 to 100 percent, not 150%",
        ),
        (
            json!({ "hedge": { "percentile": 0 } }),
            "hedge.percentile: the delay's percentile must be above 0",
        ),
        (
            json!({ "hedge": { "delay": "20ms", "max_attempts": 9 } }),
            "hedge.max_attempts: 2 to 5 attempts per request, not 9",
        ),
        (
            json!({ "overload": { "penalty": "1s" } }),
            "overload.penalty: unknown field `penalty`, expected one of `enabled`, `default_penalty`, `max_hold`",
        ),
        (
            json!({ "overload": { "enabled": false, "default_penalty": "1s" } }),
            "overload.default_penalty: set while overload signals are off (enabled = false)",
        ),
        (
            json!({ "health_checks": { "interval": "5s" } }),
            "health_checks.path: required: give path (an HTTP check) or grpc_service (a gRPC check)",
        ),
        (
            json!({ "health_checks": { "path": "healthz" } }),
            r#"health_checks.path: the path must start with '/', not "healthz""#,
        ),
        (
            json!({ "health_checks": { "path": "/healthz", "method": "GE T" } }),
            r#"health_checks.method: "GE T" is not an HTTP method"#,
        ),
        (
            json!({ "health_checks": { "path": "/healthz", "expected_statuses": [200, "2xx"] } }),
            r#"health_checks.expected_statuses[1]: invalid status "2xx" (expected a status code, as 200, or a range, as "200-299")"#,
        ),
        (
            json!({ "health_checks": { "path": "/healthz", "expected_statuses": [70000] } }),
            r#"health_checks.expected_statuses[0]: invalid status 70000 (expected a status code, as 200, or a range, as "200-299")"#,
        ),
        (
            json!({ "health_checks": { "path": "/healthz", "expected_statuses": ["299-200"] } }),
            "health_checks.expected_statuses: expected statuses must be non-empty ranges within 100..=999",
        ),
        (
            json!({ "health_checks": { "path": "/healthz", "timeout": "0s" } }),
            "health_checks.timeout: the interval and the timeout must be above zero",
        ),
        (
            json!({ "health_checks": { "path": "/healthz", "unhealthy_threshold": 0 } }),
            "health_checks.unhealthy_threshold: the thresholds must be at least 1",
        ),
        (
            json!({ "health_checks": { "path": "/healthz", "concurrency": 0 } }),
            "health_checks.concurrency: the concurrency must be at least 1",
        ),
        (
            json!({ "health_checks": { "grpc_service": "shop.Catalog", "path": "/healthz" } }),
            "health_checks.path: a gRPC check's path, method and statuses are the protocol's: leave it out with grpc_service",
        ),
        (
            json!({ "health_checks": { "path": "/healthz", "jitter": "1s" } }),
            "health_checks.jitter: unknown field `jitter`, expected one of `path`, `method`, `expected_statuses`, `interval`, `interval_jitter`, `timeout`, `unhealthy_threshold`, `healthy_threshold`, `concurrency`, `grpc_service`",
        ),
        (
            json!({ "discovery": {
                "dns": { "name": "api.test.", "port": 80 },
                "etcd": { "endpoints": ["http://127.0.0.1:2379"], "prefix": "/a/" }
            } }),
            "discovery: one source at a time: give dns or etcd, not both",
        ),
    ];
    let wrong: Vec<String> = (cases.into_iter())
        .filter_map(|(json, message)| {
            let shown = json_error(json.clone());
            (shown != message)
                .then(|| format!("{json}\n  shown:    {shown}\n  expected: {message}"))
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn discovery_mistakes_name_their_field_and_a_missing_feature() {
    use serde_json::json;
    let dns_cases = [
        (
            json!({ "name": "api.test." }),
            "discovery.dns.port: required with name: the port its addresses serve on",
        ),
        (
            json!({ "port": 80 }),
            "discovery.dns.name: required: give name (with port) or service",
        ),
        (
            json!({ "name": "api.test.", "port": 80, "service": "_http._tcp.api.test." }),
            "discovery.dns.service: give name (with port) or service, not both",
        ),
        (
            json!({ "service": "_http._tcp.api.test.", "port": 80 }),
            "discovery.dns.port: SRV records carry their own ports: leave port out with service",
        ),
        (
            json!({ "name": "api.test.", "port": 80, "refresh_min": "10s", "refresh_max": "5s" }),
            "discovery.dns.refresh_max: refresh_max (5s) is below refresh_min (10s)",
        ),
        (
            json!({ "name": "api.test.", "port": 80, "refresh_min": "1m" }),
            "discovery.dns.refresh_min: refresh_max (30s) is below refresh_min (1m)",
        ),
    ];
    for (dns, message) in dns_cases {
        let error = json_error(json!({ "discovery": { "dns": dns } }));
        if cfg!(feature = "dns") {
            assert_eq!(error, message);
        } else {
            assert_eq!(error, "discovery.dns: DNS discovery needs tower-lb's cargo feature \"dns\", which this build does not have");
        }
    }
    let etcd_cases = [
        (
            json!({ "endpoints": [], "prefix": "/a/" }),
            "discovery.etcd.endpoints: at least one etcd member is needed",
        ),
        (
            json!({ "endpoints": ["http://127.0.0.1:2379"], "prefix": "/a/", "retry_min": "2s" }),
            "discovery.etcd.retry_min: retry_max (1s) is below retry_min (2s)",
        ),
    ];
    for (etcd, message) in etcd_cases {
        let error = json_error(json!({ "discovery": { "etcd": etcd } }));
        if cfg!(feature = "etcd") {
            assert_eq!(error, message);
        } else {
            assert_eq!(error, "discovery.etcd: etcd discovery needs tower-lb's cargo feature \"etcd\", which this build does not have");
        }
    }
    // A missing field of the source is serde's to name.
    assert_eq!(
        json_error(json!({ "discovery": { "etcd": { "endpoints": ["http://127.0.0.1:2379"] } } })),
        "discovery.etcd: missing field `prefix`"
    );
}

#[test]
fn text_formats_add_where_the_mistake_is() {
    let error = from_toml("[outlier]\nbase_ejection = \"3x\"\n").unwrap_err();
    let Error::InvalidConfig { path, reason, .. } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(path, "outlier.base_ejection");
    assert!(reason.contains("line 2, column 17"), "{reason}");
    assert!(reason.contains(r#"invalid duration "3x""#), "{reason}");

    let json = r#"{ "outlier": { "base_ejection": "3x" } }"#;
    let error = BalancerConfig::from_deserializer(&mut serde_json::Deserializer::from_str(json))
        .unwrap_err();
    assert!(error
        .to_string()
        .starts_with(r#"outlier.base_ejection: invalid duration "3x""#));
    assert!(
        error.to_string().ends_with("at line 1 column 36"),
        "{error}"
    );

    let yaml = "retry:\n  max_retries: many\n";
    let error =
        BalancerConfig::from_deserializer(serde_norway::Deserializer::from_str(yaml)).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("retry.max_retries: invalid type: string \"many\", expected u32"),
        "{error}"
    );
}

#[test]
fn a_config_with_discovery_needs_a_runtime() {
    let config = BalancerConfig::from_deserializer(serde_json::json!({
        "discovery": { "dns": { "name": "api.test.", "port": 80 } }
    }))
    .unwrap();
    if cfg!(feature = "dns") {
        assert!(matches!(config.build(), Err(Error::NoRuntime)));
    }
}

#[cfg(feature = "dns")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_with_a_dns_name_follows_its_records() {
    use std::net::Ipv4Addr;
    use support::dns_server::DnsServer;

    let dns = DnsServer::start("test.").await;
    dns.set_addresses("api.test.", &[Ipv4Addr::LOCALHOST], 1)
        .await;
    let server = Server::start().await;
    let port = server.address().port();
    let mut source = DnsConfig::default();
    source.name = Some("api.test.".into());
    source.port = Some(port);
    source.ip = Some(IpFamily::Ipv4);
    source.name_server = Some(dns.addr);
    source.refresh_min = Some(Duration::from_millis(200));
    source.refresh_max = Some(Duration::from_secs(2));
    let mut discovery = DiscoveryConfig::default();
    discovery.dns = Some(source);
    let mut config = BalancerConfig::default();
    config.discovery = Some(discovery);

    let (balancer, discovery) = config.build_with_discovery().unwrap();
    discovery
        .expect("a discovery handle")
        .ready_within(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(sorted_urls(&balancer), [format!("http://127.0.0.1:{port}")]);
    assert!(send(&client(&balancer), "/").await.is_ok());
}

/// Each outlier setting is the builder call of its name: the detectors,
/// the Envoy preset with settings on top, 0 for a streak detector off, and
/// the failure-percentage form from before `minimum_hosts`.
#[test]
fn outlier_settings_are_the_builder_calls_of_their_names() {
    let outlier = |toml: &str| {
        let config = from_toml(&format!("[outlier]\n{toml}")).unwrap();
        let detection = config.outlier.unwrap().to_outlier_detection().unwrap();
        format!("{detection:?}")
    };
    let code = |detection: OutlierDetection| format!("{detection:?}");
    let cases = [
        (
            "preset = \"envoy\"",
            OutlierDetection::envoy(),
        ),
        (
            "preset = \"envoy\"\nenforcing = { consecutive_gateway_failure = 100, failure_percentage = 100 }\nalways_eject_one = true",
            OutlierDetection::envoy()
                .enforcing(Detector::ConsecutiveGatewayFailures, 100)
                .enforcing(Detector::FailurePercentage, 100)
                .always_eject_one(true),
        ),
        (
            "preset = \"envoy\"\nsuccess_rate = { minimum_hosts = 3 }",
            OutlierDetection::envoy().success_rate(SuccessRate::default().minimum_hosts(3)),
        ),
        (
            "success_rate = {}",
            OutlierDetection::default().success_rate(SuccessRate::default()),
        ),
        (
            "success_rate = { stdev_factor = 1.0, request_volume = 20, minimum_hosts = 4 }",
            OutlierDetection::default().success_rate(
                SuccessRate::default()
                    .stdev_factor(1.0)
                    .request_volume(20)
                    .minimum_hosts(4),
            ),
        ),
        (
            "failure_percentage = { percent = 50, min_requests = 20 }",
            OutlierDetection::default().failure_percentage(50, 20),
        ),
        (
            "failure_percentage = { minimum_hosts = 3 }",
            OutlierDetection::default()
                .failure_percentage_with(FailurePercentage::default().minimum_hosts(3)),
        ),
        (
            "split_local_origin_errors = true\nconsecutive_local_origin_failures = 2",
            OutlierDetection::default()
                .split_local_origin_errors(true)
                .consecutive_local_origin_failures(2),
        ),
        (
            "max_ejection_jitter = \"1s 500ms\"\nalways_eject_one = false",
            OutlierDetection::default()
                .max_ejection_time_jitter(Duration::from_millis(1_500))
                .always_eject_one(false),
        ),
        (
            "enforcing = { consecutive_5xx = 25, local_origin_failure_percentage = 0 }",
            OutlierDetection::default()
                .enforcing(Detector::ConsecutiveFailures, 25)
                .enforcing(Detector::LocalOriginFailurePercentage, 0),
        ),
    ];
    for (toml, detection) in cases {
        assert_eq!(outlier(toml), code(detection), "{toml}");
    }
    // 0 turns a streak detector off: the preset's gateway streak, and all
    // three at once, leave only what was on besides.
    let off = outlier(
        "preset = \"envoy\"\nconsecutive_failures = 0\nconsecutive_gateway_failures = 0\nconsecutive_local_origin_failures = 0",
    );
    assert!(
        off.starts_with("OutlierDetection { consecutive_failures: None, consecutive_gateway_failures: None, consecutive_local_origin_failures: None,"),
        "{off}"
    );
    assert_eq!(
        off.replace("None", "Some(5)"),
        code(OutlierDetection::envoy()),
        "nothing else changed"
    );
}

/// The case the round-trip property first found: serde_json reads this
/// one bit off without its `float_roundtrip` feature (on here).
#[test]
fn a_percentage_with_seventeen_digits_reads_back_exactly() {
    let mut outlier = OutlierConfig::default();
    outlier.panic_threshold = Some(1312.7807994311743);
    let mut config = BalancerConfig::default();
    config.outlier = Some(outlier);
    let json = serde_json::to_string(&config).unwrap();
    let back = BalancerConfig::from_deserializer(&mut serde_json::Deserializer::from_str(&json));
    assert_eq!(back.unwrap(), config);
}

#[test]
fn a_grpc_health_check_needs_the_tonic_feature() {
    let config = BalancerConfig::from_deserializer(serde_json::json!({
        "health_checks": { "grpc_service": "shop.Catalog", "interval": "5s" }
    }))
    .unwrap();
    #[cfg(feature = "tonic")]
    {
        let check = config.health_checks().unwrap().expect("a check");
        let in_code = ActiveHealthCheck::grpc("shop.Catalog").interval(Duration::from_secs(5));
        assert_eq!(format!("{check:?}"), format!("{in_code:?}"));
        config.build().unwrap();
    }
    #[cfg(not(feature = "tonic"))]
    assert_eq!(
        config.build().unwrap_err().to_string(),
        "health_checks.grpc_service: gRPC health checks need tower-lb's cargo feature \"tonic\", which this build does not have"
    );
}

/// Each hedge, overload and health-check setting is the builder call of
/// its name; a section left empty is the builder's defaults.
#[test]
fn hedge_overload_and_check_settings_are_the_builder_calls_of_their_names() {
    let debug = |value: &dyn std::fmt::Debug| format!("{value:?}");
    let hedging = |toml: &str| {
        let config = from_toml(&format!("[hedge]\n{toml}")).unwrap();
        debug(&config.hedge.unwrap().to_hedging().unwrap())
    };
    let hedge_cases = [
        ("", Hedging::default()),
        (
            "percentile = 99.5",
            Hedging::percentile(tower_lb::Percent::new(99.5)),
        ),
        (
            "delay = \"20ms\"",
            Hedging::after(Duration::from_millis(20)),
        ),
        (
            "percentile = 90\nmax_attempts = 3\non_request = true",
            Hedging::percentile(90).max_attempts(3).on_request(),
        ),
        ("on_request = false", Hedging::default()),
    ];
    for (toml, in_code) in hedge_cases {
        assert_eq!(hedging(toml), debug(&in_code), "{toml}");
    }

    let overload = |toml: &str| {
        let config = from_toml(&format!("[overload]\n{toml}")).unwrap();
        config.overload.unwrap().to_overload().unwrap()
    };
    assert_eq!(overload(""), Overload::default());
    assert_eq!(overload("enabled = true"), Overload::default());
    assert_eq!(overload("enabled = false"), Overload::disabled());
    assert_eq!(
        overload("max_hold = \"30s\""),
        Overload::default().max_hold(Duration::from_secs(30))
    );

    let check = |toml: &str| {
        let config = from_toml(&format!("[health_checks]\n{toml}")).unwrap();
        debug(&config.health_checks().unwrap().expect("a check"))
    };
    let check_cases = [
        ("path = \"/h\"", ActiveHealthCheck::new("/h")),
        (
            "path = \"/h\"\nmethod = \"HEAD\"\nexpected_statuses = [\"200-204\", 302, \" 400 - 404 \"]",
            ActiveHealthCheck::new("/h")
                .method(http::Method::HEAD)
                .expected_statuses([200..=204, 302..=302, 400..=404]),
        ),
        (
            "path = \"/h\"\ninterval = \"2s\"\ntimeout = \"300ms\"\nhealthy_threshold = 1",
            ActiveHealthCheck::new("/h")
                .interval(Duration::from_secs(2))
                .timeout(Duration::from_millis(300))
                .healthy_threshold(1),
        ),
    ];
    for (toml, in_code) in check_cases {
        assert_eq!(check(toml), debug(&in_code), "{toml}");
    }
    assert_eq!(
        BalancerConfig::default()
            .health_checks()
            .unwrap()
            .map(|c| debug(&c)),
        None
    );
    // A range of one code is written as the code, and reads back.
    let mut section = HealthCheckConfig::default();
    section.path = Some("/h".into());
    section.expected_statuses = Some(vec![StatusRange::code(200), StatusRange::new(300, 399)]);
    let mut config = BalancerConfig::default();
    config.health_checks = Some(section);
    let text = toml::to_string(&config).unwrap();
    assert!(
        text.contains(r#"expected_statuses = [200, "300-399"]"#),
        "{text}"
    );
    assert_eq!(from_toml(&text).unwrap(), config);
}

// ---- round trip ----

fn duration() -> impl Strategy<Value = Duration> {
    // Up to ten years, to the nanosecond.
    (0u64..315_360_000, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n))
}

fn some<T: std::fmt::Debug + Clone>(
    strategy: impl Strategy<Value = T> + 'static,
) -> impl Strategy<Value = Option<T>> {
    proptest::option::of(strategy)
}

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ._:/=-]{0,12}"
}

fn number() -> impl Strategy<Value = f64> {
    -10.0f64..2000.0
}

fn least_time() -> impl Strategy<Value = LeastTimeConfig> {
    (
        some(duration()),
        some(duration()),
        some(duration()),
        some(any::<bool>()),
    )
        .prop_map(|(decay, rtt, penalty, exact)| {
            let mut least = LeastTimeConfig::default();
            least.decay = decay;
            least.default_rtt = rtt;
            least.failure_penalty = penalty;
            least.exact = exact;
            least
        })
}

fn key_source() -> impl Strategy<Value = KeySourceConfig> {
    prop_oneof![
        Just(KeySourceConfig::Session),
        Just(KeySourceConfig::Path),
        text().prop_map(KeySourceConfig::Header),
        text().prop_map(KeySourceConfig::Cookie),
        text().prop_map(KeySourceConfig::Query),
    ]
}

fn fallback() -> impl Strategy<Value = FallbackConfig> {
    prop_oneof![
        Just(FallbackConfig::WeightedRoundRobin),
        Just(FallbackConfig::RoundRobin),
        Just(FallbackConfig::Random),
        least_time().prop_map(FallbackConfig::LeastResponseTime),
    ]
}

fn hash() -> impl Strategy<Value = HashConfig> {
    (
        proptest::collection::vec(key_source(), 0..4),
        some(any::<u32>()),
        some(any::<u64>().prop_map(|n| n >> 2)),
        some(any::<bool>()),
        some(number()),
        some(fallback()),
    )
        .prop_map(|(key, nodes, size, bounded, factor, fallback)| {
            let mut hash = HashConfig::default();
            hash.key = key;
            hash.virtual_nodes = nodes;
            hash.table_size = size;
            hash.bounded_loads = bounded;
            hash.load_factor = factor;
            hash.fallback = fallback;
            hash
        })
}

fn policy() -> impl Strategy<Value = PolicyConfig> {
    prop_oneof![
        Just(PolicyConfig::WeightedRoundRobin),
        Just(PolicyConfig::RoundRobin),
        Just(PolicyConfig::Random),
        least_time().prop_map(PolicyConfig::LeastResponseTime),
        hash().prop_map(PolicyConfig::RingHash),
        hash().prop_map(PolicyConfig::Maglev),
    ]
}

fn endpoint() -> impl Strategy<Value = EndpointConfig> {
    (
        text(),
        some(any::<u32>()),
        proptest::collection::btree_map(text(), text(), 0..3),
    )
        .prop_map(|(url, weight, labels)| {
            let mut endpoint = EndpointConfig::new(url);
            endpoint.weight = weight;
            endpoint.labels = labels;
            endpoint
        })
}

/// Small counts, 0 (a detector off) included, as often as any `u32`.
fn count() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..10, any::<u32>()]
}

fn success_rate() -> impl Strategy<Value = SuccessRateConfig> {
    (some(-1.0f64..5.0), some(count()), some(count())).prop_map(|(factor, volume, hosts)| {
        let mut settings = SuccessRateConfig::default();
        (
            settings.stdev_factor,
            settings.request_volume,
            settings.minimum_hosts,
        ) = (factor, volume, hosts);
        settings
    })
}

fn failure_percentage() -> impl Strategy<Value = FailurePercentageConfig> {
    (some(number()), some(count()), some(count())).prop_map(|(percent, requests, hosts)| {
        let mut settings = FailurePercentageConfig::default();
        (
            settings.percent,
            settings.min_requests,
            settings.minimum_hosts,
        ) = (percent, requests, hosts);
        settings
    })
}

fn enforcing() -> impl Strategy<Value = EnforcingConfig> {
    proptest::collection::vec(some(-10.0f64..110.0), 7).prop_map(|percents| {
        let mut enforcing = EnforcingConfig::default();
        for (slot, percent) in [
            &mut enforcing.consecutive_failures,
            &mut enforcing.consecutive_gateway_failures,
            &mut enforcing.consecutive_local_origin_failures,
            &mut enforcing.success_rate,
            &mut enforcing.failure_percentage,
            &mut enforcing.local_origin_success_rate,
            &mut enforcing.local_origin_failure_percentage,
        ]
        .into_iter()
        .zip(percents)
        {
            *slot = percent;
        }
        enforcing
    })
}

fn outlier() -> impl Strategy<Value = OutlierConfig> {
    (
        (
            some(any::<bool>()),
            some(Just(OutlierPreset::Envoy)),
            some(count()),
            some(count()),
            some(count()),
            some(any::<bool>()),
        ),
        (
            some(success_rate()),
            some(failure_percentage()),
            some(enforcing()),
        ),
        (
            some(duration()),
            some(duration()),
            some(duration()),
            some(duration()),
        ),
        (
            some(number()),
            some(any::<bool>()),
            some(number()),
            some(any::<bool>()),
        ),
    )
        .prop_map(|(streaks, statistics, times, rest)| {
            let mut outlier = OutlierConfig::default();
            (
                outlier.enabled,
                outlier.preset,
                outlier.consecutive_failures,
                outlier.consecutive_gateway_failures,
                outlier.consecutive_local_origin_failures,
                outlier.split_local_origin_errors,
            ) = streaks;
            (
                outlier.success_rate,
                outlier.failure_percentage,
                outlier.enforcing,
            ) = statistics;
            (
                outlier.interval,
                outlier.base_ejection,
                outlier.max_ejection,
                outlier.max_ejection_jitter,
            ) = times;
            (
                outlier.max_ejection_percent,
                outlier.always_eject_one,
                outlier.panic_threshold,
                outlier.gateway_statuses_only,
            ) = rest;
            outlier
        })
}

fn retry() -> impl Strategy<Value = RetryConfig> {
    (
        (
            some(any::<bool>()),
            some(any::<bool>()),
            some(any::<bool>()),
        ),
        some(any::<u32>()),
        some((some(duration()), some(number()), some(any::<u32>()))),
    )
        .prop_map(|((enabled, closed, idempotent), max, budget)| {
            let mut retry = RetryConfig::default();
            retry.enabled = enabled;
            retry.closed_connections = closed;
            retry.idempotent_failures = idempotent;
            retry.max_retries = max;
            retry.budget = budget.map(|(window, percent, reserve)| {
                let mut budget = RetryBudgetConfig::default();
                budget.window = window;
                budget.percent = percent;
                budget.reserve_per_second = reserve;
                budget
            });
            retry
        })
}

fn discovery() -> impl Strategy<Value = DiscoveryConfig> {
    let dns = (
        (
            some(text()),
            some(any::<u16>()),
            some(text()),
            some(any::<bool>()),
        ),
        some(prop_oneof![
            Just(IpFamily::Both),
            Just(IpFamily::Ipv4),
            Just(IpFamily::Ipv6)
        ]),
        (some(duration()), some(duration()), some(duration())),
        some(0usize..100),
        some(any::<u16>().prop_map(|port| std::net::SocketAddr::from(([127, 0, 0, 1], port)))),
    )
        .prop_map(
            |((name, port, service, https), ip, times, retries, server)| {
                let mut dns = DnsConfig::default();
                (dns.name, dns.port, dns.service, dns.https) = (name, port, service, https);
                dns.ip = ip;
                (dns.refresh_min, dns.refresh_max, dns.query_timeout) = times;
                dns.query_retries = retries;
                dns.name_server = server;
                dns
            },
        );
    let etcd = (
        proptest::collection::vec(text(), 0..3),
        text(),
        some(duration()),
        some(duration()),
        some(0usize..1 << 30),
    )
        .prop_map(|(endpoints, prefix, min, max, size)| {
            let mut etcd = EtcdConfig::default();
            etcd.endpoints = endpoints;
            etcd.prefix = prefix;
            (etcd.retry_min, etcd.retry_max) = (min, max);
            etcd.max_message_size = size;
            etcd
        });
    (some(dns), some(etcd)).prop_map(|(dns, etcd)| {
        let mut discovery = DiscoveryConfig::default();
        discovery.dns = dns;
        discovery.etcd = etcd;
        discovery
    })
}

fn hedge() -> impl Strategy<Value = HedgeConfig> {
    (
        some(duration()),
        some(number()),
        some(prop_oneof![0u32..8, any::<u32>()]),
        some(any::<bool>()),
    )
        .prop_map(|(delay, percentile, attempts, on_request)| {
            let mut hedge = HedgeConfig::default();
            (hedge.delay, hedge.percentile) = (delay, percentile);
            (hedge.max_attempts, hedge.on_request) = (attempts, on_request);
            hedge
        })
}

fn overload() -> impl Strategy<Value = OverloadConfig> {
    (some(any::<bool>()), some(duration()), some(duration())).prop_map(|(enabled, penalty, max)| {
        let mut overload = OverloadConfig::default();
        overload.enabled = enabled;
        (overload.default_penalty, overload.max_hold) = (penalty, max);
        overload
    })
}

fn health_checks() -> impl Strategy<Value = HealthCheckConfig> {
    let status = (any::<u16>(), prop_oneof![Just(0u16), any::<u16>()])
        .prop_map(|(first, span)| StatusRange::new(first, first.saturating_add(span)));
    let method = prop_oneof![
        Just("GET".to_owned()),
        Just("HEAD".to_owned()),
        "[A-Za-z -]{0,6}",
    ];
    (
        (
            some(prop_oneof![text(), text().prop_map(|t| format!("/{t}"))]),
            some(method),
            some(proptest::collection::vec(status, 0..4)),
        ),
        (some(duration()), some(duration()), some(duration())),
        (some(count()), some(count()), some(0usize..20)),
        some(text()),
    )
        .prop_map(|((path, method, statuses), times, counts, grpc)| {
            let mut check = HealthCheckConfig::default();
            (check.path, check.method, check.expected_statuses) = (path, method, statuses);
            (check.interval, check.interval_jitter, check.timeout) = times;
            (
                check.unhealthy_threshold,
                check.healthy_threshold,
                check.concurrency,
            ) = counts;
            check.grpc_service = grpc;
            check
        })
}

fn config() -> impl Strategy<Value = BalancerConfig> {
    (
        (
            // TOML integers stop at i64::MAX.
            some(0u64..=i64::MAX as u64),
            proptest::collection::vec(endpoint(), 0..4),
            some(policy().boxed()),
            some(outlier().boxed()),
            some(retry().boxed()),
            some(discovery().boxed()),
        ),
        (
            some(hedge().boxed()),
            some(overload().boxed()),
            some(health_checks().boxed()),
            some(slow_start().boxed()),
        ),
    )
        .prop_map(
            |(
                (seed, endpoints, policy, outlier, retry, discovery),
                (hedge, overload, checks, slow_start),
            )| {
                let mut config = BalancerConfig::default();
                config.seed = seed;
                config.endpoints = endpoints;
                config.policy = policy;
                config.outlier = outlier;
                config.retry = retry;
                config.discovery = discovery;
                config.slow_start = slow_start;
                config.hedge = hedge;
                config.overload = overload;
                config.health_checks = checks;
                config
            },
        )
}

fn slow_start() -> impl Strategy<Value = SlowStartConfig> {
    (some(duration()), some(number()), some(number())).prop_map(|(window, aggression, min)| {
        let mut slow_start = SlowStartConfig::default();
        slow_start.window = window;
        slow_start.aggression = aggression;
        slow_start.min_weight_percent = min;
        slow_start
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Serialize, then deserialize, gives the same settings, in TOML, JSON
    /// and YAML; so does the balancer built from either.
    #[test]
    fn config_round_trips_through_toml_and_json(config in config()) {
        let toml_text = toml::to_string(&config).unwrap();
        prop_assert_eq!(&from_toml(&toml_text).unwrap(), &config, "{}", toml_text);
        let json = serde_json::to_string(&config).unwrap();
        let from_json =
            BalancerConfig::from_deserializer(&mut serde_json::Deserializer::from_str(&json));
        prop_assert_eq!(&from_json.unwrap(), &config, "{}", json);
        let yaml = serde_norway::to_string(&config).unwrap();
        let from_yaml = BalancerConfig::from_deserializer(serde_norway::Deserializer::from_str(&yaml));
        prop_assert_eq!(&from_yaml.unwrap(), &config, "{}", yaml);

        // Whatever the settings, building gives a balancer or a config
        // error (or, with discovery, "no runtime"): never a panic, and the
        // same answer for the config read back.
        let mut local = config.clone();
        local.discovery = None;
        let built = local.build().map(|b| format!("{b:?}")).map_err(|e| e.to_string());
        let mut again = from_toml(&toml_text).unwrap();
        again.discovery = None;
        let rebuilt = again.build().map(|b| format!("{b:?}")).map_err(|e| e.to_string());
        prop_assert_eq!(built, rebuilt);
        let check = config.health_checks().map(|c| format!("{c:?}")).map_err(|e| e.to_string());
        let again = from_toml(&toml_text).unwrap().health_checks();
        prop_assert_eq!(check, again.map(|c| format!("{c:?}")).map_err(|e| e.to_string()));
    }
}

/// `slow_start = { window, aggression, min_weight_percent }` reads as the
/// same `SlowStart` as in code, writes back as it was read, and each
/// mistake names its field.
#[test]
fn slow_start_reads_round_trips_and_names_its_mistakes() {
    let text = r#"
        endpoints = [{ url = "http://127.0.0.1:8081" }]
        slow_start = { window = "30s", aggression = 1.0, min_weight_percent = 10 }
    "#;
    let config = from_toml(text).unwrap();
    let slow_start = config.slow_start.as_ref().unwrap().to_slow_start().unwrap();
    assert_eq!(slow_start, SlowStart::new(Duration::from_secs(30)));
    let written = toml::to_string(&config).unwrap();
    assert_eq!(from_toml(&written).unwrap(), config, "{written}");
    assert!(config.build().is_ok());
    for (bad, path) in [
        (r#"slow_start = { aggression = 2.0 }"#, "slow_start.window"),
        (r#"slow_start = { window = "0s" }"#, "slow_start.window"),
        (
            r#"slow_start = { window = "1s", aggression = -1.0 }"#,
            "slow_start.aggression",
        ),
        (
            r#"slow_start = { window = "1s", min_weight_percent = 101 }"#,
            "slow_start.min_weight_percent",
        ),
        (
            r#"slow_start = { window = "1s", ramp = 3 }"#,
            "slow_start.ramp",
        ),
    ] {
        let error = from_toml(bad)
            .and_then(|config| config.build())
            .unwrap_err();
        assert!(
            matches!(&error, Error::InvalidConfig { path: p, .. } if p == path),
            "{bad}: {error}"
        );
    }
}
