//! Built-in TLS: HTTPS, WSS and TURN over TLS on one port (told apart after the handshake), certificate reload,
//! and `turns:` in the ICE servers. Certificates are made in the test (rcgen): a CA and a leaf for localhost.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{test_config, TestServer};
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

struct Pki {
    ca_der: CertificateDer<'static>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "ponte test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        Pki { ca_der: ca.der().clone(), issuer: rcgen::Issuer::new(params, key) }
    }

    /// Write a leaf for localhost/127.0.0.1 (fullchain.pem + privkey.pem) into `dir`; returns its DER.
    fn leaf(&self, dir: &Path) -> (PathBuf, PathBuf, CertificateDer<'static>) {
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (dir.join("fullchain.pem"), dir.join("privkey.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k, cert.der().clone())
    }

    fn connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }
}

async fn tls_connect(pki: &Pki, addr: SocketAddr) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    pki.connector().connect(ServerName::try_from("localhost").unwrap(), tcp).await.expect("TLS handshake")
}

async fn https_get(pki: &Pki, addr: SocketAddr, path: &str) -> (String, CertificateDer<'static>) {
    let mut s = tls_connect(pki, addr).await;
    let peer_cert = s.get_ref().1.peer_certificates().unwrap()[0].clone();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n", addr.port()).as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.expect("response in time");
    (String::from_utf8_lossy(&out).to_string(), peer_cert)
}

fn tls_config(dir: &Path, pki: &Pki) -> ponte::config::Config {
    let (cert, key, _) = pki.leaf(dir);
    let mut c = test_config();
    c.tls.cert = Some(cert);
    c.tls.key = Some(key);
    c.tls.listen = "127.0.0.1:0".parse().unwrap();
    c
}

#[tokio::test]
async fn https_wss_and_turns_share_one_port() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let s = TestServer::start(tls_config(dir.path(), &pki)).await;
    let tls = s.tls.expect("TLS listener");

    // HTTPS: the page and /healthz.
    let (resp, _) = https_get(&pki, tls, "/").await;
    assert!(resp.starts_with("HTTP/1.1 200") && resp.contains("<title>ponte"), "{resp}");
    let (resp, _) = https_get(&pki, tls, "/healthz").await;
    assert!(resp.starts_with("HTTP/1.1 200") && resp.contains("\"status\":\"ok\""), "{resp}");

    // WSS on the same port: the welcome lists turns: on this port.
    let stream = tls_connect(&pki, tls).await;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
        "wss://localhost:{}/ws",
        tls.port()
    ))
    .unwrap();
    req.headers_mut().insert("origin", format!("https://localhost:{}", tls.port()).parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream).await.expect("WSS upgrade");
    ws.send(Message::text(r#"{"type":"hello","v":1}"#)).await.unwrap();
    let welcome = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap() {
            Message::Text(t) => break serde_json::from_str::<serde_json::Value>(&t).unwrap(),
            _ => continue,
        }
    };
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let urls: Vec<String> = welcome["ice_servers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["urls"].as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_string()))
        .collect();
    let turns = format!("turns:localhost:{}?transport=tcp", tls.port());
    assert!(urls.contains(&turns), "{urls:?}");

    // TURN over TLS on the same port: a STUN Binding request gets its mapped address back.
    let mut t = tls_connect(&pki, tls).await;
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    req.extend_from_slice(&[7u8; 12]);
    t.write_all(&req).await.unwrap();
    let mut head = [0u8; 20];
    tokio::time::timeout(Duration::from_secs(5), t.read_exact(&mut head)).await.unwrap().unwrap();
    assert_eq!(&head[..2], &[0x01, 0x01], "Binding success response");
    assert_eq!(&head[8..20], &[7u8; 12], "same transaction");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn certificate_reload_picks_up_a_new_cert_and_rejects_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let s = TestServer::start(tls_config(dir.path(), &pki)).await;
    let tls = s.tls.unwrap();
    let certs = s.ctx.certs.clone().unwrap();
    let (_, first) = https_get(&pki, tls, "/healthz").await;

    // Renewal on disk (as certbot does) is picked up.
    std::thread::sleep(Duration::from_millis(20));
    let (_, _, renewed) = pki.leaf(dir.path());
    assert!(certs.reload(true).unwrap());
    let (resp, now) = https_get(&pki, tls, "/healthz").await;
    assert!(resp.starts_with("HTTP/1.1 200"));
    assert_ne!(now, first);
    assert_eq!(now, renewed);

    // A broken key is rejected; the running certificate stays in use.
    std::fs::write(dir.path().join("privkey.pem"), "not a key").unwrap();
    let err = certs.reload(true).unwrap_err();
    assert!(format!("{err:#}").contains("tls.key"), "{err:#}");
    let (resp, still) = https_get(&pki, tls, "/healthz").await;
    assert!(resp.starts_with("HTTP/1.1 200"));
    assert_eq!(still, renewed);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn slow_or_silent_tls_clients_do_not_block_others() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let s = TestServer::start(tls_config(dir.path(), &pki)).await;
    let tls = s.tls.unwrap();
    // Connections that never start a handshake, and one that sends garbage.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(tokio::net::TcpStream::connect(tls).await.unwrap());
    }
    let mut junk = tokio::net::TcpStream::connect(tls).await.unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let (resp, _) = https_get(&pki, tls, "/healthz").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    s.stop().await.unwrap();
}

