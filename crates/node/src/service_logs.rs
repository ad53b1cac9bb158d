//! `service logs`: the output of every replica of a service, wherever it runs, merged by time.
//!
//! Local replicas are read from the runtime's log files; replicas on other peers are asked for
//! over `/shoal/state/1` (`Logs` → `LogLines`, at most [`MAX_LINES`] lines and a few MiB per
//! answer). Following polls every second for lines newer than the last one seen per container.

use crate::services::StateMsg;
use crate::{Node, NodeError};
use shoal_types::{LogEntry, ReplicaInfo, ServiceLogLine};

/// Most lines one answer carries.
const MAX_LINES: u32 = 5000;
/// Most bytes of text one answer carries (the reader accepts 4 MiB).
const MAX_ANSWER_BYTES: usize = 2 << 20;

impl Node {
    /// Lines of a local container newer than `since`, at most the last `tail`.
    pub(crate) async fn local_log_lines(&self, container: &str, since: u64, tail: u32) -> Vec<(String, u64, String)> {
        let Ok((_, dir)) = self.container_logs(container).await else { return Vec::new() };
        let tail = tail.min(MAX_LINES) as usize;
        tokio::task::spawn_blocking(move || {
            let all = shoal_runtime::logs::read_tail(&dir, None).unwrap_or_default();
            let newer: Vec<_> = all.into_iter().filter(|l| l.t > since).collect();
            let skip = newer.len().saturating_sub(tail);
            let mut out: Vec<(String, u64, String)> = newer
                .into_iter()
                .skip(skip)
                .map(|l| {
                    let e: LogEntry = l.into();
                    (e.stream, e.time_unix_nanos, e.text)
                })
                .collect();
            // Keep the answer well under the reader's bound: drop the oldest lines first.
            let mut bytes: usize = out.iter().map(|l| l.2.len() + 32).sum();
            let mut drop_front = 0;
            while bytes > MAX_ANSWER_BYTES && drop_front < out.len() {
                bytes -= out[drop_front].2.len() + 32;
                drop_front += 1;
            }
            out.drain(..drop_front);
            out
        })
        .await
        .unwrap_or_default()
    }

    async fn replica_lines(&self, r: &ReplicaInfo, since: u64, tail: u32) -> Vec<ServiceLogLine> {
        let me = self.overlay().peer_id().to_string();
        let lines = if r.peer == me {
            self.local_log_lines(&r.container, since, tail).await
        } else {
            self.remote_log_lines(r, since, tail).await.unwrap_or_default()
        };
        lines
            .into_iter()
            .map(|(stream, t, text)| ServiceLogLine {
                replica: r.name(),
                peer_name: r.peer_name.clone(),
                container: r.container.clone(),
                entry: LogEntry { stream, text, time_unix_nanos: t },
            })
            .collect()
    }

    async fn remote_log_lines(
        &self,
        r: &ReplicaInfo,
        since: u64,
        tail: u32,
    ) -> Result<Vec<(String, u64, String)>, String> {
        let peer: shoal_overlay::libp2p::PeerId = r.peer.parse().map_err(|_| "bad peer id".to_string())?;
        let ask = StateMsg::Logs { container: r.container.clone(), since_nanos: since, tail };
        match self.ask_state(peer, &ask).await? {
            StateMsg::LogLines(l) => Ok(l),
            _ => Err("unexpected answer".into()),
        }
    }

    /// Lines of every replica of `service` newer than the per-container marks in `since`
    /// (updated), merged by time.
    pub async fn service_logs(
        &self,
        service: &str,
        tail: u32,
        since: &mut std::collections::BTreeMap<String, u64>,
    ) -> Result<Vec<ServiceLogLine>, NodeError> {
        let replicas: Vec<ReplicaInfo> =
            self.replicas(Some(service)).await?.into_iter().filter(|r| !r.container.is_empty()).collect();
        let fetches = replicas.iter().map(|r| {
            let from = since.get(&r.container).copied().unwrap_or(0);
            async move { self.replica_lines(r, from, tail).await }
        });
        let mut lines: Vec<ServiceLogLine> = futures::future::join_all(fetches).await.into_iter().flatten().collect();
        for l in &lines {
            let mark = since.entry(l.container.clone()).or_default();
            *mark = (*mark).max(l.entry.time_unix_nanos);
        }
        lines.sort_by_key(|l| l.entry.time_unix_nanos);
        Ok(lines)
    }
}
