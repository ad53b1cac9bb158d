//! Streams of a container's life for the API: its log (the tail, then new lines as they are
//! written) and an attached `run` (started, output, exited).
//!
//! Nothing here polls: new lines are announced by inotify on the log directory
//! ([`shoal_runtime::logs::LogWatch`]), the end of a run by the runtime's exit events
//! ([`Node::exits`]). Each stream is a task that ends when the container's run is over or when
//! the receiver is dropped (the client went away), whichever comes first.

use crate::containers::blocking;
use crate::{Node, NodeError};
use shoal_runtime::logs::{LogFollower, LogLine, LogWatch, read_tail};
use shoal_types::{AttachEvent, ContainerSpec, LogEntry};
use std::time::Duration;
use tokio::sync::mpsc;

/// Lines queued for a slow reader.
const QUEUE: usize = 256;

impl Node {
    /// The container's output: the last `tail` lines (all without it), then, with `follow`,
    /// new lines until its run is over.
    pub async fn logs(
        &self,
        key: &str,
        tail: Option<usize>,
        follow: bool,
    ) -> Result<mpsc::Receiver<LogEntry>, NodeError> {
        let (id, dir) = self.container_logs(key).await?;
        // Watch and follow from the end first, then read what is there: a line written in
        // between may appear twice, but none is lost.
        let watch = LogWatch::new(&dir);
        let follower = LogFollower::from_end(&dir);
        let d2 = dir.clone();
        let past = blocking(move || read_tail(&d2, tail)).await?.unwrap_or_default();
        let (tx, rx) = mpsc::channel::<LogEntry>(QUEUE);
        let node = self.clone();
        tokio::spawn(async move {
            for l in past {
                if tx.send(l.into()).await.is_err() {
                    return;
                }
            }
            if follow {
                node.follow(&id, follower, watch, LogEntry::from, &tx).await;
            }
        });
        Ok(rx)
    }

    /// Creates and starts a container and streams it: `Started`, each line of output as the
    /// shim logs it, then `Exited` (after the container is gone, for `--rm`).
    pub async fn run_attached(&self, spec: ContainerSpec) -> Result<mpsc::Receiver<AttachEvent>, NodeError> {
        let (info, guard) = self.run_container_attached(spec, true).await?;
        let (_, dir) = self.container_logs(&info.id).await?;
        let watch = LogWatch::new(&dir);
        let (tx, rx) = mpsc::channel::<AttachEvent>(QUEUE);
        let node = self.clone();
        tokio::spawn(async move {
            let _guard = guard; // dropped last: an auto-remove container goes once we are done
            let id = info.id.clone();
            if tx.send(AttachEvent::Started { container: Box::new(info) }).await.is_err() {
                return;
            }
            let follower = LogFollower::from_start(&dir);
            if !node.follow(&id, follower, watch, |l| AttachEvent::Output(l.into()), &tx).await {
                return;
            }
            let end = match node.container(&id).await {
                Ok(c) => {
                    // Like `docker run --rm`: answer once the container is gone, not just ended.
                    if c.spec.auto_remove {
                        let _ = node.wait_shim_gone(&id, Duration::from_secs(10)).await;
                        if let Err(e) = node.remove_container(&id, true).await {
                            tracing::debug!(err = %e, "auto-remove after an attached run");
                        }
                    }
                    AttachEvent::Exited { container: Box::new(c) }
                }
                Err(e) => AttachEvent::Error { message: e.to_string() },
            };
            let _ = tx.send(end).await;
        });
        Ok(rx)
    }

    /// Sends what the container logs until its run is over; false when the receiver went away.
    async fn follow<T>(
        &self,
        id: &str,
        mut follower: LogFollower,
        mut watch: LogWatch,
        map: impl Fn(LogLine) -> T,
        tx: &mpsc::Sender<T>,
    ) -> bool {
        let mut exits = self.exits();
        loop {
            exits.borrow_and_update();
            // Whether it ended before reading: lines written before the end are read below.
            let finished = self.container_finished(id).await.unwrap_or(true);
            for l in follower.poll() {
                if tx.send(map(l)).await.is_err() {
                    return false;
                }
            }
            if finished {
                return true;
            }
            tokio::select! {
                () = watch.changed() => {}
                _ = exits.changed() => {}
                () = tx.closed() => return false,
            }
        }
    }
}
