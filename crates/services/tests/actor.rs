//! The services actor against in-memory effects: several peers on a fake network, containers
//! that start at once. Time is tokio's paused clock, so health checks and back-offs run fast.

use shoal_scheduler::{Authority, Fault, Hlc, ServiceMap, Trust, Writer};
use shoal_services::fake::{FakeContainers, FakeNet};
use shoal_services::{Config, Running, ServiceError, Services};
use shoal_types::{ServiceMode, ServiceSpec};
use std::time::Duration;

struct Peer {
    id: String,
    containers: FakeContainers,
    running: Running,
    _dir: tempfile::TempDir,
}

impl Peer {
    fn svc(&self) -> &Services {
        &self.running.services
    }
}

fn spawn(net: &FakeNet, id: &str, dir: tempfile::TempDir) -> Peer {
    spawn_with(net, id, dir, Trust::Open)
}

fn spawn_with(net: &FakeNet, id: &str, dir: tempfile::TempDir, trust: Trust) -> Peer {
    let containers = FakeContainers::new();
    let cluster = net.join(id);
    let cfg = Config { dir: dir.path().to_path_buf(), name: id.to_string(), tick: Duration::from_millis(500), trust };
    let running = Services::spawn(cfg, containers.clone(), cluster);
    net.register(id, running.services.clone());
    Peer { id: id.to_string(), containers, running, _dir: dir }
}

fn cluster(n: usize) -> (FakeNet, Vec<Peer>) {
    let net = FakeNet::new();
    let peers = (0..n).map(|i| spawn(&net, &format!("peer-{i}"), tempfile::tempdir().expect("tempdir"))).collect();
    (net, peers)
}

fn web(replicas: u32) -> ServiceSpec {
    ServiceSpec { name: "web".into(), image: "app:1".into(), replicas, max_unavailable: 1, ..Default::default() }
}

/// Waits (virtual time) until `f` holds.
async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..600 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within 60 s");
}

fn containers_of(peers: &[Peer]) -> usize {
    peers.iter().map(|p| p.containers.all().len()).sum()
}

#[tokio::test(start_paused = true)]
async fn a_service_runs_once_per_replica_and_every_peer_shows_it() {
    let (_net, peers) = cluster(3);
    let info = peers[1].svc().create(web(3)).await.expect("create");
    assert_eq!((info.desired, info.spec.replicas), (3, 3));
    until("3 running", async || peers[2].svc().get("web").await.is_ok_and(|s| s.running == 3)).await;
    assert_eq!(containers_of(&peers), 3);
    for p in &peers {
        assert_eq!(p.containers.all().len(), 1, "{} runs one: distinct peers", p.id);
    }
    let ls = peers[0].svc().list().await.expect("ls");
    assert_eq!(ls[0].state, "running");
    let ps = peers[0].svc().replicas(Some("web")).await.expect("ps");
    assert_eq!(ps.iter().filter(|r| r.state == "running").count(), 3);
    assert!(ps.iter().all(|r| r.error.is_none() && !r.peer_name.is_empty()));
    assert!(matches!(peers[0].svc().create(web(1)).await, Err(ServiceError::Exists(_))));
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_cannot_start_says_why() {
    let (_net, peers) = cluster(2);
    let fault =
        Fault { local: false, message: "image nginx is on no peer; import it with `shoal image import`".into() };
    for p in &peers {
        p.containers.fail_starts(Some(fault.clone()));
    }
    let mut spec = web(2);
    spec.image = "nginx".into();
    peers[0].svc().create(spec).await.expect("create");
    until("failing", async || peers[1].svc().get("web").await.is_ok_and(|s| s.state == "failing")).await;
    let s = peers[1].svc().get("web").await.expect("get");
    assert_eq!(s.errors, std::slice::from_ref(&fault.message));
    let ps = peers[1].svc().replicas(Some("web")).await.expect("ps");
    assert!(ps.iter().any(|r| r.state == "failed" && r.error.as_deref() == Some(fault.message.as_str())), "{ps:?}");
    // Once the image can start, the back-off retries and it runs.
    for p in &peers {
        p.containers.fail_starts(None);
    }
    until("running", async || peers[0].svc().get("web").await.is_ok_and(|s| s.running == 2)).await;
}

#[tokio::test(start_paused = true)]
async fn an_unplaceable_replica_shows_its_reason() {
    let (_net, peers) = cluster(2);
    let mut spec = web(1);
    spec.constraints.insert("gpu".into(), "yes".into());
    peers[0].svc().create(spec).await.expect("create");
    until("unplaceable", async || peers[0].svc().get("web").await.is_ok_and(|s| s.state == "unplaceable")).await;
    let ps = peers[0].svc().replicas(Some("web")).await.expect("ps");
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0].state, "unplaced");
    assert!(ps[0].error.as_deref().is_some_and(|e| e.contains("gpu=yes")), "{ps:?}");
}

