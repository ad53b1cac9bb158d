//! The cluster network end to end in a lab, in both transports: real agents in network
//! namespaces, real containers, the real CLI, busybox's own wget and nslookup inside the
//! containers, tcpdump on the lab's switch and iputils' ping for DF probes.

use shoal_testkit::eventually;
use shoal_testkit::lab::{TestLab, in_netns};
use shoal_types::{PeerState, ReplicaInfo};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::time::Duration;

const PEERS: usize = 3;
/// Serves its own hostname over HTTP on port 80.
const WEB: &str = "mkdir -p /www; hostname > /www/index.html; exec httpd -f -p 80 -h /www";

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `sh -c CMD` in container `ctr` on peer `i`, through the real CLI.
fn sh(lab: &TestLab, i: usize, ctr: &str, cmd: &str) -> Output {
    lab.cli(&["exec", &i.to_string(), "--", "shoal", "exec", ctr, "sh", "-c", cmd])
}

/// An HTTP GET from container `ctr` on peer `i` (busybox wget; `timeout` rather than `-T`,
/// which crashes busybox with an address literal).
fn get(lab: &TestLab, i: usize, ctr: &str, url: &str) -> Option<String> {
    let out = sh(lab, i, ctr, &format!("timeout 3 wget -qO- {url}"));
    out.status.success().then(|| text(&out))
}

/// The addresses a container's resolver gives for `name` (the server's own lines aside).
fn lookup(lab: &TestLab, i: usize, ctr: &str, name: &str) -> BTreeSet<Ipv4Addr> {
    let out = sh(lab, i, ctr, &format!("nslookup {name}"));
    let answer = text(&out);
    answer
        .split("Name:")
        .skip(1)
        .flat_map(|block| block.lines().filter_map(|l| l.strip_prefix("Address:")?.trim().parse().ok()))
        .collect()
}

fn inspect(lab: &TestLab, i: usize, ctr: &str) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(&lab.ok(&["exec", &i.to_string(), "--", "shoal", "inspect", ctr])?)?)
}

fn ip_of(lab: &TestLab, i: usize, ctr: &str) -> anyhow::Result<Ipv4Addr> {
    let v = inspect(lab, i, ctr)?;
    Ok(v["ip"].as_str().unwrap_or_default().parse()?)
}

