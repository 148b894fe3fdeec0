//! WebSocket signaling at `/ws` (protocol: docs/protocol.md): the upgrade with its Origin and connection-limit
//! checks, and the hub's lifecycle (timers, shutdown).

mod conn;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod hub;
mod ice;
pub mod identity;
pub mod ids;
pub mod keys;
pub mod protocol;
mod stats;
pub mod store;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{parse_origin, Config};
use crate::health::{Component, Health, Status};
use crate::live::LiveConfig;
use crate::metrics::Metrics;

pub use self::ice::{family_hosts, OwnIceServers};

pub use self::conn::Io;
use crate::limits::{self, for_log, ConnCounter, LogLimiter, SlotError};

/// The subprotocol selected when a client offers it.
pub const SUBPROTOCOL: &str = "ponte.v1";
/// How often the hub looks for expired requests and grace periods (timer resolution).
const SWEEP_EVERY: Duration = Duration::from_millis(100);
/// How often identities unused for `signaling.identity_forget_after_days` are looked for.
const FORGET_EVERY: Duration = Duration::from_secs(60);
/// How long `run` waits for sockets to finish their closing handshake at shutdown.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);
/// Client-controlled values (an Origin) are cut to this many bytes in logs.
const LOG_VALUE_MAX: usize = 128;
/// At most one log line per this period for each kind of refusal a client can provoke at will.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// What the HTTP layer learnt from a WebSocket upgrade request, for [`Hub::admit`] (no HTTP-library types: the
/// handshake itself is `http::ws`'s business).
pub struct Handshake<'a> {
    /// The client's address (the socket's, or the one a trusted proxy forwarded).
    pub remote: SocketAddr,
    /// The raw `Origin` header, if any.
    pub origin: Option<&'a [u8]>,
    /// The `Host` header (or HTTP/2 authority), if any.
    pub host: Option<&'a str>,
    /// The request came over ponte's TLS listener.
    pub tls: bool,
}

/// Why an upgrade is refused: the HTTP status and a one-line explanation for the body.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub text: &'static str,
}

/// An upgrade the hub accepted: it holds the connection's slot (given back when it drops, whatever happens to
/// the upgrade) and what the connection needs; hand it to [`Hub::serve`] with the upgraded stream.
pub struct Admission {
    slot: limits::Slot,
    info: conn::ConnInfo,
    ws_config: WebSocketConfig,
}

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
    /// The identity store, loaded (`store::open`); the hub owns it from here on and closes it at shutdown.
    pub identities: store::Opened,
    /// `[cluster]`: the link to the other nodes and the queue of what they send here.
    pub cluster: Option<ClusterDeps>,
}

/// The hub's part of the cluster link (`crate::cluster::Cluster`).
pub struct ClusterDeps {
    pub link: crate::cluster::Link,
    pub inbound: tokio::sync::mpsc::Receiver<crate::cluster::Inbound>,
    /// The presence TTL (`cluster.presence_ttl_secs`).
    pub ttl: Duration,
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
    /// Refusals a client can provoke at will are logged at most once per [`REFUSAL_LOG_EVERY`].
    origin_log: LogLimiter,
    full_log: LogLimiter,
    /// Envelopes from other cluster nodes, drained by `run` (taken there).
    inbound: Mutex<Option<tokio::sync::mpsc::Receiver<crate::cluster::Inbound>>>,
}

