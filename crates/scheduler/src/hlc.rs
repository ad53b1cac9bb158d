//! Hybrid logical clocks: version stamps that order the edits of a leaderless cluster.
//!
//! An [`Hlc`] is `(millis, counter, node)`: wall-clock milliseconds, a counter that breaks ties
//! inside one millisecond (and carries the order when the wall clock stalls or steps back), and
//! the id of the node that issued it, so two nodes never issue the same stamp. Stamps are totally
//! ordered by that triple; the last writer by that order wins in [`crate::ServiceMap`].
//!
//! A [`Clock`] issues stamps. It never reads the system clock: the caller passes `now_millis` to
//! [`Clock::tick`], and every stamp received from a peer goes through [`Clock::observe`] (or the
//! bounded [`Clock::observe_within`]) so the next local stamp is greater than everything seen.
//!
//! The text form `{millis:016x}-{counter:08x}-{node}` has fixed-width hex fields, so comparing
//! two texts byte by byte gives the same order as comparing the stamps. It is what the API shows
//! as a service's `version` and what a running replica records as the version it was started
//! from.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A hybrid logical clock stamp, totally ordered by `(millis, counter, node)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Hlc {
    /// Wall-clock milliseconds (since the Unix epoch) of the issuing node, or later.
    pub millis: u64,
    /// Orders stamps that share `millis`.
    pub counter: u32,
    /// Id of the node that issued the stamp.
    pub node: String,
}

/// Why a text is not an [`Hlc`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HlcParseError {
    /// `{input}` is not a version: expected `MILLIS-COUNTER-NODE` with 16 and 8 lowercase hex digits
    #[error("`{input}` is not a version: expected `MILLIS-COUNTER-NODE` with 16 and 8 lowercase hex digits")]
    Malformed { input: String },
}

/// Why a stamp from a peer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    /// A peer's stamp is further ahead of our clock than allowed; its clock (or ours) is wrong
    #[error(
        "version {stamp} from node `{node}` is {ahead_millis} ms ahead of this node's clock (at most {max_drift_millis} ms \
         allowed): check the clocks of both nodes"
    )]
    TooFarAhead { stamp: Hlc, node: String, ahead_millis: u64, max_drift_millis: u64 },
}

impl Hlc {
    /// A stamp from its parts.
    pub fn new(millis: u64, counter: u32, node: impl Into<String>) -> Self {
        Hlc { millis, counter, node: node.into() }
    }

    /// The `(millis, counter)` part, which is what a clock advances.
    fn time(&self) -> (u64, u32) {
        (self.millis, self.counter)
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{:08x}-{}", self.millis, self.counter, self.node)
    }
}

impl FromStr for Hlc {
    type Err = HlcParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || HlcParseError::Malformed { input: s.to_string() };
        let b = s.as_bytes();
        // 16 hex, '-', 8 hex, '-', node (which may itself contain '-').
        if b.len() < 26 || b[16] != b'-' || b[25] != b'-' {
            return Err(bad());
        }
        let millis = s.get(..16).and_then(parse_hex).ok_or_else(bad)?;
        let counter = s.get(17..25).and_then(parse_hex).and_then(|c| u32::try_from(c).ok()).ok_or_else(bad)?;
        let node = s.get(26..).ok_or_else(bad)?;
        Ok(Hlc { millis, counter, node: node.to_string() })
    }
}

/// Lowercase hex only, so that every stamp has exactly one text form.
fn parse_hex(s: &str) -> Option<u64> {
    if s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
        u64::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

/// Issues increasing [`Hlc`] stamps for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clock {
    /// This node's id, written into every stamp it issues.
    pub node: String,
    /// The greatest `(millis, counter)` issued or observed so far, with this node's id.
    pub last: Hlc,
}

impl Clock {
    /// A clock for `node` that has issued and seen nothing.
    pub fn new(node: impl Into<String>) -> Self {
        let node = node.into();
        Clock { last: Hlc::new(0, 0, node.clone()), node }
    }

    /// A new stamp, greater than every stamp this clock issued or observed before, even if
    /// `now_millis` went backwards.
    ///
    /// The only exception is a clock already at `(u64::MAX, u32::MAX)`, which repeats its last
    /// stamp; [`Clock::observe_within`] keeps remote stamps from pushing a clock there.
    pub fn tick(&mut self, now_millis: u64) -> Hlc {
        let (millis, counter) = self.last.time();
        let next = if now_millis > millis {
            (now_millis, 0)
        } else if counter < u32::MAX {
            (millis, counter + 1)
        } else {
            // A full counter borrows the next millisecond rather than wrapping.
            (millis.saturating_add(1), if millis == u64::MAX { counter } else { 0 })
        };
        self.last = Hlc::new(next.0, next.1, self.node.clone());
        self.last.clone()
    }

