//! Periodic housekeeping of the event loop: cluster-size retuning, the SWIM watchdog, join
//! retries, pruning dead peers, and saving known peers to disk.

use super::EventLoop;
use crate::peerstore::KnownPeer;
use crate::record;
use crate::swim::swim_config;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
impl EventLoop {
    pub(super) fn housekeeping(&mut self) {
        let now = Instant::now();
        // Suspicions begun since the last look (every half second: well inside the suspicion
        // time), for the event log; SWIM itself does not report them.
        let suspects = self.suspects();
        for (peer, generation) in suspects.difference(&self.suspected) {
            let name = self.name_of(peer);
            info!(ev = "peer.suspect", %peer, name, generation, "peer suspected (missed probes)");
        }
        self.suspected = suspects;
        let rejected = self.rejected.load(Ordering::Relaxed);
        if rejected > self.rejected_seen {
            if let Some(suppressed) = self.bad_msg_log.check(now) {
                warn!(
                    count = rejected - self.rejected_seen,
                    suppressed, "dropped invalid peer records (bad signature or malformed)"
                );
            }
            self.rejected_seen = rejected;
        }

        let n = 1 + self.view.active().count();
        if n != self.config_n {
            match self.foca.set_config(swim_config(n, &self.tuning)) {
                Ok(()) => self.config_n = n,
                Err(e) => warn!(err = %e, "cannot retune membership for cluster size"),
            }
        }

        // Watchdog: members but no SWIM traffic for several probe periods means foca has gone
        // quiet (see `rejoin_targets`); restart the conversation.
        if self.leaving.is_none() && n > 1 && now.duration_since(self.last_swim_rx) > self.tuning.probe_period * 8 {
            debug!("no SWIM traffic lately; announcing to known members");
            self.last_swim_rx = now;
            self.announce_to_known();
        }

        if self.leaving.is_none() {
            if n > 1 {
                self.join_backoff = Duration::from_secs(2);
            } else if now >= self.next_join && (!self.bootstrap.is_empty() || !self.known.is_empty()) {
                self.kick_joins();
                self.next_join = now + self.join_backoff;
                self.join_backoff = (self.join_backoff * 2).min(Duration::from_secs(30));
            }
        }

        if now.duration_since(self.last_prune) > Duration::from_secs(60) {
            self.last_prune = now;
            for p in self.view.prune(now, self.dead_retention) {
                record::lock(&self.book).remove(&p);
                self.dirty.remove(&p);
                self.forget.push(p);
                self.known.retain(|k| k.peer != p);
            }
            self.last_sync.retain(|_, t| now.duration_since(*t) < Duration::from_secs(60));
            // Records of peers SWIM has not known for a whole prune period (identities nobody
            // runs, a long-gone peer's record relayed back): forgotten, so the book holds the
            // members and little else.
            let mut book = record::lock(&self.book);
            let orphans: std::collections::HashSet<_> =
                book.peers().filter(|p| **p != self.me.peer && self.view.get(p).is_none()).copied().collect();
            for p in orphans.intersection(&self.orphans) {
                book.forget(p);
            }
            drop(book);
            self.orphans = orphans;
        }
        // A peer met for the first time is saved at once (a crash a moment later must not leave
        // a peer that remembers nobody to rejoin through); changes to known ones every 5 s.
        let new_peer = self.dirty.iter().any(|p| !self.known.iter().any(|k| k.peer == *p));
        if new_peer || now.duration_since(self.last_flush) > Duration::from_secs(5) {
            self.flush_store(false);
        }
    }

    pub(super) fn flush_store(&mut self, wait: bool) {
        self.last_flush = Instant::now();
        if self.dirty.is_empty() && self.forget.is_empty() {
            return;
        }
        let book = record::lock(&self.book);
        let now = unix_ms();
        let peers: Vec<KnownPeer> = self
            .dirty
            .drain()
            .filter_map(|p| {
                let rec = book.get(&p);
                let addrs = self
                    .view
                    .get(&p)
                    .map(|e| e.addrs.clone())
                    .filter(|a| !a.is_empty())
                    .or_else(|| rec.map(|r| r.record.addrs.clone()))?;
                Some(KnownPeer {
                    peer: p,
                    name: rec.map(|r| r.record.name.clone()).unwrap_or_default(),
                    addrs,
                    last_seen_ms: now,
                })
            })
            .collect();
        drop(book);
        for kp in &peers {
            match self.known.iter_mut().find(|k| k.peer == kp.peer) {
                Some(k) => *k = kp.clone(),
                None => self.known.push(kp.clone()),
            }
        }
        let forget = std::mem::take(&mut self.forget);
        let store = self.store.clone();
        let job = move || {
            if let Err(e) = store.update(&peers, &forget) {
                warn!(err = %e, "cannot save known peers");
            }
        };
        if wait {
            job();
        } else {
            tokio::task::spawn_blocking(job);
        }
    }
}
