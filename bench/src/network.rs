//! The cluster network, in a 5-peer lab per transport (`vxlan`, then `encrypted`), each with
//! its own reference measured in the same lab:
//!
//! - **throughput**: one TCP stream between two peers' own addresses (B, the reference), then
//!   container to container across the same two peers (receiver's goodput, median of `runs`);
//!   CPU seconds per GB of the whole machine (both ends run here) beside each.
//! - **mesh**: a 1-replica service publishing port 8080; an HTTP download of a file from a peer
//!   without the replica, through its own address's published port (the routing mesh) vs the
//!   replica's own address from the same place.
//! - **dns**: queries for a service name from inside a container to the agent's DNS, open loop
//!   at 5,000/s for 4 s: p50, p99, max, errors (no answer within 1 s, or a wrong one).
//! - **convergence**: a scaled-up replica, from running on its peer to being in DNS
//!   (`tasks.NAME`) and the nftables table of every peer; a new peer (fresh identity), from
//!   its subnet claim to a route on every other peer and a ping answered; a killed peer (agent
//!   and containers), from every other peer marking it dead to its route and its replica's
//!   address gone everywhere.
//! - **restart gap**: pings back to back from a container to one on another peer while that
//!   peer's agent is SIGKILLed and started again (its containers keep running): the longest
//!   time without an answer.

use crate::stats::{median_f64, ticks_per_sec};
use anyhow::{Context, bail};
use shoal_testkit::lab::{TestLab, in_netns, measure_tcp, read_timed};
use shoal_types::{NetworkInfo, PeerInfo, PeerState, ReplicaInfo};
use std::io::Write;
use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const PEERS: usize = 5;
const IMAGE: &str = "busybox:net";
const POLL: Duration = Duration::from_millis(20);
const DNS_QPS: u64 = 5000;
const DNS_SECS: u64 = 4;
/// The lab's agents use the default bridge.
const TABLE: &str = "shoal_shoal0";

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn peer_ns(lab: &TestLab, i: usize) -> String {
    format!("shoal-{}-{i}", lab.name)
}

/// Busy CPU seconds of the whole machine so far (every CPU, user + system + interrupts).
fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = f.iter().take(8).sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (total - idle) as f64 / ticks_per_sec()
}

/// (goodput bit/s, machine CPU seconds per GB) of one TCP stream.
fn stream(from: &Path, to: &Path, ip: Ipv4Addr, port: u16, bytes: usize) -> anyhow::Result<(f64, f64)> {
    let cpu0 = machine_busy_secs();
    let bps = measure_tcp(from, to, ip, port, bytes)?;
    let cpu = machine_busy_secs() - cpu0;
    Ok((bps, cpu / (bytes as f64 / 1e9)))
}

/// Downloads `path` over HTTP from inside `ns`; returns the goodput in bit/s.
fn http_download(ns: &Path, ip: Ipv4Addr, port: u16, path: &str) -> anyhow::Result<f64> {
    let path = path.to_string();
    in_netns(ns, move || -> anyhow::Result<f64> {
        let mut s = std::net::TcpStream::connect_timeout(&(ip, port).into(), Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())?;
        let (got, secs) = read_timed(&mut s)?;
        anyhow::ensure!(got > 1 << 20, "short download: {got} bytes");
        Ok(got as f64 * 8.0 / secs.max(1e-9))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("download thread panicked"))??
}

/// A DNS query for `name` (type A) with `id`.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend([1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend(label.as_bytes());
    }
    q.extend([0, 0, 1, 0, 1]);
    q
}

/// Skips a (possibly compressed) name at `at`; returns the offset after it.
fn skip_name(b: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *b.get(at)? as usize;
        if len == 0 {
            return Some(at + 1);
        }
        if len & 0xc0 == 0xc0 {
            return Some(at + 2);
        }
        at += 1 + len;
    }
}

