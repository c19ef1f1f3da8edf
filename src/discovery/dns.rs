//! Endpoints from DNS: the A/AAAA records of a name with a fixed port, or
//! the SRV records of a service name (ports and weights from the records),
//! looked up again when the answer's TTL runs out.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::stream::{self, BoxStream, StreamExt};
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use tokio::time::Instant;

use super::{EndpointSource, RefreshHints};
use crate::clock::{deadline, doubled_up_to};
use crate::endpoint::{Endpoint, MAX_WEIGHT};
use crate::error::BoxError;

/// The shortest wait between two look-ups, by default.
pub(crate) const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(1);
/// The longest wait between two look-ups, by default.
pub(crate) const DEFAULT_MAX_REFRESH: Duration = Duration::from_secs(30);

/// How long one query waits for a name server's answer, by default.
pub(crate) const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How many times a failed query is retried, by default.
pub(crate) const DEFAULT_RETRIES: usize = 2;
/// The shortest wait for an answer a user can set.
const MIN_QUERY_TIMEOUT: Duration = Duration::from_millis(10);
/// The longest wait for an answer a user can set (a longer one would only
/// hide an outage, and hickory's timers add to it).
const MAX_QUERY_TIMEOUT: Duration = Duration::from_secs(3600);
/// The most retries a user can set.
const MAX_RETRIES: usize = 10;

/// What to look up.
#[derive(Clone, Debug)]
enum Query {
    /// A and AAAA records of `name`, each address with `port`.
    Addresses { name: String, port: u16 },
    /// SRV records of `name`: targets, ports and weights.
    Service { name: String },
}

/// Endpoints from DNS, for [`Balancer::discover`](crate::Balancer::discover)
/// (feature `dns`).
///
/// - [`DnsSource::addresses`]: every A and AAAA record of a name, each an
///   endpoint on the given port, weight 1.
/// - [`DnsSource::service`]: the SRV records of a name (as
///   `_http._tcp.api.internal`); each target's addresses on the record's
///   port, with the record's weight (0 counts as 1; weights above
///   [`MAX_WEIGHT`](crate::MAX_WEIGHT) are scaled down together, keeping
///   their ratios). Only the lowest
///   priority that has endpoints is used, as RFC 2782 says.
///
/// The name is looked up again when the answer's TTL runs out, but never
/// sooner than the minimum refresh (1 s by default: a TTL of 0 must not
/// make a busy loop, and a fleet of clients should not look up more than
/// once a second each; a look-up costs an A and an AAAA query, or one with
/// [`DnsSource::ipv4_only`], and an SRV look-up one more for the record
/// and as many for each target) nor later than the maximum (30 s by default: a long
/// TTL must not hide a change for minutes; gRPC's 30 s floor is the
/// complaint this answers). After a burst of connect failures (three since
/// the last look-up) the name is looked up again at once, if the minimum
/// refresh allows; and while an endpoint stays ejected after connect
/// failures (no more failures come from it to say the set is stale), it is
/// looked up again at the minimum, doubling up to the maximum, until the
/// address leaves the answer or comes back. A failed look-up, or one with
/// no records, keeps the last good set and is tried again after the
/// minimum refresh, doubling up to the maximum while it keeps failing.
///
/// The resolver reads the system's configuration (`/etc/resolv.conf`)
/// unless [`DnsSource::name_server`] names a server. Each query waits 2 s
/// for an answer and is retried twice, so a stopped server fails a look-up
/// after 6 s ([`DnsSource::query_timeout`] changes both); answers are not
/// cached between look-ups (the source keeps time by their TTLs itself).
///
/// ```no_run
/// use std::time::Duration;
/// use tower_lb::{Balancer, DnsSource};
///
/// # async fn run() -> Result<(), tower_lb::Error> {
/// let balancer = Balancer::builder().build()?;
/// balancer.discover(
///     DnsSource::addresses("api.internal", 8080)
///         .refresh_between(Duration::from_secs(2), Duration::from_secs(60)),
/// )?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct DnsSource {
    query: Query,
    https: bool,
    min_refresh: Duration,
    max_refresh: Duration,
    name_server: Option<SocketAddr>,
    families: LookupIpStrategy,
    query_timeout: Duration,
    retries: usize,
}

impl DnsSource {
    /// The A and AAAA records of `name`, each an endpoint on `port`.
    pub fn addresses(name: impl Into<String>, port: u16) -> Self {
        Self::new(Query::Addresses {
            name: name.into(),
            port,
        })
    }

    /// The SRV records of `name`: each target's addresses, on the record's
    /// port, with the record's weight.
    pub fn service(name: impl Into<String>) -> Self {
        Self::new(Query::Service { name: name.into() })
    }

