//! The per-container supervisor (`shoal __shim <dir>`), like containerd's shims.
//!
//! The agent writes a container directory (see [`crate::state`]) and starts one shim for it.
//! The shim detaches into its own session, so the agent can be restarted or SIGKILLed while the
//! container runs on. It:
//!
//! 1. mounts the overlay root filesystem and sets up the network namespace (both idempotent, so
//!    a restart of the container reuses them), builds the OCI spec from the image config, binds
//!    the published host ports (a port in use fails the start with a clear error);
//! 2. starts the container with embedded libcontainer while it is still single-threaded:
//!    libcontainer forks with a raw `clone3`, which is only safe with no other threads (their
//!    locks would be inherited held), and it changes the working directory of the process;
//! 3. then starts threads: two log pumps (stdout and stderr pipes into the rotated JSON log),
//!    the control socket (`stop SECS`, `kill SIG`), one proxy per published port;
//! 4. is the child subreaper, so the container's init (whose parent, libcontainer's process,
//!    is gone) is its child: it `waitpid`s for it, records the exit code (128+signal when
//!    killed) and whether the cgroup saw an OOM kill, and deletes the libcontainer state
//!    (cgroups included);
//! 5. if the restart policy says so, waits out a back-off (100 ms doubling to 10 s; reset after
//!    a run of 10 s) and re-executes itself, which gives a fresh single-threaded process for the
//!    next start; otherwise writes the final state, unmounts, deletes the namespace and exits.
//!
//! Every change is written to `state.json` (atomically); the agent only reads it.

use crate::state::{ContainerDir, ContainerMeta, Phase, ShimState, StartFailure, now_unix, write_json_atomic};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A run shorter than this counts as a quick failure for the back-off.
const STABLE_RUN: Duration = Duration::from_secs(10);
/// First restart delay.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest restart delay.
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Command-line state carried across the shim's re-executions.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShimArgs {
    /// Restarts so far.
    pub restarts: u32,
    /// Consecutive quick failures (for the back-off).
    pub quick_fails: u32,
}

/// Shared between the shim's threads.
struct Shared {
    dir: ContainerDir,
    state: Mutex<ShimState>,
    /// Host pid of the container's init, 0 when none.
    init: AtomicI32,
    stopped: AtomicBool,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut ShimState)) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s);
        if let Err(e) = write_json_atomic(&self.dir.state(), &*s, false) {
            tracing::warn!(?e, "cannot write container state");
        }
    }
}

