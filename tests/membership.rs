//! End-to-end membership tests: real `shoal agent` processes on loopback, driven through the
//! real API. Each asserts what a user would check with `shoal peers`.

#![allow(clippy::unwrap_used)]

use shoal_testkit::{Agent, AgentSpec, Cluster, eventually, state_of, write_key};
use shoal_types::PeerState;
use std::time::Duration;

/// Every agent in `viewers` reports `state` for `id`.
async fn all_see(viewers: &[&Agent], id: &str, state: PeerState, within: Duration) -> anyhow::Result<()> {
    for v in viewers {
        eventually(within, &format!("{} to see {id} {state}", v.spec.name), || async {
            let peers = v.peers().await.ok()?;
            (state_of(&peers, id) == Some(state)).then_some(())
        })
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn five_peers_via_one_bootstrap_all_see_five_alive() -> anyhow::Result<()> {
    let c = Cluster::start(5, true).await?;
    for a in &c.agents {
        let r = eventually(Duration::from_secs(15), &format!("{} to see 5 alive", a.spec.name), || async {
            let peers = a.peers().await.ok()?;
            let alive = peers.iter().filter(|p| p.state == PeerState::Alive).count();
            // Records (names, capacity) arrive too, not just liveness.
            let named = peers.iter().filter(|p| p.name.starts_with("peer-") && p.capacity.millicpus == 1000).count();
            (alive == 5 && named == 5).then_some(peers)
        })
        .await;
        r.map_err(|e| anyhow::anyhow!("{e}\n{}", c.logs()))?;
    }
    let status = c.agents[3].status().await?;
    assert_eq!(status.cluster_size, 5);
    assert!(status.private_network);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_is_dead_everywhere_and_restart_is_alive_with_same_id() -> anyhow::Result<()> {
    let mut c = Cluster::start(4, true).await?;
    let id = c.agents[2].status().await?.id;
    let gen_before = c.agents[2].status().await?.generation;
    {
        let all: Vec<&Agent> = c.agents.iter().collect();
        all_see(&all, &id, PeerState::Alive, Duration::from_secs(15)).await?;
    }
    // `shoal events -f --json` on peer 0 follows what happens next, one JSON object a line.
    let mut follower = shoal_testkit::KillOnDrop(
        std::process::Command::new(shoal_testkit::shoal_bin())
            .arg("--addr")
            .arg(&c.agents[0].socket)
            .args(["events", "-f", "--json", "--since", "1s"])
            .stdout(std::process::Stdio::piped())
            .spawn()?,
    );
    let (tx, lines) = std::sync::mpsc::channel::<shoal_types::ClusterEvent>();
    let out = follower.0.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(e) = serde_json::from_str(&line)
                && tx.send(e).is_err()
            {
                return;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.agents[2].kill()?;
    {
        let others: Vec<&Agent> = c.agents.iter().enumerate().filter(|(i, _)| *i != 2).map(|(_, a)| a).collect();
        all_see(&others, &id, PeerState::Dead, Duration::from_secs(10))
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", c.logs()))?;
    }
    // The follower told the suspicion, then the death, as they happened.
    let mut told = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !told.iter().any(|k: &String| k == "peer.dead") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let e = lines.recv_timeout(left).map_err(|_| anyhow::anyhow!("`events -f` told only {told:?}"))?;
        if e.fields.get("peer") == Some(&id) {
            told.push(e.kind);
        }
    }
    assert!(told.iter().position(|k| k == "peer.suspect") < told.iter().position(|k| k == "peer.dead"), "{told:?}");
    assert!(told.contains(&"peer.suspect".to_string()), "{told:?}");
    drop(follower);
    let after = c.agents[2].restart().await?;
    assert_eq!(after.id, id, "the peer id survives a restart");
    assert!(after.generation > gen_before);
    let all: Vec<&Agent> = c.agents.iter().collect();
    all_see(&all, &id, PeerState::Alive, Duration::from_secs(15))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", c.logs()))?;
    // The restarted peer sees everyone again too.
    for other in c.agents.iter().filter(|a| a.spec.name != "peer-2") {
        let oid = other.status().await?.id;
        all_see(&[&c.agents[2]], &oid, PeerState::Alive, Duration::from_secs(15)).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_shows_left() -> anyhow::Result<()> {
    let mut c = Cluster::start(3, true).await?;
    let id = c.agents[1].status().await?.id;
    {
        let all: Vec<&Agent> = c.agents.iter().collect();
        all_see(&all, &id, PeerState::Alive, Duration::from_secs(15)).await?;
    }
    c.agents[1].terminate()?;
    let others = [&c.agents[0], &c.agents[2]];
    all_see(&others, &id, PeerState::Left, Duration::from_secs(5))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", c.logs()))?;
    // And it stays left (not flipped to dead by the failure detector).
    tokio::time::sleep(Duration::from_secs(3)).await;
    for v in others {
        assert_eq!(state_of(&v.peers().await?, &id), Some(PeerState::Left));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_with_another_key_or_none_cannot_join() -> anyhow::Result<()> {
    let c = Cluster::start(2, true).await?;
    let bootstrap = c.agents[0].join_addr().await?;
    let other_key = write_key(c.root.path(), "other.key")?;
    let mut spec = AgentSpec::new("intruder");
    spec.cluster_key = Some(other_key);
    spec.join = vec![bootstrap.clone()];
    let mut intruder = Agent::start(c.root.path(), spec)?;
    let intruder_id = intruder.ready().await?.id;
    let mut spec = AgentSpec::new("keyless");
    spec.join = vec![bootstrap];
    spec.extra = vec!["--insecure".into()];
    let mut keyless = Agent::start(c.root.path(), spec)?;
    let keyless_id = keyless.ready().await?.id;

    // Give them ample time to try (joins are retried with backoff).
    tokio::time::sleep(Duration::from_secs(6)).await;
    for a in &c.agents {
        let peers = a.peers().await?;
        assert_eq!(state_of(&peers, &intruder_id), None, "intruder must never be listed");
        assert_eq!(state_of(&peers, &keyless_id), None, "keyless peer must never be listed");
        assert_eq!(peers.len(), 2);
    }
    assert_eq!(intruder.status().await?.cluster_size, 1);
    assert_eq!(keyless.status().await?.cluster_size, 1);
    assert!(intruder.log_text().contains("the peer there uses a different cluster key"), "{}", intruder.log_text());
    assert!(keyless.log_text().contains("cannot reach join address"), "{}", keyless.log_text());
    Ok(())
}

/// Agents on neighbouring ports (P..P+4 on one address) form one cluster: no agent's data
/// channel takes the next agent's overlay port.
#[tokio::test(flavor = "multi_thread")]
async fn agents_on_neighbouring_ports_form_a_cluster() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let key = write_key(root.path(), "cluster.key")?;
    // Five free neighbouring ports (checked by binding them; bounded tries).
    let base = (0..200)
        .map(|i| 20_000 + ((std::process::id() as u16).wrapping_mul(7) % 20_000) + i * 5)
        .find(|&p| (p..p + 5).all(|q| std::net::TcpListener::bind(("127.0.0.1", q)).is_ok()))
        .expect("five free neighbouring ports");
    let mut agents = Vec::new();
    for i in 0..5u16 {
        let mut spec = AgentSpec::new(&format!("n{i}"));
        spec.cluster_key = Some(key.clone());
        spec.listen = Some(format!("/ip4/127.0.0.1/tcp/{}", base + i));
        if i > 0 {
            spec.join = vec![format!("127.0.0.1:{base}")];
        }
        let mut a = Agent::start(root.path(), spec)?;
        a.ready().await.map_err(|e| anyhow::anyhow!("agent on port {}: {e}\n{}", base + i, a.log_text()))?;
        agents.push(a);
    }
    for a in &agents {
        eventually(Duration::from_secs(15), &format!("{} to see 5 alive", a.spec.name), || async {
            let peers = a.peers().await.ok()?;
            (peers.iter().filter(|p| p.state == PeerState::Alive).count() == 5).then_some(())
        })
        .await?;
    }
    Ok(())
}

/// Secure by default: an agent started with no key makes one; a stranger with `--insecure`
/// (or its own default key) cannot join it; a peer given a copy of the key can.
#[tokio::test(flavor = "multi_thread")]
async fn a_default_agent_makes_a_key_and_only_its_holders_join() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let mut first = Agent::start(root.path(), AgentSpec::new("first"))?;
    first.ready().await?;
    let bootstrap = first.join_addr().await?;
    let key = first.dir.join("cluster.key");
    assert!(key.exists(), "the first start made {}", key.display());

    let mut spec = AgentSpec::new("stranger");
    spec.join = vec![bootstrap.clone()];
    spec.extra = vec!["--insecure".into()];
    let mut stranger = Agent::start(root.path(), spec)?;
    stranger.ready().await?;
    assert!(stranger.log_text().contains("INSECURE"), "an open agent says so: {}", stranger.log_text());
    let mut spec = AgentSpec::new("other-default");
    spec.join = vec![bootstrap.clone()];
    let mut other = Agent::start(root.path(), spec)?;
    other.ready().await?;

    let copy = root.path().join("copied.key");
    std::fs::copy(&key, &copy)?;
    let mut spec = AgentSpec::new("member");
    spec.join = vec![bootstrap];
    spec.cluster_key = Some(copy);
    let mut member = Agent::start(root.path(), spec)?;
    let member_id = member.ready().await?.id;
    all_see(&[&first], &member_id, PeerState::Alive, Duration::from_secs(15)).await?;

    tokio::time::sleep(Duration::from_secs(3)).await;
    let peers = first.peers().await?;
    assert_eq!(peers.len(), 2, "only the key holder joined: {peers:?}");
    assert_eq!(stranger.status().await?.cluster_size, 1);
    assert_eq!(other.status().await?.cluster_size, 1);
    let bad = std::process::Command::new(shoal_testkit::shoal_bin())
        .args(["agent", "--insecure", "--cluster-key"])
        .arg(&key)
        .arg("--data-dir")
        .arg(root.path().join("both"))
        .output()?;
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("choose one"));
    Ok(())
}

/// A peer that ran as an open cluster is not silently given a new key (that would cut it off
/// from its peers): started again without a key or --insecure, it refuses and says what to do.
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_of_an_open_cluster_is_not_given_a_new_key() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let mut spec = AgentSpec::new("open");
    spec.extra = vec!["--insecure".into()];
    let mut a = Agent::start(root.path(), spec)?;
    a.ready().await?;
    a.terminate()?;
    let out = std::process::Command::new(shoal_testkit::shoal_bin())
        .args(["agent", "--listen", "/ip4/127.0.0.1/tcp/0", "--data-dir"])
        .arg(&a.dir)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--insecure") && err.contains("--cluster-key"), "{err}");
    assert!(!a.dir.join("cluster.key").exists(), "no key was made");
    Ok(())
}

/// Operators and workers: `shoal keygen` makes an operator key and `--worker` a worker key of
/// the same cluster. The worker joins and sees the services an operator creates, but its own
/// `service create` (and revocations) are refused with a message that names the operator key.
#[tokio::test(flavor = "multi_thread")]
async fn a_workers_service_create_is_refused_and_an_operators_reaches_it() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let (op_key, worker_key) = (root.path().join("cluster.key"), root.path().join("worker.key"));
    let keygen = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new(shoal_testkit::shoal_bin()).arg("keygen").args(args).output()
    };
    assert!(keygen(&["-o".as_ref(), op_key.as_os_str()])?.status.success());
    let out = keygen(&["--worker".as_ref(), op_key.as_os_str(), "-o".as_ref(), worker_key.as_os_str()])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read_to_string(&worker_key)?.contains("/shoal/authority/1/"));

    let mut spec = AgentSpec::new("operator");
    spec.cluster_key = Some(op_key);
    let mut operator = Agent::start(root.path(), spec)?;
    operator.ready().await?;
    let mut spec = AgentSpec::new("worker");
    spec.cluster_key = Some(worker_key);
    spec.join = vec![operator.join_addr().await?];
    let mut worker = Agent::start(root.path(), spec)?;
    let worker_id = worker.ready().await?.id;
    all_see(&[&operator], &worker_id, PeerState::Alive, Duration::from_secs(15)).await?;
    assert!(
        worker.log_text().contains("role=\"worker\"") || worker.log_text().contains("role=worker"),
        "{}",
        worker.log_text()
    );

    let cli = |a: &Agent, args: &[&str]| {
        std::process::Command::new(shoal_testkit::shoal_bin()).arg("--addr").arg(&a.socket).args(args).output()
    };
    let refused = cli(&worker, &["service", "create", "--name", "web", "--replicas", "1", "app:v1"])?;
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("operator key"), "{err}");
    let (status, _) = worker
        .client()
        .raw(hyper::Method::POST, &format!("/v1/peers/{}/revoke", operator.status().await?.id), None)
        .await?;
    assert_eq!(status, 403, "a worker cannot revoke");

    let made = cli(&operator, &["service", "create", "--name", "web", "--replicas", "1", "app:v1"])?;
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    eventually(Duration::from_secs(15), "the worker to see the operator's service", || async {
        let out = cli(&worker, &["service", "ls", "--json"]).ok()?;
        String::from_utf8_lossy(&out.stdout).contains("\"web\"").then_some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", worker.log_text()))?;
    // Nor may the worker roll the service back or restart its replicas.
    for args in [&["service", "rollback", "web"][..], &["service", "restart", "web", "0"]] {
        let refused = cli(&worker, args)?;
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success() && err.contains("operator key"), "{args:?}: {err}");
    }
    Ok(())
}
