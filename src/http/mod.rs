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

use crate::health::{Component, Status};
use crate::server::Context;
use crate::signaling::Hub;

pub type Body = Full<Bytes>;

/// Slowloris guard: a client must finish sending request headers within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve HTTP on `listener` until `shutdown`, then stop accepting and let in-flight requests finish.
pub async fn serve(
    ctx: Arc<Context>,
    hub: Arc<Hub>,
    listener: std::net::TcpListener,
    mut https: Option<tokio::sync::mpsc::Receiver<(crate::tls::Prefixed<crate::tls::TlsStream>, SocketAddr)>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    tracing::info!("HTTP listening on http://{addr} (web client, /healthz, WebSocket signaling at /ws)");
    let web = Arc::new(static_files::WebRoot::from_config(&ctx.config.http)?);

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Duration::from_secs(30));
    let graceful = GracefulShutdown::new();
    ctx.health.set(Component::Http, Status::Ok);

    // One connection, plain or TLS: same routing, same graceful shutdown.
    macro_rules! spawn_conn {
        ($io:expr, $remote:expr, $tls:expr) => {{
            let (remote, tls) = ($remote, $tls);
            let (ctx, hub, web) = (ctx.clone(), hub.clone(), web.clone());
            let service = service_fn(move |req| {
                let (ctx, hub, web) = (ctx.clone(), hub.clone(), web.clone());
                async move { Ok::<_, Infallible>(route(&ctx, &hub, &web, req, remote, tls).await) }
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new($io), service).into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%remote, "HTTP connection ended with error: {e}");
                }
            });
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

async fn route(
    ctx: &Context,
    hub: &Arc<Hub>,
    web: &static_files::WebRoot,
    req: Request<Incoming>,
    socket_addr: SocketAddr,
    tls: bool,
) -> Response<Body> {
    let remote = client_addr(ctx, &req, socket_addr);
    let path = req.uri().path();
    // ACME HTTP-01 validation (`tls.acme`): answered before any redirect, since the CA asks over plain HTTP.
    if let (Some(token), Some(acme)) = (path.strip_prefix(crate::acme::HTTP_PREFIX), &ctx.acme_challenges) {
        let mut r = match acme.http_answer(token) {
            Some(answer) => text_response(StatusCode::OK, answer),
            None => text_response(StatusCode::NOT_FOUND, "no such ACME challenge\n"),
        };
        security_headers(&mut r);
        ctx.metrics.http.record(r.status().as_u16());
        return r;
    }
    // `tls.redirect_http`: plain HTTP only points to HTTPS (health checks excepted, so monitors keep working).
    if !tls && path != "/healthz" && ctx.config.tls.redirect_http {
        if let Some(tls_addr) = ctx.tls_addr {
            let mut r = redirect_to_https(&req, tls_addr.port());
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
    ctx: Arc<Context>,
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
        let ctx = ctx.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let ctx = ctx.clone();
            async move {
                let resp = if req.uri().path() == "/metrics" && req.method() == Method::GET {
                    let mut r = Response::new(Body::new(Bytes::from(ctx.metrics.render())));
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
pub fn client_addr<B>(ctx: &Context, req: &Request<B>, socket_addr: SocketAddr) -> SocketAddr {
    let live = ctx.live();
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
