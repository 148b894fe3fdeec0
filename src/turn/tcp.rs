//! TCP listener shell (RFC 8656 §3.1, framing §11.5): accept connections and split each byte stream into STUN messages and 4-byte-padded ChannelData frames.
//!
//! [`serve_stream`] is generic over the reader/writer halves so that TURN over TLS (`turns:`) only has to
//! wrap the accepted stream and call it with `Transport::Tcp` framing.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::codec;
use super::core::{source_of, FiveTuple, Transport};
use super::Shell;

/// A connection with an allocation that sends nothing for this long is closed. Live TURN clients refresh
/// permissions every < 300 s, so only idle or stuck (half-frame) connections hit it. Connections without an
/// allocation get `turn.tcp_setup_timeout_secs` instead.
const IDLE: Duration = Duration::from_secs(400);
/// Largest frame: a STUN header plus 65535, or a padded ChannelData of 65535.
const MAX_FRAME: usize = 20 + 65536;
/// Read buffer a connection starts with, enough for any frame a browser sends (STUN requests, ChannelData
/// under the path MTU). It grows up to [`MAX_FRAME`] only while a larger frame is arriving, so an idle
/// connection does not hold 64 KiB.
const INITIAL_BUF: usize = 4096;
/// Frames queued towards a slow client before new ones are dropped.
const QUEUE: usize = 1024;

pub async fn run(shell: Arc<Shell>, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    let server = listener.local_addr()?;
    loop {
        let r = tokio::select! {
            biased;
            _ = shell.shutdown.cancelled() => return Ok(()),
            r = listener.accept() => r,
        };
        match r {
            Ok((stream, client)) => {
                let _ = stream.set_nodelay(true);
                let (rd, wr) = stream.into_split();
                tokio::spawn(serve_stream(shell.clone(), rd, wr, client, server));
            }
            Err(e) => {
                // Out of file descriptors or an aborted handshake: back off briefly, keep listening.
                tracing::warn!("STUN/TURN tcp://{server}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serve one client byte stream until it closes, errors, idles out or sends something that is not STUN/TURN.
/// The client's allocation (if any) is deleted when the stream ends.
pub async fn serve_stream<R, W>(shell: Arc<Shell>, mut rd: R, mut wr: W, client: SocketAddr, server: SocketAddr)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let tuple = FiveTuple { client, server, transport: Transport::Tcp };
    let Some(_counted) = SourceSlot::take(&shell, client) else {
        tracing::debug!(%client, "TURN/TCP: too many connections from this source (turn.max_tcp_connections_per_ip); closing");
        return;
    };
    let (tx, mut rx) = mpsc::channel::<bytes::Bytes>(QUEUE);
    shell.streams.insert(tuple, tx);
    let writer = async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    let reader = async {
        let mut buf = vec![0u8; INITIAL_BUF];
        let mut filled = 0;
        let mut actions = Vec::with_capacity(8);
        loop {
            // Hand every complete frame in the buffer to the core.
            let mut start = 0;
            loop {
                match codec::tcp_frame_len(&buf[start..filled]) {
                    Ok(Some(n)) => {
                        let frame = &buf[start..start + n];
                        shell.core.handle(frame, tuple, Instant::now(), &mut actions);
                        if !actions.is_empty() {
                            shell.execute(frame, &mut actions, None).await;
                        }
                        start += n;
                    }
                    Ok(None) => break,
                    Err(codec::Malformed) => {
                        tracing::debug!(%client, "TURN/TCP: not a STUN/ChannelData stream; closing");
                        return;
                    }
                }
            }
            buf.copy_within(start..filled, 0);
            filled -= start;
            if filled == buf.len() {
                // A frame larger than the buffer is arriving (tcp_frame_len caps frames at MAX_FRAME).
                buf.resize((buf.len() * 2).min(MAX_FRAME), 0);
            } else if filled == 0 && buf.len() > INITIAL_BUF {
                buf = vec![0u8; INITIAL_BUF];
            }
            let idle = if shell.core.has_allocation(&tuple) { IDLE } else { shell.core.tcp_setup_timeout() };
            match tokio::time::timeout(idle, rd.read(&mut buf[filled..])).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
                Ok(Ok(n)) => filled += n,
            }
        }
    };
    tokio::select! {
        _ = reader => {}
        _ = writer => {}
        _ = shell.shutdown.cancelled() => {}
    }
    shell.streams.remove(&tuple);
    let mut actions = Vec::new();
    shell.core.client_closed(tuple, &mut actions);
    shell.execute(&[], &mut actions, None).await;
}

/// One open connection counted against its source's `turn.max_tcp_connections_per_ip`; dropping it gives the
/// place back (and removes the source's entry at zero, so the table only holds sources with connections).
struct SourceSlot {
    shell: Arc<Shell>,
    source: IpAddr,
}

impl SourceSlot {
    fn take(shell: &Arc<Shell>, client: SocketAddr) -> Option<SourceSlot> {
        let source = source_of(client.ip());
        let max = shell.core.limits().max_tcp_connections_per_source;
        let mut map = shell.tcp_per_source.lock();
        let n = map.entry(source).or_default();
        if *n >= max {
            if *n == 0 {
                map.remove(&source);
            }
            return None;
        }
        *n += 1;
        Some(SourceSlot { shell: shell.clone(), source })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut map = self.shell.tcp_per_source.lock();
        if let Some(n) = map.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.source);
            }
        }
    }
}
