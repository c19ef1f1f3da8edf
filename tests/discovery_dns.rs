//! DNS discovery against a real DNS server (hickory-server, in process, on
//! 127.0.0.1) and real backends on several loopback addresses. Records have
//! a TTL of 1 s and are changed while requests flow.
//!
//! These tests run on the real clock: the DNS server, the resolver's cache
//! and the sockets are real. They wait by polling with a deadline, never a
//! fixed sleep, and print the figures (`-- --nocapture`).
#![cfg(feature = "dns")]

use crate::support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use support::dns_server::DnsServer;
use support::*;
use tower_lb::{Balancer, DnsSource, Error, NotReadyReason, Policy};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

const TTL: u32 = 1;

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// Backends on 127.0.0.`last` for each of `lasts`, all on one port (A
/// records carry no port), named by their last byte.
async fn backends_on(lasts: &[u8]) -> (u16, Vec<Server>) {
    'ports: for _ in 0..20 {
        let first = std::net::TcpListener::bind((ip(lasts[0]), 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for &last in &lasts[1..] {
            match std::net::TcpListener::bind((ip(last), port)) {
                Ok(listener) => listeners.push(listener),
                Err(_) => continue 'ports,
            }
        }
        let mut servers = Vec::new();
        for (listener, last) in listeners.into_iter().zip(lasts) {
            let server = MockServer::builder().listener(listener).start().await;
            Mock::given(any())
                .respond_with(ResponseTemplate::new(200).insert_header(BACKEND, last.to_string()))
                .mount(&server)
                .await;
            servers.push(Server::from(server));
        }
        return (port, servers);
    }
    panic!("no port free on every address");
}

fn url(last: u8, port: u16) -> String {
    format!("http://127.0.0.{last}:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_set_follows_a_records_keeps_survivors_and_outlives_a_dns_outage() {
    let mut dns = DnsServer::start("test.").await;
    let (port, _backends) = backends_on(&[2, 3, 4]).await;
    dns.set_addresses("api.test.", &[ip(2), ip(3)], TTL).await;
    let balancer = Balancer::builder()
        .policy(Policy::round_robin())
        .build()
        .unwrap();
    balancer
        .discover(
            DnsSource::addresses("api.test.", port)
                .name_server(dns.addr)
                .refresh_between(Duration::from_millis(200), Duration::from_secs(2)),
        )
        .unwrap();
    let first = within(Duration::from_secs(5), "first set", || {
        sorted_urls(&balancer).len() == 2
    })
    .await;
    assert_eq!(sorted_urls(&balancer), [url(2, port), url(3, port)]);
    let client = client(&balancer);
    for _ in 0..20 {
        send(&client, "/").await.unwrap();
    }
    let survivor_before = balancer.stats().endpoint(url(3, port)).unwrap().requests;
    assert_eq!(survivor_before, 10);

    // A record change: traffic moves within TTL + the refresh interval.
    let changed = Instant::now();
    dns.set_addresses("api.test.", &[ip(3), ip(4)], TTL).await;
    let mut failed = 0;
    let first_at_new = loop {
        match send(&client, "/").await {
            Ok(name) if name == "4" => break changed.elapsed(),
            Ok(_) => {}
            Err(_) => failed += 1,
        }
        assert!(
            changed.elapsed() < Duration::from_secs(5),
            "traffic never moved"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(failed, 0);
    assert!(
        first_at_new <= Duration::from_secs(u64::from(TTL) + 2),
        "moved after {first_at_new:?}"
    );
    assert_eq!(sorted_urls(&balancer), [url(3, port), url(4, port)]);
    // The survivor kept its counters across the refresh.
    let survivor = balancer.stats().endpoint(url(3, port)).unwrap().requests;
    assert!(
        survivor > survivor_before,
        "{survivor} <= {survivor_before}"
    );

    // The DNS server goes away: the last set keeps serving, 0 failures,
    // until the failed look-ups have been seen (a query waits 2 s, twice).
    dns.stop().await;
    let outage = Instant::now();
    let mut sent = 0;
    while balancer.stats().discovery.unwrap().errors < 1 {
        assert!(
            outage.elapsed() < Duration::from_secs(15),
            "no failed look-up seen"
        );
        send(&client, "/")
            .await
            .expect("served from the last good set");
        sent += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let outage = outage.elapsed();
    assert_eq!(sorted_urls(&balancer), [url(3, port), url(4, port)]);
    let discovery = balancer.stats().discovery.unwrap();
    assert!(discovery.last_error.is_some());

    // Back, with a new record: updates resume.
    dns.set_addresses("api.test.", &[ip(2)], TTL).await;
    dns.restart().await;
    let resumed = within(Duration::from_secs(10), "updates after the restart", || {
        sorted_urls(&balancer) == [url(2, port)]
    })
    .await;
    println!(
        "first set after {first:?}; first request at the new address {first_at_new:?} after the \
         record change (TTL {TTL} s); {sent} requests during {outage:?} of DNS outage, 0 failed, \
         {} failed look-ups counted; set updated {resumed:?} after the server came back",
        discovery.errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_give_ports_and_weights_of_the_lowest_priority_that_has_endpoints() {
    let dns = DnsServer::start("test.").await;
    let backends = backends(3).await;
    let ports: Vec<u16> = backends.iter().map(|b| b.address().port()).collect();
    dns.set_addresses("host.test.", &[ip(1)], TTL).await;
    dns.set_service(
        "_http._tcp.api.test.",
        &[
            (10, 1, ports[0], "host.test."),
            (10, 3, ports[1], "host.test."),
            (20, 1, ports[2], "host.test."),
        ],
        TTL,
    )
    .await;
    let balancer = Balancer::builder().build().unwrap();
    balancer
        .discover(
            DnsSource::service("_http._tcp.api.test.")
                .name_server(dns.addr)
                .refresh_between(Duration::from_millis(200), Duration::from_secs(2)),
        )
        .unwrap();
    within(Duration::from_secs(5), "the SRV set", || {
        sorted_urls(&balancer).len() == 2
    })
    .await;
    let stats = balancer.stats();
    let weight = |port: u16| {
        stats
            .endpoint(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .weight
    };
    assert_eq!((weight(ports[0]), weight(ports[1])), (1, 3));

    // The first priority's targets go: the next priority takes over.
    dns.set_service(
        "_http._tcp.api.test.",
        &[(20, 1, ports[2], "host.test.")],
        TTL,
    )
    .await;
    within(Duration::from_secs(5), "the fallback priority", || {
        sorted_urls(&balancer) == [format!("http://127.0.0.1:{}", ports[2])]
    })
    .await;
}

/// SRV weights go up to 65,535 and endpoint weights to 10,000: heavier
/// records are scaled down together, not refused (they once refused the
/// whole answer as a bad weight, so no set was ever applied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_weights_above_the_endpoint_maximum_are_scaled_keeping_their_ratios() {
    let dns = DnsServer::start("test.").await;
    let backends = backends(2).await;
    let ports: Vec<u16> = backends.iter().map(|b| b.address().port()).collect();
    dns.set_addresses("host.test.", &[ip(1)], TTL).await;
    dns.set_service(
        "_http._tcp.heavy.test.",
        &[
            (10, 60_000, ports[0], "host.test."),
            (10, 15_000, ports[1], "host.test."),
        ],
        TTL,
    )
    .await;
    let balancer = Balancer::builder().build().unwrap();
    balancer
        .discover(
            DnsSource::service("_http._tcp.heavy.test.")
                .name_server(dns.addr)
                .refresh_between(Duration::from_millis(200), Duration::from_secs(2)),
        )
        .unwrap();
    within(Duration::from_secs(5), "the SRV set", || {
        sorted_urls(&balancer).len() == 2
    })
    .await;
    let stats = balancer.stats();
    let weight = |port: u16| {
        stats
            .endpoint(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .weight
    };
    assert_eq!((weight(ports[0]), weight(ports[1])), (10_000, 2_500));
    assert_eq!(stats.discovery.unwrap().skipped, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connect_failures_brings_the_next_look_up_forward() {
    let dns = DnsServer::start("test.").await;
    let (port, mut backends) = backends_on(&[5, 6]).await;
    // A long TTL: without the hint the change would wait 30 s.
    dns.set_addresses("api.test.", &[ip(5)], 300).await;
    let balancer = Balancer::builder().build().unwrap();
    balancer
        .discover(
            DnsSource::addresses("api.test.", port)
                .name_server(dns.addr)
                .refresh_between(Duration::from_millis(200), Duration::from_secs(30)),
        )
        .unwrap();
    within(Duration::from_secs(5), "first set", || {
        sorted_urls(&balancer).len() == 1
    })
    .await;
    // The instance moves: DNS says so, and the old address stops listening.
    dns.set_addresses("api.test.", &[ip(6)], 300).await;
    drop(backends.remove(0));
    let client = client(&balancer);
    let moved = Instant::now();
    let took = within(Duration::from_secs(10), "the new address", || {
        sorted_urls(&balancer) == [url(6, port)]
    });
    // Requests hit the refusing address until the set moves.
    let sender = tokio::spawn(async move {
        for _ in 0..5 {
            let _ = send(&client, "/").await;
        }
    });
    let took = took.await;
    sender.await.unwrap();
    assert!(moved.elapsed() < Duration::from_secs(10));
    println!("set moved {took:?} after connect failures began (TTL 300 s)");
}

/// An instance dies and its replacement is published only after the dead
/// address was ejected (TTL 300 s). Connect failures bring one look-up
/// forward, but DNS still lists the dead address then, and an ejected
/// endpoint brings no more failures: the replacement waited for the
/// refresh ceiling. Now, while an endpoint is ejected after connect
/// failures, the name is looked up again at the minimum interval,
/// doubling, until the address leaves the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_ejected_for_connect_failures_is_looked_up_again_until_it_leaves_the_answer() {
    let dns = DnsServer::start("test.").await;
    // Live instances on .7 and .9, a dead one on .8, all on one port.
    let (port, _backends, _dead) = loop {
        let (port, backends) = backends_on(&[7, 9]).await;
        if let Ok(dead) = RefusingPort::at((ip(8), port).into()) {
            break (port, backends, dead);
        }
    };
    dns.set_addresses("moved.test.", &[ip(7), ip(8)], 300).await;
    let min = Duration::from_millis(100);
    let ceiling = Duration::from_secs(10);
    let balancer = Balancer::builder()
        .policy(Policy::round_robin())
        .build()
        .unwrap();
    balancer
        .discover(
            DnsSource::addresses("moved.test.", port)
                .name_server(dns.addr)
                .refresh_between(min, ceiling),
        )
        .unwrap()
        .ready_within(Duration::from_secs(5))
        .await
        .unwrap();
    let client = client(&balancer);
    let sending = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sender = tokio::spawn({
        let sending = sending.clone();
        async move {
            let mut failed = 0;
            while sending.load(std::sync::atomic::Ordering::Relaxed) {
                failed += usize::from(send(&client, "/").await.is_err());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            failed
        }
    });
    // The failures brought a look-up forward (a second set), DNS still
    // lists .8, and it is ejected: no more failures come from it. The
    // source keeps looking (0.1 s, 0.2 s, 0.4 s, 0.8 s after each other).
    let ejected = within(Duration::from_secs(5), "the dead address ejected", || {
        let stats = balancer.stats();
        stats.endpoint(url(8, port)).is_some_and(|e| e.ejected)
            && stats.discovery.is_some_and(|d| d.refreshes >= 2)
    })
    .await;
    let chased = within(Duration::from_secs(5), "look-ups while ejected", || {
        balancer.stats().discovery.is_some_and(|d| d.refreshes >= 6)
    })
    .await;
    // The replacement is published, after four look-ups that still listed
    // the dead address.
    dns.set_addresses("moved.test.", &[ip(7), ip(9)], 300).await;
    let followed = within(ceiling / 2, "the replacement address", || {
        sorted_urls(&balancer) == [url(7, port), url(9, port)]
    })
    .await;
    // The dead address left the answer: the chase stops, and the TTL's
    // schedule (here the 10 s ceiling) is back.
    let refreshes = balancer.stats().discovery.unwrap().refreshes;
    let quiet = Instant::now();
    while quiet.elapsed() < 20 * min {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let looked_again = balancer.stats().discovery.unwrap().refreshes - refreshes;
    sending.store(false, std::sync::atomic::Ordering::Relaxed);
    let failed = sender.await.unwrap();
    assert!(
        looked_again <= 1,
        "{looked_again} look-ups after the set moved"
    );
    println!(
        "TTL 300 s, refresh {min:?} to {ceiling:?}: dead address ejected after {ejected:?}, \
         replacement published {chased:?} later, set followed {followed:?} after that; \
         {looked_again} look-up(s) in the {:?} after; {failed} requests failed",
        20 * min
    );
}

/// `Duration::MAX` is the usual way to write "never": as the ceiling, the
/// TTL alone decides when to look again. It once overflowed an `Instant`
/// addition after the first look-up: the task died before applying any
/// set, and `stats().discovery` showed nothing wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_ceiling_of_duration_max_follows_the_ttl() {
    let dns = DnsServer::start("test.").await;
    let (port, _backends) = backends_on(&[2, 3]).await;
    dns.set_addresses("never.test.", &[ip(2)], TTL).await;
    let balancer = Balancer::builder().build().unwrap();
    balancer
        .discover(
            DnsSource::addresses("never.test.", port)
                .name_server(dns.addr)
                .refresh_between(Duration::from_millis(200), Duration::MAX),
        )
        .unwrap();
    within(Duration::from_secs(5), "first set", || {
        sorted_urls(&balancer) == [url(2, port)]
    })
    .await;
    // The record changes: the next look-up comes at the TTL (1 s).
    dns.set_addresses("never.test.", &[ip(3)], TTL).await;
    let took = within(Duration::from_secs(5), "the changed record", || {
        sorted_urls(&balancer) == [url(3, port)]
    })
    .await;
    let discovery = balancer.stats().discovery.unwrap();
    assert_eq!(discovery.errors, 0, "{discovery:?}");
    assert!(!discovery.ended);
    assert!(discovery.refreshes >= 2);
    println!("refresh ceiling Duration::MAX: the set followed a record change after {took:?} (TTL {TTL} s)");
}

/// A floor of `Duration::MAX` means "look up once, never again": the first
/// set is applied and the task lives on, waiting, without a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_floor_of_duration_max_looks_up_once_and_waits() {
    let dns = DnsServer::start("test.").await;
    let (port, _backends) = backends_on(&[4]).await;
    dns.set_addresses("once.test.", &[ip(4)], TTL).await;
    let balancer = Balancer::builder().build().unwrap();
    balancer
        .discover(
            DnsSource::addresses("once.test.", port)
                .name_server(dns.addr)
                .refresh_between(Duration::MAX, Duration::MAX),
        )
        .unwrap();
    within(Duration::from_secs(5), "first set", || {
        sorted_urls(&balancer) == [url(4, port)]
    })
    .await;
    let client = client(&balancer);
    assert_eq!(send(&client, "/").await.unwrap(), "4");
    let discovery = balancer.stats().discovery.unwrap();
    assert_eq!(
        (discovery.refreshes, discovery.errors, discovery.ended),
        (1, 0, false),
        "{discovery:?}"
    );
}

/// A service waits for DNS's first answer instead of failing its first
/// requests; a name that does not resolve ends the wait at its limit with
/// the failed look-up's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_resolves_after_the_first_answer_and_times_out_with_the_look_up_error() {
    let dns = DnsServer::start("test.").await;
    let (port, _backends) = backends_on(&[2, 3]).await;
    dns.set_addresses("ready.test.", &[ip(2), ip(3)], TTL).await;
    let balancer = Balancer::builder().build().unwrap();
    let started = Instant::now();
    balancer
        .discover(
            DnsSource::addresses("ready.test.", port)
                .name_server(dns.addr)
                .refresh_between(Duration::from_millis(200), Duration::from_secs(2)),
        )
        .unwrap()
        .ready_within(Duration::from_secs(5))
        .await
        .expect("the first answer is applied");
    let took = started.elapsed();
    // No polling: the first request after `ready` has somewhere to go.
    assert_eq!(sorted_urls(&balancer), [url(2, port), url(3, port)]);
    let client = client(&balancer);
    send(&client, "/").await.expect("served at once");

    let missing = Balancer::builder().build().unwrap();
    let started = Instant::now();
    let waited = missing
        .discover(
            DnsSource::addresses("missing.test.", port)
                .name_server(dns.addr)
                .refresh_between(Duration::from_millis(200), Duration::from_secs(2)),
        )
        .unwrap()
        .ready_within(Duration::from_secs(1))
        .await;
    let Err(Error::DiscoveryNotReady { reason, last_error }) = waited else {
        panic!("the name does not resolve: {waited:?}");
    };
    assert_eq!(reason, NotReadyReason::TimedOut(Duration::from_secs(1)));
    let last_error = last_error.expect("the look-up's error");
    assert!(
        last_error.contains("missing.test"),
        "the error names the name: {last_error}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    println!("ready after {took:?}; a missing name: {last_error}");
}

/// What one look-up costs the name server: A and AAAA for each name by
/// default, A only with `ipv4_only`, AAAA only with `ipv6_only`; an SRV
/// look-up adds its own query and one per target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_look_up_asks_the_documented_queries_and_ipv4_only_asks_only_a_records() {
    let dns = DnsServer::start("test.").await;
    for name in [
        "both.test.",
        "four.test.",
        "six.test.",
        "t1.test.",
        "t2.test.",
    ] {
        dns.set_addresses(name, &[ip(1)], TTL).await;
    }
    let backends = backends(2).await;
    let ports: Vec<u16> = backends.iter().map(|b| b.address().port()).collect();
    for srv in ["_http._tcp.srv.test.", "_http._tcp.srv4.test."] {
        dns.set_service(
            srv,
            &[(10, 1, ports[0], "t1.test."), (10, 1, ports[1], "t2.test.")],
            TTL,
        )
        .await;
    }
    // Look up once, never again: each balancer's queries are one look-up's.
    let once = |source: DnsSource| {
        source
            .name_server(dns.addr)
            .refresh_between(Duration::MAX, Duration::MAX)
    };
    let sources = [
        once(DnsSource::addresses("both.test.", 80)),
        once(DnsSource::addresses("four.test.", 80).ipv4_only()),
        once(DnsSource::addresses("six.test.", 80).ipv6_only()),
        once(DnsSource::service("_http._tcp.srv.test.")),
        once(DnsSource::service("_http._tcp.srv4.test.").ipv4_only()),
    ];
    let mut balancers = Vec::new();
    for source in sources {
        let balancer = Balancer::builder().build().unwrap();
        let discovery = balancer.discover(source).unwrap();
        balancers.push((balancer, discovery));
    }
    for (_, discovery) in &balancers[..2] {
        discovery
            .ready_within(Duration::from_secs(5))
            .await
            .unwrap();
    }
    // The IPv6-only source finds no address (the zone has none): a failed
    // look-up, counted.
    within(Duration::from_secs(5), "the AAAA-only look-up", || {
        balancers[2]
            .0
            .stats()
            .discovery
            .is_some_and(|d| d.errors == 1)
    })
    .await;
    for (_, discovery) in &balancers[3..] {
        discovery
            .ready_within(Duration::from_secs(5))
            .await
            .unwrap();
    }
    let sorted = |name: &str| {
        let mut asked = dns.queries_for(name);
        asked.sort();
        asked
    };
    assert_eq!(sorted("both.test."), ["A", "AAAA"]);
    assert_eq!(sorted("four.test."), ["A"]);
    assert_eq!(sorted("six.test."), ["AAAA"]);
    assert_eq!(sorted("_http._tcp.srv.test."), ["SRV"]);
    // Both SRV sources asked for the two targets: 2 × 2 and 2 × 1.
    assert_eq!(sorted("t1.test."), ["A", "A", "AAAA"]);
    assert_eq!(sorted("t2.test."), ["A", "A", "AAAA"]);
    assert_eq!(sorted("_http._tcp.srv4.test."), ["SRV"]);
}

/// A stopped name server is noticed after the query timeout × (retries +
/// 1): with 300 ms and one retry, after 0.6 s (the defaults, 2 s and two
/// retries: 6.0 s, measured the same way). `ready_within` reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_name_server_is_noticed_after_the_query_timeout_times_the_tries() {
    let mut dns = DnsServer::start("test.").await;
    dns.stop().await;
    let balancer = Balancer::builder().build().unwrap();
    let started = Instant::now();
    let discovery = balancer
        .discover(
            DnsSource::addresses("stopped.test.", 80)
                .name_server(dns.addr)
                .query_timeout(Duration::from_millis(300), 1),
        )
        .unwrap();
    within(Duration::from_secs(3), "the failed look-up", || {
        balancer.stats().discovery.is_some_and(|d| d.errors >= 1)
    })
    .await;
    let noticed = started.elapsed();
    assert!(
        noticed >= Duration::from_millis(550) && noticed < Duration::from_millis(1500),
        "noticed after {noticed:?}"
    );
    let waited = discovery.ready_within(Duration::from_millis(100)).await;
    let Err(Error::DiscoveryNotReady { last_error, .. }) = waited else {
        panic!("no set: {waited:?}");
    };
    assert_eq!(
        last_error.as_deref(),
        Some("source error: request timed out")
    );
    println!("a stopped name server noticed after {noticed:?} (query timeout 300 ms, 1 retry)");
}
