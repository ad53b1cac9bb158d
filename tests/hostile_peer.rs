//! A peer that holds the cluster key but misbehaves: garbage SWIM packets, oversized packets,
//! malformed control messages and forged records. The agent must drop them, log them at a
//! limited rate, keep running, and keep its view intact.

#![allow(clippy::unwrap_used)]

use futures::StreamExt;
use shoal_node::StateMsg;
use shoal_overlay::ClusterKey;
use shoal_overlay::libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use shoal_overlay::libp2p::identity::Keypair;
use shoal_overlay::libp2p::request_response::{self, ProtocolSupport};
use shoal_overlay::libp2p::swarm::NetworkBehaviour;
use shoal_overlay::libp2p::swarm::SwarmEvent;
use shoal_overlay::libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm};
use shoal_overlay::record::{PeerRecord, WireRecord};
use shoal_overlay::wire::CtlRequest;
use shoal_testkit::{Cluster, state_of};
use shoal_types::PeerState;
use std::io;
use std::time::Duration;

/// Sends whatever bytes it is given and reads whatever comes back.
#[derive(Clone, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;
    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        io.take(1 << 20).read_to_end(&mut v).await?;
        Ok(v)
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        self.read_request(p, io).await
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        r: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&r).await
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        r: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&r).await
    }
}

#[derive(NetworkBehaviour)]
#[behaviour(prelude = "shoal_overlay::libp2p::swarm::derive_prelude")]
struct Hostile {
    swim: request_response::Behaviour<RawCodec>,
    ctl: request_response::Behaviour<RawCodec>,
    state: request_response::Behaviour<RawCodec>,
    blob: request_response::Behaviour<RawCodec>,
    streams: libp2p_stream::Behaviour,
}

fn raw(protocol: &'static str) -> request_response::Behaviour<RawCodec> {
    request_response::Behaviour::with_codec(
        RawCodec,
        [(StreamProtocol::new(protocol), ProtocolSupport::Outbound)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(5)),
    )
}

fn hostile_swarm(key: ClusterKey) -> Swarm<Hostile> {
    hostile_swarm_as(key, Keypair::generate_ed25519())
}

fn hostile_swarm_as(key: ClusterKey, id: Keypair) -> Swarm<Hostile> {
    let peer = id.public().to_peer_id();
    let transport = shoal_overlay::behaviour::transport(&id, Some(key)).unwrap();
    let behaviour = Hostile {
        swim: raw("/shoal/swim/1"),
        ctl: raw("/shoal/ctl/1"),
        state: raw("/shoal/state/1"),
        blob: raw("/shoal/blob/1"),
        streams: libp2p_stream::Behaviour::new(),
    };
    // Kept open while idle: with libp2p's default of none, the connection closed before the
    // first request was sent on it, and every request "failed" without reaching the peer.
    let config = shoal_overlay::libp2p::swarm::Config::with_tokio_executor()
        .with_idle_connection_timeout(Duration::from_secs(60));
    Swarm::new(transport, behaviour, peer, config)
}

/// Whether `ev` ends one hostile request (an answer or a failure), on any protocol.
fn ends_a_request(ev: &SwarmEvent<HostileEvent>) -> bool {
    use request_response::Event::{Message, OutboundFailure};
    matches!(
        ev,
        SwarmEvent::Behaviour(
            HostileEvent::Swim(Message { .. } | OutboundFailure { .. })
                | HostileEvent::Ctl(Message { .. } | OutboundFailure { .. })
                | HostileEvent::State(Message { .. } | OutboundFailure { .. })
                | HostileEvent::Blob(Message { .. } | OutboundFailure { .. })
        )
    )
}

