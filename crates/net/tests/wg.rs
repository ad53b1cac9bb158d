//! The encrypted transport between two network namespaces made here: packets cross only when
//! both devices hold the same pre-shared key (the cluster key's), even though each side was
//! told the other's public key; and a DF probe shows the tunnel's MTU.

use nix::sched::{CloneFlags, setns};
use shoal_net::PeerNet;
use shoal_net::wg::{WgConfig, WgDevice, public_key};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Two namespaces joined by a veth pair: `<tag>a` at 198.18.201.1, `<tag>b` at .2.
struct Pair {
    a: String,
    b: String,
}

impl Pair {
    fn new(tag: &str) -> Pair {
        let (a, b) = (format!("{tag}a"), format!("{tag}b"));
        for n in [&a, &b] {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
            ip(&["netns", "add", n]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
        }
        ip(&["-n", &a, "link", "add", "u0", "type", "veth", "peer", "name", "u0", "netns", &b]);
        for (n, addr) in [(&a, "198.18.201.1/24"), (&b, "198.18.201.2/24")] {
            ip(&["-n", n, "addr", "add", addr, "dev", "u0"]);
            ip(&["-n", n, "link", "set", "u0", "up"]);
        }
        Pair { a, b }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for n in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Runs `f` on a thread inside namespace `ns` (threads it starts stay there too).
fn inside<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns");
        setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("thread in netns")
}

const KEY_A: [u8; 32] = [7; 32];
const KEY_B: [u8; 32] = [9; 32];

/// Starts a device in `ns` holding container subnet 10.77.<n>.0/24 with the other side as
/// its peer, and gives it the address 10.77.<n>.1.
fn device(ns: &str, n: u8, private: [u8; 32], psk: [u8; 32], other: ([u8; 32], Ipv4Addr, u8)) -> WgDevice {
    let cfg = WgConfig { dev: "tw0".into(), port: 51820, private, psk: Some(psk), peer_prefix: 24 };
    let dev = inside(ns, move || WgDevice::start(cfg).expect("device"));
    dev.set_peers(&[PeerNet {
        id: format!("peer{}", other.2),
        name: String::new(),
        subnet: format!("10.77.{}.0/24", other.2).parse().expect("subnet"),
        underlay: other.1,
        port: 51820,
        wg_key: Some(public_key(&other.0)),
        epoch: 1,
    }]);
    ip(&["-n", ns, "addr", "add", &format!("10.77.{n}.1/32"), "dev", "tw0"]);
    ip(&["-n", ns, "link", "set", "tw0", "up"]);
    let (dst, src) = (format!("10.77.{}.0/24", other.2), format!("10.77.{n}.1"));
    ip(&["-n", ns, "route", "add", &dst, "dev", "tw0", "src", &src]);
    dev
}

/// Whether a TCP exchange from a to 10.77.2.1 in b works within 3 s.
fn exchange(pair: &Pair) -> bool {
    let listener = inside(&pair.b, || TcpListener::bind("10.77.2.1:7000").expect("listen"));
    let server = std::thread::spawn(move || {
        listener.set_nonblocking(false).ok();
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 5];
            if s.read_exact(&mut buf).is_ok() {
                let _ = s.write_all(&buf);
            }
        }
    });
    let ok = inside(&pair.a, || {
        let Ok(mut s) = TcpStream::connect_timeout(&"10.77.2.1:7000".parse().expect("addr"), Duration::from_secs(3))
        else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_secs(3))).ok();
        let mut buf = [0u8; 5];
        s.write_all(b"hello").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"hello"
    });
    if !ok {
        // Unblock the accept.
        let _ = inside(&pair.b, || TcpStream::connect("10.77.2.1:7000"));
    }
    let _ = server.join();
    ok
}

