//! A real DNS server on 127.0.0.1 for the discovery tests and the DNS
//! example: hickory-server in process, serving one in-memory zone over UDP
//! and TCP on one port. Its records can be replaced while it runs, and it
//! can be stopped and started again on the same port.

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType, RrKey};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};

const SERIAL: u32 = 1;

/// The questions a server was asked: name and record type ("A", "AAAA",
/// "SRV"), in the order they came.
pub type Queries = Arc<Mutex<Vec<(String, String)>>>;

/// The zone's catalog, noting each question before answering it.
struct Counting {
    catalog: Catalog,
    queries: Queries,
}

// The trait is an `async_trait`: its method written out by hand, since
// the tests do not depend on that crate.
impl RequestHandler for Counting {
    fn handle_request<'this, 'request, 'call, R, T>(
        &'this self,
        request: &'request Request,
        response_handle: R,
    ) -> Pin<Box<dyn Future<Output = ResponseInfo> + Send + 'call>>
    where
        R: ResponseHandler + 'call,
        T: Time + 'call,
        'this: 'call,
        'request: 'call,
        Self: 'call,
    {
        if let Ok(info) = request.request_info() {
            let query = info.query.original();
            self.queries
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((query.name().to_string(), query.query_type().to_string()));
        }
        self.catalog
            .handle_request::<R, T>(request, response_handle)
    }
}

/// A DNS server for one zone (such as `test.`), on 127.0.0.1.
pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<InMemoryZoneHandler>,
    origin: Name,
    server: Option<Server<Counting>>,
    queries: Queries,
}

impl DnsServer {
    /// Starts a server for `origin` on a free port.
    pub async fn start(origin: &str) -> Self {
        let origin = Name::from_str(origin).expect("a valid zone name");
        let mut zone =
            InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        let soa = SOA::new(
            Name::from_str("ns.test.").unwrap(),
            Name::from_str("admin.test.").unwrap(),
            SERIAL,
            60,
            60,
            60,
            1,
        );
        zone.upsert_mut(
            Record::from_rdata(origin.clone(), 60, RData::SOA(soa)),
            SERIAL,
        );
        let mut server = DnsServer {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            zone: Arc::new(zone),
            origin,
            server: None,
            queries: Queries::default(),
        };
        server.listen().await;
        server
    }

    /// Serves on `self.addr` (a free port if it is 0): UDP and TCP.
    async fn listen(&mut self) {
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&self.origin), vec![self.zone.clone()]);
        let mut server = Server::new(Counting {
            catalog,
            queries: self.queries.clone(),
        });
        for _ in 0..50 {
            let Ok(udp) = UdpSocket::bind(self.addr).await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let addr = udp.local_addr().unwrap();
            match TcpListener::bind(addr).await {
                Ok(tcp) => {
                    server.register_socket(udp);
                    server.register_listener(tcp, Duration::from_secs(5), 16);
                    self.addr = addr;
                    self.server = Some(server);
                    return;
                }
                // The port is taken for TCP: try another (or wait, when
                // the port is fixed).
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        panic!("could not listen on {}", self.addr);
    }

    /// The questions asked of `name` so far (its record types, in order).
    #[allow(dead_code)] // the example does not count
    pub fn queries_for(&self, name: &str) -> Vec<String> {
        self.queries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(asked, _)| asked.eq_ignore_ascii_case(name))
            .map(|(_, record_type)| record_type.clone())
            .collect()
    }

    /// Stops answering (the port is closed).
    pub async fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.shutdown_gracefully().await;
        }
    }

    /// Answers again, on the same port, with the records it holds.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.listen().await;
    }

    /// Replaces the A records of `name` (relative to nothing: give the full
    /// name, `api.test.`).
    pub async fn set_addresses(&self, name: &str, ips: &[Ipv4Addr], ttl: u32) {
        let name = Name::from_str(name).expect("a valid name");
        let records = ips
            .iter()
            .map(|ip| Record::from_rdata(name.clone(), ttl, RData::A(A(*ip))))
            .collect();
        self.set(name, RecordType::A, ttl, records).await;
    }

    /// Replaces the AAAA records of `name` (the full name, `api.test.`).
    #[allow(dead_code)] // only the review probes serve IPv6
    pub async fn set_ipv6_addresses(&self, name: &str, ips: &[Ipv6Addr], ttl: u32) {
        let name = Name::from_str(name).expect("a valid name");
        let records = ips
            .iter()
            .map(|ip| Record::from_rdata(name.clone(), ttl, RData::AAAA(AAAA(*ip))))
            .collect();
        self.set(name, RecordType::AAAA, ttl, records).await;
    }

    /// Replaces the SRV records of `name`: `(priority, weight, port,
    /// target)` each.
    pub async fn set_service(&self, name: &str, records: &[(u16, u16, u16, &str)], ttl: u32) {
        let name = Name::from_str(name).expect("a valid name");
        let records = records
            .iter()
            .map(|(priority, weight, port, target)| {
                let target = Name::from_str(target).expect("a valid target");
                let srv = SRV::new(*priority, *weight, *port, target);
                Record::from_rdata(name.clone(), ttl, RData::SRV(srv))
            })
            .collect();
        self.set(name, RecordType::SRV, ttl, records).await;
    }

    async fn set(&self, name: Name, record_type: RecordType, ttl: u32, records: Vec<Record>) {
        let key = RrKey::new(LowerName::new(&name), record_type);
        let mut zone = self.zone.records_mut().await;
        if records.is_empty() {
            zone.remove(&key);
            return;
        }
        let mut set = RecordSet::with_ttl(name, record_type, ttl);
        set.set_records(records);
        zone.insert(key, Arc::new(set));
    }
}
