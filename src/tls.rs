//! Built-in TLS (rustls): certificate loading and hot reload, and the one TLS port that serves HTTPS/WSS and
//! TURN over TLS (RFC 8656 §3.1) side by side, told apart by the first bytes after the handshake.
//!
//! Strict networks often allow nothing but TCP 443, so a browser that can reach the page over HTTPS can also
//! reach the relay on the same port.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskCx, Poll};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use parking_lot::{Mutex, RwLock};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;

/// A client must finish the TLS handshake and send its first bytes within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once from one source (IPv4 address or IPv6 /64). A browser opens a few; more from one
/// address only hold file descriptors and CPU (each handshake costs a signature) until the timeout. What follows
/// the handshake is bounded by its own listener: `http.max_connections_per_ip`, `turn.max_tcp_connections_per_ip`.
const HANDSHAKES_PER_SOURCE: usize = 32;
/// How often the certificate files are checked for renewal (certbot replaces them in place).
const WATCH_INTERVAL: Duration = Duration::from_secs(60);

/// The current certificate, swapped atomically on reload; handshakes in flight keep the one they started with.
#[derive(Debug)]
pub struct Certs {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    stamp: Mutex<Option<(SystemTime, SystemTime)>>,
    /// The files are ponte's own ACME cache: they may not exist yet (a placeholder is in use meanwhile).
    acme: bool,
    /// Expiry of the certificate in use (Unix seconds); 0 for a placeholder.
    not_after: AtomicI64,
}

fn stamp(cert: &Path, key: &Path) -> Option<(SystemTime, SystemTime)> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(cert)?, m(key)?))
}

impl Certs {
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Arc<Certs>> {
        let ck = crate::pem::load_certified_key(cert, key)?;
        Ok(Arc::new(Certs {
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
            not_after: AtomicI64::new(expiry(&ck)),
            current: RwLock::new(Arc::new(ck)),
            stamp: Mutex::new(stamp(cert, key)),
            acme: false,
        }))
    }

    /// Certificates kept by ACME in `cert`/`key`: loaded from there, or `placeholder` until the files exist.
    pub fn load_acme(cert: &Path, key: &Path, placeholder: Option<CertifiedKey>) -> anyhow::Result<Arc<Certs>> {
        let (ck, not_after, stamp_now) = match placeholder {
            Some(ck) => (ck, 0, None),
            None => {
                let ck = crate::pem::load_certified_key(cert, key)?;
                let t = expiry(&ck);
                (ck, t, stamp(cert, key))
            }
        };
        Ok(Arc::new(Certs {
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
            current: RwLock::new(Arc::new(ck)),
            stamp: Mutex::new(stamp_now),
            acme: true,
            not_after: AtomicI64::new(not_after),
        }))
    }

    /// Re-read the files if they changed (or always, with `force`). A broken new pair is rejected and the
    /// running certificate stays. Returns whether a new certificate is now in use.
    pub fn reload(&self, force: bool) -> anyhow::Result<bool> {
        let now = stamp(&self.cert_path, &self.key_path);
        if (!force && now == *self.stamp.lock()) || (self.acme && now.is_none()) {
            return Ok(false);
        }
        let ck = crate::pem::load_certified_key(&self.cert_path, &self.key_path)?;
        self.not_after.store(expiry(&ck), Ordering::Relaxed);
        *self.current.write() = Arc::new(ck);
        *self.stamp.lock() = now;
        Ok(true)
    }

    /// The leaf certificate in use (for tests and logs).
    pub fn leaf(&self) -> CertificateDer<'static> {
        self.current.read().cert[0].clone()
    }

    /// When the certificate in use expires (Unix seconds); `None` for the ACME placeholder.
    pub fn not_after(&self) -> Option<i64> {
        Some(self.not_after.load(Ordering::Relaxed)).filter(|t| *t != 0)
    }
}

fn expiry(ck: &CertifiedKey) -> i64 {
    crate::pem::cert_info(&ck.cert[0]).map(|i| i.not_after).unwrap_or(0)
}

impl crate::metrics::Source for Certs {
    fn collect(&self, out: &mut Vec<crate::metrics::Sample>) {
        if let Some(t) = self.not_after() {
            out.push(crate::metrics::Sample::gauge(
                "tls_certificate_expiry_timestamp_seconds",
                "When the TLS certificate in use expires (Unix time)",
                t.max(0) as u64,
            ));
        }
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

/// The certificate for each handshake: the one in use, or an ACME TLS-ALPN-01 answer for a validation handshake.
#[derive(Debug)]
struct Resolver {
    certs: Arc<Certs>,
    acme: Option<Arc<crate::challenges::Challenges>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(acme) = &self.acme {
            if hello.alpn().is_some_and(|mut protos| protos.any(|p| p == crate::challenges::ALPN)) {
                // Only ever the challenge certificate here (RFC 8737 §3); no answer → no handshake.
                return hello.server_name().and_then(|name| acme.alpn_cert(name));
            }
        }
        self.certs.resolve(hello)
    }
}

/// rustls server settings: HTTP/2, HTTP/1.1 and `stun.turn` (RFC 7443) over ALPN, plus `acme-tls/1` when
/// TLS-ALPN-01 `acme` challenges are answered on this port.
pub fn server_config(
    certs: Arc<Certs>,
    acme: Option<Arc<crate::challenges::Challenges>>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut alpn = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"stun.turn".to_vec()];
    if acme.is_some() {
        alpn.push(crate::challenges::ALPN.to_vec());
    }
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(crate::pem::provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver { certs, acme }));
    cfg.alpn_protocols = alpn;
    Ok(Arc::new(cfg))
}