/// Runs the shim for the container in `dir`. Never returns.
pub fn run(dir: &Path, args: ShimArgs) -> ! {
    let dir = ContainerDir(dir.to_path_buf());
    let _ = nix::unistd::setsid();
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let meta = match dir.read_meta() {
        Ok(m) => m,
        Err(e) => {
            let mut s = ShimState::new(std::process::id());
            s.phase = Phase::Failed;
            s.error = Some(format!("cannot read {}: {e}", dir.meta().display()));
            s.failure = Some(StartFailure::Setup);
            let _ = write_json_atomic(&dir.state(), &s, false);
            std::process::exit(1);
        }
    };
    let mut state = dir.read_state().unwrap_or_else(|_| ShimState::new(std::process::id()));
    state.shim_pid = std::process::id();
    state.shim_start_ticks = crate::state::process_start_ticks(state.shim_pid).unwrap_or(0);
    state.restarts = args.restarts;
    state.phase = Phase::Starting;
    let stopped = state.stopped;
    let shared =
        Arc::new(Shared { dir, state: Mutex::new(state), init: AtomicI32::new(0), stopped: AtomicBool::new(stopped) });
    shared.update(|_| {});

    let started = match start(&shared, &meta) {
        Ok(s) => s,
        Err((kind, msg)) => {
            teardown(&shared.dir, &meta);
            shared.update(|s| {
                s.phase = Phase::Failed;
                s.error = Some(msg);
                s.failure = Some(kind);
                s.pid = None;
            });
            std::process::exit(1);
        }
    };
    let Started { pid, stdout, stderr, listeners } = started;
    let run_began = Instant::now();
    shared.init.store(pid.as_raw(), Ordering::SeqCst);
    shared.update(|s| {
        s.phase = Phase::Running;
        s.pid = Some(pid.as_raw() as u32);
        s.started_unix = Some(now_unix());
        s.exit_code = None;
        s.oom_killed = false;
        s.error = None;
    });

    // From here on the process may have threads.
    let log = match crate::logs::LogWriter::open(&shared.dir.logs(), meta.log_max_bytes, meta.log_files) {
        Ok(w) => Some(Arc::new(Mutex::new(w))),
        Err(e) => {
            tracing::warn!(?e, "cannot open the container log; output is discarded");
            None
        }
    };
    let pumps = [(stdout, crate::logs::Stream::Out), (stderr, crate::logs::Stream::Err)]
        .into_iter()
        .map(|(fd, s)| {
            let log = log.clone();
            std::thread::spawn(move || pump(fd, s, log))
        })
        .collect::<Vec<_>>();
    control_thread(shared.clone());
    if let Some(net) = &meta.net {
        for (listener, port) in listeners {
            crate::proxy::spawn(listener, std::net::SocketAddr::from((net.ip, port)));
        }
    }

    let status = wait_for(pid);
    shared.init.store(0, Ordering::SeqCst);
    let exit_code = match status {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
        _ => 255,
    };
    // The pid namespace is gone with its init, so the pipes reach EOF promptly.
    for p in pumps {
        let _ = p.join();
    }
    let oom = crate::cgroup::usage(&meta.cgroups_path).oom_kills > 0;
    delete_container(&shared.dir, &meta);
    let ran = run_began.elapsed();
    let stopped = shared.stopped.load(Ordering::SeqCst);
    let restart = !stopped && meta.spec.restart.should_restart(exit_code, args.restarts);
    shared.update(|s| {
        s.exit_code = Some(exit_code);
        s.oom_killed = oom;
        s.finished_unix = Some(now_unix());
        s.pid = None;
        s.phase = if restart { Phase::Restarting } else { s.phase };
    });
    if restart {
        let quick_fails = if ran >= STABLE_RUN { 0 } else { args.quick_fails + 1 };
        let delay = BACKOFF_START.saturating_mul(1 << quick_fails.min(7)).min(BACKOFF_MAX);
        let deadline = Instant::now() + delay;
        while Instant::now() < deadline && !shared.stopped.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !shared.stopped.load(Ordering::SeqCst) {
            let _ = std::fs::remove_file(shared.dir.ctl());
            let err = std::process::Command::new("/proc/self/exe")
                .arg("__shim")
                .arg(shared.dir.path())
                .arg("--restarts")
                .arg((args.restarts + 1).to_string())
                .arg("--quick-fails")
                .arg(quick_fails.to_string())
                .exec();
            tracing::error!(?err, "cannot re-execute the shim to restart the container");
        }
    }
    // Report the end first (an attached client is waiting for it), then undo mount and
    // network; whoever removes the container waits for this process to exit.
    let _ = std::fs::remove_file(shared.dir.ctl());
    shared.update(|s| s.phase = Phase::Exited);
    teardown(&shared.dir, &meta);
    std::process::exit(0);
}

struct Started {
    pid: Pid,
    stdout: OwnedFd,
    stderr: OwnedFd,
    listeners: Vec<(crate::proxy::Listener, u16)>,
}

