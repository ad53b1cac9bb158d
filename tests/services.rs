//! Leaderless services end to end in a lab: real agents in network namespaces, real
//! containers, the real CLI. Placement, failover, surviving the creator, scaling, partitions.

use serde_json::Value;
use shoal_testkit::lab::TestLab;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// `shoal service ps NAME --json` as seen from peer `i`.
fn replicas(lab: &TestLab, i: usize, name: &str) -> Vec<Value> {
    lab.ok(&["exec", &i.to_string(), "--", "shoal", "service", "ps", name, "--json"])
        .ok()
        .and_then(|o| serde_json::from_str(&o).ok())
        .unwrap_or_default()
}

/// Running replicas by index → peers running it.
fn running(lab: &TestLab, i: usize, name: &str) -> BTreeMap<u64, Vec<String>> {
    let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for r in replicas(lab, i, name) {
        if r["state"] == "running" {
            out.entry(r["index"].as_u64().unwrap_or(0)).or_default().push(r["peer"].as_str().unwrap_or("").to_string());
        }
    }
    out
}

/// Waits until peer `viewer` sees exactly `n` replicas (indexes 0..n) running once each.
fn wait_exactly(
    lab: &TestLab,
    viewer: usize,
    name: &str,
    n: u64,
    secs: u64,
) -> anyhow::Result<BTreeMap<u64, Vec<String>>> {
    wait_exactly_off(lab, viewer, name, n, secs, &[])
}

