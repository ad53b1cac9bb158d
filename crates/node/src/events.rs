//! `shoal events`: what every live peer saw, merged.
//!
//! Each peer keeps its own bounded event log ([`shoal_events::EventLog`]); nothing is
//! gossiped. A query asks every live peer over `/shoal/events/1` for its events since a time
//! (each answer bounded, each peer given 2 s), takes in their clocks, and merges the lists:
//! a peer that is down or partitioned away only means its own sightings are missing, and any
//! peer answers for the cluster.

use crate::error::NodeError;
use crate::node::Node;
use shoal_blobs::proto::{read_msg, write_msg};
use shoal_events::EventLog;
use shoal_overlay::libp2p::{PeerId, StreamProtocol};
use shoal_types::ClusterEvent;
use std::sync::Arc;
use std::time::Duration;
use tracing::debug;

/// The protocol peers ask each other for their events on.
pub(crate) const EVENTS_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/events/1");
/// Most events one peer gives in one answer (the newest).
const MAX_ANSWER_EVENTS: usize = 5_000;
/// Largest answer in bytes.
const MAX_ANSWER_BYTES: usize = 8 << 20;
/// Opens the event log in `data_dir` and makes it the one log lines are recorded in (before
/// anything else starts, so the first peers met are recorded too).
pub(crate) fn open_log(data_dir: &std::path::Path, name: &str) -> Result<Arc<EventLog>, NodeError> {
    let dir = data_dir.join("events");
    let log = EventLog::open(&dir, name).map_err(|source| NodeError::DataDir { path: dir.clone(), source })?;
    // One agent per process: the first log installed keeps the log lines (each node still
    // answers from its own).
    shoal_events::install(log.clone());
    Ok(log)
}

/// Exchanges served at once.
const MAX_SERVED: usize = 16;
/// How long a peer has to answer.
const ASK_LIMIT: Duration = Duration::from_secs(2);

/// What one peer asks another on `/shoal/events/1`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum Ask {
    /// Its events since then, the newest `limit`.
    Events { since_ms: u64, limit: u32 },
    /// Its downloads in progress (for the dashboard's transfer graph).
    Transfers,
}

/// Most downloads one peer reports.
const MAX_TRANSFERS: usize = 256;

