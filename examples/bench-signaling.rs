//! Signaling benchmark: holds N concurrent WebSocket clients against a real `ponte` process, pairs P of them and
//! relays `signal` messages between each pair, then prints msgs/s, one-way latency p50/p99 and the server's RSS.
//! With `--vs-peerjs` it then does the same against peerjs-server (npm `peer`, run with node from
//! bench/peerjs after `npm ci` there) and prints both side by side with the ratios.
//! With `--cluster` it also starts its own Debian `redis-server` and runs the same load against one ponte node with
//! `[cluster]` (Redis, nothing crossing it) and against two nodes sharing that Redis, clients split between them and
//! every pair across the two (each relayed message goes node → Redis → node); it prints the three side by side with
//! the Redis commands per relayed message (from `INFO commandstats`) and the memory per idle client.
//!
//! Each server runs as a separate process (the `ponte` binary built next to this example, with a temporary
//! config; `node bench/peerjs/server.mjs`) so that its memory is measured apart from the load generator's.
//!
//! ```text
//! cargo build --release && cargo run --release --example bench-signaling -- --clients 10000 --pairs 500 --seconds 10
//! (cd bench/peerjs && npm ci) && cargo run --release --example bench-signaling -- --vs-peerjs --clients 10000
//! cargo run --release --example bench-signaling -- --cluster --clients 10000 --pairs 100
//! ```

#[path = "common/mod.rs"]
mod common;

use std::io::BufRead as _;
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

/// Upper bound on relayed messages counted in one run, so the relay phase ends early on a very fast machine.
const MAX_MESSAGES: u64 = 50_000_000;
/// How often an idle peerjs client sends HEARTBEAT (the PeerJS browser client's default `pingInterval`).
const PEERJS_HEARTBEAT: Duration = Duration::from_secs(5);

#[derive(Debug, Parser)]
#[command(about = "Hold N signaling clients against a ponte child process (and peerjs-server with --vs-peerjs) \
                   and relay messages between P pairs")]
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
    /// Also run the same load against peerjs-server (npm `peer`) and print both side by side.
    #[arg(long)]
    vs_peerjs: bool,
    /// Directory holding server.mjs and node_modules/peer (`npm ci` there first).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/peerjs"))]
    peerjs_dir: PathBuf,
    /// Also run one node with `[cluster]` and two nodes sharing a Redis (started by the benchmark) and print the
    /// three ponte setups side by side.
    #[arg(long)]
    cluster: bool,
    /// The redis-server binary for --cluster (Debian: apt-get install redis-server).
    #[arg(long, default_value = "redis-server")]
    redis_server: PathBuf,
    /// With --cluster: how long to count Redis commands while every client is idle (the nodes refresh presence
    /// every third of cluster.presence_ttl_secs, 5 s by default: take at least two such periods).
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Ponte,
    Peerjs,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Ponte => "ponte",
            Proto::Peerjs => "peerjs",
        }
    }
}