/// Like [`wait_exactly`], with none of them on the peers `not_on`.
fn wait_exactly_off(
    lab: &TestLab,
    viewer: usize,
    name: &str,
    n: u64,
    secs: u64,
    not_on: &[&str],
) -> anyhow::Result<BTreeMap<u64, Vec<String>>> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let r = running(lab, viewer, name);
        let ok = r.len() as u64 == n
            && r.keys().copied().eq(0..n)
            && r.values().all(|p| p.len() == 1)
            && r.values().flatten().all(|p| !not_on.contains(&p.as_str()));
        if ok {
            return Ok(r);
        }
        if Instant::now() > deadline {
            anyhow::bail!("peer {viewer} sees {r:?}, wanted {n} replicas running once each");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn peer_index(ids: &[String], id: &str) -> usize {
    ids.iter().position(|x| x == id).unwrap_or(usize::MAX)
}

#[tokio::test(flavor = "multi_thread")]
async fn services_place_heal_survive_scale_and_partition() -> anyhow::Result<()> {
    let lab = TestLab::up("svc", 4, &["--peer-memory", "512m", "--peer-cpus", "1"])?;
    lab.wait_states(&[0, 1, 2, 3], &[0, 1, 2, 3], shoal_types::PeerState::Alive, Duration::from_secs(20)).await?;
    let ids = lab.ids()?;
    let archive = lab.root.path().join("busybox.tar");
    shoal_testkit::images::write_busybox_image(&archive, "busybox:svc", &[], serde_json::json!({"Env": ["PATH=/bin"]}));
    lab.ok(&["exec", "0", "--", "shoal", "image", "import", &archive.display().to_string()])?;

    // Declared at peer 1; peer 0 holds the image, the others pull it from peers.
    let ticker = "while true; do sleep 1; done";
    lab.ok(&[
        "exec",
        "1",
        "--",
        "shoal",
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "busybox:svc",
        "sh",
        "-c",
        ticker,
    ])?;
    let placed = wait_exactly(&lab, 0, "web", 3, 60)?;
    let hosts: BTreeSet<&String> = placed.values().flatten().collect();
    assert_eq!(hosts.len(), 3, "three replicas on three distinct peers: {placed:?}");

    // Kill (like a power loss) a peer running one that is not peer 1: 3 run again on the rest.
    let victim = placed.values().flatten().map(|p| peer_index(&ids, p)).find(|&i| i != 1 && i < 4).expect("a victim");
    let t = Instant::now();
    lab.ok(&["kill", "--all", &victim.to_string()])?;
    let viewer = (0..4).find(|&i| i != victim).unwrap_or(0);
    wait_exactly_off(&lab, viewer, "web", 3, 30, &[&ids[victim]])?;
    let healed = t.elapsed();
    assert!(healed < Duration::from_secs(15), "replicas back in {healed:?}");

    // Stop (gracefully) the peer where the service was declared: it lives on.
    lab.ok(&["stop", "1"])?;
    let rest: Vec<usize> = (0..4).filter(|&i| i != victim && i != 1).collect();
    let services = lab.ok(&["exec", &rest[0].to_string(), "--", "shoal", "service", "ls", "--json"])?;
    assert!(services.contains("\"web\""), "{services}");
    wait_exactly_off(&lab, rest[0], "web", 3, 30, &[&ids[1], &ids[victim]])?;

    // A change made while peer 1 is away reaches it when it returns (anti-entropy).
    lab.ok(&["exec", &rest[0].to_string(), "--", "shoal", "service", "scale", "web", "4"])?;

    // Bring both back; scale to 5 and back to 2.
    lab.ok(&["start", "1"])?;
    lab.ok(&["start", &victim.to_string()])?;
    lab.wait_states(&[0, 1, 2, 3], &[0, 1, 2, 3], shoal_types::PeerState::Alive, Duration::from_secs(30)).await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ls = lab.ok(&["exec", "1", "--", "shoal", "service", "ls", "--json"])?;
        let list: Vec<Value> = serde_json::from_str(&ls)?;
        if list.iter().any(|s| s["spec"]["name"] == "web" && s["spec"]["replicas"] == 4) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "peer 1 did not catch up: {ls}");
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_exactly(&lab, 1, "web", 4, 30)?;
    lab.ok(&["exec", "2", "--", "shoal", "service", "scale", "web", "5"])?;
    wait_exactly(&lab, 3, "web", 5, 60)?;
    lab.ok(&["exec", "3", "--", "shoal", "service", "scale", "web", "2"])?;
    wait_exactly(&lab, 0, "web", 2, 60)?;

    // Rolling update to a new image: every replica replaced, one at a time.
    let running_versions = |i: usize| -> BTreeSet<String> {
        replicas(&lab, i, "web")
            .iter()
            .filter(|r| r["state"] == "running")
            .filter_map(|r| r["version"].as_str().map(str::to_string))
            .collect()
    };
    let before = running_versions(0);
    let v2 = lab.root.path().join("busybox-v2.tar");
    shoal_testkit::images::write_busybox_image(&v2, "busybox:v2", &[], serde_json::json!({"Env": ["PATH=/bin"]}));
    lab.ok(&["exec", "0", "--", "shoal", "image", "import", &v2.display().to_string()])?;
    lab.ok(&["exec", "1", "--", "shoal", "service", "update", "web", "--image", "busybox:v2"])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = running_versions(2);
        if now.len() == 1 && now.is_disjoint(&before) && running(&lab, 2, "web").len() == 2 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "rolling update did not finish: {now:?} (before {before:?})");
        std::thread::sleep(Duration::from_millis(200));
    }
    let updated = running_versions(2);

    // An update whose replicas cannot start rolls back to the image before it.
    let bad = lab.root.path().join("busybox-bad.tar");
    shoal_testkit::images::write_busybox_image(&bad, "busybox:bad", &[], serde_json::json!({"Env": ["PATH=/nowhere"]}));
    lab.ok(&["exec", "0", "--", "shoal", "image", "import", &bad.display().to_string()])?;
    lab.ok(&["exec", "3", "--", "shoal", "service", "update", "web", "--image", "busybox:bad"])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ls = lab.ok(&["exec", "0", "--", "shoal", "service", "ls", "--json"])?;
        let list: Vec<Value> = serde_json::from_str(&ls)?;
        let image = list.iter().find(|s| s["spec"]["name"] == "web").map(|s| s["spec"]["image"].clone());
        if image == Some(Value::from("busybox:v2"))
            && running_versions(0) == updated
            && running(&lab, 0, "web").len() == 2
        {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "no rollback: {ls}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // A partition: each side runs its own copy; after the heal no duplicate lasts.
    lab.ok(&["partition", "0,1", "2,3"])?;
    std::thread::sleep(Duration::from_secs(8));
    lab.ok(&["heal"])?;
    lab.wait_states(&[0, 1, 2, 3], &[0, 1, 2, 3], shoal_types::PeerState::Alive, Duration::from_secs(30)).await?;
    wait_exactly(&lab, 0, "web", 2, 30)?;
    wait_exactly(&lab, 3, "web", 2, 30)?;

    // A replica that fails its health check 3 times in a row is replaced by a fresh one.
    let sick = "touch /tmp/ok; sleep 4; rm /tmp/ok; sleep 1000";
    lab.ok(&[
        "exec",
        "0",
        "--",
        "shoal",
        "service",
        "create",
        "--name",
        "hc",
        "--health-cmd",
        "test -f /tmp/ok",
        "busybox:svc",
        "sh",
        "-c",
        sick,
    ])?;
    let first = wait_exactly(&lab, 0, "hc", 1, 60)?;
    let container = |i: usize| {
        replicas(&lab, i, "hc")
            .iter()
            .find(|r| r["state"] == "running")
            .and_then(|r| r["container"].as_str().map(str::to_string))
    };
    let c0 = container(0);
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let c = container(0);
        if c.is_some() && c != c0 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "unhealthy replica not replaced ({first:?})");
        std::thread::sleep(Duration::from_millis(300));
    }
    lab.ok(&["exec", "0", "--", "shoal", "service", "rm", "hc"])?;

    // service logs: every replica's output, from wherever it runs, seen from any peer.
    lab.ok(&[
        "exec",
        "1",
        "--",
        "shoal",
        "service",
        "create",
        "--name",
        "talk",
        "--replicas",
        "2",
        "busybox:svc",
        "sh",
        "-c",
        "echo hello from $(hostname); sleep 1000",
    ])?;
    wait_exactly(&lab, 3, "talk", 2, 60)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let logs = lab.ok(&["exec", "3", "--", "shoal", "service", "logs", "talk"])?;
        if logs.contains("talk.0@") && logs.contains("| hello from talk.0") && logs.contains("| hello from talk.1") {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "service logs incomplete: {logs}");
        std::thread::sleep(Duration::from_millis(300));
    }
    lab.ok(&["exec", "1", "--", "shoal", "service", "rm", "talk"])?;

    // Remove: no container anywhere.
    lab.ok(&["exec", "0", "--", "shoal", "service", "rm", "web"])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left: usize = (0..4)
            .map(|i| {
                let out = lab.ok(&["exec", &i.to_string(), "--", "shoal", "ps", "-a", "--json"]).unwrap_or_default();
                serde_json::from_str::<Vec<Value>>(&out).map(|v| v.len()).unwrap_or(usize::MAX)
            })
            .sum();
        if left == 0 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "{left} containers still exist after service rm");
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_is_idempotent_and_autoscale_follows_cpu() -> anyhow::Result<()> {
    let lab = TestLab::up("dep", 3, &["--peer-memory", "512m", "--peer-cpus", "1"])?;
    lab.wait_states(&[0, 1, 2], &[0, 1, 2], shoal_types::PeerState::Alive, Duration::from_secs(20)).await?;
    let archive = lab.root.path().join("busybox.tar");
    shoal_testkit::images::write_busybox_image(&archive, "busybox:svc", &[], serde_json::json!({"Env": ["PATH=/bin"]}));
    lab.ok(&["exec", "0", "--", "shoal", "image", "import", &archive.display().to_string()])?;
    let file = lab.root.path().join("shoal.toml");
    let write = |env: &str| {
        std::fs::write(
            &file,
            format!(
                r#"[[service]]
name = "busy"
image = "busybox:svc"
replicas = 1
cmd = ["sh", "-c", "while :; do :; done"]
cpus = "0.2"
env = ["{env}"]
autoscale = {{ min = 1, max = 3, target_cpu = 50 }}
"#
            ),
        )
    };
    write("MODE=a")?;
    let f = file.display().to_string();
    let out = lab.ok(&["exec", "1", "--", "shoal", "deploy", &f])?;
    assert!(out.contains("+ busy"), "{out}");
    let out = lab.ok(&["exec", "2", "--", "shoal", "deploy", &f])?;
    assert!(out.contains("= busy (unchanged)") && out.contains("0 change(s)"), "idempotent: {out}");

    // A busy loop at the whole of its 0.2 CPU is 200 % of the 50 % target: it grows to the max.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = running(&lab, 0, "busy");
        if r.len() == 3 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "autoscale did not reach 3 replicas: {r:?}");
        std::thread::sleep(Duration::from_millis(500));
    }

    write("MODE=b")?;
    let out = lab.ok(&["exec", "0", "--", "shoal", "deploy", "--dry-run", &f])?;
    assert!(out.contains("~ busy") && out.contains("MODE=b") && out.contains("dry run"), "{out}");
    lab.ok(&["exec", "0", "--", "shoal", "service", "rm", "busy"])?;
    Ok(())
}
