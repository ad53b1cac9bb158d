//! Netlink helpers (rtnetlink): links, addresses, routes, neighbours and forwarding entries of
//! the agent's own devices, reconciled by listing what the device has and changing only the
//! difference, so a restarted agent removes what an earlier run left.

use futures::TryStreamExt;
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope};
use rtnetlink::packet_route::{AddressFamily, route::RouteType};
use rtnetlink::{Handle, RouteMessageBuilder};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

/// Wanted routes: destination/prefix → (gateway reached on-link, or none for a device
/// route; preferred source).
pub(crate) type Routes = BTreeMap<(Ipv4Addr, u8), (Option<Ipv4Addr>, Option<Ipv4Addr>)>;

/// The protocol number Shoal's routes carry (`ip route` shows `proto 83`).
pub(crate) const PROTO: u8 = 83;

/// A netlink failure, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub(crate) struct KernelError {
    pub(crate) what: String,
    #[source]
    pub(crate) source: rtnetlink::Error,
}

pub(crate) fn fail(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> KernelError {
    let what = what.into();
    move |source| KernelError { what, source }
}

/// A netlink connection on the caller's tokio runtime.
#[derive(Clone)]
pub(crate) struct Netlink {
    pub(crate) handle: Handle,
}

impl Netlink {
    pub(crate) fn connect() -> std::io::Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// The index of link `name`, if it exists.
    pub(crate) async fn index(&self, name: &str) -> Option<u32> {
        let mut links = self.handle.link().get().match_name(name.to_string()).execute();
        links.try_next().await.ok().flatten().map(|l| l.header.index)
    }

    /// The hardware address of link `name`, if it exists.
    pub(crate) async fn mac(&self, name: &str) -> Option<Vec<u8>> {
        use rtnetlink::packet_route::link::LinkAttribute;
        let mut links = self.handle.link().get().match_name(name.to_string()).execute();
        let link = links.try_next().await.ok().flatten()?;
        link.attributes.into_iter().find_map(|a| match a {
            LinkAttribute::Address(m) => Some(m),
            _ => None,
        })
    }

    /// Deletes link `name` if it exists.
    pub(crate) async fn delete_link(&self, name: &str) -> Result<(), KernelError> {
        if let Some(i) = self.index(name).await {
            self.handle.link().del(i).execute().await.map_err(fail(format!("delete {name}")))?;
        }
        Ok(())
    }

    /// Makes `ip/prefix` the only IPv4 address of link `index`.
    pub(crate) async fn set_only_address(&self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<(), KernelError> {
        use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
        let current: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(fail("list addresses"))?;
        let mut present = false;
        for a in current {
            if a.header.family != AddressFamily::Inet {
                continue;
            }
            let addr = a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Local(IpAddr::V4(v)) | AddressAttribute::Address(IpAddr::V4(v)) => Some(*v),
                _ => None,
            });
            if addr == Some(ip) && a.header.prefix_len == prefix {
                present = true;
            } else {
                self.handle.address().del(a).execute().await.map_err(fail("remove an old address"))?;
            }
        }
        if !present {
            self.handle
                .address()
                .add(index, IpAddr::V4(ip), prefix)
                .execute()
                .await
                .map_err(fail(format!("add {ip}/{prefix}")))?;
        }
        Ok(())
    }

    /// Sets link `index` up (and its MTU).
    pub(crate) async fn up(&self, index: u32, mtu: Option<u32>) -> Result<(), KernelError> {
        let mut b = rtnetlink::LinkUnspec::new_with_index(index).up();
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        self.handle.link().set(b.build()).execute().await.map_err(fail("set the device up"))
    }

    /// The IPv4 routes of the main table through link `index`: destination → message.
    async fn routes_on(&self, index: u32) -> Result<BTreeMap<(Ipv4Addr, u8), RouteMessage>, KernelError> {
        let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let all: Vec<RouteMessage> =
            self.handle.route().get(filter).execute().try_collect().await.map_err(fail("list routes"))?;
        let mut out = BTreeMap::new();
        for r in all {
            let oif = r.attributes.iter().any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index));
            if !oif || r.header.protocol != RouteProtocol::Other(PROTO) {
                continue;
            }
            let dst = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(d) = dst {
                out.insert((d, r.header.destination_prefix_length), r);
            }
        }
        Ok(out)
    }

    /// Makes Shoal's routes through link `index` exactly `want`: destination/prefix →
    /// (gateway reached on-link, or none for a device route; preferred source).
    pub(crate) async fn sync_routes(&self, index: u32, want: &Routes) -> Result<(), KernelError> {
        let have = self.routes_on(index).await?;
        for (key, msg) in have {
            if !want.contains_key(&key) {
                self.handle
                    .route()
                    .del(msg)
                    .execute()
                    .await
                    .map_err(fail(format!("delete route {}/{}", key.0, key.1)))?;
            }
        }
        for ((dst, len), (gw, src)) in want {
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(*dst, *len)
                .output_interface(index)
                .protocol(RouteProtocol::Other(PROTO));
            if let Some(g) = gw {
                b = b.gateway(*g).onlink();
            } else {
                b = b.scope(RouteScope::Link);
            }
            if let Some(s) = src {
                b = b.pref_source(*s);
            }
            self.handle.route().add(b.build()).replace().execute().await.map_err(fail(format!("route {dst}/{len}")))?;
        }
        Ok(())
    }

    /// Makes the permanent IPv4 neighbours of link `index` exactly `want` (address → MAC).
    pub(crate) async fn sync_neighbours(
        &self,
        index: u32,
        want: &BTreeMap<Ipv4Addr, [u8; 6]>,
    ) -> Result<(), KernelError> {
        let all: Vec<_> =
            self.handle.neighbours().get().execute().try_collect().await.map_err(fail("list neighbours"))?;
        for n in all {
            if n.header.ifindex != index || n.header.family != AddressFamily::Inet {
                continue;
            }
            let ip = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            let mac = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLocalAddress(m) => Some(m.clone()),
                _ => None,
            });
            let wanted = ip.and_then(|ip| want.get(&ip)).is_some_and(|m| mac.as_deref() == Some(&m[..]));
            if !wanted {
                let _ = self.handle.neighbours().del(n).execute().await;
            }
        }
        for (ip, mac) in want {
            self.handle
                .neighbours()
                .add(index, IpAddr::V4(*ip))
                .link_local_address(mac)
                .state(NeighbourState::Permanent)
                .kind(RouteType::Unicast)
                .replace()
                .execute()
                .await
                .map_err(fail(format!("neighbour {ip}")))?;
        }
        Ok(())
    }

    /// Makes the forwarding entries of VXLAN link `index` exactly `want` (MAC → remote address).
    pub(crate) async fn sync_fdb(&self, index: u32, want: &BTreeMap<[u8; 6], Ipv4Addr>) -> Result<(), KernelError> {
        let bridge: Vec<_> = {
            let mut req = self.handle.neighbours().get();
            req.message_mut().header.family = AddressFamily::Bridge;
            req.execute().try_collect().await.map_err(fail("list forwarding entries"))?
        };
        let mut have = BTreeSet::new();
        for n in bridge {
            if n.header.ifindex != index {
                continue;
            }
            let mac = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLocalAddress(m) if m.len() == 6 => Some([m[0], m[1], m[2], m[3], m[4], m[5]]),
                _ => None,
            });
            let dst = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            match (mac, dst) {
                (Some(m), Some(d)) if want.get(&m) == Some(&d) => {
                    have.insert(m);
                }
                (Some(_), _) => {
                    let _ = self.handle.neighbours().del(n).execute().await;
                }
                _ => {}
            }
        }
        for (mac, dst) in want {
            if have.contains(mac) {
                continue;
            }
            self.handle
                .neighbours()
                .add_bridge(index, mac)
                .destination(IpAddr::V4(*dst))
                .flags(NeighbourFlags::Own)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(fail(format!("forwarding entry to {dst}")))?;
        }
        Ok(())
    }
}

/// Writes a sysctl under /proc/sys (of the caller's network namespace for `net.*`).
pub(crate) fn sysctl(key: &str, value: &str) -> std::io::Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(&path, value)
}

/// A stable, locally administered unicast MAC for a peer id.
pub(crate) fn mac_of(peer: &str) -> [u8; 6] {
    let h = blake3::derive_key("shoal 2026 vxlan mac", peer.as_bytes());
    [0x0e, h[0], h[1], h[2], h[3], h[4]]
}
