//! Benchmark: relayed video calls through ponte and through coturn (`turnserver`, started here), side by side in
//! one run on loopback: the server's CPU per relayed Mbit/s and per packet, and how many concurrent calls it
//! carries before packets are lost.
//!
//!     cargo run --release --example bench-call [-- --secs 10 --max-calls 200 --threads 2 --pin 0 --loss 0.5
//!                                                   --video-kbps 2500 --cap 0]
//!
//! A call is two TURN clients, each with its own allocation (its own socket and REST username, as two browsers
//! behind symmetric NATs), each bound to the other's relayed address by a channel (which installs the
//! permission). Both ends send media-like traffic at the same time, so every packet crosses the server twice:
//! client A → A's relay → B's relay → client B, as a relayed call between two symmetric NATs does.
//!
//! Media per direction (the default; `--video-kbps` scales the video): video 30 frames/s, each a burst of
//! 1150-byte packets sent back to back (9 per frame; every 60th frame a keyframe of 36), and audio 50 packets/s
//! of 120 bytes (Opus at 20 ms). The header prints the resulting bitrate and packet rate.
//!
//! The number of concurrent calls is ramped (1, 10, 20, 30, 40, 50, 60, 80, 100, … up to `--max-calls`, at most 500), each
//! step `--secs` seconds of media, alternating between ponte and coturn at every step so that load from other
//! processes hits both about equally. Loss is end to end (every packet sent that did not arrive at the other end
//! within 300 ms after the step); a step whose loss is above `--loss` percent is run once more (a shared machine
//! has hiccups) and if it fails again the ramp stops for that server. The server's CPU is utime+stime of all its
//! threads (/proc/<pid>/stat) over the step. Kernel drops are read from /proc/net/udp so that the report says
//! whether packets were lost in the server's sockets or in the generator's.
//!
//! By default everything shares every CPU, as on a home server (`--pin N` puts the servers on the first N CPUs
//! and the generator on the others). The generator uses `--threads` threads (default 2), epoll and
//! sendmmsg/recvmmsg.

#[path = "common/mod.rs"]
mod common;
#[path = "common/turn.rs"]
mod turn;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use ponte::turn::mmsg;
use turn::{Guard, TurnClient};

/// Relay port ranges, below Linux's ephemeral range (32768+) where this generator's own sockets live.
const RELAY_PORTS: u16 = 12_500;
const PONTE_PORTS_MIN: u16 = 20_000;
const COTURN_PORTS_MIN: u16 = 7_000;
/// The most calls `--max-calls` may ask for (two allocations and two sockets each, per server).
const MAX_CALLS: usize = 500;
const CALL_STEPS: [usize; 15] = [1, 10, 20, 30, 40, 50, 60, 80, 100, 125, 150, 200, 250, 350, 500];

const FPS: u32 = 30;
const VIDEO_PACKET: usize = 1150;
/// Every `KEYFRAME_EVERY`th frame is a keyframe, `KEYFRAME_FACTOR` times the packets of a normal frame.
const KEYFRAME_EVERY: u64 = 60;
const KEYFRAME_FACTOR: usize = 4;
const AUDIO_PPS: u32 = 50;
const AUDIO_PACKET: usize = 120;
/// The channel both ends bind (any of 0x4000..=0x4FFF).
const CHANNEL: u16 = 0x4000;
/// Time after the last packet of a step during which late ones still count as received.
const DRAIN: Duration = Duration::from_millis(300);

#[derive(Clone)]
struct Opts {
    secs: u64,
    max_calls: usize,
    threads: usize,
    pin: usize,
    /// Loss (percent) above which a step fails.
    loss: f64,
    video_kbps: u32,
    /// Bandwidth cap per allocation given to both servers (ponte `max_bandwidth_per_allocation`, coturn
    /// `--max-bps`), bytes/s each way; 0: none.
    cap: u64,
}

