//! Relay sockets (RFC 8656 §7.2 relayed transport address): one UDP socket per allocation, bound within `turn.relay_port_min..=max` on the relay address, and the task that forwards peer datagrams to the client.
//!
//! The task owns its socket and a small batch of receive slots; per datagram it asks the core (one shard
//! read-lock, one uncontended per-allocation mutex) where to send, with the header written into the slot's
//! headroom — no allocation and no async lock on the peer→client path, and one `sendmmsg` per batch.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::Interest;

use socket2::{Domain, Protocol, Socket, Type};

use super::codec::{HEADROOM, TAILROOM};
use super::core::{RelayRequest, Transport};
use super::mmsg::{self, RecvBatch};
use super::Shell;

/// Peer datagrams taken off a relay socket per system call.
const RELAY_BATCH: usize = 8;
/// Largest peer datagram relayed. Peers of browsers send at most about 1,200 bytes (WebRTC keeps under the path
/// MTU), and nothing larger crosses the internet unfragmented; a bigger datagram is truncated by the kernel,
/// flagged, and dropped rather than misread. (8 slots of this size per allocation are only backed by memory once
/// traffic has touched them.)
const RELAY_SLOT: usize = 4096;
/// How many ports to try before answering 508: random probing finds a free port quickly unless the range is
/// nearly full, and a bounded search keeps a full range from turning each Allocate into a port scan.
const BIND_ATTEMPTS: u32 = 128;

/// A live relay socket, registered in the shell so that client→peer sends find it.
pub struct Relay {
    pub socket: Arc<tokio::net::UdpSocket>,
    /// Aborting the task (allocation gone, shutdown) drops its socket handle; no per-datagram `select!`
    /// against a cancellation future is needed.
    pub task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub fn stop(&self) {
        self.task.abort();
    }
}

/// Bind a relay socket for `req`, register it and start its task. Returns the local address.
pub fn open(shell: &Arc<Shell>, req: &RelayRequest) -> io::Result<SocketAddr> {
    let std = if let Some(addr) = req.reserved {
        // RESERVATION-TOKEN: the port held since the EVEN-PORT (R=1) allocation.
        shell
            .reserved
            .remove(&addr)
            .map(|(_, s)| s)
            .ok_or_else(|| io::Error::new(io::ErrorKind::AddrNotAvailable, "reserved port no longer held"))?
    } else if req.reserve_next {
        let (even, next) = bind_pair(req.ip, shell.port_range)?;
        shell.reserved.insert(next.local_addr()?, next);
        even
    } else {
        bind_in_range(req.ip, shell.port_range, req.even_port)?
    };
    let local = std.local_addr()?;
    let socket = Arc::new(tokio::net::UdpSocket::from_std(std)?);
    let task = tokio::spawn(run(shell.clone(), socket.clone(), local));
    shell.relays.insert(local, Relay { socket, task });
    Ok(local)
}