    fn new(query: Query) -> Self {
        DnsSource {
            query,
            https: false,
            min_refresh: DEFAULT_MIN_REFRESH,
            max_refresh: DEFAULT_MAX_REFRESH,
            name_server: None,
            families: LookupIpStrategy::Ipv4AndIpv6,
            query_timeout: DEFAULT_QUERY_TIMEOUT,
            retries: DEFAULT_RETRIES,
        }
    }

    /// Asks for A records only (IPv4 addresses): one query per name looked
    /// up instead of two (A and AAAA, the default). For an SRV source, the
    /// targets' addresses.
    ///
    /// ```
    /// use tower_lb::DnsSource;
    ///
    /// // One query a look-up instead of two.
    /// let source = DnsSource::addresses("api.internal", 8080).ipv4_only();
    /// # drop(source);
    /// ```
    pub fn ipv4_only(mut self) -> Self {
        self.families = LookupIpStrategy::Ipv4Only;
        self
    }

    /// Asks for AAAA records only (IPv6 addresses): one query per name
    /// looked up instead of two.
    pub fn ipv6_only(mut self) -> Self {
        self.families = LookupIpStrategy::Ipv6Only;
        self
    }

    /// Each query waits `timeout` for an answer (default 2 s) and is tried
    /// again `retries` times (default 2) before the look-up fails: a
    /// stopped name server fails a look-up `timeout × (retries + 1)` after
    /// it starts (6 s by default: measured 6.0 s against a stopped server;
    /// 0.6 s with 300 ms and one retry). Meanwhile the last good set serves.
    ///
    /// Out-of-range values have a fixed meaning, never a panic: `timeout`
    /// is kept between 10 ms and 1 hour, `retries` at most 10.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_lb::DnsSource;
    ///
    /// // A local resolver that answers in microseconds: notice it gone in 1 s.
    /// let source = DnsSource::addresses("api.internal", 8080)
    ///     .query_timeout(Duration::from_millis(500), 1);
    /// # drop(source);
    /// ```
    pub fn query_timeout(mut self, timeout: Duration, retries: usize) -> Self {
        self.query_timeout = timeout.clamp(MIN_QUERY_TIMEOUT, MAX_QUERY_TIMEOUT);
        self.retries = retries.min(MAX_RETRIES);
        self
    }

    /// Endpoints are `https://` (default `http://`).
    pub fn https(mut self) -> Self {
        self.https = true;
        self
    }

    /// Waits between look-ups: the TTL, clamped to `[min, max]` (defaults
    /// 1 s and 30 s); after a failed look-up, `min` doubling up to `max`.
    ///
    /// Out-of-range values have a fixed meaning, never a panic:
    /// - `min` below 100 ms (zero included) is raised to 100 ms;
    /// - `max` below `min` is raised to `min` (a fixed wait of `min`);
    /// - `Duration::MAX` means never: as `max`, the TTL alone decides and
    ///   failures back off without a ceiling; as `min`, the name is looked
    ///   up once and never again (a burst of connect failures brings no
    ///   look-up either). A wait too long for the clock becomes one of
    ///   about 30 years.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_lb::DnsSource;
    ///
    /// // Follow the TTL however long it is; never sooner than every 5 s.
    /// let source = DnsSource::addresses("api.internal", 8080)
    ///     .refresh_between(Duration::from_secs(5), Duration::MAX);
    /// # drop(source);
    /// ```
    pub fn refresh_between(mut self, min: Duration, max: Duration) -> Self {
        self.min_refresh = min.max(Duration::from_millis(100));
        self.max_refresh = max.max(self.min_refresh);
        self
    }

    /// Asks this name server (UDP, then TCP) instead of the system's.
    pub fn name_server(mut self, server: SocketAddr) -> Self {
        self.name_server = Some(server);
        self
    }

    fn resolver(&self) -> Result<TokioResolver, BoxError> {
        let mut builder = match self.name_server {
            Some(server) => {
                let connection = |mut config: ConnectionConfig| {
                    config.port = server.port();
                    config
                };
                let name_server = NameServerConfig::new(
                    server.ip(),
                    true,
                    vec![
                        connection(ConnectionConfig::udp()),
                        connection(ConnectionConfig::tcp()),
                    ],
                );
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![name_server]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio()?,
        };
        let options = builder.options_mut();
        // The source keeps its own time by the answers' TTLs; a cache would
        // only answer a look-up brought forward by connect failures with
        // the stale set.
        options.cache_size = 0;
        options.ip_strategy = self.families;
        // A name server that is down should fail a look-up in seconds: the
        // last good set serves meanwhile.
        options.timeout = self.query_timeout;
        options.attempts = self.retries;
        Ok(builder.build()?)
    }

    fn url(&self, ip: IpAddr, port: u16) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", SocketAddr::new(ip, port))
    }

