//! Loopback backends and a balanced client for the integration tests.
#![allow(dead_code)] // each test file uses its own part of this module

#[cfg(feature = "dns")]
pub mod dns_server;
#[cfg(feature = "etcd")]
pub mod etcd_server;
pub mod policies;

use std::ops::Deref;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use tower::{ServiceBuilder, ServiceExt};
use tower_lb::{BalanceService, Balancer, HttpToReqwest};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The header each test backend names itself in.
pub const BACKEND: &str = "x-backend";

/// A balanced client that takes `http::Request`s.
pub type Client = BalanceService<HttpToReqwest>;

/// A wiremock server that is dropped on a thread of its own.
///
/// wiremock checks a server's expectations when it is dropped, blocking on
/// a tokio lock. Dropped at the end of a test whose task has spent its
/// cooperative budget (many answers polled in one go), that lock answers
/// "not now" forever and the test hangs: seen in CI. A fresh thread has no
/// budget to spend. A failed expectation still fails the test.
pub struct Server(Option<MockServer>);

impl Server {
    /// Starts a wiremock server on 127.0.0.1.
    pub async fn start() -> Self {
        Self(Some(MockServer::start().await))
    }
}

impl From<MockServer> for Server {
    fn from(server: MockServer) -> Self {
        Self(Some(server))
    }
}

impl Deref for Server {
    type Target = MockServer;

    fn deref(&self) -> &MockServer {
        self.0.as_ref().expect("present until dropped")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let Some(server) = self.0.take() else { return };
        let verified = std::thread::spawn(move || drop(server)).join();
        if let Err(failure) = verified {
            if !std::thread::panicking() {
                std::panic::resume_unwind(failure);
            }
        }
    }
}

/// A loopback port that refuses every connection for as long as this guard
/// lives: the one helper for a refusing endpoint.
///
/// The socket is bound but never listens, so a connect to it is refused
/// (Linux answers a SYN to a bound, non-listening port with a reset), and
/// no other test's server can take the port meanwhile: the socket is bound
/// without `SO_REUSEADDR`, so even a server that sets it (std's and tokio's
/// listeners do) cannot bind there. Binding port 0 and dropping the
/// listener, as tests once did, freed the port for the next server to take,
/// and a "refusing" endpoint then answered (seen).
pub struct RefusingPort {
    socket: tokio::net::TcpSocket,
    /// The address that refuses.
    pub addr: std::net::SocketAddr,
    /// `http://` and the address.
    pub url: String,
}

impl RefusingPort {
    /// Reserves a free port on 127.0.0.1 that refuses connections.
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        socket
            .bind(std::net::SocketAddr::from((
                std::net::Ipv4Addr::LOCALHOST,
                0,
            )))
            .expect("a free loopback port");
        let addr = socket.local_addr().expect("a bound socket's address");
        RefusingPort {
            socket,
            addr,
            url: format!("http://{addr}"),
        }
    }

    /// Reserves `addr` (a loopback address and port) to refuse connections,
    /// for an address that must share a port with other servers (A records
    /// carry no port). Fails if the address is taken.
    pub fn at(addr: std::net::SocketAddr) -> std::io::Result<Self> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(addr)?;
        Ok(RefusingPort {
            socket,
            addr,
            url: format!("http://{addr}"),
        })
    }

    /// Starts listening on the port, for a server that comes up there: the
    /// port is never free in between. Needs a tokio runtime.
    pub fn listen(self) -> std::net::TcpListener {
        let listener = self.socket.listen(1024).expect("listening on the port");
        listener.into_std().expect("a std listener")
    }
}

/// Starts `n` wiremock servers on 127.0.0.1 answering 200 to everything,
/// each naming itself ("a", "b", ...) in the `x-backend` header.
pub async fn backends(n: usize) -> Vec<Server> {
    let mut servers = Vec::with_capacity(n);
    for i in 0..n {
        servers.push(backend(&name(i), ResponseTemplate::new(200)).await);
    }
    servers
}

/// One wiremock server answering `template` (plus its name) to everything.
pub async fn backend(name: &str, template: ResponseTemplate) -> Server {
    let server = Server::start().await;
    Mock::given(any())
        .respond_with(template.insert_header(BACKEND, name))
        .mount(&server)
        .await;
    server
}

/// "a" for 0, "b" for 1, ...
pub fn name(i: usize) -> String {
    char::from(b'a' + i as u8).to_string()
}

