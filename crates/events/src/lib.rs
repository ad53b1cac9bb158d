//! The cluster's event log.
//!
//! Each peer records what it observes (a peer dying, a replica starting, a rollout step, an
//! image pulled, a transfer done) with a hybrid-logical-clock time, in a bounded on-disk log
//! that survives restarts. There is no central store: `shoal events` asks every live peer for
//! what it saw and merges the lists here ([`merge`]): ordered by time, one entry per fact
//! however many peers saw it (their names in `seen_by`).
//!
//! Events come from the agent's own log lines: a `tracing` event with an `ev` field (`info!(ev
//! = "peer.dead", %peer, "peer dead")`) is also recorded here, its other fields kept, by the
//! [`layer`] installed beside the log formatter. So the log and the event stream cannot
//! disagree, and a subsystem needs no handle to record an event.

use shoal_types::ClusterEvent;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

/// A log file is rotated past this size; one older file is kept: at most twice this on disk.
const MAX_FILE_BYTES: u64 = 2 << 20;
/// Events kept in memory and answered from (the newest).
pub const MAX_RECENT: usize = 10_000;
/// A remote clock further ahead than this is not followed (a peer with a wrong clock).
const MAX_DRIFT_MS: u64 = 60_000;
/// Two sightings of the same fact this close together are one event.
const SAME_FACT_WITHIN_MS: u64 = 60_000;
/// Largest field value kept (a long error message is cut).
const MAX_VALUE: usize = 512;
/// Most fields kept per event.
const MAX_FIELDS: usize = 16;

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A hybrid logical clock: the wall clock, but never behind a time already given out or
/// seen from a peer (within [`MAX_DRIFT_MS`]), with a counter for events in the same ms.
#[derive(Debug, Default)]
pub struct Hlc {
    last: Mutex<(u64, u32)>,
}

impl Hlc {
    /// The time of a new local event.
    pub fn now(&self) -> (u64, u32) {
        self.tick(wall_ms())
    }

    fn tick(&self, wall: u64) -> (u64, u32) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        *last = if wall > last.0 { (wall, 0) } else { (last.0, last.1.saturating_add(1)) };
        *last
    }

    /// Takes in a time seen from a peer, so later local events order after it.
    pub fn observe(&self, at: (u64, u32)) {
        self.observe_at(at, wall_ms());
    }

    fn observe_at(&self, at: (u64, u32), wall: u64) {
        if at.0 > wall.saturating_add(MAX_DRIFT_MS) {
            return;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if at > *last {
            *last = at;
        }
    }
}

/// This peer's event log: the newest events in memory, all of them (bounded) on disk.
#[derive(Debug)]
pub struct EventLog {
    dir: PathBuf,
    name: String,
    hlc: Hlc,
    inner: Mutex<Inner>,
    tx: broadcast::Sender<ClusterEvent>,
}

#[derive(Debug)]
struct Inner {
    file: Option<File>,
    size: u64,
    recent: VecDeque<ClusterEvent>,
}

impl EventLog {
    /// Opens (or starts) the log in `dir`, reading back what it holds; `name` is this peer's.
    /// A torn last line (a crash mid-write) is skipped.
    pub fn open(dir: &Path, name: &str) -> std::io::Result<Arc<EventLog>> {
        std::fs::create_dir_all(dir)?;
        let mut recent = VecDeque::new();
        for f in [dir.join("events.jsonl.1"), dir.join("events.jsonl")] {
            let Ok(file) = File::open(&f) else { continue };
            for line in BufReader::new(file).lines().map_while(Result::ok) {
                if let Ok(e) = serde_json::from_str::<ClusterEvent>(&line) {
                    if recent.len() == MAX_RECENT {
                        recent.pop_front();
                    }
                    recent.push_back(e);
                }
            }
        }
        let path = dir.join("events.jsonl");
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        let mut size = file.metadata()?.len();
        // A crash mid-write left a torn last line: end it, so the next event starts clean.
        if size > 0 && std::fs::read(&path)?.last() != Some(&b'\n') {
            file.write_all(b"\n")?;
            size += 1;
        }
        let hlc = Hlc::default();
        if let Some(e) = recent.back() {
            hlc.observe_at((e.at_ms, e.seq), u64::MAX - MAX_DRIFT_MS);
        }
        let (tx, _) = broadcast::channel(1024);
        Ok(Arc::new(EventLog {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            hlc,
            inner: Mutex::new(Inner { file: Some(file), size, recent }),
            tx,
        }))
    }

    /// The clock events are stamped with.
    pub fn clock(&self) -> &Hlc {
        &self.hlc
    }

