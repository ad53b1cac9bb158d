//! The lab's network, built with iproute2.
//!
//! Every lab has a hub namespace `shoal-<lab>-hub` holding the switch (bridge `br0`) and one
//! namespace per peer `shoal-<lab>-<i>`. A veth pair joins them: `eth0` in the peer, `p<i>` on
//! the hub's bridge. Nothing is created in the host's namespace, so lab traffic never leaves
//! the lab and interface names never collide with the host's or another lab's.
//!
//! Shaping is kernel `tc` on both ends of each veth (the peer's `eth0` egress is its upload,
//! the hub's `p<i>` egress its download): `tbf` for bandwidth; `netem` for latency and loss
//! where the kernel has it. A partition moves the hub ports of each group onto a bridge of its
//! own (`brp<k>`), which cuts every packet between groups at layer 2; healing moves them back.

use crate::LabError;
use crate::cmd::{run, run_quiet};
use crate::link::LinkSpec;
use std::net::Ipv4Addr;
use std::path::PathBuf;

pub(crate) fn hub_ns(lab: &str) -> String {
    format!("shoal-{lab}-hub")
}

pub(crate) fn peer_ns(lab: &str, i: usize) -> String {
    format!("shoal-{lab}-{i}")
}

/// The bind-mounted namespace file a process can `setns` into.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

pub(crate) fn create_hub(lab: &str) -> Result<(), LabError> {
    let hub = hub_ns(lab);
    run("ip", &["netns", "add", &hub])?;
    run("ip", &["-n", &hub, "link", "set", "lo", "up"])?;
    run("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
    run("ip", &["-n", &hub, "link", "set", "br0", "up"])?;
    Ok(())
}

pub(crate) fn create_peer(lab: &str, i: usize, ip: Ipv4Addr, prefix: u8) -> Result<(), LabError> {
    let (hub, ns, port) = (hub_ns(lab), peer_ns(lab, i), format!("p{i}"));
    run("ip", &["netns", "add", &ns])?;
    run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
    run("ip", &["-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
    run("ip", &["-n", &hub, "link", "set", &port, "master", "br0"])?;
    run("ip", &["-n", &hub, "link", "set", &port, "up"])?;
    run("ip", &["-n", &ns, "addr", "add", &format!("{ip}/{prefix}"), "dev", "eth0"])?;
    run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
    Ok(())
}

/// Applies `spec` to both directions of peer `i`'s link.
pub(crate) fn apply_link(lab: &str, i: usize, spec: &LinkSpec) -> Result<(), LabError> {
    for (ns, dev) in [(peer_ns(lab, i), "eth0".to_string()), (hub_ns(lab), format!("p{i}"))] {
        shape(&ns, &dev, spec)?;
    }
    Ok(())
}

fn shape(ns: &str, dev: &str, spec: &LinkSpec) -> Result<(), LabError> {
    if spec.is_plain() {
        // Deleting a root qdisc that is already the default fails harmlessly.
        run_quiet("tc", &["-n", ns, "qdisc", "del", "dev", dev, "root"]);
        return Ok(());
    }
    let mut args: Vec<String> = ["-n", ns, "qdisc", "replace", "dev", dev, "root"].map(String::from).to_vec();
    if spec.needs_netem() {
        args.push("netem".into());
        if let Some(us) = spec.latency_us {
            args.extend(["delay".into(), format!("{us}us")]);
        }
        if let Some(p) = spec.loss_pct {
            args.extend(["loss".into(), format!("{p}%")]);
        }
        if let Some(bps) = spec.bandwidth_bps {
            args.extend(["rate".into(), format!("{bps}bit")]);
        }
    } else if let Some(bps) = spec.bandwidth_bps {
        // Burst: 10 ms worth of bytes, at least 32 KiB (tbf needs burst >= rate / HZ).
        let burst = (bps / 8 / 100).max(32 * 1024);
        args.extend(["tbf", "rate"].map(String::from));
        args.push(format!("{bps}bit"));
        args.extend(["burst".into(), burst.to_string(), "latency".into(), "100ms".into()]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run("tc", &refs).map(drop).map_err(|e| match e {
        LabError::Command { stderr, .. } if spec.needs_netem() && stderr.contains("qdisc kind is unknown") => {
            LabError::NoNetem
        }
        other => other,
    })
}

/// Puts each group's hub ports on a bridge of its own; peers in no group stay on `br0`.
pub(crate) fn partition(lab: &str, peers: usize, groups: &[Vec<usize>]) -> Result<(), LabError> {
    heal(lab, peers)?;
    let hub = hub_ns(lab);
    for (k, g) in groups.iter().enumerate() {
        let br = format!("brp{}", k + 1);
        run("ip", &["-n", &hub, "link", "add", &br, "type", "bridge"])?;
        run("ip", &["-n", &hub, "link", "set", &br, "up"])?;
        for i in g {
            run("ip", &["-n", &hub, "link", "set", &format!("p{i}"), "master", &br])?;
        }
    }
    Ok(())
}

/// Every hub port back on `br0`; group bridges removed.
pub(crate) fn heal(lab: &str, peers: usize) -> Result<(), LabError> {
    let hub = hub_ns(lab);
    for i in 0..peers {
        run("ip", &["-n", &hub, "link", "set", &format!("p{i}"), "master", "br0"])?;
    }
    let links = run("ip", &["-n", &hub, "-o", "link", "show", "type", "bridge"])?;
    for name in links.lines().filter_map(|l| l.split(':').nth(1)).map(str::trim) {
        if name.starts_with("brp") {
            run("ip", &["-n", &hub, "link", "del", name])?;
        }
    }
    Ok(())
}

/// Names of this lab's namespaces that exist now.
pub(crate) fn lab_namespaces(lab: &str) -> Vec<String> {
    let prefix = format!("shoal-{lab}-");
    std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix) && is_lab_ns_suffix(&n[prefix.len()..]))
                .collect()
        })
        .unwrap_or_default()
}

fn is_lab_ns_suffix(s: &str) -> bool {
    s == "hub" || (!s.is_empty() && s.chars().all(|c| c.is_ascii_digit()))
}

/// Deletes every namespace of the lab (their veths and bridges go with them).
pub(crate) fn delete_namespaces(lab: &str) -> Vec<String> {
    let names = lab_namespaces(lab);
    for n in &names {
        run_quiet("ip", &["netns", "del", n]);
    }
    names
}

/// Whether the kernel has netem, tried on the hub's loopback.
pub(crate) fn probe_netem(lab: &str) -> Result<(), LabError> {
    let hub = hub_ns(lab);
    let r = run("tc", &["-n", &hub, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]);
    run_quiet("tc", &["-n", &hub, "qdisc", "del", "dev", "lo", "root"]);
    match r {
        Ok(_) => Ok(()),
        Err(LabError::Command { stderr, .. }) if stderr.contains("qdisc kind is unknown") => Err(LabError::NoNetem),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_labs_namespaces_match() {
        assert!(is_lab_ns_suffix("hub") && is_lab_ns_suffix("12"));
        assert!(!is_lab_ns_suffix("hubx") && !is_lab_ns_suffix("") && !is_lab_ns_suffix("1a"));
    }
}
