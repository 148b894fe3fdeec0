//! Automatic certificates (`[tls.acme]`) against Debian's `pebble` test CA: a real order answered with
//! TLS-ALPN-01 on the TLS port or HTTP-01 on the plain HTTP port (never PEBBLE_VA_ALWAYS_VALID), the cache reused
//! across a restart, and HTTPS/WSS on the same port afterwards. `pebble-challtestsrv` is the DNS server that makes
//! the test domain resolve to 127.0.0.1 for pebble.

mod common;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::{test_config, TestServer};
use futures_util::{SinkExt, StreamExt};
use ponte::config::{AcmeChallenge, AcmeConfig};
use ponte::Listeners;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const DOMAIN: &str = "chat.ponte-acme.test";

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn client_config(roots: &[CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth(),
    )
}

/// GET over TLS (HTTP/1.1, Connection: close) with SNI `name`; returns the response text and the server's leaf.
async fn https_get(
    roots: &[CertificateDer<'static>],
    addr: SocketAddr,
    name: &str,
    path: &str,
) -> (String, CertificateDer<'static>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config(roots));
    let mut s = connector.connect(ServerName::try_from(name.to_string()).unwrap(), tcp).await.expect("TLS handshake");
    let leaf = s.get_ref().1.peer_certificates().unwrap()[0].clone();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.expect("response in time");
    (String::from_utf8_lossy(&out).to_string(), leaf)
}

/// A pebble CA plus the pebble-challtestsrv DNS server it asks, both on loopback; killed on drop.
struct Pebble {
    dir: tempfile::TempDir,
    /// Root of the certificate pebble serves its own API with (ponte's `tls.acme.ca_root`).
    api_root: CertificateDer<'static>,
    api: SocketAddr,
    management: SocketAddr,
    children: Vec<tokio::process::Child>,
}

impl Pebble {
    /// Start pebble, validating on `http_port` (HTTP-01) and `tls_port` (TLS-ALPN-01).
    async fn start(http_port: u16, tls_port: u16) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        // Pebble's API certificate: a throwaway CA and a leaf for 127.0.0.1.
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "pebble API test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()]).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        std::fs::write(dir.path().join("api-root.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("api-cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("api-key.pem"), leaf_key.serialize_pem()).unwrap();

        let dns: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
        let api: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        let management: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        let dns_mgmt = format!("127.0.0.1:{}", free_tcp_port());
        let config = serde_json::json!({ "pebble": {
            "listenAddress": api.to_string(),
            "managementListenAddress": management.to_string(),
            "certificate": dir.path().join("api-cert.pem"),
            "privateKey": dir.path().join("api-key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        std::fs::write(dir.path().join("pebble.json"), config.to_string()).unwrap();

        let log = |name: &str| Stdio::from(std::fs::File::create(dir.path().join(name)).unwrap());
        // Every name resolves to 127.0.0.1 and has no IPv6 address; its own challenge servers stay off.
        let dns_srv = tokio::process::Command::new("pebble-challtestsrv")
            .args(["-dns01", &dns.to_string(), "-management", &dns_mgmt])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", "", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .kill_on_drop(true)
            .spawn()
            .expect("start pebble-challtestsrv");
        let pebble = tokio::process::Command::new("pebble")
            .arg("-config")
            .arg(dir.path().join("pebble.json"))
            .args(["-dnsserver", &dns.to_string()])
            // No artificial validation delay; no random nonce rejections (the test is about challenges).
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .kill_on_drop(true)
            .spawn()
            .expect("start pebble");
        let p = Pebble {
            api_root: CertificateDer::from_pem_file(dir.path().join("api-root.pem")).unwrap(),
            dir,
            api,
            management,
            children: vec![dns_srv, pebble],
        };
        // Ready when the API answers and the DNS server is up (its management port is opened after DNS).
        for addr in [api.to_string(), dns_mgmt] {
            let mut up = false;
            for _ in 0..600 {
                if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                    up = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(up, "{addr} did not come up; logs: {}", p.logs());
        }
        p
    }

    fn directory(&self) -> String {
        format!("https://{}/dir", self.api)
    }

    fn api_root_path(&self) -> PathBuf {
        self.dir.path().join("api-root.pem")
    }

    fn logs(&self) -> String {
        ["pebble.log", "pebble.err", "challtestsrv.log", "challtestsrv.err"]
            .iter()
            .map(|f| format!("--- {f}\n{}", std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default()))
            .collect()
    }

    /// How many certificates pebble has issued (its log has one line per issuance).
    fn issued(&self) -> usize {
        let log = std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
            + &std::fs::read_to_string(self.dir.path().join("pebble.err")).unwrap_or_default();
        log.lines().filter(|l| l.contains("Issued certificate serial")).count()
    }

    /// The root pebble issues under, from its management API (`/roots/0`).
    async fn issuing_root(&self) -> CertificateDer<'static> {
        let (resp, _) = https_get(std::slice::from_ref(&self.api_root), self.management, "127.0.0.1", "/roots/0").await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        let pem = &resp[resp.find("-----BEGIN").expect("a PEM root")..];
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.start_kill();
        }
    }
}

fn acme_config(pebble: &Pebble, cache: &Path, challenge: AcmeChallenge) -> ponte::config::Config {
    let mut c = test_config();
    c.tls.listen = "127.0.0.1:0".parse().unwrap();
    c.tls.acme = Some(AcmeConfig {
        domains: vec![DOMAIN.into()],
        contact: Some("admin@ponte-acme.test".into()),
        directory: pebble.directory(),
        challenge,
        cache_dir: Some(cache.to_path_buf()),
        ca_root: Some(pebble.api_root_path()),
    });
    c
}

/// Wait until the ACME certificate replaced the placeholder.
async fn wait_for_certificate(s: &TestServer, pebble: &Pebble) -> CertificateDer<'static> {
    let certs = s.ctx.certs.clone().expect("TLS on");
    for _ in 0..600 {
        if certs.not_after().is_some() {
            return certs.leaf();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no certificate from pebble within 60 s; logs:\n{}", pebble.logs());
}

/// Start ponte with its HTTP and TLS ports known to pebble before either starts.
async fn start_with_pebble(cache: &Path, challenge: AcmeChallenge, redirect_http: bool) -> (TestServer, Pebble) {
    // Bound first: pebble's config names the ports it validates on.
    let probe = {
        let mut c = test_config();
        c.tls.listen = "127.0.0.1:0".parse().unwrap();
        c.tls.acme = Some(AcmeConfig::default());
        c
    };
    let listeners = Listeners::bind(&probe).unwrap();
    let pebble = Pebble::start(listeners.http_addr().port(), listeners.tls_addr().unwrap().port()).await;
    let mut config = acme_config(&pebble, cache, challenge);
    config.tls.redirect_http = redirect_http;
    (TestServer::start_bound(config, listeners).await, pebble)
}

async fn wss_welcome(roots: &[CertificateDer<'static>], addr: SocketAddr) -> serde_json::Value {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config(roots));
    let stream = connector.connect(ServerName::try_from(DOMAIN).unwrap(), tcp).await.expect("TLS handshake");
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
        "wss://{DOMAIN}:{}/ws",
        addr.port()
    ))
    .unwrap();
    req.headers_mut().insert("origin", format!("https://{DOMAIN}:{}", addr.port()).parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream).await.expect("WSS upgrade");
    ws.send(Message::text(r#"{"type":"hello","v":1}"#)).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap() {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            _ => continue,
        }
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn tls_alpn_01_certificate_from_pebble_is_served_cached_and_reused() {
    if !common::require_tool("pebble") || !common::require_tool("pebble-challtestsrv") {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let (s, pebble) = start_with_pebble(cache.path(), AcmeChallenge::TlsAlpn01, false).await;
    let tls = s.tls.unwrap();
    let placeholder = s.ctx.certs.as_ref().unwrap().leaf();

    let leaf = wait_for_certificate(&s, &pebble).await;
    assert_ne!(leaf, placeholder);
    assert_eq!(pebble.issued(), 1, "{}", pebble.logs());
    let info = ponte::acme::cert_info(&leaf).unwrap();
    assert_eq!(info.dns_names, [DOMAIN]);

    // HTTPS with the new certificate, verified against pebble's issuing root.
    let root = pebble.issuing_root().await;
    let (resp, served) = https_get(std::slice::from_ref(&root), tls, DOMAIN, "/healthz").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(served, leaf);
    // WSS on the same port.
    let welcome = wss_welcome(std::slice::from_ref(&root), tls).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let metrics = s.scrape().await;
    let value = |name: &str| metrics.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
    assert_eq!(value("ponte_acme_orders_total{result=\"issued\"}"), Some(1.0), "{metrics:?}");
    assert_eq!(value("ponte_tls_certificate_expiry_timestamp_seconds"), Some(info.not_after as f64));

    // Cached on disk, owner-only.
    let cache_dir = ponte::acme::Cache::new(s.ctx.config.tls.acme.as_ref().unwrap()).unwrap();
    for f in [cache_dir.cert(), cache_dir.key(), cache_dir.account()] {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    let mtime = std::fs::metadata(cache_dir.cert()).unwrap().modified().unwrap();
    s.stop().await.unwrap();

    // A restart serves the cached certificate at once and orders nothing.
    let mut config = acme_config(&pebble, cache.path(), AcmeChallenge::TlsAlpn01);
    config.tls.listen = "127.0.0.1:0".parse().unwrap();
    let s = TestServer::start(config).await;
    assert_eq!(s.ctx.certs.as_ref().unwrap().leaf(), leaf, "the cached certificate is used from the start");
    let (resp, served) = https_get(std::slice::from_ref(&root), s.tls.unwrap(), DOMAIN, "/").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(served, leaf);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pebble.issued(), 1, "no new order after a restart: {}", pebble.logs());
    assert_eq!(std::fs::metadata(cache_dir.cert()).unwrap().modified().unwrap(), mtime);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn http_01_is_answered_even_with_redirect_http() {
    if !common::require_tool("pebble") || !common::require_tool("pebble-challtestsrv") {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let (s, pebble) = start_with_pebble(cache.path(), AcmeChallenge::Http01, true).await;
    // An unknown token is a 404, not a redirect.
    let (status, _, _) = common::http_get(s.http, "/.well-known/acme-challenge/nope", &[]).await;
    assert_eq!(status, 404);
    let leaf = wait_for_certificate(&s, &pebble).await;
    assert_eq!(ponte::acme::cert_info(&leaf).unwrap().dns_names, [DOMAIN]);
    let root = pebble.issuing_root().await;
    let (resp, served) = https_get(std::slice::from_ref(&root), s.tls.unwrap(), DOMAIN, "/healthz").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(served, leaf);
    // Everything else on plain HTTP still redirects.
    let (status, _, _) = common::http_get(s.http, "/", &[]).await;
    assert_eq!(status, 308);
    s.stop().await.unwrap();
}

#[test]
fn acme_config_errors_name_the_key() {
    let mut c = test_config();
    c.tls.acme = Some(AcmeConfig {
        domains: vec!["*.example.org".into(), "Bad_Name".into()],
        contact: Some("not an email".into()),
        directory: "http://insecure.example/dir".into(),
        cache_dir: Some("/tmp/x".into()),
        ..Default::default()
    });
    c.tls.cert = Some("/etc/ssl/cert.pem".into());
    let keys: Vec<String> = c.validate().into_iter().map(|p| p.key).collect();
    for k in
        ["tls.acme", "tls.acme.domains[0]", "tls.acme.domains[1]", "tls.acme.contact", "tls.acme.directory", "tls.key"]
    {
        assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
    }

    let mut c = test_config();
    c.tls.acme = Some(AcmeConfig { domains: vec!["chat.example.org".into()], ..Default::default() });
    c.tls.redirect_http = true;
    if std::env::var_os("STATE_DIRECTORY").is_none() {
        let p = c.validate();
        assert!(p.iter().any(|p| p.key == "tls.acme.cache_dir" && p.message.contains("StateDirectory")), "{p:?}");
    }
    c.tls.acme.as_mut().unwrap().cache_dir = Some("/var/lib/ponte/acme".into());
    assert!(c.validate().is_empty(), "{:?}", c.validate());

    let c: ponte::config::Config = toml::from_str(
        "[tls.acme]\ndomains = [\"chat.example.org\"]\nchallenge = \"http-01\"\ncache_dir = \"/var/lib/ponte/acme\"\n",
    )
    .unwrap();
    let acme = c.tls.acme.unwrap();
    assert_eq!(acme.challenge, AcmeChallenge::Http01);
    assert_eq!(acme.directory, ponte::config::LETSENCRYPT_DIRECTORY);
}

#[tokio::test]
async fn an_unreachable_ca_leaves_ponte_serving_with_a_placeholder() {
    let cache = tempfile::tempdir().unwrap();
    let mut c = test_config();
    c.tls.listen = "127.0.0.1:0".parse().unwrap();
    c.tls.acme = Some(AcmeConfig {
        domains: vec![DOMAIN.into()],
        // Nothing listens there: every attempt fails at once.
        directory: format!("https://127.0.0.1:{}/dir", free_tcp_port()),
        cache_dir: Some(cache.path().to_path_buf()),
        ..Default::default()
    });
    let s = TestServer::start(c).await;
    let value = |m: &[(String, f64)], name: &str| m.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
    let mut failed = None;
    for _ in 0..100 {
        failed = value(&s.scrape().await, "ponte_acme_orders_total{result=\"failed\"}").filter(|v| *v > 0.0);
        if failed.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(failed, Some(1.0), "the failed attempt is counted (and retried later, not in a loop)");
    let metrics = s.scrape().await;
    assert_eq!(value(&metrics, "ponte_tls_certificate_expiry_timestamp_seconds"), None, "no expiry for a placeholder");

    // Everything else runs: health is ok, and the TLS port answers with the self-signed placeholder for the name.
    let (status, _, _) = common::http_get(s.http, "/healthz", &[]).await;
    assert_eq!(status, 200);
    let placeholder = s.ctx.certs.as_ref().unwrap().leaf();
    assert_eq!(ponte::acme::cert_info(&placeholder).unwrap().dns_names, [DOMAIN]);
    let (resp, served) = https_get(std::slice::from_ref(&placeholder), s.tls.unwrap(), DOMAIN, "/healthz").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(served, placeholder);

    // A TLS-ALPN-01 validation handshake with no challenge pending gets no certificate at all.
    let mut cfg = (*client_config(std::slice::from_ref(&placeholder))).clone();
    cfg.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(s.tls.unwrap()).await.unwrap();
    let r = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(ServerName::try_from(DOMAIN).unwrap(), tcp).await;
    assert!(r.is_err(), "no challenge certificate to show");
    s.stop().await.unwrap();
}
