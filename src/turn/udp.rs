//! UDP listener shell (RFC 8489 §6.2.1, RFC 8656 §3): receive datagrams in batches, feed the core, carry out its actions.
//!
//! One task per listening socket. Datagrams are taken off the socket up to [`mmsg::BATCH`] per system call and
//! the answers to them leave in one `sendmmsg` after the batch, which halves the CPU per Binding request on a busy
//! listener; on a quiet one a batch is simply one datagram. No per-packet allocation on the client→peer path
//! (ChannelData and Send payloads go out straight from the receive slot). The daemon binds the socket with 4 MiB
//! buffers (`server::bind_udp`). SO_REUSEPORT sharding (one socket and task per core) would go here; one task per
//! socket keeps per-5-tuple ordering trivial.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::Interest;

use super::core::{Action, FiveTuple, Transport};
use super::mmsg::{RecvBatch, SendBatch};
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
                    other => rest.push(other),
                }
            }
            if !rest.is_empty() {
                shell.execute(pkt, &mut rest).await;
            }
        }
        if !tx.is_empty() {
            flush(&socket, &mut tx).await;
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