impl Opts {
    /// Packets in a normal video frame.
    fn frame_packets(&self) -> usize {
        ((self.video_kbps as f64 * 1000.0 / 8.0 / FPS as f64 / VIDEO_PACKET as f64).round() as usize).max(1)
    }
    /// Media one end sends, per second: (payload bits, packets).
    fn per_direction(&self) -> (f64, f64) {
        let n = self.frame_packets() as f64;
        let k = KEYFRAME_EVERY as f64;
        let video_pkts = (n * (k - 1.0) + n * KEYFRAME_FACTOR as f64) / k * FPS as f64;
        let bits = (video_pkts * VIDEO_PACKET as f64 + AUDIO_PPS as f64 * AUDIO_PACKET as f64) * 8.0;
        (bits, video_pkts + AUDIO_PPS as f64)
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve-ponte") {
        return turn::serve_ponte(&args[2]);
    }
    let mut o = Opts { secs: 10, max_calls: 200, threads: 2, pin: 0, loss: 0.5, video_kbps: 2500, cap: 0 };
    let mut i = 1;
    while i + 1 < args.len() {
        let v = &args[i + 1];
        match args[i].as_str() {
            "--secs" => o.secs = v.parse::<u64>()?.clamp(1, 60),
            "--max-calls" => o.max_calls = v.parse::<usize>()?.clamp(1, MAX_CALLS),
            "--threads" => o.threads = v.parse::<usize>()?.clamp(1, 16),
            "--pin" => o.pin = v.parse()?,
            "--loss" => o.loss = v.parse::<f64>()?.clamp(0.0, 100.0),
            "--video-kbps" => o.video_kbps = v.parse::<u32>()?.clamp(100, 20_000),
            "--cap" => o.cap = v.parse()?,
            other => anyhow::bail!(
                "unknown option {other}; use --secs, --max-calls, --threads, --pin, --loss, --video-kbps, --cap"
            ),
        }
        i += 2;
    }
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    anyhow::ensure!(o.pin < cpus, "--pin {} leaves no CPU for the load generator on this {cpus}-CPU machine", o.pin);
    let fds = common::raise_fd_limit();
    anyhow::ensure!(
        fds as usize > 2 * o.max_calls + 200,
        "RLIMIT_NOFILE is {fds}; --max-calls {} needs more (raise the hard limit: ulimit -Hn)",
        o.max_calls
    );
    let (bits, pps) = o.per_direction();
    println!(
        "bench-call: relayed calls through ponte and coturn, loopback, {cpus} CPUs {}, {} generator threads, \
         {} s per step, loss threshold {} %, load average {}",
        if o.pin > 0 {
            format!("(servers pinned to {}, the generator to the other {})", o.pin, cpus - o.pin)
        } else {
            "shared by servers and generator (unpinned)".into()
        },
        o.threads,
        o.secs,
        o.loss,
        common::load_average()
    );
    println!(
        "  media per direction: video {FPS} fps × {} × {VIDEO_PACKET} B (keyframe every {KEYFRAME_EVERY} frames: ×{KEYFRAME_FACTOR}) \
         + audio {AUDIO_PPS} × {AUDIO_PACKET} B/s = {:.2} Mbit/s, {:.0} packets/s; a call is both directions, each \
         relayed twice (A → relay A → relay B → B){}",
        o.frame_packets(),
        bits / 1e6,
        pps,
        if o.cap > 0 { format!("; bandwidth cap per allocation {} B/s each way", o.cap) } else { String::new() }
    );

    let dir = tempfile::tempdir()?;
    let allocs = 2 * o.max_calls + 100;
    let ponte = turn::spawn_ponte(
        dir.path(),
        &format!(
            "relay_port_min = {PONTE_PORTS_MIN}\nrelay_port_max = {}\nallow_peers = [\"127.0.0.1/32\"]\n\
             max_allocations = {allocs}\nmax_allocations_per_ip = {allocs}\nrelay_port_share_per_ip_percent = 100\n\
             unauthenticated_rate_per_ip = 1000000\nmax_bandwidth_per_allocation = {}\n",
            PONTE_PORTS_MIN + RELAY_PORTS - 1,
            o.cap
        ),
    )?;
    let mut coturn_extra = vec![format!("--total-quota={allocs}"), "--user-quota=10".into()];
    if o.cap > 0 {
        coturn_extra.push(format!("--max-bps={}", o.cap));
    }
    let coturn = turn::spawn_coturn(dir.path(), COTURN_PORTS_MIN..=COTURN_PORTS_MIN + RELAY_PORTS - 1, &coturn_extra)?;
    for (name, addr) in [("ponte", ponte.1), ("coturn", coturn.1)] {
        turn::wait_ready(addr).map_err(|e| anyhow::anyhow!("{name} did not answer STUN on {addr}: {e}"))?;
    }
    let servers: [(&str, &(Guard, SocketAddr), ServerPorts); 2] = [
        ("ponte", &ponte, (ponte.1.port(), PONTE_PORTS_MIN..=PONTE_PORTS_MIN + RELAY_PORTS - 1)),
        ("coturn", &coturn, (coturn.1.port(), COTURN_PORTS_MIN..=COTURN_PORTS_MIN + RELAY_PORTS - 1)),
    ];
    if o.pin > 0 {
        for (_, s, _) in &servers {
            turn::set_pid_cpus(s.0.pid(), 0..o.pin)?;
        }
        turn::set_cpus(o.pin..cpus)?;
    }

