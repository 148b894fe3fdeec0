//! Shared test harness: start the real ponte server in-process on ephemeral loopback ports, and stop it.
#![allow(dead_code)]

pub mod turn_client;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use ponte::config::{Config, Secret};
use ponte::{Daemon, Listeners};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A config with every listener on 127.0.0.1 port 0, a fixed TURN secret and quiet logs.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.turn.listen_udp = vec!["127.0.0.1:0".parse().unwrap()];
    c.turn.listen_tcp = vec!["127.0.0.1:0".parse().unwrap()];
    c.turn.secret = Some(Secret::new("test-secret-0123456789abcdef"));
    c.turn.relay_ip = Some("127.0.0.1".parse().unwrap());
    c.metrics.listen = "127.0.0.1:0".parse().unwrap();
    c
}

pub struct TestServer {
    pub ctx: Arc<Daemon>,
    pub http: SocketAddr,
    pub turn_udp: Vec<SocketAddr>,
    pub turn_tcp: Vec<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    /// Start the server; it is accepting connections when this returns (the sockets are bound first).
    pub async fn start(config: Config) -> TestServer {
        let listeners = Listeners::bind(&config).expect("bind test listeners");
        Self::start_bound(config, listeners).await
    }

    /// Start the server on listeners the test bound already (to learn the ports before the server starts).
    pub async fn start_bound(config: Config, listeners: Listeners) -> TestServer {
        init_logs();
        let problems = config.validate();
        assert!(problems.is_empty(), "test config invalid: {problems:?}");
        let (http, turn_udp, turn_tcp) =
            (listeners.http_addr(), listeners.turn_udp_addrs(), listeners.turn_tcp_addrs());
        let metrics = listeners.metrics_addr();
        let tls = listeners.tls_addr();
        let ctx = Arc::new(Daemon::new(config, &listeners).expect("daemon"));
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(ponte::server::run_with(ctx.clone(), listeners, shutdown.clone()));
        // Wait (briefly) until every component says ok: a test that asks `/healthz` or runs `ponte doctor` right
        // away saw TURN still "starting" on a loaded machine. A server meant to be unhealthy just waits 10 s.
        let ready_by = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !ctx.health.healthy() && std::time::Instant::now() < ready_by && !handle.is_finished() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        TestServer { ctx, http, turn_udp, turn_tcp, metrics, tls, shutdown, handle }
    }

    pub async fn start_default() -> TestServer {
        Self::start(test_config()).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// Scrape `/metrics` and parse it into (series, value) pairs.
    pub async fn scrape(&self) -> Vec<(String, f64)> {
        let (status, _, body) = http_get(self.metrics.expect("metrics enabled"), "/metrics", &[]).await;
        assert_eq!(status, 200);
        ponte::metrics::parse_text(&String::from_utf8(body).unwrap())
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }

    /// Request shutdown and wait for `run` to return (bounded: a hang fails the test).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), self.handle)
            .await
            .expect("server did not stop within 5 s")
            .expect("server task panicked")
    }
}

fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .with_test_writer()
            .try_init();
    });
}

/// True when running in CI (`CI=true`): a missing external tool is then a failure, never a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false)
}

/// Check that an external tool exists. Outside CI a missing tool skips the test (returns false) with a loud
/// message; in CI it panics.
pub fn require_tool(name: &str) -> bool {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        if in_ci() {
            panic!("required tool `{name}` is missing (CI=true): .ci/run must install it");
        }
        eprintln!("SKIPPED: `{name}` is not installed (run .ci/run's install step, or set CI=true to make this fail)");
    }
    found
}

/// A tiny HTTP/1.1 client for tests: returns (status, headers lowercased, body).
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    extra_headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in extra_headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .unwrap();
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("header end");
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let mut body = buf[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")) {
        body = dechunk(&body);
    }
    (status, headers, body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..eol]).unwrap().split(';').next().unwrap().trim(), 16)
                .unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
    out
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A TCP connection to `to` from the loopback address `from` (e.g. 127.0.0.2), so that a test can play a second
/// source: every 127.0.0.0/8 address is local.
pub async fn connect_from(from: &str, to: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from.parse().unwrap(), 0)).unwrap();
    socket.connect(to).await.unwrap()
}
