//! The data-path threads of the encrypted transport (see [`super`]).

use super::udp::{MAX_GSO_BYTES, MAX_GSO_SEGMENTS, cmsg_buffer, recv_segments, send_segments};
use super::{Shared, WgPeer};
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tun_rs::{GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

/// Room for one encrypted packet: the MTU, WireGuard's 32 bytes and padding to 16.
const SLOT: usize = 1500 + 32 + 16;

/// Datagrams of one GSO send being built: all to one endpoint, all `seg` bytes but the last.
struct Run {
    to: Option<SocketAddrV4>,
    start: usize,
    end: usize,
    seg: usize,
    count: usize,
    closed: bool,
}

impl Run {
    fn new(at: usize) -> Run {
        Run { to: None, start: at, end: at, seg: 0, count: 0, closed: false }
    }

    /// Whether a datagram of `len` bytes to `to` can join.
    fn takes(&self, to: SocketAddrV4, len: usize) -> bool {
        self.to == Some(to)
            && !self.closed
            && len <= self.seg
            && self.count < MAX_GSO_SEGMENTS
            && self.end - self.start + len <= MAX_GSO_BYTES
    }
}

fn flush(shared: &Shared, out: &[u8], run: &Run) {
    if let Some(to) = run.to
        && run.count > 0
        && let Err(e) = send_segments(&shared.udp, &out[run.start..run.end], run.seg, to)
    {
        tracing::trace!(err = %e, %to, "cannot send encrypted packets");
    }
}

/// How many TUN reads (each up to a 64 KiB super-packet) one round takes before the other
/// direction gets its turn.
const TUN_READS_PER_ROUND: usize = 8;
/// How many UDP receives (each up to a GRO batch of datagrams) one round takes.
const UDP_RECVS_PER_ROUND: usize = 8;
/// The longest wait for either side: the stop flag is looked at least this often.
const WAIT: Duration = Duration::from_millis(500);

/// The data path: one thread for both directions, taking turns until neither the TUN device
/// nor the socket has anything, then waiting on both.
///
/// One thread rather than one per direction, because a TCP stream's two directions feed each
/// other: the packets written to the TUN device make the stack answer at once (ACKs on the
/// receiving peer, more data on the sending peer once ACKs land), and the same thread reads
/// those answers on its next turn without having slept. With a thread per direction each such
/// answer woke the other thread, 4-5 wake-ups per 64 KiB (with their IPIs and context
/// switches); this way it is 1-2.
pub(super) fn run(shared: Arc<Shared>) {
    let mut outbound = Outbound::new();
    let mut inbound = Inbound::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let got = inbound.round(&shared);
        let sent = outbound.round(&shared);
        if !got && !sent {
            wait(&shared);
        }
    }
}