#[test]
fn tls_config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let (cert, key, _) = pki.leaf(dir.path());
    let mut c = test_config();
    c.tls.cert = Some(cert.clone());
    let p = c.problems();
    assert!(p.iter().any(|p| p.key == "tls.key"), "{p:?}");

    c.tls.key = Some(dir.path().join("missing.pem"));
    let p = c.problems();
    assert!(p.iter().any(|p| p.key == "tls.key" && p.message.contains("missing.pem")), "{p:?}");

    // A key that belongs to another certificate.
    let other = tempfile::tempdir().unwrap();
    let (_, other_key, _) = pki.leaf(other.path());
    c.tls.key = Some(other_key);
    let p = c.problems();
    assert!(p.iter().any(|p| p.key == "tls.key" && p.message.contains("does not match")), "{p:?}");

    c.tls.key = Some(key);
    assert!(c.problems().is_empty());
}

/// coturn's own client allocates over TLS on ponte's shared port and relays to an echo peer with no loss.
#[tokio::test]
async fn turnutils_uclient_over_tls() {
    if !common::require_tool("turnutils_uclient") || !common::require_tool("turnutils_peer") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let mut c = tls_config(dir.path(), &pki);
    c.turn.allow_peers = vec!["127.0.0.1/32".parse().unwrap()];
    let s = TestServer::start(c).await;
    let tls = s.tls.unwrap();
    let peer_port = {
        let l = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut peer = tokio::process::Command::new("turnutils_peer")
        .args(["-L", "127.0.0.1", "-p", &peer_port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("turnutils_uclient")
            .args([
                "-t",
                "-S",
                "-c",
                "-p",
                &tls.port().to_string(),
                "-W",
                "test-secret-0123456789abcdef",
                "-u",
                "tls-user",
            ])
            .args(["-e", "127.0.0.1", "-r", &peer_port.to_string(), "-n", "20", "-m", "2", "-l", "120", "127.0.0.1"])
            .output(),
    )
    .await
    .expect("uclient finished")
    .unwrap();
    let _ = peer.kill().await;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let lost = text.lines().find(|l| l.contains("Total lost packets")).unwrap_or_else(|| panic!("no summary:\n{text}"));
    assert!(lost.contains("Total lost packets 0 (0.000000%)"), "{lost}\n{text}");
    let sent = text.lines().find(|l| l.contains("Total transmit time")).map(|_| ()).is_some();
    assert!(sent, "{text}");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn plain_http_redirects_to_https_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let mut c = tls_config(dir.path(), &pki);
    c.tls.redirect_http = true;
    let s = TestServer::start(c).await;
    let tls = s.tls.unwrap();

    let (status, headers, _) = common::http_get(s.http, "/chat?x=1", &[]).await;
    assert_eq!(status, 308);
    let location = common::header(&headers, "location").unwrap();
    assert_eq!(location, format!("https://127.0.0.1:{}/chat?x=1", tls.port()));
    // Health checks stay on plain HTTP.
    assert_eq!(common::http_get(s.http, "/healthz", &[]).await.0, 200);
    // And HTTPS serves the page.
    let (resp, _) = https_get(&pki, tls, "/").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    s.stop().await.unwrap();

    // Without TLS the setting is a config error naming the key.
    let mut c = test_config();
    c.tls.redirect_http = true;
    assert!(c.validate().iter().any(|p| p.key == "tls.redirect_http"));
}

/// One source cannot hold the TLS port with handshakes it never finishes: past 32 at once its further connections
/// are closed at once, while another source's HTTPS request is served.
#[tokio::test]
async fn pending_handshakes_are_capped_per_source() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let s = TestServer::start(tls_config(dir.path(), &pki)).await;
    let tls = s.tls.expect("TLS listener");
    let mut silent = Vec::new();
    for _ in 0..32 {
        silent.push(common::connect_from("127.0.0.2", tls).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut refused = common::connect_from("127.0.0.2", tls).await;
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(2), refused.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "the 33rd silent handshake from one source was not refused");
    let (resp, _) = https_get(&pki, tls, "/healthz").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "another source is served: {resp}");
    drop(silent);
    s.stop().await.unwrap();
}