    let steps: Vec<usize> =
        CALL_STEPS.iter().copied().filter(|&c| c < o.max_calls).chain(std::iter::once(o.max_calls)).collect();
    // Per server: the steps run (the last result of each), whether it still ramps, and the most calls without loss.
    let mut results: [Vec<Step>; 2] = [Vec::new(), Vec::new()];
    let mut ramping = [true, true];
    let mut best = [0usize, 0];
    for &calls in &steps {
        for (k, (name, s, ports)) in servers.iter().enumerate() {
            if !ramping[k] {
                continue;
            }
            let step =
                || run_step(s.1, s.0.pid(), ports, calls, &o).map_err(|e| e.context(format!("{name}, {calls} calls")));
            let mut r = step()?;
            if r.loss_pct() > o.loss {
                let again = step()?;
                let first = r.loss_pct();
                r = again;
                r.retried = Some(first);
            }
            if calls == 1 && r.received == 0 {
                anyhow::bail!("{name} relayed nothing for one call: check its log above");
            }
            if r.loss_pct() > o.loss {
                ramping[k] = false;
            } else {
                best[k] = calls;
            }
            print_step(name, &r);
            results[k].push(r);
        }
        if !ramping.iter().any(|&r| r) {
            break;
        }
    }

    println!();
    println!(
        "{:<7}{:>7}{:>10}{:>10}{:>11}{:>9}{:>9}{:>10}{:>12}{:>9}{:>18}{:>20}",
        "server",
        "calls",
        "media",
        "relayed",
        "relayed",
        "CPU",
        "gen CPU",
        "CPU/pkt",
        "CPU per",
        "loss",
        "one-way p50/p99",
        "kernel drops"
    );
    println!(
        "{:<7}{:>7}{:>10}{:>10}{:>11}{:>9}{:>9}{:>10}{:>12}{:>9}{:>18}{:>20}",
        "", "", "Mbit/s", "Mbit/s", "pkt/s", "% core", "% core", "µs", "100 Mbit/s", "%", "ms", "server/generator"
    );
    for &calls in &steps {
        for (k, (name, _, _)) in servers.iter().enumerate() {
            if let Some(r) = results[k].iter().find(|r| r.calls == calls) {
                println!(
                    "{:<7}{:>7}{:>10.1}{:>10.1}{:>11.0}{:>9.1}{:>9.1}{:>10.2}{:>11.2}%{:>9}{:>18}{:>20}",
                    name,
                    calls,
                    r.media_mbps(),
                    r.relayed_mbps(),
                    r.relayed_pps(),
                    r.cpu_pct(),
                    r.generator_cpu_pct(),
                    r.cpu_per_packet_us(),
                    r.cpu_pct_per_100mbps(),
                    format!("{:.3}{}", r.loss_pct(), if r.retried.is_some() { "*" } else { "" }),
                    format!("{:.2}/{:.2}", r.p50.as_secs_f64() * 1e3, r.p99.as_secs_f64() * 1e3),
                    format!("{}/{}", r.server_drops, r.generator_drops)
                );
            }
        }
    }
    println!(
        "(media: what the ends sent, both directions; relayed: each packet counted on both hops, i.e. what the \
         server received and sent again; CPU: utime+stime of all server threads over the step; * = run twice, \
         the second result shown)"
    );
    // The cost of one call: the busiest step both servers carried without loss, where fixed costs weigh least.
    let common_step = steps.iter().copied().filter(|&c| c <= best[0].min(best[1])).max();
    if let Some(c) = common_step {
        let p = results[0].iter().find(|r| r.calls == c).unwrap();
        let q = results[1].iter().find(|r| r.calls == c).unwrap();
        println!(
            "\nper relayed call at {c} calls: ponte {:.2} % of a core ({:.2} µs per relayed packet), coturn {:.2} % \
             ({:.2} µs); coturn/ponte CPU {:.2}",
            p.cpu_pct() / c as f64,
            p.cpu_per_packet_us(),
            q.cpu_pct() / c as f64,
            q.cpu_per_packet_us(),
            q.cpu_pct() / p.cpu_pct().max(1e-9)
        );
    }
    let ceiling = |k: usize| {
        if ramping[k] {
            format!("{} (the most tried: no loss up to --max-calls {})", best[k], o.max_calls)
        } else {
            format!("{}", best[k])
        }
    };
    println!("max concurrent calls without loss (≤ {} %): ponte {}, coturn {}", o.loss, ceiling(0), ceiling(1));
    Ok(())
}

