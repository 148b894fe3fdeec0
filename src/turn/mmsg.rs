//! Batched UDP I/O for the STUN/TURN listener: `recvmmsg(2)`/`sendmmsg(2)` move up to [`BATCH`] datagrams per system call.
//!
//! On a busy listener the per-datagram cost is dominated by system-call entry and exit, not by STUN parsing;
//! receiving a whole queue at once and sending the answers in one call roughly halves the server's CPU per
//! request. Linux system calls (ponte targets Linux).

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

/// Datagrams per system call. 32 drains a typical queue on a busy socket; larger batches only add latency
/// for the first datagram of the batch.
pub const BATCH: usize = 32;
/// Bytes per receive slot. STUN/TURN over UDP must fit the path MTU (browsers stay under ~1,300 bytes); a larger
/// datagram is truncated by the kernel, flagged, and dropped as garbage rather than misread.
pub const SLOT: usize = 4096;

/// Receive side: up to `BATCH` slots with their source addresses. Each slot may keep room before and after the
/// datagram (relay sockets write the Data/ChannelData header in front of the payload in place).
pub struct RecvBatch {
    bufs: Vec<u8>,
    count: usize,
    head: usize,
    slot: usize,
    stride: usize,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// Datagrams filled by the last `recv`.
    filled: usize,
}

// SAFETY: the raw pointers inside `iovs`/`hdrs` point into this struct's own heap buffers, are rebuilt before
// every system call and are only dereferenced (by the kernel) inside `recv(&mut self)`; through `&self` only plain
// data (bytes, lengths, addresses) is read.
unsafe impl Send for RecvBatch {}
unsafe impl Sync for RecvBatch {}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    /// `BATCH` slots of `SLOT` bytes, no room around them.
    pub fn new() -> Self {
        Self::with_layout(BATCH, 0, SLOT, 0)
    }

    /// `count` slots (at most `BATCH`) of `slot` bytes, each with `head` bytes before and `tail` after.
    pub fn with_layout(count: usize, head: usize, slot: usize, tail: usize) -> Self {
        let count = count.clamp(1, BATCH);
        let stride = head + slot + tail;
        // SAFETY: all-zero is a valid value for these plain C structs.
        let zeroed = || unsafe { std::mem::zeroed() };
        RecvBatch {
            // Zeroed pages are only backed by memory once a datagram is written into them.
            bufs: vec![0; count * stride],
            count,
            head,
            slot,
            stride,
            addrs: (0..count).map(|_| zeroed()).collect(),
            iovs: (0..count).map(|_| libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }).collect(),
            hdrs: (0..count).map(|_| unsafe { std::mem::zeroed() }).collect(),
            filled: 0,
        }
    }

    /// Receive up to `count` datagrams without blocking. `WouldBlock` when none is queued.
    pub fn recv(&mut self, fd: &impl AsRawFd) -> io::Result<usize> {
        self.filled = 0;
        let n = self.recv_raw(fd.as_raw_fd())?;
        self.filled = n;
        Ok(n)
    }

    fn recv_raw(&mut self, fd: RawFd) -> io::Result<usize> {
        let base = self.bufs.as_mut_ptr();
        for i in 0..self.count {
            // SAFETY: `i * stride + head + slot <= bufs.len()`.
            let at = unsafe { base.add(i * self.stride + self.head) };
            self.iovs[i] = libc::iovec { iov_base: at.cast(), iov_len: self.slot };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at live, correctly sized buffers owned by `self`, which is borrowed
        // mutably for the duration of the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                self.count as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Datagram `i` of the last `recv`: its bytes and source, or `None` if it was truncated or came from an
    /// address family we do not serve.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        let (len, from) = self.meta(i)?;
        let at = i * self.stride + self.head;
        Some((&self.bufs[at..at + len], from))
    }

    /// Like [`get`](Self::get), but the whole slot with its room around the datagram (which starts at `head`):
    /// the slot, the datagram's length, its source.
    pub fn slot_mut(&mut self, i: usize) -> Option<(&mut [u8], usize, SocketAddr)> {
        let (len, from) = self.meta(i)?;
        let at = i * self.stride;
        Some((&mut self.bufs[at..at + self.stride], len, from))
    }

    /// Slot `i` as [`slot_mut`](Self::slot_mut) left it.
    /// Datagrams one `recv` can take.
    pub fn capacity(&self) -> usize {
        self.count
    }

    pub fn slot(&self, i: usize) -> &[u8] {
        &self.bufs[i * self.stride..(i + 1) * self.stride]
    }

    fn meta(&self, i: usize) -> Option<(usize, SocketAddr)> {
        if i >= self.filled || self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        Some(((self.hdrs[i].msg_len as usize).min(self.slot), from_storage(&self.addrs[i])?))
    }
}