impl Hub {
    pub fn new(deps: Deps) -> Arc<Hub> {
        let settings = hub::Settings::from_config(&deps.live.current());
        let stats = Arc::new(stats::Stats::default());
        let mut state = hub::State::new(settings, stats.clone(), deps.key)
            .with_identities(deps.identities.table, deps.identities.writer);
        let mut inbound = None;
        if let Some(c) = deps.cluster {
            state = state.with_cluster(c.link, c.ttl);
            inbound = Some(c.inbound);
        }
        let hub = Arc::new(Hub {
            state: Mutex::new(state),
            inbound: Mutex::new(inbound),
            conns: ConnCounter::new(),
            stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
            next_conn: AtomicU64::new(1),
            stats,
            origin_log: LogLimiter::new(REFUSAL_LOG_EVERY),
            full_log: LogLimiter::new(REFUSAL_LOG_EVERY),
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

    /// Lasting identities known (bound to a key).
    pub fn identity_count(&self) -> usize {
        self.state.lock().identity_count()
    }

    /// Decide on a WebSocket upgrade: Origin, shutdown, connection limits. Limits, origins and ICE settings
    /// follow reloads (SIGHUP); each connection keeps the ones it started with.
    pub fn admit(&self, h: &Handshake<'_>) -> Result<Admission, Refusal> {
        let cfg = self.live.current();
        let remote = h.remote;
        if !OriginPolicy::new(&cfg).allows(h.origin, h.host, h.tls) {
            stats::Stats::inc(&self.stats.refused_origin);
            // Cut and rate-limited: the Origin is whatever the client sent, as long as it liked.
            if let Some(suppressed) = self.origin_log.allow(Instant::now()) {
                let origin = h.origin.map(|o| for_log(o, LOG_VALUE_MAX));
                tracing::info!(
                    %remote,
                    origin = origin.as_deref().unwrap_or(""),
                    suppressed,
                    "WebSocket refused: Origin not allowed (list it in http.allowed_origins, or set http.public_url)"
                );
            }
            return Err(Refusal {
                status: 403,
                text: "this Origin may not open the signaling WebSocket (the server's http.public_url or \
                       http.allowed_origins must name it; http:// pages are only accepted by IP address or \
                       localhost otherwise)\n",
            });
        }
        if self.stop.is_cancelled() {
            return Err(Refusal { status: 503, text: "server shutting down\n" });
        }
        let sig = &cfg.signaling;
        let slot = match self.conns.acquire(remote.ip(), sig.max_connections, sig.max_connections_per_ip) {
            Ok(s) => s,
            Err(SlotError::PerIp) => {
                stats::Stats::inc(&self.stats.refused_per_ip);
                tracing::debug!(%remote, "WebSocket refused: per-IP connection limit");
                return Err(Refusal { status: 429, text: "too many connections from your address\n" });
            }
            Err(SlotError::Total) => {
                stats::Stats::inc(&self.stats.refused_total);
                if let Some(suppressed) = self.full_log.allow(Instant::now()) {
                    tracing::warn!(suppressed, "WebSocket refused: signaling.max_connections reached");
                }
                return Err(Refusal { status: 503, text: "server full, try again later\n" });
            }
        };
        let max = sig.max_message_bytes;
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
        let info = conn::ConnInfo {
            remote,
            ice_host: ice::host_for(&self.own_ice, &cfg, h.host, remote.ip()),
            cfg: cfg.clone(),
        };
        Ok(Admission { slot, info, ws_config })
    }

    /// Run an admitted connection once `upgraded` yields its stream (`None`: the upgrade failed; the slot is
    /// given back). Tracked, so shutdown waits for it to close cleanly.
    pub fn serve<F>(self: &Arc<Self>, admission: Admission, upgraded: F)
    where
        F: std::future::Future<Output = Option<Box<dyn Io>>> + Send + 'static,
    {
        let hub = self.clone();
        self.tracker.spawn(async move {
            let Admission { slot, info, ws_config } = admission;
            let Some(io) = upgraded.await else { return };
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config)).await;
            conn::run(hub, ws, info, slot).await;
        });
    }

    /// Background work (timeouts, grace expiry) until `shutdown`, then close every WebSocket cleanly.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.health.set(Component::Signaling, Status::Ok);
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reloads = self.live.subscribe();
        let mut watching = true;
        let mut forget = tokio::time::interval(FORGET_EVERY);
        forget.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut inbound = self.inbound.lock().take();
        let mut batch = Vec::with_capacity(256);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                // Cluster only: what other nodes sent here, applied in order under the lock, a batch at a time.
                n = async { inbound.as_mut().expect("guarded").recv_many(&mut batch, 256).await }, if inbound.is_some() => {
                    if n == 0 {
                        inbound = None;
                        continue;
                    }
                    let now = Instant::now();
                    let mut st = self.state.lock();
                    for m in batch.drain(..) {
                        st.apply_cluster(m, now);
                    }
                    st.flush_now();
                }
                _ = tick.tick() => self.state.lock().expire(Instant::now()),
                _ = forget.tick() => self.state.lock().forget_identities(crate::credentials::unix_now()),
                changed = reloads.changed(), if watching => {
                    if changed.is_err() {
                        // The sender lives in the context, which outlives the hub; if it ever goes, stop watching.
                        watching = false;
                        continue;
                    }
                    let settings = hub::Settings::from_config(&reloads.borrow_and_update());
                    let mut st = self.state.lock();
                    st.set_settings(settings);
                    // A shortened signaling.identity_forget_after_days applies now, not at the next minute's sweep.
                    st.forget_identities(crate::credentials::unix_now());
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
        // Last: sessions that ended above updated last-seen times. Joining the writer closes the file, so a new
        // process (or a test's restarted server) can open it.
        let writer = self.state.lock().take_writer();
        if let Some(w) = writer {
            let _ = tokio::task::spawn_blocking(move || w.finish()).await;
        }
        Ok(())
    }
}

/// Which `Origin`s may open the WebSocket: `http.public_url`, `http.allowed_origins` (or anything when that list
/// holds `"*"`), and the page's own origin under the rules of [`OriginPolicy::same_origin`]. Browsers always send
/// `Origin` on WebSocket upgrades, so a request without one is not a cross-site hijack (it is a CLI tool or test)
/// and is allowed.
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

