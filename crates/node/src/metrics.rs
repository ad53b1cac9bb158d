//! `GET /metrics` on `--metrics-listen` (default 127.0.0.1:9464): Prometheus metrics.
//!
//! Counters come from [`shoal_metrics::get`], fed by the subsystems as things happen; the
//! state gauges are read here at scrape time. The listener serves nothing else, read-only, on
//! loopback by default (as node_exporter does); a port already taken is a warning.

use crate::node::Node;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use shoal_metrics::Snapshot;
use shoal_types::PeerState;
use std::collections::BTreeMap;

impl Node {
    /// Binds the metrics listener, if configured.
    pub(crate) async fn start_metrics(&self) {
        let Some(addr) = self.config().metrics_listen else { return };
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(%addr, err = %e, "the metrics endpoint cannot listen (another agent on this port?); choose another with --metrics-listen ADDR, or --metrics-listen off");
                return;
            }
        };
        let node = self.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move |headers: HeaderMap| {
                let node = node.clone();
                async move { node.metrics_page(&headers).await }
            }),
        );
        let cancel = self.cancel().clone();
        self.tasks().spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::warn!(err = %e, "the metrics endpoint stopped");
            }
        });
    }

    async fn metrics_page(&self, headers: &HeaderMap) -> axum::response::Response {
        let openmetrics = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("application/openmetrics-text"));
        let body = shoal_metrics::get().encode(&self.metrics_snapshot().await, openmetrics);
        let kind = if openmetrics { shoal_metrics::OPENMETRICS_FORMAT } else { shoal_metrics::TEXT_FORMAT };
        ([(header::CONTENT_TYPE, kind)], body).into_response()
    }

    /// The state gauges, read now.
    pub async fn metrics_snapshot(&self) -> Snapshot {
        let mut peers: BTreeMap<String, i64> =
            ["alive", "suspect", "dead", "left"].into_iter().map(|s| (s.to_string(), 0)).collect();
        let listed = self.peers(None).await.unwrap_or_default();
        for p in &listed {
            *peers.entry(p.state.to_string()).or_default() += 1;
        }
        let alive = listed.iter().filter(|p| p.state == PeerState::Alive).count();
        let tuning = &self.config().tuning;
        let suspicion = tuning.suspicion(alive);
        let (mut containers, mut oom_killed) = (BTreeMap::<String, i64>::new(), 0);
        for c in self.containers(true).await.unwrap_or_default() {
            *containers.entry(c.state.to_string()).or_default() += 1;
            oom_killed += i64::from(c.reason.as_deref() == Some("OOMKilled"));
        }
        let services = self
            .service_list()
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|s| (s.spec.name, i64::from(s.desired), i64::from(s.running)))
            .collect();
        let status = self.overlay().status().await.ok();
        Snapshot {
            peers: peers.into_iter().collect(),
            dropped_messages: status.map_or(0, |s| s.dropped_messages),
            // A silent peer: a failed probe (one period plus the indirect round), then suspicion.
            detection_seconds: (tuning.probe_period * 2 + suspicion).as_secs_f64(),
            suspicion_seconds: suspicion.as_secs_f64(),
            store_bytes: self.blobs().store_usage(),
            store_quota_bytes: self.config().store_quota.unwrap_or(0),
            transfers_running: self.blobs().running().len() as i64,
            containers: containers.into_iter().collect(),
            oom_killed,
            services,
            resident_memory_bytes: resident_memory(),
            open_fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64),
            start_time_seconds: self.started_at_unix(),
        }
    }
}

/// VmRSS from /proc/self/status, in bytes.
fn resident_memory() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024)
        })
        .unwrap_or(0)
}
