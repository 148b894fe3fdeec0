//! TCP listener shell (RFC 8656 §3.1, framing §11.5): accept connections and split each byte stream into STUN messages and 4-byte-padded ChannelData frames.
//!
//! [`serve_stream`] is generic over the reader/writer halves so that TURN over TLS (`turns:`) only has to
//! wrap the accepted stream and call it with `Transport::Tcp` framing.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
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
/// Bytes queued towards a slow client before new frames are dropped: a client that allocates, points a peer
/// at its relay and stops reading would otherwise make the server hold 1,024 frames of up to 4 KiB each per
/// connection (and `turn.max_tcp_connections_per_ip` connections per source). The kernel's socket buffer comes on
/// top of this; a reading client never comes near it.
pub(crate) const QUEUE_BYTES: usize = 256 * 1024;

/// The sending half of a TCP/TLS client's queue, bounded in frames and in bytes.
#[derive(Clone)]
pub(crate) struct StreamTx {
    tx: mpsc::Sender<bytes::Bytes>,
    queued: Arc<AtomicUsize>,
}

/// The writer task's half: frames in order; [`StreamRx::written`] gives their bytes back to the budget.
pub(crate) struct StreamRx {
    rx: mpsc::Receiver<bytes::Bytes>,
    queued: Arc<AtomicUsize>,
}

pub(crate) fn stream_queue() -> (StreamTx, StreamRx) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let queued = Arc::new(AtomicUsize::new(0));
    (StreamTx { tx, queued: queued.clone() }, StreamRx { rx, queued })
}

impl StreamTx {
    /// Queue a frame; `false` (dropped) when [`QUEUE`] frames or [`QUEUE_BYTES`] bytes are already waiting.
    pub fn send(&self, data: &[u8]) -> bool {
        let n = data.len();
        if self.queued.fetch_add(n, Ordering::Relaxed) + n > QUEUE_BYTES {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        if self.tx.try_send(bytes::Bytes::copy_from_slice(data)).is_err() {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        true
    }
}

impl StreamRx {
    async fn recv(&mut self) -> Option<bytes::Bytes> {
        self.rx.recv().await
    }

    /// A frame of `n` bytes left for the socket.
    fn written(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
    }
}

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
    let (tx, mut rx) = stream_queue();
    shell.streams.insert(tuple, tx);
    let writer = async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
            rx.written(b.len());
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
                            shell.execute(frame, &mut actions, None);
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
    shell.execute(&[], &mut actions, None);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that stops reading costs at most QUEUE_BYTES of queued frames (before: 1,024 frames whatever
    /// their size, up to 4 MiB of relayed datagrams), and the budget comes back as frames are written.
    #[tokio::test]
    async fn the_send_queue_is_bounded_in_bytes_and_refills_as_frames_leave() {
        let (tx, mut rx) = stream_queue();
        let frame = vec![7u8; 4000];
        let queued = (0..QUEUE).take_while(|_| tx.send(&frame)).count();
        assert_eq!(queued, QUEUE_BYTES / 4000, "frames of 4000 bytes that fit in the byte budget");
        assert!(!tx.send(&frame));
        let b = rx.recv().await.unwrap();
        assert!(!tx.send(&frame), "still counted until written");
        rx.written(b.len());
        assert!(tx.send(&frame));
        // Small frames are bounded by count.
        let (tx, _rx) = stream_queue();
        assert_eq!((0..QUEUE + 10).take_while(|_| tx.send(&[1u8; 20])).count(), QUEUE);
    }
}
