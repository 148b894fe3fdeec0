//! One task per WebSocket: reads frames, enforces the per-connection limits, hands messages to the hub, writes
//! the outbox, pings, and closes with the contract's codes.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::hub::{
    push, Applied, ConnCtl, ConnHandle, Proving, CLOSE_ID_CLASH, CLOSE_RESUMED, CLOSE_SLOW, CLOSE_TAKEN_OVER,
};
use super::identity::PublicKey;
use super::ids::Id;
use super::protocol::{self, ErrorCode, ParseError, ServerMsg};
use super::stats::Stats;
use super::{ice, Hub};
use crate::config::Config;
use crate::limits::{source_key, Slot, TokenBucket};

/// The byte stream under a WebSocket: whatever the HTTP layer upgraded (signaling knows no HTTP library).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

pub type Ws = WebSocketStream<Box<dyn Io>>;

/// Messages queued for one client before it counts as too slow and is disconnected. Each slot is one message
/// (at most `max_message_bytes`), so this bounds a stuck client's memory.
pub const OUTBOX: usize = 256;
/// `hello` must arrive within this time (contract: 10 s).
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Minimum byte budget of the outbox (it is at least four maximum-size messages).
const OUTBOX_BYTES: usize = 256 * 1024;
/// A write that makes no progress for this long means the client stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing handshake may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the upgrade learnt about the client.
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// The live config when the connection was accepted: its limits hold for the connection's lifetime.
    pub cfg: Arc<Config>,
    /// Host for ponte's own ICE URLs (see `ice::host_for`).
    pub ice_host: Option<String>,
}

/// How the read loop ended.
enum End {
    /// The socket is gone (EOF, I/O or protocol error, or the client's close handshake).
    Gone,
    /// We close with this code and reason, after flushing the outbox when `flush` is set.
    Close { code: u16, reason: &'static str, flush: bool },
}

/// How a connection the hub ended ([`ConnCtl::kill`]) closes: the hub's code with its reason, 1001 when the
/// server is stopping (a cancel without a code). A code missing here would reach the client as 1001 ("server
/// shutting down"), which a browser treats as "come back later", not as what happened.
fn closing(code: u16) -> End {
    match code {
        CLOSE_RESUMED => End::Close { code, reason: "session resumed elsewhere", flush: true },
        CLOSE_TAKEN_OVER => End::Close { code, reason: "identity opened in another tab", flush: true },
        CLOSE_SLOW => End::Close { code, reason: "too slow: outbox overflow", flush: false },
        CLOSE_ID_CLASH => End::Close { code, reason: "this ID was taken on another node: reconnect", flush: true },
        _ => End::Close { code: 1001, reason: "server shutting down", flush: true },
    }
}

struct Conn {
    hub: Arc<Hub>,
    info: ConnInfo,
    handle: ConnHandle,
    id: Option<Id>,
    /// The identity handshake in progress (between `hello{identity}` and `identity_proof`).
    proving: Option<Proving>,
    messages: TokenBucket,
}

pub async fn run(hub: Arc<Hub>, mut ws: Ws, info: ConnInfo, slot: Slot) {
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(OUTBOX);
    let max_queued = (4 * info.cfg.signaling.max_message_bytes).max(OUTBOX_BYTES);
    let ctl = ConnCtl::new(hub.stop.child_token(), max_queued);
    let conn_id = hub.next_conn_id();
    let mps = info.cfg.signaling.messages_per_sec as f64;
    let source = source_key(info.remote.ip());
    let ping_every = Duration::from_secs(info.cfg.signaling.ping_interval_secs);
    let mut c = Conn {
        hub: hub.clone(),
        info,
        handle: ConnHandle { conn_id, source, tx, ctl: ctl.clone() },
        id: None,
        proving: None,
        // Per connection: it bounds the work one socket makes; limits that protect other people (connect
        // requests, sessions) are per source and live in the hub.
        messages: TokenBucket::new(mps, 2.0 * mps),
    };
    tracing::debug!(conn = conn_id, remote = %c.info.remote, "WebSocket open");

    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unanswered = 0u32;
    // Fresh tokens and tickets at half their maximum age, so a long-lived client can always restore its ID.
    let renew_every = Duration::from_secs((c.info.cfg.signaling.token_max_age_secs / 2).max(1));
    let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + renew_every, renew_every);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let hello_deadline = tokio::time::sleep(HELLO_TIMEOUT);
    tokio::pin!(hello_deadline);

