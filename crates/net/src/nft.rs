//! The agent's nftables table: outbound NAT, isolation, service addresses and the routing mesh.
//!
//! Shape borrowed from kube-proxy's nftables mode (verdict maps, `numgen` load balancing, one
//! chain per endpoint, a mark bit for masquerading), written as nft text and applied with
//! `nft -f -`: one file is one kernel transaction, so the table is replaced whole and
//! atomically on every change (`add table` + `delete table` + the new table; nft 1.0.6 has no
//! `destroy`). Connections already made keep their NAT bindings in conntrack.
//!
//! What the table does (`S` this peer's subnet, `P` the cluster pool, `V` the service pool):
//! - **Service addresses**: `ip daddr` → `vmap @vips` → `numgen random mod N` → an endpoint
//!   chain that DNATs to one healthy replica (any port, as Swarm's VIPs do), in prerouting (from
//!   containers and the network) and output (from the host).
//! - **Routing mesh**: `fib daddr type local` + protocol + published port → `vmap @mesh` →
//!   the same balancing to `replica:container_port`, so every peer answers on every published
//!   port, 127.0.0.1 included. Traffic to a replica on another peer is masqueraded (the reply
//!   must come back through this peer); to a local replica it is not, so the service sees the
//!   client's address.
//! - **NAT**: containers reach the world masqueraded; DNATed traffic between two containers of
//!   this peer is masqueraded too (hairpin: the reply would otherwise skip conntrack on the
//!   bridge).
//! - **Isolation**: containers cannot reach the agent's own ports through the bridge (DNS is
//!   served elsewhere); the VXLAN port accepts only members' addresses; a service address with
//!   nothing behind it is rejected at once instead of timing out; packets to 127.0.0.0/8 that
//!   did not come from loopback are dropped (the route_localnet guard kube-proxy learned).
//! - **MSS**: TCP SYNs into and out of the tunnel are clamped to the route's MTU.

use crate::ServiceNet;
use crate::ipam::Subnet;
use shoal_types::Protocol;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// The mark bit of connections to masquerade.
pub const MASQ_MARK: u32 = 0x4000;

/// Everything the table is made from.
#[derive(Debug, Clone)]
pub struct Ruleset<'a> {
    /// Table name (`shoal_<bridge>`: agents sharing a network namespace keep apart).
    pub table: &'a str,
    /// The container bridge.
    pub bridge: &'a str,
    /// This peer's subnet.
    pub subnet: Subnet,
    /// The cluster pool.
    pub pool: Subnet,
    /// The service address pool.
    pub vips: Subnet,
    /// The tunnel device, if any.
    pub tunnel: Option<&'a str>,
    /// The VXLAN port and the members allowed to send to it.
    pub vxlan: Option<(u16, &'a [Ipv4Addr])>,
    /// Services.
    pub services: &'a [ServiceNet],
    /// The agent's own ports.
    pub agent_ports: &'a [(Protocol, u16)],
}

