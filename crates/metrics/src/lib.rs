//! The agent's Prometheus metrics.
//!
//! Counters and histograms that the subsystems feed as things happen live in one
//! process-wide [`Metrics`] ([`get`]); a subsystem needs no handle (one agent per process, as
//! with the event log). Gauges that describe state (peers by state, containers running, store
//! usage, replicas desired and running, memory, open files) are not kept up to date here: the
//! agent reads them at scrape time and passes them to [`Metrics::encode`] as [`Snapshot`].
//!
//! Names and units follow Prometheus' conventions (`shoal_…_total`, `_seconds`, `_bytes`).
//! The exposition is OpenMetrics when the scraper asks for it (Prometheus does), else the
//! classic text format 0.0.4 that `promtool check metrics` and older tools read.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::sync::LazyLock;

/// A peer, as a label (its id).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: String,
}

/// An event kind, as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// An API request, as labels: the route template (never the raw path: bounded), the method,
/// the status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: String,
}

fn latency() -> Histogram {
    // 0.5 ms … 32 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

/// What the subsystems count.
#[derive(Debug)]
pub struct Metrics {
    /// SWIM packets sent (probes, acks, gossip).
    pub swim_packets_sent: Counter,
    /// SWIM packets received.
    pub swim_packets_received: Counter,
    /// Content bytes sent to each peer ([`Metrics::content_sent_to`]).
    pub content_sent: Family<PeerLabel, Counter>,
    /// Content bytes received from each peer, verified pieces ([`Metrics::content_received_from`]).
    pub content_received: Family<PeerLabel, Counter>,
    /// The peers that have series of their own (at most [`MAX_PEER_SERIES`]).
    peer_series: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Pieces that matched their hash.
    pub pieces_verified: Counter,
    /// Pieces that did not (the sender is dropped).
    pub pieces_rejected: Counter,
    /// Downloads completed.
    pub transfers_completed: Counter,
    /// Replicas this peer started in place of a peer that died or left (failovers).
    pub replica_failovers: Counter,
    /// Containers started (and how long from the request to running).
    pub container_starts: Counter,
    pub container_start_seconds: Histogram,
    /// Containers that failed to start.
    pub container_start_failures: Counter,
    /// Events recorded by this peer, by kind (peer.dead, replica.started, rollout.done …).
    pub events: Family<KindLabel, Counter>,
    /// API requests by route, method and status, and their latency.
    pub api_request_seconds: Family<RequestLabels, Histogram>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    swim_packets_sent: Counter::default(),
    swim_packets_received: Counter::default(),
    content_sent: Family::default(),
    content_received: Family::default(),
    peer_series: std::sync::Mutex::new(std::collections::HashSet::new()),
    pieces_verified: Counter::default(),
    pieces_rejected: Counter::default(),
    transfers_completed: Counter::default(),
    replica_failovers: Counter::default(),
    container_starts: Counter::default(),
    container_start_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
    container_start_failures: Counter::default(),
    events: Family::default(),
    api_request_seconds: Family::new_with_constructor(latency),
});

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

/// Most peers with per-peer series of their own; the bytes of any further peer count under
/// `peer="other"`. A key holder can make peer identities at will: the series stay bounded.
pub const MAX_PEER_SERIES: usize = 1024;

/// State read at scrape time.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Peers by state (`alive`, `suspect`, `dead`, `left`), this one included.
    pub peers: Vec<(String, i64)>,
    /// Messages from peers dropped as malformed, oversized or forged.
    pub dropped_messages: u64,
    /// How long the failure detector takes to declare a silent peer dead, as configured.
    pub detection_seconds: f64,
    /// How long a peer stays suspect before it is declared dead.
    pub suspicion_seconds: f64,
    /// Bytes in the content store, and its quota (0: none).
    pub store_bytes: u64,
    pub store_quota_bytes: u64,
    /// Downloads in progress.
    pub transfers_running: i64,
    /// Containers on this peer by state (`running`, `exited`, …).
    pub containers: Vec<(String, i64)>,
    /// Containers on this peer whose last run the kernel's OOM killer ended.
    pub oom_killed: i64,
    /// Per service: replicas desired and running (cluster-wide, as this peer sees them).
    pub services: Vec<(String, i64, i64)>,
    /// This process's resident memory, open file descriptors, and start time.
    pub resident_memory_bytes: u64,
    pub open_fds: u64,
    pub start_time_seconds: f64,
}

/// The content type of the classic text format.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The content type of OpenMetrics.
pub const OPENMETRICS_FORMAT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

impl Metrics {
    /// Counts `bytes` of content sent to `peer`.
    pub fn content_sent_to(&self, peer: &str, bytes: u64) {
        self.content_sent.get_or_create(&self.peer_label(peer)).inc_by(bytes);
    }