fn print_step(name: &str, r: &Step) {
    println!(
        "  {name:<7}{:>4} calls: {:>7.1} Mbit/s relayed, {:>7.0} pkt/s, CPU {:>5.1} % (generator {:.1} %), \
         loss {:.3} %{}, p99 {:.2} ms, kernel drops server/generator {}/{}, load {}",
        r.calls,
        r.relayed_mbps(),
        r.relayed_pps(),
        r.cpu_pct(),
        r.generator_cpu_pct(),
        r.loss_pct(),
        r.retried.map(|f| format!(" (first run {f:.3} %)")).unwrap_or_default(),
        r.p99.as_secs_f64() * 1e3,
        r.server_drops,
        r.generator_drops,
        common::load_average().split_whitespace().next().unwrap_or("-")
    );
}

struct Step {
    calls: usize,
    /// How long media was sent.
    elapsed: Duration,
    sent: u64,
    received: u64,
    /// Payload bytes received by the ends (media sent and delivered).
    received_bytes: u64,
    cpu: Duration,
    /// This process's CPU over the same time (the load generator's threads).
    generator_cpu: Duration,
    p50: Duration,
    p99: Duration,
    /// Datagrams the kernel dropped in the server's sockets and in the generator's during the step.
    server_drops: u64,
    generator_drops: u64,
    /// The first run's loss when the step was run twice.
    retried: Option<f64>,
}

impl Step {
    fn loss_pct(&self) -> f64 {
        self.sent.saturating_sub(self.received) as f64 * 100.0 / self.sent.max(1) as f64
    }
    fn secs(&self) -> f64 {
        self.elapsed.as_secs_f64().max(1e-9)
    }
    /// Media delivered end to end, both directions.
    fn media_mbps(&self) -> f64 {
        self.received_bytes as f64 * 8.0 / self.secs() / 1e6
    }
    /// Each delivered packet crossed the server twice (into relay A and out to B, then into relay B and out to B).
    fn relayed_mbps(&self) -> f64 {
        2.0 * self.media_mbps()
    }
    fn relayed_pps(&self) -> f64 {
        2.0 * self.received as f64 / self.secs()
    }
    fn cpu_pct(&self) -> f64 {
        self.cpu.as_secs_f64() * 100.0 / self.secs()
    }
    fn generator_cpu_pct(&self) -> f64 {
        self.generator_cpu.as_secs_f64() * 100.0 / self.secs()
    }
    fn cpu_per_packet_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / (2.0 * self.received as f64).max(1.0)
    }
    fn cpu_pct_per_100mbps(&self) -> f64 {
        self.cpu_pct() * 100.0 / self.relayed_mbps().max(1e-9)
    }
}