/// Drives `swarm` until `sent` requests have ended or `within` passes; how many ended.
async fn finish(swarm: &mut Swarm<Hostile>, sent: usize, within: Duration) -> usize {
    let mut done = 0;
    let deadline = tokio::time::sleep(within);
    tokio::pin!(deadline);
    while done < sent {
        tokio::select! {
            ev = swarm.select_next_some() => if ends_a_request(&ev) { done += 1 },
            _ = &mut deadline => break,
        }
    }
    done
}

/// Dials `addr` and waits for the connection.
async fn connect(swarm: &mut Swarm<Hostile>, addr: Multiaddr) -> anyhow::Result<()> {
    swarm.dial(addr)?;
    loop {
        if let SwarmEvent::ConnectionEstablished { .. } = swarm.select_next_some().await {
            return Ok(());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_oversized_and_forged_messages_are_dropped() -> anyhow::Result<()> {
    let c = Cluster::start(2, true).await?;
    let target_addr: Multiaddr = c.agents[0].join_addr().await?.parse()?;
    let target: PeerId = c.agents[0].status().await?.id.parse()?;
    let victim_id = c.agents[1].status().await?.id;
    let key = ClusterKey::load(c.key.as_ref().unwrap())?;
    let mut swarm = hostile_swarm(key);
    swarm.dial(target_addr)?;

    // Let the connection come up.
    loop {
        if let SwarmEvent::ConnectionEstablished { .. } = swarm.select_next_some().await {
            break;
        }
    }

    // A record claiming to be the victim, leaving, signed by us: must not be believed.
    let me = Keypair::generate_ed25519();
    let forged = PeerRecord {
        peer: victim_id.parse()?,
        generation: u64::MAX,
        version: 1,
        name: "forged".into(),
        addrs: vec![],
        labels: Default::default(),
        capacity: Default::default(),
        free: Default::default(),
        agent_version: "evil".into(),
        leaving: true,
        ext: Default::default(),
    };
    let body = serde_json::to_vec(&forged)?;
    let signature = me.sign(&body)?;
    let forged_push = postcard::to_stdvec(&CtlRequest::Push { records: vec![WireRecord { body, signature }] })?;
    let mut sent = 0;
    let b = swarm.behaviour_mut();
    for i in 0..60u8 {
        b.swim.send_request(&target, vec![i; 1 + i as usize * 13]);
        sent += 1;
    }
    b.swim.send_request(&target, vec![0xAB; 200 * 1024]); // oversized SWIM packet
    b.ctl.send_request(&target, forged_push);
    b.ctl.send_request(&target, vec![0xFF; 64]); // not postcard
    b.ctl.send_request(&target, vec![0x00; 5 * 1024 * 1024]); // oversized control message
    sent += 4;

    let done = finish(&mut swarm, sent, Duration::from_secs(20)).await;

    // The agent is alive, its view intact, the forged record not believed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let peers = c.agents[0].peers().await?;
    assert_eq!(state_of(&peers, &victim_id), Some(PeerState::Alive), "{peers:?}");
    assert!(peers.iter().all(|p| p.name != "forged"));
    let log = c.agents[0].log_text();
    let lines = log.matches("dropped a bad message from a peer").count();
    assert!(lines >= 1, "bad messages must be logged:\n{log}");
    assert!(lines <= 6, "bad-message logs must be rate limited, got {lines}");
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(done, sent, "every hostile request got an answer or a failure");
    // 60 garbage SWIM packets, one oversized, the forged record, the undecodable and the
    // oversized control messages: each counted as dropped.
    let dropped = c.agents[0].status().await?.dropped_messages;
    assert_eq!(dropped, sent as u64, "dropped {dropped} of {sent}");
    Ok(())
}

/// Sets this process's soft open-file limit (agents started meanwhile inherit it): `None`
/// for the hard limit.
fn set_own_file_limit(soft: Option<u64>) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, soft.unwrap_or(hard).min(hard), hard);
    }
}

