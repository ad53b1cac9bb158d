//! Shoal's peer-to-peer overlay.
//!
//! Every agent is an equal peer. This crate gives it:
//! - an identity (ed25519, kept in the data dir) and, with a cluster key, a libp2p private
//!   network that peers without the key cannot enter ([`keys`], [`behaviour`]);
//! - leaderless membership: SWIM (foca) carried over libp2p streams, so every peer converges on
//!   who is alive, suspect, dead or left ([`swim`], [`view`]);
//! - signed, versioned peer records (name, addresses, labels, capacity, free resources)
//!   gossiped with SWIM and repaired by anti-entropy ([`record`]);
//! - Kademlia (peer routing now, content providers later), identify and optional mDNS.
//!
//! The [`Overlay`] handle talks to one actor task ([`event_loop`]) over a bounded channel;
//! the actor owns the swarm and all membership state.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod behaviour;
mod event_loop;
pub mod keys;
pub mod peerstore;
pub mod ratelimit;
pub mod record;
pub mod sim;
pub mod swim;
pub mod view;
pub mod wire;

use event_loop::{Command, EventLoop, LoopParts};
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use shoal_types::{Labels, PeerInfo, Resources};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use event_loop::{Member, Published};
pub use keys::{ClusterKey, KeyError, KeyFile, Role, load_or_create_identity};
pub use libp2p;
pub use libp2p_stream;
pub use swim::SwimTuning;

/// What this peer says about itself (published in its record).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LocalInfo {
    pub name: String,
    pub labels: Labels,
    pub capacity: Resources,
    pub free: Resources,
    /// Extra per-peer state for later subsystems.
    pub ext: BTreeMap<String, serde_json::Value>,
}

/// How to start the overlay.
pub struct OverlayConfig {
    pub keypair: Keypair,
    pub cluster_key: Option<ClusterKey>,
    pub listen: Vec<Multiaddr>,
    pub join: Vec<Multiaddr>,
    pub mdns: bool,
    /// Where `overlay.redb` lives.
    pub state_dir: PathBuf,
    pub local: LocalInfo,
    pub tuning: SwimTuning,
    /// How long a dead peer stays listed.
    pub dead_retention: Duration,
}

/// The overlay's view of this agent.
#[derive(Debug, Clone)]
pub struct OverlayStatus {
    pub peer_id: PeerId,
    pub generation: u64,
    pub listen_addrs: Vec<String>,
    pub cluster_size: usize,
    pub known_peers: usize,
    /// Peers this agent was told to join or remembers from earlier runs (0 for a first, lone
    /// start): whether there is a cluster out there to hear from before acting.
    pub remembered_peers: usize,
    pub private_network: bool,
    pub uptime: Duration,
    pub dropped_messages: u64,
}