/// Send side: datagrams queued with [`SendBatch::push`] and sent together by [`SendBatch::flush`].
#[derive(Default)]
pub struct SendBatch {
    /// Send runs to one destination as UDP GSO messages ([`send_segmented`]) instead of one datagram each.
    pub segmented: bool,
    queue: Vec<(SocketAddr, Vec<u8>)>,
    /// Index of the first datagram not yet sent.
    sent: usize,
}

impl SendBatch {
    /// A batch that sends runs to one destination as UDP GSO messages ([`send_segmented`]).
    pub fn segmented(on: bool) -> Self {
        SendBatch { segmented: on, ..Default::default() }
    }

    pub fn push(&mut self, to: SocketAddr, data: Vec<u8>) {
        self.queue.push((to, data));
    }

    pub fn is_empty(&self) -> bool {
        self.sent >= self.queue.len()
    }

    pub fn clear(&mut self) {
        self.queue.clear();
        self.sent = 0;
    }

    /// Send what is queued without blocking. `Ok` when everything left the socket (datagrams the kernel refused
    /// outright, e.g. an unreachable destination, are skipped: UDP gives no delivery promise anyway);
    /// `WouldBlock` when the socket buffer is full, with the rest still queued for the next call.
    pub fn flush(&mut self, fd: &impl AsRawFd) -> io::Result<()> {
        let fd = fd.as_raw_fd();
        while self.sent < self.queue.len() {
            match self.send_some(fd) {
                Ok(n) => self.sent += n.max(1),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // The first datagram of the call failed on its own (EMSGSIZE, ENETUNREACH, EACCES...).
                    tracing::trace!("UDP send to {} failed: {e}", self.queue[self.sent].0);
                    self.sent += 1;
                }
            }
        }
        self.clear();
        Ok(())
    }

    fn send_some(&mut self, fd: RawFd) -> io::Result<usize> {
        let pending = &self.queue[self.sent..];
        let item = |i: usize| (pending[i].0, &pending[i].1[..]);
        if self.segmented {
            send_segmented(fd, pending.len().min(BATCH), item)
        } else {
            send_many(fd, pending.len().min(BATCH), item)
        }
    }
}

/// Send datagrams `0..n` (at most [`BATCH`]), each given by `item(i)` as destination and bytes, in one
/// `sendmmsg` without blocking. Returns how many left; `Err` only when the first one could not.
pub fn send_many<'a>(fd: RawFd, n: usize, item: impl Fn(usize) -> (SocketAddr, &'a [u8])) -> io::Result<usize> {
    let n = n.min(BATCH);
    // Only the `n` entries used are initialised: zeroing the whole arrays (6.6 KB) was ~12 % of the user-space
    // instructions per Binding answer (callgrind, docs/benchmarks.md), the batch being one datagram when not busy.
    let mut addrs = [const { MaybeUninit::<libc::sockaddr_storage>::uninit() }; BATCH];
    let mut iovs = [const { MaybeUninit::<libc::iovec>::uninit() }; BATCH];
    let mut hdrs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; BATCH];
    for i in 0..n {
        let (to, data) = item(i);
        let (addr, len) = storage(to, &mut addrs[i]);
        let iov = iovs[i].write(libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() });
        // SAFETY: all-zero is a valid mmsghdr (no name, no iovec, no control data).
        let h = hdrs[i].write(unsafe { std::mem::zeroed() });
        h.msg_hdr.msg_name = addr.cast();
        h.msg_hdr.msg_namelen = len;
        h.msg_hdr.msg_iov = iov;
        h.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: the first `n` headers are initialised and point at the stack arrays above and at the caller's buffers
    // (borrowed for 'a, so alive across the call); the kernel reads only those `n` and the data buffers.
    let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr().cast(), n as libc::c_uint, libc::MSG_DONTWAIT) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as usize)
}

