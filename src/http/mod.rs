//! HTTP listener (hyper): routing for the web client, `/healthz` and the `/ws` upgrade; graceful connection shutdown.

pub mod static_files;
mod ws;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, HttpConfig};
use crate::health::{Component, Health, Status};
use crate::live::LiveConfig;
use crate::metrics::Metrics;
use crate::signaling::Hub;

pub type Body = Full<Bytes>;

/// Slowloris guard: a client must finish sending request headers within this time. A new connection must also
/// have sent its first request by then: hyper runs no timer while it tells HTTP/1 from HTTP/2, so without this a
/// socket that sends nothing (or only the HTTP/2 preface) would stay open forever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no request in flight for this long is closed (browsers open a new one when they need it).
/// Upgraded WebSockets leave this accounting: signaling pings them and has its own limits.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What the HTTP server needs from the daemon.
pub struct Deps {
    /// `[http]` as started: where the web client comes from.
    pub web: HttpConfig,
    /// `tls.redirect_http`: the HTTPS port plain requests are redirected to.
    pub redirect_to_tls: Option<u16>,
    /// The running config (trusted proxies follow reloads).
    pub live: LiveConfig,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    /// ACME HTTP-01 answers, when `tls.acme` uses that challenge.
    pub acme_challenges: Option<Arc<crate::challenges::Challenges>>,
}

/// Serve HTTP on `listener` until `shutdown`, then stop accepting and let in-flight requests finish.
pub async fn serve(
    deps: Deps,
    hub: Arc<Hub>,
    listener: std::net::TcpListener,
    mut https: Option<tokio::sync::mpsc::Receiver<(crate::tls::Prefixed<crate::tls::TlsStream>, SocketAddr)>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    tracing::info!("HTTP listening on http://{addr} (web client, /healthz, WebSocket signaling at /ws)");
    let web = Arc::new(static_files::WebRoot::from_config(&deps.web)?);
    let ctx = Arc::new(deps);

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Duration::from_secs(30));
    let graceful = GracefulShutdown::new();
    ctx.health.set(Component::Http, Status::Ok);

    let slots = crate::limits::ConnCounter::new();
    // One connection, plain or TLS: same routing, same graceful shutdown, same per-source cap and idle timers.
    macro_rules! spawn_conn {
        ($io:expr, $remote:expr, $tls:expr) => {{
            let (remote, tls) = ($remote, $tls);
            let max_per_ip = ctx.live.current().http.max_connections_per_ip;
            // The socket's address: a proxy's connections are its own (its clients are counted by what they do).
            match slots.acquire(remote.ip(), usize::MAX, max_per_ip) {
                Err(_) => {
                    ctx.metrics.http.record(429);
                    tracing::debug!(%remote, "HTTP connection refused: http.max_connections_per_ip reached");
                    drop($io);
                }
                Ok(slot) => {
                    let activity = Arc::new(Activity::default());
                    let (ctx, hub, web, seen) = (ctx.clone(), hub.clone(), web.clone(), activity.clone());
                    let service = service_fn(move |req| {
                        let (ctx, hub, web, seen) = (ctx.clone(), hub.clone(), web.clone(), seen.clone());
                        async move {
                            let _busy = seen.begin();
                            Ok::<_, Infallible>(route(&ctx, &hub, &web, req, remote, tls).await)
                        }
                    });
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new($io), service).into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        let _slot = slot;
                        match activity.run_until_idle(conn).await {
                            Some(Err(e)) => tracing::debug!(%remote, "HTTP connection ended with error: {e}"),
                            Some(Ok(())) => {}
                            None => tracing::debug!(%remote, "HTTP connection closed: idle"),
                        }
                    });
                }
            }
        }};
    }

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    let _ = stream.set_nodelay(true);
                    spawn_conn!(stream, remote, false);
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the listener itself is still fine.
                    tracing::warn!("HTTP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            tls = async { match https.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => match tls {
                Some((stream, remote)) => spawn_conn!(stream, remote, true),
                None => https = None,
            },
        }
    }
    ctx.health.set(Component::Http, Status::Stopping);
    drop(listener);
    tracing::debug!("HTTP listener closed; waiting for in-flight requests");
    if tokio::time::timeout(Duration::from_secs(3), graceful.shutdown()).await.is_err() {
        tracing::debug!("some HTTP connections were still open at shutdown");
    }
    Ok(())
}