/// The table name for `bridge`.
pub fn table_name(bridge: &str) -> String {
    let clean: String = bridge.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("shoal_{clean}")
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// Writes `numgen random mod N` over `targets` (chain names), or a plain `goto` for one.
fn balance(out: &mut String, targets: &[String]) {
    match targets {
        [] => out.push_str("\t\treject\n"),
        [one] => {
            let _ = writeln!(out, "\t\tgoto {one}");
        }
        many => {
            let elems: Vec<String> = many.iter().enumerate().map(|(i, c)| format!("{i} : goto {c}")).collect();
            let _ = writeln!(out, "\t\tnumgen random mod {} vmap {{ {} }}", many.len(), elems.join(", "));
        }
    }
}

impl Ruleset<'_> {
    /// The nft script that replaces the table.
    pub fn render(&self) -> String {
        let t = self.table;
        let (s, p, v) = (self.subnet, self.pool, self.vips);
        let mut out = format!("table inet {t} {{}}\ndelete table inet {t}\ntable inet {t} {{\n");
        let mut chains = String::new();
        let mut vip_elems = Vec::new();
        let mut mesh_elems = Vec::new();
        for (i, svc) in self.services.iter().enumerate() {
            if svc.backends.is_empty() {
                continue;
            }
            // The service address: any port, to the replica's same port.
            let eps: Vec<String> = (0..svc.backends.len()).map(|j| format!("s{i}e{j}")).collect();
            let _ = writeln!(chains, "\tchain s{i} {{");
            balance(&mut chains, &eps);
            chains.push_str("\t}\n");
            for (j, ip) in svc.backends.iter().enumerate() {
                let _ = writeln!(chains, "\tchain s{i}e{j} {{\n\t\tdnat ip to {ip}\n\t}}");
            }
            vip_elems.push(format!("{} : goto s{i}", svc.vip));
            // Published ports: every peer, to the replica's container port.
            for (k, port) in svc.ports.iter().enumerate() {
                let pr = proto(port.protocol);
                let eps: Vec<String> = (0..svc.backends.len()).map(|j| format!("m{i}p{k}e{j}")).collect();
                let _ = writeln!(chains, "\tchain m{i}p{k} {{");
                let _ = writeln!(chains, "\t\tip saddr 127.0.0.0/8 meta mark set meta mark | {MASQ_MARK:#x}");
                balance(&mut chains, &eps);
                chains.push_str("\t}\n");
                for (j, ip) in svc.backends.iter().enumerate() {
                    let _ = writeln!(chains, "\tchain m{i}p{k}e{j} {{");
                    if !s.contains(*ip) {
                        let _ = writeln!(chains, "\t\tmeta mark set meta mark | {MASQ_MARK:#x}");
                    }
                    let _ = writeln!(chains, "\t\tmeta l4proto {pr} dnat ip to {ip}:{}\n\t}}", port.container_port);
                }
                mesh_elems.push(format!("{pr} . {} : goto m{i}p{k}", port.host_port));
            }
        }
        if let Some((_, members)) = self.vxlan {
            out.push_str("\tset members {\n\t\ttype ipv4_addr\n");
            if !members.is_empty() {
                let list: Vec<String> = members.iter().map(Ipv4Addr::to_string).collect();
                let _ = writeln!(out, "\t\telements = {{ {} }}", list.join(", "));
            }
            out.push_str("\t}\n");
        }
        out.push_str("\tmap vips {\n\t\ttype ipv4_addr : verdict\n");
        if !vip_elems.is_empty() {
            let _ = writeln!(out, "\t\telements = {{ {} }}", vip_elems.join(", "));
        }
        out.push_str("\t}\n\tmap mesh {\n\t\ttype inet_proto . inet_service : verdict\n");
        if !mesh_elems.is_empty() {
            let _ = writeln!(out, "\t\telements = {{ {} }}", mesh_elems.join(", "));
        }
        out.push_str("\t}\n");
        for (name, hook) in [("nat_prerouting", "prerouting"), ("nat_output", "output")] {
            let _ = writeln!(
                out,
                "\tchain {name} {{\n\t\ttype nat hook {hook} priority -100; policy accept;\n\t\tip daddr vmap @vips\n\t\tfib daddr type local meta l4proto . th dport vmap @mesh\n\t}}"
            );
        }
        let _ = writeln!(
            out,
            "\tchain nat_postrouting {{\n\t\ttype nat hook postrouting priority 100; policy accept;\n\t\tmeta mark & {MASQ_MARK:#x} == {MASQ_MARK:#x} masquerade\n\t\tct status dnat ip saddr {s} ip daddr {s} masquerade\n\t\tip saddr {s} ip daddr != {{ {p}, {v} }} masquerade\n\t}}"
        );
        let _ = writeln!(out, "\tchain filter_forward {{\n\t\ttype filter hook forward priority 0; policy accept;");
        if let Some(tun) = self.tunnel {
            let _ = writeln!(out, "\t\toifname \"{tun}\" tcp flags syn / syn,rst tcp option maxseg size set rt mtu");
            let _ = writeln!(out, "\t\tiifname \"{tun}\" tcp flags syn / syn,rst tcp option maxseg size set rt mtu");
            // Pool traffic of this peer's containers leaves by the bridge or the tunnel, never by
            // the default route: while the encrypted transport restarts (its device gone with
            // its routes) it is dropped, not sent in plaintext. Only ours: traffic of another
            // bridge on this host (another agent's, whose packets br_netfilter shows here too)
            // is not this table's business.
            let _ = writeln!(
                out,
                "\t\tiifname \"{b}\" ip daddr {p} oifname != {{ \"{b}\", \"{tun}\" }} drop",
                b = self.bridge
            );
            // Published-port traffic this peer redirected to a replica elsewhere, likewise.
            let _ = writeln!(
                out,
                "\t\tct status dnat ip daddr {p} oifname != {{ \"{b}\", \"{tun}\" }} drop",
                b = self.bridge
            );
        }
        let _ = writeln!(out, "\t\tip daddr {v} reject\n\t}}");
        let _ = writeln!(
            out,
            "\tchain filter_output {{\n\t\ttype filter hook output priority 0; policy accept;\n\t\tip daddr {v} reject\n\t}}"
        );
        let _ = writeln!(out, "\tchain filter_input {{\n\t\ttype filter hook input priority 0; policy accept;");
        if !self.agent_ports.is_empty() {
            let ports: Vec<String> =
                self.agent_ports.iter().map(|(pr, port)| format!("{} . {port}", proto(*pr))).collect();
            // From this peer's containers and, through the tunnel, from other peers' containers.
            let ifaces: Vec<String> =
                [Some(self.bridge), self.tunnel].into_iter().flatten().map(|i| format!("\"{i}\"")).collect();
            let _ = writeln!(
                out,
                "\t\tiifname {{ {} }} meta l4proto . th dport {{ {} }} drop",
                ifaces.join(", "),
                ports.join(", ")
            );
        }
        if let Some((port, _)) = self.vxlan {
            let _ = writeln!(out, "\t\tudp dport {port} ip saddr != @members drop");
        }
        // Replies to connections made from 127.0.0.1 come back through the bridge or tunnel with
        // their destination restored to 127.0.0.1: only those may pass.
        out.push_str("\t\tiifname != \"lo\" ip daddr 127.0.0.0/8 ct state != { established, related } drop\n\t}\n");
        out.push_str(&chains);
        out.push_str("}\n");
        out
    }
}

