//! HTTP connections one source can open and walk away from: silent sockets, a bare HTTP/2 preface, idle
//! keep-alive connections and connection floods are bounded per source and closed by timers, while another
//! source keeps being served.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{connect_from, http_get, test_config, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Wait (bounded) until the server closes `c`: a read returns 0 or an error.
async fn closed_within(c: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, c.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

async fn get_ok(http: SocketAddr) {
    let (status, _, _) = http_get(http, "/healthz", &[]).await;
    assert_eq!(status, 200, "a normal client from another address must be served");
}

/// A socket that sends nothing, one that sends only the HTTP/2 connection preface (hyper runs no timer while it
/// tells HTTP/1 from HTTP/2), and an idle keep-alive connection after one request are all closed.
#[tokio::test]
async fn silent_preface_only_and_idle_connections_are_closed() {
    let s = TestServer::start(test_config()).await;
    let mut silent = connect_from("127.0.0.2", s.http).await;
    let mut preface = connect_from("127.0.0.2", s.http).await;
    preface.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    get_ok(s.http).await;
    assert!(closed_within(&mut silent, Duration::from_secs(15)).await, "a silent socket stayed open past 15 s");
    assert!(closed_within(&mut preface, Duration::from_secs(5)).await, "an HTTP/2-preface-only socket stayed open");

    // Keep-alive: one request, then silence; closed (HTTP/1 by hyper's header timer for the next request, HTTP/2 by
    // ponte's 60 s idle timer).
    let mut idle = connect_from("127.0.0.2", s.http).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(std::str::from_utf8(&buf[..n]).unwrap().starts_with("HTTP/1.1 200"));
    assert!(closed_within(&mut idle, Duration::from_secs(75)).await, "an idle keep-alive connection stayed open");
    s.stop().await.unwrap();
}

/// One source holding many connections gets refused past `http.max_connections_per_ip`; another source is served,
/// and the first gets its connections back as soon as it closes some.
#[tokio::test]
async fn connections_per_source_are_capped() {
    let mut cfg = test_config();
    cfg.http.max_connections_per_ip = 8;
    let s = TestServer::start(cfg).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(connect_from("127.0.0.2", s.http).await);
    }
    // Give the server a moment to accept all eight.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut refused = connect_from("127.0.0.2", s.http).await;
    assert!(closed_within(&mut refused, Duration::from_secs(2)).await, "the ninth connection was not refused");
    get_ok(s.http).await;
    held.truncate(4);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = connect_from("127.0.0.2", s.http).await;
    again.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut text = String::new();
    again.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "a freed slot is usable again: {text}");
    s.stop().await.unwrap();
}