/// (id, rcode, A records) of a DNS response.
fn dns_answer(b: &[u8]) -> Option<(u16, u8, Vec<Ipv4Addr>)> {
    let id = u16::from_be_bytes([*b.first()?, *b.get(1)?]);
    let rcode = b.get(3)? & 0x0f;
    let qd = u16::from_be_bytes([*b.get(4)?, *b.get(5)?]);
    let an = u16::from_be_bytes([*b.get(6)?, *b.get(7)?]);
    let mut at = 12;
    for _ in 0..qd {
        at = skip_name(b, at)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        at = skip_name(b, at)?;
        let kind = u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]);
        let len = u16::from_be_bytes([*b.get(at + 8)?, *b.get(at + 9)?]) as usize;
        at += 10;
        if kind == 1 && len == 4 {
            out.push(Ipv4Addr::new(*b.get(at)?, *b.get(at + 1)?, *b.get(at + 2)?, *b.get(at + 3)?));
        }
        at += len;
    }
    Some((id, rcode, out))
}

/// One query from inside `ns` to `server`, waiting up to 300 ms.
fn resolve(ns: &Path, server: Ipv4Addr, name: &str) -> Vec<Ipv4Addr> {
    let name = name.to_string();
    let r = in_netns(ns, move || -> Option<Vec<Ipv4Addr>> {
        let s = UdpSocket::bind("0.0.0.0:0").ok()?;
        s.set_read_timeout(Some(Duration::from_millis(300))).ok()?;
        s.send_to(&dns_query(7, &name), (server, 53)).ok()?;
        let mut buf = [0u8; 1500];
        let n = s.recv(&mut buf).ok()?;
        dns_answer(&buf[..n]).map(|(_, _, a)| a)
    })
    .join();
    r.ok().and_then(|r| r.ok()).flatten().unwrap_or_default()
}

/// DNS under load from inside `ns`: (p50 ms, p99 ms, max ms, errors, sent).
fn dns_load(ns: &Path, server: Ipv4Addr, name: &str, want: Ipv4Addr) -> anyhow::Result<(f64, f64, f64, u64, u64)> {
    let sock = in_netns(ns, || UdpSocket::bind("0.0.0.0:0"))
        .join()
        .map_err(|_| anyhow::anyhow!("socket thread panicked"))???;
    sock.connect((server, 53))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let total = DNS_QPS * DNS_SECS;
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let t0 = Instant::now();
    let rx_sock = sock.try_clone()?;
    let rx_sent = sent_at.clone();
    let receiver = std::thread::spawn(move || {
        let mut lat = Vec::with_capacity(total as usize);
        let mut wrong = 0u64;
        let mut buf = [0u8; 1500];
        let end = Duration::from_secs(DNS_SECS + 1);
        while t0.elapsed() < end && (lat.len() as u64 + wrong) < total {
            let Ok(n) = rx_sock.recv(&mut buf) else { continue };
            let now = t0.elapsed().as_nanos() as u64;
            match dns_answer(&buf[..n]) {
                Some((id, 0, a)) if a == [want] => {
                    let sent = rx_sent[id as usize % total as usize].load(Ordering::Relaxed);
                    lat.push(now.saturating_sub(sent) as f64 / 1e6);
                }
                _ => wrong += 1,
            }
        }
        (lat, wrong)
    });
    let per = Duration::from_nanos(1_000_000_000 / DNS_QPS);
    for i in 0..total {
        // Sleep, not spin, until it is due: a spinning sender would take one of this
        // machine's two cores from the agents it measures.
        let due = per * i as u32;
        if let Some(wait) = due.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
        sent_at[i as usize].store(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        // Ids wrap at 65,536; 20,000 queries stay under that.
        let _ = sock.send(&dns_query(i as u16, name));
    }
    let (mut lat, _wrong) = receiver.join().map_err(|_| anyhow::anyhow!("receiver panicked"))?;
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(f64::NAN)
    };
    // Wrong answers are not in `lat`: they count as errors.
    let errors = total - lat.len() as u64;
    Ok((pct(0.5), pct(0.99), lat.last().copied().unwrap_or(f64::NAN), errors, total))
}

/// Whether peer `i`'s nft table mentions `ip`.
fn in_table(lab: &TestLab, i: usize, ip: Ipv4Addr) -> bool {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", peer_ns(lab, i)))
        .args(["nft", "list", "table", "inet", TABLE])
        .output();
    out.is_ok_and(|o| mentions(&String::from_utf8_lossy(&o.stdout), &ip.to_string()))
}