#[tokio::test(start_paused = true)]
async fn a_global_service_runs_on_every_peer_and_cannot_be_scaled() {
    let (net, mut peers) = cluster(3);
    let mut spec = web(0);
    spec.mode = ServiceMode::Global;
    peers[0].svc().create(spec).await.expect("create");
    until("3 running", async || peers[0].svc().get("web").await.is_ok_and(|s| s.running == 3 && s.desired == 3)).await;
    assert!(matches!(peers[0].svc().scale("web", 5).await, Err(ServiceError::Global(_))));
    peers.push(spawn(&net, "peer-9", tempfile::tempdir().expect("tempdir")));
    until("the new peer runs one", async || peers[3].containers.all().len() == 1).await;
    until("4 running", async || peers[1].svc().get("web").await.is_ok_and(|s| s.running == 4)).await;
}

#[tokio::test(start_paused = true)]
async fn an_unhealthy_replica_is_replaced_and_a_failing_update_rolls_back() {
    let (_net, peers) = cluster(1);
    let mut spec = web(1);
    spec.health_cmd = Some(vec!["true".into()]);
    peers[0].svc().create(spec.clone()).await.expect("create");
    until("running", async || peers[0].containers.all().len() == 1).await;
    let first = peers[0].containers.all()[0].id.clone();
    peers[0].containers.set_healthy(false);
    until("replaced", async || peers[0].containers.all().first().is_some_and(|c| c.id != first)).await;
    // An update whose replicas fail their checks goes back to the image before it.
    spec.image = "app:2".into();
    peers[0].svc().update(spec).await.expect("update");
    until("rolled back", async || peers[0].svc().spec("web").await.is_ok_and(|s| s.image == "app:1")).await;
    assert_eq!(peers[0].svc().spec("web").await.expect("spec").previous_image, None);
}

#[tokio::test(start_paused = true)]
async fn draining_hands_replicas_over_before_stopping_them() {
    let (_net, peers) = cluster(3);
    peers[0].svc().create(web(3)).await.expect("create");
    until("3 running", async || containers_of(&peers) == 3).await;
    peers[2].svc().drain(Duration::from_secs(10)).await;
    assert!(peers[2].containers.all().is_empty(), "the drained peer runs nothing");
    until("3 running elsewhere", async || peers[0].containers.all().len() + peers[1].containers.all().len() == 3).await;
}

#[tokio::test(start_paused = true)]
async fn the_desired_state_survives_a_restart_and_shutdown_stops_the_actor() {
    let net = FakeNet::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let p = spawn(&net, "solo", dir);
    p.svc().create(web(2)).await.expect("create");
    p.svc().shutdown().await;
    assert!(matches!(p.svc().list().await, Err(ServiceError::Stopped)));
    let Peer { running, _dir, .. } = p;
    running.task.await.expect("the actor ended");
    let again = Services::spawn(
        Config { dir: path, name: "solo".into(), tick: Duration::from_millis(500), trust: Trust::Open },
        FakeContainers::new(),
        net.join("solo"),
    );
    assert_eq!(again.services.spec("web").await.expect("kept").replicas, 2);
    assert!(matches!(again.services.merge(b"\x09junk".to_vec()).await, Ok(Err(_))), "a bad map is refused");
    drop(_dir);
}

