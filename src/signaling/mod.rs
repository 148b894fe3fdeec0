//! WebSocket signaling at `/ws` (protocol: docs/protocol.md): the upgrade with its Origin and connection-limit
//! checks, and the hub's lifecycle (timers, shutdown).

mod conn;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod hub;
mod ice;
pub mod ids;
pub mod keys;
pub mod limits;
pub mod protocol;
mod stats;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{parse_origin, Config};
use crate::health::Health;
use crate::health::{Component, Status};
use crate::http::{text_response, Body};
use crate::live::LiveConfig;
use crate::metrics::Metrics;

pub use self::ice::OwnIceServers;

use self::limits::{ConnCounter, SlotError};

/// The subprotocol selected when a client offers it.
pub const SUBPROTOCOL: &str = "ponte.v1";
/// How often the hub looks for expired requests and grace periods (timer resolution).
const SWEEP_EVERY: Duration = Duration::from_millis(100);
/// How long `run` waits for sockets to finish their closing handshake at shutdown.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);

/// What signaling needs from the daemon.
pub struct Deps {
    /// The running config: limits, origins and ICE settings follow reloads.
    pub live: LiveConfig,
    /// Signs reconnect tokens and pairing tickets.
    pub key: keys::SigningKey,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    /// ponte's own STUN/TURN servers, for the ICE lists handed to browsers.
    pub own_ice: OwnIceServers,
}

pub struct Hub {
    live: LiveConfig,
    health: Arc<Health>,
    own_ice: OwnIceServers,
    state: Mutex<hub::State>,
    conns: Arc<ConnCounter>,
    /// Cancelled at shutdown; every connection's control token is a child of it.
    stop: CancellationToken,
    tracker: TaskTracker,
    next_conn: AtomicU64,
    stats: Arc<stats::Stats>,
}

impl Hub {
    pub fn new(deps: Deps) -> Arc<Hub> {
        let settings = hub::Settings::from_config(&deps.live.current());
        let stats = Arc::new(stats::Stats::default());
        let hub = Arc::new(Hub {
            state: Mutex::new(hub::State::new(settings, stats.clone(), deps.key)),
            conns: ConnCounter::new(),
            stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
            next_conn: AtomicU64::new(1),
            stats,
            live: deps.live,
            health: deps.health,
            own_ice: deps.own_ice,
        });
        deps.metrics.register(Arc::new(stats::HubSource(Arc::downgrade(&hub))));
        hub
    }

    fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Live WebSocket connections (for tests and health).
    pub fn connection_count(&self) -> usize {
        self.conns.total()
    }

    /// Sessions, live or in their grace period.
    pub fn session_count(&self) -> usize {
        self.state.lock().session_count()
    }

    /// Accepted pairings.
    pub fn pairing_count(&self) -> usize {
        self.state.lock().pairing_count()
    }

    /// Handle `GET /ws` (WebSocket upgrade). `remote` is the client's address (socket or trusted proxy header).
    pub fn upgrade(self: &Arc<Self>, req: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
        // Limits, origins and ICE settings follow reloads (SIGHUP); each connection keeps the ones it started with.
        let cfg = self.live.current();
        let headers = req.headers();
        if !is_websocket_upgrade(headers) {
            return text_response(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade (Upgrade: websocket)\n");
        }
        if headers.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
            let mut r = text_response(StatusCode::UPGRADE_REQUIRED, "unsupported WebSocket version; use 13\n");
            r.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            return r;
        }
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
            return text_response(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
        };
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        if !OriginPolicy::new(&cfg).allows(headers.get(header::ORIGIN), host) {
            stats::Stats::inc(&self.stats.refused_origin);
            tracing::info!(%remote, origin = ?headers.get(header::ORIGIN), "WebSocket refused: Origin not allowed");
            return text_response(StatusCode::FORBIDDEN, "this Origin may not open the signaling WebSocket\n");
        }
        if self.stop.is_cancelled() {
            return text_response(StatusCode::SERVICE_UNAVAILABLE, "server shutting down\n");
        }
        let sig = &cfg.signaling;
        let slot = match self.conns.acquire(remote.ip(), sig.max_connections, sig.max_connections_per_ip) {
            Ok(s) => s,
            Err(SlotError::PerIp) => {
                stats::Stats::inc(&self.stats.refused_per_ip);
                tracing::debug!(%remote, "WebSocket refused: per-IP connection limit");
                return text_response(StatusCode::TOO_MANY_REQUESTS, "too many connections from your address\n");
            }
            Err(SlotError::Total) => {
                stats::Stats::inc(&self.stats.refused_total);
                tracing::warn!("WebSocket refused: signaling.max_connections reached");
                return text_response(StatusCode::SERVICE_UNAVAILABLE, "server full, try again later\n");
            }
        };
        let accept = derive_accept_key(key.as_bytes());
        let offers_subprotocol = headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == SUBPROTOCOL);
        let max = sig.max_message_bytes;
        let info = conn::ConnInfo {
            remote,
            ice_host: ice::host_for(&self.own_ice, &cfg, host, remote.ip()),
            cfg: cfg.clone(),
        };

