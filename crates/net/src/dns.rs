//! The DNS server containers use, on the bridge address (port 53, UDP and TCP).
//!
//! Built on `hickory-server`: a [`RequestHandler`] answers the cluster's names from an
//! in-memory table that the network actor swaps whole on every change (one lock, no zone, no
//! serial), and hands every other name to a `Catalog` with a forwarding zone for the root,
//! which asks the host's resolvers (and caches). Answers come from the local view, never from a
//! query to another peer:
//! - `NAME` → the service's virtual address;
//! - `tasks.NAME` → the addresses of its healthy, running replicas (every peer's);
//! - a container's name → its address (this peer's containers and those other peers publish).
//!
//! The cluster's names are answered with TTL 0, so a replica that stops is gone from the next
//! lookup. AAAA and other types of a known name get an empty answer (no waiting for IPv6),
//! unknown names go upstream.

use hickory_proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType, rdata::A};
use hickory_resolver::config::{NameServerConfig, ResolverOpts};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::forwarder::{ForwardConfig, ForwardZoneHandler};
use hickory_server::zone_handler::{Catalog, MessageResponseBuilder, ZoneHandler};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The names the server answers itself.
pub type Names = HashMap<LowerName, Vec<Ipv4Addr>>;

/// Builds the table: services (`NAME`, `tasks.NAME`) first, then container names that no
/// service takes.
pub fn names<'a>(
    services: impl IntoIterator<Item = &'a crate::ServiceNet>,
    containers: impl IntoIterator<Item = (&'a String, &'a Ipv4Addr)>,
) -> Names {
    let mut out = Names::new();
    let lower = |n: &str| Name::from_ascii(format!("{n}.")).ok().map(LowerName::from);
    for s in services {
        if let (Some(n), Some(t)) = (lower(&s.name), lower(&format!("tasks.{}", s.name))) {
            out.insert(n, vec![s.vip]);
            out.insert(t, s.backends.clone());
        }
    }
    for (name, ip) in containers {
        if let Some(n) = lower(name) {
            out.entry(n).or_insert_with(|| vec![*ip]);
        }
    }
    out
}

struct Handler {
    names: Arc<RwLock<Arc<Names>>>,
    upstream: Catalog,
}

fn failed(request: &Request) -> ResponseInfo {
    let mut md = Metadata::response_from_request(&request.metadata);
    md.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header { metadata: md, counts: HeaderCounts::default() })
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut response: R) -> ResponseInfo {
        let Ok(info) = request.request_info() else {
            return self.upstream.handle_request::<R, T>(request, response).await;
        };
        let qname = info.query.name().clone();
        let found = {
            let table = self.names.read().unwrap_or_else(|e| e.into_inner()).clone();
            table.get(&qname).cloned()
        };
        let Some(ips) = found else {
            return self.upstream.handle_request::<R, T>(request, response).await;
        };
        let mut md = Metadata::response_from_request(&request.metadata);
        md.authoritative = true;
        md.recursion_available = true;
        let records: Vec<Record> = if info.query.query_type() == RecordType::A {
            ips.iter().map(|ip| Record::from_rdata(Name::from(qname.clone()), 0, RData::A(A(*ip)))).collect()
        } else {
            Vec::new()
        };
        let resp = MessageResponseBuilder::from_message_request(request).build(md, records.iter(), [], [], []);
        response.send_response(resp).await.unwrap_or_else(|_| failed(request))
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The address could not be bound.
    #[error("cannot serve DNS on {addr}: {source}")]
    Bind {
        /// Where.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A running server.
pub struct DnsServer {
    names: Arc<RwLock<Arc<Names>>>,
    server: Server<Handler>,
    addr: SocketAddr,
}

impl DnsServer {
    /// Serves on `addr`, forwarding other names to `upstreams` (none: they get REFUSED).
    pub async fn start(addr: SocketAddr, upstreams: Vec<IpAddr>) -> Result<DnsServer, DnsError> {
        let names = Arc::new(RwLock::new(Arc::new(Names::new())));
        let mut upstream = Catalog::new();
        if !upstreams.is_empty() {
            let mut options = ResolverOpts::default();
            // A dead upstream must not hold a container's lookup for 10 s (5 s × 2 attempts).
            options.timeout = Duration::from_millis(1500);
            options.attempts = 2;
            let cfg = ForwardConfig {
                name_servers: upstreams.into_iter().map(NameServerConfig::udp_and_tcp).collect(),
                options: Some(options),
            };
            match ForwardZoneHandler::builder_tokio(cfg).build() {
                Ok(fwd) => upstream.upsert(LowerName::from(Name::root()), vec![Arc::new(fwd) as Arc<dyn ZoneHandler>]),
                Err(e) => tracing::warn!(err = %e, "cannot forward DNS queries to the host's resolvers"),
            }
        }
        let handler = Handler { names: names.clone(), upstream };
        let bind = |e| DnsError::Bind { addr, source: e };
        let udp = tokio::net::UdpSocket::bind(addr).await.map_err(bind)?;
        // Port 0 (tests): TCP on the port UDP got.
        let addr = udp.local_addr().map_err(bind)?;
        let tcp = tokio::net::TcpListener::bind(addr).await.map_err(bind)?;
        let mut server = Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 64 << 10);
        Ok(DnsServer { names, server, addr })
    }

    /// Where it serves.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the table of names.
    pub fn set(&self, names: Names) {
        *self.names.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(names);
    }

    /// Stops serving.
    pub async fn stop(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.server.shutdown_gracefully()).await;
    }
}

