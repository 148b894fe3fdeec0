//! Signaling benchmark: holds N concurrent WebSocket clients against a real `ponte` process, pairs P of them and
//! relays `signal` messages between each pair, then prints msgs/s, one-way latency p50/p99 and the server's RSS.
//!
//! The server runs as a separate process (the `ponte` binary built next to this example, with a temporary
//! config) so that its memory is measured apart from the load generator's.
//!
//! ```text
//! cargo build --release && cargo run --release --example bench-signaling -- --clients 10000 --pairs 500 --seconds 10
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

#[derive(Debug, Parser)]
#[command(about = "Hold N signaling clients against a ponte child process and relay messages between P pairs")]
struct Args {
    /// Concurrent WebSocket clients to hold.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Pairs (2P of the clients) that relay signal messages to each other.
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    /// Relay phase duration, after a 1 s warm-up.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Messages in flight per pair (each bounces between the two sides).
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Padding in each signal payload, bytes (an ICE candidate is ~200, an SDP offer a few KiB).
    #[arg(long, default_value_t = 200)]
    payload: usize,
    /// The ponte binary (default: `ponte` next to this example's directory, i.e. target/release/ponte).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Source addresses 127.0.0.2.. to spread clients over (ephemeral ports run out near 28k per address).
    #[arg(long)]
    source_ips: Option<usize>,
    /// Connection attempts in flight while ramping up.
    #[arg(long, default_value_t = 200)]
    ramp_concurrency: usize,
}

#[derive(Deserialize)]
struct In {
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    data: Option<Payload>,
}

#[derive(Deserialize)]
struct Payload {
    t: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.pairs * 2 <= args.clients, "--pairs {} needs at least {} clients", args.pairs, args.pairs * 2);
    let fd_limit = raise_fd_limit();
    // Each client holds one fd here; the server holds one per client too (it inherits this limit).
    if (fd_limit as usize) < args.clients + 100 {
        bail!(
            "RLIMIT_NOFILE is {fd_limit}; {} clients need at least {} (raise the hard limit: ulimit -Hn)",
            args.clients,
            args.clients + 100
        );
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut server = Server::start(&args)?;
    let result = bench(&args, &mut server).await;
    server.stop();
    result
}