fn ping(ns: &str, size: usize) -> bool {
    let s = size.to_string();
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-M", "do", "-c", "1", "-W", "2", "-s", &s, "-I", "10.77.1.1", "10.77.2.1"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn only_holders_of_the_cluster_psk_get_through_and_the_mtu_is_whole() {
    let a_ip: Ipv4Addr = "198.18.201.1".parse().expect("ip");
    let b_ip: Ipv4Addr = "198.18.201.2".parse().expect("ip");

    // Same pre-shared key: the exchange works, and 1420-byte DF packets cross.
    let pair = Pair::new(&format!("swg{}", std::process::id() % 10000));
    let a = device(&pair.a, 1, KEY_A, [1; 32], (KEY_B, b_ip, 2));
    let b = device(&pair.b, 2, KEY_B, [1; 32], (KEY_A, a_ip, 1));
    assert!(exchange(&pair), "members with the same psk talk");
    assert!(a.stats().iter().all(|s| s.last_handshake.is_some() && s.rx_bytes > 0));
    assert!(ping(&pair.a, 1420 - 28), "a full-MTU DF packet crosses");
    assert!(!ping(&pair.a, 1420 - 27), "one byte more is refused locally");
    a.stop();
    b.stop();
    drop(pair);

    // Another key: b knows a's public key, but not the psk: no handshake, nothing through.
    let pair = Pair::new(&format!("swh{}", std::process::id() % 10000));
    let a = device(&pair.a, 1, KEY_A, [1; 32], (KEY_B, b_ip, 2));
    let b = device(&pair.b, 2, KEY_B, [2; 32], (KEY_A, a_ip, 1));
    assert!(!exchange(&pair), "a peer with another key got through");
    assert!(a.stats().iter().chain(b.stats().iter()).all(|s| s.last_handshake.is_none() && s.rx_bytes == 0));
    a.stop();
    b.stop();
}

/// The byte at `i` of the bulk stream: a pattern no run of zeros or shifted copy matches.
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(7) % 251) as u8
}

/// A bulk stream (TSO super-packets split, runs sent across reads, a super-packet's short last
/// packet padded) arrives whole and in order, and a stop wakes the data path at once.
#[test]
fn a_bulk_stream_arrives_whole_and_a_stop_is_prompt() {
    const BYTES: usize = 48 << 20;
    let a_ip: Ipv4Addr = "198.18.201.1".parse().expect("ip");
    let b_ip: Ipv4Addr = "198.18.201.2".parse().expect("ip");
    let pair = Pair::new(&format!("swb{}", std::process::id() % 10000));
    let a = device(&pair.a, 1, KEY_A, [1; 32], (KEY_B, b_ip, 2));
    let b = device(&pair.b, 2, KEY_B, [1; 32], (KEY_A, a_ip, 1));
    let listener = inside(&pair.b, || TcpListener::bind("10.77.2.1:7001").expect("listen"));
    let server = std::thread::spawn(move || -> Result<usize, String> {
        let (mut s, _) = listener.accept().map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut buf = vec![0u8; 1 << 16];
        let mut at = 0;
        loop {
            let n = s.read(&mut buf).map_err(|e| format!("after {at} bytes: {e}"))?;
            if n == 0 {
                return Ok(at);
            }
            if let Some(k) = (0..n).find(|&k| buf[k] != pattern(at + k)) {
                return Err(format!("byte {} differs", at + k));
            }
            at += n;
        }
    });
    inside(&pair.a, || {
        let mut s = TcpStream::connect_timeout(&"10.77.2.1:7001".parse().expect("addr"), Duration::from_secs(3))
            .expect("connect through the tunnel");
        let chunk: Vec<u8> = (0..BYTES).map(pattern).collect();
        s.write_all(&chunk).expect("send");
    });
    assert_eq!(server.join().expect("server"), Ok(BYTES), "the stream arrives whole");
    assert!(a.stats().iter().all(|s| s.tx_bytes >= BYTES as u64), "{:?}", a.stats());
    // Each stop: at once, not at the end of the data path's 500 ms wait (timers tick at 100 ms).
    for d in [a, b] {
        let t = std::time::Instant::now();
        d.stop();
        assert!(t.elapsed() < Duration::from_millis(450), "stopping took {:?}", t.elapsed());
    }
}