/// One step: set up `calls` calls on the server, send media both ways for `o.secs`, count what arrived, tear down.
fn run_step(server: SocketAddr, pid: u32, relay: &ServerPorts, calls: usize, o: &Opts) -> anyhow::Result<Step> {
    let mut ends = Vec::with_capacity(2 * calls);
    for c in 0..calls {
        let (mut a, ra) = allocated(server, 2 * c).map_err(|e| e.context(format!("allocation for call {c}")))?;
        let (mut b, rb) = allocated(server, 2 * c + 1).map_err(|e| e.context(format!("allocation for call {c}")))?;
        a.bind_channel(CHANNEL, rb)?;
        b.bind_channel(CHANNEL, ra)?;
        ends.push(a);
        ends.push(b);
    }
    let ports: HashSet<u16> = ends.iter().map(|e| e.s.local_addr().map(|a| a.port()).unwrap_or(0)).collect();
    let drops0 = udp_drops(relay, &ports);
    let cpu0 = turn::cpu_time(pid);
    let gen0 = turn::cpu_time(std::process::id());
    let epoch = Instant::now();
    let run = Duration::from_secs(o.secs);
    let per_thread = ends.len().div_ceil(o.threads);
    let out: Vec<anyhow::Result<Tally>> = std::thread::scope(|sc| {
        let hs: Vec<_> = ends.chunks(per_thread).map(|mine| sc.spawn(move || generate(mine, epoch, run, o))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let cpu = turn::cpu_time(pid) - cpu0;
    let generator_cpu = turn::cpu_time(std::process::id()) - gen0;
    let drops1 = udp_drops(relay, &ports);
    let mut t = Tally::default();
    for r in out {
        let r = r?;
        t.sent += r.sent;
        t.received += r.received;
        t.bytes += r.bytes;
        t.lat.extend(r.lat);
    }
    for e in &mut ends {
        e.s.set_nonblocking(false)?;
        e.s.set_read_timeout(Some(Duration::from_millis(500)))?;
        e.delete();
    }
    t.lat.sort_unstable();
    let pct = |p: f64| {
        let i = ((t.lat.len() as f64 * p) as usize).min(t.lat.len().saturating_sub(1));
        Duration::from_nanos(t.lat.get(i).copied().unwrap_or(0) as u64)
    };
    Ok(Step {
        calls,
        elapsed: run,
        sent: t.sent,
        received: t.received,
        received_bytes: t.bytes,
        cpu,
        generator_cpu,
        p50: pct(0.5),
        p99: pct(0.99),
        server_drops: drops1.0.saturating_sub(drops0.0),
        generator_drops: drops1.1.saturating_sub(drops0.1),
        retried: None,
    })
}

/// A client with an allocation. A new socket may get the port of one from an earlier step whose allocation the
/// server still holds (its Refresh-to-0 lost): 437 Allocation Mismatch; then another socket is tried.
fn allocated(server: SocketAddr, id: usize) -> anyhow::Result<(TurnClient, SocketAddr)> {
    let mut last = None;
    for _ in 0..3 {
        let mut c = TurnClient::new(server, id)?;
        match c.allocate() {
            Ok(relay) => return Ok((c, relay)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap())
}

/// A server's listening port and relay port range.
type ServerPorts = (u16, std::ops::RangeInclusive<u16>);

#[derive(Default)]
struct Tally {
    sent: u64,
    received: u64,
    bytes: u64,
    /// One-way latencies (ns) of the packets received.
    lat: Vec<u32>,
}

/// One generator thread: sends the media of its `ends` on schedule for `run` and receives what the relay delivers
/// to them, until `DRAIN` after the end. Each end's frames start at a random phase, as calls do not start together.
fn generate(ends: &[TurnClient], epoch: Instant, run: Duration, o: &Opts) -> anyhow::Result<Tally> {
    let mut poll = mio::Poll::new()?;
    for (i, e) in ends.iter().enumerate() {
        e.s.set_nonblocking(true)?;
        poll.registry().register(&mut mio::unix::SourceFd(&e.s.as_raw_fd()), mio::Token(i), mio::Interest::READABLE)?;
    }
    let frame = Duration::from_nanos(1_000_000_000 / FPS as u64);
    let audio = Duration::from_nanos(1_000_000_000 / AUDIO_PPS as u64);
    // Per end: next video frame, next audio packet, frames sent.
    let mut due: Vec<(Duration, Duration, u64)> = (0..ends.len())
        .map(|_| {
            let v = Duration::from_nanos(rand::random_range(0..frame.as_nanos() as u64));
            let a = Duration::from_nanos(rand::random_range(0..audio.as_nanos() as u64));
            (v, a, 0)
        })
        .collect();
    let n = o.frame_packets();
    let mut video: Vec<Vec<u8>> = (0..n * KEYFRAME_FACTOR).map(|_| channel_data(VIDEO_PACKET)).collect();
    let mut voice = channel_data(AUDIO_PACKET);
    let mut t = Tally { lat: Vec::with_capacity(1 << 16), ..Tally::default() };
    let mut rx = mmsg::RecvBatch::new();
    let mut events = mio::Events::with_capacity(1024);
    loop {
        let now = epoch.elapsed();
        if now < run {
            for (i, e) in ends.iter().enumerate() {
                let d = &mut due[i];
                while d.0 <= now {
                    let count = if d.2 % KEYFRAME_EVERY == 0 { n * KEYFRAME_FACTOR } else { n };
                    let ts = epoch.elapsed().as_nanos() as u64;
                    for p in &mut video[..count] {
                        p[4..12].copy_from_slice(&ts.to_be_bytes());
                    }
                    t.sent += send(&e.s, e.server, &video[..count]);
                    d.0 += frame;
                    d.2 += 1;
                }
                while d.1 <= now {
                    voice[4..12].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_be_bytes());
                    t.sent += send(&e.s, e.server, std::slice::from_ref(&voice));
                    d.1 += audio;
                }
            }
        } else if now >= run + DRAIN {
            break;
        }
        let next = if now < run { due.iter().map(|d| d.0.min(d.1)).min().unwrap_or(run).min(run) } else { run + DRAIN };
        poll.poll(&mut events, Some(next.saturating_sub(epoch.elapsed())))?;
        for ev in events.iter() {
            let s = &ends[ev.token().0].s;
            // Edge-triggered: read until the socket is empty.
            while let Ok(k) = rx.recv(s) {
                let at = epoch.elapsed().as_nanos() as u64;
                for j in 0..k {
                    let Some((buf, _)) = rx.get(j) else { continue };
                    if buf.len() >= 12 && u16::from_be_bytes([buf[0], buf[1]]) == CHANNEL {
                        t.received += 1;
                        t.bytes += (buf.len() - 4) as u64;
                        let ts = u64::from_be_bytes(buf[4..12].try_into().unwrap());
                        t.lat.push(at.saturating_sub(ts).min(u32::MAX as u64) as u32);
                    }
                }
                if k == 0 {
                    break;
                }
            }
        }
    }
    for e in ends {
        poll.registry().deregister(&mut mio::unix::SourceFd(&e.s.as_raw_fd()))?;
    }
    Ok(t)
}

/// A ChannelData frame on [`CHANNEL`] with `payload` bytes (the send time goes into bytes 4..12).
fn channel_data(payload: usize) -> Vec<u8> {
    let mut f = vec![0u8; 4 + payload];
    f[0..2].copy_from_slice(&CHANNEL.to_be_bytes());
    f[2..4].copy_from_slice(&(payload as u16).to_be_bytes());
    f
}

/// Send `pkts` to `to` back to back (as few sendmmsg calls as possible); returns how many left the socket. A full
/// socket buffer is waited for briefly: the generator must not drop what it claims to have sent.
fn send(s: &std::net::UdpSocket, to: SocketAddr, pkts: &[Vec<u8>]) -> u64 {
    let mut sent = 0;
    let mut stalls = 0;
    while sent < pkts.len() {
        let rest = &pkts[sent..];
        match mmsg::send_many(s.as_raw_fd(), rest.len(), |k| (to, &rest[k][..])) {
            Ok(k) => sent += k.max(1),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && stalls < 10 => {
                stalls += 1;
                let mut p = libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
                // SAFETY: one valid pollfd for the duration of the call.
                unsafe { libc::poll(&mut p, 1, 10) };
            }
            Err(_) => break,
        }
    }
    sent as u64
}

/// Datagrams dropped so far by the kernel in IPv4 UDP sockets (/proc/net/udp, last column): (in the server's
/// sockets: its listener and relay port range, in the generator's).
fn udp_drops(server_ports: &ServerPorts, generator: &HashSet<u16>) -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    let (mut server, mut mine) = (0, 0);
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(drops)) = (f.get(1), f.last().and_then(|d| d.parse::<u64>().ok())) else { continue };
        let Some(port) = local.rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok()) else { continue };
        if generator.contains(&port) {
            mine += drops;
        } else if port == server_ports.0 || server_ports.1.contains(&port) {
            server += drops;
        }
    }
    (server, mine)
}
