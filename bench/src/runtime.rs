//! Container runtime benchmarks (`shoal-bench runtime`), on one agent with a bridge and subnet
//! of the benchmark's own (`shbench`, 198.18.200.0/24) and the busybox test image.
//!
//! 1. Start latency of `shoal run --rm busybox true`: the real CLI end to end (process start
//!    to exit, exit code checked), the same through the API without the CLI (`POST
//!    /v1/containers?attach=true`, split into "until running" and "until its exit is seen"),
//!    and Debian's `runc run` on the same rootfs (the busybox layer unpacked into an OCI
//!    bundle, `runc spec` defaults: new pid, net, ipc, uts and mount namespaces; `runc run`
//!    deletes the container on exit, which is inside the timing as Shoal's `--rm` is). All
//!    three interleaved in one loop, after warm-ups. To show where Shoal's time goes: the CLI
//!    alone (`shoal ps`), and the container network set up and torn down alone with the same
//!    functions the shim calls.
//! 2. Isolation cost: a CPU-bound shell loop and a pipe-heavy sha256 of 256 MiB, timed inside
//!    a container and on the host (the same busybox binary, PATH into the unpacked rootfs),
//!    each from `/proc/uptime` around the work. Then TCP throughput into a container: through
//!    a published port (the shim's userland proxy) and to the container's address on the
//!    bridge (veth, no proxy), against a host-only loopback transfer. The container receives
//!    with `nc -ll -e dd bs=1M` (busybox nc's own copy loop reads 1 KiB at a time and would be
//!    the bottleneck); the host reference reads with 1 MiB reads as dd does.
//!
//! Everything is removed at the end, also on failure: containers, shims, the agent, the
//! bridge, the probe namespace, runc's containers and the temporary directory.

use crate::stats::median_f64;
use anyhow::Context;
use shoal_api::client::Client;
use shoal_testkit::containers::ContainerHost;
use shoal_testkit::{Agent, AgentSpec, shoal_bin};
use shoal_types::{AttachEvent, ContainerSpec};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BRIDGE: &str = "shbench";
const SUBNET: &str = "198.18.200.0/24";
const IMAGE: &str = "busybox:bench";
const WARMUPS: usize = 3;
/// Longest any single step (one child process, one request, one transfer) may take.
const STEP_LIMIT: Duration = Duration::from_secs(120);
/// The probe namespace and veth of the network-setup measurement, and its address.
const PROBE_NS: &str = "shbench-probe";
const PROBE_VETH: &str = "shbvprobe";
const PROBE_IP: &str = "198.18.200.254";
const SINK: &str = "shbench-sink";
const SINK_PORT: u16 = 5001;
const CPU_RUNS: usize = 5;
const NET_RUNS: usize = 3;

/// Latency figures in milliseconds.
struct Lat {
    median: f64,
    min: f64,
    p90: f64,
    n: usize,
}

fn lat(xs: &[Duration]) -> Lat {
    let mut v: Vec<f64> = xs.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    // Nearest rank.
    let p90 = v.get((v.len() * 9).div_ceil(10).saturating_sub(1)).copied().unwrap_or(f64::NAN);
    Lat { median: median_f64(&v), min: v.first().copied().unwrap_or(f64::NAN), p90, n: v.len() }
}

impl std::fmt::Display for Lat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "median {:6.1} ms (min {:5.1}, p90 {:6.1}, n={})", self.median, self.min, self.p90, self.n)
    }
}

/// Runs `cmd` to its end with null stdin and captured output; kills it after `STEP_LIMIT`.
/// Returns how long it took from spawn to exit.
fn run_timed(cmd: &mut Command) -> anyhow::Result<(Duration, Output)> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let (done, wait) = std::sync::mpsc::sync_channel::<()>(1);
    let t0 = Instant::now();
    let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let dog = std::thread::spawn(move || {
        let late = matches!(wait.recv_timeout(STEP_LIMIT), Err(std::sync::mpsc::RecvTimeoutError::Timeout));
        if late {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        late
    });
    let out = child.wait_with_output();
    let took = t0.elapsed();
    drop(done);
    let late = dog.join().unwrap_or(false);
    let out = out.with_context(|| format!("waiting for {cmd:?}"))?;
    anyhow::ensure!(!late, "{cmd:?} did not finish within {STEP_LIMIT:?}");
    Ok((took, out))
}

