//! UDP listener shell (RFC 8489 §6.2.1, RFC 8656 §3): receive datagrams in batches, feed the core, carry out its actions.
//!
//! One task per listening socket. Datagrams are taken off the socket up to [`BATCH`](super::mmsg::BATCH) per system call and
//! the answers to them leave in one `sendmmsg` after the batch ([`Shell::flush`]), which halves the CPU per Binding request on a busy
//! listener; on a quiet one a batch is simply one datagram. No per-packet allocation on the client→peer path
//! (ChannelData and Send payloads go out straight from the receive slot, batched per relay socket). The daemon binds
//! `turn.udp_workers` sockets per address with SO_REUSEPORT (`server::bind_udp_group`), each with its own task; the
//! kernel hashes a client's 4-tuple to one socket, so per-client ordering holds without any lock between them.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::Interest;

use super::core::{FiveTuple, Transport};
use super::mmsg::RecvBatch;
use super::{Batch, Shell};

pub async fn run(shell: Arc<Shell>, socket: Arc<tokio::net::UdpSocket>) -> anyhow::Result<()> {
    let server = socket.local_addr()?;
    let mut rx = RecvBatch::new();
    let mut batch = Batch { listener: Some(server), ..Batch::default() };
    let mut actions = Vec::with_capacity(8);
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
            if !actions.is_empty() {
                // Answers to this socket's clients and relayed payloads join the batch; relay sockets to open or
                // close and other transports are dealt with now, while `pkt` is still the packet they refer to.
                batch.slot = i;
                shell.execute(pkt, &mut actions, Some(&mut batch)).await;
            }
        }
        shell.flush(&mut batch, |i| rx.get(i).map_or(&[][..], |(p, _)| p)).await;
    }
}
