//! The `encrypted` transport: WireGuard in userspace on a TUN device, with our own batched data
//! path around boringtun's protocol state machine (`noise::Tunn`).
//!
//! ```text
//!  containers ─► bridge ─► route (peer subnet dev <bridge>wg) ─► TUN (TSO super-packets)
//!  data-path thread, taking turns between the two directions and waiting on both when idle:
//!     out: TUN read (split into MTU packets) ─► peer by destination subnet ─►
//!          Tunn::encapsulate into one buffer ─► UDP GSO sendmsg (one per peer run)
//!     in:  UDP GRO recvmsg (many datagrams) ─► peer by receiver index (handshakes: by
//!          the initiator's static key) ─► Tunn::decapsulate ─► source must be in the
//!          peer's subnet ─► send_multiple (GRO-coalesced) ─► TUN ─► bridge ─► container
//!  timer thread: Tunn::update_timers every 100 ms (handshakes, rekeys, keepalives)
//! ```
//!
//! Keys: each peer's static x25519 key lives in its data dir (`wg.key`, 0600) and its public
//! half is published in its signed peer record, so a key is attributable to the peer that
//! signed it. A pre-shared key derived from the cluster key is mixed into every handshake, so
//! only members complete one even if a public key were forged into a record. A peer accepts a
//! handshake only from a key some live member published.

mod path;
mod udp;

use crate::PeerNet;
use crate::ipam::Subnet;
use boringtun::noise::Tunn;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519::{PublicKey, StaticSecret};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// Handshakes per second accepted before cookies are demanded (boringtun's device uses 100).
const HANDSHAKE_LIMIT: u64 = 100;

/// The TUN device's name for `bridge`.
pub fn device_name(bridge: &str) -> String {
    format!("{}wg", &bridge[..bridge.len().min(13)])
}

/// This peer's static key: read from `path`, or made and saved (0600) on first use.
pub fn load_or_create_key(path: &Path) -> std::io::Result<[u8; 32]> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(text) = std::fs::read_to_string(path) {
        return crate::record::decode_key(text.trim()).ok_or_else(|| {
            std::io::Error::other(format!("{} is not a key; move it away to make a new one", path.display()))
        });
    }
    let bytes: [u8; 32] = rand::random();
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(crate::record::encode_key(&bytes).as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(bytes)
}

/// The public half of a static key.
pub fn public_key(private: &[u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(*private)).to_bytes()
}

/// How to start the device.
#[derive(Clone)]
pub struct WgConfig {
    /// TUN device name.
    pub dev: String,
    /// UDP port.
    pub port: u16,
    /// This peer's static private key.
    pub private: [u8; 32],
    /// The pre-shared key mixed into every handshake.
    pub psk: Option<[u8; 32]>,
    /// Prefix length of every peer's subnet (peers are found by `destination & mask`).
    pub peer_prefix: u8,
}

/// One remote peer of the device.
pub(crate) struct WgPeer {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) key: [u8; 32],
    pub(crate) subnet: Subnet,
    pub(crate) epoch: u64,
    /// Its local session index (boringtun shifts it left by 8 for each session).
    pub(crate) index: u32,
    pub(crate) endpoint: Mutex<SocketAddrV4>,
    pub(crate) tunn: Mutex<Tunn>,
    pub(crate) rx: AtomicU64,
    pub(crate) tx: AtomicU64,
}

