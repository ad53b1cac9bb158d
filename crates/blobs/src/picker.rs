//! Which piece to ask a given peer for next. Pure: inputs in, a decision out.
//!
//! - **Rarest first** among the pieces the peer holds, we lack and nobody is fetching, counting
//!   holders among the *other downloaders* we are connected to; ties broken at random so that
//!   peers starting together ask for different pieces.
//! - **The seed is not asked for what other peers already have**: a peer holding every piece
//!   (a seed) is only asked for pieces no other downloader holds. Its upload, the scarcest
//!   resource in a swarm, is spent on pieces that exist nowhere else; the downloaders spread
//!   them among themselves.
//! - **A reader's window first**: while something reads the blob as it arrives (streaming),
//!   the missing pieces of the window just ahead of its position are asked for lowest first,
//!   of any peer that has them, the seed included; outside the window, rarest first as above,
//!   so the swarm keeps being served.
//! - **Endgame**: once every missing piece is already being fetched, an idle peer may fetch one
//!   a second time (at most two copies in flight) if its request is overdue, so one slow peer
//!   cannot hold up the end, while a piece merely on its way is not sent twice.

use crate::bitfield::Bitfield;
use rand::RngExt;

/// Everything the picker looks at.
pub struct PickInput<'a> {
    /// Pieces the peer holds (`None`: all of them, it is a seed).
    pub peer_has: Option<&'a Bitfield>,
    /// Pieces we hold.
    pub have: &'a Bitfield,
    /// Requests in flight per piece (any peer).
    pub inflight: &'a [u8],
    /// Pieces already asked of this peer, or that it refused lately: never asked of it again
    /// now.
    pub asked_of_peer: &'a dyn Fn(u32) -> bool,
    /// Holders of each piece among connected non-seed peers.
    pub avail: &'a [u16],
    /// Whether the request in flight for a piece is overdue (endgame duplicates only those).
    pub overdue: &'a dyn Fn(u32) -> bool,
    /// Pieces a reader needs next, `[from, to)` (streaming), asked for first and in order.
    pub window: Option<(u32, u32)>,
}