    /// Takes in a stamp seen from a peer, so the next [`Clock::tick`] is greater than it.
    pub fn observe(&mut self, remote: &Hlc) {
        if remote.time() > self.last.time() {
            self.last = Hlc::new(remote.millis, remote.counter, self.node.clone());
        }
    }

    /// Like [`Clock::observe`], but refuses (and ignores) a stamp more than `max_drift_millis`
    /// ahead of `now_millis`, so one peer with a clock set to the far future cannot drag every
    /// clock in the cluster there.
    pub fn observe_within(&mut self, remote: &Hlc, now_millis: u64, max_drift_millis: u64) -> Result<(), ClockError> {
        let ahead_millis = remote.millis.saturating_sub(now_millis);
        if ahead_millis > max_drift_millis {
            return Err(ClockError::TooFarAhead {
                stamp: remote.clone(),
                node: remote.node.clone(),
                ahead_millis,
                max_drift_millis,
            });
        }
        self.observe(remote);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn text_round_trips_and_sorts() {
        let a = Hlc::new(0x1234, 7, "node-a");
        assert_eq!(a.to_string(), "0000000000001234-00000007-node-a");
        assert_eq!(a.to_string().parse::<Hlc>().unwrap(), a);
        assert!("0000000000001234-0000007-x".parse::<Hlc>().is_err());
        assert!("000000000000123G-00000007-x".parse::<Hlc>().is_err());
        assert!("000000000000123A-00000007-x".parse::<Hlc>().is_err(), "uppercase hex has no canonical form");
        assert!("".parse::<Hlc>().is_err());
        assert_eq!("0000000000000001-00000000-".parse::<Hlc>().unwrap(), Hlc::new(1, 0, ""));
    }

    #[test]
    fn tick_is_monotonic_when_the_wall_clock_goes_back() {
        let mut c = Clock::new("a");
        let t1 = c.tick(1000);
        let t2 = c.tick(900);
        let t3 = c.tick(1000);
        let t4 = c.tick(1001);
        assert!(t1 < t2 && t2 < t3 && t3 < t4);
        assert_eq!(t4, Hlc::new(1001, 0, "a"));
    }

    #[test]
    fn counter_overflow_borrows_a_millisecond() {
        let mut c = Clock::new("a");
        c.last = Hlc::new(5, u32::MAX, "a");
        assert_eq!(c.tick(5), Hlc::new(6, 0, "a"));
    }

    #[test]
    fn observe_moves_past_remote_stamps() {
        let mut c = Clock::new("a");
        c.observe(&Hlc::new(5000, 3, "b"));
        let t = c.tick(10);
        assert!(t > Hlc::new(5000, 3, "b"));
        assert_eq!(t.node, "a");
    }

    #[test]
    fn observe_within_refuses_far_future_stamps() {
        let mut c = Clock::new("a");
        let err = c.observe_within(&Hlc::new(1_000_000, 0, "b"), 1000, 60_000).unwrap_err();
        assert!(err.to_string().contains("ahead"), "{err}");
        assert_eq!(c.tick(1000), Hlc::new(1000, 0, "a"));
        c.observe_within(&Hlc::new(2000, 0, "b"), 1000, 60_000).unwrap();
        assert!(c.tick(1000) > Hlc::new(2000, 0, "b"));
    }

    proptest! {
        #[test]
        fn text_order_matches_stamp_order(
            a in (any::<u64>(), any::<u32>(), "[a-z0-9-]{0,6}"),
            b in (any::<u64>(), any::<u32>(), "[a-z0-9-]{0,6}"),
        ) {
            let a = Hlc::new(a.0, a.1, a.2);
            let b = Hlc::new(b.0, b.1, b.2);
            prop_assert_eq!(a.cmp(&b), a.to_string().cmp(&b.to_string()));
            prop_assert_eq!(a.to_string().parse::<Hlc>().unwrap(), a);
        }

        #[test]
        fn ticks_strictly_increase(nows in proptest::collection::vec(0u64..50, 1..200),
                                   seen in proptest::collection::vec((0u64..60, 0u32..5), 0..20)) {
            let mut c = Clock::new("n");
            let mut prev = c.tick(0);
            for (i, now) in nows.iter().enumerate() {
                if let Some((m, k)) = seen.get(i) {
                    let remote = Hlc::new(*m, *k, "r");
                    c.observe(&remote);
                    let t = c.tick(*now);
                    prop_assert!(t > remote);
                    prop_assert!(t > prev);
                    prev = t;
                } else {
                    let t = c.tick(*now);
                    prop_assert!(t > prev);
                    prev = t;
                }
            }
        }
    }
}
