//! UDP with segmentation offload: one `sendmsg` carries many equal-size datagrams (UDP GSO,
//! `UDP_SEGMENT`) and one `recvmsg` returns many coalesced ones (UDP GRO), so the encrypted
//! transport pays one system call per ~44 packets instead of one each.

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg, sendmsg, setsockopt, sockopt,
};
use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

/// The most bytes one GSO send may carry (a UDP datagram's limit).
pub(crate) const MAX_GSO_BYTES: usize = 65_000;
/// The most segments one GSO send may carry (the kernel's UDP_MAX_SEGMENTS is 64 on older
/// kernels).
pub(crate) const MAX_GSO_SEGMENTS: usize = 64;

/// Turns on GRO for `sock` (false when the kernel refuses: datagrams then come one by one).
pub(crate) fn enable_gro(sock: &UdpSocket) -> bool {
    setsockopt(sock, sockopt::UdpGroSegment, &true).is_ok()
}

/// The socket buffers: wireguard-go's 7 MiB. The default (~200 KiB) holds ~140 full-size
/// datagrams, which a burst from one GSO send or two fills while the receiving thread decrypts
/// the last one; the kernel then drops datagrams and the TCP inside retransmits (10% of a
/// single stream's bytes were sent twice before this).
pub(crate) const SOCKET_BUFFER: usize = 7 << 20;

/// Sizes the socket's buffers to [`SOCKET_BUFFER`]: past `net.core.[rw]mem_max` as root (the
/// `FORCE` options), else as far as the limits allow.
pub(crate) fn size_buffers(sock: &UdpSocket) {
    if setsockopt(sock, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(sock, sockopt::RcvBuf, &SOCKET_BUFFER);
    }
    if setsockopt(sock, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(sock, sockopt::SndBuf, &SOCKET_BUFFER);
    }
}

/// Sends `buf`, made of datagrams of `seg` bytes (the last may be shorter), to `to`.
pub(crate) fn send_segments(sock: &UdpSocket, buf: &[u8], seg: usize, to: SocketAddrV4) -> std::io::Result<()> {
    if buf.len() <= seg {
        sock.send_to(buf, to)?;
        return Ok(());
    }
    let addr = SockaddrIn::from(to);
    let seg16 = u16::try_from(seg).unwrap_or(u16::MAX);
    let cmsg = [ControlMessage::UdpGsoSegments(&seg16)];
    match sendmsg(sock.as_raw_fd(), &[IoSlice::new(buf)], &cmsg, MsgFlags::empty(), Some(&addr)) {
        Ok(_) => Ok(()),
        // No GSO (an old kernel, a device without checksum offload): one by one.
        Err(nix::errno::Errno::EIO | nix::errno::Errno::EINVAL | nix::errno::Errno::EOPNOTSUPP) => {
            for d in buf.chunks(seg) {
                sock.send_to(d, to)?;
            }
            Ok(())
        }
        Err(e) => Err(std::io::Error::from(e)),
    }
}

/// Receives into `buf`: (bytes, sender, segment size). With GRO, `buf` may hold many
/// datagrams of `segment size` bytes each (the last may be shorter). `wait`: block (up to
/// the socket's timeout) rather than answer `WouldBlock` at once.
#[allow(clippy::ptr_arg)] // nix's recvmsg wants the Vec itself for the control buffer
pub(crate) fn recv_segments(
    sock: &UdpSocket,
    buf: &mut [u8],
    cmsg: &mut Vec<u8>,
    wait: bool,
) -> std::io::Result<(usize, SocketAddr, usize)> {
    let mut iov = [IoSliceMut::new(buf)];
    let flags = if wait { MsgFlags::empty() } else { MsgFlags::MSG_DONTWAIT };
    let msg = recvmsg::<SockaddrIn>(sock.as_raw_fd(), &mut iov, Some(cmsg), flags).map_err(std::io::Error::from)?;
    let n = msg.bytes;
    let mut seg = n;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::UdpGroSegments(s) = c
                && s > 0
            {
                seg = s as usize;
            }
        }
    }
    let from = msg.address.map(|a| SocketAddr::V4(SocketAddrV4::new(a.ip(), a.port())));
    let from = from.ok_or_else(|| std::io::Error::other("a datagram without a sender address"))?;
    Ok((n, from, seg))
}

/// Room for the GRO control message.
pub(crate) fn cmsg_buffer() -> Vec<u8> {
    nix::cmsg_space!(i32)
}
