//! The libp2p side of the overlay: transports and the composed network behaviour.
//!
//! Transport: TCP with a 10 s connect+handshake timeout, noise, yamux, DNS resolution of
//! `/dns4/...` addresses; QUIC beside it when the cluster runs without a key. With a cluster
//! key, every TCP connection first runs the libp2p private-network handshake (XSalsa20 keyed by
//! the pre-shared key), so a peer without the key fails before noise even starts. Right after
//! it both sides send an 8-byte marker through the encrypted stream: with different keys the
//! marker arrives as noise, so a mismatch is reported at once ("different cluster key")
//! instead of after the handshake timeout. libp2p's QUIC
//! has no pre-shared-key mode, so a keyed cluster does not listen on QUIC at all (as kubo does
//! with a swarm key).
//!
//! Behaviours: connection limits, identify (`/shoal/id/1.0.0`), Kademlia (`/shoal/kad/1.0.0`,
//! server mode, kept apart from the public IPFS DHT), optional mDNS, and two request-response
//! protocols of our own (see `wire`): SWIM packets and control messages.

use crate::keys::ClusterKey;
use crate::wire::{CTL_PROTOCOL, CtlCodec, SWIM_PROTOCOL, SwimCodec};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, OrTransport};
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    PeerId, StreamProtocol, Swarm, Transport, connection_limits, identify, kad, mdns, noise, pnet, request_response,
    tcp, yamux,
};
use std::time::Duration;

/// Identify's protocol name.
pub const IDENTIFY_PROTOCOL: &str = "/shoal/id/1.0.0";
/// Kademlia's protocol name.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/kad/1.0.0");

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) identify: identify::Behaviour,
    pub(crate) kad: kad::Behaviour<kad::store::MemoryStore>,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(crate) swim: request_response::Behaviour<SwimCodec>,
    pub(crate) ctl: request_response::Behaviour<CtlCodec>,
    /// Raw streams for subsystems that run their own protocols (content transfer).
    pub(crate) streams: libp2p_stream::Behaviour,
}

/// Why the swarm could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The noise handshake could not be set up with this key
    #[error("cannot set up encryption: {0}")]
    Noise(#[from] noise::Error),
    /// mDNS could not start
    #[error("cannot start mDNS discovery: {0}")]
    Mdns(std::io::Error),
    /// The DNS resolver could not be read
    #[error("cannot set up DNS resolution: {0}")]
    Dns(std::io::Error),
}

const KEY_CHECK: &[u8; 8] = b"shoal\x00k1";
/// The error text of a failed key check.
pub(crate) const KEY_MISMATCH: &str = "the other side uses a different cluster key";

/// Both sides write the marker, then read the other's; the pnet cipher makes it garbage unless
/// both hold the same key.
async fn check_same_key<S: futures::AsyncRead + futures::AsyncWrite + Unpin>(s: &mut S) -> std::io::Result<()> {
    use futures::{AsyncReadExt, AsyncWriteExt};
    s.write_all(KEY_CHECK).await?;
    s.flush().await?;
    let mut got = [0u8; 8];
    s.read_exact(&mut got).await?;
    if &got != KEY_CHECK {
        return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, KEY_MISMATCH));
    }
    Ok(())
}

/// The transport stack (also used by tests that play a misbehaving peer).
pub fn transport(
    key: &Keypair,
    cluster_key: Option<ClusterKey>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, TransportError> {
    let noise = noise::Config::new(key)?;
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    let tcp = match cluster_key {
        Some(ck) => {
            let psk = ck.psk();
            tcp.and_then(move |socket, _| async move {
                let mut s = pnet::PnetConfig::new(psk).handshake(socket).await.map_err(std::io::Error::other)?;
                check_same_key(&mut s).await?;
                Ok::<_, std::io::Error>(s)
            })
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux::Config::default())
            .timeout(Duration::from_secs(10))
            .map(|(peer, mux), _| (peer, StreamMuxerBox::new(mux)))
            .boxed()
        }
        None => tcp
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux::Config::default())
            .timeout(Duration::from_secs(10))
            .map(|(peer, mux), _| (peer, StreamMuxerBox::new(mux)))
            .boxed(),
    };
    let base = if cluster_key.is_none() {
        let quic = libp2p::quic::tokio::Transport::new(libp2p::quic::Config::new(key))
            .map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn)));
        OrTransport::new(quic, tcp).map(|either, _| either.into_inner()).boxed()
    } else {
        tcp
    };
    let dns = libp2p::dns::tokio::Transport::system(base).map_err(TransportError::Dns)?;
    Ok(dns.boxed())
}

/// Builds the swarm. `mdns` turns on local-network discovery.
pub(crate) fn build_swarm(
    key: &Keypair,
    cluster_key: Option<ClusterKey>,
    mdns: bool,
) -> Result<Swarm<Behaviour>, TransportError> {
    let peer = key.public().to_peer_id();
    let transport = transport(key, cluster_key)?;

    let limits = connection_limits::ConnectionLimits::default()
        .with_max_pending_incoming(Some(256))
        .with_max_pending_outgoing(Some(256))
        .with_max_established_per_peer(Some(4))
        .with_max_established(Some(16_384));

    let identify = identify::Behaviour::new(
        identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
            .with_agent_version(format!("shoal/{}", shoal_types::VERSION))
            .with_push_listen_addr_updates(true),
    );

    let mut kad_cfg = kad::Config::new(KAD_PROTOCOL);
    kad_cfg.set_query_timeout(Duration::from_secs(30));
    // We bootstrap ourselves once the cluster has members (see the event loop); libp2p's
    // periodic bootstrap would only warn "no known peers" on a lone agent.
    kad_cfg.set_periodic_bootstrap_interval(None);
    // Provider records are hints about who holds content (the holder is always asked before
    // anything is fetched); keep them short-lived so a peer that deleted content stops being
    // named within minutes, and republish our own often enough to stay listed.
    kad_cfg.set_provider_record_ttl(Some(Duration::from_secs(10 * 60)));
    kad_cfg.set_provider_publication_interval(Some(Duration::from_secs(4 * 60)));
    let store_cfg = kad::store::MemoryStoreConfig {
        max_records: 4096,
        max_value_bytes: 64 * 1024,
        max_providers_per_key: 64,
        max_provided_keys: 1 << 20,
    };
    let mut kad = kad::Behaviour::with_config(peer, kad::store::MemoryStore::with_config(peer, store_cfg), kad_cfg);
    // Peers on a LAN have no "confirmed external address"; answer DHT queries anyway.
    kad.set_mode(Some(kad::Mode::Server));

    let mdns = if mdns {
        Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer).map_err(TransportError::Mdns)?)
    } else {
        None
    };

    let swim = request_response::Behaviour::with_codec(
        SwimCodec,
        [(SWIM_PROTOCOL, request_response::ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(Duration::from_secs(2))
            .with_max_concurrent_streams(256),
    );
    let ctl = request_response::Behaviour::with_codec(
        CtlCodec,
        [(CTL_PROTOCOL, request_response::ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
    );

    let behaviour = Behaviour {
        limits: connection_limits::Behaviour::new(limits),
        identify,
        kad,
        mdns: mdns.into(),
        swim,
        ctl,
        streams: libp2p_stream::Behaviour::new(),
    };
    let config = libp2p::swarm::Config::with_tokio_executor().with_idle_connection_timeout(Duration::from_secs(60));
    Ok(Swarm::new(transport, behaviour, peer, config))
}