    /// Looks the name up once: the set and when the answer expires.
    async fn look_up(
        &self,
        resolver: &TokioResolver,
    ) -> Result<(Vec<Endpoint>, Instant), BoxError> {
        match &self.query {
            Query::Addresses { name, port } => {
                let answer = resolver.lookup_ip(name.as_str()).await?;
                let set = answer
                    .iter()
                    .map(|ip| Endpoint::new(self.url(ip, *port)))
                    .collect();
                Ok((set, Instant::from_std(answer.valid_until())))
            }
            Query::Service { name } => {
                let answer = resolver.srv_lookup(name.as_str()).await?;
                let mut expires = Instant::from_std(answer.valid_until());
                let mut records: Vec<_> = answer
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::SRV(srv) if !srv.target.is_root() => Some(srv.clone()),
                        _ => None,
                    })
                    .collect();
                records.sort_by_key(|srv| srv.priority);
                // SRV weights go up to 65,535, endpoint weights to
                // MAX_WEIGHT: scale them down together, keeping their ratios.
                let heaviest = records.iter().map(|srv| u32::from(srv.weight)).max();
                let scale = |weight: u16| srv_weight(weight, heaviest.unwrap_or(0));
                // The lowest priority whose targets resolve.
                let mut set = Vec::new();
                let mut priority = None;
                for srv in records {
                    if priority.is_some_and(|p| p != srv.priority) && !set.is_empty() {
                        break;
                    }
                    priority = Some(srv.priority);
                    let Ok(addresses) = resolver.lookup_ip(srv.target.clone()).await else {
                        continue;
                    };
                    expires = expires.min(Instant::from_std(addresses.valid_until()));
                    let weight = scale(srv.weight);
                    set.extend(
                        addresses
                            .iter()
                            .map(|ip| Endpoint::new(self.url(ip, srv.port)).with_weight(weight)),
                    );
                }
                Ok((set, expires))
            }
        }
    }
}

/// The endpoint weight of an SRV record's `weight`, when the heaviest
/// record of the answer weighs `heaviest`: the same number up to
/// [`MAX_WEIGHT`], else scaled so that the heaviest gets `MAX_WEIGHT`
/// (rounded up, so no record falls to 0); 0 counts as 1, since 0 would
/// drain the endpoint.
fn srv_weight(weight: u16, heaviest: u32) -> u32 {
    let weight = u32::from(weight.max(1));
    if heaviest <= MAX_WEIGHT {
        return weight;
    }
    // Both factors are below 2^16 and 2^14: no overflow in a u32.
    (weight * MAX_WEIGHT).div_ceil(heaviest).max(1)
}

/// When an answer that `expires` is looked up again: at its expiry, but
/// not before `earliest` nor after `latest` (if `latest` came before
/// `earliest`, at `earliest`: no panic, unlike `clamp`).
fn due_by_ttl(expires: Instant, earliest: Instant, latest: Instant) -> Instant {
    expires.min(latest).max(earliest)
}

/// The stream's state between look-ups.
struct Looking {
    source: DnsSource,
    resolver: Option<TokioResolver>,
    hints: RefreshHints,
    /// When the next look-up is due, and the earliest a hint may bring it.
    next: Option<(Instant, Instant)>,
    /// The wait after a failure, doubled while failures go on.
    backoff: Duration,
    /// While endpoints fail to connect: when to check again whether they
    /// still do, and look up if so.
    chase_at: Option<Instant>,
    /// The wait between those checks, doubled from the minimum up to the
    /// maximum while endpoints keep failing.
    chase_step: Duration,
}

/// What ended a wait for the next look-up.
enum Woken {
    /// The next look-up is due (its time, or a burst of failures).
    Due,
    /// Time to check whether endpoints still fail to connect.
    Chase,
}

impl Looking {
    /// Waits until the next look-up is due: its time, a burst of connect
    /// failures (not before the minimum after the last look-up), or, while
    /// an endpoint is ejected after connect failures, the next step of the
    /// chase.
    async fn wait(&mut self) -> bool {
        let Some((due, earliest)) = self.next else {
            return false;
        };
        loop {
            let chase_at = self.chase_at;
            let woken = tokio::select! {
                _ = tokio::time::sleep_until(due) => Woken::Due,
                _ = self.hints.connect_failures() => {
                    tokio::time::sleep_until(earliest).await;
                    return true;
                }
                _ = tokio::time::sleep_until(chase_at.unwrap_or(due)), if chase_at.is_some() => {
                    Woken::Chase
                }
            };
            match woken {
                Woken::Due => return false,
                Woken::Chase if self.hints.connect_failing() => return true,
                Woken::Chase => {
                    // Nothing fails any more (the address left the set, or
                    // came back): the TTL's schedule again.
                    self.chase_at = None;
                    self.chase_step = self.source.min_refresh;
                }
            }
        }
    }