    let end = loop {
        tokio::select! {
            biased;
            _ = ctl.cancel.cancelled() => {
                let code = ctl.close_code.load(Ordering::Relaxed);
                if code == CLOSE_SLOW {
                    Stats::inc(&hub.stats.slow_disconnects);
                }
                break closing(code);
            }
            Some(first) = rx.recv() => {
                if write_batch(&mut ws, first, &mut rx, &ctl).await.is_err() {
                    // Cancelled mid-write: still close with the code the hub chose (or 1001).
                    if ctl.cancel.is_cancelled() {
                        continue;
                    }
                    break End::Gone;
                }
            }
            frame = ws.next() => {
                let msg = match frame {
                    None => break End::Gone,
                    Some(Ok(m)) => m,
                    Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                        tracing::debug!(conn = conn_id, size, max_size, "message too large");
                        c.error(ErrorCode::TooLarge, &format!("messages are limited to {max_size} bytes"), None, None);
                        break End::Close { code: 1009, reason: "message too large", flush: true };
                    }
                    Some(Err(e)) => {
                        tracing::debug!(conn = conn_id, "WebSocket read error: {e}");
                        break End::Gone;
                    }
                };
                // Any frame shows the client is alive.
                unanswered = 0;
                if matches!(msg, Message::Text(_) | Message::Binary(_)) {
                    Stats::inc(&hub.stats.messages);
                }
                match msg {
                    Message::Text(text) => {
                        if !c.messages.try_take() {
                            c.error(ErrorCode::RateLimited, "too many messages; this one was dropped", None, None);
                            continue;
                        }
                        if let Some(end) = c.handle_text(&text) {
                            break end;
                        }
                    }
                    Message::Binary(_) => {
                        if c.messages.try_take() {
                            c.error(ErrorCode::BinaryNotSupported, "send JSON in text frames", None, None);
                        } else {
                            c.error(ErrorCode::RateLimited, "too many messages; this one was dropped", None, None);
                        }
                    }
                    // tungstenite answers pings itself; pongs only count as liveness (above).
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                    Message::Close(_) => break End::Gone,
                }
            }
            // Another node bound this connection's identity key first: welcome it again with the key's ID.
            _ = ctl.rebind_wake.notified() => {
                if let Some(key) = ctl.take_rebind() {
                    if let Some(end) = c.rebind(key) {
                        break end;
                    }
                }
            }
            _ = renew.tick(), if c.id.is_some() => {
                if let Some(id) = c.id {
                    let msg = hub.state.lock().renewed_tokens(id, conn_id, crate::credentials::unix_now());
                    if let Some(msg) = msg {
                        push(&c.handle, msg);
                    }
                }
            }
            _ = &mut hello_deadline, if c.id.is_none() => {
                break End::Close { code: 1008, reason: "hello not sent within 10 s", flush: true };
            }
            _ = ping.tick() => {
                if unanswered >= 2 {
                    tracing::debug!(conn = conn_id, "missed two pings; dropping");
                    break End::Close { code: 1008, reason: "missed pings", flush: false };
                }
                unanswered += 1;
                if bounded_write(ws.send(Message::Ping(Default::default())), &ctl).await.is_err() {
                    if ctl.cancel.is_cancelled() {
                        continue;
                    }
                    break End::Gone;
                }
            }
        }
    };

    // Partners learn at once that this client is away; the session itself waits out the grace period.
    if let Some(id) = c.id {
        let notify = !hub.stop.is_cancelled();
        hub.state.lock().disconnected(id, conn_id, Instant::now(), notify);
    }
    match end {
        End::Gone => {
            // After the client's close frame, polling once more sends tungstenite's queued reply.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
        }
        End::Close { code, reason, flush } => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                if flush {
                    while let Ok(m) = rx.try_recv() {
                        if ws.feed(Message::Text(m)).await.is_err() {
                            return;
                        }
                    }
                }
                let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
                if ws.send(Message::Close(Some(frame))).await.is_err() {
                    return;
                }
                // Wait for the client's close reply so the TCP connection ends cleanly on its side.
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
        }
    }
    drop(slot);
    tracing::debug!(conn = conn_id, "WebSocket closed");
}

/// Write `first` and whatever else is already queued, then flush once: one syscall for a burst.
async fn write_batch(
    ws: &mut Ws,
    first: Utf8Bytes,
    rx: &mut mpsc::Receiver<Utf8Bytes>,
    ctl: &ConnCtl,
) -> Result<(), ()> {
    let work = async {
        ctl.written(first.len());
        ws.feed(Message::Text(first)).await?;
        let mut n = 1;
        while n < 64 {
            let Ok(m) = rx.try_recv() else { break };
            ctl.written(m.len());
            ws.feed(Message::Text(m)).await?;
            n += 1;
        }
        ws.flush().await
    };
    bounded_write(work, ctl).await
}