/// Errors starting or talking to the overlay.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// The transport could not be built
    #[error(transparent)]
    Transport(#[from] behaviour::TransportError),
    /// The on-disk peer store failed
    #[error(transparent)]
    Store(#[from] peerstore::StoreError),
    /// A listen address could not be used
    #[error("cannot listen on {addr}: {reason}; is another agent using it? pick another --listen")]
    Listen { addr: Multiaddr, reason: String },
    /// No listen address is usable
    #[error("no usable listen address (with a cluster key only TCP addresses work)")]
    NoListenAddr,
    /// The overlay task has stopped
    #[error("the overlay has stopped")]
    Stopped,
}

/// Handle to the running overlay; cheap to clone.
#[derive(Clone)]
pub struct Overlay {
    tx: mpsc::Sender<Command>,
    peer_id: PeerId,
    streams: libp2p_stream::Control,
    changes: tokio::sync::watch::Receiver<u64>,
}

fn is_quic(a: &Multiaddr) -> bool {
    a.iter().any(|p| matches!(p, Protocol::QuicV1 | Protocol::Quic))
}

fn is_unspecified(a: &Multiaddr) -> bool {
    a.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

/// The addresses to tell other peers: loopback ones only if there is nothing else.
fn advertised(listen: &[Multiaddr]) -> Vec<Multiaddr> {
    let routable: Vec<Multiaddr> =
        listen.iter().filter(|a| !event_loop::is_loopback(a) && !is_unspecified(a)).cloned().collect();
    let mut out = if routable.is_empty() { listen.to_vec() } else { routable };
    out.truncate(record::MAX_ADDRS);
    out
}

impl Overlay {
    /// Starts listening, then runs the overlay actor on a new task.
    pub async fn start(cfg: OverlayConfig) -> Result<(Overlay, JoinHandle<()>), OverlayError> {
        let store = peerstore::PeerStore::open(&cfg.state_dir.join("overlay.redb"))?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let generation = store.next_generation(now_ms)?;
        let known = store.known_peers()?;
        let peer_id = cfg.keypair.public().to_peer_id();
        let mut swarm = behaviour::build_swarm(&cfg.keypair, cfg.cluster_key, cfg.mdns)?;

        let mut listeners = HashSet::new();
        for addr in &cfg.listen {
            if cfg.cluster_key.is_some() && is_quic(addr) {
                warn!(%addr, "not listening on QUIC: libp2p QUIC has no private-network mode, so a cluster key means TCP only");
                continue;
            }
            let id = swarm
                .listen_on(addr.clone())
                .map_err(|e| OverlayError::Listen { addr: addr.clone(), reason: e.to_string() })?;
            listeners.insert(id);
        }
        if listeners.is_empty() {
            return Err(OverlayError::NoListenAddr);
        }

        // Wait until every listener has an address, then a moment more for the rest of a
        // wildcard listener's interfaces.
        let mut addrs = Vec::new();
        let mut reported = HashSet::new();
        let deadline = tokio::time::sleep(Duration::from_secs(3));
        tokio::pin!(deadline);
        let mut settle: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        // Anything else that happens meanwhile (an mDNS discovery, say) is handed to the
        // event loop, not dropped: mDNS would not report the same peer again for minutes.
        let mut early_events = Vec::new();
        loop {
            tokio::select! {
                ev = swarm.select_next_some() => match ev {
                    SwarmEvent::NewListenAddr { listener_id, address } => {
                        info!(%address, "listening");
                        addrs.push(address);
                        reported.insert(listener_id);
                        if reported.len() == listeners.len() && settle.is_none() {
                            settle = Some(Box::pin(tokio::time::sleep(Duration::from_millis(50))));
                        }
                    }
                    SwarmEvent::ListenerError { error, .. } => {
                        let addr = cfg.listen.first().cloned().unwrap_or_else(Multiaddr::empty);
                        return Err(OverlayError::Listen { addr, reason: error.to_string() });
                    }
                    SwarmEvent::ListenerClosed { addresses, reason: Err(error), .. } => {
                        let addr = addresses.first().cloned().or_else(|| cfg.listen.first().cloned()).unwrap_or_else(Multiaddr::empty);
                        return Err(OverlayError::Listen { addr, reason: error.to_string() });
                    }
                    other => early_events.push(other),
                },
                _ = async { if let Some(s) = settle.as_mut() { s.await } else { std::future::pending().await } } => break,
                _ = &mut deadline => break,
            }
        }
        if addrs.is_empty() {
            return Err(OverlayError::NoListenAddr);
        }

        let me = swim::SwimId { peer: peer_id, generation, addrs: advertised(&addrs) };
        let streams = swarm.behaviour().streams.new_control();
        let (tx, rx) = mpsc::channel(64);
        let changes = std::sync::Arc::new(tokio::sync::watch::Sender::new(0u64));
        let changes_rx = changes.subscribe();
        let el = EventLoop::new(LoopParts {
            swarm,
            keypair: cfg.keypair,
            me,
            local: cfg.local,
            listen_addrs: addrs,
            tuning: cfg.tuning,
            commands: rx,
            bootstrap: cfg.join,
            known,
            store,
            private: cfg.cluster_key.is_some(),
            dead_retention: cfg.dead_retention,
            early_events,
            changes,
        });
        let task = tokio::spawn(el.run());
        Ok((Overlay { tx, peer_id, streams, changes: changes_rx }, task))
    }

    /// This peer's id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, OverlayError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| OverlayError::Stopped)?;
        rx.await.map_err(|_| OverlayError::Stopped)
    }

    /// Every known peer, this one first.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, OverlayError> {
        self.ask(Command::Peers).await
    }

    /// This peer's overlay status.
    pub async fn status(&self) -> Result<OverlayStatus, OverlayError> {
        self.ask(Command::Status).await
    }

    /// Publishes new local information (capacity, free resources, labels ...).
    pub async fn update_local(&self, info: LocalInfo) -> Result<(), OverlayError> {
        self.ask(|tx| Command::UpdateLocal(info, tx)).await
    }

    /// A handle to open and accept raw streams of a subsystem's own protocol.
    pub fn streams(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    /// Live members (this peer excluded) with their addresses.
    pub async fn members(&self) -> Result<Vec<Member>, OverlayError> {
        self.ask(Command::Members).await
    }

    /// Where `peer`'s open connections to this peer come from, as the transport saw them (a
    /// peer's advertised addresses are its own claim; these are not). Empty when none is open.
    pub async fn remote_addrs(&self, peer: PeerId) -> Result<Vec<Multiaddr>, OverlayError> {
        self.ask(|tx| Command::RemoteAddrs(peer, tx)).await
    }

    /// The value of `ext` key `key` in every record this peer holds (live peers' and, until
    /// they are pruned, dead ones'), this peer's own excluded.
    pub async fn published(&self, key: &str) -> Result<Vec<Published>, OverlayError> {
        self.ask(|tx| Command::Published(key.to_string(), tx)).await
    }

    /// Announces in the DHT that this peer holds `key`.
    pub async fn provide(&self, key: &[u8]) -> Result<(), OverlayError> {
        self.tx.send(Command::Provide(libp2p::kad::RecordKey::new(&key))).await.map_err(|_| OverlayError::Stopped)
    }

    /// Stops announcing `key`.
    pub async fn unprovide(&self, key: &[u8]) -> Result<(), OverlayError> {
        self.tx.send(Command::Unprovide(libp2p::kad::RecordKey::new(&key))).await.map_err(|_| OverlayError::Stopped)
    }

    /// Peers the DHT names as holders of `key` (hints: ask them before trusting it).
    pub async fn find_providers(&self, key: &[u8]) -> Result<Vec<PeerId>, OverlayError> {
        self.ask(|tx| Command::FindProviders(libp2p::kad::RecordKey::new(&key), tx)).await
    }

    /// Publishes one key of this peer's per-peer state (`None` removes it); gossiped.
    pub async fn set_ext(&self, key: &str, value: Option<serde_json::Value>) -> Result<(), OverlayError> {
        self.tx.send(Command::SetExt(vec![(key.to_string(), value)], false)).await.map_err(|_| OverlayError::Stopped)
    }

    /// Publishes several keys of this peer's per-peer state in one new record and sends it
    /// straight to live members (up to 16; gossip reaches the rest), for state others act on
    /// at once (which replicas run here).
    pub async fn publish_ext(&self, entries: Vec<(String, Option<serde_json::Value>)>) -> Result<(), OverlayError> {
        self.tx.send(Command::SetExt(entries, true)).await.map_err(|_| OverlayError::Stopped)
    }

    /// Changes whenever membership or a peer's record changes.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Leaves the cluster gracefully and stops the overlay.
    pub async fn leave(&self) -> Result<(), OverlayError> {
        self.ask(Command::Leave).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertises_routable_addresses_first() {
        let l: Vec<Multiaddr> = vec!["/ip4/127.0.0.1/tcp/1".parse().unwrap(), "/ip4/10.0.0.2/tcp/1".parse().unwrap()];
        assert_eq!(advertised(&l), vec![l[1].clone()]);
        assert_eq!(advertised(&l[..1]), vec![l[0].clone()]);
    }
}