/// 2,000 idle connections to a peer's data port (anyone who reaches the port can make them;
/// they carry no ticket): the agent neither runs out of descriptors nor stops serving, and a download from
/// it completes while they are held.
#[tokio::test(flavor = "multi_thread")]
async fn idle_data_connections_cannot_starve_a_peer() -> anyhow::Result<()> {
    // The agents start with the usual default of 1,024 (a systemd service's, a shell's); the
    // test itself then holds thousands of sockets.
    set_own_file_limit(Some(1024));
    let c = Cluster::start(2, true).await;
    set_own_file_limit(None);
    let c = c?;
    let log = c.agents[0].log_text();
    let port: u16 = log
        .split("content store ready port=")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no data port in the log:\n{log}"))?;
    let mut idle = Vec::new();
    for _ in 0..2_000 {
        if let Ok(s) = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)) {
            idle.push(s);
        }
    }
    assert!(idle.len() > 1_000, "the flood got in: {}", idle.len());

    let file = c.root.path().join("payload.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(&file, &data)?;
    let cli = |i: usize, args: &[&str]| {
        std::process::Command::new(shoal_testkit::shoal_bin())
            .arg("--addr")
            .arg(&c.agents[i].socket)
            .args(args)
            .output()
    };
    let shared = cli(0, &["share", file.to_str().unwrap()])?;
    assert!(shared.status.success(), "{}", String::from_utf8_lossy(&shared.stderr));
    let id = String::from_utf8_lossy(&shared.stdout).trim().to_string();
    let out = c.root.path().join("got.bin");
    let got = cli(1, &["get", &id, "-o", out.to_str().unwrap()])?;
    assert!(got.status.success(), "the download completes: {}", String::from_utf8_lossy(&got.stderr));
    assert!(std::fs::read(&out)? == data, "byte for byte");
    assert_eq!(c.agents[0].status().await?.cluster_size, 2, "the flooded agent still answers and sees its peer");
    let log = c.agents[0].log_text();
    assert!(!log.contains("Too many open files"), "the agent ran out of descriptors:\n{log}");
    assert!(log.contains("data connections at their limit"), "the cap closed the flood's excess:\n{log}");
    drop(idle);
    Ok(())
}

