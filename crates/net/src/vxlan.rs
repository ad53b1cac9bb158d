//! The `vxlan` transport: kernel VXLAN, laid out as flannel does it. One device per peer
//! (`<bridge>vx`, learning off, MTU 1450) holding this peer's subnet address as a /32; for each
//! other peer three static entries, all from membership, none learned from traffic: a
//! permanent neighbour (its subnet's network address → its device MAC), a forwarding entry
//! (that MAC → its underlay address) and a route (its subnet via that address, on-link). MACs
//! are derived from peer ids, so nothing but the subnet and the address needs publishing.
//! Plaintext: for trusted networks. The table in [`crate::nft`] drops VXLAN packets from any
//! address that is not a member's.

use crate::PeerNet;
use crate::ipam::Subnet;
use crate::kernel::{KernelError, Netlink, fail, mac_of};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// The VXLAN network identifier Shoal uses.
pub const VNI: u32 = 7342;

/// The device's name for `bridge`.
pub fn device_name(bridge: &str) -> String {
    format!("{}vx", &bridge[..bridge.len().min(13)])
}

/// Creates the device (kept if it exists with this peer's MAC: traffic keeps flowing across an
/// agent restart; a new identity means a new MAC, which the others derive from the new id, so
/// the old device goes) and gives it this peer's address.
pub(crate) async fn ensure(
    nl: &Netlink,
    dev: &str,
    me: &str,
    local: Option<Ipv4Addr>,
    port: u16,
    subnet: Subnet,
) -> Result<u32, KernelError> {
    if nl.mac(dev).await.is_some_and(|m| m != mac_of(me)) {
        nl.delete_link(dev).await?;
    }
    if nl.index(dev).await.is_none() {
        let mut link = rtnetlink::LinkVxlan::new(dev, VNI).port(port).learning(false);
        // Without a local address the kernel picks the source by route (an agent listening on
        // every address).
        if let Some(ip) = local {
            link = link.local(ip);
        }
        let link = link.mtu(crate::Transport::Vxlan.mtu()).address(mac_of(me).to_vec()).up().build();
        nl.handle.link().add(link).execute().await.map_err(fail(format!("create VXLAN device {dev}")))?;
    }
    let index = nl
        .index(dev)
        .await
        .ok_or_else(|| KernelError { what: format!("VXLAN device {dev}"), source: rtnetlink::Error::RequestFailed })?;
    nl.set_only_address(index, subnet.base, 32).await?;
    nl.up(index, None).await?;
    Ok(index)
}

/// Makes the device's neighbours, forwarding entries and routes match `peers`.
pub(crate) async fn sync(nl: &Netlink, index: u32, me_gateway: Ipv4Addr, peers: &[PeerNet]) -> Result<(), KernelError> {
    let mut neigh = BTreeMap::new();
    let mut fdb = BTreeMap::new();
    let mut routes = BTreeMap::new();
    for p in peers {
        let mac = mac_of(&p.id);
        neigh.insert(p.subnet.base, mac);
        fdb.insert(mac, p.underlay);
        routes.insert((p.subnet.base, p.subnet.prefix), (Some(p.subnet.base), Some(me_gateway)));
    }
    // Routes last on the way in (the kernel never needs to resolve a gateway it cannot), first
    // on the way out.
    nl.sync_neighbours(index, &neigh).await?;
    nl.sync_fdb(index, &fdb).await?;
    nl.sync_routes(index, &routes).await
}