/// When a connection last did something, and whether a request is in flight: drives the first-request and idle
/// timers of [`Activity::run_until_idle`].
#[derive(Default)]
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    /// Milliseconds since `epoch` of the last request start or end; 0 until the first request.
    last: std::sync::atomic::AtomicU64,
    epoch: std::sync::OnceLock<tokio::time::Instant>,
}

/// Marks a request in flight until dropped.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Activity {
    fn epoch(&self) -> tokio::time::Instant {
        *self.epoch.get_or_init(tokio::time::Instant::now)
    }

    fn touch(&self) {
        let ms = self.epoch().elapsed().as_millis() as u64;
        self.last.store(ms.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.touch();
        Busy(self.clone())
    }

    /// When the connection may be closed if nothing happens: [`HEADER_READ_TIMEOUT`] after the start for a
    /// connection that never sent a request, [`IDLE_TIMEOUT`] after the last request otherwise; `None` while a
    /// request is in flight.
    fn deadline(&self) -> Option<tokio::time::Instant> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.in_flight.load(Relaxed) > 0 {
            return None;
        }
        match self.last.load(Relaxed) {
            0 => Some(self.epoch() + HEADER_READ_TIMEOUT),
            ms => Some(self.epoch() + Duration::from_millis(ms) + IDLE_TIMEOUT),
        }
    }

    /// Drive `conn` to its end (`Some`), or drop it once the connection has been idle past its deadline (`None`).
    async fn run_until_idle<F: std::future::Future>(&self, conn: F) -> Option<F::Output> {
        self.epoch();
        tokio::pin!(conn);
        loop {
            let wake = self.deadline().unwrap_or_else(|| tokio::time::Instant::now() + IDLE_TIMEOUT);
            tokio::select! {
                out = &mut conn => return Some(out),
                _ = tokio::time::sleep_until(wake) => {
                    if self.deadline().is_some_and(|d| d <= tokio::time::Instant::now()) {
                        return None;
                    }
                }
            }
        }
    }
}