/// [`run_timed`], failing unless it exits 0.
fn run_ok(cmd: &mut Command) -> anyhow::Result<(Duration, Output)> {
    let (took, out) = run_timed(cmd)?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    Ok((took, out))
}

/// The agent, the image, the runc bundle, and the cleanup of all of it.
struct Host {
    agent: Option<Agent>,
    socket: PathBuf,
    runtime_dir: PathBuf,
    /// The busybox layer unpacked: runc's rootfs, and the host's busybox for the CPU reference.
    rootfs: PathBuf,
    bundle: PathBuf,
    runc_root: PathBuf,
    /// Last: removed after everything that may live in it is gone.
    root: tempfile::TempDir,
}

impl Host {
    async fn start() -> anyhow::Result<Host> {
        anyhow::ensure!(nix::unistd::Uid::effective().is_root(), "the runtime benchmark needs root (containers)");
        let root = tempfile::Builder::new().prefix("shoal-bench-rt-").tempdir()?;
        let mut spec = AgentSpec::new("rt");
        spec.log_level = "info".into();
        spec.extra = vec!["--bridge".into(), BRIDGE.into(), "--container-subnet".into(), SUBNET.into()];
        let agent = Agent::start(root.path(), spec)?;
        let bundle = root.path().join("bundle");
        let mut host = Host {
            socket: agent.socket.clone(),
            runtime_dir: agent.dir.join("runtime"),
            agent: Some(agent),
            rootfs: bundle.join("rootfs"),
            bundle,
            runc_root: root.path().join("runc-state"),
            root,
        };
        if let Some(a) = host.agent.as_mut() {
            a.ready().await?;
        }
        let image = host.root.path().join("busybox.tar");
        shoal_testkit::images::write_busybox_image(&image, IMAGE, &[], ContainerHost::default_config());
        host.shoal_ok(&["image", "import", &image.display().to_string()])?;
        // The same layer the image holds, unpacked for runc and the host reference.
        let layer = host.root.path().join("layer.tar");
        std::fs::write(&layer, shoal_testkit::images::busybox_layer())?;
        std::fs::create_dir_all(&host.rootfs)?;
        run_ok(Command::new("tar").arg("-xf").arg(&layer).arg("-C").arg(&host.rootfs))?;
        Ok(host)
    }

    fn shoal(&self) -> Command {
        let mut c = Command::new(shoal_bin());
        c.env("SHOAL_ADDR", &self.socket);
        c
    }

    fn shoal_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let (_, out) = run_ok(self.shoal().args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn runc(&self) -> Command {
        let mut c = Command::new("runc");
        c.arg("--root").arg(&self.runc_root);
        c
    }

    /// An OCI bundle from `runc spec`, running `true`, without a terminal, root writable (as
    /// Shoal's overlay root is).
    fn make_bundle(&self) -> anyhow::Result<()> {
        run_ok(Command::new("runc").arg("spec").arg("--bundle").arg(&self.bundle))?;
        let path = self.bundle.join("config.json");
        let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        cfg["process"]["args"] = serde_json::json!(["true"]);
        cfg["process"]["terminal"] = serde_json::json!(false);
        cfg["root"]["readonly"] = serde_json::json!(false);
        let has_netns = cfg["linux"]["namespaces"]
            .as_array()
            .is_some_and(|ns| ns.iter().any(|n| n["type"] == "network" && n.get("path").is_none()));
        anyhow::ensure!(has_netns, "runc spec's default no longer makes a fresh network namespace");
        std::fs::write(&path, serde_json::to_vec_pretty(&cfg)?)?;
        Ok(())
    }

    fn shim_pids(&self) -> Vec<i32> {
        let root = self.runtime_dir.display().to_string();
        let Ok(d) = std::fs::read_dir("/proc") else { return Vec::new() };
        d.flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
            .filter(|pid| {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                cmd.contains("__shim") && cmd.contains(&root)
            })
            .collect()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Ok((_, out)) = run_timed(self.shoal().args(["ps", "-a", "--json"]))
            && let Ok(list) = serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
        {
            for c in list {
                if let Some(id) = c["id"].as_str() {
                    let _ = run_timed(self.shoal().args(["rm", "-f", id]));
                }
            }
        }
        for pid in self.shim_pids() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        if let Some(mut a) = self.agent.take() {
            let _ = a.terminate();
        }
        if let Ok((_, out)) = run_timed(self.runc().args(["list", "-q"])) {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = run_timed(self.runc().args(["delete", "-f", id]));
            }
        }
        probe_teardown();
        let _ = run_timed(Command::new("ip").args(["link", "del", BRIDGE]));
    }
}

