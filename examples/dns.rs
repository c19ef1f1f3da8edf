//! The endpoint set following DNS: a DNS server and three backends on
//! loopback addresses, all started here; the balancer follows the name
//! `api.test.` and traffic moves when its A records change.
//!
//! `cargo run --example dns --features dns` (needs nothing installed).

// The tests' DNS server; the example uses part of it.
#[allow(dead_code)]
#[path = "../tests/support/dns_server.rs"]
mod dns_server;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dns_server::DnsServer;
use tower::{Layer, ServiceExt};
use tower_lb::{Balancer, BoxError, DnsSource, Policy};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// Backends on 127.0.0.2, .3 and .4, one port for all (A records carry
/// no port), each answering with its address.
async fn backends() -> Result<(u16, Vec<MockServer>), BoxError> {
    'ports: for _ in 0..20 {
        let first = std::net::TcpListener::bind((ip(2), 0))?;
        let port = first.local_addr()?.port();
        let mut listeners = vec![first];
        for last in [3, 4] {
            match std::net::TcpListener::bind((ip(last), port)) {
                Ok(listener) => listeners.push(listener),
                Err(_) => continue 'ports,
            }
        }
        let mut servers = Vec::new();
        for (listener, last) in listeners.into_iter().zip([2u8, 3, 4]) {
            let server = MockServer::builder().listener(listener).start().await;
            Mock::given(any())
                .respond_with(ResponseTemplate::new(200).set_body_string(ip(last).to_string()))
                .mount(&server)
                .await;
            servers.push(server);
        }
        return Ok((port, servers));
    }
    Err("no port free on 127.0.0.2-4".into())
}

fn endpoints(balancer: &Balancer) -> Vec<String> {
    balancer
        .stats()
        .endpoints
        .into_iter()
        .map(|e| e.url)
        .collect()
}

/// Sends `n` requests; counts the answers by backend.
async fn spread<S>(client: &S, n: usize) -> Result<BTreeMap<String, usize>, BoxError>
where
    S: tower::Service<reqwest::Request, Response = reqwest::Response, Error = tower_lb::Error>
        + Clone,
{
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let request = reqwest::Request::new(http::Method::GET, "http://api/".parse()?);
        let answer = client.clone().oneshot(request).await?.text().await?;
        *counts.entry(answer).or_default() += 1;
    }
    Ok(counts)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let dns = DnsServer::start("test.").await;
    let (port, _backends) = backends().await?;
    dns.set_addresses("api.test.", &[ip(2), ip(3)], 1).await;
    println!(
        "DNS server on {}: api.test. A 127.0.0.2, 127.0.0.3 (TTL 1 s)",
        dns.addr
    );

    let balancer = Balancer::builder().policy(Policy::round_robin()).build()?;
    balancer.discover(
        DnsSource::addresses("api.test.", port)
            .name_server(dns.addr)
            .refresh_between(Duration::from_millis(200), Duration::from_secs(5)),
    )?;
    let client = balancer.layer().layer(reqwest::Client::new());
    while endpoints(&balancer).is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("endpoints: {:?}", endpoints(&balancer));
    println!("12 requests: {:?}", spread(&client, 12).await?);

    println!("\nchanging api.test. to A 127.0.0.3, 127.0.0.4");
    let changed = Instant::now();
    dns.set_addresses("api.test.", &[ip(3), ip(4)], 1).await;
    let before = endpoints(&balancer);
    while endpoints(&balancer) == before {
        if changed.elapsed() > Duration::from_secs(10) {
            return Err("the set did not follow the record".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "endpoints after {:?}: {:?}",
        changed.elapsed(),
        endpoints(&balancer)
    );
    println!("12 requests: {:?}", spread(&client, 12).await?);
    let discovery = balancer.stats().discovery.unwrap_or_default();
    println!(
        "\ndiscovery: {} sets applied, {} failures",
        discovery.refreshes, discovery.errors
    );
    Ok(())
}