/// A balancer over `servers`, each with weight 1, using `policy`.
pub fn balancer_over(servers: &[Server], policy: impl Into<tower_lb::Policy>) -> Balancer {
    servers
        .iter()
        .fold(Balancer::builder(), |b, s| b.endpoint(s.uri()))
        .policy(policy)
        .build()
        .expect("a valid test balancer")
}

/// A balanced reqwest client over `balancer`.
pub fn client(balancer: &Balancer) -> Client {
    ServiceBuilder::new()
        .layer(balancer.layer())
        .service(HttpToReqwest::new(plain_reqwest()))
}

/// A reqwest client that sets no timer of its own (no idle-connection
/// timeout), so that a test on tokio's paused clock sees time move only
/// when it advances it: with a pending timer, a paused runtime waiting for
/// a loopback answer would jump to it.
pub fn plain_reqwest() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_idle_timeout(None)
        .build()
        .expect("a reqwest client")
}

/// A GET for `path` with an empty body.
pub fn get(path: &str) -> http::Request<reqwest::Body> {
    http::Request::get(path)
        .body(reqwest::Body::from(""))
        .expect("a valid test request")
}

/// Sends one GET and returns the name of the backend that answered.
pub async fn send(client: &Client, path: &str) -> Result<String, tower_lb::Error> {
    let response = client.clone().oneshot(get(path)).await?;
    Ok(backend_name(&response))
}

pub fn backend_name(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(BACKEND)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned()
}

/// Sends `count` GETs, at most `concurrency` at a time, and returns each
/// result in completion order.
pub async fn send_many(
    client: &Client,
    count: usize,
    concurrency: usize,
) -> Vec<Result<String, tower_lb::Error>> {
    let results = stream::iter(0..count)
        .map(|i| {
            let client = client.clone();
            async move { send(&client, &format!("/r/{i}")).await }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    // Polling many answers in one go can use up the task's tokio budget; a
    // wiremock server dropped then spins in its drop-time verification
    // (its lock keeps answering "out of budget" to a nested executor).
    // Yielding once gives the task a fresh budget.
    tokio::task::yield_now().await;
    results
}

/// Requests a wiremock server has received.
pub async fn received(server: &Server) -> usize {
    server
        .received_requests()
        .await
        .expect("request recording is on")
        .len()
}

/// Waits until `check` holds, for at most five seconds.
pub async fn eventually(mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached within five seconds");
}

/// Polls `check` every 10 ms until it holds, on the real clock (for tests
/// against real servers); panics after `limit`. Returns how long it took.
pub async fn within(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = std::time::Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

/// The canonical URLs of the balancer's endpoints, sorted.
pub fn sorted_urls(balancer: &Balancer) -> Vec<String> {
    let mut urls: Vec<String> = balancer
        .stats()
        .endpoints
        .into_iter()
        .map(|e| e.url)
        .collect();
    urls.sort();
    urls
}

/// Asserts that every counter of every endpoint has settled: nothing in
/// flight, and every request counted exactly once as an outcome.
pub fn assert_settled(balancer: &Balancer) {
    for e in balancer.stats().endpoints {
        assert_eq!(e.in_flight, 0, "{} still has requests in flight", e.url);
        assert_eq!(
            e.requests,
            e.successes + e.failures.total() + e.cancelled + e.client_errors + e.overloaded,
            "{}: requests and outcomes disagree: {e:?}",
            e.url
        );
    }
}

/// Holds tokio's paused clock still while it lives: the clock then moves
/// only by `tokio::time::advance`, never on its own while the test waits
/// for a real server.
///
/// Under `start_paused`, tokio moves the clock to the next timer whenever
/// the runtime has nothing to do, and waiting for a server on another
/// thread (wiremock's) is nothing to do: with a balancer's sweeper waiting
/// for an ejection to end or for the next interval, a request to such a
/// server would jump the clock there. A running `spawn_blocking` task
/// stops that (tokio's rule on a current-thread runtime: the blocking task
/// may be about to wake something); this guard keeps one running.
pub struct ClockHold(#[allow(dead_code)] std::sync::mpsc::Sender<()>);

/// Holds the paused clock still until the guard is dropped.
pub fn hold_clock() -> ClockHold {
    let (release, released) = std::sync::mpsc::channel::<()>();
    tokio::task::spawn_blocking(move || {
        let _ = released.recv();
    });
    ClockHold(release)
}