/// What either server sends a client: ponte's `welcome`/`signal`/… or peerjs's `OPEN`/`CANDIDATE`/….
#[derive(Deserialize)]
struct In {
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    id: Option<String>,
    /// ponte's `signal.data`.
    #[serde(default)]
    data: Option<Payload>,
    /// peerjs's relayed `payload`.
    #[serde(default)]
    payload: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Payload {
    t: u64,
}

impl In {
    fn sent_at(&self) -> Option<u64> {
        match (&self.data, &self.payload) {
            (Some(p), _) => Some(p.t),
            (None, Some(v)) => v.get("t").and_then(|t| t.as_u64()),
            _ => None,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.pairs * 2 <= args.clients, "--pairs {} needs at least {} clients", args.pairs, args.pairs * 2);
    let fd_limit = common::raise_fd_limit();
    // Each client holds one fd here; the server holds one per client too (it inherits this limit).
    if (fd_limit as usize) < args.clients + 100 {
        bail!(
            "RLIMIT_NOFILE is {fd_limit}; {} clients need at least {} (raise the hard limit: ulimit -Hn)",
            args.clients,
            args.clients + 100
        );
    }
    if args.vs_peerjs && !args.peerjs_dir.join("node_modules/peer").is_dir() {
        bail!("{}/node_modules/peer is missing: run `npm ci` in {0}", args.peerjs_dir.display());
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    println!(
        "bench-signaling: {} clients, {} pairs, window {}, {} B payload, {} s relay, {} CPUs, load average {}",
        args.clients,
        args.pairs,
        args.window,
        args.payload,
        args.seconds,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        common::load_average()
    );
    let mut results = Vec::new();
    let protos: &[Proto] = if args.vs_peerjs { &[Proto::Ponte, Proto::Peerjs] } else { &[Proto::Ponte] };
    for &proto in protos {
        println!("\n== {} ==", proto.name());
        let mut servers = vec![Server::start(&args, proto, None)?];
        let r = bench(&args, &mut servers, None).await;
        stop_all(&mut servers);
        let r = r.with_context(|| format!("{} run", proto.name()))?;
        r.print(&args);
        results.push(r);
    }
    if let [p, q] = &results[..] {
        side_by_side(&args, p, q);
    }
    if args.cluster {
        let mut single = results.swap_remove(0);
        single.label = Some("ponte, 1 node".into());
        let redis = Redis::start(&args.redis_server)?;
        let mut runs = vec![single];
        for nodes in [1, 2] {
            let label = format!("ponte, {nodes} node{} + Redis", if nodes > 1 { "s" } else { "" });
            println!("\n== {label} ==");
            redis.flush()?;
            let mut servers = Vec::new();
            for n in 0..nodes {
                servers.push(Server::start(&args, Proto::Ponte, Some((redis.url(), format!("bench-{n}"))))?);
            }
            for s in &servers {
                s.wait_cluster_ok()?;
            }
            let r = bench(&args, &mut servers, Some(&redis)).await;
            stop_all(&mut servers);
            let mut r = r.with_context(|| format!("{label} run"))?;
            r.label = Some(label);
            r.print(&args);
            runs.push(r);
        }
        cluster_table(&args, &runs);
    }
    Ok(())
}

fn stop_all(servers: &mut [Server]) {
    for s in servers {
        s.stop();
    }
}

#[derive(Default)]
struct Results {
    proto: Option<Proto>,
    /// The setup's name when it is not just the protocol (the cluster runs).
    label: Option<String>,
    /// Nodes the clients were spread over.
    nodes: usize,
    ramp: Duration,
    rss_base: u64,
    rss_idle: u64,
    rss_after: u64,
    hwm: u64,
    per_client: f64,
    pairing: Option<Duration>,
    msgs: u64,
    measured: Duration,
    /// One-way latencies, µs, sorted.
    latencies: Vec<u32>,
    /// (seconds to exit after SIGTERM, idle clients closed with 1001, idle clients): ponte only.
    shutdown: Option<(f64, u64, usize)>,
    /// Redis commands (all kinds, from INFO commandstats) and PUBLISHes during the measured relay period, and
    /// Redis's `used_memory` growth (bytes) from no clients to all clients idle: cluster runs only.
    redis: Option<RedisCost>,
}

#[derive(Default, Clone, Copy)]
struct RedisCost {
    commands: u64,
    publishes: u64,
    /// Redis CPU in those commands, µs.
    usec: u64,
    /// Commands while the clients sat idle for a fixed time (heartbeats, presence refreshes), per second.
    idle_commands_per_sec: f64,
    memory_per_client: f64,
}

impl Results {
    fn name(&self) -> String {
        self.label.clone().unwrap_or_else(|| self.proto.map_or("?", Proto::name).to_string())
    }

    fn rate(&self) -> f64 {
        if self.measured.is_zero() {
            0.0
        } else {
            self.msgs as f64 / self.measured.as_secs_f64()
        }
    }

    /// Latency percentile in ms.
    fn pct(&self, p: f64) -> f64 {
        let l = &self.latencies;
        if l.is_empty() {
            return 0.0;
        }
        l[((l.len() as f64 * p) as usize).min(l.len() - 1)] as f64 / 1000.0
    }

    fn print(&self, args: &Args) {
        println!("-- results ({}) --", self.name());
        println!("clients            {}", args.clients);
        println!("pairs              {} (window {}, payload {} B)", args.pairs, args.window, args.payload);
        if self.msgs > 0 {
            println!(
                "relayed            {} msgs in {:.2} s = {:.0} msgs/s",
                self.msgs,
                self.measured.as_secs_f64(),
                self.rate()
            );
            println!(
                "latency one-way    p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
                self.pct(0.50),
                self.pct(0.99),
                self.pct(1.0)
            );
        }
        println!(
            "server RSS         baseline {:.1} MiB, idle with {} clients {:.1} MiB, after relay {:.1} MiB, peak {:.1} MiB",
            mib(self.rss_base),
            args.clients,
            mib(self.rss_idle),
            mib(self.rss_after),
            mib(self.hwm)
        );
        println!(
            "per client         {:.0} bytes (over {} node{})",
            self.per_client,
            self.nodes,
            if self.nodes > 1 { "s" } else { "" }
        );
        if let Some(r) = self.redis {
            println!(
                "redis              {} commands ({} PUBLISH) for {} relayed msgs = {:.2} commands/msg, {:.2} µs of Redis CPU/msg; idle: {:.1} commands/s; {:.0} bytes of Redis memory per client",
                r.commands,
                r.publishes,
                self.msgs,
                r.commands as f64 / self.msgs.max(1) as f64,
                r.usec as f64 / self.msgs.max(1) as f64,
                r.idle_commands_per_sec,
                r.memory_per_client
            );
        }
        if let Some((secs, closed, idle)) = self.shutdown {
            println!("shutdown           SIGTERM to exit {secs:.2} s; {closed}/{idle} idle clients got close 1001");
        }
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn side_by_side(args: &Args, p: &Results, q: &Results) {
    println!(
        "\n== ponte vs peerjs-server: {} clients, {} pairs, window {}, {} B payload ==",
        args.clients, args.pairs, args.window, args.payload
    );
    println!("{:<36}{:>14}{:>14}{:>10}", "", "ponte", "peerjs", "ratio");
    // Ratios are oriented so that above 1 favours ponte: rates ponte/peerjs, costs peerjs/ponte.
    let ratio = |num: f64, den: f64| if den > 0.0 && num > 0.0 { format!("{:.2}", num / den) } else { "-".into() };
    let clients = args.clients as f64;
    let rows: [(&str, String, String, String); 9] = [
        (
            "connect + hello/OPEN, clients/s",
            format!("{:.0}", clients / p.ramp.as_secs_f64()),
            format!("{:.0}", clients / q.ramp.as_secs_f64()),
            ratio(q.ramp.as_secs_f64(), p.ramp.as_secs_f64()),
        ),
        (
            "server RSS, no clients",
            format!("{:.1} MiB", mib(p.rss_base)),
            format!("{:.1} MiB", mib(q.rss_base)),
            ratio(q.rss_base as f64, p.rss_base as f64),
        ),
        (
            "server RSS, all clients idle",
            format!("{:.1} MiB", mib(p.rss_idle)),
            format!("{:.1} MiB", mib(q.rss_idle)),
            ratio(q.rss_idle as f64, p.rss_idle as f64),
        ),
        (
            "memory per idle client",
            format!("{:.0} B", p.per_client),
            format!("{:.0} B", q.per_client),
            ratio(q.per_client, p.per_client),
        ),
        ("relayed msgs/s", format!("{:.0}", p.rate()), format!("{:.0}", q.rate()), ratio(p.rate(), q.rate())),
        (
            "latency one-way p50",
            format!("{:.2} ms", p.pct(0.5)),
            format!("{:.2} ms", q.pct(0.5)),
            ratio(q.pct(0.5), p.pct(0.5)),
        ),
        (
            "latency one-way p99",
            format!("{:.2} ms", p.pct(0.99)),
            format!("{:.2} ms", q.pct(0.99)),
            ratio(q.pct(0.99), p.pct(0.99)),
        ),
        (
            "server RSS after relay",
            format!("{:.1} MiB", mib(p.rss_after)),
            format!("{:.1} MiB", mib(q.rss_after)),
            ratio(q.rss_after as f64, p.rss_after as f64),
        ),
        (
            "server peak RSS (VmHWM)",
            format!("{:.1} MiB", mib(p.hwm)),
            format!("{:.1} MiB", mib(q.hwm)),
            ratio(q.hwm as f64, p.hwm as f64),
        ),
    ];
    for (name, a, b, r) in rows {
        println!("{name:<36}{a:>14}{b:>14}{r:>10}");
    }
    println!(
        "(ratios: ponte/peerjs for rates, peerjs/ponte for memory, latency and ramp time: above 1 favours ponte.\n \
         ponte relays `signal` only between pairs that went through connect/accept ({} pairing{}: not in the\n \
         figures above); peerjs-server relays CANDIDATE to any `dst` without pairing. Idle peerjs clients send\n \
         HEARTBEAT every 5 s like the PeerJS client; idle ponte clients answer the server's pings.)",
        p.pairing.map_or("no".into(), |d| format!("{:.2} s for all", d.as_secs_f64())),
        if p.pairing.is_some() { "s" } else { "" }
    );
}

/// Sum of the servers' RSS (or another /proc/PID/status field), KiB.
fn total_kib(servers: &[Server], field: &str) -> anyhow::Result<u64> {
    servers.iter().map(|s| s.status_kib(field)).sum()
}

/// One run against `servers` (one, or several cluster nodes: client i talks to node i % n, so with two nodes every
/// pair, made of clients 2k and 2k+1, crosses the nodes). `redis`: the cluster's Redis, measured around the run.
async fn bench(args: &Args, servers: &mut [Server], redis: Option<&Redis>) -> anyhow::Result<Results> {
    let proto = servers[0].proto;
    let mut res = Results { proto: Some(proto), nodes: servers.len(), ..Default::default() };
    res.rss_base = total_kib(servers, "VmRSS:")?;
    for server in servers.iter() {
        println!(
            "server pid {} on {}; RSS before clients: {:.1} MiB",
            server.pid(),
            server.addr,
            mib(server.rss_kib()?)
        );
    }
    let redis_mem0 = redis.map(Redis::used_memory).transpose()?;

    // Ramp up: connect + hello (ponte) / connect + OPEN (peerjs) every client.
    let n_ips = args.source_ips.unwrap_or_else(|| args.clients.div_ceil(20_000)).max(1);
    let t0 = Instant::now();
    let sem = Arc::new(Semaphore::new(args.ramp_concurrency));
    let mut joins = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let sem = sem.clone();
        let addr = servers[i % servers.len()].addr;
        let src = Ipv4Addr::new(127, 0, 0, 2 + (i % n_ips) as u8);
        joins.push(tokio::spawn(async move {
            let _permit = sem.acquire().await?;
            tokio::time::timeout(Duration::from_secs(30), open_client(proto, addr, src, i))
                .await
                .context("connect + hello took over 30 s")?
        }));
    }
    let mut clients = Vec::with_capacity(args.clients);
    for j in joins {
        clients.push(j.await??);
    }
    res.ramp = t0.elapsed();
    println!(
        "{} clients connected and welcomed in {:.2} s ({:.0}/s) from {n_ips} source address(es)",
        clients.len(),
        res.ramp.as_secs_f64(),
        clients.len() as f64 / res.ramp.as_secs_f64()
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
        idle_tasks.push(tokio::spawn(idle(proto, c.ws, going_away.clone())));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    res.rss_idle = total_kib(servers, "VmRSS:")?;
    let mut redis_cost = RedisCost::default();
    if let (Some(r), Some(m0)) = (redis, redis_mem0) {
        redis_cost.memory_per_client = r.used_memory()?.saturating_sub(m0) as f64 / args.clients as f64;
        // What a cluster costs Redis while nobody talks: heartbeats and presence refreshes, which come in one burst
        // every third of cluster.presence_ttl_secs (default 15 s): two such periods.
        let c0 = r.commands()?;
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
        redis_cost.idle_commands_per_sec = (r.commands()?.total - c0.total) as f64 / t0.elapsed().as_secs_f64();
    }
    res.per_client = (res.rss_idle.saturating_sub(res.rss_base) as f64 * 1024.0) / args.clients as f64;
    println!(
        "server RSS with {} idle clients: {:.1} MiB ({:.0} bytes/client over the baseline)",
        args.clients,
        mib(res.rss_idle),
        res.per_client
    );

    // Pairing handshakes, all pairs at once (ponte; peerjs relays to any ID without one).
    let t0 = Instant::now();
    let mut setups = Vec::new();
    for (a, b) in paired {
        setups.push(tokio::spawn(pair(proto, a, b)));
    }
    let mut pairs = Vec::new();
    for s in setups {
        pairs.push(s.await??);
    }
    if !pairs.is_empty() && proto == Proto::Ponte {
        res.pairing = Some(t0.elapsed());
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
                proto,
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
    if !relays.is_empty() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let redis_before = redis.map(Redis::commands).transpose()?;
        measuring.store(true, Ordering::Relaxed);
        let m0 = Instant::now();
        let until = m0 + Duration::from_secs(args.seconds);
        while Instant::now() < until && count.load(Ordering::Relaxed) < MAX_MESSAGES {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        measuring.store(false, Ordering::Relaxed);
        res.measured = m0.elapsed();
        res.msgs = count.load(Ordering::Relaxed);
        if let (Some(r), Some(c0)) = (redis, redis_before) {
            let c1 = r.commands()?;
            redis_cost.commands = c1.total - c0.total;
            redis_cost.publishes = c1.publish - c0.publish;
            redis_cost.usec = c1.usec - c0.usec;
        }
        stop.store(true, Ordering::Relaxed);
        for r in relays {
            res.latencies.extend(r.await??);
        }
        res.latencies.sort_unstable();
        // Messages counted between the measurement's end and this load have latencies too; keep them aligned.
        res.msgs = res.latencies.len() as u64;
    }
    if redis.is_some() {
        res.redis = Some(redis_cost);
    }
    res.rss_after = total_kib(servers, "VmRSS:")?;
    res.hwm = total_kib(servers, "VmHWM:")?;

    if proto == Proto::Ponte {
        // Graceful shutdown with the idle clients still connected: every one should get close code 1001.
        let idle_count = idle_tasks.len();
        let t0 = Instant::now();
        stop_all(servers);
        let stopped = t0.elapsed();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            for t in idle_tasks {
                let _ = t.await;
            }
        })
        .await;
        res.shutdown = Some((stopped.as_secs_f64(), going_away.load(Ordering::Relaxed), idle_count));
    } else {
        stop_all(servers);
        for t in idle_tasks {
            t.abort();
        }
    }
    Ok(res)
}

struct Client {
    ws: Ws,
    id: String,
}

async fn open_client(proto: Proto, server: SocketAddr, src: Ipv4Addr, n: usize) -> anyhow::Result<Client> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(IpAddr::V4(src), 0)).with_context(|| format!("bind {src}"))?;
    let stream = sock.connect(server).await.with_context(|| format!("connect {server} from {src}"))?;
    stream.set_nodelay(true)?;
    // Small buffers so the load generator itself fits 10k+ clients.
    let cfg = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    match proto {
        Proto::Ponte => {
            let (mut ws, _) =
                tokio_tungstenite::client_async_with_config(format!("ws://{server}/ws"), stream, Some(cfg))
                    .await
                    .context("WebSocket handshake")?;
            ws.send(Message::text(json!({"type": "hello", "v": 1}).to_string())).await?;
            let welcome = next_json(&mut ws).await?;
            anyhow::ensure!(welcome.ty == "welcome", "expected welcome, got {}", welcome.ty);
            Ok(Client { ws, id: welcome.id.context("welcome without id")? })
        }
        Proto::Peerjs => {
            // A PeerJS client picks its ID (8 characters, like ponte's) and a random token.
            let id = format!("b{n:07}");
            let token: u64 = rand::random();
            let url = format!("ws://{server}/peerjs?key=peerjs&id={id}&token={token:x}");
            let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(cfg))
                .await
                .context("WebSocket handshake")?;
            let open = next_json(&mut ws).await?;
            anyhow::ensure!(open.ty == "OPEN", "expected OPEN, got {}", open.ty);
            Ok(Client { ws, id })
        }
    }
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
/// A peerjs client also sends HEARTBEAT, as the PeerJS client does (the server drops silent clients).
async fn idle(proto: Proto, mut ws: Ws, going_away: Arc<AtomicU64>) {
    let mut beat = tokio::time::interval(PEERJS_HEARTBEAT);
    beat.tick().await;
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Close(Some(f)))) => {
                    if u16::from(f.code) == 1001 {
                        going_away.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Ok(_)) => {}
                _ => return,
            },
            _ = beat.tick(), if proto == Proto::Peerjs => {
                if ws.send(Message::text(r#"{"type":"HEARTBEAT"}"#)).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn pair(proto: Proto, mut a: Client, mut b: Client) -> anyhow::Result<((Ws, String), (Ws, String))> {
    if proto == Proto::Ponte {
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
    }
    Ok(((a.ws, a.id), (b.ws, b.id)))
}

struct RelayCtx {
    proto: Proto,
    epoch: Instant,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    padding: Arc<str>,
    peer: String,
    initial: usize,
}

/// The same payload either way: ponte's `signal` to a partner, or peerjs's CANDIDATE (its most frequent
/// relayed message) to a `dst`.
fn signal_text(ctx: &RelayCtx) -> String {
    let t = ctx.epoch.elapsed().as_micros() as u64;
    match ctx.proto {
        Proto::Ponte => {
            format!(r#"{{"type":"signal","to":"{}","data":{{"t":{t},"pad":"{}"}}}}"#, ctx.peer, ctx.padding)
        }
        Proto::Peerjs => {
            format!(r#"{{"type":"CANDIDATE","dst":"{}","payload":{{"t":{t},"pad":"{}"}}}}"#, ctx.peer, ctx.padding)
        }
    }
}

/// Bounce every received signal back to the peer; return the one-way latencies (µs) seen while measuring.
async fn relay(mut ws: Ws, ctx: RelayCtx) -> anyhow::Result<Vec<u32>> {
    let mut lat = Vec::new();
    for _ in 0..ctx.initial {
        ws.send(Message::text(signal_text(&ctx))).await?;
    }
    let relayed = match ctx.proto {
        Proto::Ponte => "signal",
        Proto::Peerjs => "CANDIDATE",
    };
    while !ctx.stop.load(Ordering::Relaxed) {
        let Ok(m) = tokio::time::timeout(Duration::from_millis(200), next_json(&mut ws)).await else { continue };
        let m = m?;
        if m.ty == relayed {
            let sent = m.sent_at().context("relayed message without its timestamp")?;
            let now = ctx.epoch.elapsed().as_micros() as u64;
            if ctx.measuring.load(Ordering::Relaxed) {
                lat.push(now.saturating_sub(sent).min(u32::MAX as u64) as u32);
                ctx.count.fetch_add(1, Ordering::Relaxed);
            }
            ws.send(Message::text(signal_text(&ctx))).await?;
        } else if matches!(m.ty.as_str(), "error" | "ERROR" | "LEAVE" | "EXPIRE") {
            bail!("server refused a relay message with {} (raise the bench config's limits?)", m.ty);
        }
    }
    Ok(lat)
}

/// The server child process: ponte, or node running peerjs-server.
struct Server {
    proto: Proto,
    child: Child,
    stopped: bool,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Server {
    /// `cluster`: (Redis URL, node name) for a ponte node with a `[cluster]` section.
    fn start(args: &Args, proto: Proto, cluster: Option<(String, String)>) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        let limit = args.clients + 1000;
        let (child, addr) = match proto {
            Proto::Ponte => {
                let bin = match &args.server_bin {
                    Some(b) => b.clone(),
                    None => {
                        let exe = std::env::current_exe()?;
                        // target/release/examples/bench-signaling → target/release/ponte
                        exe.parent()
                            .and_then(|p| p.parent())
                            .map(|p| p.join("ponte"))
                            .context("cannot locate target dir")?
                    }
                };
                if !bin.exists() {
                    bail!("{} does not exist; run `cargo build --release` first (or pass --server-bin)", bin.display());
                }
                // Pick a free loopback port (tiny race with other programs; fine for a benchmark).
                let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
                let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
                let config = dir.path().join("bench.toml");
                // The nodes of a cluster share the TURN secret (from which the signaling key is derived) and Redis;
                // each has its own metrics port (the default one is taken by the first node).
                let cluster = match &cluster {
                    Some((url, name)) => {
                        let metrics = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
                        format!(
                            "\n[metrics]\nlisten = \"{metrics}\"\n\n[cluster]\nredis_url = \"{url}\"\nnode_name = \"{name}\"\n\
                             public_addresses = [\"127.0.0.1\"]\n"
                        )
                    }
                    None => String::new(),
                };
                std::fs::write(
                    &config,
                    format!(
                        "[http]\nlisten = \"{addr}\"\nmax_connections_per_ip = {limit}\n\n[turn]\nenabled = false\n\
                         secret = \"bench-secret-shared-by-the-nodes\"\n\n[signaling]\nmax_connections = {limit}\n\
                         max_connections_per_ip = {limit}\nmax_sessions_per_ip = {limit}\nmessages_per_sec = 1000000\n\
                         connect_requests_per_min = 1000000\nrequests_to_one_client_per_min = 1000000\n\n\
                         [log]\nlevel = \"warn\"\n{cluster}"
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
                (child, addr)
            }
            Proto::Peerjs => {
                let mut child = Command::new("node")
                    .arg("server.mjs")
                    .arg(limit.to_string())
                    .current_dir(&args.peerjs_dir)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .context("spawn node (install Node.js)")?;
                // server.mjs prints the ephemeral port it got, once listening.
                let mut line = String::new();
                let stdout = child.stdout.take().context("no stdout")?;
                let read = std::io::BufReader::new(stdout).read_line(&mut line);
                let port: u16 = match read.ok().and_then(|_| line.trim().parse().ok()) {
                    Some(p) => p,
                    None => {
                        let _ = child.kill();
                        let _ = child.wait();
                        bail!("peerjs-server did not report its port (got {line:?})");
                    }
                };
                (child, SocketAddr::from(([127, 0, 0, 1], port)))
            }
        };
        let mut server = Server { proto, child, stopped: false, addr, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Some(st) = server.child.try_wait()? {
                bail!("{} exited during startup: {st}", proto.name());
            }
            if Instant::now() > deadline {
                server.stop();
                bail!("{} did not listen on {addr} within 10 s", proto.name());
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

    /// Wait until the node's `/healthz` says its cluster link is up (subscribed and presence written), so that the
    /// clients' hellos and the first cross-node messages do not race the node's start.
    fn wait_cluster_ok(&self) -> anyhow::Result<()> {
        use std::io::{Read as _, Write as _};
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = String::new();
        while Instant::now() < deadline {
            let mut body = String::new();
            if let Ok(mut s) = std::net::TcpStream::connect(self.addr) {
                let _ = write!(s, "GET /healthz HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
                let _ = s.read_to_string(&mut body);
            }
            if body.contains(r#""cluster":"ok""#) {
                return Ok(());
            }
            last = body;
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("node {} never said \"cluster\":\"ok\" in /healthz within 15 s; last answer:\n{last}", self.addr)
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
        // SIGTERM: ponte shuts down gracefully (closing every socket with 1001); server.mjs exits.
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

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The cluster runs' Redis: Debian's redis-server as a child process on a free loopback port, no persistence.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

/// Redis commands counted by `INFO commandstats` since it started.
#[derive(Clone, Copy)]
struct Commands {
    total: u64,
    publish: u64,
    /// Redis's own CPU time in those commands (commandstats `usec`), µs.
    usec: u64,
}

impl Redis {
    fn start(bin: &std::path::Path) -> anyhow::Result<Redis> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(bin)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawn {} (apt-get install redis-server)", bin.display()))?;
        let mut redis = Redis { child, port, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.cli(&["PING"]).map(|o| o.trim() != "PONG").unwrap_or(true) {
            if let Some(st) = redis.child.try_wait()? {
                bail!("redis-server exited during startup: {st}");
            }
            if Instant::now() > deadline {
                bail!("redis-server did not answer PING on port {port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let version = redis.cli(&["INFO", "server"])?;
        let version = version.lines().find_map(|l| l.strip_prefix("redis_version:")).unwrap_or("?").trim().to_string();
        println!("\nredis-server {version} pid {} on 127.0.0.1:{port} (no persistence)", redis.child.id());
        Ok(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// redis-cli (same package) rather than a Redis client crate: the benchmark only reads counters.
    fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("run redis-cli (apt-get install redis-server)")?;
        anyhow::ensure!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Empty the database and the counters between runs.
    fn flush(&self) -> anyhow::Result<()> {
        self.cli(&["FLUSHALL"])?;
        self.cli(&["CONFIG", "RESETSTAT"])?;
        Ok(())
    }

    fn commands(&self) -> anyhow::Result<Commands> {
        let info = self.cli(&["INFO", "commandstats"])?;
        let mut c = Commands { total: 0, publish: 0, usec: 0 };
        for line in info.lines() {
            // cmdstat_publish:calls=12,usec=34,…
            let Some((name, rest)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else { continue };
            let field = |key: &str| -> anyhow::Result<u64> {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(key))
                    .and_then(|v| v.parse().ok())
                    .with_context(|| format!("malformed commandstats line {line}"))
            };
            let calls = field("calls=")?;
            let usec = field("usec=")?;
            // The benchmark's own INFO/CONFIG/FLUSHALL calls are not the cluster's.
            if matches!(name, "info" | "config|resetstat" | "config" | "flushall" | "ping") {
                continue;
            }
            c.total += calls;
            c.usec += usec;
            if name == "publish" || name == "spublish" {
                c.publish += calls;
            }
        }
        Ok(c)
    }

    fn used_memory(&self) -> anyhow::Result<u64> {
        let info = self.cli(&["INFO", "memory"])?;
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .context("no used_memory in INFO memory")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One node, one node with `[cluster]`, two nodes (every pair across them), side by side.
fn cluster_table(args: &Args, runs: &[Results]) {
    let [one, one_redis, two] = runs else { return };
    println!(
        "\n== one node vs a two-node cluster: {} clients, {} pairs, window {}, {} B payload ==",
        args.clients, args.pairs, args.window, args.payload
    );
    println!("{:<34}{:>14}{:>16}{:>16}{:>10}", "", "1 node", "1 node + Redis", "2 nodes + Redis", "2 vs 1");
    let ratio = |num: f64, den: f64| if den > 0.0 && num > 0.0 { format!("{:.2}", num / den) } else { "-".into() };
    let cost =
        |r: &Results, f: &dyn Fn(&RedisCost, &Results) -> String| r.redis.as_ref().map_or("-".into(), |c| f(c, r));
    let per_msg = |c: &RedisCost, r: &Results| format!("{:.2}", c.commands as f64 / r.msgs.max(1) as f64);
    let pub_per_msg = |c: &RedisCost, r: &Results| format!("{:.2}", c.publishes as f64 / r.msgs.max(1) as f64);
    let usec_per_msg = |c: &RedisCost, r: &Results| format!("{:.2} µs", c.usec as f64 / r.msgs.max(1) as f64);
    let idle = |c: &RedisCost, _: &Results| format!("{:.1}", c.idle_commands_per_sec);
    let rmem = |c: &RedisCost, _: &Results| format!("{:.0} B", c.memory_per_client);
    let rows: Vec<(&str, String, String, String, String)> = vec![
        (
            "relayed msgs/s",
            format!("{:.0}", one.rate()),
            format!("{:.0}", one_redis.rate()),
            format!("{:.0}", two.rate()),
            ratio(two.rate(), one.rate()),
        ),
        (
            "latency one-way p50",
            format!("{:.2} ms", one.pct(0.5)),
            format!("{:.2} ms", one_redis.pct(0.5)),
            format!("{:.2} ms", two.pct(0.5)),
            ratio(two.pct(0.5), one.pct(0.5)),
        ),
        (
            "latency one-way p99",
            format!("{:.2} ms", one.pct(0.99)),
            format!("{:.2} ms", one_redis.pct(0.99)),
            format!("{:.2} ms", two.pct(0.99)),
            ratio(two.pct(0.99), one.pct(0.99)),
        ),
        (
            "pairing (connect+accept), all",
            one.pairing.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64())),
            one_redis.pairing.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64())),
            two.pairing.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64())),
            "".into(),
        ),
        (
            "memory per idle client (nodes)",
            format!("{:.0} B", one.per_client),
            format!("{:.0} B", one_redis.per_client),
            format!("{:.0} B", two.per_client),
            ratio(two.per_client, one.per_client),
        ),
        ("Redis memory per idle client", "-".into(), cost(one_redis, &rmem), cost(two, &rmem), "".into()),
        ("Redis commands per relayed msg", "-".into(), cost(one_redis, &per_msg), cost(two, &per_msg), "".into()),
        ("  of which PUBLISH", "-".into(), cost(one_redis, &pub_per_msg), cost(two, &pub_per_msg), "".into()),
        ("Redis CPU per relayed msg", "-".into(), cost(one_redis, &usec_per_msg), cost(two, &usec_per_msg), "".into()),
        ("Redis commands/s, all idle", "-".into(), cost(one_redis, &idle), cost(two, &idle), "".into()),
        (
            "server RSS, all idle (sum)",
            format!("{:.1} MiB", mib(one.rss_idle)),
            format!("{:.1} MiB", mib(one_redis.rss_idle)),
            format!("{:.1} MiB", mib(two.rss_idle)),
            ratio(two.rss_idle as f64, one.rss_idle as f64),
        ),
    ];
    for (name, a, b, c, r) in rows {
        println!("{name:<34}{a:>14}{b:>16}{c:>16}{r:>10}");
    }
    println!(
        "(2 vs 1: two nodes / one node, so above 1 is more for rates and costs alike. Two nodes: client i on node\n \
         i % 2, so every pair crosses the nodes and every relayed message goes node → Redis PUBLISH → node. Memory\n \
         per idle client: (sum of the nodes' RSS with all clients idle − sum before any client) / clients. All the\n \
         processes share this machine's {} CPUs: a second node adds no CPU here, it only adds work.)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
}