/// A write that gives up after [`WRITE_TIMEOUT`], or at once when the connection is told to close: a client
/// that stopped reading blocks the write, and the hub's kill (or shutdown) must not wait behind it.
async fn bounded_write<E>(work: impl std::future::Future<Output = Result<(), E>>, ctl: &ConnCtl) -> Result<(), ()> {
    tokio::select! {
        r = tokio::time::timeout(WRITE_TIMEOUT, work) => match r {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        },
        _ = ctl.cancel.cancelled() => Err(()),
    }
}

impl Conn {
    fn reply(&self, text: String) {
        push(&self.handle, text);
    }

    fn error(&self, code: ErrorCode, message: &str, ref_: Option<&str>, peer: Option<Id>) {
        self.hub.stats.error(code);
        self.reply(protocol::error(code, message, ref_, peer));
    }

    /// Handle one text frame; `Some` ends the connection.
    fn handle_text(&mut self, text: &str) -> Option<End> {
        let msg = match protocol::parse(text) {
            Ok(m) => m,
            Err(ParseError::BadJson) => {
                self.error(ErrorCode::BadJson, "each message must be one JSON object", None, None);
                return None;
            }
            Err(ParseError::BadMessage { ty, detail }) => {
                self.error(ErrorCode::BadMessage, &detail, ty.as_deref(), None);
                return None;
            }
            Err(ParseError::UnknownType(ty)) => {
                self.error(ErrorCode::UnknownType, "unknown message type", Some(&ty), None);
                return None;
            }
        };
        let hub = self.hub.clone();
        let (host, cfg) = (self.info.ice_host.as_deref(), &self.info.cfg);
        let now_unix = crate::credentials::unix_now();
        Proving::check(&mut self.proving, &msg);
        let applied =
            hub.state.lock().apply(&self.handle, self.id, &mut self.proving, msg, (Instant::now(), now_unix), |id| {
                ice::servers_for(&hub.own_ice, cfg, host, id, now_unix)
            });
        self.applied(applied)
    }

    /// The hub ended this connection's session and asked for it to be welcomed again as `key`
    /// ([`super::hub::ConnCtl::rebind`]); `Some` ends the connection.
    fn rebind(&mut self, key: PublicKey) -> Option<End> {
        let hub = self.hub.clone();
        let (host, cfg) = (self.info.ice_host.as_deref(), &self.info.cfg);
        let now_unix = crate::credentials::unix_now();
        let applied = hub.state.lock().rebind(&self.handle, self.id, key, (Instant::now(), now_unix), |id| {
            ice::servers_for(&hub.own_ice, cfg, host, id, now_unix)
        });
        self.applied(applied)
    }

    /// Act on what the hub decided; `Some` ends the connection.
    fn applied(&mut self, applied: Applied) -> Option<End> {
        let hub = self.hub.clone();
        let now_unix = crate::credentials::unix_now();
        match applied {
            Applied::Continue => None,
            Applied::Welcomed(id) => {
                tracing::debug!(conn = self.handle.conn_id, %id, "client welcomed");
                self.id = Some(id);
                None
            }
            Applied::Close { code, reason } => Some(End::Close { code, reason, flush: true }),
            Applied::RefreshIce(me) => {
                // The live config, not the connection's snapshot: fresh credentials follow a reloaded TTL.
                let cfg = hub.live.current();
                let (ice_servers, ice_expires) =
                    ice::servers_for(&hub.own_ice, &cfg, self.info.ice_host.as_deref(), me, now_unix);
                self.reply(ServerMsg::IceServers { ice_servers: &ice_servers, ice_expires }.to_text());
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code the hub ends a connection with reaches the browser as that code (ClaimLost's 1013 had been
    /// turned into 1001 "server shutting down"); a cancel without a code is the server stopping.
    #[test]
    fn every_close_code_of_the_hub_reaches_the_client() {
        for code in [CLOSE_RESUMED, CLOSE_TAKEN_OVER, CLOSE_SLOW, CLOSE_ID_CLASH] {
            let End::Close { code: sent, .. } = closing(code) else { panic!("{code}: no close frame") };
            assert_eq!(sent, code);
        }
        assert!(matches!(closing(0), End::Close { code: 1001, .. }));
    }
}