async fn bench(args: &Args, server: &mut Server) -> anyhow::Result<()> {
    let rss_base = server.rss_kib()?;
    println!("server pid {} on {}; RSS before clients: {:.1} MiB", server.pid(), server.addr, rss_base as f64 / 1024.0);

    // Ramp up: connect + hello every client.
    let n_ips = args.source_ips.unwrap_or_else(|| args.clients.div_ceil(20_000)).max(1);
    let t0 = Instant::now();
    let sem = Arc::new(Semaphore::new(args.ramp_concurrency));
    let mut joins = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let sem = sem.clone();
        let addr = server.addr;
        let src = Ipv4Addr::new(127, 0, 0, 2 + (i % n_ips) as u8);
        joins.push(tokio::spawn(async move {
            let _permit = sem.acquire().await?;
            open_client(addr, src).await
        }));
    }
    let mut clients = Vec::with_capacity(args.clients);
    for j in joins {
        clients.push(j.await??);
    }
    let ramp = t0.elapsed();
    println!(
        "{} clients connected and welcomed in {:.2} s ({:.0}/s) from {n_ips} source address(es)",
        clients.len(),
        ramp.as_secs_f64(),
        clients.len() as f64 / ramp.as_secs_f64()
    );

    // Pair the first 2P clients; keep the rest idle (reading, so they answer pings like browsers do).
    let mut paired: Vec<(Client, Client)> = Vec::with_capacity(args.pairs);
    let rest = clients.split_off(args.pairs * 2);
    let mut it = clients.into_iter();
    while let (Some(a), Some(b)) = (it.next(), it.next()) {
        paired.push((a, b));
    }
    let mut idle_tasks = Vec::with_capacity(rest.len());
    let going_away = Arc::new(AtomicU64::new(0));
    for c in rest {
        idle_tasks.push(tokio::spawn(idle(c.ws, going_away.clone())));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = server.rss_kib()?;
    let per_client = (rss_idle.saturating_sub(rss_base) as f64 * 1024.0) / args.clients as f64;
    println!(
        "server RSS with {} idle clients: {:.1} MiB ({:.0} bytes/client over the baseline)",
        args.clients,
        rss_idle as f64 / 1024.0,
        per_client
    );

    // Pairing handshakes, all pairs at once.
    let t0 = Instant::now();
    let mut setups = Vec::new();
    for (a, b) in paired {
        setups.push(tokio::spawn(pair(a, b)));
    }
    let mut pairs = Vec::new();
    for s in setups {
        pairs.push(s.await??);
    }
    if !pairs.is_empty() {
        println!("{} pairs connected+accepted in {:.2} s", pairs.len(), t0.elapsed().as_secs_f64());
    }

    // Relay: each pair keeps `window` messages bouncing; latency is one-way (sender → server → receiver),
    // measured with this process's monotonic clock on both ends.
    let epoch = Instant::now();
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let padding: Arc<str> = "x".repeat(args.payload).into();
    let mut relays = Vec::new();
    for (a, b) in pairs {
        for (c, peer, starts) in [(a.0, b.1.clone(), true), (b.0, a.1.clone(), false)] {
            let ctx = RelayCtx {
                epoch,
                measuring: measuring.clone(),
                stop: stop.clone(),
                count: count.clone(),
                padding: padding.clone(),
                peer,
                initial: if starts { args.window } else { 0 },
            };
            relays.push(tokio::spawn(relay(c, ctx)));
        }
    }
    let mut latencies: Vec<u32> = Vec::new();
    let mut measured = Duration::ZERO;
    if !relays.is_empty() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        measuring.store(true, Ordering::Relaxed);
        let m0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        measuring.store(false, Ordering::Relaxed);
        measured = m0.elapsed();
        stop.store(true, Ordering::Relaxed);
        for r in relays {
            latencies.extend(r.await??);
        }
    }
    let rss_after = server.rss_kib()?;
    let hwm = server.status_kib("VmHWM")?;

    let msgs = count.load(Ordering::Relaxed);
    println!();
    println!("== results ==");
    println!("clients            {}", args.clients);
    println!("pairs              {} (window {}, payload {} B)", args.pairs, args.window, args.payload);
    if msgs > 0 {
        latencies.sort_unstable();
        let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)] as f64 / 1000.0;
        println!(
            "relayed            {msgs} msgs in {:.2} s = {:.0} msgs/s",
            measured.as_secs_f64(),
            msgs as f64 / measured.as_secs_f64()
        );
        println!("latency one-way    p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms", pct(0.50), pct(0.99), pct(1.0));
    }
    println!(
        "server RSS         baseline {:.1} MiB, idle with {} clients {:.1} MiB, after relay {:.1} MiB, peak {:.1} MiB",
        rss_base as f64 / 1024.0,
        args.clients,
        rss_idle as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!("per client         {per_client:.0} bytes");

    // Graceful shutdown with the idle clients still connected: every one should get close code 1001.
    let idle_count = idle_tasks.len();
    let t0 = Instant::now();
    server.stop();
    let stopped = t0.elapsed();
    let wait = tokio::time::timeout(Duration::from_secs(10), async {
        for t in idle_tasks {
            let _ = t.await;
        }
    });
    let _ = wait.await;
    println!(
        "shutdown           SIGTERM to exit {:.2} s; {}/{} idle clients got close 1001",
        stopped.as_secs_f64(),
        going_away.load(Ordering::Relaxed),
        idle_count
    );
    Ok(())
}

struct Client {
    ws: Ws,
    id: String,
}

async fn open_client(server: SocketAddr, src: Ipv4Addr) -> anyhow::Result<Client> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(IpAddr::V4(src), 0)).with_context(|| format!("bind {src}"))?;
    let stream = sock.connect(server).await.with_context(|| format!("connect {server} from {src}"))?;
    stream.set_nodelay(true)?;
    // Small buffers so the load generator itself fits 10k+ clients.
    let cfg = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(format!("ws://{server}/ws"), stream, Some(cfg))
        .await
        .context("WebSocket handshake")?;
    ws.send(Message::text(json!({"type": "hello", "v": 1}).to_string())).await?;
    let welcome = next_json(&mut ws).await?;
    anyhow::ensure!(welcome.ty == "welcome", "expected welcome, got {}", welcome.ty);
    Ok(Client { ws, id: welcome.id.context("welcome without id")? })
}

async fn next_json(ws: &mut Ws) -> anyhow::Result<In> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await.context("no message within 30 s")? {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).with_context(|| format!("bad message {t}")),
            Some(Ok(Message::Close(f))) => bail!("closed by server: {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
}