impl WgPeer {
    pub(crate) fn endpoint(&self) -> SocketAddrV4 {
        *self.endpoint.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The peers, indexed three ways.
#[derive(Default)]
pub(crate) struct Table {
    /// By `subnet base` (destination & mask).
    pub(crate) by_net: HashMap<u32, Arc<WgPeer>>,
    /// By local session index (receiver index >> 8).
    pub(crate) by_index: HashMap<u32, Arc<WgPeer>>,
    /// By static public key.
    pub(crate) by_key: HashMap<[u8; 32], Arc<WgPeer>>,
    pub(crate) mask: u32,
}

impl Table {
    pub(crate) fn for_destination(&self, dst: Ipv4Addr) -> Option<&Arc<WgPeer>> {
        self.by_net.get(&(u32::from(dst) & self.mask))
    }
}

/// State shared by the data-path threads.
pub(crate) struct Shared {
    pub(crate) tun: tun_rs::SyncDevice,
    pub(crate) udp: UdpSocket,
    pub(crate) private: StaticSecret,
    pub(crate) public: PublicKey,
    pub(crate) limiter: Arc<RateLimiter>,
    pub(crate) peers: RwLock<Table>,
    pub(crate) stop: AtomicBool,
    /// Written to on stop; the data path waits on the other end beside the device and socket.
    pub(crate) wake: (std::os::unix::net::UnixDatagram, std::os::unix::net::UnixDatagram),
}

/// What `shoal network` shows about one peer of the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPeerStats {
    /// Peer id.
    pub id: String,
    /// Where its packets go.
    pub endpoint: SocketAddrV4,
    /// Time since the last completed handshake.
    pub last_handshake: Option<Duration>,
    /// Bytes received from it (decrypted).
    pub rx_bytes: u64,
    /// Bytes sent to it (before encryption).
    pub tx_bytes: u64,
}

/// Why the device could not start.
#[derive(Debug, thiserror::Error)]
pub enum WgError {
    /// The TUN device.
    #[error("cannot create the TUN device {dev}: {source} (is /dev/net/tun there and the agent root?)")]
    Tun {
        /// Its name.
        dev: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The UDP port.
    #[error("cannot listen on UDP port {port} for the encrypted transport: {source}; pick another with --wg-port")]
    Udp {
        /// The port.
        port: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another part of the data path (a system call that should not fail).
    #[error("cannot set up the encrypted transport ({what}): {source}")]
    Setup {
        /// Which part.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A running device.
pub struct WgDevice {
    shared: Arc<Shared>,
    config: WgConfig,
    next_index: AtomicU32,
    threads: Vec<JoinHandle<()>>,
}

impl WgDevice {
    /// Creates the TUN device and the socket and starts the data path.
    pub fn start(config: WgConfig) -> Result<WgDevice, WgError> {
        let tun = tun_rs::DeviceBuilder::new()
            .name(&config.dev)
            .mtu(u16::try_from(crate::Transport::Encrypted.mtu()).unwrap_or(1420))
            .offload(true)
            .packet_information(false)
            .build_sync()
            .map_err(|source| WgError::Tun { dev: config.dev.clone(), source })?;
        let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, config.port))
            .map_err(|source| WgError::Udp { port: config.port, source })?;
        udp::size_buffers(&udp);
        // Never block the one data-path thread on a full send buffer (7 MiB already queued):
        // such a datagram is dropped, as a full NIC queue would, and receiving goes on.
        udp.set_nonblocking(true).map_err(|source| WgError::Setup { what: "a non-blocking socket", source })?;
        if !udp::enable_gro(&udp) {
            tracing::debug!("UDP GRO is not available; datagrams are received one by one");
        }
        let private = StaticSecret::from(config.private);
        let public = PublicKey::from(&private);
        let wake = std::os::unix::net::UnixDatagram::pair()
            .map_err(|source| WgError::Setup { what: "the wake-up socket pair", source })?;
        // Read without blocking: the data path waits on the device and the socket together.
        tun.set_nonblocking(true).map_err(|source| WgError::Setup { what: "a non-blocking TUN device", source })?;
        let mask = if config.peer_prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(config.peer_prefix)) };
        let shared = Arc::new(Shared {
            tun,
            udp,
            limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_LIMIT)),
            private,
            public,
            peers: RwLock::new(Table { mask, ..Table::default() }),
            stop: AtomicBool::new(false),
            wake,
        });
        let mut threads = Vec::new();
        for (name, run) in [("shoal-wg", path::run as fn(Arc<Shared>)), ("shoal-wg-timers", path::timers)] {
            let s = shared.clone();
            if let Ok(t) = std::thread::Builder::new().name(name.into()).spawn(move || run(s)) {
                threads.push(t);
            }
        }
        Ok(WgDevice { shared, config, next_index: AtomicU32::new(1), threads })
    }

    /// The TUN device's name.
    pub fn dev(&self) -> &str {
        &self.config.dev
    }

    /// Makes the device's peers `peers` (those with a key): new ones are added, gone ones
    /// removed, a peer whose key or epoch (a restart) changed gets a fresh session at once.
    pub fn set_peers(&self, peers: &[PeerNet]) {
        let mut table = self.shared.peers.write().unwrap_or_else(|e| e.into_inner());
        let old: HashMap<String, Arc<WgPeer>> = table.by_key.values().map(|p| (p.id.clone(), p.clone())).collect();
        let mut fresh = Table { mask: table.mask, ..Table::default() };
        for p in peers {
            let Some(key) = p.wg_key else { continue };
            let endpoint = SocketAddrV4::new(p.underlay, p.port);
            let keep = old.get(&p.id).filter(|o| o.key == key && o.epoch == p.epoch && o.subnet == p.subnet);
            let peer = match keep {
                Some(o) => {
                    *o.endpoint.lock().unwrap_or_else(|e| e.into_inner()) = endpoint;
                    o.clone()
                }
                None => {
                    // 24 bits of session index space; wrapping after 16 million peers is fine.
                    let index = self.next_index.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
                    let tunn = Tunn::new(
                        self.shared.private.clone(),
                        PublicKey::from(key),
                        self.config.psk,
                        None,
                        index,
                        Some(self.shared.limiter.clone()),
                    );
                    Arc::new(WgPeer {
                        id: p.id.clone(),
                        name: p.name.clone(),
                        key,
                        subnet: p.subnet,
                        epoch: p.epoch,
                        endpoint: Mutex::new(endpoint),
                        tunn: Mutex::new(tunn),
                        rx: AtomicU64::new(0),
                        tx: AtomicU64::new(0),
                        index,
                    })
                }
            };
            fresh.by_net.insert(u32::from(p.subnet.base) & fresh.mask, peer.clone());
            fresh.by_index.insert(peer.index, peer.clone());
            fresh.by_key.insert(key, peer);
        }
        *table = fresh;
    }

    /// Per-peer statistics.
    pub fn stats(&self) -> Vec<WgPeerStats> {
        let table = self.shared.peers.read().unwrap_or_else(|e| e.into_inner());
        table
            .by_key
            .values()
            .map(|p| WgPeerStats {
                id: p.id.clone(),
                endpoint: p.endpoint(),
                last_handshake: p.tunn.lock().unwrap_or_else(|e| e.into_inner()).stats().0,
                rx_bytes: p.rx.load(Ordering::Relaxed),
                tx_bytes: p.tx.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Stops the threads; the TUN device goes with the last handle.
    pub fn stop(mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = self.shared.wake.0.send(&[1]);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl WgPeer {
    pub(crate) fn label(&self) -> &str {
        if self.name.is_empty() { &self.id } else { &self.name }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_persist_with_tight_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg.key");
        let a = load_or_create_key(&path).unwrap();
        assert_eq!(load_or_create_key(&path).unwrap(), a);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_ne!(public_key(&a), a);
        std::fs::write(&path, "junk").unwrap();
        assert!(load_or_create_key(&path).unwrap_err().to_string().contains("move it away"));
    }
}
