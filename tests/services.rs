//! Leaderless services end to end in a lab: real agents in network namespaces, real
//! containers, the real CLI for what a user types. One test per scenario; every wait polls
//! for the condition it names (no sleep stands in for synchronisation).

use shoal_testkit::eventually;
use shoal_testkit::lab::TestLab;
use shoal_types::{PeerState, ReplicaInfo, ServiceInfo, Slot};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const TICKER: &str = "while true; do sleep 1; done";

/// A lab of `n` peers, all alive, with `busybox:svc` imported on peer 0.
async fn lab(hint: &str, n: usize) -> anyhow::Result<TestLab> {
    let lab = TestLab::up(hint, n, &["--peer-memory", "512m", "--peer-cpus", "1"])?;
    let all: Vec<usize> = (0..n).collect();
    lab.wait_states(&all, &all, PeerState::Alive, Duration::from_secs(20)).await?;
    import(&lab, "busybox:svc", "PATH=/bin")?;
    Ok(lab)
}

fn import(lab: &TestLab, tag: &str, path_env: &str) -> anyhow::Result<()> {
    let archive = lab.root.path().join(format!("{}.tar", tag.replace(':', "-")));
    shoal_testkit::images::write_busybox_image(&archive, tag, &[], serde_json::json!({"Env": [path_env]}));
    lab.ok(&["exec", "0", "--", "shoal", "image", "import", &archive.display().to_string()])?;
    Ok(())
}

/// `shoal service ARGS` on peer `i` (the real CLI).
fn service(lab: &TestLab, i: usize, args: &[&str]) -> anyhow::Result<String> {
    let i = i.to_string();
    lab.ok(&[&["exec", i.as_str(), "--", "shoal", "service"], args].concat())
}

/// The replicas of `name` as peer `i` reports them.
async fn replicas(lab: &TestLab, i: usize, name: &str) -> Vec<ReplicaInfo> {
    lab.client(i).get(&format!("/v1/services/{name}/replicas")).await.unwrap_or_default()
}

async fn info(lab: &TestLab, i: usize, name: &str) -> Option<ServiceInfo> {
    lab.client(i).get(&format!("/v1/services/{name}")).await.ok()
}

/// Running replicas: slot → (peer id, container id) for each running copy.
type Placement = BTreeMap<Slot, Vec<(String, String)>>;

fn running(list: &[ReplicaInfo]) -> Placement {
    let mut out = Placement::new();
    for r in list.iter().filter(|r| r.state == "running") {
        out.entry(r.slot.clone()).or_default().push((r.peer.clone(), r.container.clone()));
    }
    out
}

/// Slots `0..n` each running exactly once.
fn once_each(p: &Placement, n: u32) -> bool {
    p.len() == n as usize && p.keys().cloned().eq((0..n).map(Slot::Index)) && p.values().all(|v| v.len() == 1)
}

/// Waits until peer `viewer` sees slots `0..n` of `name` running once each and `ok` holds.
async fn settled(
    lab: &TestLab,
    viewer: usize,
    name: &str,
    n: u32,
    secs: u64,
    ok: impl Fn(&Placement) -> bool,
) -> anyhow::Result<Placement> {
    let last = std::sync::Mutex::new(Placement::new());
    let what = format!("{n} replicas of {name} once each (peer {viewer})");
    let found = eventually(Duration::from_secs(secs), &what, || async {
        let p = running(&replicas(lab, viewer, name).await);
        *last.lock().unwrap_or_else(|e| e.into_inner()) = p.clone();
        (once_each(&p, n) && ok(&p)).then_some(p)
    })
    .await;
    found.map_err(|e| {
        let seen = last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        e.context(format!("last seen: {seen:?}\n{}", lab.agent_logs(5)))
    })
}

fn peers_of(p: &Placement) -> Vec<&str> {
    p.values().flatten().map(|(peer, _)| peer.as_str()).collect()
}