async fn route(
    ctx: &Deps,
    hub: &Arc<Hub>,
    web: &static_files::WebRoot,
    req: Request<Incoming>,
    socket_addr: SocketAddr,
    tls: bool,
) -> Response<Body> {
    let remote = client_addr(&ctx.live.current(), &req, socket_addr);
    let path = req.uri().path();
    // ACME HTTP-01 validation (`tls.acme`): answered before any redirect, since the CA asks over plain HTTP.
    if let (Some(token), Some(acme)) = (path.strip_prefix(crate::challenges::HTTP_PREFIX), &ctx.acme_challenges) {
        let mut r = match acme.http_answer(token) {
            Some(answer) => text_response(StatusCode::OK, answer),
            None => text_response(StatusCode::NOT_FOUND, "no such ACME challenge\n"),
        };
        security_headers(&mut r);
        ctx.metrics.http.record(r.status().as_u16());
        return r;
    }
    // `tls.redirect_http`: plain HTTP only points to HTTPS (health checks excepted, so monitors keep working).
    if !tls && path != "/healthz" {
        if let Some(tls_port) = ctx.redirect_to_tls {
            let mut r = redirect_to_https(&req, tls_port);
            security_headers(&mut r);
            ctx.metrics.http.record(r.status().as_u16());
            return r;
        }
    }
    let mut resp = match (req.method(), path) {
        (&Method::GET, "/ws") => return ws::upgrade(hub, req, remote, tls),
        (&Method::GET | &Method::HEAD, "/healthz") => {
            let status = if ctx.health.healthy() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            let mut r = json_response(status, &ctx.health.to_json());
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        (&Method::GET | &Method::HEAD, _) => web.serve(&req).await,
        _ => {
            let mut r = text_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            r
        }
    };
    if req.method() == Method::HEAD {
        *resp.body_mut() = Body::default();
    }
    security_headers(&mut resp);
    ctx.metrics.http.record(resp.status().as_u16());
    resp
}

/// Serve `GET /metrics` (Prometheus text format) on its own listener until `shutdown`.
pub async fn serve_metrics(
    metrics: Arc<Metrics>,
    listener: std::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    tracing::info!("metrics listening on http://{}/metrics", listener.local_addr()?);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("metrics accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let metrics = metrics.clone();
            async move {
                let resp = if req.uri().path() == "/metrics" && req.method() == Method::GET {
                    let mut r = Response::new(Body::new(Bytes::from(metrics.render())));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                    );
                    r
                } else {
                    text_response(StatusCode::NOT_FOUND, "metrics are at /metrics\n")
                };
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = conn => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

/// The client's address: the socket's, or the last untrusted hop of `X-Forwarded-For` when the socket
/// belongs to a proxy listed in `http.trusted_proxies`.
pub fn client_addr<B>(live: &Config, req: &Request<B>, socket_addr: SocketAddr) -> SocketAddr {
    let trusted = |ip: IpAddr| live.http.trusted_proxies.iter().any(|n| n.contains(&ip));
    if !trusted(socket_addr.ip()) {
        return socket_addr;
    }
    let Some(xff) = req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok()) else {
        return socket_addr;
    };
    // Walk from the nearest hop outwards; the first address not belonging to a trusted proxy is the client.
    for hop in xff.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) if trusted(ip) => continue,
            Ok(ip) => return SocketAddr::new(ip, 0),
            Err(_) => break,
        }
    }
    socket_addr
}

/// 308 to the same path on HTTPS, keeping the host the browser used (a 308 also keeps the method).
fn redirect_to_https<B>(req: &Request<B>, tls_port: u16) -> Response<Body> {
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    // Strip the port (IPv6 literals keep their brackets).
    let name = match host.rsplit_once(':') {
        Some((h, p))
            if !h.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && (!h.contains(':') || h.ends_with(']')) =>
        {
            h
        }
        _ => host,
    };
    if name.is_empty() || name.contains(['/', '@', ' ']) {
        return text_response(StatusCode::BAD_REQUEST, "a Host header is needed to redirect to HTTPS\n");
    }
    let port = if tls_port == 443 { String::new() } else { format!(":{tls_port}") };
    let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut r = Response::new(Body::default());
    *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&format!("https://{name}{port}{path}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn security_headers(resp: &mut Response<Body>) {
    let h = resp.headers_mut();
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
             media-src 'self' blob:; connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
}

pub fn text_response(status: StatusCode, text: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Body::new(text.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from(value.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(host: Option<&str>, uri: &str, tls_port: u16) -> (u16, Option<String>) {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header(header::HOST, h);
        }
        let r = redirect_to_https(&b.body(()).unwrap(), tls_port);
        (r.status().as_u16(), r.headers().get(header::LOCATION).map(|v| v.to_str().unwrap().to_string()))
    }

    #[test]
    fn https_redirect_targets() {
        assert_eq!(
            location(Some("chat.example.org:8080"), "/a?b=1", 443),
            (308, Some("https://chat.example.org/a?b=1".into()))
        );
        assert_eq!(location(Some("chat.example.org"), "/", 8443), (308, Some("https://chat.example.org:8443/".into())));
        assert_eq!(location(Some("[2001:db8::1]:8080"), "/x", 443), (308, Some("https://[2001:db8::1]/x".into())));
        assert_eq!(location(Some("[2001:db8::1]"), "/x", 443), (308, Some("https://[2001:db8::1]/x".into())));
        assert_eq!(location(None, "/", 443).0, 400);
        assert_eq!(location(Some("evil.example/@x"), "/", 443).0, 400);
    }
}
