//! `shoal __exec DIR -- CMD...`: runs a command inside a running container.
//!
//! The agent starts this as a fresh process (libcontainer's tenant builder forks with a raw
//! `clone3` and changes directory, so it must not run in the agent) with the client's stdin,
//! stdout and stderr as pipes. It joins the container's namespaces and cgroups through
//! libcontainer, waits for the command and exits with its exit code (128+signal if killed).
//!
//! The command is this process's child (it is a subreaper), so [`kill_tree`] on this
//! process's pid reaches the command and everything it started inside the container: the
//! agent uses it when a health check times out or the client goes away.

use crate::state::ContainerDir;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use std::path::Path;

/// Runs `args` in the container of `dir`; returns the exit code for this process.
pub fn run(dir: &Path, args: Vec<String>) -> i32 {
    let dir = ContainerDir(dir.to_path_buf());
    let meta = match dir.read_meta() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: cannot read the container's metadata: {e}");
            return 126;
        }
    };
    if args.is_empty() {
        eprintln!("error: no command given");
        return 126;
    }
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let builder = libcontainer::container::builder::ContainerBuilder::new(
        meta.id.clone(),
        libcontainer::syscall::syscall::SyscallType::default(),
    )
    .with_root_path(dir.youki());
    let pid = match builder.map(|b| b.as_tenant().with_container_args(args.clone()).with_detach(true).build()) {
        Ok(Ok(pid)) => pid,
        Ok(Err(e)) | Err(e) => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("error: cannot run {:?} in container {}: {text}", args[0], meta.name);
            return if text.to_lowercase().contains("executable") || text.contains("No such file") { 127 } else { 126 };
        }
    };
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(p, code)) if p == pid => return code,
            Ok(WaitStatus::Signaled(p, sig, _)) if p == pid => return 128 + sig as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 255,
        }
    }
}

/// `pid` and all its descendants (from /proc/<pid>/task/*/children), parents first.
fn process_tree(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() && out.len() < 100_000 {
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", out[i])) {
            for t in tasks.flatten() {
                let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                out.extend(children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
            }
        }
        i += 1;
    }
    out
}

/// SIGKILLs `pid` and every descendant, children before the parent is gone (an orphan would
/// be reparented out of reach), in two passes for anything forked during the first.
pub fn kill_tree(pid: u32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    for _ in 0..2 {
        for p in process_tree(pid).into_iter().rev() {
            let _ = nix::sys::signal::kill(Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL);
        }
    }
}