/// A keyed peer gossips that another peer is dead, at a generation that peer never had (one
/// far in the future, and the next one): SWIM would keep it dead for a day. The victim stays
/// alive on every peer.
#[tokio::test(flavor = "multi_thread")]
async fn a_forged_down_with_a_huge_generation_evicts_nobody() -> anyhow::Result<()> {
    use bytes::BufMut;
    use foca::{Codec, Header, Member, Message, PostcardCodec, State};
    use shoal_overlay::swim::SwimId;
    let c = Cluster::start(3, true).await?;
    let target_addr: Multiaddr = c.agents[0].join_addr().await?.parse()?;
    let target = c.agents[0].status().await?;
    let victim = c.agents[1].status().await?;
    for a in &c.agents {
        shoal_testkit::eventually(Duration::from_secs(15), "3 alive", || async {
            (a.peers().await.ok()?.iter().filter(|p| p.state == PeerState::Alive).count() == 3).then_some(())
        })
        .await?;
    }
    let id = Keypair::generate_ed25519();
    let me = id.public().to_peer_id();
    let mut swarm = hostile_swarm_as(ClusterKey::load(c.key.as_ref().unwrap())?, id);
    connect(&mut swarm, target_addr).await?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    let src = SwimId { peer: me, generation: now, addrs: vec![] };
    // Foca takes a payload only if it is addressed to the target's exact identity.
    let addrs: Vec<Multiaddr> = target
        .listen_addrs
        .iter()
        .map(|a| {
            let mut m: Multiaddr = a.parse().unwrap();
            m.pop();
            m
        })
        .collect();
    assert_eq!(addrs.len(), 1, "one listen address: {addrs:?}");
    let dst = SwimId { peer: target.id.parse()?, generation: target.generation, addrs };
    let victim_peer: PeerId = victim.id.parse()?;
    let mut packet = Vec::new();
    let h = Header { src, src_incarnation: 0, dst, message: Message::Gossip };
    Codec::<SwimId>::encode_header(&mut PostcardCodec, &h, &mut packet).unwrap();
    let forged = [u64::MAX - 1, victim.generation + 1]
        .map(|g| Member::new(SwimId { peer: victim_peer, generation: g, addrs: vec![] }, u16::MAX, State::Down));
    packet.put_u16(forged.len() as u16);
    for m in &forged {
        Codec::<SwimId>::encode_member(&mut PostcardCodec, m, &mut packet).unwrap();
    }
    let target_peer: PeerId = target.id.parse()?;
    for _ in 0..5 {
        swarm.behaviour_mut().swim.send_request(&target_peer, packet.clone());
        let _ = tokio::time::timeout(Duration::from_millis(400), async {
            loop {
                swarm.select_next_some().await;
            }
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for a in [&c.agents[0], &c.agents[2]] {
        let peers = a.peers().await?;
        assert_eq!(state_of(&peers, &victim.id), Some(PeerState::Alive), "{}: {peers:?}\n{}", a.spec.name, c.logs());
    }
    assert_eq!(c.agents[1].status().await?.generation, victim.generation, "the victim never had to rejoin");
    Ok(())
}

/// A peer with a worker key imports its own image under a tag an operator published, and
/// one under a tag no operator has: a third peer pulling the first gets the operator's image,
/// and the second is refused with a message that names the operator key.
#[tokio::test(flavor = "multi_thread")]
async fn a_poisoned_image_tag_is_not_believed() -> anyhow::Result<()> {
    use shoal_testkit::images::{layer, write_docker_archive};
    use shoal_testkit::{Agent, AgentSpec, eventually};
    let root = tempfile::tempdir()?;
    let op = shoal_overlay::KeyFile::generate();
    let (op_key, worker_key) = (root.path().join("op.key"), root.path().join("worker.key"));
    shoal_overlay::keys::write_secret(&op_key, op.to_file_text().as_bytes())?;
    shoal_overlay::keys::write_secret(&worker_key, op.worker().unwrap().to_file_text().as_bytes())?;
    let start = |name: &str, key: &std::path::Path, join: Vec<String>| -> anyhow::Result<Agent> {
        let mut spec = AgentSpec::new(name);
        spec.cluster_key = Some(key.to_path_buf());
        spec.join = join;
        Agent::start(root.path(), spec)
    };
    let mut operator = start("operator", &op_key, vec![])?;
    operator.ready().await?;
    let join = vec![operator.join_addr().await?];
    let mut worker = start("worker", &worker_key, join.clone())?;
    worker.ready().await?;
    let mut puller = start("puller", &op_key, join)?;
    puller.ready().await?;
    for a in [&operator, &worker, &puller] {
        eventually(Duration::from_secs(15), "3 alive", || async {
            (a.peers().await.ok()?.iter().filter(|p| p.state == PeerState::Alive).count() == 3).then_some(())
        })
        .await?;
    }
    let cli = |a: &Agent, args: &[&str]| -> anyhow::Result<(bool, String, String)> {
        let out =
            std::process::Command::new(shoal_testkit::shoal_bin()).arg("--addr").arg(&a.socket).args(args).output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        ))
    };
    let dir = tempfile::tempdir()?;
    let (good, evil, only) = (dir.path().join("good.tar"), dir.path().join("evil.tar"), dir.path().join("only.tar"));
    write_docker_archive(&good, "app:v1", &[layer(&[("app", b"the operator's app")])]);
    write_docker_archive(&evil, "app:v1", &[layer(&[("app", b"a worker's trojan")])]);
    write_docker_archive(&only, "app:v2", &[layer(&[("app", b"a worker's own v2")])]);
    let (ok, out, err) = cli(&operator, &["image", "import", good.to_str().unwrap()])?;
    assert!(ok, "{err}");
    let good_digest = out.split_whitespace().nth(1).unwrap().to_string();
    for f in [&evil, &only] {
        let (ok, _, err) = cli(&worker, &["image", "import", f.to_str().unwrap()])?;
        assert!(ok, "a worker imports for its own use: {err}");
    }
    // Both holders advertise app:v1; give the records time to spread.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok, out, err) = cli(&puller, &["image", "pull", "app:v1"])?;
    assert!(ok, "{err}\n{}", puller.log_text());
    assert_eq!(out.split_whitespace().nth(1), Some(good_digest.as_str()), "{out}");
    let (ok, _, err) = cli(&puller, &["image", "pull", "app:v2"])?;
    assert!(!ok && err.contains("operator key"), "{err}");
    Ok(())
}

/// 100,000 identities, each with a validly signed record, pushed by one keyed peer: the
/// victim holds at most its bound of records, keeps answering, keeps its members alive, and
/// a real peer that joins afterwards is seen and its record taken.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_signed_identities_is_bounded() -> anyhow::Result<()> {
    const FLOOD: usize = 100_000;
    let mut c = Cluster::start(2, true).await?;
    let target_addr: Multiaddr = c.agents[0].join_addr().await?.parse()?;
    let target: PeerId = c.agents[0].status().await?.id.parse()?;
    let real = c.agents[1].status().await?.id;
    // Records made on two threads, then pushed in messages under the control bound.
    let make = |n: usize| {
        std::thread::spawn(move || {
            (0..n)
                .map(|i| {
                    let k = Keypair::generate_ed25519();
                    let r = PeerRecord {
                        peer: k.public().to_peer_id(),
                        generation: 1,
                        version: 1,
                        name: format!("ghost-{i}"),
                        addrs: vec![],
                        labels: Default::default(),
                        capacity: Default::default(),
                        free: Default::default(),
                        agent_version: "ghost".into(),
                        leaving: false,
                        ext: Default::default(),
                    };
                    let body = serde_json::to_vec(&r).unwrap();
                    let signature = k.sign(&body).unwrap();
                    WireRecord { body, signature }
                })
                .collect::<Vec<_>>()
        })
    };
    let (a, b) = (make(FLOOD / 2), make(FLOOD / 2));
    let mut records = a.join().unwrap();
    records.extend(b.join().unwrap());
    let mut swarm = hostile_swarm(ClusterKey::load(c.key.as_ref().unwrap())?);
    connect(&mut swarm, target_addr).await?;
    let mut sent = 0;
    for chunk in records.chunks(8_000) {
        let msg = postcard::to_stdvec(&CtlRequest::Push { records: chunk.to_vec() })?;
        assert!(msg.len() < shoal_overlay::wire::MAX_CTL_REQUEST, "{}", msg.len());
        swarm.behaviour_mut().ctl.send_request(&target, msg);
        sent += 1;
    }
    assert_eq!(finish(&mut swarm, sent, Duration::from_secs(60)).await, sent, "every push answered");
    let started = std::time::Instant::now();
    let peers = c.agents[0].peers().await?;
    assert!(started.elapsed() < Duration::from_secs(2), "the victim answers at once");
    assert!(peers.len() <= shoal_overlay::record::MAX_RECORDS + 2, "{} peers listed", peers.len());
    assert_eq!(state_of(&peers, &real), Some(PeerState::Alive));
    // A real peer that joins now is seen, and its record (name) is taken despite the flood.
    let newcomer = c.add("newcomer").await?.status().await?.id;
    shoal_testkit::eventually(Duration::from_secs(20), "the newcomer alive with its name", || async {
        let peers = c.agents[0].peers().await.ok()?;
        peers.iter().any(|p| p.id == newcomer && p.state == PeerState::Alive && p.name == "newcomer").then_some(())
    })
    .await?;
    assert!(!c.agents[0].log_text().contains("panicked"));
    Ok(())
}