/// Why nft refused.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// `nft` is not installed.
    #[error("`nft` (package nftables) is not installed; install it with: apt-get install nftables")]
    Missing,
    /// nft refused the script.
    #[error("nft refused the ruleset: {0}")]
    Refused(String),
}

/// Runs `nft -f -` (with `check`, `nft -c -f -`: validated against the kernel, not applied).
pub async fn run(script: &str, check: bool) -> Result<(), NftError> {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new("nft");
    if check {
        cmd.arg("-c");
    }
    cmd.args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound { NftError::Missing } else { NftError::Refused(e.to_string()) }
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).await.map_err(|e| NftError::Refused(e.to_string()))?;
    }
    let out = child.wait_with_output().await.map_err(|e| NftError::Refused(e.to_string()))?;
    if !out.status.success() {
        return Err(NftError::Refused(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(())
}

/// Removes the table (nothing if it is absent).
pub async fn delete(table: &str) -> Result<(), NftError> {
    run(&format!("table inet {table} {{}}\ndelete table inet {table}\n"), false).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_types::PortMapping;

    fn services() -> Vec<ServiceNet> {
        vec![
            ServiceNet {
                name: "web".into(),
                vip: Ipv4Addr::new(198, 18, 240, 7),
                ports: vec![
                    PortMapping::tcp(8080, 80),
                    PortMapping { protocol: Protocol::Udp, ..PortMapping::tcp(5353, 53) },
                ],
                backends: vec![Ipv4Addr::new(198, 19, 1, 2), Ipv4Addr::new(198, 19, 2, 2)],
            },
            ServiceNet { name: "idle".into(), vip: Ipv4Addr::new(198, 18, 240, 8), ports: vec![], backends: vec![] },
        ]
    }

    fn ruleset<'a>(svcs: &'a [ServiceNet], members: &'a [Ipv4Addr]) -> Ruleset<'a> {
        Ruleset {
            table: "shoal_test",
            bridge: "shoal0",
            subnet: Subnet::parse("198.19.1.0/24").unwrap(),
            pool: Subnet::parse("198.19.0.0/16").unwrap(),
            vips: Subnet::parse("198.18.240.0/20").unwrap(),
            tunnel: Some("shoal0vx"),
            vxlan: Some((4789, members)),
            services: svcs,
            agent_ports: &[(Protocol::Tcp, 7946), (Protocol::Udp, 4789)],
        }
    }

    #[test]
    fn renders_balancing_and_masquerades_only_remote_mesh_backends() {
        let svcs = services();
        let text = ruleset(&svcs, &[Ipv4Addr::new(198, 18, 0, 2)]).render();
        assert!(text.starts_with("table inet shoal_test {}\ndelete table inet shoal_test\n"), "{text}");
        assert!(text.contains("198.18.240.7 : goto s0"), "{text}");
        assert!(!text.contains("198.18.240.8"), "a service without replicas has no entry: {text}");
        assert!(text.contains("numgen random mod 2 vmap { 0 : goto s0e0, 1 : goto s0e1 }"), "{text}");
        assert!(text.contains("tcp . 8080 : goto m0p0") && text.contains("udp . 5353 : goto m0p1"), "{text}");
        let local = text.split("chain m0p0e0 {").nth(1).unwrap().split('}').next().unwrap();
        let remote = text.split("chain m0p0e1 {").nth(1).unwrap().split('}').next().unwrap();
        assert!(!local.contains("mark set") && local.contains("dnat ip to 198.19.1.2:80"), "{local}");
        assert!(remote.contains("mark set") && remote.contains("dnat ip to 198.19.2.2:80"), "{remote}");
        assert!(text.contains("udp dport 4789 ip saddr != @members drop"), "{text}");
        assert!(text.contains("elements = { 198.18.0.2 }"), "{text}");
        // Pool traffic is kept off the default route only for this peer's own containers: the
        // traffic of another bridge on the host passes this table untouched.
        assert!(
            text.contains("iifname \"shoal0\" ip daddr 198.19.0.0/16 oifname != { \"shoal0\", \"shoal0vx\" } drop"),
            "{text}"
        );
        assert!(
            text.contains("ct status dnat ip daddr 198.19.0.0/16 oifname != { \"shoal0\", \"shoal0vx\" } drop"),
            "mesh traffic to another peer's replica: {text}"
        );
    }

    /// The kernel accepts the script (`nft -c`, checked against this kernel without applying
    /// it), with services, without any, and with an empty member set.
    #[tokio::test]
    async fn the_kernel_accepts_the_ruleset() {
        let svcs = services();
        for (s, m) in [(&svcs[..], &[Ipv4Addr::new(198, 18, 0, 2)][..]), (&[][..], &[][..])] {
            let text = ruleset(s, m).render();
            if let Err(e) = run(&text, true).await {
                panic!("{e}\n{text}");
            }
        }
    }
}