    /// Records an event this peer saw.
    pub fn record(&self, kind: &str, fields: BTreeMap<String, String>, message: &str) -> ClusterEvent {
        shoal_metrics::get().events.get_or_create(&shoal_metrics::KindLabel { kind: kind.to_string() }).inc();
        // Stamped under the lock, so the log is in clock order.
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (at_ms, seq) = self.hlc.now();
        let e = ClusterEvent {
            at_ms,
            seq,
            kind: kind.to_string(),
            fields,
            message: message.to_string(),
            seen_by: vec![self.name.clone()],
        };
        if let Err(err) = self.append(&mut inner, &e) {
            // The event stays in memory (a full disk is already loud elsewhere).
            let _ = writeln!(std::io::stderr(), "shoal: cannot write the event log in {}: {err}", self.dir.display());
        }
        if inner.recent.len() == MAX_RECENT {
            inner.recent.pop_front();
        }
        inner.recent.push_back(e.clone());
        drop(inner);
        let _ = self.tx.send(e.clone());
        e
    }

    fn append(&self, inner: &mut Inner, e: &ClusterEvent) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(e).map_err(std::io::Error::other)?;
        line.push(b'\n');
        if inner.size + line.len() as u64 > MAX_FILE_BYTES {
            inner.file = None;
            match std::fs::rename(self.dir.join("events.jsonl"), self.dir.join("events.jsonl.1")) {
                // Already rotated (an open that failed after the rename): start the new file.
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            inner.file = Some(OpenOptions::new().create(true).append(true).open(self.dir.join("events.jsonl"))?);
            inner.size = 0;
        }
        let file = match &mut inner.file {
            Some(f) => f,
            None => {
                inner.file.insert(OpenOptions::new().create(true).append(true).open(self.dir.join("events.jsonl"))?)
            }
        };
        // One write per line: a crash leaves at most one torn line, skipped on reading.
        file.write_all(&line)?;
        inner.size += line.len() as u64;
        Ok(())
    }

    /// This peer's events at or after `since_ms`, oldest first, at most `limit` (the newest).
    pub fn since(&self, since_ms: u64, limit: usize) -> Vec<ClusterEvent> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let from = inner.recent.partition_point(|e| e.at_ms < since_ms);
        let n = inner.recent.len() - from;
        inner.recent.iter().skip(from + n.saturating_sub(limit)).cloned().collect()
    }

    /// New events as they are recorded.
    pub fn subscribe(&self) -> broadcast::Receiver<ClusterEvent> {
        self.tx.subscribe()
    }
}

/// The log the [`layer`] records into (one agent per process).
static SINK: OnceLock<Arc<EventLog>> = OnceLock::new();

/// Makes `log` the one that log lines with an `ev` field are recorded in. The first call wins.
pub fn install(log: Arc<EventLog>) -> Arc<EventLog> {
    SINK.get_or_init(|| log).clone()
}

/// The installed log, if any.
pub fn installed() -> Option<Arc<EventLog>> {
    SINK.get().cloned()
}

/// A `tracing` layer that records every event carrying an `ev` field (whatever the log level
/// the formatter shows) in the installed log.
pub fn layer<S>() -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    // Events are logged at info and above: the hint keeps trace and debug call sites off.
    let filter = tracing_subscriber::filter::filter_fn(|m| m.is_event() && m.fields().field("ev").is_some())
        .with_max_level_hint(tracing::level_filters::LevelFilter::INFO);
    EventsLayer.with_filter(filter)
}

struct EventsLayer;

impl<S: tracing::Subscriber> Layer<S> for EventsLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let Some(log) = SINK.get() else { return };
        let mut v = Fields::default();
        event.record(&mut v);
        if let Some(kind) = v.kind {
            log.record(&kind, v.fields, &v.message);
        }
    }
}