/// Connects from inside `ns` to `to:port` and returns the HTTP body.
fn http_from(ns: &std::path::Path, to: Ipv4Addr, port: u16) -> anyhow::Result<String> {
    in_netns(ns, move || -> anyhow::Result<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(&(to, port).into(), Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        anyhow::ensure!(body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"), "{body}");
        Ok(body.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("http thread panicked"))??
}

async fn replicas(lab: &TestLab, i: usize) -> Vec<ReplicaInfo> {
    lab.client(i).get("/v1/services/web/replicas").await.unwrap_or_default()
}

/// One scenario, both transports: addresses, names, the virtual address and the mesh, agent
/// ports closed to containers, the MTU, what the switch sees, a dead peer, and no leftovers.
async fn scenario(transport: &str) -> anyhow::Result<()> {
    let arg = format!("--network-transport={transport}");
    let lab = TestLab::up(&format!("net{}", &transport[..3]), PEERS, &["--peer-memory", "512m", "--agent-arg", &arg])?;
    let all: Vec<usize> = (0..PEERS).collect();
    lab.wait_states(&all, &all, PeerState::Alive, Duration::from_secs(20)).await?;
    let archive = lab.root.path().join("busybox.tar");
    shoal_testkit::images::write_busybox_image(&archive, "busybox:net", &[], serde_json::json!({"Env": ["PATH=/bin"]}));
    lab.ok(&["exec", "0", "--", "shoal", "image", "import", &archive.display().to_string()])?;
    let status = lab.status()?;
    let peer_ip: Vec<Ipv4Addr> =
        status.iter().map(|r| r["ip"].as_str().unwrap_or_default().parse()).collect::<Result<_, _>>()?;

    // A client on every peer, each serving its own name.
    for i in 0..PEERS {
        let serve = format!("mkdir /w; echo c{i} > /w/index.html; httpd -p 80 -h /w; exec sleep 1d");
        lab.ok(&[
            "exec",
            &i.to_string(),
            "--",
            "shoal",
            "run",
            "-d",
            "--name",
            &format!("c{i}"),
            "busybox:net",
            "sh",
            "-c",
            &serve,
        ])?;
    }
    lab.ok(&[
        "exec",
        "0",
        "--",
        "shoal",
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "2",
        "-p",
        "8080:80",
        "--health-cmd",
        "test -f /www/index.html",
        "busybox:net",
        "sh",
        "-c",
        WEB,
    ])?;
    let ips: Vec<Ipv4Addr> = (0..PEERS).map(|i| ip_of(&lab, i, &format!("c{i}"))).collect::<Result<_, _>>()?;
    let subnets: BTreeSet<[u8; 3]> = ips.iter().map(|ip| [ip.octets()[0], ip.octets()[1], ip.octets()[2]]).collect();
    assert_eq!(subnets.len(), PEERS, "each peer has its own subnet: {ips:?}");

    // Every container reaches every other, by address and by name.
    for i in 0..PEERS {
        for (j, their_ip) in ips.iter().enumerate() {
            let (me, them) = (format!("c{i}"), format!("c{j}"));
            let want = format!("c{j}\n");
            let by_ip = format!("http://{their_ip}/");
            eventually(Duration::from_secs(15), &format!("{me} reaches {them} at {by_ip}"), || async {
                (get(&lab, i, &me, &by_ip).as_deref() == Some(want.as_str())).then_some(())
            })
            .await?;
            assert_eq!(
                get(&lab, i, &me, &format!("http://{them}/")).as_deref(),
                Some(want.as_str()),
                "{me} → {them} by name"
            );
        }
    }

    // tasks.web: the two replicas' own addresses; web: the virtual address, balanced over them.
    let tasks = eventually(Duration::from_secs(60), "tasks.web lists 2 replicas", || async {
        let t = lookup(&lab, 0, "c0", "tasks.web");
        (t.len() == 2).then_some(t)
    })
    .await?;
    let mut names = BTreeSet::new();
    for ip in &tasks {
        let body = get(&lab, 0, "c0", &format!("http://{ip}/")).unwrap_or_default();
        assert!(!body.is_empty(), "replica {ip} answers");
        names.insert(body);
    }
    let vip = lookup(&lab, 1, "c1", "web");
    assert_eq!(vip.len(), 1, "web is one address: {vip:?}");
    assert!(vip.iter().all(|v| !tasks.contains(v)), "the virtual address is none of the replicas'");
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        if let Some(b) = get(&lab, 1, "c1", "http://web/") {
            seen.insert(b);
        }
    }
    assert_eq!(seen, names, "http://web/ balances over both replicas");

    // The routing mesh: every peer answers on its own address and on 127.0.0.1, with or
    // without a replica.
    for (k, &addr) in peer_ip.iter().enumerate() {
        let from = lab.netns((k + 1) % PEERS);
        eventually(Duration::from_secs(10), &format!("peer {k}:8080 answers"), || async {
            http_from(&from, addr, 8080).ok().filter(|b| names.contains(b))
        })
        .await?;
        let body = http_from(&lab.netns(k), Ipv4Addr::LOCALHOST, 8080)?;
        assert!(names.contains(&body), "127.0.0.1:8080 on peer {k}: {body}");
    }

    // The agent's own ports are closed to containers (DNS aside, shown above); another
    // peer's are reachable like any host on the LAN (the probe works).
    let gateway = sh(&lab, 0, "c0", "awk '/nameserver/ {print $2}' /etc/resolv.conf");
    let gateway = text(&gateway).trim().to_string();
    for port in [shoal_lab::PEER_PORT, shoal_lab::PEER_PORT + 1] {
        // From its own container, and from another peer's through the tunnel.
        for (i, ctr) in [(0, "c0"), (1, "c1")] {
            let probe = sh(&lab, i, ctr, &format!("timeout 3 nc {gateway} {port} </dev/null"));
            assert!(!probe.status.success(), "{ctr} reached peer 0's agent port {port} on {gateway}");
        }
    }
    let other = sh(&lab, 0, "c0", &format!("timeout 3 nc {} {} </dev/null", peer_ip[1], shoal_lab::PEER_PORT));
    assert!(other.status.success(), "the nc probe works: {}", String::from_utf8_lossy(&other.stderr));

    // DF probes from inside c0 to c1: the transport's MTU passes whole, one byte more does not.
    let pid = inspect(&lab, 0, "c0")?["pid"].as_u64().unwrap_or_default();
    let mtu: usize = if transport == "vxlan" { 1450 } else { 1420 };
    let ping = |size: usize| {
        Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-n", "ping", "-M", "do", "-c", "1", "-W", "2", "-s", &size.to_string()])
            .arg(ips[1].to_string())
            .output()
    };
    let fits = ping(mtu - 28)?;
    assert!(fits.status.success(), "a {mtu}-byte DF packet crosses: {}", String::from_utf8_lossy(&fits.stdout));
    assert!(!ping(mtu - 27)?.status.success(), "a packet over the MTU with DF set is refused");

    // What the switch sees: the marker in vxlan, never in encrypted.
    let marker = format!("shoal-marker-{}", std::process::id());
    sh(&lab, 1, "c1", &format!("echo {marker} > /w/secret"));
    let pcap = lab.root.path().join("switch.pcap");
    let hub = format!("/run/netns/shoal-{}-hub", lab.name);
    let mut dump = Command::new("nsenter")
        .arg(format!("--net={hub}"))
        .args(["tcpdump", "-i", "br0", "--immediate-mode", "-U", "-s", "0", "-w"])
        .arg(&pcap)
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // Capture starts once tcpdump says it listens (slow under load); immediate mode hands it
    // each packet as it comes (else the kernel ring holds them up to a second, and a SIGTERM
    // before then loses them).
    let mut stderr = std::io::BufReader::new(dump.stderr.take().expect("piped stderr"));
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut stderr, &mut line)? > 0 && !line.contains("listening on") {
        line.clear();
    }
    let got = get(&lab, 0, "c0", &format!("http://{}/secret", ips[1]));
    std::thread::sleep(Duration::from_millis(500));
    // SIGTERM: tcpdump writes out what it holds before it exits.
    Command::new("kill").arg(dump.id().to_string()).status()?;
    dump.wait()?;
    assert_eq!(got.as_deref().map(str::trim), Some(marker.as_str()));
    let captured = std::fs::read(&pcap)?;
    assert!(captured.len() > 1000, "tcpdump captured the exchange ({} bytes)", captured.len());
    let plain = captured.windows(marker.len()).any(|w| w == marker.as_bytes());
    assert_eq!(plain, transport == "vxlan", "{transport}: marker visible on the switch: {plain}");

    // tasks.web lists exactly the healthy replicas: break one (its page goes, so it answers
    // 404), and soon every address listed serves the page again (the broken one left; its
    // replacement may reuse its address and its name).
    let list = replicas(&lab, 0).await;
    let sick = list.iter().find(|r| r.state == "running").expect("a running replica");
    let ids = lab.ids()?;
    let k = ids.iter().position(|x| *x == sick.peer).expect("replica peer");
    let sick_ip = ip_of(&lab, k, &sick.container)?;
    lab.ok(&["exec", &k.to_string(), "--", "shoal", "exec", &sick.container, "rm", "/www/index.html"])?;
    assert!(get(&lab, 2, "c2", &format!("http://{sick_ip}/")).is_none(), "the broken replica no longer serves");
    let mut seen = String::new();
    let served = eventually(Duration::from_secs(30), "tasks.web lists only replicas that serve", async || {
        let t = lookup(&lab, 2, "c2", "tasks.web");
        let silent: Vec<_> = t.iter().filter(|ip| get(&lab, 2, "c2", &format!("http://{ip}/")).is_none()).collect();
        let states: Vec<_> = replicas(&lab, 0).await.into_iter().map(|r| (r.ip, r.state)).collect();
        seen = format!("tasks.web {t:?}, not serving {silent:?}, replicas {states:?}");
        (!t.is_empty() && silent.is_empty()).then_some(())
    })
    .await;
    served.map_err(|e| e.context(format!("broken replica {sick_ip} on peer {k}; last seen: {seen}")))?;

    // Kill a peer that runs a replica (not peer 0): http://web/ keeps answering from peer 0,
    // and its subnet's route is gone there.
    let list = eventually(Duration::from_secs(60), "2 healthy replicas again", || async {
        let l: Vec<ReplicaInfo> = replicas(&lab, 0).await.into_iter().filter(|r| r.state == "running").collect();
        (l.len() == 2 && lookup(&lab, 0, "c0", "tasks.web").len() == 2).then_some(l)
    })
    .await?;
    let victim = list.iter().filter_map(|r| ids.iter().position(|x| *x == r.peer)).find(|&p| p != 0);
    let victim = victim.unwrap_or(1);
    lab.ok(&["kill", &victim.to_string()])?;
    let dead_net = format!("{}.{}.{}.0", ips[victim].octets()[0], ips[victim].octets()[1], ips[victim].octets()[2]);
    eventually(Duration::from_secs(15), "the dead peer's route is gone", || async {
        let out = Command::new("ip")
            .args(["-n", &format!("shoal-{}-0", lab.name), "route", "show", "proto", "83"])
            .output()
            .ok()?;
        (!text(&out).contains(&dead_net)).then_some(())
    })
    .await?;
    let mut seen = String::new();
    let answers = eventually(Duration::from_secs(20), "http://web/ answers 5 times in a row", async || {
        let got: Vec<Option<String>> = (0..5).map(|_| get(&lab, 0, "c0", "http://web/")).collect();
        let states: Vec<_> = replicas(&lab, 0).await.into_iter().map(|r| (r.ip, r.state)).collect();
        let nft = Command::new("ip")
            .args(["netns", "exec", &format!("shoal-{}-0", lab.name), "nft", "list", "table", "inet", "shoal_shoal0"])
            .output()
            .map(|o| text(&o))
            .unwrap_or_default();
        let dnat: Vec<&str> = nft.lines().filter(|l| l.contains("dnat")).map(str::trim).collect();
        seen = format!("answers {got:?}, replicas {states:?}, on peer 0 {dnat:?}");
        got.iter().all(Option::is_some).then_some(())
    })
    .await;
    answers.map_err(|e| e.context(format!("peer {victim} killed; last seen: {seen}")))?;

    // A removed container leaves no connection tracked for its address on its peer (an address
    // reused by a later container must not inherit its NAT or its established flows).
    // (None: conntrack could not be asked, which proves nothing either way.)
    let conntrack = |ip: Ipv4Addr| -> Option<usize> {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/shoal-{}-0", lab.name))
            .args(["conntrack", "-L", "--orig-src", &ip.to_string()])
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        Some(text(&out).lines().filter(|l| l.contains(&format!("src={ip} "))).count())
    };
    assert!(get(&lab, 0, "c0", "http://web/").is_some(), "c0 reaches web before its removal");
    assert!(conntrack(ips[0]).is_some_and(|n| n > 0), "c0's connections are tracked on peer 0 while it runs");
    lab.ok(&["exec", "0", "--", "shoal", "rm", "-f", "c0"])?;
    eventually(Duration::from_secs(15), "no connection of the removed c0 left tracked", || async {
        (conntrack(ips[0]) == Some(0)).then_some(())
    })
    .await?;

    let name = lab.name.clone();
    let dir = lab.dir();
    let down = lab.down();
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    let left = shoal_testkit::lab::leftovers(&name, &dir);
    assert!(left.is_empty(), "left over: {left:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn encrypted_cluster_network() -> anyhow::Result<()> {
    scenario("encrypted").await
}

#[tokio::test(flavor = "multi_thread")]
async fn vxlan_cluster_network() -> anyhow::Result<()> {
    scenario("vxlan").await
}
