//! Shoal's cluster network: every container of every peer on one routed network, with names,
//! service addresses and a routing mesh, and no central part.
//!
//! - [`ipam`]: per-peer subnets claimed without a leader, service virtual addresses.
//! - [`record`]: what a peer publishes about its network in its signed peer record.
//! - [`Network`] ([`network`]): one actor that makes the kernel match a [`Desired`] state: the
//!   data path to every other peer ([`vxlan`] or the encrypted [`wg`] transport), the
//!   nftables table ([`nft`]: outbound NAT, isolation, service addresses and the routing mesh),
//!   the DNS server on the bridge ([`dns`]) and the UDP conntrack clean-up ([`conntrack`]).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod conntrack;
pub mod dns;
pub mod ipam;
mod kernel;
pub mod network;
pub mod nft;
pub mod record;
pub mod vxlan;
pub mod wg;

pub use network::{Network, NetworkConfig, NetworkError};
pub use record::NetRecord;

use ipam::Subnet;
use serde::{Deserialize, Serialize};
use shoal_types::PortMapping;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// The default UDP port of the encrypted transport (WireGuard's).
pub const DEFAULT_WG_PORT: u16 = 51820;
/// The default UDP port of the VXLAN transport (IANA's).
pub const DEFAULT_VXLAN_PORT: u16 = 4789;

/// How container traffic crosses between peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// WireGuard in userspace over a TUN device: encrypted and authenticated, only members
    /// complete a handshake (the default with a cluster key).
    Encrypted,
    /// Kernel VXLAN with static forwarding entries: plaintext, for trusted networks.
    Vxlan,
    /// No traffic between peers: containers reach containers on the same peer only.
    Local,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Encrypted => "encrypted",
            Transport::Vxlan => "vxlan",
            Transport::Local => "local",
        })
    }
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "encrypted" => Ok(Transport::Encrypted),
            "vxlan" => Ok(Transport::Vxlan),
            "local" => Ok(Transport::Local),
            other => Err(format!("unknown transport {other:?}")),
        }
    }
}

/// The cluster network's settings (flags or the config file).
#[derive(Debug, Clone)]
pub struct NetSettings {
    /// The pool peers' subnets are claimed from.
    pub pool: ipam::Pool,
    /// The pool of service addresses.
    pub vips: ipam::Subnet,
    /// How traffic crosses between peers.
    pub transport: Transport,
    /// UDP port of the encrypted transport.
    pub wg_port: u16,
    /// UDP port of the VXLAN transport.
    pub vxlan_port: u16,
}

impl Transport {
    /// The MTU of containers' interfaces: what is left of a 1500-byte underlay once the
    /// transport's headers are added (VXLAN: 50 bytes; WireGuard: 80 with an IPv6 outer
    /// header, as wg-quick assumes), so a full-size packet never needs fragmenting.
    pub fn mtu(self) -> u32 {
        match self {
            Transport::Encrypted => 1420,
            Transport::Vxlan => 1450,
            Transport::Local => 1500,
        }
    }
}

/// Another peer as the data path needs it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerNet {
    /// Its peer id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The subnet it holds.
    pub subnet: Subnet,
    /// Where its transport listens (its overlay address).
    pub underlay: Ipv4Addr,
    /// Its transport's UDP port.
    pub port: u16,
    /// Its WireGuard public key (encrypted transport).
    pub wg_key: Option<[u8; 32]>,
    /// When its transport last started (ms): a change means it restarted and lost its
    /// sessions, so a new handshake is made at once instead of after a timeout.
    pub epoch: u64,
}

/// One service as the load balancer and DNS need it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceNet {
    /// Its name (and DNS name).
    pub name: String,
    /// Its virtual address.
    pub vip: Ipv4Addr,
    /// Published ports: `host_port` answers on every peer, `container_port` on the VIP and
    /// on the replicas.
    pub ports: Vec<PortMapping>,
    /// The addresses of its healthy, running replicas, anywhere in the cluster.
    pub backends: Vec<Ipv4Addr>,
}

/// What the network should look like: this peer's subnet, the other peers, the services and
/// the names containers resolve.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// This peer's subnet (nothing is set up before it is claimed).
    pub subnet: Option<Subnet>,
    /// This peer's underlay address (the one other peers reach it at).
    pub underlay: Option<Ipv4Addr>,
    /// Every other live peer with a subnet.
    pub peers: Vec<PeerNet>,
    /// Every service.
    pub services: Vec<ServiceNet>,
    /// Container names (this peer's and other peers') and their addresses.
    pub names: BTreeMap<String, Ipv4Addr>,
    /// TCP/UDP ports of the agent itself that containers must not reach (DNS aside).
    pub agent_ports: Vec<(shoal_types::Protocol, u16)>,
}
