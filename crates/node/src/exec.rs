//! `exec` as one session: a command run inside a running container, its stdin, its output as
//! events, its exit code. The exec endpoint and the services' health checks both use it.
//!
//! The command runs under `shoal __exec` (libcontainer's tenant builder in a fresh process; it
//! is the command's subreaper). A session that ends before the command does — the client went
//! away, a health check timed out — kills the helper's whole process tree, so nothing an
//! abandoned exec started keeps running in the container.

use crate::NodeError;
use shoal_types::{ExecEvent, LogEntry};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use tokio::sync::mpsc;

/// A command running inside a container.
pub struct ExecSession {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    /// The command has been waited for: nothing left to kill.
    reaped: bool,
}

impl ExecSession {
    /// Starts `cmd` (the runtime's `shoal __exec` command) with piped stdio.
    pub(crate) fn spawn(cmd: std::process::Command) -> Result<ExecSession, NodeError> {
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(NodeError::ExecSpawn)?;
        Ok(ExecSession {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            child,
            reaped: false,
        })
    }

    /// Copies `input` to the command's stdin (in a task), then closes it.
    pub fn feed(&mut self, mut input: impl AsyncRead + Send + Unpin + 'static) {
        if let Some(mut stdin) = self.stdin.take() {
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut input, &mut stdin).await;
            });
        }
    }

    /// The output as it comes, then the exit code. If the receiver is dropped first, the
    /// command and everything it started are killed.
    pub fn events(mut self) -> mpsc::Receiver<ExecEvent> {
        let (tx, rx) = mpsc::channel::<ExecEvent>(256);
        let out = self.stdout.take().map(|r| tokio::spawn(pump(r, "stdout", tx.clone())));
        let err = self.stderr.take().map(|r| tokio::spawn(pump(r, "stderr", tx.clone())));
        tokio::spawn(async move {
            // The output first (so the exit comes after it), then the exit status; watching all
            // along for the client going away, however quiet the command is.
            let status = tokio::select! {
                s = async {
                    for pump in [out, err].into_iter().flatten() {
                        let _ = pump.await;
                    }
                    self.child.wait().await
                } => s,
                () = tx.closed() => return, // `self` drops here: the tree is killed
            };
            self.mark_reaped();
            let code = match status {
                Ok(st) => {
                    st.code().unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&st).unwrap_or(0))
                }
                Err(_) => 255,
            };
            let _ = tx.send(ExecEvent::Exit { code }).await;
        });
        rx
    }

    /// The command has been waited for: its pid may be reused, so it must not be killed.
    fn mark_reaped(&mut self) {
        self.reaped = true;
    }

    /// Runs to the end with no input, throwing the output away; the exit code, or `None` if it
    /// did not end within `timeout` (it is killed then).
    pub async fn wait(mut self, timeout: Duration) -> Option<i32> {
        drop(self.stdin.take());
        let (out, err) = (self.stdout.take(), self.stderr.take());
        let run = async {
            let sink = |r: Option<Box<dyn AsyncRead + Send + Unpin>>| async move {
                if let Some(mut r) = r {
                    let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
                }
            };
            let boxed = |r: Option<ChildStdout>| r.map(|r| Box::new(r) as Box<dyn AsyncRead + Send + Unpin>);
            let boxed_err = |r: Option<ChildStderr>| r.map(|r| Box::new(r) as Box<dyn AsyncRead + Send + Unpin>);
            tokio::join!(sink(boxed(out)), sink(boxed_err(err)));
            self.child.wait().await
        };
        let status = tokio::time::timeout(timeout, run).await.ok()?.ok()?;
        self.mark_reaped();
        Some(status.code().unwrap_or(255))
    }
}

impl Drop for ExecSession {
    fn drop(&mut self) {
        if !self.reaped
            && let Some(pid) = self.child.id()
        {
            // Not reaped, so the pid is still the helper's.
            shoal_runtime::exec::kill_tree(pid);
        }
    }
}

async fn pump(mut r: impl AsyncRead + Unpin, stream: &'static str, tx: mpsc::Sender<ExecEvent>) {
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let e = LogEntry { stream: stream.into(), text, time_unix_nanos: 0 };
                if tx.send(ExecEvent::Output(e)).await.is_err() {
                    break;
                }
            }
        }
    }
}
