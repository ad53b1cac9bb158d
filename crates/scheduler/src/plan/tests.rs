use super::*;
use crate::hlc::Hlc;
use crate::rollout::WriteReason;
use shoal_types::{Autoscale, Resources, ServiceMode};

fn peers(ids: &[&str]) -> Vec<PeerView> {
    ids.iter()
        .map(|id| PeerView {
            id: id.to_string(),
            capacity: Resources::new(64_000, 1 << 40),
            labels: BTreeMap::new(),
            draining: false,
        })
        .collect()
}

fn web(replicas: u32) -> ServiceSpec {
    ServiceSpec { name: "web".into(), image: "app:1".into(), replicas, max_unavailable: 1, ..Default::default() }
}

fn map_of(specs: &[ServiceSpec]) -> ServiceMap {
    let mut m = ServiceMap::new();
    for (i, s) in specs.iter().enumerate() {
        m.put(s.clone(), Hlc::new(10 + i as u64, 0, "a"));
    }
    m
}

fn local(container: &str, slot: u32, version: &str, state: ContainerState) -> LocalReplica {
    LocalReplica {
        container: container.into(),
        service: "web".into(),
        slot: Slot::Index(slot),
        version: version.into(),
        state,
        restarts: 0,
        started_unix: Some(1000),
        ip: None,
        cpu_milli: 0,
    }
}

fn remote(peer: &str, slot: u32, version: &str, state: ReplicaState) -> Report {
    Report {
        peer: peer.into(),
        service: "web".into(),
        slot: Slot::Index(slot),
        version: version.into(),
        state,
        restarts: 0,
        cpu_milli: 0,
        failures: 0,
        fault: None,
        container: format!("{peer}-{slot}"),
        ip: None,
        started_unix: None,
    }
}

/// The state one test case sets up; `run` plans from it.
struct Case {
    me: &'static str,
    map: ServiceMap,
    peers: Vec<PeerView>,
    reports: Vec<Report>,
    local: Vec<LocalReplica>,
    health: BTreeMap<String, Health>,
    failures: BTreeMap<ReplicaKey, StartFailure>,
    starting: BTreeSet<ReplicaKey>,
    scaled: BTreeMap<String, u64>,
    now_ms: u64,
    writers: Option<BTreeSet<String>>,
}