/// Truncated, oversized and malformed messages on the length-prefixed protocols (desired state
/// and replica logs, content control): each is dropped, and the agent keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn truncated_and_oversized_messages_on_every_protocol_are_dropped() -> anyhow::Result<()> {
    let c = Cluster::start(2, true).await?;
    let target_addr: Multiaddr = c.agents[0].join_addr().await?.parse()?;
    let target: PeerId = c.agents[0].status().await?.id.parse()?;
    let other = c.agents[1].status().await?.id;
    let mut swarm = hostile_swarm(ClusterKey::load(c.key.as_ref().unwrap())?);
    connect(&mut swarm, target_addr).await?;
    let frames: Vec<Vec<u8>> = vec![
        vec![],                                                                    // nothing at all
        1000u32.to_be_bytes().into_iter().chain([1, 2, 3]).collect(),              // truncated
        u32::MAX.to_be_bytes().to_vec(),                                           // a length far over any bound
        (64u32 << 20).to_be_bytes().into_iter().chain(vec![0; 1 << 16]).collect(), // oversized
        8u32.to_be_bytes().into_iter().chain([0xFF; 8]).collect(),                 // not postcard
    ];
    let mut sent = 0;
    for f in &frames {
        swarm.behaviour_mut().state.send_request(&target, f.clone());
        swarm.behaviour_mut().blob.send_request(&target, f.clone());
        sent += 2;
    }
    let done = finish(&mut swarm, sent, Duration::from_secs(30)).await;
    assert_eq!(done, sent, "every hostile stream was answered or closed");
    let peers = c.agents[0].peers().await?;
    assert_eq!(state_of(&peers, &other), Some(PeerState::Alive));
    // Content still flows: a file shared on the victim is fetched by the other peer.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("f");
    std::fs::write(&file, vec![7u8; 1 << 20])?;
    let share = |a: &shoal_testkit::Agent, args: &[&str]| {
        std::process::Command::new(shoal_testkit::shoal_bin()).arg("--addr").arg(&a.socket).args(args).output()
    };
    let out = share(&c.agents[0], &["share", file.to_str().unwrap()])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_string();
    let got = dir.path().join("got");
    let out = share(&c.agents[1], &["get", &id, "-o", got.to_str().unwrap()])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&got)?, std::fs::read(&file)?);
    assert!(!c.agents[0].log_text().contains("panicked"));
    Ok(())
}