/// Everything up to a running init. Errors are messages for the user, with whose fault it is.
fn start(shared: &Shared, meta: &ContainerMeta) -> Result<Started, (StartFailure, String)> {
    let setup = |msg: String| (StartFailure::Setup, msg);
    let dir = &shared.dir;
    for d in [dir.rootfs(), dir.upper(), dir.work(), dir.logs(), dir.bundle()] {
        std::fs::create_dir_all(&d).map_err(|e| setup(format!("cannot create {}: {e}", d.display())))?;
    }
    if !is_mounted(&dir.rootfs()) {
        crate::layers::mount_overlay(&dir.rootfs(), &meta.lowers, Some((&dir.upper(), &dir.work())))
            .map_err(|e| setup(format!("cannot mount the container's root filesystem: {e}")))?;
    }
    // Published ports first: a port in use is the user's most likely mistake.
    let mut listeners = Vec::new();
    for p in &meta.spec.ports {
        let l = crate::proxy::bind(p).map_err(|e| {
            let msg = format!("cannot publish port {p}: {e}; pick another host port with -p HOST:{}", p.container_port);
            (StartFailure::Port, msg)
        })?;
        listeners.push((l, p.container_port));
    }
    if let Some(net) = &meta.net
        && !crate::net::exists(net)
    {
        crate::net::setup(net).map_err(|e| setup(format!("cannot set up the container's network: {e}")))?;
    }
    let image: oci_spec::image::ImageConfiguration = crate::state::read_json(&dir.0.join("image-config.json"))
        .map_err(|e| setup(format!("cannot read the image config: {e}")))?;
    let netns = meta.net.as_ref().map(|n| PathBuf::from("/run/netns").join(&n.netns));
    let etc = crate::spec::EtcFiles {
        hosts: dir.etc().join("hosts"),
        hostname: dir.etc().join("hostname"),
        resolv_conf: dir.etc().join("resolv.conf"),
    };
    let hostname = &meta.name;
    let spec = crate::spec::build_spec(&crate::spec::SpecInput {
        spec: &meta.spec,
        image: &image,
        rootfs: &dir.rootfs(),
        hostname,
        netns: netns.as_deref(),
        cgroups_path: &meta.cgroups_path,
        etc_files: Some(etc),
    })
    .map_err(|e| (StartFailure::Command, e.to_string()))?;
    spec.save(dir.bundle().join("config.json")).map_err(|e| setup(format!("cannot write the OCI spec: {e}")))?;

    let (out_r, out_w) = nix::unistd::pipe().map_err(|e| setup(format!("pipe: {e}")))?;
    let (err_r, err_w) = nix::unistd::pipe().map_err(|e| setup(format!("pipe: {e}")))?;
    let devnull = std::fs::File::open("/dev/null").map_err(|e| setup(format!("/dev/null: {e}")))?;
    // A previous run's libcontainer state (a crash between start and delete) would make
    // `build` fail with "container already exists".
    let _ = std::fs::remove_dir_all(dir.youki().join(&meta.id));
    let mut container = libcontainer::container::builder::ContainerBuilder::new(
        meta.id.clone(),
        libcontainer::syscall::syscall::SyscallType::default(),
    )
    .with_root_path(dir.youki())
    .map_err(|e| setup(format!("libcontainer root: {e}")))?
    .with_stdin(OwnedFd::from(devnull))
    .with_stdout(out_w)
    .with_stderr(err_w)
    .as_init(dir.bundle())
    .with_systemd(false)
    .with_detach(true)
    .build()
    .map_err(|e| describe_start_error(&e, meta))?;
    if let Err(e) = container.start() {
        let msg = describe_start_error(&e, meta);
        let _ = container.delete(true);
        return Err(msg);
    }
    let pid = container.pid().ok_or_else(|| setup("libcontainer started the container but reports no pid".into()))?;
    Ok(Started { pid, stdout: out_r, stderr: err_r, listeners })
}

/// libcontainer's errors name their layer, not the user's mistake; add what to do, and say
/// whose it is.
fn describe_start_error(e: &libcontainer::error::LibcontainerError, meta: &ContainerMeta) -> (StartFailure, String) {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    let lower = text.to_lowercase();
    if lower.contains("executable") || lower.contains("no such file") && lower.contains("exec") {
        let msg = format!(
            "command {:?} not found in image {}: check the command, or the image's PATH ({text})",
            meta.command.first().map(String::as_str).unwrap_or(""),
            meta.image
        );
        return (StartFailure::Command, msg);
    }
    (StartFailure::Setup, format!("cannot start the container: {text}"))
}

