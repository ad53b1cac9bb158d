//! `shoal __exec DIR -- CMD...`: runs a command inside a running container.
//!
//! The agent starts this as a fresh process (libcontainer's tenant builder forks with a raw
//! `clone3` and changes directory, so it must not run in the agent) with the client's stdin,
//! stdout and stderr as pipes. It joins the container's namespaces and cgroups through
//! libcontainer, waits for the command and exits with its exit code (128+signal if killed).

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