/// A peer with the membership secret but no operator key pushes desired state over
/// `/shoal/state/1`: a changed health command for an existing service (a command in every
/// replica), a service of 10,000 replicas, one stamped at the end of time, and one sealed by a
/// key that granted itself. None is merged on any peer; both keep answering.
#[tokio::test(flavor = "multi_thread")]
async fn forged_desired_state_changes_nothing() -> anyhow::Result<()> {
    use shoal_scheduler::{Entry, Hlc, ServiceMap, Writer};
    use shoal_testkit::{Agent, AgentSpec, eventually};
    use shoal_types::ServiceSpec;
    let root = tempfile::tempdir()?;
    let op = shoal_overlay::KeyFile::generate();
    let key = root.path().join("op.key");
    shoal_overlay::keys::write_secret(&key, op.to_file_text().as_bytes())?;
    let start = |name: &str, join: Vec<String>| -> anyhow::Result<Agent> {
        let mut spec = AgentSpec::new(name);
        spec.cluster_key = Some(key.clone());
        spec.join = join;
        Agent::start(root.path(), spec)
    };
    let mut a = start("a", vec![])?;
    a.ready().await?;
    let mut b = start("b", vec![a.join_addr().await?])?;
    b.ready().await?;
    let cli = |ag: &Agent, args: &[&str]| {
        std::process::Command::new(shoal_testkit::shoal_bin()).arg("--addr").arg(&ag.socket).args(args).output()
    };
    let out = cli(&a, &["service", "create", "--name", "web", "--replicas", "1", "app:v1"])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let specs = |ag: &Agent| -> Vec<ServiceSpec> {
        let out = cli(ag, &["service", "ls", "--json"]).unwrap();
        let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        list.iter().filter_map(|s| serde_json::from_value(s["spec"].clone()).ok()).collect()
    };
    eventually(Duration::from_secs(15), "b to see web", || async { (specs(&b).len() == 1).then_some(()) }).await?;
    let before = specs(&a);

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    let web = before[0].clone();
    let mut forged = ServiceMap::new();
    forged.put(
        ServiceSpec { health_cmd: Some(vec!["sh".into(), "-c".into(), "evil".into()]), ..web.clone() },
        Hlc::new(now + 1, 0, "x"),
    );
    forged.put(ServiceSpec { name: "huge".into(), replicas: 10_000, ..web.clone() }, Hlc::new(now, 0, "x"));
    forged.put(ServiceSpec { name: "forever".into(), ..web.clone() }, Hlc::new(u64::MAX, u32::MAX, "x"));
    let rogue = Writer::new(&[5; 32], &[5; 32]);
    let v = Hlc::new(now + 2, 0, "x");
    let spec = ServiceSpec { name: "rogue".into(), ..web.clone() };
    forged.insert_entry(
        "rogue",
        Entry { seal: Some(rogue.seal("rogue", &v, Some(&spec))), version: v, spec: Some(spec) },
    );
    // `/shoal/state/1`: a u32 length, then postcard `StateMsg::Sync(map)` (variant 0).
    let body = [vec![0u8], postcard::to_stdvec(&forged.encode())?].concat();
    let frame = [(body.len() as u32).to_be_bytes().to_vec(), body].concat();

    let mut swarm = hostile_swarm(ClusterKey::load(&key)?);
    connect(&mut swarm, a.join_addr().await?.parse()?).await?;
    let target: PeerId = a.status().await?.id.parse()?;
    for _ in 0..3 {
        swarm.behaviour_mut().state.send_request(&target, frame.clone());
    }
    assert_eq!(finish(&mut swarm, 3, Duration::from_secs(20)).await, 3);
    tokio::time::sleep(Duration::from_secs(3)).await;
    for ag in [&a, &b] {
        assert_eq!(specs(ag), before, "{}: desired state unchanged", ag.spec.name);
        assert_eq!(ag.status().await?.cluster_size, 2);
    }
    let log = a.log_text();
    assert!(log.contains("not an operator's"), "the forgery is logged:\n{log}");
    Ok(())
}