/// Keep reading so tungstenite answers the server's pings, like an idle browser tab; count a 1001 close.
async fn idle(mut ws: Ws, going_away: Arc<AtomicU64>) {
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Close(Some(f)) = m {
            if u16::from(f.code) == 1001 {
                going_away.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn pair(mut a: Client, mut b: Client) -> anyhow::Result<((Ws, String), (Ws, String))> {
    a.ws.send(Message::text(json!({"type": "connect", "to": b.id}).to_string())).await?;
    let m = next_json(&mut b.ws).await?;
    anyhow::ensure!(m.ty == "incoming", "expected incoming, got {}", m.ty);
    b.ws.send(Message::text(json!({"type": "accept", "from": a.id}).to_string())).await?;
    for ws in [&mut a.ws, &mut b.ws] {
        loop {
            let m = next_json(ws).await?;
            if m.ty == "paired" {
                break;
            }
            anyhow::ensure!(m.ty == "request_sent", "unexpected {}", m.ty);
        }
    }
    Ok(((a.ws, a.id), (b.ws, b.id)))
}

struct RelayCtx {
    epoch: Instant,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    padding: Arc<str>,
    peer: String,
    initial: usize,
}

fn signal_text(ctx: &RelayCtx) -> String {
    let t = ctx.epoch.elapsed().as_micros() as u64;
    format!(r#"{{"type":"signal","to":"{}","data":{{"t":{t},"pad":"{}"}}}}"#, ctx.peer, ctx.padding)
}

/// Bounce every received signal back to the peer; return the one-way latencies (µs) seen while measuring.
async fn relay(mut ws: Ws, ctx: RelayCtx) -> anyhow::Result<Vec<u32>> {
    let mut lat = Vec::new();
    for _ in 0..ctx.initial {
        ws.send(Message::text(signal_text(&ctx))).await?;
    }
    while !ctx.stop.load(Ordering::Relaxed) {
        let Ok(m) = tokio::time::timeout(Duration::from_millis(200), next_json(&mut ws)).await else { continue };
        let m = m?;
        match (m.ty.as_str(), m.data) {
            ("signal", Some(p)) => {
                let now = ctx.epoch.elapsed().as_micros() as u64;
                if ctx.measuring.load(Ordering::Relaxed) {
                    lat.push(now.saturating_sub(p.t).min(u32::MAX as u64) as u32);
                    ctx.count.fetch_add(1, Ordering::Relaxed);
                }
                ws.send(Message::text(signal_text(&ctx))).await?;
            }
            ("error", _) => bail!("server refused a relay message (raise the bench config's limits?)"),
            _ => {}
        }
    }
    Ok(lat)
}

/// The ponte child process.
struct Server {
    child: Child,
    stopped: bool,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(args: &Args) -> anyhow::Result<Server> {
        let bin = match &args.server_bin {
            Some(b) => b.clone(),
            None => {
                let exe = std::env::current_exe()?;
                // target/release/examples/bench-signaling → target/release/ponte
                exe.parent().and_then(|p| p.parent()).map(|p| p.join("ponte")).context("cannot locate target dir")?
            }
        };
        if !bin.exists() {
            bail!("{} does not exist; run `cargo build --release` first (or pass --server-bin)", bin.display());
        }
        // Pick a free loopback port (tiny race with other programs; fine for a benchmark).
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("bench.toml");
        let limit = args.clients + 1000;
        std::fs::write(
            &config,
            format!(
                "[http]\nlisten = \"{addr}\"\n\n[turn]\nenabled = false\n\n[signaling]\nmax_connections = {limit}\n\
                 max_connections_per_ip = {limit}\nmessages_per_sec = 1000000\nconnect_requests_per_min = 1000000\n\n\
                 [log]\nlevel = \"warn\"\n"
            ),
        )?;
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let mut server = Server { child, stopped: false, addr, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Some(st) = server.child.try_wait()? {
                bail!("ponte exited during startup: {st}");
            }
            if Instant::now() > deadline {
                server.stop();
                bail!("ponte did not listen on {addr} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Let the startup connection probe's close settle before the baseline RSS.
        std::thread::sleep(Duration::from_millis(300));
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn status_kib(&self, field: &str) -> anyhow::Result<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let line =
            s.lines().find(|l| l.starts_with(field)).with_context(|| format!("no {field} in /proc/PID/status"))?;
        Ok(line.split_whitespace().nth(1).context("malformed status line")?.parse()?)
    }

    fn rss_kib(&self) -> anyhow::Result<u64> {
        self.status_kib("VmRSS:")
    }

    fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return; // already reaped: its pid may belong to another process by now
        }
        // SIGTERM: ponte shuts down gracefully (closing every socket with 1001).
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return;
                }
            }
        }
    }
}

/// Raise the soft open-files limit to the hard limit; returns the new soft limit.
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every platform
fn raise_fd_limit() -> u64 {
    unsafe {
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return 1024;
        }
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur as u64
    }
}