    /// Waits until the next look-up is due, then looks up.
    async fn next_set(&mut self) -> Result<Vec<Endpoint>, BoxError> {
        let brought_forward = self.wait().await;
        self.hints.refreshed();
        let looked_at = Instant::now();
        let earliest = deadline(looked_at, self.source.min_refresh);
        let answer = match &self.resolver {
            Some(resolver) => self.source.look_up(resolver).await,
            None => match self.source.resolver() {
                Ok(resolver) => {
                    let answer = self.source.look_up(&resolver).await;
                    self.resolver = Some(resolver);
                    answer
                }
                Err(error) => Err(error),
            },
        };
        match answer {
            Ok((set, expires)) if !set.is_empty() => {
                self.backoff = self.source.min_refresh;
                let latest = deadline(looked_at, self.source.max_refresh);
                self.next = Some((due_by_ttl(expires, earliest, latest), earliest));
                // Connect failures brought this look-up (or endpoints still
                // fail): the answer may still list a dead address, and once
                // it is ejected no failure will come to say so. Look again
                // at the minimum, doubling, while that lasts.
                if brought_forward || self.hints.connect_failing() {
                    self.chase_at = Some(deadline(looked_at, self.chase_step));
                    self.chase_step = doubled_up_to(self.chase_step, self.source.max_refresh);
                } else {
                    self.chase_at = None;
                    self.chase_step = self.source.min_refresh;
                }
                Ok(set)
            }
            other => {
                let due = deadline(looked_at, self.backoff);
                self.backoff = doubled_up_to(self.backoff, self.source.max_refresh);
                self.next = Some((due, earliest));
                self.chase_at = None;
                other.map(|(set, _)| set)
            }
        }
    }
}

impl EndpointSource for DnsSource {
    fn into_sets(self, hints: RefreshHints) -> BoxStream<'static, Result<Vec<Endpoint>, BoxError>> {
        let looking = Looking {
            backoff: self.min_refresh,
            chase_at: None,
            chase_step: self.min_refresh,
            source: self,
            resolver: None,
            hints,
            next: None,
        };
        stream::unfold(looking, |mut looking| async move {
            let set = looking.next_set().await;
            Some((set, looking))
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srv_weights_above_the_maximum_are_scaled_down_keeping_their_ratios() {
        assert_eq!(srv_weight(0, 10), 1);
        assert_eq!(srv_weight(7, MAX_WEIGHT), 7);
        assert_eq!(srv_weight(u16::MAX, u32::from(u16::MAX)), MAX_WEIGHT);
        assert_eq!(srv_weight(20_000, 40_000), MAX_WEIGHT / 2);
        assert_eq!(srv_weight(1, 40_000), 1);
        assert_eq!(srv_weight(0, 40_000), 1);
    }

    #[test]
    fn absurd_query_timeouts_and_retries_get_their_documented_meaning() {
        let source = |timeout, retries| {
            let source = DnsSource::addresses("a.test", 80).query_timeout(timeout, retries);
            (source.query_timeout, source.retries)
        };
        assert_eq!(source(Duration::ZERO, 0), (MIN_QUERY_TIMEOUT, 0));
        assert_eq!(
            source(Duration::MAX, usize::MAX),
            (MAX_QUERY_TIMEOUT, MAX_RETRIES)
        );
        let families = DnsSource::addresses("a.test", 80).ipv6_only().ipv4_only();
        assert_eq!(families.families, LookupIpStrategy::Ipv4Only);
    }

    #[test]
    fn absurd_refresh_bounds_get_their_documented_meaning() {
        let source = |min, max| DnsSource::addresses("a.test", 80).refresh_between(min, max);
        let zero = source(Duration::ZERO, Duration::ZERO);
        assert_eq!(
            (zero.min_refresh, zero.max_refresh),
            (Duration::from_millis(100), Duration::from_millis(100))
        );
        let crossed = source(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(
            (crossed.min_refresh, crossed.max_refresh),
            (Duration::from_secs(5), Duration::from_secs(5))
        );
        let never = source(Duration::MAX, Duration::ZERO);
        assert_eq!(
            (never.min_refresh, never.max_refresh),
            (Duration::MAX, Duration::MAX)
        );
    }

    #[test]
    fn the_ttl_is_clamped_between_never_and_crossed_bounds_without_panicking() {
        let now = Instant::now();
        let never = deadline(now, Duration::MAX);
        let ttl = now + Duration::from_secs(300);
        let earliest = now + Duration::from_secs(1);
        // A ceiling of "never": the TTL decides.
        assert_eq!(due_by_ttl(ttl, earliest, never), ttl);
        // A floor of "never" too: never again.
        assert_eq!(due_by_ttl(ttl, never, never), never);
        // Crossed bounds: the floor wins.
        assert_eq!(due_by_ttl(ttl, never, earliest), never);
    }
}