/// A holder of the cluster key that is not a member on this machine asks a peer to fetch, on
/// its behalf, from a registry on the peer's own loopback, however the address is spelled:
/// every ask is refused and the registry sees no request.
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_is_not_made_to_fetch_from_its_own_loopback() -> anyhow::Result<()> {
    use shoal_registry::cluster::{Answer, Ask};
    use shoal_testkit::registry::Registry;
    let scratch = tempfile::tempdir()?;
    let reg = Registry::start(&scratch.path().join("reg"), None)?;
    let secret = reg.push_blob("team/app", b"what only this machine's registry holds")?;
    let config = reg
        .push_blob("team/app", br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": secret, "size": 1}],
    });
    let manifest = reg.put_manifest(
        "team/app",
        "v1",
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest)?,
    )?;

    let c = Cluster::start(2, true).await?;
    let target_addr: Multiaddr = c.agents[0].join_addr().await?.parse()?;
    let target: PeerId = c.agents[0].status().await?.id.parse()?;
    let mut swarm = hostile_swarm(ClusterKey::load(c.key.as_ref().unwrap())?);
    connect(&mut swarm, target_addr).await?;
    let mut control = swarm.behaviour().streams.new_control();
    // The swarm runs on its own while asks go out as an agent's do.
    let driver = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    let port = reg.addr().port();
    let hosts = [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("127.0.0.2:{port}"),
        format!("0.0.0.0:{port}"),
    ];
    let mut answers = Vec::new();
    for h in &hosts {
        let reference = format!("{h}/team/app:v1");
        let asks = [
            Ask::Manifest { reference: reference.clone() },
            Ask::Blob { reference, manifest: manifest.clone(), digest: secret.clone() },
        ];
        for ask in &asks {
            let exchange = async {
                let mut s = control.open_stream(target, shoal_registry::cluster::UPSTREAM_PROTOCOL).await?;
                shoal_blobs::proto::write_msg(&mut s, ask).await?;
                anyhow::Ok(shoal_blobs::proto::read_msg::<_, Answer>(&mut s, 1 << 20).await?)
            };
            let answer = tokio::time::timeout(Duration::from_secs(20), exchange)
                .await
                .map_err(|_| anyhow::anyhow!("no answer to {ask:?} in 20 s"))??;
            answers.push(answer);
        }
    }
    driver.abort();
    for a in &answers {
        assert!(matches!(a, Answer::Failed { kind, .. } if kind == "refused"), "{a:?}");
    }
    assert_eq!(reg.manifest_gets(), 0, "the registry was asked for a manifest");
    assert_eq!((reg.blob_gets(&secret), reg.blob_gets(&config)), (0, 0), "the registry was asked for a blob");
    assert!(!c.agents[0].log_text().contains("panicked"));
    Ok(())
}