/// Two operator peers and a worker: the worker runs replicas but cannot write; what an
/// operator writes reaches it; a map written with a key the authority never granted is
/// ignored everywhere; a revoked operator's later writes vanish and the valid ones return.
#[tokio::test(start_paused = true)]
async fn only_operators_write_and_a_revoked_operator_is_undone() {
    let op = [7u8; 32];
    let authority = Authority::from_secret(&op);
    let keyed = |i: u8, operator: bool| Trust::Keyed {
        authority: authority.clone(),
        writer: operator.then(|| Writer::new(&[i; 32], &op)),
    };
    let net = FakeNet::new();
    let dir = || tempfile::tempdir().expect("tempdir");
    let a = spawn_with(&net, "peer-a", dir(), keyed(1, true));
    let b = spawn_with(&net, "peer-b", dir(), keyed(2, true));
    let w = spawn_with(&net, "peer-w", dir(), keyed(3, false));
    net.set_worker("peer-w");
    let refused = w.svc().create(web(3)).await.expect_err("a worker cannot create");
    assert!(matches!(refused, ServiceError::NotOperator), "{refused}");
    assert!(refused.to_string().contains("operator key"), "{refused}");
    a.svc().create(web(3)).await.expect("an operator creates");
    until("3 running, the worker's included", async || w.svc().get("web").await.is_ok_and(|s| s.running == 3)).await;
    assert_eq!(w.containers.all().len(), 1, "the worker runs its share");
    assert!(matches!(w.svc().scale("web", 1).await, Err(ServiceError::NotOperator)));

    // A forger with the membership secret but no grant: an unsealed map and one sealed by a
    // key of its own. Neither changes anything on any peer.
    let mut forged = ServiceMap::new();
    forged.put(ServiceSpec { image: "evil:1".into(), ..web(3) }, Hlc::new(u64::from(u32::MAX), 0, "x"));
    assert!(w.svc().merge(forged.encode()).await.expect("alive").is_ok());
    let rogue = Writer::new(&[9; 32], &[9; 32]);
    let v = Hlc::new(u64::from(u32::MAX), 1, "x");
    let evil = ServiceSpec { image: "evil:2".into(), ..web(3) };
    let mut sealed = ServiceMap::new();
    sealed.insert_entry(
        "web",
        shoal_scheduler::Entry { seal: Some(rogue.seal("web", &v, Some(&evil))), version: v, spec: Some(evil) },
    );
    assert!(b.svc().merge(sealed.encode()).await.expect("alive").is_ok());
    for p in [&a, &b, &w] {
        assert_eq!(p.svc().spec("web").await.expect("web").image, "app:1", "{}", p.id);
    }

    // b is retired: its grant revoked. Its earlier update stays (a, revoking, re-seals what it
    // holds); what b writes afterwards, backdated or not, is refused at b itself and ignored
    // by every other peer.
    b.svc().update(ServiceSpec { image: "app:2".into(), ..web(3) }).await.expect("b updates");
    until("the worker sees b's update", async || w.svc().spec("web").await.is_ok_and(|s| s.image == "app:2")).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64;
    let b_key = Writer::new(&[2; 32], &op).public();
    a.svc().revoke(shoal_scheduler::trust::revoke(&op, b_key, Hlc::new(now + 1, 0, ""))).await.expect("a revokes b");
    until("b hears of it", async || matches!(b.svc().scale("web", 2).await, Err(ServiceError::NotOperator))).await;
    let mut late = ServiceMap::new();
    let v = Hlc::new(now + 5, 0, "peer-b");
    let spec = ServiceSpec { image: "app:3".into(), ..web(3) };
    let b_writer = Writer::new(&[2; 32], &op);
    late.insert_entry(
        "web",
        shoal_scheduler::Entry { seal: Some(b_writer.seal("web", &v, Some(&spec))), version: v, spec: Some(spec) },
    );
    let old = Hlc::new(now - 3_600_000, 0, "peer-b");
    let sneak = ServiceSpec { name: "sneak".into(), image: "evil:3".into(), ..web(1) };
    late.insert_entry(
        "sneak",
        shoal_scheduler::Entry {
            seal: Some(b_writer.seal("sneak", &old, Some(&sneak))),
            version: old,
            spec: Some(sneak),
        },
    );
    assert!(w.svc().merge(late.encode()).await.expect("alive").is_ok());
    tokio::time::sleep(Duration::from_secs(3)).await;
    for p in [&a, &b, &w] {
        assert_eq!(p.svc().spec("web").await.expect("web").image, "app:2", "{}", p.id);
        assert!(p.svc().spec("sneak").await.is_err(), "{}: a backdated entry of a revoked writer", p.id);
    }
    let bad = shoal_scheduler::trust::revoke(&[8; 32], Writer::new(&[1; 32], &op).public(), Hlc::new(0, 0, ""));
    assert!(matches!(a.svc().revoke(bad.clone()).await, Err(ServiceError::BadRevocation)));
    assert!(matches!(w.svc().revoke(bad).await, Err(ServiceError::NotOperator)), "a worker revokes nobody");
}