fn index_of(ids: &[String], id: &str) -> usize {
    ids.iter().position(|x| x == id).unwrap_or(usize::MAX)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_peers_replicas_move_its_return_moves_nothing_and_rebalance_spreads_again() -> anyhow::Result<()> {
    let lab = lab("sticky", 4).await?;
    let ids = lab.ids()?;
    // Declared at peer 1; only peer 0 has the image: the others pull it from peers.
    service(&lab, 1, &["create", "--name", "web", "--replicas", "4", "busybox:svc", "sh", "-c", TICKER])?;
    let first = settled(&lab, 0, "web", 4, 60, |p| peers_of(p).iter().collect::<BTreeSet<_>>().len() == 4).await?;
    for viewer in 1..4 {
        settled(&lab, viewer, "web", 4, 20, |p| *p == first).await?;
    }

    // A power loss of a peer (not the one the service was declared on).
    let (victim_slot, victim) = first
        .iter()
        .map(|(s, v)| (s.clone(), index_of(&ids, &v[0].0)))
        .find(|(_, i)| *i != 1)
        .expect("a replica off peer 1");
    let t = Instant::now();
    lab.ok(&["kill", "--all", &victim.to_string()])?;
    let healed = settled(&lab, 1, "web", 4, 30, |p| !peers_of(p).contains(&ids[victim].as_str())).await?;
    assert!(t.elapsed() < Duration::from_secs(15), "replicas back in {:?}", t.elapsed());
    for (slot, copies) in &first {
        if *slot != victim_slot {
            assert_eq!(healed.get(slot), Some(copies), "{slot} moved although its peer lived");
        }
    }

    // The peer returns: for 5 s after it sees the service again, nothing moves.
    lab.ok(&["start", &victim.to_string()])?;
    lab.wait_states(&[0, 1, 2, 3], &[victim], PeerState::Alive, Duration::from_secs(30)).await?;
    settled(&lab, victim, "web", 4, 30, |p| *p == healed).await?;
    let watch_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < watch_until {
        let now = running(&replicas(&lab, 2, "web").await);
        assert_eq!(now, healed, "placement changed after the peer returned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // On request, the replicas spread out again, each new copy running before the old stops.
    service(&lab, 3, &["rebalance", "web"])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = running(&replicas(&lab, 0, "web").await);
        assert_eq!(p.len(), 4, "every replica keeps running during the rebalance: {p:?}");
        let spread = peers_of(&p).iter().collect::<BTreeSet<_>>().len() == 4;
        let cleared = info(&lab, 0, "web").await.is_some_and(|s| s.spec.rebalance.is_none());
        if once_each(&p, 4) && spread && cleared {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "no rebalance: {p:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_service_outlives_its_creator_and_a_returning_peer_catches_up() -> anyhow::Result<()> {
    let lab = lab("outlive", 3).await?;
    let ids = lab.ids()?;
    service(&lab, 1, &["create", "--name", "web", "--replicas", "2", "busybox:svc", "sh", "-c", TICKER])?;
    settled(&lab, 0, "web", 2, 60, |_| true).await?;

    // Stop (gracefully) the peer where the service was declared: its replicas are handed off.
    lab.ok(&["stop", "1"])?;
    let ls = service(&lab, 0, &["ls", "--json"])?;
    assert!(ls.contains("\"web\""), "{ls}");
    settled(&lab, 0, "web", 2, 30, |p| !peers_of(p).contains(&ids[1].as_str())).await?;

    // A change made while peer 1 is away reaches it when it returns (anti-entropy).
    service(&lab, 2, &["scale", "web", "3"])?;
    lab.ok(&["start", "1"])?;
    lab.wait_states(&[0, 1, 2], &[0, 1, 2], PeerState::Alive, Duration::from_secs(30)).await?;
    eventually(Duration::from_secs(20), "peer 1 catches up", || async {
        info(&lab, 1, "web").await.filter(|s| s.spec.replicas == 3 && s.running == 3)
    })
    .await?;

    // Scaling down stops the highest slots; nothing is left of them on any peer.
    service(&lab, 1, &["scale", "web", "1"])?;
    settled(&lab, 2, "web", 1, 30, |_| true).await?;
    eventually(Duration::from_secs(20), "one container in the cluster", || async {
        let mut n = 0;
        for i in 0..3 {
            n += lab.client(i).get::<Vec<serde_json::Value>>("/v1/containers?all=true").await.ok()?.len();
        }
        (n == 1).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_update_keeps_all_but_one_replica_up_and_a_failing_update_rolls_back() -> anyhow::Result<()> {
    let lab = lab("rolling", 3).await?;
    import(&lab, "busybox:v2", "PATH=/bin")?;
    import(&lab, "busybox:bad", "PATH=/nowhere")?;
    service(&lab, 0, &["create", "--name", "web", "--replicas", "3", "busybox:svc", "sh", "-c", TICKER])?;
    settled(&lab, 0, "web", 3, 60, |_| true).await?;
    let old = info(&lab, 0, "web").await.map(|s| s.spec).expect("web");
    let old_version = shoal_scheduler::spec_version(&old);

    service(&lab, 1, &["update", "web", "--image", "busybox:v2"])?;
    let new_version = shoal_scheduler::spec_version(&shoal_types::ServiceSpec { image: "busybox:v2".into(), ..old });
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut lowest = 3;
    loop {
        let list = replicas(&lab, 2, "web").await;
        let up: BTreeSet<&Slot> = list.iter().filter(|r| r.state == "running").map(|r| &r.slot).collect();
        lowest = lowest.min(up.len());
        assert!(up.len() >= 2, "more than one replica down at once during the update: {list:?}");
        let done = up.len() == 3 && list.iter().filter(|r| r.state == "running").all(|r| r.version == new_version);
        if done {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the update did not finish: {list:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(old_version, new_version);

    // Replicas of an image that cannot start: the service goes back to busybox:v2.
    service(&lab, 2, &["update", "web", "--image", "busybox:bad"])?;
    eventually(Duration::from_secs(90), "a rollback to busybox:v2", || async {
        let s = info(&lab, 0, "web").await?;
        let p = running(&replicas(&lab, 0, "web").await);
        let back = s.spec.image == "busybox:v2" && s.spec.previous_image.is_none();
        (back && once_each(&p, 3)).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn each_side_of_a_partition_runs_every_replica_and_the_heal_keeps_one() -> anyhow::Result<()> {
    let lab = lab("split", 4).await?;
    let ids = lab.ids()?;
    service(&lab, 0, &["create", "--name", "web", "--replicas", "2", "busybox:svc", "sh", "-c", TICKER])?;
    settled(&lab, 0, "web", 2, 60, |_| true).await?;
    // Both sides must be able to run the image: when both replicas landed on peers 0 and 1,
    // no peer of the other side held it (the test then failed for want of an image).
    let archive = lab.root.path().join("busybox-svc.tar");
    lab.ok(&["exec", "3", "--", "shoal", "image", "import", &archive.display().to_string()])?;

    lab.ok(&["partition", "0,1", "2,3"])?;
    lab.wait_states(&[0, 1], &[2, 3], PeerState::Dead, Duration::from_secs(20)).await?;
    lab.wait_states(&[2, 3], &[0, 1], PeerState::Dead, Duration::from_secs(20)).await?;
    let left = [ids[0].as_str(), ids[1].as_str()];
    let right = [ids[2].as_str(), ids[3].as_str()];
    settled(&lab, 0, "web", 2, 30, |p| peers_of(p).iter().all(|id| left.contains(id))).await?;
    settled(&lab, 3, "web", 2, 30, |p| peers_of(p).iter().all(|id| right.contains(id))).await?;

    lab.ok(&["heal"])?;
    lab.wait_states(&[0, 1, 2, 3], &[0, 1, 2, 3], PeerState::Alive, Duration::from_secs(30)).await?;
    let a = settled(&lab, 0, "web", 2, 30, |_| true).await?;
    settled(&lab, 3, "web", 2, 30, |p| *p == a).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unhealthy_replica_is_replaced_logs_come_from_every_replica_and_rm_leaves_nothing() -> anyhow::Result<()> {
    let lab = lab("health", 3).await?;
    // Healthy for 12 s (past the 10 s grace and one passing check), then failing.
    let sick = "touch /tmp/ok; sleep 12; rm /tmp/ok; sleep 1000";
    service(&lab, 0, &["create", "--name", "hc", "--health-cmd", "test -f /tmp/ok", "busybox:svc", "sh", "-c", sick])?;
    let first = settled(&lab, 0, "hc", 1, 60, |_| true).await?;
    let container = |p: &Placement| p.values().flatten().next().map(|(_, c)| c.clone());
    let c0 = container(&first);
    eventually(Duration::from_secs(60), "a fresh replica", || async {
        let p = running(&replicas(&lab, 0, "hc").await);
        (once_each(&p, 1) && container(&p) != c0).then_some(())
    })
    .await?;

    service(
        &lab,
        1,
        &[
            "create",
            "--name",
            "talk",
            "--replicas",
            "2",
            "busybox:svc",
            "sh",
            "-c",
            "echo hello from $(hostname); sleep 1000",
        ],
    )?;
    settled(&lab, 2, "talk", 2, 60, |_| true).await?;
    eventually(Duration::from_secs(20), "logs of both replicas", || async {
        let logs = service(&lab, 2, &["logs", "talk"]).ok()?;
        (logs.contains("talk.0@") && logs.contains("| hello from talk.0") && logs.contains("| hello from talk.1"))
            .then_some(())
    })
    .await?;

    service(&lab, 0, &["rm", "hc"])?;
    service(&lab, 2, &["rm", "talk"])?;
    eventually(Duration::from_secs(30), "no container left", || async {
        let mut n = 0;
        for i in 0..3 {
            n += lab.client(i).get::<Vec<serde_json::Value>>("/v1/containers?all=true").await.ok()?.len();
        }
        (n == 0).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_global_service_runs_on_every_peer_and_a_dead_peers_copy_goes_nowhere() -> anyhow::Result<()> {
    let lab = lab("global", 3).await?;
    let ids = lab.ids()?;
    service(&lab, 0, &["create", "--name", "agent", "--mode", "global", "busybox:svc", "sh", "-c", TICKER])?;
    let on_each = |p: &Placement, peers: &[usize]| {
        let want: BTreeSet<Slot> = peers.iter().map(|&i| Slot::Peer(ids[i].clone())).collect();
        p.keys().cloned().collect::<BTreeSet<_>>() == want
            && p.iter().all(|(slot, v)| v.len() == 1 && Slot::Peer(v[0].0.clone()) == *slot)
    };
    eventually(Duration::from_secs(60), "one replica on each peer", || async {
        on_each(&running(&replicas(&lab, 1, "agent").await), &[0, 1, 2]).then_some(())
    })
    .await?;
    let ls = service(&lab, 1, &["ls"])?;
    assert!(ls.contains("global") && ls.contains("3/3"), "{ls}");
    let scale = lab.cli(&["exec", "1", "--", "shoal", "service", "scale", "agent", "5"]);
    assert!(!scale.status.success() && String::from_utf8_lossy(&scale.stderr).contains("global"));

    lab.ok(&["kill", "--all", "2"])?;
    lab.wait_states(&[0, 1], &[2], PeerState::Dead, Duration::from_secs(20)).await?;
    eventually(Duration::from_secs(10), "2 replicas, none moved", || async {
        let p = running(&replicas(&lab, 0, "agent").await);
        on_each(&p, &[0, 1]).then_some(())
    })
    .await?;
    for i in 0..2 {
        let n = lab.client(i).get::<Vec<serde_json::Value>>("/v1/containers").await?.len();
        assert_eq!(n, 1, "peer {i} runs only its own replica");
    }
    let t = Instant::now();
    lab.ok(&["start", "2"])?;
    eventually(Duration::from_secs(30), "the returning peer runs its replica", || async {
        on_each(&running(&replicas(&lab, 0, "agent").await), &[0, 1, 2]).then_some(())
    })
    .await?;
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_that_cannot_run_says_why() -> anyhow::Result<()> {
    let lab = lab("why", 2).await?;
    // An image no peer has.
    service(&lab, 0, &["create", "--name", "ghost", "--replicas", "2", "nginx:1.27"])?;
    eventually(Duration::from_secs(30), "ghost failing with a reason", || async {
        let s = info(&lab, 1, "ghost").await?;
        (s.state == "failing" && s.errors.iter().any(|e| e.contains("nginx:1.27") && e.contains("import")))
            .then_some(())
    })
    .await?;
    let ps = service(&lab, 1, &["ps", "ghost"])?;
    assert!(ps.contains("ERROR") && ps.contains("failed") && ps.contains("not on this peer or any other"), "{ps}");
    let json: Vec<ReplicaInfo> = serde_json::from_str(&service(&lab, 1, &["ps", "ghost", "--json"])?)?;
    assert!(json.iter().any(|r| r.state == "failed" && r.error.is_some()), "{json:?}");

    // A constraint no peer matches.
    service(&lab, 1, &["create", "--name", "gpu", "--constraint", "gpu=yes", "busybox:svc", "sh", "-c", TICKER])?;
    eventually(Duration::from_secs(20), "gpu unplaceable", || async {
        let s = info(&lab, 0, "gpu").await?;
        (s.state == "unplaceable").then_some(())
    })
    .await?;
    let ps = service(&lab, 0, &["ps", "gpu"])?;
    assert!(ps.contains("unplaced") && ps.contains("gpu=yes"), "{ps}");
    let ls = service(&lab, 0, &["ls"])?;
    assert!(ls.contains("gpu: no peer matches the constraints"), "{ls}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_is_idempotent_and_autoscale_follows_cpu() -> anyhow::Result<()> {
    let lab = lab("dep", 3).await?;
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

[[service]]
name = "everywhere"
image = "busybox:svc"
mode = "global"
cmd = ["sh", "-c", "{TICKER}"]
"#
            ),
        )
    };
    write("MODE=a")?;
    let f = file.display().to_string();
    let out = lab.ok(&["exec", "1", "--", "shoal", "deploy", &f])?;
    assert!(out.contains("+ busy") && out.contains("+ everywhere (global"), "{out}");
    eventually(Duration::from_secs(10), "peer 2 knows both services", || async {
        let list: Vec<ServiceInfo> = lab.client(2).get("/v1/services").await.ok()?;
        (list.len() == 2).then_some(())
    })
    .await?;
    let out = lab.ok(&["exec", "2", "--", "shoal", "deploy", &f])?;
    assert!(out.contains("= busy (unchanged)") && out.contains("0 change(s)"), "idempotent: {out}");

    // A busy loop at the whole of its 0.2 CPU is 200 % of the 50 % target: it grows to the max.
    settled(&lab, 0, "busy", 3, 90, |_| true).await?;
    eventually(Duration::from_secs(30), "everywhere on 3 peers", || async {
        (running(&replicas(&lab, 0, "everywhere").await).len() == 3).then_some(())
    })
    .await?;

    write("MODE=b")?;
    let out = lab.ok(&["exec", "0", "--", "shoal", "deploy", "--dry-run", &f])?;
    assert!(out.contains("~ busy") && out.contains("MODE=b") && out.contains("dry run"), "{out}");
    service(&lab, 0, &["rm", "busy"])?;
    Ok(())
}

/// `shoal events --json` on peer `i`.
fn events(lab: &TestLab, i: usize) -> anyhow::Result<Vec<shoal_types::ClusterEvent>> {
    let out = lab.ok(&["exec", &i.to_string(), "--", "shoal", "events", "--json"])?;
    Ok(serde_json::from_str(&out)?)
}

/// Where the first event of `kind` whose fields include `with` is, in `list`.
fn position(list: &[shoal_types::ClusterEvent], kind: &str, with: &[(&str, &str)]) -> Option<usize> {
    list.iter()
        .position(|e| e.kind == kind && with.iter().all(|(k, v)| e.fields.get(*k).map(String::as_str) == Some(*v)))
}

#[tokio::test(flavor = "multi_thread")]
async fn events_tell_a_rollout_a_peers_death_and_the_moves_in_order_from_any_peer() -> anyhow::Result<()> {
    let lab = lab("events", 3).await?;
    let ids = lab.ids()?;
    import(&lab, "busybox:v2", "PATH=/bin")?;
    service(&lab, 0, &["create", "--name", "web", "--replicas", "3", "busybox:svc", "sh", "-c", TICKER])?;
    settled(&lab, 0, "web", 3, 60, |_| true).await?;
    service(&lab, 0, &["update", "web", "--image", "busybox:v2"])?;
    eventually(Duration::from_secs(90), "the update done", || async {
        let s = info(&lab, 0, "web").await?;
        let p = running(&replicas(&lab, 0, "web").await);
        (s.spec.previous_image.is_none() && once_each(&p, 3)).then_some(())
    })
    .await?;
    let placed = settled(&lab, 0, "web", 3, 60, |_| true).await?;
    // Each peer records what it saw: the create and the update on peer 0, the end of the
    // rollout on whichever peer wrote it. The victim is a peer with a replica that recorded
    // none of them, so the survivors hold the whole story.
    let names: BTreeMap<String, String> = lab.peers(0).await?.into_iter().map(|p| (p.id, p.name)).collect();
    let done_by = eventually(Duration::from_secs(10), "rollout.done recorded", || async {
        let list = events(&lab, 0).ok()?;
        Some(list[position(&list, "rollout.done", &[("service", "web")])?].seen_by.clone())
    })
    .await?;
    let (slot, victim) = placed
        .iter()
        .map(|(s, v)| (s.to_string(), index_of(&ids, &v[0].0)))
        .find(|(_, i)| *i != 0 && !names.get(&ids[*i]).is_some_and(|n| done_by.contains(n)))
        .expect("a replica on a peer that did not record the rollout's end");
    lab.ok(&["kill", "--all", &victim.to_string()])?;
    settled(&lab, 0, "web", 3, 30, |p| !peers_of(p).contains(&ids[victim].as_str())).await?;

    let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    let mut seen = Vec::new();
    for &i in &survivors {
        // Every peer answers for the cluster: the same facts in the same order.
        // The move is a failover: the start names the peer it took over from.
        let victim_name = names.get(&ids[victim]).cloned().unwrap_or_default();
        let list = eventually(Duration::from_secs(10), "the move in the events", || async {
            let list = events(&lab, i).ok()?;
            let dead = position(&list, "peer.dead", &[("peer", ids[victim].as_str())])?;
            list[dead..]
                .iter()
                .any(|e| {
                    e.kind == "replica.started"
                        && e.fields.get("slot") == Some(&slot)
                        && e.fields.get("took_over_from") == Some(&victim_name)
                })
                .then_some(list)
        })
        .await?;
        let created = position(&list, "service.created", &[("service", "web")]).expect("service.created");
        let started = position(&list, "rollout.started", &[("service", "web"), ("to", "busybox:v2")])
            .ok_or_else(|| anyhow::anyhow!("no rollout.started in {list:#?}"))?;
        let done = position(&list, "rollout.done", &[("service", "web")]).expect("rollout.done");
        let dead = position(&list, "peer.dead", &[("peer", ids[victim].as_str())]).expect("peer.dead");
        assert!(created < started && started < done && done < dead, "out of order: {list:#?}");
        // The failure detector suspected it first.
        let suspect = position(&list, "peer.suspect", &[("peer", ids[victim].as_str())])
            .ok_or_else(|| anyhow::anyhow!("no peer.suspect in {list:#?}"))?;
        assert!(suspect < dead, "suspected after it was dead: {list:#?}");
        let dead_event = &list[dead];
        assert!(
            survivors.len() == dead_event.seen_by.len(),
            "a death every survivor saw is one event seen by both: {dead_event:?}"
        );
        let facts: Vec<(String, std::collections::BTreeMap<String, String>)> =
            list.iter().filter(|e| e.at_ms <= dead_event.at_ms).map(|e| (e.kind.clone(), e.fields.clone())).collect();
        seen.push(facts);
    }
    assert_eq!(seen[0], seen[1], "both peers tell the same story up to the death");
    Ok(())
}
