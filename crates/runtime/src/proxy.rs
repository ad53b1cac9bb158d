//! Published ports of a container (`-p [IP:]HOST:CONTAINER[/udp]`): userland TCP and UDP
//! proxies in the container's shim.
//!
//! Docker publishes ports with iptables DNAT plus `docker-proxy` for traffic to 127.0.0.1;
//! a plain container in Shoal uses the proxy alone (a service's published ports go through
//! the kernel instead: the routing mesh of `shoal_net`). The shim binds `IP:HOST` (every
//! address when no IP is given) before the container starts, so a port in use is a clear error
//! at `run`. TCP: each accepted connection gets one to `container-ip:CONTAINER` and both ways
//! are copied on two threads until each side closes. UDP: each client address gets its own
//! socket connected to the container, whose replies go back to that client; a flow idle for
//! [`UDP_IDLE`] is forgotten, and at most [`UDP_FLOWS`] are kept. The listeners live in the
//! shim, so they survive agent restarts and die with the container.

use shoal_types::{PortMapping, Protocol};
use std::collections::HashMap;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A UDP flow without traffic for this long is forgotten.
pub const UDP_IDLE: Duration = Duration::from_secs(90);
/// At most this many UDP clients at once per published port.
pub const UDP_FLOWS: usize = 1024;

/// A bound published port.
#[derive(Debug)]
pub enum Listener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A UDP socket.
    Udp(UdpSocket),
}

/// Binds the host side of `p`.
pub fn bind(p: &PortMapping) -> std::io::Result<Listener> {
    let addr = SocketAddr::from((p.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED), p.host_port));
    Ok(match p.protocol {
        Protocol::Tcp => Listener::Tcp(TcpListener::bind(addr)?),
        Protocol::Udp => Listener::Udp(UdpSocket::bind(addr)?),
    })
}

/// Whether two mappings want the same host port (same protocol and port, and the same
/// address or either on every address).
pub fn clash(a: &PortMapping, b: &PortMapping) -> bool {
    a.protocol == b.protocol
        && a.host_port == b.host_port
        && (a.host_ip.is_none() || b.host_ip.is_none() || a.host_ip == b.host_ip)
}

/// Serves `listener`, forwarding to `target`.
pub fn spawn(listener: Listener, target: SocketAddr) {
    match listener {
        Listener::Tcp(l) => {
            std::thread::spawn(move || serve_tcp(l, target));
        }
        Listener::Udp(s) => {
            std::thread::spawn(move || serve_udp(Arc::new(s), target));
        }
    }
}

fn serve_tcp(listener: TcpListener, target: SocketAddr) {
    for conn in listener.incoming() {
        match conn {
            Ok(client) => {
                std::thread::spawn(move || forward(client, target));
            }
            Err(e) => {
                tracing::debug!(?e, "accept failed on a published port");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn forward(client: TcpStream, target: SocketAddr) {
    let Ok(upstream) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else { return };
    let t = std::thread::spawn(move || copy(c2, u2));
    copy(upstream, client);
    let _ = t.join();
}

/// Copies until end of stream with a 256 KiB buffer (std's copy uses 8 KiB, which costs
/// several times the throughput here).
fn copy(mut from: TcpStream, mut to: TcpStream) {
    use std::io::{Read, Write};
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// One UDP client's socket towards the container and when it was last used.
struct Flow {
    upstream: Arc<UdpSocket>,
    last: Instant,
}

type Flows = Arc<Mutex<HashMap<SocketAddr, Flow>>>;

fn serve_udp(socket: Arc<UdpSocket>, target: SocketAddr) {
    let flows: Flows = Arc::new(Mutex::new(HashMap::new()));
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, client) = match socket.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!(?e, "receive failed on a published UDP port");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let upstream = {
            let mut map = flows.lock().unwrap_or_else(|e| e.into_inner());
            let full = map.len() >= UDP_FLOWS;
            match map.get_mut(&client) {
                Some(f) => {
                    f.last = Instant::now();
                    Some(f.upstream.clone())
                }
                None if full => None,
                None => match open_flow(target) {
                    Ok(up) => {
                        map.insert(client, Flow { upstream: up.clone(), last: Instant::now() });
                        let (socket, flows) = (socket.clone(), flows.clone());
                        let reader = up.clone();
                        std::thread::spawn(move || replies(reader, socket, client, flows));
                        Some(up)
                    }
                    Err(e) => {
                        tracing::debug!(?e, "cannot open a UDP flow to the container");
                        None
                    }
                },
            }
        };
        if let Some(up) = upstream {
            let _ = up.send(&buf[..n]);
        }
    }
}

fn open_flow(target: SocketAddr) -> std::io::Result<Arc<UdpSocket>> {
    let up = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    up.connect(target)?;
    up.set_read_timeout(Some(Duration::from_secs(1)))?;
    Ok(Arc::new(up))
}

/// Sends the container's replies on one flow back to its client until the flow is idle.
fn replies(up: Arc<UdpSocket>, socket: Arc<UdpSocket>, client: SocketAddr, flows: Flows) {
    let mut buf = vec![0u8; 65535];
    loop {
        match up.recv(&mut buf) {
            Ok(n) => {
                let _ = socket.send_to(&buf[..n], client);
                if let Some(f) = flows.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&client) {
                    f.last = Instant::now();
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                let mut map = flows.lock().unwrap_or_else(|e| e.into_inner());
                if map.get(&client).is_none_or(|f| f.last.elapsed() >= UDP_IDLE) {
                    map.remove(&client);
                    return;
                }
            }
            // ECONNREFUSED: nothing listens in the container (yet); keep the flow.
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clashes_need_the_same_protocol_port_and_address() {
        let any = PortMapping::tcp(8080, 80);
        let lo = PortMapping { host_ip: Some(Ipv4Addr::LOCALHOST), ..any };
        let other = PortMapping { host_ip: Some(Ipv4Addr::new(10, 0, 0, 1)), ..any };
        let udp = PortMapping { protocol: Protocol::Udp, ..any };
        assert!(clash(&any, &lo) && clash(&lo, &lo));
        assert!(!clash(&lo, &other) && !clash(&any, &udp));
        assert!(!clash(&any, &PortMapping::tcp(8081, 80)));
    }

    /// A UDP echo server behind the proxy answers each of two clients on its own flow, and a
    /// mapping on 127.0.0.1 is not reachable on another address.
    #[test]
    fn udp_flows_reach_the_target_and_come_back() {
        let echo = UdpSocket::bind("127.0.0.1:0").expect("echo");
        let target = echo.local_addr().expect("addr");
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = echo.recv_from(&mut buf) {
                let _ = echo.send_to(&buf[..n], from);
            }
        });
        let p = PortMapping { host_ip: Some(Ipv4Addr::LOCALHOST), protocol: Protocol::Udp, ..PortMapping::tcp(0, 1) };
        let Listener::Udp(sock) = bind(&p).expect("bind") else { panic!("udp") };
        let public = sock.local_addr().expect("addr");
        assert_eq!(public.ip(), Ipv4Addr::LOCALHOST);
        spawn(Listener::Udp(sock), target);
        for who in ["a", "b"] {
            let c = UdpSocket::bind("127.0.0.1:0").expect("client");
            c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            c.send_to(who.as_bytes(), public).expect("send");
            let mut buf = [0u8; 16];
            let (n, from) = c.recv_from(&mut buf).expect("reply");
            assert_eq!((&buf[..n], from), (who.as_bytes(), public));
        }
    }
}