/// The host's resolvers (`nameserver` lines of resolv.conf).
pub fn host_resolvers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, Query};

    async fn ask(server: SocketAddr, name: &str, typ: RecordType) -> Message {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), typ));
        m.metadata.recursion_desired = true;
        sock.send_to(&m.to_vec().unwrap(), server).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf)).await.unwrap().unwrap();
        Message::from_vec(&buf[..n]).unwrap()
    }

    fn a_records(m: &Message) -> Vec<Ipv4Addr> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn answers_services_tasks_and_containers_and_refuses_the_rest_without_upstream() {
        let server = DnsServer::start("127.0.0.1:0".parse().unwrap(), vec![]).await.unwrap();
        let addr = server.addr();
        let svc = crate::ServiceNet {
            name: "web".into(),
            vip: Ipv4Addr::new(198, 18, 240, 7),
            ports: vec![],
            backends: vec![Ipv4Addr::new(198, 19, 1, 2), Ipv4Addr::new(198, 19, 2, 2)],
        };
        let client = ("client".to_string(), Ipv4Addr::new(198, 19, 1, 9));
        let shadow = ("web".to_string(), Ipv4Addr::new(198, 19, 1, 10));
        server.set(names([&svc], [(&client.0, &client.1), (&shadow.0, &shadow.1)]));
        assert_eq!(a_records(&ask(addr, "web.", RecordType::A).await), vec![svc.vip], "a service beats a container");
        assert_eq!(a_records(&ask(addr, "tasks.web.", RecordType::A).await), svc.backends);
        assert_eq!(a_records(&ask(addr, "client.", RecordType::A).await), vec![client.1]);
        let aaaa = ask(addr, "web.", RecordType::AAAA).await;
        assert!(aaaa.answers.is_empty() && aaaa.metadata.response_code == ResponseCode::NoError);
        let other = ask(addr, "example.org.", RecordType::A).await;
        assert_eq!(other.metadata.response_code, ResponseCode::Refused);
        server.set(Names::new());
        assert_ne!(
            ask(addr, "web.", RecordType::A).await.metadata.response_code,
            ResponseCode::NoError,
            "gone at once"
        );
        server.stop().await;
    }

    #[test]
    fn reads_the_host_resolvers() {
        let conf = "search x\nnameserver 10.0.0.1\nnameserver  ::1\n# nameserver 1.1.1.1\n";
        assert_eq!(host_resolvers(conf), vec!["10.0.0.1".parse::<IpAddr>().unwrap(), "::1".parse().unwrap()]);
    }
}
