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
    // libcontainer's tenant builder makes the command's process from scratch (root, all of the
    // spec's capabilities, no seccomp): give it the container's own process with our
    // arguments, and an executor that loads the container's seccomp filter last thing before
    // exec (after the user and capabilities are set, under no_new_privs).
    let spec = match oci_spec::runtime::Spec::load(dir.bundle().join("config.json")) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot read the container's spec: {e}");
            return 126;
        }
    };
    let process_file = dir.path().join(format!("exec-{}.json", std::process::id()));
    if let Err(e) = write_process(&spec, &args, &process_file) {
        eprintln!("error: cannot prepare the command's process: {e}");
        return 126;
    }
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    let builder = libcontainer::container::builder::ContainerBuilder::new(
        meta.id.clone(),
        libcontainer::syscall::syscall::SyscallType::default(),
    )
    .with_root_path(dir.youki())
    .map(|b| b.with_executor(SeccompExecutor { profile: seccomp }));
    let built = builder.map(|b| b.as_tenant().with_process(Some(&process_file)).with_detach(true).build());
    let _ = std::fs::remove_file(&process_file);
    let pid = match built {
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

/// Writes the process an exec runs: the container's (user, capabilities, no_new_privs, rlimits,
/// environment, working directory) with `args`.
fn write_process(spec: &oci_spec::runtime::Spec, args: &[String], to: &Path) -> std::io::Result<()> {
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(args.to_vec())).set_terminal(Some(false)).set_console_size(None);
    let text = serde_json::to_vec(&process).map_err(std::io::Error::other)?;
    std::fs::write(to, text)
}

/// Runs the command as libcontainer's default executor does, after loading the container's
/// seccomp filter (which the tenant builder leaves out of the command's spec).
#[derive(Clone)]
struct SeccompExecutor {
    profile: Option<oci_spec::runtime::LinuxSeccomp>,
}

impl libcontainer::workload::Executor for SeccompExecutor {
    fn exec(&self, spec: &oci_spec::runtime::Spec) -> Result<(), libcontainer::workload::ExecutorError> {
        if let Some(profile) = &self.profile {
            libcontainer::seccomp::initialize_seccomp(profile).map_err(|e| {
                libcontainer::workload::ExecutorError::Other(format!("cannot load the seccomp filter: {e}"))
            })?;
        }
        libcontainer::workload::default::DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &oci_spec::runtime::Spec) -> Result<(), libcontainer::workload::ExecutorValidationError> {
        libcontainer::workload::default::DefaultExecutor {}.validate(spec)
    }

    fn setup_envs(
        &self,
        envs: std::collections::HashMap<String, String>,
    ) -> Result<(), libcontainer::workload::ExecutorSetEnvsError> {
        libcontainer::workload::default::DefaultExecutor {}.setup_envs(envs)
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