impl Case {
    fn new(specs: &[ServiceSpec], ids: &[&'static str]) -> Case {
        Case {
            me: ids[0],
            map: map_of(specs),
            peers: peers(ids),
            reports: Vec::new(),
            local: Vec::new(),
            health: BTreeMap::new(),
            failures: BTreeMap::new(),
            starting: BTreeSet::new(),
            scaled: BTreeMap::new(),
            now_ms: 100_000,
            writers: None,
        }
    }

    fn run(&self) -> Plan {
        let reports: Vec<&Report> = self.reports.iter().collect();
        plan(&Input {
            me: self.me,
            now_ms: self.now_ms,
            now_unix: 2000,
            services: &self.map,
            peers: &self.peers,
            reports: &reports,
            local: &self.local,
            health: &self.health,
            failures: &self.failures,
            starting: &self.starting,
            scaled: &self.scaled,
            writers: self.writers.as_ref(),
        })
    }

    fn v(&self) -> String {
        self.map.get("web").map(spec_version).unwrap_or_default()
    }
}

fn started(p: &Plan) -> Vec<u32> {
    p.starts.iter().filter_map(|s| s.slot.index()).collect()
}

fn stopped(p: &Plan) -> Vec<&str> {
    p.stops.iter().map(|s| s.container.as_str()).collect()
}

#[test]
fn version_follows_what_the_container_runs_not_the_replica_count() {
    let a = web(2);
    let scaled = ServiceSpec { replicas: 5, spread: Some("zone".into()), rebalance: Some(3), ..a.clone() };
    let updated = ServiceSpec { image: "app:v2".into(), ..a.clone() };
    assert_eq!(spec_version(&a), spec_version(&scaled));
    assert_ne!(spec_version(&a), spec_version(&updated));
}

#[test]
fn a_lone_peer_starts_what_it_owns_and_stops_what_is_not_wanted() {
    let mut c = Case::new(&[web(2)], &["me"]);
    let v = c.v();
    c.local = vec![local("c1", 1, &v, ContainerState::Running), local("c5", 5, &v, ContainerState::Running)];
    let p = c.run();
    assert_eq!(started(&p), [0]);
    assert_eq!(stopped(&p), ["c5"]);
    assert_eq!(p.stops[0].reason, StopReason::ScaledDown { replicas: 2 });
    let mine: Vec<(u32, ReplicaState)> = p.reports.iter().map(|r| (r.slot.index().unwrap_or(99), r.state)).collect();
    assert_eq!(mine, [(1, ReplicaState::Running), (5, ReplicaState::Running)]);
    c.map.remove("web", Hlc::new(99, 0, "a"));
    let p = c.run();
    assert!(p.stops.iter().all(|s| s.reason == StopReason::ServiceRemoved) && p.stops.len() == 2);
}

#[test]
fn a_moved_replica_stops_only_once_its_new_owner_runs_it() {
    // "me" drains: its replica belongs to "other", which is still starting it.
    let mut c = Case::new(&[web(1)], &["me", "other"]);
    c.peers[0].draining = true;
    let v = c.v();
    c.local = vec![local("mine", 0, &v, ContainerState::Running)];
    c.reports = vec![remote("other", 0, &v, ReplicaState::Starting)];
    assert!(c.run().stops.is_empty(), "make before break");
    c.reports[0].state = ReplicaState::Running;
    let p = c.run();
    assert_eq!(p.stops.len(), 1);
    assert_eq!(p.stops[0].reason, StopReason::Moved { to: "other".into() });
}

#[test]
fn a_draining_peer_keeps_what_nobody_else_can_run() {
    let mut c = Case::new(&[web(1)], &["me"]);
    c.peers[0].draining = true;
    let v = c.v();
    c.local = vec![local("mine", 0, &v, ContainerState::Running)];
    assert!(c.run().stops.is_empty());
}

#[test]
fn a_replica_held_by_a_live_peer_is_not_started_here() {
    let mut c = Case::new(&[web(2)], &["me", "other"]);
    let v = c.v();
    c.reports = vec![remote("other", 0, &v, ReplicaState::Running), remote("other", 1, &v, ReplicaState::Starting)];
    let p = c.run();
    assert!(p.starts.is_empty(), "both are held by the other peer: {p:?}");
}

#[test]
fn exited_and_unhealthy_replicas_are_replaced_in_place() {
    let mut spec = web(2);
    spec.health_cmd = Some(vec!["true".into()]);
    let mut c = Case::new(&[spec], &["me"]);
    let v = c.v();
    c.local = vec![local("dead", 0, &v, ContainerState::Exited), local("sick", 1, &v, ContainerState::Running)];
    c.health.insert("sick".into(), Health { passed: true, fails: UNHEALTHY_AFTER, last_ms: Some(0), running: false });
    let p = c.run();
    assert_eq!(stopped(&p), ["dead", "sick"]);
    assert_eq!(started(&p), [0, 1]);
    assert_eq!(p.stops[1].reason, StopReason::Unhealthy);
    assert!(p.reports.iter().any(|r| r.container == "sick" && r.state == ReplicaState::Unhealthy));
}

#[test]
fn health_checks_are_due_after_the_grace_period_every_two_seconds() {
    let mut spec = web(1);
    spec.health_cmd = Some(vec!["test".into(), "-f".into(), "/ok".into()]);
    let mut c = Case::new(&[spec], &["me"]);
    let v = c.v();
    c.local = vec![local("c", 0, &v, ContainerState::Running)];
    assert_eq!(c.run().checks.len(), 1);
    c.local[0].started_unix = Some(2000 - CHECK_GRACE_SECS + 1);
    assert!(c.run().checks.is_empty(), "within the grace period");
    c.local[0].started_unix = Some(1000);
    c.health.insert("c".into(), Health { passed: true, fails: 1, last_ms: Some(c.now_ms - 500), running: false });
    assert!(c.run().checks.is_empty(), "checked 0.5 s ago");
    c.health
        .insert("c".into(), Health { passed: true, fails: 1, last_ms: Some(c.now_ms - CHECK_EVERY_MS), running: true });
    assert!(c.run().checks.is_empty(), "one is running");
}

#[test]
fn failed_starts_back_off_and_are_reported_with_their_reason() {
    let mut c = Case::new(&[web(1)], &["me"]);
    let v = c.v();
    let fault = Fault { local: false, message: "image app:1 is on no peer".into() };
    let key = ("web".to_string(), Slot::Index(0));
    c.failures.insert(key.clone(), StartFailure { version: v.clone(), count: 3, at_ms: c.now_ms - 3000, fault });
    let p = c.run();
    assert!(p.starts.is_empty(), "3 failures: wait 4 s");
    let r = &p.reports[0];
    assert_eq!((r.state, r.failures), (ReplicaState::Failed, 3));
    assert!(r.fault.as_ref().is_some_and(|f| f.message.contains("no peer")));
    c.now_ms += 1000;
    assert_eq!(started(&c.run()), [0]);
    c.starting.insert(key);
    let p = c.run();
    assert!(p.starts.is_empty(), "a start in progress is not repeated");
    assert_eq!(p.reports[0].state, ReplicaState::Starting);
    assert_eq!(backoff_ms(1), 1000);
    assert_eq!(backoff_ms(30), MAX_BACKOFF_MS);
}

#[test]
fn an_outdated_replica_is_replaced_when_the_cluster_wave_reaches_it() {
    let mut c = Case::new(&[web(3)], &["me", "b", "c"]);
    let v = c.v();
    // Replica 0 on b is outdated and not yet replaced: the wave (max_unavailable 1) is at 0.
    c.reports = vec![remote("b", 0, "old", ReplicaState::Running), remote("c", 2, "old", ReplicaState::Running)];
    c.local = vec![local("mine", 1, "old", ContainerState::Running)];
    assert!(c.run().stops.is_empty(), "slot 1 waits for slot 0");
    c.reports[0].version = v.clone();
    let p = c.run();
    assert_eq!(stopped(&p), ["mine"]);
    assert_eq!(started(&p), [1]);
    assert!(matches!(p.stops[0].reason, StopReason::Outdated { .. }));
}

#[test]
fn duplicates_on_one_peer_keep_the_current_version() {
    let mut c = Case::new(&[web(1)], &["me"]);
    let v = c.v();
    c.local = vec![
        local("a", 0, "old", ContainerState::Running),
        local("b", 0, &v, ContainerState::Exited),
        local("c", 0, &v, ContainerState::Running),
    ];
    let p = c.run();
    assert_eq!(stopped(&p), ["a", "b"]);
    assert!(p.starts.is_empty());
}

#[test]
fn a_failing_update_is_rolled_back_by_the_peer_that_sees_it_fail() {
    let mut spec = web(2);
    spec.image = "app:2".into();
    spec.previous_image = Some("app:1".into());
    let mut c = Case::new(std::slice::from_ref(&spec), &["me", "b"]);
    let v = c.v();
    c.local = vec![local("mine", 0, &v, ContainerState::Running)];
    c.local[0].restarts = crate::rollout::ROLLBACK_RESTARTS;
    c.reports = vec![remote("b", 1, &v, ReplicaState::Running)];
    let p = c.run();
    let w = p.writes.first().expect("a rollback");
    assert_eq!(w.why, WriteReason::RollBack { from: "app:2".into(), to: "app:1".into() });
    assert_eq!((w.spec.image.as_str(), w.spec.previous_image.as_ref()), ("app:1", None));
    c.me = "b";
    c.peers.swap(0, 1);
    c.reports = vec![remote("me", 0, &v, ReplicaState::Running)];
    c.reports[0].restarts = crate::rollout::ROLLBACK_RESTARTS;
    c.local = vec![LocalReplica { slot: Slot::Index(1), ..local("theirs", 1, &v, ContainerState::Running) }];
    assert!(
        c.run().writes.iter().all(|w| !matches!(w.why, WriteReason::RollBack { .. })),
        "only the failing peer writes"
    );
}

/// A worker claims that a replica it does not run is failing: the operator, which runs it
/// fine, does not roll back. The same claim about the worker's own replica does.
#[test]
fn only_a_replicas_owner_can_report_it_failing() {
    let mut spec = web(2);
    spec.image = "app:2".into();
    spec.previous_image = Some("app:1".into());
    let mut c = Case::new(std::slice::from_ref(&spec), &["me", "worker"]);
    c.writers = Some(["me".to_string()].into());
    let v = c.v();
    c.local = vec![local("mine", 0, &v, ContainerState::Running)];
    let mut lie = remote("worker", 0, &v, ReplicaState::Unhealthy);
    lie.restarts = crate::rollout::ROLLBACK_RESTARTS;
    c.reports = vec![lie, remote("worker", 1, &v, ReplicaState::Running)];
    assert!(c.run().writes.iter().all(|w| !matches!(w.why, WriteReason::RollBack { .. })), "a lie about slot 0");
    let mut own = remote("worker", 1, &v, ReplicaState::Unhealthy);
    own.restarts = crate::rollout::ROLLBACK_RESTARTS;
    c.reports = vec![own];
    let w = c.run().writes.into_iter().find(|w| matches!(w.why, WriteReason::RollBack { .. }));
    assert!(w.is_some(), "the worker's own failing replica: the operator rolls back for it");
}

#[test]
fn a_finished_update_is_settled_by_the_owner_of_the_first_slot() {
    let mut spec = web(2);
    spec.previous_image = Some("app:0".into());
    let mut c = Case::new(std::slice::from_ref(&spec), &["me", "b"]);
    let v = c.v();
    let a = place([("web", &spec)], &c.peers, []);
    let owner0 = a.owner("web", &Slot::Index(0)).unwrap_or("").to_string();
    c.me = if owner0 == "me" { "me" } else { "b" };
    let other = if c.me == "me" { "b" } else { "me" };
    let owner = |i: u32| a.owner("web", &Slot::Index(i)).unwrap_or("").to_string();
    c.local =
        (0..2).filter(|&i| owner(i) == c.me).map(|i| local(&format!("c{i}"), i, &v, ContainerState::Running)).collect();
    c.reports = (0..2).filter(|&i| owner(i) == other).map(|i| remote(other, i, &v, ReplicaState::Running)).collect();
    let p = c.run();
    assert_eq!(p.writes.len(), 1, "{p:?}");
    assert_eq!(p.writes[0].why, WriteReason::Settled);
    assert_eq!(p.writes[0].spec.previous_image, None);
}

#[test]
fn autoscaling_is_decided_by_the_first_running_replica_with_cool_downs() {
    let mut spec = web(2);
    spec.cpus_milli = 500;
    spec.autoscale = Some(Autoscale { min: 1, max: 4, target_cpu_percent: 50 });
    let mut c = Case::new(std::slice::from_ref(&spec), &["me", "b"]);
    let v = c.v();
    c.local = vec![LocalReplica { cpu_milli: 500, ..local("mine", 0, &v, ContainerState::Running) }];
    c.reports = vec![Report { cpu_milli: 500, ..remote("b", 1, &v, ReplicaState::Running) }];
    let p = c.run();
    assert_eq!(p.writes.first().map(|w| &w.why), Some(&WriteReason::Autoscale { from: 2, to: 4 }));
    c.scaled.insert("web".into(), c.now_ms - 5_000);
    assert!(c.run().writes.is_empty(), "within the 10 s grow cool-down");
    c.me = "b";
    c.scaled.clear();
    c.local = vec![LocalReplica { cpu_milli: 500, ..local("theirs", 1, &v, ContainerState::Running) }];
    c.reports = vec![Report { cpu_milli: 500, ..remote("me", 0, &v, ReplicaState::Running) }];
    assert!(c.run().writes.is_empty(), "slot 0's peer decides");
}

#[test]
fn global_replicas_run_here_and_a_mode_change_stops_the_old_kind() {
    let mut g = web(0);
    g.mode = ServiceMode::Global;
    let mut c = Case::new(std::slice::from_ref(&g), &["me", "b"]);
    let p = c.run();
    assert_eq!(p.starts.len(), 1);
    assert_eq!(p.starts[0].slot, Slot::Peer("me".into()));
    let v = c.v();
    c.local = vec![local("old-kind", 0, &v, ContainerState::Running)];
    let p = c.run();
    assert_eq!(p.stops[0].reason, StopReason::ModeChanged);
}

#[test]
fn a_start_in_progress_is_reported_as_starting_even_with_its_half_made_container() {
    let mut c = Case::new(&[web(1)], &["me"]);
    let v = c.v();
    c.starting.insert(("web".to_string(), Slot::Index(0)));
    c.local = vec![local("half", 0, &v, ContainerState::Exited)];
    let p = c.run();
    assert_eq!(p.reports.len(), 1);
    assert_eq!((p.reports[0].state, p.reports[0].container.as_str()), (ReplicaState::Starting, ""));
    assert!(p.stops.is_empty() && p.starts.is_empty(), "the start owns the slot: {p:?}");
}