/// Picks a piece, or `None` if this peer should not be asked for anything now.
pub fn pick(inp: &PickInput<'_>, rng: &mut impl rand::Rng) -> Option<u32> {
    let n = inp.have.len();
    let holds = |p: u32| inp.peer_has.is_none_or(|b| b.get(p));
    let seed = inp.peer_has.is_none();
    if let Some((from, to)) = inp.window {
        let next = (from..to.min(n))
            .find(|&p| !inp.have.get(p) && inp.inflight[p as usize] == 0 && holds(p) && !(inp.asked_of_peer)(p));
        if next.is_some() {
            return next;
        }
    }
    let mut best: Option<(u16, u32)> = None;
    let mut ties = 0u32;
    let mut missing_not_inflight = false;
    for p in 0..n {
        if inp.have.get(p) || inp.inflight[p as usize] > 0 {
            continue;
        }
        missing_not_inflight = true;
        if !holds(p) || (inp.asked_of_peer)(p) {
            continue;
        }
        let a = inp.avail[p as usize];
        if seed && a > 0 {
            continue;
        }
        match best {
            Some((ba, _)) if a > ba => {}
            Some((ba, _)) if a == ba => {
                // Reservoir sampling over the tied pieces: each is equally likely.
                ties += 1;
                if rng.random_range(0..ties) == 0 {
                    best = Some((a, p));
                }
            }
            _ => {
                best = Some((a, p));
                ties = 1;
            }
        }
    }
    if best.is_some() || missing_not_inflight {
        return best.map(|(_, p)| p);
    }
    // Endgame: everything missing is in flight; duplicate one (at most two copies).
    let dup: Vec<u32> = (0..n)
        .filter(|&p| {
            !inp.have.get(p) && inp.inflight[p as usize] == 1 && holds(p) && !(inp.asked_of_peer)(p) && (inp.overdue)(p)
        })
        .collect();
    if dup.is_empty() { None } else { Some(dup[rng.random_range(0..dup.len())]) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(1)
    }

    #[test]
    fn rarest_first_and_seed_spared() {
        let yes = |_| true;
        let have = Bitfield::new(4);
        let inflight = [0u8; 4];
        let avail = [2u16, 0, 1, 0];
        let mut other = Bitfield::new(4);
        for p in [0, 2] {
            other.set(p);
        }
        let no = |_| false;
        // A downloader holding 0 and 2: rarest of those is 2.
        let inp = PickInput {
            peer_has: Some(&other),
            have: &have,
            inflight: &inflight,
            asked_of_peer: &no,
            avail: &avail,
            overdue: &yes,
            window: None,
        };
        assert_eq!(pick(&inp, &mut rng()), Some(2));
        // The seed is only asked for pieces no downloader has: 1 or 3.
        let inp = PickInput {
            peer_has: None,
            have: &have,
            inflight: &inflight,
            asked_of_peer: &no,
            avail: &avail,
            overdue: &yes,
            window: None,
        };
        for _ in 0..20 {
            assert!(matches!(pick(&inp, &mut rand::rng()), Some(1 | 3)));
        }
    }

    #[test]
    fn endgame_duplicates_once() {
        let yes = |_| true;
        let mut have = Bitfield::new(3);
        have.set(0);
        have.set(1);
        let avail = [0u16; 3];
        let no = |_| false;
        let once = [0u8, 0, 1];
        let inp = PickInput {
            peer_has: None,
            have: &have,
            inflight: &once,
            asked_of_peer: &no,
            avail: &avail,
            overdue: &yes,
            window: None,
        };
        assert_eq!(pick(&inp, &mut rng()), Some(2));
        let twice = [0u8, 0, 2];
        let inp = PickInput {
            peer_has: None,
            have: &have,
            inflight: &twice,
            asked_of_peer: &no,
            avail: &avail,
            overdue: &yes,
            window: None,
        };
        assert_eq!(pick(&inp, &mut rng()), None);
        let asked = |p| p == 2;
        let inp = PickInput {
            peer_has: None,
            have: &have,
            inflight: &once,
            asked_of_peer: &asked,
            avail: &avail,
            overdue: &yes,
            window: None,
        };
        assert_eq!(pick(&inp, &mut rng()), None, "never the same piece twice from one peer");
        let not_yet = |_| false;
        let inp = PickInput {
            peer_has: None,
            have: &have,
            inflight: &once,
            asked_of_peer: &no,
            avail: &avail,
            overdue: &not_yet,
            window: None,
        };
        assert_eq!(pick(&inp, &mut rng()), None, "a piece on its way in time is not duplicated");
    }

    #[test]
    fn a_readers_window_comes_first_and_in_order_even_from_the_seed() {
        let no = |_| false;
        let mut have = Bitfield::new(10);
        have.set(4);
        let mut inflight = [0u8; 10];
        inflight[5] = 1;
        // Every other downloader has piece 6: the seed would never be asked for it.
        let avail = [1u16, 1, 1, 1, 1, 1, 1, 0, 0, 0];
        let inp = PickInput {
            peer_has: None,
            have: &have,
            inflight: &inflight,
            asked_of_peer: &no,
            avail: &avail,
            overdue: &no,
            window: Some((4, 8)),
        };
        assert_eq!(pick(&inp, &mut rng()), Some(6), "4 is here, 5 on its way: 6 is next");
        // Past the window: rarest first again (7, 8 or 9, which no downloader has).
        let inp = PickInput { window: Some((4, 7)), inflight: &[0, 0, 0, 0, 0, 1, 1, 0, 0, 0], ..inp };
        assert!(matches!(pick(&inp, &mut rng()), Some(7..=9)));
    }

    proptest! {
        // Whatever the state, a pick is a piece we lack, the peer holds, and (outside the
        // endgame) nobody is fetching; the seed is never asked for a piece another downloader
        // holds unless in the endgame; and the pick is among the rarest candidates.
        #[test]
        fn picks_are_always_legal(
            n in 1u32..64,
            have_bits in proptest::collection::vec(any::<bool>(), 64),
            peer_bits in proptest::collection::vec(any::<bool>(), 64),
            infl in proptest::collection::vec(0u8..3, 64),
            avail in proptest::collection::vec(0u16..4, 64),
            seed in any::<bool>(),
            s in any::<u64>(),
        ) {
            let mut have = Bitfield::new(n);
            let mut ph = Bitfield::new(n);
            for p in 0..n {
                if have_bits[p as usize] { have.set(p); }
                if peer_bits[p as usize] { ph.set(p); }
            }
            let refused = |p: u32| p % 5 == 3;
            let yes = |_| true;
            let inp = PickInput { peer_has: if seed { None } else { Some(&ph) }, have: &have, inflight: &infl[..n as usize], asked_of_peer: &refused, avail: &avail[..n as usize], overdue: &yes, window: None };
            let mut r = rand::rngs::StdRng::seed_from_u64(s);
            let endgame = (0..n).all(|p| have.get(p) || infl[p as usize] > 0);
            if let Some(p) = pick(&inp, &mut r) {
                prop_assert!(p < n && !have.get(p));
                prop_assert!(!refused(p), "a piece the peer refused is not asked again at once");
                prop_assert!(seed || ph.get(p));
                if endgame {
                    prop_assert_eq!(infl[p as usize], 1);
                } else {
                    prop_assert_eq!(infl[p as usize], 0);
                    if seed { prop_assert_eq!(avail[p as usize], 0); }
                    let holds = |q: u32| seed || ph.get(q);
                    let min = (0..n).filter(|&q| !have.get(q) && infl[q as usize] == 0 && holds(q) && !refused(q) && (!seed || avail[q as usize] == 0)).map(|q| avail[q as usize]).min();
                    prop_assert_eq!(Some(avail[p as usize]), min);
                }
            }
        }
    }
}