/// A key holder that is no operator asks a peer to restart its service replica and a plain
/// container: both refused, both keep running.
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_is_no_operator_cannot_restart_containers() -> anyhow::Result<()> {
    let host = shoal_testkit::containers::ContainerHost::start("hostile-restart").await?;
    host.ok(&["service", "create", "--name", "web", "--replicas", "1", "busybox:test", "sleep", "600"])?;
    host.ok(&["run", "-d", "--name", "plain", "busybox:test", "sleep", "600"])?;
    let client = host.agent.client();
    let replica = shoal_testkit::eventually(Duration::from_secs(60), "the replica running", async || {
        let r: Vec<shoal_types::ReplicaInfo> = client.get("/v1/services/web/replicas").await.ok()?;
        r.into_iter().find(|r| r.state == "running").map(|r| r.container)
    })
    .await?;
    let plain = host.inspect("plain")?["id"].as_str().unwrap().to_string();

    let target_addr: Multiaddr = host.agent.join_addr().await?.parse()?;
    let target: PeerId = host.agent.status().await?.id.parse()?;
    let mut swarm = hostile_swarm(ClusterKey::load(&host.agent.dir.join("cluster.key"))?);
    connect(&mut swarm, target_addr).await?;
    let mut control = swarm.behaviour().streams.new_control();
    let driver = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    for container in [&replica, &plain] {
        let exchange = async {
            let mut s = control.open_stream(target, StreamProtocol::new("/shoal/state/1")).await?;
            shoal_blobs::proto::write_msg(&mut s, &StateMsg::Restart { container: container.clone() }).await?;
            anyhow::Ok(shoal_blobs::proto::read_msg::<_, StateMsg>(&mut s, 1 << 20).await?)
        };
        let answer = tokio::time::timeout(Duration::from_secs(20), exchange).await??;
        assert!(matches!(answer, StateMsg::Refused), "{container}: {answer:?}");
    }
    driver.abort();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for container in [&replica, &plain] {
        let info = host.inspect(container)?;
        assert_eq!(info["state"], "running", "{container} was stopped: {info}");
    }
    let now: Vec<shoal_types::ReplicaInfo> = client.get("/v1/services/web/replicas").await?;
    assert!(now.iter().any(|r| r.container == replica && r.state == "running"), "{now:?}");
    assert!(!host.agent.log_text().contains("replica.restarted"));
    Ok(())
}