/// Bind an even port and the port after it (EVEN-PORT with R=1, RFC 8656 §14.6), both within `range`.
pub fn bind_pair(ip: IpAddr, (min, max): (u16, u16)) -> io::Result<(std::net::UdpSocket, std::net::UdpSocket)> {
    let mut last = io::Error::new(io::ErrorKind::AddrInUse, "no free even/odd port pair in the relay range");
    for _ in 0..BIND_ATTEMPTS {
        let even = bind_in_range(ip, (min, max.saturating_sub(1)), true)?;
        let port = even.local_addr()?.port();
        match bind_port(SocketAddr::new(ip, port + 1)) {
            Ok(next) => return Ok((even, next)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Bind a UDP socket on `ip` at a random port in `range` (even if asked), trying a bounded number of ports.
pub fn bind_in_range(ip: IpAddr, (min, max): (u16, u16), even: bool) -> io::Result<std::net::UdpSocket> {
    let span = (max as u32).saturating_sub(min as u32) + 1;
    let mut last = io::Error::new(io::ErrorKind::AddrInUse, "no free port in the relay range");
    let start: u32 = rand::random::<u32>() % span;
    for i in 0..BIND_ATTEMPTS.min(span) {
        // Probe from a random start with a stride, so that concurrent allocations do not collide in order.
        let mut port = min as u32 + (start + i * 7919) % span;
        if even && port % 2 == 1 {
            port = if port < max as u32 { port + 1 } else { port - 1 };
            if port < min as u32 {
                continue;
            }
        }
        match bind_port(SocketAddr::new(ip, port as u16)) {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

fn bind_port(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Best effort: bursts from a peer should queue, not drop (capped by net.core.rmem_max).
    let _ = socket.set_recv_buffer_size(1 << 20);
    let _ = socket.set_send_buffer_size(1 << 20);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Forward datagrams from peers to the allocation's client until the allocation is closed.
///
/// Datagrams are taken off the relay socket up to [`RELAY_BATCH`] at a time (`recvmmsg`), each wrapped in place as
/// ChannelData or a Data indication, and those bound for a UDP client leave in one `sendmmsg` from the listener
/// socket: a file transfer through the relay arrives in bursts, and per-datagram system calls are what costs.
async fn run(shell: Arc<Shell>, socket: Arc<tokio::net::UdpSocket>, local: SocketAddr) {
    let mut rx = RecvBatch::with_layout(RELAY_BATCH, HEADROOM, RELAY_SLOT, TAILROOM);
    // The listener socket towards this allocation's UDP client, looked up once rather than per datagram.
    let mut out: Option<(SocketAddr, Arc<tokio::net::UdpSocket>)> = None;
    let mut ready: Vec<(usize, Range<usize>, SocketAddr)> = Vec::with_capacity(RELAY_BATCH);
    loop {
        if let Err(e) = socket.readable().await {
            tracing::warn!("TURN relay socket {local} failed: {e}");
            break;
        }
        let n = match socket.try_io(Interest::READABLE, || rx.recv(&*socket)) {
            Ok(n) => n,
            // ICMP errors from earlier sends surface here on Linux; they are not fatal for the socket.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                tracing::warn!("TURN relay socket {local} failed: {e}");
                break;
            }
        };
        let now = Instant::now();
        ready.clear();
        for i in 0..n {
            let Some((buf, len, peer)) = rx.slot_mut(i) else {
                shell.core.count_dropped();
                continue;
            };
            let Some((to, range)) = shell.core.from_peer(local, peer, buf, len, now) else { continue };
            if to.transport == Transport::Udp {
                if out.as_ref().is_none_or(|(a, _)| *a != to.server) {
                    out = shell.udp.get(&to.server).map(|s| (to.server, s.clone()));
                }
                ready.push((i, range, to.client));
            } else {
                shell.to_client(to, &buf[range]).await;
            }
        }
        if let (false, Some((_, s))) = (ready.is_empty(), &out) {
            send_batch(s, &rx, &ready).await;
        }
    }
}

/// Send the wrapped datagrams `ready` (slot, bytes, client) from the listener socket `s`, waiting for buffer room
/// a little (the client→peer path does the same) rather than dropping at the first full buffer.
async fn send_batch(s: &tokio::net::UdpSocket, rx: &RecvBatch, ready: &[(usize, Range<usize>, SocketAddr)]) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(100);
    let mut sent = 0;
    while sent < ready.len() {
        let rest = &ready[sent..];
        let item = |k: usize| (rest[k].2, &rx.slot(rest[k].0)[rest[k].1.clone()]);
        match s.try_io(Interest::WRITABLE, || mmsg::send_many(s.as_raw_fd(), rest.len(), item)) {
            Ok(n) => sent += n.max(1),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if tokio::time::timeout_at(deadline, s.writable()).await.is_err() {
                    return;
                }
            }
            Err(_) => sent += 1,
        }
    }
}