/// Waits for `pid` (reaping any other child the subreaper inherits meanwhile).
fn wait_for(pid: Pid) -> WaitStatus {
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(s @ (WaitStatus::Exited(p, _) | WaitStatus::Signaled(p, _, _))) if p == pid => return s,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::ECHILD) => return WaitStatus::Exited(pid, 255),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Copies one of the container's output pipes into the log.
fn pump(fd: OwnedFd, stream: crate::logs::Stream, log: Option<Arc<Mutex<crate::logs::LogWriter>>>) {
    let mut file = std::fs::File::from(fd);
    let mut split = crate::logs::LineSplitter::default();
    let mut buf = vec![0u8; 64 << 10];
    let write = |line: &[u8]| {
        if let Some(log) = &log {
            let mut w = log.lock().unwrap_or_else(|e| e.into_inner());
            let _ = w.write(stream, line);
        }
    };
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                for line in split.push(&buf[..n]) {
                    write(&line);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    if let Some(rest) = split.finish() {
        write(&rest);
    }
}

/// Serves `ctl.sock`: one line per connection, `stop SECS` or `kill SIGNAL`; answers `ok`.
fn control_thread(shared: Arc<Shared>) {
    let path = shared.dir.ctl();
    let _ = std::fs::remove_file(&path);
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
        let _ = std::fs::set_permissions(parent, std::os::unix::fs::PermissionsExt::from_mode(0o700));
    }
    let listener = match std::os::unix::net::UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(?e, "cannot bind the control socket; stop falls back to signals");
            return;
        }
    };
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let mut line = String::new();
                let mut reader = BufReader::new(conn.take(256));
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                let reply = handle_control(&shared, line.trim());
                let mut conn = reader.into_inner().into_inner();
                let _ = conn.write_all(reply.as_bytes());
            });
        }
    });
}

fn handle_control(shared: &Arc<Shared>, line: &str) -> String {
    let mut words = line.split_whitespace();
    match (words.next(), words.next()) {
        (Some("stop"), secs) => {
            let secs: u64 = secs.and_then(|s| s.parse().ok()).unwrap_or(10).min(crate::MAX_STOP_SECS);
            mark_stopped(shared);
            signal_init(shared, Signal::SIGTERM);
            let shared = shared.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(secs);
                while Instant::now() < deadline && shared.init.load(Ordering::SeqCst) != 0 {
                    std::thread::sleep(Duration::from_millis(20));
                }
                signal_init(&shared, Signal::SIGKILL);
            });
            "ok\n".into()
        }
        (Some("kill"), sig) => {
            let sig = match sig.map(parse_signal) {
                None => Signal::SIGKILL,
                Some(Some(s)) => s,
                Some(None) => return "error: unknown signal\n".into(),
            };
            if matches!(sig, Signal::SIGKILL | Signal::SIGTERM | Signal::SIGINT) {
                mark_stopped(shared);
            }
            signal_init(shared, sig);
            "ok\n".into()
        }
        _ => "error: expected `stop SECS` or `kill SIGNAL`\n".into(),
    }
}

fn mark_stopped(shared: &Shared) {
    shared.stopped.store(true, Ordering::SeqCst);
    shared.update(|s| s.stopped = true);
}

fn signal_init(shared: &Shared, sig: Signal) {
    let pid = shared.init.load(Ordering::SeqCst);
    if pid > 0 {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

/// Parses `KILL`, `SIGKILL` or `9`.
pub fn parse_signal(text: &str) -> Option<Signal> {
    if let Ok(n) = text.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    name.parse().ok()
}

/// Deletes libcontainer's state for the container (and with it the cgroups).
fn delete_container(dir: &ContainerDir, meta: &ContainerMeta) {
    let root = dir.youki().join(&meta.id);
    match libcontainer::container::Container::load(root.clone()) {
        Ok(mut c) => {
            if let Err(e) = c.delete(true) {
                tracing::warn!(?e, "libcontainer could not delete the container; removing what is left");
            }
        }
        Err(e) => tracing::debug!(?e, "no libcontainer state to delete"),
    }
    let _ = std::fs::remove_dir_all(&root);
    crate::cgroup::remove(&meta.cgroups_path);
}

/// Undoes the mount and the network namespace; idempotent.
pub fn teardown(dir: &ContainerDir, meta: &ContainerMeta) {
    if is_mounted(&dir.rootfs()) {
        let _ = crate::layers::unmount(&dir.rootfs());
    }
    if let Some(net) = &meta.net {
        crate::net::teardown(net);
    }
}

/// Whether `path` is a mount point (per /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let target = path.to_string_lossy();
    text.lines().any(|l| l.split(' ').nth(4).is_some_and(|m| m == target))
}