/// Check the certificate files for renewal every minute until `shutdown`.
pub async fn watch(certs: Arc<Certs>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => match certs.reload(false) {
                Ok(true) => tracing::info!(cert = %certs.cert_path.display(), "TLS certificate renewed on disk: now in use"),
                Ok(false) => {}
                Err(e) => tracing::error!("TLS certificate changed on disk but cannot be used, keeping the old one: {e:#}"),
            },
        }
    }
}

/// What the first bytes of a decrypted stream are.
#[derive(Debug, PartialEq, Eq)]
pub enum Protocol {
    /// A STUN message (first two bits 0 and the magic cookie): TURN over TLS. A TURN client's first message on
    /// a connection is always a STUN request; ChannelData needs an allocation first.
    Stun,
    Http,
}

/// Classify by the first 8 bytes (fewer if the client sent less and closed).
pub fn classify(first: &[u8]) -> Protocol {
    if first.len() >= 8 && first[0] & 0xC0 == 0 && first[4..8] == [0x21, 0x12, 0xA4, 0x42] {
        Protocol::Stun
    } else {
        Protocol::Http
    }
}

/// A stream whose first bytes were already read; they are replayed before the rest.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed { prefix, pos: 0, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

pub type TlsStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// Where a TLS listener sends what it accepted.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    /// The shared port: HTTPS/WSS and TURNS.
    Shared,
    /// A TURNS-only port (e.g. 5349).
    TurnOnly,
}

/// Accept TLS connections on `listener` until `shutdown`, handing each decrypted stream to `dispatch` with
/// the bytes already read and the protocol they belong to.
pub async fn serve<F>(
    listener: std::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    role: Role,
    shutdown: CancellationToken,
    dispatch: F,
) -> anyhow::Result<()>
where
    F: Fn(Protocol, Prefixed<TlsStream>, SocketAddr, SocketAddr) + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let local = listener.local_addr()?;
    match role {
        Role::Shared => tracing::info!("TLS listening on {local} (HTTPS, WSS at /ws, and TURN over TLS)"),
        Role::TurnOnly => tracing::info!("TURN over TLS listening on {local}"),
    }
    let dispatch = Arc::new(dispatch);
    let pending = crate::limits::ConnCounter::new();
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("TLS accept on {local} failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = pending.acquire(remote.ip(), usize::MAX, HANDSHAKES_PER_SOURCE) else {
            tracing::debug!(%remote, "TLS connection refused: {HANDSHAKES_PER_SOURCE} handshakes in progress from its source");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, dispatch) = (acceptor.clone(), dispatch.clone());
        tokio::spawn(async move {
            let start = async {
                let mut tls = acceptor.accept(tcp).await?;
                if tls.get_ref().1.alpn_protocol() == Some(crate::challenges::ALPN) {
                    // An ACME validation handshake: it has seen the challenge certificate; nothing is served.
                    tls.shutdown().await?;
                    return Ok((tls, Vec::new()));
                }
                let mut first = vec![0u8; 8];
                let mut got = 0;
                while got < first.len() {
                    let n = tls.read(&mut first[got..]).await?;
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                first.truncate(got);
                Ok::<_, io::Error>((tls, first))
            };
            let started = tokio::time::timeout(HANDSHAKE_TIMEOUT, start).await;
            drop(slot);
            match started {
                Ok(Ok((tls, first))) if !first.is_empty() => {
                    let proto = match role {
                        Role::TurnOnly => Protocol::Stun,
                        Role::Shared => classify(&first),
                    };
                    dispatch(proto, Prefixed::new(first, tls), remote, local);
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(%remote, "TLS handshake failed: {e}"),
                Err(_) => tracing::debug!(%remote, "TLS client too slow; closed"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_stun_and_http() {
        let stun = [0x00, 0x03, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        assert_eq!(classify(&stun), Protocol::Stun);
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Protocol::Http);
        assert_eq!(classify(b"PRI * HTTP/2.0"), Protocol::Http);
        assert_eq!(
            classify(&[0x40, 0x00, 0x00, 0x04, 0x21, 0x12, 0xA4, 0x42]),
            Protocol::Http,
            "ChannelData never opens a stream"
        );
        assert_eq!(classify(&stun[..4]), Protocol::Http);
    }

    #[tokio::test]
    async fn prefixed_replays_then_reads_on() {
        let mut p = Prefixed::new(b"abc".to_vec(), &b"def"[..]);
        let mut out = String::new();
        p.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "abcdef");
    }
}
