//! UDP listener shell (RFC 8489 §6.2.1, RFC 8656 §3): receive datagrams, feed the core, carry out its actions.
//!
//! One task per listening socket with one reused receive buffer and action vector: no per-packet allocation on
//! the client→peer path (ChannelData and Send payloads are sent straight from the receive buffer).
//! The daemon binds the socket with 4 MiB buffers (`server::bind_udp`). SO_REUSEPORT sharding (one socket and
//! task per core) would go here; with the appliance's typical 1–4 cores a single task per socket keeps up
//! (see `examples/bench-turn.rs`) and keeps per-5-tuple ordering trivially.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use super::core::{FiveTuple, Transport};
use super::Shell;

pub async fn run(shell: Arc<Shell>, socket: Arc<tokio::net::UdpSocket>) -> anyhow::Result<()> {
    let server = socket.local_addr()?;
    let mut buf = vec![0u8; 65536];
    let mut actions = Vec::with_capacity(8);
    // Pinned once; polled only when no datagram is ready (receive first), so a busy socket does not pay for
    // (re)registering with the cancellation token on every packet.
    let cancelled = shell.shutdown.cancelled();
    tokio::pin!(cancelled);
    loop {
        let r = tokio::select! {
            biased;
            r = socket.recv_from(&mut buf) => r,
            _ = &mut cancelled => return Ok(()),
        };
        match r {
            Ok((n, client)) => {
                let tuple = FiveTuple { client, server, transport: Transport::Udp };
                shell.core.handle(&buf[..n], tuple, Instant::now(), &mut actions);
                if !actions.is_empty() {
                    shell.execute(&buf[..n], &mut actions).await;
                }
            }
            // ICMP port unreachable from an earlier send, or a signal: not the socket's fault.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(anyhow::anyhow!("STUN/TURN UDP listener udp://{server} failed: {e}")),
        }
    }
}