    /// Counts `bytes` of verified content received from `peer`.
    pub fn content_received_from(&self, peer: &str, bytes: u64) {
        self.content_received.get_or_create(&self.peer_label(peer)).inc_by(bytes);
    }

    /// `peer`'s label: its own while fewer than [`MAX_PEER_SERIES`] peers have one, else `other`.
    fn peer_label(&self, peer: &str) -> PeerLabel {
        let mut seen = self.peer_series.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(peer) || (seen.len() < MAX_PEER_SERIES && seen.insert(peer.to_string())) {
            PeerLabel { peer: peer.to_string() }
        } else {
            PeerLabel { peer: "other".to_string() }
        }
    }

    /// Every metric, the counters' current values and `snap`'s gauges, in OpenMetrics (when
    /// `openmetrics`) or the classic text format.
    pub fn encode(&self, snap: &Snapshot, openmetrics: bool) -> String {
        let mut r = Registry::with_prefix("shoal");
        let m = self;
        r.register("swim_packets_sent", "SWIM packets (probes, acks, gossip) sent", m.swim_packets_sent.clone());
        r.register("swim_packets_received", "SWIM packets received", m.swim_packets_received.clone());
        r.register_with_unit("content_sent", "Content bytes sent to each peer", Unit::Bytes, m.content_sent.clone());
        r.register_with_unit(
            "content_received",
            "Content bytes received from each peer, in verified pieces",
            Unit::Bytes,
            m.content_received.clone(),
        );
        r.register("pieces_verified", "Pieces received that matched their hash", m.pieces_verified.clone());
        r.register("pieces_rejected", "Pieces received that did not match their hash", m.pieces_rejected.clone());
        r.register("transfers_completed", "Content downloads completed", m.transfers_completed.clone());
        r.register("container_starts", "Containers started", m.container_starts.clone());
        r.register_with_unit(
            "container_start",
            "Time from a start request to the container running",
            Unit::Seconds,
            m.container_start_seconds.clone(),
        );
        r.register("container_start_failures", "Containers that failed to start", m.container_start_failures.clone());
        r.register(
            "replica_failovers",
            "Replicas this peer started in place of a peer that died or left",
            m.replica_failovers.clone(),
        );
        r.register("events", "Events this peer recorded, by kind", m.events.clone());
        r.register_with_unit(
            "api_request",
            "API requests by route, method and status, and their latency",
            Unit::Seconds,
            m.api_request_seconds.clone(),
        );

        let peers = Family::<StateLabel, Gauge>::default();
        for (state, n) in &snap.peers {
            peers.get_or_create(&StateLabel { state: state.clone() }).set(*n);
        }
        r.register("peers", "Peers by state, as this peer sees them (itself included)", peers);
        r.register("dropped_messages", "Messages from peers dropped as malformed, oversized or forged", {
            let c: Counter = Counter::default();
            c.inc_by(snap.dropped_messages);
            c
        });
        r.register_with_unit(
            "failure_detection",
            "How long the failure detector takes to declare a silent peer dead (configured)",
            Unit::Seconds,
            float_gauge(snap.detection_seconds),
        );
        r.register_with_unit(
            "suspicion",
            "How long a peer stays suspect before it is declared dead (configured)",
            Unit::Seconds,
            float_gauge(snap.suspicion_seconds),
        );
        r.register_with_unit(
            "store_used",
            "Bytes in the content store",
            Unit::Bytes,
            int_gauge(snap.store_bytes as i64),
        );
        r.register_with_unit(
            "store_quota",
            "The content store's quota (0: none)",
            Unit::Bytes,
            int_gauge(snap.store_quota_bytes as i64),
        );
        r.register("transfers_running", "Content downloads in progress", int_gauge(snap.transfers_running));
        let containers = Family::<StateLabel, Gauge>::default();
        for (state, n) in &snap.containers {
            containers.get_or_create(&StateLabel { state: state.clone() }).set(*n);
        }
        r.register("containers", "Containers on this peer by state", containers);
        r.register(
            "containers_oom_killed",
            "Containers on this peer whose last run the kernel's OOM killer ended",
            int_gauge(snap.oom_killed),
        );
        let (desired, running) = (Family::<ServiceLabel, Gauge>::default(), Family::<ServiceLabel, Gauge>::default());
        for (name, d, n) in &snap.services {
            desired.get_or_create(&ServiceLabel { service: name.clone() }).set(*d);
            running.get_or_create(&ServiceLabel { service: name.clone() }).set(*n);
        }
        r.register("service_replicas_desired", "Replicas each service asks for", desired);
        r.register("service_replicas_running", "Replicas of each service running in the cluster", running);
        let mut process = Registry::default();
        process.register_with_unit(
            "process_resident_memory",
            "The agent's resident memory",
            Unit::Bytes,
            int_gauge(snap.resident_memory_bytes as i64),
        );
        process.register("process_open_fds", "The agent's open file descriptors", int_gauge(snap.open_fds as i64));
        process.register_with_unit(
            "process_start_time",
            "When the agent started, since the Unix epoch",
            Unit::Seconds,
            float_gauge(snap.start_time_seconds),
        );
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &r);
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &process);
        if openmetrics {
            out.push_str("# EOF\n");
            out
        } else {
            classic(&out)
        }
    }
}

