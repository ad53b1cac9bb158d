//! `shoal network`: this peer's part of the cluster network.

use serde::{Deserialize, Serialize};

/// This peer's network and every remote peer's route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetworkInfo {
    /// `encrypted`, `vxlan` or `local`.
    pub transport: String,
    /// This peer's container subnet (none until claimed).
    pub subnet: Option<String>,
    /// The bridge address: containers' gateway and resolver.
    pub gateway: Option<String>,
    /// Containers' MTU.
    pub mtu: u32,
    /// The pool every peer's subnet comes from.
    pub pool: String,
    /// The pool of service addresses.
    pub service_pool: String,
    /// Where the transport listens (UDP).
    pub port: u16,
    /// This peer's WireGuard public key (encrypted), hex.
    pub public_key: Option<String>,
    /// The last error setting the network up, if the last change failed.
    pub error: Option<String>,
    /// Every other peer with a route.
    pub peers: Vec<NetworkPeer>,
    /// Every service's address and where it leads.
    pub services: Vec<ServiceAddress>,
}

/// A remote peer as the data path sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetworkPeer {
    /// Peer id.
    pub id: String,
    /// Peer name.
    pub name: String,
    /// Its container subnet.
    pub subnet: String,
    /// Where its transport is reached.
    pub endpoint: String,
    /// Seconds since the last WireGuard handshake (encrypted only; none before the first).
    pub last_handshake_secs: Option<u64>,
    /// Bytes received from it (encrypted only).
    pub rx_bytes: u64,
    /// Bytes sent to it (encrypted only).
    pub tx_bytes: u64,
}

/// A service's virtual address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceAddress {
    /// Service name (and DNS name).
    pub name: String,
    /// Its virtual address.
    pub vip: String,
    /// Published ports, `8080:80/tcp`.
    pub ports: Vec<String>,
    /// Its healthy replicas' addresses.
    pub backends: Vec<String>,
}
