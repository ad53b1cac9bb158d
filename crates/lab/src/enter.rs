//! `shoal __enter`: join a peer's cgroups and network namespace, then exec a command.
//!
//! This runs in a fresh, single-threaded process before any runtime starts: `setns` changes
//! only the calling thread, and `exec` keeps that thread's namespaces. It uses `setns` rather
//! than `ip netns exec`, which remounts /sys and hides this machine's cgroup mounts from the
//! agent.

use nix::sched::{CloneFlags, setns};
use std::ffi::CString;
use std::path::PathBuf;

/// Why entering failed (printed by the caller, which then exits non-zero).
#[derive(Debug, thiserror::Error)]
pub enum EnterError {
    #[error("cannot open network namespace {path}: {source}")]
    OpenNetns { path: PathBuf, source: std::io::Error },
    #[error("cannot enter network namespace {path}: {source}")]
    Setns { path: PathBuf, source: nix::Error },
    #[error("cannot join cgroup {path}: {source}")]
    Cgroup { path: PathBuf, source: std::io::Error },
    #[error("no command to run")]
    NoCommand,
    #[error("cannot run {cmd}: {source}")]
    Exec { cmd: String, source: nix::Error },
    #[error("argument contains a NUL byte")]
    Nul,
}

/// Joins `cgroups`, enters `netns`, then replaces this process with `cmd`. Returns only on
/// failure.
pub fn enter_and_exec(netns: &PathBuf, cgroups: &[PathBuf], cmd: &[String]) -> EnterError {
    match try_enter(netns, cgroups, cmd) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn try_enter(netns: &PathBuf, cgroups: &[PathBuf], cmd: &[String]) -> Result<std::convert::Infallible, EnterError> {
    let pid = std::process::id().to_string();
    for cg in cgroups {
        let procs = cg.join("cgroup.procs");
        std::fs::write(&procs, &pid).map_err(|source| EnterError::Cgroup { path: cg.clone(), source })?;
    }
    let f = std::fs::File::open(netns).map_err(|source| EnterError::OpenNetns { path: netns.clone(), source })?;
    setns(&f, CloneFlags::CLONE_NEWNET).map_err(|source| EnterError::Setns { path: netns.clone(), source })?;
    let prog = cmd.first().ok_or(EnterError::NoCommand)?;
    let args: Vec<CString> =
        cmd.iter().map(|a| CString::new(a.as_bytes()).map_err(|_| EnterError::Nul)).collect::<Result<_, _>>()?;
    let prog_c = CString::new(prog.as_bytes()).map_err(|_| EnterError::Nul)?;
    nix::unistd::execvp(&prog_c, &args).map_err(|source| EnterError::Exec { cmd: prog.clone(), source })
}
