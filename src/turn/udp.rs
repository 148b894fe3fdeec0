//! UDP listener shell (RFC 8489 §6.2.1, RFC 8656 §3): receive datagrams in batches, feed the core, carry out its actions.
//!
//! One task per listening socket. Datagrams are taken off the socket up to [`mmsg::BATCH`] per system call and
//! the answers to them leave in one `sendmmsg` after the batch, which halves the CPU per Binding request on a busy
//! listener; on a quiet one a batch is simply one datagram. No per-packet allocation on the client→peer path
//! (ChannelData and Send payloads go out straight from the receive slot, batched per relay socket). The daemon binds
//! `turn.udp_workers` sockets per address with SO_REUSEPORT (`server::bind_udp_group`), each with its own task; the
//! kernel hashes a client's 4-tuple to one socket, so per-client ordering holds without any lock between them.

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::Interest;

use super::core::{Action, FiveTuple, Transport};
use super::mmsg::{self, RecvBatch, SendBatch};
use super::Shell;

/// How long a full socket send buffer may hold up the listener before the queued answers are dropped: a
/// stalled listener is worse than lost UDP answers, which clients retransmit.
const SEND_STALL: Duration = Duration::from_millis(100);

pub async fn run(shell: Arc<Shell>, socket: Arc<tokio::net::UdpSocket>) -> anyhow::Result<()> {
    let server = socket.local_addr()?;
    let mut rx = RecvBatch::new();
    let mut tx = SendBatch::default();
    let mut actions = Vec::with_capacity(8);
    let mut rest = Vec::with_capacity(8);
    let mut to_peers = Vec::with_capacity(mmsg::BATCH);
    // Pinned once; polled only when the socket is not readable (readiness first), so a busy socket does not pay
    // for (re)registering with the cancellation token on every batch.
    let cancelled = shell.shutdown.cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            biased;
            r = socket.readable() => r?,
            _ = &mut cancelled => return Ok(()),
        }
        let n = match socket.try_io(Interest::READABLE, || rx.recv(&*socket)) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            // ICMP port unreachable from an earlier send, or a signal: not the socket's fault.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => return Err(anyhow::anyhow!("STUN/TURN UDP listener udp://{server} failed: {e}")),
        };
        let now = Instant::now();
        for i in 0..n {
            let Some((pkt, client)) = rx.get(i) else {
                shell.core.count_dropped();
                continue;
            };
            let tuple = FiveTuple { client, server, transport: Transport::Udp };
            shell.core.handle(pkt, tuple, now, &mut actions);
            if actions.is_empty() {
                continue;
            }
            // Answers to clients of this socket join the batch; everything else (relay sends, relay sockets to
            // open or close, other transports) is carried out now, while `pkt` is still the packet it refers to.
            for a in actions.drain(..) {
                match a {
                    Action::ToClient { to, data } if to.transport == Transport::Udp && to.server == server => {
                        tx.push(to.client, data)
                    }
                    Action::ToPeer { relay, peer, data } => to_peers.push(ToPeer { relay, peer, slot: i, data }),
                    other => rest.push(other),
                }
            }
            if !rest.is_empty() {
                shell.execute(pkt, &mut rest).await;
            }
        }
        if !to_peers.is_empty() {
            send_to_peers(&shell, &rx, &mut to_peers).await;
        }
        if !tx.is_empty() {
            flush(&socket, &mut tx).await;
        }
    }
}

/// A relayed payload waiting for the end of the batch: `rx` slot `slot`, bytes `data`, from relay socket `relay`.
struct ToPeer {
    relay: SocketAddr,
    peer: SocketAddr,
    slot: usize,
    data: Range<usize>,
}

/// Send the batch's relayed payloads, one `sendmmsg` per relay socket (a client's burst of ChannelData all
/// leaves through its one relay), in arrival order.
async fn send_to_peers(shell: &Shell, rx: &RecvBatch, pending: &mut Vec<ToPeer>) {
    let mut group = Vec::with_capacity(pending.len());
    while let Some(first) = pending.first() {
        let relay = first.relay;
        group.clear();
        let mut i = 0;
        while i < pending.len() {
            if pending[i].relay == relay {
                let p = pending.remove(i);
                if let Some((pkt, _)) = rx.get(p.slot) {
                    if let Some(bytes) = pkt.get(p.data) {
                        group.push((p.peer, bytes));
                    }
                }
            } else {
                i += 1;
            }
        }
        let Some(sock) = shell.relays.get(&relay).map(|r| r.socket.clone()) else { continue };
        let deadline = tokio::time::Instant::now() + SEND_STALL;
        let mut sent = 0;
        while sent < group.len() {
            let rest = &group[sent..];
            match sock.try_io(Interest::WRITABLE, || mmsg::send_many(sock.as_raw_fd(), rest.len(), |k| rest[k])) {
                Ok(n) => sent += n.max(1),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if tokio::time::timeout_at(deadline, sock.writable()).await.is_err() {
                        break;
                    }
                }
                // This datagram alone was refused (e.g. the peer is unreachable): skip it, send the rest.
                Err(_) => sent += 1,
            }
        }
    }
}

/// Send the batched answers, waiting for room in the socket buffer at most [`SEND_STALL`].
async fn flush(socket: &tokio::net::UdpSocket, tx: &mut SendBatch) {
    let deadline = tokio::time::Instant::now() + SEND_STALL;
    loop {
        match socket.try_io(Interest::WRITABLE, || tx.flush(socket)) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if tokio::time::timeout_at(deadline, socket.writable()).await.is_err() {
                    tracing::debug!("UDP send buffer full for {SEND_STALL:?}: dropping queued STUN/TURN answers");
                    tx.clear();
                    return;
                }
            }
            Err(e) => {
                tracing::debug!("UDP batch send failed: {e}");
                tx.clear();
                return;
            }
        }
    }
}