/// Until the TUN device or the socket is readable, a stop wakes it, or [`WAIT`] passes.
fn wait(shared: &Shared) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let mut fds = [
        PollFd::new(shared.tun.as_fd(), PollFlags::POLLIN),
        PollFd::new(shared.udp.as_fd(), PollFlags::POLLIN),
        PollFd::new(shared.wake.1.as_fd(), PollFlags::POLLIN),
    ];
    let ms = u16::try_from(WAIT.as_millis()).unwrap_or(u16::MAX);
    if let Err(e) = poll(&mut fds, PollTimeout::from(ms))
        && e != nix::errno::Errno::EINTR
    {
        tracing::debug!(err = %e, "waiting for packets failed");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// TUN → peers: read a batch, encrypt each packet for the peer owning its destination into one
/// buffer, and send each run of equal-size datagrams to one peer with one GSO `sendmsg`.
///
/// A round's reads share the buffer, so runs go on across reads: a stream's super-packets
/// (46 full packets of a 64 KiB one but the last) and a burst of ACKs leave in sends of up to
/// 64 datagrams instead of two or one sends per read. So that a super-packet's short last
/// packet does not end the run, it is padded to the size of the first (WireGuard pads anyway;
/// the receiver keeps only the IP packet's own length): one datagram's worth of padding per
/// 64 KiB, against half the sends, the receiver's `recvmsg`s and the kernel's walks through
/// both stacks.
struct Outbound {
    original: Vec<u8>,
    bufs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    out: Vec<u8>,
}

/// Slots in the send buffer: a round's reads of full super-packets.
const OUT_SLOTS: usize = 4 * IDEAL_BATCH_SIZE;

impl Outbound {
    fn new() -> Outbound {
        Outbound {
            original: vec![0u8; VIRTIO_NET_HDR_LEN + 65_535],
            bufs: vec![vec![0u8; SLOT]; IDEAL_BATCH_SIZE],
            sizes: vec![0usize; IDEAL_BATCH_SIZE],
            out: vec![0u8; OUT_SLOTS * SLOT],
        }
    }

    /// Up to [`TUN_READS_PER_ROUND`] reads, all sent before it returns; whether anything was
    /// read.
    fn round(&mut self, shared: &Shared) -> bool {
        let mut any = false;
        let mut failed = 0;
        let mut run = Run::new(0);
        for _ in 0..TUN_READS_PER_ROUND {
            let n = match shared.tun.recv_multiple(&mut self.original, &mut self.bufs, &mut self.sizes, 0) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // One packet's (a super-packet of more segments than there are buffers, at
                    // a tiny MSS): it was read and is dropped; the next may be fine.
                    tracing::debug!(err = %e, "reading the TUN device failed");
                    any = true;
                    failed += 1;
                    continue;
                }
            };
            any = true;
            if run.end + n * SLOT > self.out.len() {
                flush(shared, &self.out, &run);
                run = Run::new(0);
            }
            self.encrypt(shared, n, &mut run);
        }
        if failed == TUN_READS_PER_ROUND && !shared.stop.load(Ordering::Relaxed) {
            // Every read failed: the device itself may be gone; do not spin.
            std::thread::sleep(Duration::from_millis(10));
        }
        flush(shared, &self.out, &run);
        any
    }

    /// Encrypts the `n` packets read into `out` after `run`, sending each run that ends.
    fn encrypt(&mut self, shared: &Shared, n: usize, run: &mut Run) {
        let table = shared.peers.read().unwrap_or_else(|e| e.into_inner());
        let first = self.sizes[0];
        for i in 0..n {
            let size = self.sizes[i];
            let buf = &mut self.bufs[i];
            if size < 20 || buf[0] >> 4 != 4 {
                continue;
            }
            // The short last packet of a split super-packet, padded to its siblings' size.
            let padded = if n > 1 && i == n - 1 && size < first && first <= buf.len() {
                buf[size..first].fill(0);
                first
            } else {
                size
            };
            let pkt = &buf[..padded];
            let dst = std::net::Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
            let Some(peer) = table.for_destination(dst) else { continue };
            let to = peer.endpoint();
            let at = run.end;
            let (len, data) = {
                let mut tunn = peer.tunn.lock().unwrap_or_else(|e| e.into_inner());
                match tunn.encapsulate(pkt, &mut self.out[at..at + SLOT]) {
                    TunnResult::WriteToNetwork(p) => (p.len(), p.first() == Some(&4)),
                    _ => continue,
                }
            };
            if !data {
                // A handshake initiation (the packet waits in the session's queue): alone, now.
                let _ = shared.udp.send_to(&self.out[at..at + len], to);
                continue;
            }
            peer.tx.fetch_add(size as u64, Ordering::Relaxed);
            if run.takes(to, len) {
                run.end += len;
                run.count += 1;
                run.closed = len < run.seg;
            } else {
                flush(shared, &self.out, run);
                // The new run starts where this datagram is: runs are contiguous slices of `out`.
                *run = Run { to: Some(to), start: at, end: at + len, seg: len, count: 1, closed: false };
            }
        }
    }
}

/// Peers → TUN: receive datagrams (coalesced by UDP GRO where the NIC does GRO; else one by
/// one), decrypt each with its peer's session, keep only packets whose source is in that
/// peer's subnet, and write the batch to the TUN coalesced into TCP super-packets: the kernel
/// then walks its stack (bridge, veth, conntrack, TCP) once per super-packet rather than once
/// per packet.
struct Inbound {
    buf: Vec<u8>,
    cmsg: Vec<u8>,
    reply: Vec<u8>,
    /// Room to coalesce a whole super-packet into each buffer: the GRO table will not grow one.
    outs: Vec<Vec<u8>>,
    gro: GROTable,
}

impl Inbound {
    fn new() -> Inbound {
        Inbound {
            buf: vec![0u8; 65_535],
            cmsg: cmsg_buffer(),
            reply: vec![0u8; SLOT],
            outs: (0..IDEAL_BATCH_SIZE).map(|_| Vec::with_capacity(2 * VIRTIO_NET_HDR_LEN + 65_535)).collect(),
            gro: GROTable::default(),
        }
    }