fn int_gauge(v: i64) -> Gauge {
    let g: Gauge = Gauge::default();
    g.set(v);
    g
}

fn float_gauge(v: f64) -> Gauge<f64, std::sync::atomic::AtomicU64> {
    let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    g.set(v);
    g
}

/// OpenMetrics text → the classic format: a counter family's HELP and TYPE name its
/// `_total` samples, `# UNIT` lines go (the unit is in the name already).
fn classic(open: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for l in open.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.insert(name.to_string());
        }
    }
    let mut out = String::with_capacity(open.len());
    for l in open.lines() {
        if l.starts_with("# UNIT ") || l == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = l.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(l));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_grafana_dashboard_names_only_metrics_that_exist() {
        let snap = Snapshot {
            peers: vec![("alive".into(), 1)],
            containers: vec![("running".into(), 1)],
            services: vec![("web".into(), 1, 1)],
            ..Default::default()
        };
        let m = get();
        // Families with labels show only once they have a child.
        drop(m.events.get_or_create(&KindLabel { kind: "peer.dead".into() }));
        drop(m.content_sent.get_or_create(&PeerLabel { peer: "p".into() }));
        drop(m.content_received.get_or_create(&PeerLabel { peer: "p".into() }));
        drop(m.api_request_seconds.get_or_create(&RequestLabels {
            method: "GET".into(),
            route: "/v1/peers".into(),
            status: "200".into(),
        }));
        let text = m.encode(&snap, false);
        let dash = include_str!("../../../docs/grafana-dashboard.json");
        let mut names: Vec<&str> = Vec::new();
        for (i, _) in dash.match_indices("shoal_").chain(dash.match_indices("process_")) {
            let rest = &dash[i..];
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            names.push(&rest[..end]);
        }
        assert!(names.len() > 20, "{names:?}");
        for n in names {
            let family = n.strip_suffix("_bucket").unwrap_or(n);
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "the dashboard uses {n}, which /metrics does not have"
            );
        }
    }

    #[test]
    fn per_peer_series_are_bounded() {
        let m = get();
        for i in 0..MAX_PEER_SERIES + 10 {
            m.content_sent_to(&format!("bounded-{i}"), 1);
        }
        m.content_received_from("bounded-0", 5);
        let text = m.encode(&Snapshot::default(), false);
        // (Other tests share the process's metrics: count this test's peers only.)
        let series = text.lines().filter(|l| l.starts_with("shoal_content_sent_bytes_total{peer=\"bounded-")).count();
        assert!((MAX_PEER_SERIES - 10..=MAX_PEER_SERIES).contains(&series), "{series} series");
        assert!(text.contains("shoal_content_sent_bytes_total{peer=\"other\"}"), "later peers count as other");
        assert!(text.contains("shoal_content_received_bytes_total{peer=\"bounded-0\"} 5"));
    }

    #[test]
    fn both_formats_name_counters_with_total_and_carry_the_snapshot() {
        let m = get();
        m.pieces_verified.inc();
        m.content_sent.get_or_create(&PeerLabel { peer: "p1".into() }).inc_by(10);
        m.api_request_seconds
            .get_or_create(&RequestLabels { method: "GET".into(), route: "/v1/peers".into(), status: "200".into() })
            .observe(0.002);
        let snap = Snapshot {
            peers: vec![("alive".into(), 3), ("dead".into(), 1)],
            services: vec![("web".into(), 3, 2)],
            ..Default::default()
        };
        let text = m.encode(&snap, false);
        assert!(text.contains("# TYPE shoal_pieces_verified_total counter\n"), "{text}");
        assert!(text.contains("shoal_content_sent_bytes_total{peer=\"p1\"} 10"), "{text}");
        assert!(text.contains("shoal_peers{state=\"dead\"} 1"), "{text}");
        assert!(text.contains("shoal_service_replicas_running{service=\"web\"} 2"), "{text}");
        assert!(text.contains("process_open_fds 0"), "{text}");
        assert!(!text.contains("# UNIT") && !text.contains("# EOF"));
        let open = m.encode(&snap, true);
        assert!(open.contains("# TYPE shoal_pieces_verified counter\n") && open.ends_with("# EOF\n"));
    }
}