        // Small buffers: tungstenite's defaults (128 KiB read buffer, allocated up front) would cost over
        // a gigabyte at 10k idle clients. 1 KiB holds most signaling messages (an ICE candidate is ~300 bytes);
        // a bigger one (an SDP) makes tungstenite reserve its whole length, so it costs a few more reads, not a
        // failure, and every idle client saves 3 KiB over a 4 KiB buffer (docs/benchmarks.md).
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(1024)
            .write_buffer_size(4096)
            .max_write_buffer_size(4096 + max.saturating_mul(2))
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        let on_upgrade = hyper::upgrade::on(req);
        let hub = self.clone();
        self.tracker.spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(%remote, "WebSocket upgrade failed: {e}");
                    return;
                }
            };
            let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(ws_config)).await;
            conn::run(hub, ws, info, slot).await;
        });

        let mut resp = Response::new(Body::default());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Ok(v) = HeaderValue::from_str(&accept) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        if offers_subprotocol {
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(SUBPROTOCOL));
        }
        resp
    }

    /// Background work (timeouts, grace expiry) until `shutdown`, then close every WebSocket cleanly.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.health.set(Component::Signaling, Status::Ok);
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reloads = self.live.subscribe();
        let mut watching = true;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => self.state.lock().expire(Instant::now()),
                changed = reloads.changed(), if watching => {
                    if changed.is_err() {
                        // The sender lives in the context, which outlives the hub; if it ever goes, stop watching.
                        watching = false;
                        continue;
                    }
                    let settings = hub::Settings::from_config(&reloads.borrow_and_update());
                    self.state.lock().set_settings(settings);
                }
            }
        }
        self.health.set(Component::Signaling, Status::Stopping);
        let open = self.conns.total();
        // Every connection task sees this and closes with 1001.
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(SHUTDOWN_WAIT, self.tracker.wait()).await.is_err() {
            tracing::warn!(
                "{} WebSocket(s) did not finish closing within {}s",
                self.conns.total(),
                SHUTDOWN_WAIT.as_secs()
            );
        } else if open > 0 {
            tracing::info!("closed {open} WebSocket(s)");
        }
        Ok(())
    }
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    header_has_token(headers, header::CONNECTION, "upgrade") && header_has_token(headers, header::UPGRADE, "websocket")
}

/// Which `Origin`s may open the WebSocket: the page's own (the request's `Host`, or `http.public_url`),
/// `http.allowed_origins`, or anything when that list holds `"*"`. Browsers always send `Origin` on WebSocket
/// upgrades, so a request without one is not a cross-site hijack (it is a CLI tool or test) and is allowed.
struct OriginPolicy {
    any: bool,
    allowed: Vec<String>,
}

impl OriginPolicy {
    fn new(cfg: &Config) -> OriginPolicy {
        let http = &cfg.http;
        let mut allowed: Vec<String> = http.allowed_origins.iter().filter_map(|o| parse_origin(o)).collect();
        if let Some(u) = http.public_url.as_deref().and_then(parse_origin) {
            allowed.push(u);
        }
        OriginPolicy { any: http.allowed_origins.iter().any(|o| o == "*"), allowed }
    }

    fn allows(&self, origin: Option<&HeaderValue>, host: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        if self.any {
            return true;
        }
        // `null` (sandboxed frames, file://) and anything unparsable fail here.
        let Some(origin) = origin.to_str().ok().and_then(parse_origin) else { return false };
        if self.allowed.contains(&origin) {
            return true;
        }
        // Same origin: the Origin's host[:port] equals the Host header (default port of its scheme dropped).
        let (Some((scheme, authority)), Some(host)) = (origin.split_once("://"), host) else { return false };
        let host = host.trim().to_ascii_lowercase();
        let default_port = if scheme == "http" { ":80" } else { ":443" };
        let host = host.strip_suffix(default_port).unwrap_or(&host);
        authority == host
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(any: bool, allowed: &[&str]) -> OriginPolicy {
        OriginPolicy { any, allowed: allowed.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn origin_policy() {
        let p = policy(false, &["https://chat.example.org"]);
        let o = |s: &'static str| Some(HeaderValue::from_static(s));
        assert!(p.allows(None, Some("x")));
        assert!(p.allows(o("https://chat.example.org").as_ref(), Some("other")));
        assert!(p.allows(o("http://127.0.0.1:8080").as_ref(), Some("127.0.0.1:8080")));
        assert!(p.allows(o("http://host").as_ref(), Some("host:80")));
        assert!(!p.allows(o("http://evil.example").as_ref(), Some("127.0.0.1:8080")));
        assert!(!p.allows(o("http://127.0.0.1:9999").as_ref(), Some("127.0.0.1:8080")));
        assert!(!p.allows(o("null").as_ref(), Some("127.0.0.1:8080")));
        assert!(!p.allows(o("https://127.0.0.1:8080").as_ref(), None));
        assert!(policy(true, &[]).allows(o("http://evil.example").as_ref(), Some("h")));
    }
}