/// Whether `text` has `word` with no digit or dot either side (198.19.1.2 is not in 198.19.1.23).
fn mentions(text: &str, word: &str) -> bool {
    let part = |c: Option<char>| c.is_some_and(|c| c.is_ascii_digit() || c == '.');
    text.match_indices(word)
        .any(|(at, _)| !part(text[..at].chars().next_back()) && !part(text[at + word.len()..].chars().next()))
}

/// Whether peer `i` routes `subnet` (text like `198.19.7.0/24`) through the transport.
fn routes(lab: &TestLab, i: usize, subnet: &str) -> bool {
    let out = Command::new("ip").args(["-n", &peer_ns(lab, i), "route", "show", "proto", "83"]).output();
    out.is_ok_and(|o| mentions(&String::from_utf8_lossy(&o.stdout), subnet))
}

/// `r`, after printing the end of peer `i`'s log when it is an error.
fn with_log<T>(lab: &TestLab, i: usize, r: anyhow::Result<T>) -> anyhow::Result<T> {
    if r.is_err() {
        let log = String::from_utf8_lossy(&lab.cli(&["logs", &i.to_string()]).stdout).into_owned();
        for l in log.lines().filter(|l| l.contains("panick") || l.contains("ERROR")).take(20) {
            eprintln!("peer {i}'s log: {l}");
        }
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        eprintln!("peer {i}'s log ends:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    r
}

async fn network(lab: &TestLab, i: usize) -> anyhow::Result<NetworkInfo> {
    Ok(lab.client(i).get("/v1/network").await?)
}

async fn replicas(lab: &TestLab, i: usize) -> Vec<ReplicaInfo> {
    lab.client(i).get("/v1/services/web/replicas").await.unwrap_or_default()
}

fn ok(lab: &TestLab, i: usize, args: &[&str]) -> anyhow::Result<String> {
    lab.ok(&[&["exec", &i.to_string(), "--"][..], args].concat())
}

fn inspect(lab: &TestLab, i: usize, ctr: &str) -> anyhow::Result<(u32, Ipv4Addr)> {
    let v: serde_json::Value = serde_json::from_str(&ok(lab, i, &["shoal", "inspect", ctr])?)?;
    let pid = v["pid"].as_u64().context("no pid")? as u32;
    Ok((pid, v["ip"].as_str().context("no ip")?.parse()?))
}

fn ns_of(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}

/// Polls `f` every 20 ms for up to `within`; the time it first held.
async fn until(within: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) -> anyhow::Result<Instant> {
    shoal_testkit::eventually_every(within, POLL, what, async || f().await.then(Instant::now)).await
}

fn median_secs(xs: &[Duration]) -> f64 {
    median_f64(&xs.iter().map(|d| secs(*d)).collect::<Vec<_>>())
}

/// One transport's lab and measurements.
async fn transport(name: &str, runs: usize, mib: u64) -> anyhow::Result<()> {
    println!("== network, transport {name}: {PEERS} peers in a lab");
    let arg = format!("--network-transport={name}");
    let lab = TestLab::up(&format!("bn{}", &name[..2]), PEERS, &["--peer-memory", "1g", "--agent-arg", &arg])?;
    let all: Vec<usize> = (0..PEERS).collect();
    lab.wait_states(&all, &all, PeerState::Alive, Duration::from_secs(60)).await?;
    let archive = lab.root.path().join("busybox.tar");
    shoal_testkit::images::write_busybox_image(&archive, IMAGE, &[], serde_json::json!({"Env": ["PATH=/bin"]}));
    ok(&lab, 0, &["shoal", "image", "import", &archive.display().to_string()])?;
    let peer_ip: Vec<Ipv4Addr> =
        lab.status()?.iter().map(|r| r["ip"].as_str().unwrap_or_default().parse()).collect::<Result<_, _>>()?;
    for i in 0..2 {
        ok(&lab, i, &["shoal", "run", "-d", "--name", &format!("c{i}"), IMAGE, "sleep", "1d"])?;
    }
    let (pid0, _) = inspect(&lab, 0, "c0")?;
    let (pid1, ip1) = inspect(&lab, 1, "c1")?;

    // Throughput: B, then container to container, alternating.
    let bytes = (mib << 20) as usize;
    let (mut b, mut c, mut b_cpu, mut c_cpu) = (vec![], vec![], vec![], vec![]);
    let (ns0, ns1) = (lab.netns(0), lab.netns(1));
    for r in 0..runs {
        let port = 47000 + r as u16 * 2;
        let (bps, cpu) = stream(&ns0, &ns1, peer_ip[1], port, bytes)?;
        b.push(bps / 1e9);
        b_cpu.push(cpu);
        let (bps, cpu) = stream(&ns_of(pid0), &ns_of(pid1), ip1, port + 1, bytes)?;
        c.push(bps / 1e9);
        c_cpu.push(cpu);
    }
    let (mb, mc) = (median_f64(&b), median_f64(&c));
    println!(
        "throughput ({mib} MiB x {runs}): B (peer to peer) {mb:.2} Gbit/s, {:.2} CPU s/GB; container to container {mc:.2} Gbit/s, {:.2} CPU s/GB; ratio {:.2} of B",
        median_f64(&b_cpu),
        median_f64(&c_cpu),
        mc / mb
    );

    // The routing mesh vs the replica's own address, from a peer without the replica.
    let serve = "mkdir -p /www; dd if=/dev/zero of=/www/big bs=1M count=256 2>/dev/null; exec httpd -f -p 80 -h /www";
    ok(
        &lab,
        0,
        &["shoal", "service", "create", "--name", "web", "--replicas", "1", "-p", "8080:80", IMAGE, "sh", "-c", serve],
    )?;
    let ids = lab.ids()?;
    let mut first = None;
    until(Duration::from_secs(60), "web runs", async || {
        first = replicas(&lab, 0).await.into_iter().find(|r| r.state == "running" && r.ip.is_some());
        first.is_some()
    })
    .await?;
    let replica = first.context("replica")?;
    let host = ids.iter().position(|x| *x == replica.peer).context("replica's peer")?;
    let rip: Ipv4Addr = replica.ip.clone().unwrap_or_default().parse()?;
    let client = (host + 1) % PEERS;
    let cns = lab.netns(client);
    until(Duration::from_secs(30), "the file is written", async || http_download(&cns, rip, 80, "/big").is_ok())
        .await?;
    let (mut mesh, mut direct) = (vec![], vec![]);
    for _ in 0..runs {
        direct.push(http_download(&cns, rip, 80, "/big")? / 1e9);
        mesh.push(http_download(&cns, peer_ip[client], 8080, "/big")? / 1e9);
    }
    let (mm, md) = (median_f64(&mesh), median_f64(&direct));
    println!(
        "mesh (256 MiB over HTTP, from a peer without the replica): published port {mm:.2} Gbit/s, replica's own address {md:.2} Gbit/s; ratio {:.2}",
        mm / md
    );

    // DNS from inside c0, open loop.
    let net0 = network(&lab, 0).await?;
    let gw0: Ipv4Addr = net0.gateway.context("no gateway")?.parse()?;
    let vip = resolve(&ns_of(pid0), gw0, "web");
    let vip = *vip.first().context("web has no address")?;
    let (mut p50s, mut p99s, mut maxes, mut errors, mut sent) = (vec![], vec![], vec![], 0, 0);
    for _ in 0..runs {
        let (p50, p99, max, e, n) = dns_load(&ns_of(pid0), gw0, "web", vip)?;
        p50s.push(p50);
        p99s.push(p99);
        maxes.push(max);
        errors += e;
        sent += n;
    }
    println!(
        "dns (inside a container, {DNS_QPS}/s for {DNS_SECS} s, x {runs}): median p50 {:.3} ms, median p99 {:.3} ms (worst {:.3}), max {:.2} ms, errors {errors} of {sent}",
        median_f64(&p50s),
        median_f64(&p99s),
        p99s.iter().copied().fold(0.0, f64::max),
        maxes.iter().copied().fold(0.0, f64::max)
    );

    // Convergence of a new replica: running on its peer -> in DNS and nft everywhere.
    let gateways: Vec<Ipv4Addr> = {
        let mut v = Vec::new();
        for i in 0..PEERS {
            v.push(network(&lab, i).await?.gateway.context("no gateway")?.parse()?);
        }
        v
    };
    let mut replica_lag = Vec::new();
    for _ in 0..runs {
        ok(&lab, 0, &["shoal", "service", "scale", "web", "2"])?;
        let mut new = None;
        let running = until(Duration::from_secs(60), "the second replica runs", async || {
            new = replicas(&lab, 0)
                .await
                .into_iter()
                .find(|r| r.state == "running" && r.ip.is_some() && r.container != replica.container);
            new.is_some()
        })
        .await?;
        let nip: Ipv4Addr = new.context("new replica")?.ip.unwrap_or_default().parse()?;
        let seen = until(Duration::from_secs(10), "the new replica everywhere", async || {
            (0..PEERS)
                .all(|i| in_table(&lab, i, nip) && resolve(&lab.netns(i), gateways[i], "tasks.web").contains(&nip))
        })
        .await?;
        replica_lag.push(seen.saturating_duration_since(running));
        ok(&lab, 0, &["shoal", "service", "scale", "web", "1"])?;
        until(Duration::from_secs(30), "back to one replica everywhere", async || {
            (0..PEERS).all(|i| !in_table(&lab, i, nip))
        })
        .await?;
    }
    println!(
        "convergence: a new replica in DNS and the mesh of all {PEERS} peers {:.2} s after it runs (median of {runs}; polled every 20 ms)",
        median_secs(&replica_lag)
    );

    // The restart gap: single pings c0 -> c1 back to back (a new `ping -c 1` each, so one that
    // gets no answer cannot stop the series) while peer 1's agent restarts; the gap is the
    // longest time between two answers, beside the usual time between answers.
    let prober = std::thread::spawn(move || {
        let t0 = Instant::now();
        let mut answered = Vec::new();
        while t0.elapsed() < Duration::from_secs(7) {
            let ok = Command::new("nsenter")
                .args(["-t", &pid0.to_string(), "-n", "ping", "-c", "1", "-W", "0.2", "-q"])
                .arg(ip1.to_string())
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                answered.push(t0.elapsed());
            }
        }
        answered
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t_kill = Instant::now();
    lab.ok(&["kill", "1"])?;
    with_log(&lab, 1, lab.ok(&["start", "1"]))?;
    let restarted = t_kill.elapsed();
    let answered = prober.join().map_err(|_| anyhow::anyhow!("prober panicked"))?;
    let gaps: Vec<f64> = answered.windows(2).map(|w| secs(w[1] - w[0])).collect();
    let longest = gaps.iter().copied().fold(0.0, f64::max);
    println!(
        "restart gap: agent SIGKILLed and started again ({:.2} s): longest time without an answer {longest:.2} s (usual {:.3} s between answers, {} answers)",
        secs(restarted),
        median_f64(&gaps),
        answered.len()
    );

    // A new peer: peer 4 leaves for good, comes back as a new identity with a new subnet.
    let newcomer = PEERS - 1;
    lab.ok(&["kill", "--all", &newcomer.to_string()])?;
    let others: Vec<usize> = (0..newcomer).collect();
    lab.wait_states(&others, &[newcomer], PeerState::Dead, Duration::from_secs(30)).await?;
    let dir = lab.dir().join(format!("peer-{newcomer}"));
    for f in ["identity.key", "net.json", "wg.key", "overlay.redb"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let t_start = Instant::now();
    lab.ok(&["start", &newcomer.to_string()])?;
    let mut subnet = String::new();
    let claimed = until(Duration::from_secs(20), "the new peer claims a subnet", async || {
        if let Ok(n) = network(&lab, newcomer).await
            && let Some(s) = n.subnet
        {
            subnet = s;
            return true;
        }
        false
    })
    .await?;
    let routed = until(Duration::from_secs(20), "every peer routes the new subnet", async || {
        others.iter().all(|&i| routes(&lab, i, &subnet))
    })
    .await?;
    let gw_new: Ipv4Addr =
        with_log(&lab, newcomer, network(&lab, newcomer).await)?.gateway.context("no gateway")?.parse()?;
    let answered = until(Duration::from_secs(20), "peer 0 reaches the new peer's bridge", async || {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", peer_ns(&lab, 0)))
            .args(["ping", "-c", "1", "-W", "0.3"])
            .arg(gw_new.to_string())
            .output()
            .is_ok_and(|o| o.status.success())
    })
    .await?;
    println!(
        "convergence: a new peer claims {subnet} {:.2} s after its agent starts; routed by all others {:.2} s after the claim; first ping answered {:.2} s after the claim",
        secs(claimed - t_start),
        secs(routed.saturating_duration_since(claimed)),
        secs(answered.saturating_duration_since(claimed))
    );

    // A dead peer: one running a replica (of 3), not peer 0 (which watches), killed with its
    // containers.
    ok(&lab, 0, &["shoal", "service", "scale", "web", "3"])?;
    let mut list = Vec::new();
    until(Duration::from_secs(60), "3 replicas run", async || {
        list = replicas(&lab, 0).await.into_iter().filter(|r| r.state == "running" && r.ip.is_some()).collect();
        list.len() == 3
    })
    .await?;
    let ids = lab.ids()?;
    let victim = list
        .iter()
        .filter_map(|r| ids.iter().position(|x| *x == r.peer))
        .find(|&v| v != 0)
        .context("a replica off peer 0")?;
    let vnet = network(&lab, victim).await?.subnet.context("victim subnet")?;
    let vreplicas: Vec<Ipv4Addr> =
        list.iter().filter(|r| r.peer == ids[victim]).filter_map(|r| r.ip.as_deref()?.parse().ok()).collect();
    let watchers: Vec<usize> = (0..PEERS).filter(|&i| i != victim).collect();
    let vid = ids[victim].clone();
    let t_kill = Instant::now();
    lab.ok(&["kill", "--all", &victim.to_string()])?;
    let mut dead_at = None;
    let mut left = Vec::new();
    let gone = until(Duration::from_secs(30), "the dead peer's routes and backends gone", async || {
        if dead_at.is_none() {
            let mut all = true;
            for &i in &watchers {
                let view: Vec<PeerInfo> = lab.client(i).get("/v1/peers").await.unwrap_or_default();
                all &= shoal_testkit::state_of(&view, &vid) == Some(PeerState::Dead);
            }
            if all {
                dead_at = Some(Instant::now());
            }
        }
        left.clear();
        for &i in &watchers {
            if routes(&lab, i, &vnet) {
                left.push(format!("peer {i} routes {vnet}"));
            }
            for ip in vreplicas.iter().filter(|ip| in_table(&lab, i, **ip)) {
                left.push(format!("peer {i}'s table has {ip}"));
            }
        }
        left.is_empty()
    })
    .await
    .with_context(|| format!("still there: {}", left.join("; ")))?;
    let dead_at = match dead_at {
        Some(d) => d,
        None => {
            until(Duration::from_secs(30), "everyone marks it dead", async || {
                let mut all = true;
                for &i in &watchers {
                    let view: Vec<PeerInfo> = lab.client(i).get("/v1/peers").await.unwrap_or_default();
                    all &= shoal_testkit::state_of(&view, &vid) == Some(PeerState::Dead);
                }
                all
            })
            .await?
        }
    };
    println!(
        "convergence: a killed peer is dead everywhere {:.2} s after the kill; its route and {} backend(s) gone everywhere {:.2} s after the kill ({:+.2} s after detection)",
        secs(dead_at - t_kill),
        vreplicas.len(),
        secs(gone - t_kill),
        (gone.max(dead_at) - dead_at).as_secs_f64() - (dead_at.max(gone) - gone).as_secs_f64()
    );
    let down = lab.down();
    if !down.status.success() {
        bail!("lab down: {}", String::from_utf8_lossy(&down.stderr));
    }
    Ok(())
}

pub(crate) async fn run(runs: usize, mib: u64, transports: &[String]) -> anyhow::Result<()> {
    for t in transports {
        transport(t, runs, mib).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_messages_round_trip() {
        let q = dns_query(42, "tasks.web");
        assert_eq!(dns_answer(&q), Some((42, 0, vec![])));
        let mut r = q.clone();
        r[2] = 0x81;
        r[7] = 1;
        r.extend([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 10, 0, 0, 7]);
        assert_eq!(dns_answer(&r), Some((42, 0, vec![Ipv4Addr::new(10, 0, 0, 7)])));
    }
}