    /// Up to [`UDP_RECVS_PER_ROUND`] receives, written to the TUN device before it returns;
    /// whether anything came.
    fn round(&mut self, shared: &Shared) -> bool {
        let mut any = false;
        let mut k = 0;
        for _ in 0..UDP_RECVS_PER_ROUND {
            let (n, from, seg) = match recv_segments(&shared.udp, &mut self.buf, &mut self.cmsg, false) {
                Ok(x) => x,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
                Err(e) => {
                    // One datagram's error (an ICMP answer to an earlier send): the next may be fine.
                    tracing::trace!(err = %e, "receiving encrypted packets failed");
                    any = true;
                    continue;
                }
            };
            any = true;
            let table = shared.peers.read().unwrap_or_else(|e| e.into_inner());
            for dgram in self.buf[..n].chunks(seg.max(1)) {
                let Some(peer) = peer_of(shared, &table, dgram, from, &mut self.reply) else { continue };
                // Back to one slot's length: only bytes past the last packet are zeroed (the GRO
                // table writes each virtio header itself).
                let out = &mut self.outs[k];
                out.resize(VIRTIO_NET_HDR_LEN + SLOT, 0);
                let mut tunn = peer.tunn.lock().unwrap_or_else(|e| e.into_inner());
                match tunn.decapsulate(Some(from.ip()), dgram, &mut out[VIRTIO_NET_HDR_LEN..]) {
                    TunnResult::WriteToTunnelV4(p, src) => {
                        let len = p.len();
                        if peer.subnet.contains(src) && len > 0 {
                            out.truncate(VIRTIO_NET_HDR_LEN + len);
                            peer.rx.fetch_add(len as u64, Ordering::Relaxed);
                            k += 1;
                        } else if len > 0 {
                            tracing::debug!(peer = peer.label(), %src, "dropped a packet from outside the peer's subnet");
                        }
                    }
                    TunnResult::WriteToNetwork(p) => {
                        // A handshake response or cookie; then the packets that waited for it.
                        let _ = shared.udp.send_to(p, from);
                        drain_queue(shared, &mut tunn, peer.endpoint(), &mut self.reply);
                    }
                    TunnResult::Err(e) => {
                        tracing::debug!(peer = peer.label(), %from, kind = dgram[0], err = ?e, "dropped a datagram");
                    }
                    _ => {}
                }
                drop(tunn);
                if k == self.outs.len() {
                    write_tun(shared, &mut self.gro, &mut self.outs[..k]);
                    k = 0;
                }
            }
        }
        if k > 0 {
            write_tun(shared, &mut self.gro, &mut self.outs[..k]);
        }
        any
    }
}

fn write_tun(shared: &Shared, gro: &mut GROTable, bufs: &mut [Vec<u8>]) {
    if let Err(e) = shared.tun.send_multiple(gro, bufs, VIRTIO_NET_HDR_LEN) {
        tracing::trace!(err = %e, "writing to the TUN device failed");
    }
}

/// Sends what a session queued while its handshake was in flight.
fn drain_queue(shared: &Shared, tunn: &mut Tunn, to: SocketAddrV4, buf: &mut [u8]) {
    for _ in 0..512 {
        match tunn.decapsulate(None, &[], buf) {
            TunnResult::WriteToNetwork(p) => {
                let _ = shared.udp.send_to(p, to);
            }
            _ => return,
        }
    }
}

/// The peer a datagram belongs to: by receiver index, or for a handshake initiation by the
/// initiator's static key (after the MAC check and the rate limit: the key is found with a
/// Diffie-Hellman, which must not be free to ask for).
fn peer_of(
    shared: &Shared,
    table: &super::Table,
    dgram: &[u8],
    from: SocketAddr,
    reply: &mut [u8],
) -> Option<Arc<WgPeer>> {
    match dgram.first()? {
        1 => {
            let packet = match shared.limiter.verify_packet(Some(from.ip()), dgram, reply) {
                Ok(p) => p,
                Err(TunnResult::WriteToNetwork(cookie)) => {
                    let _ = shared.udp.send_to(cookie, from);
                    return None;
                }
                Err(_) => return None,
            };
            let Packet::HandshakeInit(init) = packet else { return None };
            let half = parse_handshake_anon(&shared.private, &shared.public, &init).ok()?;
            let peer = table.by_key.get(&half.peer_static_public).cloned();
            if peer.is_none() {
                tracing::debug!(%from, "a handshake from a key no member published");
            }
            peer
        }
        // The receiver index (ours): after the sender's in a handshake response, first in a
        // cookie reply or a data packet.
        kind @ 2..=4 => {
            let at = if *kind == 2 { 8 } else { 4 };
            let idx = u32::from_le_bytes(dgram.get(at..at + 4)?.try_into().ok()?);
            table.by_index.get(&(idx >> 8)).cloned()
        }
        _ => None,
    }
}

/// Runs every session's timers: handshake retries, rekeys, keepalives; and the handshake rate
/// limiter's window.
pub(super) fn timers(shared: Arc<Shared>) {
    let mut buf = vec![0u8; SLOT];
    let mut last_reset = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if last_reset.elapsed() >= Duration::from_secs(1) {
            shared.limiter.reset_count();
            last_reset = Instant::now();
        }
        let peers: Vec<Arc<WgPeer>> =
            shared.peers.read().unwrap_or_else(|e| e.into_inner()).by_key.values().cloned().collect();
        for p in peers {
            let to = p.endpoint();
            let mut tunn = p.tunn.lock().unwrap_or_else(|e| e.into_inner());
            if let TunnResult::WriteToNetwork(pkt) = tunn.update_timers(&mut buf) {
                let _ = shared.udp.send_to(pkt, to);
            }
        }
    }
}