impl Node {
    /// Serves this peer's event log (and its transfers) to other peers until the node stops.
    pub(crate) fn serve_events(&self) -> Result<(), NodeError> {
        let mut incoming = self
            .overlay()
            .streams()
            .accept(EVENTS_PROTOCOL)
            .map_err(|_| NodeError::ProtocolTaken("/shoal/events/1"))?;
        let node = self.clone();
        let cancel = self.cancel().clone();
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_SERVED));
        self.tasks().spawn(async move {
            use futures::{AsyncWriteExt, StreamExt};
            loop {
                let (peer, mut stream) = tokio::select! {
                    next = incoming.next() => match next { Some(s) => s, None => return },
                    () = cancel.cancelled() => return,
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
                let node = node.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let serve = async {
                        match read_msg::<_, Ask>(&mut stream, 64).await.ok()? {
                            Ask::Events { since_ms, limit } => {
                                let limit = (limit as usize).min(MAX_ANSWER_EVENTS);
                                let mut events = node.local_events(since_ms, limit);
                                // Within the byte bound: the newest kept.
                                while postcard::to_stdvec(&events).map_or(0, |b| b.len()) > MAX_ANSWER_BYTES {
                                    events.drain(..events.len() / 4 + 1);
                                }
                                write_msg(&mut stream, &events).await.ok()?;
                            }
                            Ask::Transfers => {
                                let mut list = node.transfers();
                                list.truncate(MAX_TRANSFERS);
                                write_msg(&mut stream, &list).await.ok()?;
                            }
                        }
                        stream.close().await.ok()
                    };
                    if tokio::time::timeout(Duration::from_secs(10), serve).await.ok().flatten().is_none() {
                        debug!(%peer, "an events exchange failed");
                    }
                });
            }
        });
        Ok(())
    }

    /// Every live peer's downloads in progress, this peer's included (each names its
    /// downloader and its sources): the cluster's transfer graph.
    pub async fn cluster_transfers(&self) -> Vec<shoal_types::TransferInfo> {
        let members = self.overlay().members().await.unwrap_or_default();
        let asks = members.into_iter().map(|m| async move {
            let mut list: Vec<shoal_types::TransferInfo> =
                self.ask_peer(m.peer, &Ask::Transfers, MAX_ANSWER_BYTES).await.unwrap_or_default();
            list.truncate(MAX_TRANSFERS);
            // A peer speaks for its own downloads only.
            list.retain(|t| t.peer == m.peer.to_string());
            list
        });
        let mut all = self.transfers();
        for list in futures::future::join_all(asks).await {
            all.extend(list);
        }
        all
    }

    /// This peer's own events since `since_ms`, oldest first, at most `limit` (the newest).
    pub fn local_events(&self, since_ms: u64, limit: usize) -> Vec<ClusterEvent> {
        self.event_log().since(since_ms, limit)
    }

    /// What the cluster saw since `since_ms`: this peer's events and every live peer's,
    /// merged, oldest first, at most `limit` (the newest).
    pub async fn cluster_events(&self, since_ms: u64, limit: usize) -> Vec<ClusterEvent> {
        let limit = limit.min(MAX_ANSWER_EVENTS);
        let members = self.overlay().members().await.unwrap_or_default();
        let asks = members.into_iter().map(|m| async move {
            // A peer speaks for itself only: its events are its own sightings.
            let name = m.name_or_id();
            let list = self.ask_events(m.peer, since_ms, limit).await;
            list.into_iter().filter_map(|e| shoal_events::from_peer(e, &name)).collect::<Vec<_>>()
        });
        let mut lists = futures::future::join_all(asks).await;
        for e in lists.iter().flatten() {
            self.event_log().clock().observe((e.at_ms, e.seq));
        }
        lists.push(self.local_events(since_ms, limit));
        let mut merged = shoal_events::merge(lists);
        if merged.len() > limit {
            merged.drain(..merged.len() - limit);
        }
        merged
    }

    async fn ask_events(&self, peer: PeerId, since_ms: u64, limit: usize) -> Vec<ClusterEvent> {
        let ask = Ask::Events { since_ms, limit: limit as u32 };
        let mut events: Vec<ClusterEvent> = self.ask_peer(peer, &ask, MAX_ANSWER_BYTES).await.unwrap_or_default();
        events.truncate(limit);
        events
    }

    /// One exchange on `/shoal/events/1`, within [`ASK_LIMIT`].
    async fn ask_peer<R: serde::de::DeserializeOwned>(&self, peer: PeerId, ask: &Ask, max: usize) -> Option<R> {
        let exchange = async {
            let mut control = self.overlay().streams();
            let mut stream = control.open_stream(peer, EVENTS_PROTOCOL).await.ok()?;
            write_msg(&mut stream, ask).await.ok()?;
            read_msg::<_, R>(&mut stream, max).await.ok()
        };
        let answer = tokio::time::timeout(ASK_LIMIT, exchange).await.ok().flatten();
        if answer.is_none() {
            debug!(%peer, ?ask, "no answer from a peer");
        }
        answer
    }
}

/// How often a follower asks the cluster again.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);
/// How far back each follow round looks again (a peer's event that reached us late).
const FOLLOW_OVERLAP_MS: u64 = 10_000;

impl Node {
    /// The cluster's events since `since_ms`, then each new one as peers record it, until the
    /// receiver is dropped or the node stops.
    pub fn follow_events(&self, since_ms: u64, limit: usize) -> tokio::sync::mpsc::Receiver<ClusterEvent> {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let (node, cancel) = (self.clone(), self.cancel().clone());
        self.tasks().spawn(async move {
            // What was sent, by identity, so a late or repeated sighting is not sent twice.
            let mut sent: std::collections::HashMap<(String, u64, u32, String), u64> = Default::default();
            let mut from = since_ms;
            let mut first = true;
            loop {
                let events = node.cluster_events(from, if first { limit } else { MAX_ANSWER_EVENTS }).await;
                first = false;
                for e in events {
                    let id = (e.kind.clone(), e.at_ms, e.seq, e.seen_by.first().cloned().unwrap_or_default());
                    if sent.insert(id, e.at_ms).is_some() {
                        continue;
                    }
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
                // Ask again from a little before now (never ahead of it, whatever a peer's
                // clock said), so late arrivals are found.
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                from = from.max(now.saturating_sub(FOLLOW_OVERLAP_MS));
                sent.retain(|_, at| at.saturating_add(2 * FOLLOW_OVERLAP_MS) >= from);
                tokio::select! {
                    () = tokio::time::sleep(FOLLOW_EVERY) => {}
                    () = tx.closed() => return,
                    () = cancel.cancelled() => return,
                }
            }
        });
        rx
    }
}