    fn allows(&self, origin: Option<&[u8]>, host: Option<&str>, tls: bool) -> bool {
        let Some(origin) = origin else { return true };
        if self.any {
            return true;
        }
        // `null` (sandboxed frames, file://) and anything unparsable fail here.
        let Some(origin) = std::str::from_utf8(origin).ok().and_then(parse_origin) else { return false };
        if self.allowed.contains(&origin) {
            return true;
        }
        host.is_some_and(|host| Self::same_origin(&origin, host, tls))
    }

    /// The Origin is the page's own, judged from the `Host` header alone (no `public_url`):
    /// - its host[:port] must equal `Host` (default port of its scheme dropped);
    /// - `https` pages are accepted on any connection (TLS here, or a TLS-terminating proxy in front): the browser
    ///   checked a certificate for that name, so the name is really this server's, and a DNS-rebinding name
    ///   fails that check;
    /// - `http` pages are refused on a TLS connection (a page nobody authenticated must not reach the secure
    ///   endpoint), and on plain HTTP accepted only when `Host` is an IP literal or `localhost`: for a DNS name,
    ///   `Origin == Host` is exactly what a DNS-rebinding page (evil.example resolving to this server) presents,
    ///   so such names must be listed (`http.public_url` or `http.allowed_origins`).
    fn same_origin(origin: &str, host: &str, tls: bool) -> bool {
        let Some((scheme, authority)) = origin.split_once("://") else { return false };
        let host = host.trim().to_ascii_lowercase();
        let default_port = if scheme == "http" { ":80" } else { ":443" };
        let host = host.strip_suffix(default_port).unwrap_or(&host);
        if authority != host {
            return false;
        }
        match scheme {
            "https" => true,
            "http" => !tls && host_is_ip_or_localhost(host),
            _ => false,
        }
    }
}

/// `Host` (with or without a port) names an IP address literal or `localhost`: names a DNS-rebinding page
/// cannot present as its own origin.
fn host_is_ip_or_localhost(host: &str) -> bool {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
    }
    let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
    name.parse::<IpAddr>().is_ok() || name == "localhost" || name.ends_with(".localhost")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(any: bool, allowed: &[&str]) -> OriginPolicy {
        OriginPolicy { any, allowed: allowed.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn origin_policy() {
        let p = policy(false, &["https://chat.example.org", "http://lan.example:8080"]);
        let o = |s: &'static str| Some(s.as_bytes());
        assert!(p.allows(None, Some("x"), false));
        assert!(p.allows(o("https://chat.example.org"), Some("other"), false));
        assert!(p.allows(o("http://127.0.0.1:8080"), Some("127.0.0.1:8080"), false));
        assert!(p.allows(o("http://[::1]:8080"), Some("[::1]:8080"), false));
        assert!(p.allows(o("http://localhost"), Some("localhost:80"), false));
        assert!(!p.allows(o("http://evil.example"), Some("127.0.0.1:8080"), false));
        assert!(!p.allows(o("http://127.0.0.1:9999"), Some("127.0.0.1:8080"), false));
        assert!(!p.allows(o("null"), Some("127.0.0.1:8080"), false));
        assert!(!p.allows(o("https://127.0.0.1:8080"), None, false));
        assert!(policy(true, &[]).allows(o("http://evil.example"), Some("h"), false));
    }

    #[test]
    fn origin_scheme_and_dns_rebinding() {
        let p = policy(false, &["http://lan.example:8080"]);
        let o = |s: &'static str| Some(s.as_bytes());
        // DNS rebinding: a hostile page whose name now resolves here presents Origin == Host.
        assert!(!p.allows(o("http://evil.example"), Some("evil.example"), false));
        assert!(!p.allows(o("http://evil.example:8080"), Some("evil.example:8080"), false));
        // A listed name is fine.
        assert!(p.allows(o("http://lan.example:8080"), Some("lan.example:8080"), false));
        // https: the certificate proves the name, on TLS here or through a TLS-terminating proxy.
        assert!(p.allows(o("https://chat.example.net"), Some("chat.example.net"), true));
        assert!(p.allows(o("https://chat.example.net"), Some("chat.example.net"), false));
        // An unauthenticated http page may not reach the TLS endpoint, not even with an IP literal.
        assert!(!p.allows(o("http://chat.example.net"), Some("chat.example.net"), true));
        assert!(!p.allows(o("http://192.0.2.1:443"), Some("192.0.2.1"), true));
        // Scheme-default ports are not mixed up: http://host (port 80) is not https://host (port 443).
        assert!(!p.allows(o("http://192.0.2.1"), Some("192.0.2.1:443"), false));
    }
}