/// Most bytes one GSO message may carry: a UDP datagram's payload limit (65 507 for IPv4) with room to spare.
const GSO_MAX_BYTES: usize = 64_000;
/// Segments per GSO message: the kernel's UDP_MAX_SEGMENTS is 64 on older kernels (128 since 6.x).
const GSO_MAX_SEGMENTS: usize = 64;

/// UDP GSO on or off for this process: on unless `PONTE_UDP_GSO=0` (for A/B measurements, see
/// docs/benchmarks.md) or a device refused it once (`EIO`, as quinn-udp does: the route's device cannot checksum
/// segmented datagrams).
static GSO_DISABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static GSO_ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Whether [`send_segmented`] may coalesce datagrams with UDP GSO.
pub fn gso_enabled() -> bool {
    !GSO_DISABLED.load(std::sync::atomic::Ordering::Relaxed)
        && *GSO_ENV.get_or_init(|| std::env::var("PONTE_UDP_GSO").map_or(true, |v| v != "0"))
}

/// Like [`send_many`], but runs of consecutive datagrams to the same destination with the same length (the last of
/// a run may be shorter) leave as **one** message with a `UDP_SEGMENT` control message (UDP GSO, Linux 4.18+):
/// the kernel builds one large datagram, routes it and walks the IP stack once, and cuts it into the original
/// datagrams only at the device (or, on loopback, at the receiving socket). The relay's two directions are made of
/// such runs: a batch of ChannelData from one client to its peer, a batch of the peer's datagrams back to the client.
/// Different destinations still share one `sendmmsg`. Returns how many *datagrams* left (a GSO message counts as
/// its segments); `Err` only when the first could not. When the kernel refuses a GSO message (`EIO`: the device
/// cannot do it, then GSO stays off for the process; `EINVAL`/`EMSGSIZE`: e.g. a segment larger than the path
/// MTU), the same datagrams are sent again one message each, so nothing is lost to the optimisation.
pub fn send_segmented<'a>(fd: RawFd, n: usize, item: impl Fn(usize) -> (SocketAddr, &'a [u8])) -> io::Result<usize> {
    let n = n.min(BATCH);
    if n < 2 || !gso_enabled() {
        return send_many(fd, n, item);
    }
    // Group items into messages: (first item, items in the message).
    let mut msgs: [(usize, usize); BATCH] = [(0, 0); BATCH];
    let mut m = 0;
    let mut i = 0;
    let mut coalesced = false;
    while i < n {
        let (to, first) = item(i);
        let seg = first.len();
        let mut k = 1;
        if let Some(cap) = GSO_MAX_BYTES.checked_div(seg) {
            let cap = cap.min(GSO_MAX_SEGMENTS);
            while i + k < n && k < cap {
                let (t, d) = item(i + k);
                if t != to || d.len() > seg || d.is_empty() {
                    break;
                }
                k += 1;
                if d.len() < seg {
                    break; // a shorter datagram can only end a run
                }
            }
        }
        coalesced |= k > 1;
        msgs[m] = (i, k);
        m += 1;
        i += k;
    }
    if !coalesced {
        return send_many(fd, n, item);
    }
    // As in `send_many`: only the entries used are initialised.
    let mut addrs = [const { MaybeUninit::<libc::sockaddr_storage>::uninit() }; BATCH];
    let mut iovs = [const { MaybeUninit::<libc::iovec>::uninit() }; BATCH];
    let mut hdrs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; BATCH];
    // One control buffer per message: CMSG_SPACE(sizeof(u16)) is 24 bytes on 64-bit Linux; u64 for alignment.
    let mut ctrl = [[0u64; 4]; BATCH];
    for (j, iov) in iovs.iter_mut().enumerate().take(n) {
        let (_, data) = item(j);
        iov.write(libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() });
    }
    for (j, &(first, k)) in msgs[..m].iter().enumerate() {
        let (to, data) = item(first);
        let (addr, len) = storage(to, &mut addrs[j]);
        // SAFETY: all-zero is a valid mmsghdr.
        let h = &mut hdrs[j].write(unsafe { std::mem::zeroed() }).msg_hdr;
        h.msg_name = addr.cast();
        h.msg_namelen = len;
        // Items `first..first + k` were initialised in the loop above.
        h.msg_iov = iovs[first].as_mut_ptr();
        h.msg_iovlen = k as _;
        if k > 1 {
            // SAFETY: the control buffer is 32 bytes, 8-aligned, more than CMSG_SPACE(2); CMSG_FIRSTHDR of a
            // msghdr whose control length covers one header returns a pointer into that buffer.
            unsafe {
                h.msg_control = ctrl[j].as_mut_ptr().cast();
                h.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as _;
                let c = libc::CMSG_FIRSTHDR(h);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = libc::UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), data.len() as u16);
            }
        }
    }
    // SAFETY: the headers point at the stack arrays above and at the caller's buffers (borrowed for 'a, so alive
    // across the call); the kernel only reads them.
    let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr().cast(), m as libc::c_uint, libc::MSG_DONTWAIT) };
    if r > 0 {
        return Ok(msgs[..r as usize].iter().map(|&(_, k)| k).sum());
    }
    let e = if r < 0 { io::Error::last_os_error() } else { io::Error::from(io::ErrorKind::WriteZero) };
    let (_, k) = msgs[0];
    match e.raw_os_error() {
        Some(code) if k > 1 && matches!(code, libc::EIO | libc::EINVAL | libc::EMSGSIZE) => {
            if code == libc::EIO {
                GSO_DISABLED.store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::info!("UDP GSO refused by the kernel ({e}); sending one datagram per message from now on");
            }
            // The first run again, without GSO; the caller goes on with the rest.
            send_many(fd, k, item)
        }
        _ => Err(e),
    }
}

fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in here (family AF_INET); storage is large and aligned enough.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// `addr` written into the uninitialised `slot` (only the bytes of its family's struct, zeroed first, rather than
/// all 128 of a sockaddr_storage): a pointer for `msg_name` and its length.
fn storage(
    addr: SocketAddr,
    slot: &mut MaybeUninit<libc::sockaddr_storage>,
) -> (*mut libc::sockaddr_storage, libc::socklen_t) {
    let p = slot.as_mut_ptr();
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in; the kernel reads `len` bytes,
            // all written here.
            unsafe {
                let out = p.cast::<libc::sockaddr_in>();
                out.write(std::mem::zeroed());
                (*out).sin_family = libc::AF_INET as libc::sa_family_t;
                (*out).sin_port = a.port().to_be();
                (*out).sin_addr = libc::in_addr { s_addr: u32::from(*a.ip()).to_be() };
            }
            (p, std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            unsafe {
                let out = p.cast::<libc::sockaddr_in6>();
                out.write(std::mem::zeroed());
                (*out).sin6_family = libc::AF_INET6 as libc::sa_family_t;
                (*out).sin6_port = a.port().to_be();
                (*out).sin6_flowinfo = a.flowinfo();
                (*out).sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
                (*out).sin6_scope_id = a.scope_id();
            }
            (p, std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn a_queue_of_datagrams_arrives_in_one_batch_with_sources_and_answers_leave_in_one() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = server.local_addr().unwrap();
        for i in 0..40u8 {
            let s = if i % 2 == 0 { &a } else { &b };
            s.send_to(&vec![i; 1 + i as usize], to).unwrap();
        }
        let mut rb = RecvBatch::new();
        let mut got = Vec::new();
        while got.len() < 40 {
            let n = rb.recv(&server).unwrap();
            assert!(n <= BATCH);
            for i in 0..n {
                let (data, from) = rb.get(i).unwrap();
                got.push((data.to_vec(), from));
            }
        }
        assert!(matches!(rb.recv(&server), Err(e) if e.kind() == io::ErrorKind::WouldBlock));
        for (i, (data, from)) in got.iter().enumerate() {
            assert_eq!(data, &vec![i as u8; 1 + i]);
            assert_eq!(*from, if i % 2 == 0 { a.local_addr().unwrap() } else { b.local_addr().unwrap() });
        }

        let mut sb = SendBatch::default();
        for (data, from) in got {
            sb.push(from, data);
        }
        sb.flush(&server).unwrap();
        assert!(sb.is_empty());
        a.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 64];
        for i in (0..40).step_by(2) {
            let n = a.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &vec![i as u8; 1 + i][..]);
        }
    }

    #[test]
    fn runs_to_one_destination_leave_segmented_and_arrive_as_the_original_datagrams() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (ta, tb) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        // Five of 104 bytes to a, a shorter one ending the run, two to b, one to a again, one longer to a.
        let mut out: Vec<(SocketAddr, Vec<u8>)> = (0..5u8).map(|i| (ta, vec![i; 104])).collect();
        out.push((ta, vec![5; 40]));
        out.push((tb, vec![6; 104]));
        out.push((tb, vec![7; 104]));
        out.push((ta, vec![8; 104]));
        out.push((ta, vec![9; 300]));
        let n = send_segmented(server.as_raw_fd(), out.len(), |k| (out[k].0, &out[k].1[..])).unwrap();
        assert_eq!(n, out.len(), "every datagram counted as sent");
        assert!(gso_enabled(), "the kernel took the segmented messages (EIO would have turned GSO off)");
        for (s, want) in [(&a, vec![0u8, 1, 2, 3, 4, 5, 8, 9]), (&b, vec![6, 7])] {
            s.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 2048];
            for w in want {
                let (len, from) = s.recv_from(&mut buf).unwrap();
                assert_eq!(from, server.local_addr().unwrap());
                let expect = out.iter().find(|o| o.1[0] == w).unwrap();
                assert_eq!(&buf[..len], &expect.1[..], "datagram {w} intact and in order");
            }
        }
    }

    #[test]
    fn slots_keep_room_around_each_datagram() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        for m in [&b"first"[..], b"second!"] {
            c.send_to(m, server.local_addr().unwrap()).unwrap();
        }
        let mut rb = RecvBatch::with_layout(4, 48, 64, 4);
        let mut got = 0;
        while got < 2 {
            let n = match rb.recv(&server) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("{e}"),
            };
            for i in 0..n {
                let (slot, len, from) = rb.slot_mut(i).unwrap();
                assert_eq!(slot.len(), 48 + 64 + 4);
                assert_eq!(from, c.local_addr().unwrap());
                let want: &[u8] = if got == 0 { b"first" } else { b"second!" };
                assert_eq!(&slot[48..48 + len], want);
                slot[47] = 0xAA; // a header written in front, in place
                assert_eq!(rb.slot(i)[47], 0xAA);
                assert_eq!(rb.get(i).unwrap().0, want);
                got += 1;
            }
        }
    }

    #[test]
    fn oversized_datagrams_are_flagged_not_misread_and_unreachable_sends_are_skipped() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.send_to(&vec![7u8; SLOT + 100], server.local_addr().unwrap()).unwrap();
        c.send_to(b"ok", server.local_addr().unwrap()).unwrap();
        let mut rb = RecvBatch::new();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            match rb.recv(&server) {
                Ok(n) => (0..n).for_each(|i| seen.push(rb.get(i).map(|(d, _)| d.to_vec()))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(seen, vec![None, Some(b"ok".to_vec())]);

        // An IPv6 destination on an IPv4 socket fails by itself; the datagram after it still goes out.
        let mut sb = SendBatch::default();
        sb.push("[::1]:9".parse().unwrap(), b"nope".to_vec());
        sb.push(c.local_addr().unwrap(), b"yes".to_vec());
        sb.flush(&server).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 16];
        let n = c.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"yes");
    }
}