/// Times `shoal run --rm IMAGE true` through the API: (until running, until the exit is seen,
/// until the stream ends).
async fn api_run(client: &Client) -> anyhow::Result<(Duration, Duration, Duration)> {
    let spec = ContainerSpec { image: IMAGE.into(), cmd: vec!["true".into()], auto_remove: true, ..Default::default() };
    let (mut running, mut exited, mut code, mut failure) = (None, None, None, None);
    let t0 = Instant::now();
    let stream = client.stream_lines(
        hyper::Method::POST,
        "/v1/containers?attach=true",
        Some(&spec),
        |ev: AttachEvent| match ev {
            AttachEvent::Started { .. } => running = Some(t0.elapsed()),
            AttachEvent::Output(_) => {}
            AttachEvent::Exited { container } => {
                exited = Some(t0.elapsed());
                code = container.exit_code;
            }
            AttachEvent::Error { message } => failure = Some(message),
        },
    );
    tokio::time::timeout(STEP_LIMIT, stream).await.context("attached run through the API timed out")??;
    let total = t0.elapsed();
    if let Some(m) = failure {
        anyhow::bail!("attached run through the API: {m}");
    }
    anyhow::ensure!(code == Some(0), "container through the API exited with {code:?}");
    match (running, exited) {
        (Some(r), Some(e)) => Ok((r, e, total)),
        _ => anyhow::bail!("the API's attach stream lacked its started or exited event"),
    }
}

/// The probe's network, as the shim would describe it.
fn probe_net() -> shoal_runtime::state::NetMeta {
    shoal_runtime::state::NetMeta {
        ip: PROBE_IP.parse().expect("probe address"),
        prefix: 24,
        gateway: "198.18.200.1".parse().expect("gateway address"),
        bridge: BRIDGE.into(),
        netns: PROBE_NS.into(),
        veth: PROBE_VETH.into(),
        mtu: None,
    }
}

/// Sets up and tears down a container network with the shim's own functions (netlink from
/// the calling process), in the benchmark's bridge and subnet. Returns (setup, teardown).
fn probe_network() -> anyhow::Result<(Duration, Duration)> {
    let net = probe_net();
    let t0 = Instant::now();
    let setup = shoal_runtime::net::setup(&net);
    let up = t0.elapsed();
    let t1 = Instant::now();
    shoal_runtime::net::teardown(&net);
    let down = t1.elapsed();
    // The kernel removes the veth pair with the namespace asynchronously; let it finish
    // (untimed) so the next set-up does not wait for the name.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Path::new("/sys/class/net").join(PROBE_VETH).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    setup?;
    Ok((up, down))
}

fn probe_teardown() {
    shoal_runtime::net::teardown(&probe_net());
}

fn ratio(a: &Lat, b: &Lat) -> f64 {
    a.median / b.median
}

