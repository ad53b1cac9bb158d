//! Published ports (`-p HOST:CONTAINER`): a userland TCP proxy in the container's shim.
//!
//! Docker publishes ports with iptables DNAT plus `docker-proxy` for traffic to 127.0.0.1;
//! Shoal uses the proxy alone. The shim binds `0.0.0.0:HOST` before the container starts (so a
//! port in use is a clear error at `run`), and for each accepted connection opens one to
//! `container-ip:CONTAINER` and copies both ways on two threads until each side closes. The
//! listener lives in the shim, so it survives agent restarts and dies with the container.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// Serves `listener`, forwarding each connection to `target`.
pub fn spawn(listener: TcpListener, target: SocketAddr) {
    std::thread::spawn(move || {
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
    });
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