#[derive(Default)]
struct Fields {
    kind: Option<String>,
    message: String,
    fields: BTreeMap<String, String>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: String) {
        let mut value = value;
        if value.len() > MAX_VALUE {
            let mut cut = MAX_VALUE;
            while !value.is_char_boundary(cut) {
                cut -= 1;
            }
            value.truncate(cut);
        }
        match field.name() {
            "ev" => self.kind = Some(value),
            "message" => self.message = value,
            name if self.fields.len() < MAX_FIELDS => {
                self.fields.insert(name.to_string(), value);
            }
            _ => {}
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

/// What identifies a fact: its kind and fields (two peers that saw a peer die record the
/// same kind and fields).
fn fact(e: &ClusterEvent) -> String {
    let mut key = e.kind.clone();
    for (k, v) in &e.fields {
        key.push('\u{1f}');
        key.push_str(k);
        key.push('=');
        key.push_str(v);
    }
    key
}

/// Merges the lists peers gave: ordered by time (then by who saw it), the same fact seen by
/// several peers within a minute kept once, with every peer that saw it in `seen_by`.
pub fn merge(lists: Vec<Vec<ClusterEvent>>) -> Vec<ClusterEvent> {
    let mut all: Vec<ClusterEvent> = lists.into_iter().flatten().collect();
    // A total order (time, who saw it, what), so the result does not depend on list order.
    all.sort_by_cached_key(|e| (e.at_ms, e.seq, e.seen_by.clone(), fact(e), e.message.clone()));
    let mut out: Vec<ClusterEvent> = Vec::with_capacity(all.len());
    // Fact → index in `out` of its latest sighting.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for e in all {
        let key = fact(&e);
        // Another peer's sighting of the same fact folds in; the same peer seeing it again is
        // a new event (a crash loop, a second restart).
        if let Some(&i) = seen.get(&key)
            && e.at_ms.saturating_sub(out[i].at_ms) <= SAME_FACT_WITHIN_MS
            && (out[i] == e || !e.seen_by.iter().any(|w| out[i].seen_by.contains(w)))
        {
            if out[i] == e {
                continue; // the same record twice (a peer asked twice)
            }
            for who in e.seen_by {
                if !out[i].seen_by.contains(&who) {
                    out[i].seen_by.push(who);
                }
            }
            continue;
        }
        seen.insert(key, out.len());
        out.push(e);
    }
    out
}

/// An event a peer sent, made safe to keep: attributed to that peer (whatever it claimed),
/// its strings bounded as this peer's own are, and `None` when stamped too far ahead.
pub fn from_peer(mut e: ClusterEvent, peer_name: &str) -> Option<ClusterEvent> {
    if e.at_ms > wall_ms().saturating_add(MAX_DRIFT_MS) {
        return None;
    }
    let cut = |v: &mut String| {
        if v.len() > MAX_VALUE {
            let mut at = MAX_VALUE;
            while !v.is_char_boundary(at) {
                at -= 1;
            }
            v.truncate(at);
        }
    };
    cut(&mut e.kind);
    cut(&mut e.message);
    e.fields = std::mem::take(&mut e.fields)
        .into_iter()
        .take(MAX_FIELDS)
        .map(|(mut k, mut v)| {
            cut(&mut k);
            cut(&mut v);
            (k, v)
        })
        .collect();
    e.seen_by = vec![peer_name.to_string()];
    Some(e)
}

/// `10m`, `2h`, `30s`, `1d` → a duration (for `--since`).
pub fn parse_age(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ev(at_ms: u64, seq: u32, kind: &str, peer: &str, by: &str) -> ClusterEvent {
        ClusterEvent {
            at_ms,
            seq,
            kind: kind.into(),
            fields: BTreeMap::from([("peer".to_string(), peer.to_string())]),
            message: String::new(),
            seen_by: vec![by.into()],
        }
    }

    #[test]
    fn the_clock_never_goes_back_and_follows_peers_within_reason() {
        let c = Hlc::default();
        assert_eq!(c.tick(1000), (1000, 0));
        assert_eq!(c.tick(1000), (1000, 1));
        assert_eq!(c.tick(999), (1000, 2), "a wall clock stepping back does not move time back");
        assert_eq!(c.tick(1001), (1001, 0));
        c.observe_at((5000, 3), 1002);
        assert_eq!(c.tick(1003), (5000, 4), "after a peer's later event");
        c.observe_at((10_000_000, 0), 1004);
        assert_eq!(c.tick(1005), (5000, 5), "a clock an hour ahead is not followed");
    }

    #[test]
    fn a_fact_seen_by_three_peers_is_one_event_and_order_is_by_time() {
        let a = vec![ev(100, 0, "peer.dead", "p3", "a"), ev(300, 0, "replica.started", "a", "a")];
        let b = vec![ev(120, 0, "peer.dead", "p3", "b"), ev(200, 0, "peer.joined", "p4", "b")];
        let c = vec![ev(90, 0, "peer.suspect", "p3", "c"), ev(110, 0, "peer.dead", "p3", "c")];
        let m = merge(vec![a.clone(), b, c]);
        let kinds: Vec<&str> = m.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["peer.suspect", "peer.dead", "peer.joined", "replica.started"]);
        assert_eq!(m[1].seen_by, ["a", "c", "b"]);
        assert_eq!(m[1].at_ms, 100, "the first sighting's time");
        // The same peer's list twice (asked twice) changes nothing.
        assert_eq!(merge(vec![a.clone(), a.clone()]), merge(vec![a]));
        // A peer that dies again an hour later is a new event.
        let again = merge(vec![vec![ev(100, 0, "peer.dead", "p3", "a"), ev(3_700_000, 0, "peer.dead", "p3", "a")]]);
        assert_eq!(again.len(), 2);
        // So does one peer seeing the same thing twice within a minute (a crash loop).
        let twice =
            merge(vec![vec![ev(100, 0, "replica.failed", "p3", "a"), ev(5_000, 0, "replica.failed", "p3", "a")]]);
        assert_eq!(twice.len(), 2);
    }

    proptest! {
        #[test]
        fn merging_is_ordered_and_loses_no_fact(
            raw in proptest::collection::vec((0u64..200_000, 0u32..3, 0usize..4, 0usize..5, 0usize..3), 0..60)
        ) {
            let kinds = ["peer.dead", "peer.joined", "replica.started", "image.pulled"];
            let peers = ["p0", "p1", "p2", "p3", "p4"];
            let observers = ["a", "b", "c"];
            let mut lists = vec![Vec::new(), Vec::new(), Vec::new()];
            for (t, s, k, p, o) in &raw {
                lists[*o].push(ev(*t, *s, kinds[*k], peers[*p], observers[*o]));
            }
            let m = merge(lists.clone());
            for w in m.windows(2) {
                prop_assert!((w[0].at_ms, w[0].seq) <= (w[1].at_ms, w[1].seq));
            }
            // Every sighting is in the merged list: as itself or folded into the same fact.
            for e in lists.iter().flatten() {
                prop_assert!(m.iter().any(|x| fact(x) == fact(e)
                    && x.at_ms <= e.at_ms
                    && e.at_ms - x.at_ms <= SAME_FACT_WITHIN_MS
                    && x.seen_by.contains(&e.seen_by[0])));
            }
            // Merging is the same whatever the order the lists came in.
            let mut rev = lists.clone();
            rev.reverse();
            prop_assert_eq!(merge(rev), m);
        }
    }

    #[test]
    fn the_log_survives_a_restart_a_torn_line_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path(), "me").unwrap();
        let first = log.record("peer.dead", BTreeMap::from([("peer".into(), "p1".into())]), "peer dead");
        drop(log);
        // A crash mid-write leaves half a line.
        let mut f = OpenOptions::new().append(true).open(dir.path().join("events.jsonl")).unwrap();
        f.write_all(b"{\"at_ms\":12").unwrap();
        drop(f);
        let log = EventLog::open(dir.path(), "me").unwrap();
        assert_eq!(log.since(0, 10), vec![first.clone()]);
        let next = log.record("peer.joined", BTreeMap::new(), "x");
        assert!((next.at_ms, next.seq) > (first.at_ms, first.seq));
        drop(log);
        // The event written after the torn line survives the next restart too.
        let log = EventLog::open(dir.path(), "me").unwrap();
        assert_eq!(log.since(0, 10), vec![first.clone(), next.clone()]);
        // Bounded: far more than a file's worth stays under two files.
        let big = "x".repeat(400);
        for i in 0..20_000u32 {
            log.record("transfer.done", BTreeMap::from([("i".into(), i.to_string()), ("pad".into(), big.clone())]), "");
        }
        let on_disk: u64 = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
        assert!(on_disk <= 2 * MAX_FILE_BYTES + 4096, "{on_disk} bytes on disk");
        assert_eq!(log.since(0, usize::MAX).len(), MAX_RECENT);
        assert_eq!(log.since(0, 5).len(), 5);
        assert_eq!(log.since(0, 5).last().unwrap().fields["i"], "19999");
    }

    #[test]
    fn a_peers_events_are_its_own_bounded_and_not_from_the_future() {
        let mut e = ev(wall_ms(), 0, "peer.dead", &"x".repeat(5000), "someone-else");
        e.fields.extend((0..100).map(|i| (format!("f{i}"), "v".to_string())));
        let kept = from_peer(e.clone(), "sender").unwrap();
        assert_eq!(kept.seen_by, ["sender"]);
        assert!(kept.fields.len() <= MAX_FIELDS && kept.fields.values().all(|v| v.len() <= MAX_VALUE));
        e.at_ms = wall_ms() + 3_600_000;
        assert_eq!(from_peer(e, "sender"), None);
    }

    #[test]
    fn ages_parse() {
        assert_eq!(parse_age("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_age("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_age("1d"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_age("45s"), Some(Duration::from_secs(45)));
        assert_eq!(parse_age("10"), None);
        assert_eq!(parse_age("m"), None);
        assert_eq!(parse_age("5y"), None);
    }
}