async fn start_latency(h: &Host, runs: usize) -> anyhow::Result<()> {
    let runc = run_timed(Command::new("runc").arg("--version"))
        .ok()
        .filter(|(_, o)| o.status.success())
        .and_then(|(_, o)| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_string));
    if runc.is_some() {
        h.make_bundle()?;
    }
    let client = Client::new(&h.socket.display().to_string(), None)?;
    println!("== runtime: start latency of `run --rm busybox true`, {runs} runs after {WARMUPS} warm-ups, interleaved");
    let (mut cli, mut api, mut api_running, mut api_exit, mut rc) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..WARMUPS + runs {
        let (t, _) = run_ok(h.shoal().args(["run", "--rm", IMAGE, "true"]))?;
        let (r, e, total) = api_run(&client).await?;
        let runc_t = match runc {
            Some(_) => {
                let id = format!("shbench-{i}");
                Some(run_ok(h.runc().arg("run").arg("--bundle").arg(&h.bundle).arg(&id))?.0)
            }
            None => None,
        };
        if i >= WARMUPS {
            cli.push(t);
            api.push(total);
            api_running.push(r);
            api_exit.push(e.saturating_sub(r));
            rc.extend(runc_t);
        }
    }
    let (cli, api) = (lat(&cli), lat(&api));
    println!("shoal run (CLI, spawn to exit):          {cli}");
    println!("shoal API (POST ?attach=true, no CLI):   {api}");
    println!("  of which: request until running        {}", lat(&api_running));
    println!("            running until exit seen      {}", lat(&api_exit));
    match &runc {
        Some(v) => {
            let rc = lat(&rc);
            let v = v.replace(" version", "");
            println!("{:<40} {rc}", format!("{v} (`runc run`, deletes on exit):"));
            let left = run_ok(h.runc().args(["list", "-q"]))?.1.stdout;
            anyhow::ensure!(left.trim_ascii().is_empty(), "runc run left containers behind");
            println!(
                "ratio shoal/runc (medians): CLI {:.2}, API {:.2}  (target <= 1.5)",
                ratio(&cli, &rc),
                ratio(&api, &rc)
            );
        }
        None => println!("runc not installed (apt-get install runc): no reference in this run"),
    }
    // Where the time goes.
    let mut ps = Vec::new();
    for _ in 0..runs.min(20) {
        ps.push(run_ok(h.shoal().args(["ps"]))?.0);
    }
    println!("CLI alone (`shoal ps`, spawn to exit):   {}", lat(&ps));
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for _ in 0..runs.min(20) {
        let (u, d) = probe_network()?;
        up.push(u);
        down.push(d);
    }
    println!("container network alone (the shim's netlink set-up): setup {}", lat(&up));
    println!("                                               teardown {}", lat(&down));
    Ok(())
}

/// Wraps `work` so the shell prints the seconds it took (from /proc/uptime, 10 ms steps).
fn timed_script(work: &str) -> String {
    format!("read a x < /proc/uptime; {work}; read b x < /proc/uptime; echo $a $b")
}

fn parse_span(out: &[u8]) -> anyhow::Result<f64> {
    let text = String::from_utf8_lossy(out);
    let mut w = text.split_whitespace().map(|s| s.parse::<f64>());
    match (w.next(), w.next()) {
        (Some(Ok(a)), Some(Ok(b))) => Ok(b - a),
        _ => anyhow::bail!("cannot read the timing from {text:?}"),
    }
}

fn isolation_cpu(h: &Host) -> anyhow::Result<()> {
    println!(
        "== runtime: isolation cost, CPU, median of {CPU_RUNS} (timed inside with /proc/uptime, 10 ms steps; same busybox)"
    );
    let busybox = h.rootfs.join("bin/busybox");
    let path = h.rootfs.join("bin");
    let workloads = [
        ("sh loop, 2,000,000 iterations", "i=0; while [ $i -lt 2000000 ]; do i=$((i+1)); done"),
        ("sha256 of 256 MiB through a pipe", "head -c 268435456 /dev/zero | sha256sum >/dev/null"),
    ];
    for (label, work) in workloads {
        let script = timed_script(work);
        let (mut ctr, mut host) = (Vec::new(), Vec::new());
        for _ in 0..CPU_RUNS {
            let (_, out) = run_ok(h.shoal().args(["run", "--rm", IMAGE, "sh", "-c", &script]))?;
            ctr.push(parse_span(&out.stdout)?);
            let (_, out) = run_ok(Command::new(&busybox).args(["sh", "-c", &script]).env_clear().env("PATH", &path))?;
            host.push(parse_span(&out.stdout)?);
        }
        let (c, o) = (median_f64(&ctr), median_f64(&host));
        // The minimum too: on a shared machine it is the run least disturbed by others.
        let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        let (cm, om) = (min(&ctr), min(&host));
        println!(
            "{label:<34} container {c:.2} s (min {cm:.2}), host {o:.2} s (min {om:.2}), ratio {:.3} (of mins {:.3})",
            c / o,
            cm / om
        );
    }
    Ok(())
}

/// Sends `bytes` to `addr`, half-closes, and waits for the receiver to close (so every byte
/// reached it). Returns MB/s.
fn send(addr: SocketAddr, bytes: u64) -> anyhow::Result<f64> {
    let buf = vec![0x5au8; 1 << 20];
    let t0 = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).with_context(|| format!("connect {addr}"))?;
    s.set_write_timeout(Some(Duration::from_secs(60)))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        s.write_all(&buf[..n]).with_context(|| format!("sending to {addr}"))?;
        left -= n as u64;
    }
    s.shutdown(Shutdown::Write)?;
    let mut tail = [0u8; 64];
    while s.read(&mut tail).with_context(|| format!("waiting for {addr} to close"))? > 0 {}
    Ok(bytes as f64 / t0.elapsed().as_secs_f64() / 1e6)
}

/// A host-only receiver on loopback: accepts `conns` connections one after another, reads each
/// to its end with 1 MiB reads, then closes it. Gives up after `STEP_LIMIT` without one.
fn host_sink(conns: usize) -> anyhow::Result<(SocketAddr, std::thread::JoinHandle<()>)> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = l.local_addr()?;
    l.set_nonblocking(true)?;
    let t = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..conns {
            let deadline = Instant::now() + STEP_LIMIT;
            let mut s = loop {
                match l.accept() {
                    Ok((s, _)) => break s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    Err(_) => return,
                }
            };
            if s.set_nonblocking(false).is_err() || s.set_read_timeout(Some(Duration::from_secs(60))).is_err() {
                return;
            }
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        }
    });
    Ok((addr, t))
}

fn isolation_net(h: &Host, mib: u64) -> anyhow::Result<()> {
    let bytes = mib << 20;
    println!(
        "== runtime: isolation cost, TCP from the host into a container, {mib} MiB, median of {NET_RUNS} \
         (container: busybox nc -ll -e dd bs=1M; host reference: a loopback reader with 1 MiB reads)"
    );
    let port = shoal_testkit::free_port()?;
    let publish = format!("{port}:{SINK_PORT}");
    let serve = format!("exec nc -ll -p {SINK_PORT} -e dd of=/dev/null bs=1M 2>/dev/null");
    h.shoal_ok(&["run", "-d", "--name", SINK, "-p", &publish, IMAGE, "sh", "-c", &serve])?;
    let info: serde_json::Value = serde_json::from_str(&h.shoal_ok(&["inspect", SINK])?)?;
    let ip: Ipv4Addr = info["ip"].as_str().context("inspect gives no ip")?.parse().context("inspect gives a bad ip")?;
    let direct = SocketAddr::from((ip, SINK_PORT));
    let proxied = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    // Listening yet? A refused connect means not yet; an accepted one just ends at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&direct, Duration::from_secs(1)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "nothing listens on {direct} within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (local, sink) = host_sink(NET_RUNS + 1)?;
    let (mut l, mut p, mut d) = (Vec::new(), Vec::new(), Vec::new());
    // One warm-up transfer of a quarter each, then the runs, interleaved.
    for round in 0..=NET_RUNS {
        let n = if round == 0 { (bytes / 4).max(1 << 20) } else { bytes };
        let r = (send(local, n)?, send(proxied, n)?, send(direct, n)?);
        if round > 0 {
            l.push(r.0);
            p.push(r.1);
            d.push(r.2);
        }
    }
    let _ = sink.join();
    let (l, p, d) = (median_f64(&l), median_f64(&p), median_f64(&d));
    println!("host loopback (127.0.0.1, no container):       {l:6.0} MB/s");
    println!("published port (127.0.0.1:{port} -> shim proxy): {p:6.0} MB/s, ratio {:.2}", p / l);
    println!("container address (bridge + veth, no proxy):   {d:6.0} MB/s, ratio {:.2}", d / l);
    h.shoal_ok(&["rm", "-f", SINK])?;
    Ok(())
}

/// Runs the whole benchmark and prints its figures.
pub(crate) async fn run(runs: usize, mib: u64) -> anyhow::Result<()> {
    let h = Host::start().await?;
    start_latency(&h, runs).await?;
    isolation_cpu(&h)?;
    isolation_net(&h, mib)?;
    Ok(())
}
