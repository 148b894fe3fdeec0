//! Benchmark: STUN Binding requests/s and TURN relay packets/s (ChannelData through a relay to a UDP echo
//! peer and back) with p50/p99 round-trip times, for ponte and for coturn (`turnserver`, started here) on the
//! same machine, loopback only, printed side by side with the ratio.
//!
//!     cargo run --release --example bench-turn [-- --secs 2 --rounds 3 --clients 8 --window 32 --size 100
//!                                                  --allocations 5000 --rate 20000 --pin N --udp-workers 0
//!                                                  --main 1 --matrix 1|0|pinned|unpinned --matrix-clients 1,2
//!                                                  --ab PONTE_UDP_GSO=0 --generator-gso 0]
//!
//! `--main 0` skips the Binding and relay phases (only the matrix runs); `--ab NAME=VALUE` adds a second ponte,
//! started with that environment variable (e.g. `PONTE_UDP_GSO=0`, `PONTE_UDP_SHORT_SLICE=0`) or, for a lowercase
//! NAME, that `[turn]` setting (e.g. `udp_workers=1`), to the matrix, so that a switch is compared in the same
//! minutes as everything else.
//!
//! First, memory per allocation: `--allocations` K allocations (one client socket and username each) are created
//! against each fresh server, and the server's RSS before and after gives bytes per allocation (relay sockets'
//! kernel buffers are not in RSS, for either server); then they are deleted again. 0 skips this phase.
//!
//! Both servers run as separate processes (ponte is this binary re-executed with `--serve-ponte`), with the
//! same load generator, the same number of client threads and the same bounded duration and packet budget.
//! Phases alternate between the servers for `--rounds` rounds and the median round is reported, so that
//! load from other processes on a shared machine hits both about equally.
//!
//! Throughput is measured closed-loop (`--window` requests in flight per client thread), latency both there
//! (saturated: RTT is then mostly queueing) and at a fixed `--rate` below either server's capacity. The servers
//! run on the first `--pin` CPUs (default: half of them) and the generator on the rest; `--pin 0` shares all.
//!
//! Then the relay matrix (`--matrix 0` skips it): the relay phase again, pinned as above and unpinned (servers and
//! generator sharing every CPU, as on a home server), with 1 and 2 client threads, for ponte, coturn and the floor:
//! a bare UDP forwarder written here (`--serve-floor`, one thread, epoll and recvmmsg/sendmmsg, no TURN at all)
//! whose CPU per relayed packet is the least any relay can spend on this machine. The same server processes serve
//! every placement: they start seeing all CPUs and every thread is then restricted (or released) per phase.

#[path = "common/mod.rs"]
mod common;
#[path = "common/turn.rs"]
mod turn;

use std::net::{SocketAddr, UdpSocket};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ponte::turn::codec::*;
use ponte::turn::mmsg;
use stun::attributes::AttrType;
use turn::{binding_request, cpu_time, set_cpus, set_pid_cpus, wait_readable, Guard, TurnClient};

/// Hard cap on requests/packets per phase and server, so a run is bounded even on a very fast machine.
const MAX_PER_PHASE: u64 = 5_000_000;
/// Most allocations `--allocations` may ask for (each costs a socket here and one in the server).
const MAX_ALLOCATIONS: usize = 12_000;
/// Relay port ranges, below Linux's ephemeral range (32768+) where this generator's own sockets live.
const RELAY_PORTS: u16 = 12_500;
const PONTE_PORTS_MIN: u16 = 20_000;
const COTURN_PORTS_MIN: u16 = 7_000;

#[derive(Clone)]
struct Opts {
    secs: u64,
    rounds: usize,
    clients: usize,
    window: usize,
    size: usize,
    allocations: usize,
    /// ponte's `turn.udp_workers` (0: its default, one per two CPUs).
    udp_workers: usize,
    /// Offered load of the fixed-rate latency phases, operations/s in all (Binding requests; relay round trips).
    rate: usize,
    /// CPUs given to the servers (the first N), the load generator getting the others; 0: everything shares all.
    /// None: half of them.
    pin: Option<usize>,
    /// Run the relay matrix (pinned and unpinned × 1 and 2 client threads, ponte, coturn and the floor).
    matrix: bool,
    /// Placements of the matrix: pinned, unpinned (both by default).
    placements: (bool, bool),
    /// Client-thread counts of the matrix (1 and 2 by default).
    matrix_clients: Vec<usize>,
    /// Run the Binding and relay phases before the matrix (and their fixed-rate latency phases).
    main: bool,
    /// Also run a second ponte with this environment variable set (`--ab PONTE_UDP_GSO=0`: GSO off;
    /// `PONTE_UDP_SHORT_SLICE=0`: default scheduler slice) in the matrix, alternating with the others: an A/B in the
    /// same minutes.
    ab: Option<(String, String)>,
    /// `--generator-gso 1`: the generator and the echo peer send their runs to one destination with UDP GSO. Off by
    /// default (one datagram per message, the generator issue 17 measured with). Either way the servers receive the
    /// same separate datagrams (none of them asks for GRO); GSO lowers the generator's own CPU per packet, which
    /// otherwise dilutes the difference between servers where it shares the CPUs with them, and it makes a window
    /// arrive at once instead of datagram by datagram (docs/benchmarks.md shows what that does to each server).
    generator_gso: bool,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve-ponte") {
        return turn::serve_ponte(&args[2]);
    }
    if args.get(1).map(String::as_str) == Some("--serve-floor") {
        return serve_floor(&args[2]);
    }
    let mut o = Opts {
        secs: 2,
        rounds: 3,
        clients: 8,
        window: 32,
        size: 100,
        allocations: 5000,
        udp_workers: 0,
        pin: None,
        rate: 20_000,
        matrix: true,
        placements: (true, true),
        matrix_clients: vec![1, 2],
        main: true,
        ab: None,
        generator_gso: false,
    };
    let mut i = 1;
    while i + 1 < args.len() {
        // Options with words for values first.
        match (args[i].as_str(), args[i + 1].as_str()) {
            ("--matrix", "pinned") => o.placements = (true, false),
            ("--matrix", "unpinned") => o.placements = (false, true),
            ("--ab", kv) => {
                let (k, v) = kv.split_once('=').ok_or_else(|| anyhow::anyhow!("--ab wants NAME=VALUE"))?;
                o.ab = Some((k.to_string(), v.to_string()));
            }
            ("--matrix-clients", list) => {
                o.matrix_clients =
                    list.split(',').map(|c| c.parse::<usize>().map(|c| c.clamp(1, 64))).collect::<Result<_, _>>()?
            }
            _ => {}
        }
        if args[i] == "--matrix-clients"
            || args[i] == "--ab"
            || (args[i] == "--matrix" && args[i + 1].parse::<usize>().is_err())
        {
            i += 2;
            continue;
        }
        let v: usize = args[i + 1].parse()?;
        match args[i].as_str() {
            "--secs" => o.secs = v.clamp(1, 60) as u64,
            "--rounds" => o.rounds = v.clamp(1, 40),
            "--clients" => o.clients = v.clamp(1, 64),
            "--window" => o.window = v.clamp(1, 1024),
            "--size" => o.size = v.clamp(16, 1200),
            "--allocations" => o.allocations = v.min(MAX_ALLOCATIONS),
            "--udp-workers" => o.udp_workers = v.min(64),
            "--pin" => o.pin = Some(v),
            "--rate" => o.rate = v.clamp(100, 1_000_000),
            "--matrix" => o.matrix = v != 0,
            "--main" => o.main = v != 0,
            "--generator-gso" => o.generator_gso = v != 0,
            other => {
                anyhow::bail!(
                    "unknown option {other}; use --secs, --rounds, --clients, --window, --size, --allocations, \
                     --udp-workers, --pin, --rate, --matrix 0|1|pinned|unpinned, --matrix-clients 1,2, --main, \
                     --ab NAME=VALUE, --generator-gso 0|1"
                )
            }
        }
        i += 2;
    }
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    // By default the servers get half the CPUs and the generator the other half: sharing every core, the
    // generator's own CPU per packet (the same for both servers) dilutes the difference between them, and its
    // threads preempt the server under test (see docs/benchmarks.md for both ways on the same machine).
    let pin = o.pin.unwrap_or(cpus / 2);
    anyhow::ensure!(pin < cpus, "--pin {pin} leaves no CPU for the load generator on this {cpus}-CPU machine");
    let dir = tempfile::tempdir()?;
    // One client socket per allocation here, one relay socket each in the servers (which inherit the limit).
    let fds = common::raise_fd_limit();
    anyhow::ensure!(
        fds as usize > o.allocations + 200,
        "RLIMIT_NOFILE is {fds}; --allocations {} needs more (raise the hard limit: ulimit -Hn)",
        o.allocations
    );
    println!(
        "bench-turn: {} s per phase, median of {} alternating rounds, {} client threads, window {}, {}-byte payloads, \
         {} allocations, loopback, {} CPUs{}, load average {}",
        o.secs,
        o.rounds,
        o.clients,
        o.window,
        o.size,
        o.allocations,
        cpus,
        if pin > 0 {
            format!(" (servers pinned to {pin}, the generator to the other {})", cpus - pin)
        } else {
            " shared by servers and generator".into()
        },
        common::load_average()
    );

    let ponte_extra = format!(
        "relay_port_min = {PONTE_PORTS_MIN}\nrelay_port_max = {}\nallow_peers = [\"127.0.0.1/32\"]\n\
         max_allocations_per_user = 100\nmax_allocations = {}\nunauthenticated_rate_per_ip = 1000000\n\
         udp_workers = {}\nmax_allocations_per_ip = {}\nrelay_port_share_per_ip_percent = 100\n\
         max_bandwidth_per_allocation = 0\n",
        PONTE_PORTS_MIN + RELAY_PORTS - 1,
        o.allocations + 100,
        o.udp_workers,
        o.allocations + 100
    );
    let ponte = turn::spawn_ponte(dir.path(), &ponte_extra)?;
    // The same ponte with one environment variable set, for an A/B in the same minutes (`--ab NAME=VALUE`).
    let ponte_b = match &o.ab {
        Some(kv) => {
            let b = dir.path().join("b");
            std::fs::create_dir_all(&b)?;
            // A lowercase NAME is a `[turn]` key of the second ponte's config (`--ab udp_workers=1`), anything
            // else an environment variable (`--ab PONTE_UDP_GSO=0`).
            if kv.0.bytes().all(|c| c.is_ascii_lowercase() || c == b'_') {
                let key = format!("{} =", kv.0);
                let mut extra: String =
                    ponte_extra.lines().filter(|l| !l.starts_with(&key)).map(|l| format!("{l}\n")).collect();
                extra.push_str(&format!("{} = {}\n", kv.0, kv.1));
                Some(turn::spawn_ponte(&b, &extra)?)
            } else {
                Some(turn::spawn_ponte_with_env(&b, &ponte_extra, Some(kv))?)
            }
        }
        None => None,
    };
    let coturn = turn::spawn_coturn(
        dir.path(),
        COTURN_PORTS_MIN..=COTURN_PORTS_MIN + RELAY_PORTS - 1,
        &["--user-quota=100".into(), format!("--total-quota={}", o.allocations + 100)],
    )?;
    let floor = {
        let port = turn::free_port();
        let child = turn::server_command(std::env::current_exe()?)
            .args(["--serve-floor", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        (Guard(child), SocketAddr::from(([127, 0, 0, 1], port)))
    };
    for (name, addr) in
        [("ponte", ponte.1), ("coturn", coturn.1)].into_iter().chain(ponte_b.as_ref().map(|p| ("ponte (B)", p.1)))
    {
        turn::wait_ready(addr).map_err(|e| anyhow::anyhow!("{name} did not answer STUN on {addr}: {e}"))?;
    }
    // The servers start seeing every CPU (so their defaults, e.g. ponte's one UDP worker per CPU, are those of
    // this host) and are restricted afterwards, every thread: the same processes then serve pinned and unpinned.
    let pids = [ponte.0 .0.id(), coturn.0 .0.id(), floor.0 .0.id()];
    let b_pid = ponte_b.as_ref().map(|p| p.0 .0.id());
    let place = |pin: usize| -> anyhow::Result<()> {
        for pid in pids.into_iter().chain(b_pid) {
            set_pid_cpus(pid, if pin > 0 { 0..pin } else { 0..cpus })?;
        }
        // The generator threads (spawned per phase) inherit this thread's CPUs.
        set_cpus(if pin > 0 { pin..cpus } else { 0..cpus })?;
        Ok(())
    };
    place(pin)?;

    let (pa, ca) = if o.allocations > 0 {
        let pa = alloc_phase(ponte.1, ponte.0 .0.id(), &o).map_err(|e| e.context("ponte allocations"))?;
        let ca = alloc_phase(coturn.1, coturn.0 .0.id(), &o).map_err(|e| e.context("coturn allocations"))?;
        (Some(pa), Some(ca))
    } else {
        (None, None)
    };

    let main_rounds = if o.main { o.rounds } else { 0 };
    let (mut pb, mut cb, mut pr, mut cr) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..main_rounds {
        pb.push(binding_phase(ponte.1, ponte.0 .0.id(), &o, None));
        cb.push(binding_phase(coturn.1, coturn.0 .0.id(), &o, None));
    }
    for _ in 0..main_rounds {
        pr.push(relay_phase(ponte.1, ponte.0 .0.id(), &o, None, false).map_err(|e| e.context("ponte relay phase"))?);
        cr.push(relay_phase(coturn.1, coturn.0 .0.id(), &o, None, false).map_err(|e| e.context("coturn relay phase"))?);
    }
    // Latency at the same offered load for both, below either one's capacity: under saturation a closed loop's
    // RTT is mostly its own queue (in-flight ÷ throughput) and the generator's scheduling, not the server.
    let pace = Some(o.rate as f64 / o.clients as f64);
    let (mut pbl, mut cbl, mut prl, mut crl) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..main_rounds {
        pbl.push(binding_phase(ponte.1, ponte.0 .0.id(), &o, pace));
        cbl.push(binding_phase(coturn.1, coturn.0 .0.id(), &o, pace));
        prl.push(relay_phase(ponte.1, ponte.0 .0.id(), &o, pace, false).map_err(|e| e.context("ponte relay latency"))?);
        crl.push(
            relay_phase(coturn.1, coturn.0 .0.id(), &o, pace, false).map_err(|e| e.context("coturn relay latency"))?,
        );
    }
    let main = if o.main {
        Some((median(pb), median(cb), median(pr), median(cr), pooled(pbl), pooled(cbl), pooled(prl), pooled(crl)))
    } else {
        None
    };
    // The relay matrix: both placements and 1 and 2 client threads in one run, with the floor.
    let (mut matrix, mut fixed) = (Vec::new(), Vec::new());
    if o.matrix {
        let pinned_cpus = (cpus / 2).max(1);
        for (label, p, on) in [("pinned", pinned_cpus, o.placements.0), ("unpinned", 0, o.placements.1)] {
            if p >= cpus || !on {
                continue;
            }
            place(p)?;
            for &clients in &o.matrix_clients {
                let oc = Opts { clients, ..o.clone() };
                // One cell: every server in turn for `o.rounds` rounds at `pace`, medians.
                let cell = |pace: Option<f64>, what: &str| -> anyhow::Result<_> {
                    let (mut a, mut b, mut f, mut g) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                    for _ in 0..o.rounds {
                        a.push(
                            relay_phase(ponte.1, pids[0], &oc, pace, false)
                                .map_err(|e| e.context(format!("ponte {what}")))?,
                        );
                        b.push(
                            relay_phase(coturn.1, pids[1], &oc, pace, false)
                                .map_err(|e| e.context(format!("coturn {what}")))?,
                        );
                        f.push(
                            relay_phase(floor.1, pids[2], &oc, pace, true)
                                .map_err(|e| e.context(format!("floor {what}")))?,
                        );
                        if let (Some(n), Some(pid)) = (&ponte_b, b_pid) {
                            g.push(
                                relay_phase(n.1, pid, &oc, pace, false)
                                    .map_err(|e| e.context(format!("ponte (B) {what}")))?,
                            );
                        }
                    }
                    let steal: Duration = a.iter().chain(&b).chain(&f).chain(&g).map(|s| s.steal).sum();
                    if std::env::var_os("BENCH_ROUNDS").is_some() {
                        let r = |s: &Stats| format!("{}/{}/{}", s.rate as u64, s.p99.as_micros(), s.steal.as_millis());
                        for i in 0..a.len() {
                            eprintln!(
                                "round {what} {label} {clients}: rt/s / p99 µs / steal ms: ponte {} coturn {} floor {}",
                                r(&a[i]),
                                r(&b[i]),
                                r(&f[i])
                            );
                        }
                    }
                    // At a fixed load a phase counts only if the hypervisor took (almost) no time from this VM
                    // during it: a vCPU that is not running delays whichever server is in its phase by
                    // milliseconds, which is the machine's tail, not the server's. Each server is judged on its
                    // calm phases (all of them if it had none), and the sign test on the rounds where both ponte's
                    // and coturn's phases were calm.
                    let calm_phase = |s: &Stats| s.steal <= STEAL_CALM_PER_SEC * o.secs as u32;
                    let mut calm = [a.len(); 3];
                    let won = if pace.is_some() {
                        let both: Vec<bool> = a
                            .iter()
                            .zip(&b)
                            .filter(|(p, c)| calm_phase(p) && calm_phase(c))
                            .map(|(p, c)| p.p99 <= c.p99)
                            .collect();
                        calm = [&a, &b, &f].map(|v| v.iter().filter(|s| calm_phase(s)).count());
                        let keep = |v: Vec<Stats>| -> Vec<Stats> {
                            if v.iter().any(calm_phase) {
                                v.into_iter().filter(calm_phase).collect()
                            } else {
                                v
                            }
                        };
                        (a, b, f, g) = (keep(a), keep(b), keep(f), keep(g));
                        (both.iter().filter(|&&w| w).count(), both.len())
                    } else {
                        // Rounds in which ponte's p99 was at or below coturn's.
                        (a.iter().zip(&b).filter(|(p, c)| p.p99 <= c.p99).count(), a.len())
                    };
                    // In a closed loop, the round with the median rate; at a fixed load every round has the same
                    // rate, so the median round would be a random one: there the percentiles are of every round's
                    // round trips together.
                    let m = if pace.is_some() { pooled } else { median };
                    let g = if g.is_empty() { None } else { Some(m(g)) };
                    Ok((label, clients, m(a), m(b), m(f), g, common::load_average(), won, (steal, calm)))
                };
                matrix.push(cell(None, "matrix")?);
                // The same cell at one fixed offered load for every server (`--rate` round trips/s in all, below
                // each one's capacity): the latency a server adds when it is not the bottleneck, which the closed
                // loop (where a faster server is also offered more) cannot show.
                fixed.push(cell(Some(o.rate as f64 / clients as f64), "fixed")?);
            }
        }
        place(pin)?;
    }
    drop(ponte);
    drop(ponte_b);
    drop(coturn);
    drop(floor);

    if let Some((pb, cb, pr, cr, pbl, cbl, prl, crl)) = &main {
        println!();
        println!("{:<32}{:>16}{:>16}{:>16}", "", "ponte", "coturn", "ponte/coturn");
        row("STUN Binding requests/s", pb.rate, cb.rate);
        lat("  RTT p50 / p99", pb, cb);
        cpu("  server CPU per request", pb, cb);
        println!("{:<32}{:>16}{:>16}", "  lost", pb.lost, cb.lost);
        row("TURN relayed packets/s", pr.rate * 2.0, cr.rate * 2.0);
        row("  (echo round trips/s)", pr.rate, cr.rate);
        lat("  RTT p50 / p99", pr, cr);
        cpu("  server CPU per packet", pr, cr);
        println!("{:<32}{:>16}{:>16}", "  lost", pr.lost, cr.lost);
        println!("at a fixed {} operations/s (requests; echo round trips = 2 relayed packets):", o.rate);
        lat("  STUN Binding RTT p50 / p99", pbl, cbl);
        println!("{:<32}{:>16}{:>16}", "    lost", pbl.lost, cbl.lost);
        lat("  TURN relay RTT p50 / p99", prl, crl);
        println!("{:<32}{:>16}{:>16}", "    lost", prl.lost, crl.lost);
    }
    if let (Some(pa), Some(ca)) = (pa, ca) {
        let mib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
        println!("{:<32}{:>16}{:>16}", "RSS, no allocations", mib(pa.before_kib), mib(ca.before_kib));
        println!("{:<32}{:>16}{:>16}", format!("RSS, {} allocations", pa.count), mib(pa.after_kib), mib(ca.after_kib));
        let (pp, cp) = (pa.per_alloc(), ca.per_alloc());
        let ratio = if pp > 0.0 { format!("{:.2}", cp / pp) } else { "-".into() };
        println!(
            "{:<32}{:>16}{:>16}{ratio:>16}",
            "  memory per allocation",
            format!("{pp:.0} B"),
            format!("{cp:.0} B")
        );
        row("  allocations created/s", pa.rate, ca.rate);
    }
    if !matrix.is_empty() {
        println!(
            "\nTURN relay matrix (closed loop, window {} per client thread, {}-byte payloads; pinned: servers on CPU 0..{}, \
             generator on the rest; unpinned: everything shares all {} CPUs; floor = bare UDP forwarder, no TURN):",
            o.window,
            o.size,
            (cpus / 2).max(1),
            cpus
        );
        let b_cell = |g: &Option<Stats>| match g {
            Some(g) => format!(
                "{:>10.0} {}/{} {:.2} µs",
                g.rate,
                g.p50.as_micros(),
                g.p99.as_micros(),
                g.cpu_per_op.as_nanos() as f64 / 1000.0
            ),
            None => String::new(),
        };
        println!(
            "{:<10}{:>8}{:>11}{:>11}{:>11}{:>8}{:>19}{:>19}{:>19}{:>30}{:>21}{:>8}{:>10}  {}",
            "placement",
            "clients",
            "ponte rt/s",
            "coturn",
            "floor",
            "p/c",
            "p50/p99 ponte µs",
            "coturn",
            "floor",
            "CPU/pkt ponte/coturn/floor",
            "sleeps/1k pkt p/c/f",
            "load",
            "steal",
            match &o.ab {
                Some((k, v)) => format!("ponte with {k}={v}: rt/s p50/p99 µs CPU/pkt"),
                None => String::new(),
            }
        );
        for (label, clients, p, c, f, g, load, _, (steal, _)) in &matrix {
            let us = |s: &Stats| format!("{:.2}", s.cpu_per_op.as_nanos() as f64 / 1000.0);
            let l = |s: &Stats| format!("{}/{}", s.p50.as_micros(), s.p99.as_micros());
            println!(
                "{:<10}{:>8}{:>11.0}{:>11.0}{:>11.0}{:>8.2}{:>19}{:>19}{:>19}{:>30}{:>21}{:>8}{:>10}  {}",
                label,
                clients,
                p.rate,
                c.rate,
                f.rate,
                if c.rate > 0.0 { p.rate / c.rate } else { 0.0 },
                l(p),
                l(c),
                l(f),
                format!("{} / {} / {} µs", us(p), us(c), us(f)),
                format!("{:.0}/{:.0}/{:.0}", p.sleeps_per_k, c.sleeps_per_k, f.sleeps_per_k),
                load.split_whitespace().next().unwrap_or("-"),
                format!("{} ms", steal.as_millis()),
                b_cell(g)
            );
        }
        println!(
            "(rt/s: echo round trips per second, 2 relayed packets each; CPU per relayed packet, all server threads)"
        );
        println!(
            "\nThe same cells at one fixed offered load for every server: {} echo round trips/s in all, paced (the \
             latency a server adds when it is not the bottleneck); percentiles of all round trips of a server's calm \
             phases (at most {} ms of steal time, the hypervisor's time taken from this VM; calm: how many of {} \
             rounds were, per server), p<=c: in how many rounds with both calm ponte's p99 was at or below coturn's:",
            o.rate,
            (STEAL_CALM_PER_SEC * o.secs as u32).as_millis(),
            o.rounds
        );
        println!(
            "{:<10}{:>8}{:>19}{:>19}{:>19}{:>10}{:>8}{:>30}{:>8}{:>10}{:>12}  {}",
            "placement",
            "clients",
            "p50/p99 ponte µs",
            "coturn",
            "floor",
            "p99 c/p",
            "p<=c",
            "CPU/pkt ponte/coturn/floor",
            "load",
            "steal",
            "calm p/c/f",
            if o.ab.is_some() { "ponte (B): p50/p99 µs CPU/pkt" } else { "" }
        );
        for (label, clients, p, c, f, g, load, won, (steal, calm)) in &fixed {
            let us = |s: &Stats| format!("{:.2}", s.cpu_per_op.as_nanos() as f64 / 1000.0);
            let l = |s: &Stats| format!("{}/{}", s.p50.as_micros(), s.p99.as_micros());
            let lost = p.lost + c.lost + f.lost;
            println!(
                "{:<10}{:>8}{:>19}{:>19}{:>19}{:>10.2}{:>8}{:>30}{:>8}{:>10}{:>12}  {}{}",
                label,
                clients,
                l(p),
                l(c),
                l(f),
                c.p99.as_secs_f64() / p.p99.as_secs_f64().max(1e-9),
                format!("{}/{}", won.0, won.1),
                format!("{} / {} / {} µs", us(p), us(c), us(f)),
                load.split_whitespace().next().unwrap_or("-"),
                format!("{} ms", steal.as_millis()),
                format!("{}/{}/{}", calm[0], calm[1], calm[2]),
                g.as_ref().map_or(String::new(), |g| format!("{} {}", l(g), us(g))),
                if lost > 0 { format!("  (lost p/c/f: {}/{}/{})", p.lost, c.lost, f.lost) } else { String::new() }
            );
        }
    }
    println!("\n(relayed packets count both directions: client→peer and peer→client through the relay;");
    println!(
        " ratios are ponte/coturn for rates and coturn/ponte for CPU and memory per operation: above 1 favours ponte)"
    );
    Ok(())
}

fn row(name: &str, p: f64, c: f64) {
    let ratio = if c > 0.0 { format!("{:.2}", p / c) } else { "-".into() };
    println!("{name:<32}{:>16.0}{:>16.0}{ratio:>16}", p, c);
}

fn cpu(name: &str, p: &Stats, c: &Stats) {
    let (pn, cn) = (p.cpu_per_op.as_nanos() as f64, c.cpu_per_op.as_nanos() as f64);
    let ratio = if pn > 0.0 && cn > 0.0 { format!("{:.2}", cn / pn) } else { "-".into() };
    let show = |n: f64| if n > 0.0 { format!("{:.2} µs", n / 1000.0) } else { "unread".into() };
    println!("{name:<32}{:>16}{:>16}{ratio:>16}", show(pn), show(cn));
    if pn == 0.0 || cn == 0.0 {
        // No CPU time accrued means the server process was not the one answering (it died and something else
        // holds the port, or /proc could not be read): the round's figures are suspect.
        println!("  (warning: a server's CPU time could not be read; rerun before trusting this round)");
    }
}

fn lat(name: &str, p: &Stats, c: &Stats) {
    println!(
        "{name:<32}{:>16}{:>16}",
        format!("{} / {} µs", p.p50.as_micros(), p.p99.as_micros()),
        format!("{} / {} µs", c.p50.as_micros(), c.p99.as_micros())
    );
}

/// A fixed-load phase counts for the latencies if the hypervisor took at most this much from the VM per second of
/// the phase (steal time is reported in 10 ms ticks: 48 ms in a 4 s phase, ~0.6 % of 2 CPUs). On the development
/// VM, phases below it had p99s of 0.5-3 ms, phases with 1-4 s of steal 10-50 ms for every server alike.
const STEAL_CALM_PER_SEC: Duration = Duration::from_millis(12);

/// The round with the median rate (its latencies come along), with the losses of all rounds.
fn median(mut v: Vec<Stats>) -> Stats {
    let lost = v.iter().map(|s| s.lost).sum();
    v.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let mut m = v.swap_remove(v.len() / 2);
    m.lost = lost;
    m
}

/// Every round together: percentiles of all round trips, mean rate and CPU per operation, the losses summed.
fn pooled(v: Vec<Stats>) -> Stats {
    let n = v.len().max(1) as f64;
    let rate = v.iter().map(|s| s.rate).sum::<f64>() / n;
    let cpu = v.iter().map(|s| s.cpu_per_op.as_secs_f64()).sum::<f64>() / n;
    let sleeps_per_k = v.iter().map(|s| s.sleeps_per_k).sum::<f64>() / n;
    let lost = v.iter().map(|s| s.lost).sum();
    let v_steal = v.iter().map(|s| s.steal).sum();
    let mut rtts: Vec<u32> = v.into_iter().flat_map(|s| s.rtts).collect();
    rtts.sort_unstable();
    let pct = |p: f64| percentile(&rtts, p);
    Stats {
        rate,
        cpu_per_op: Duration::from_secs_f64(cpu),
        p50: pct(0.50),
        p99: pct(0.99),
        lost,
        sleeps_per_k,
        rtts,
        steal: v_steal,
    }
}

fn percentile(sorted: &[u32], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    Duration::from_nanos(sorted.get(i).copied().unwrap_or(0) as u64)
}

struct Stats {
    rate: f64,
    /// Server CPU time (user + system, all threads) per answered request / relayed packet: less sensitive
    /// to other load on a shared machine than the rates.
    cpu_per_op: Duration,
    p50: Duration,
    p99: Duration,
    lost: u64,
    /// Server threads' voluntary context switches (each one a sleep and a later wake-up) per 1000 operations.
    sleeps_per_k: f64,
    /// Every round trip of the phase, sorted (for `pooled`).
    rtts: Vec<u32>,
    /// The machine's steal time during the phase (relay phases only).
    steal: Duration,
}

fn stats(mut rtts: Vec<u32>, elapsed: Duration, sent: u64, cpu: Duration, ops_per_rtt: u32) -> Stats {
    rtts.sort_unstable();
    let ops = (rtts.len() as u32).max(1) * ops_per_rtt;
    Stats {
        rate: rtts.len() as f64 / elapsed.as_secs_f64(),
        cpu_per_op: cpu / ops,
        p50: percentile(&rtts, 0.50),
        p99: percentile(&rtts, 0.99),
        lost: sent.saturating_sub(rtts.len() as u64),
        sleeps_per_k: 0.0,
        rtts,
        steal: Duration::ZERO,
    }
}

/// Closed-loop load in both phases: each client thread keeps `window` requests in flight, a response releases
/// the next one, and 100 ms of silence refills the window (the missing ones then count as lost). With `pace`
/// (requests/s per thread) the load is open-loop instead: requests leave on schedule whatever the answers do.
fn binding_phase(server: SocketAddr, pid: u32, o: &Opts, pace: Option<f64>) -> Stats {
    let cpu0 = cpu_time(pid);
    let epoch = Instant::now();
    let deadline = epoch + Duration::from_secs(o.secs);
    let budget = MAX_PER_PHASE / o.clients as u64;
    let results: Vec<(Vec<u32>, u64, Duration)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..o.clients)
            .map(|_| {
                sc.spawn(move || {
                    // The generator takes answers off its socket in batches and sends the next requests in one
                    // system call (recvmmsg/sendmmsg), so that on a small machine most of the CPU is left to the
                    // server under test; both servers face exactly the same generator.
                    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                    turn::big_buffers(&s);
                    s.set_nonblocking(true).unwrap();
                    let (mut rx, mut tx) = (mmsg::RecvBatch::new(), mmsg::SendBatch::segmented(o.generator_gso));
                    let mut rtts = Vec::with_capacity(1 << 20);
                    let (mut sent, mut seq) = (0u64, 0u32);
                    let mut queue = |tx: &mut mmsg::SendBatch, sent: &mut u64| {
                        seq = seq.wrapping_add(1);
                        tx.push(server, binding_request(epoch.elapsed().as_nanos() as u64, seq).to_vec());
                        *sent += 1;
                    };
                    let answer = |buf: &[u8], rtts: &mut Vec<u32>| {
                        if buf.len() >= 20 && buf[0] == 0x01 && buf[1] == 0x01 {
                            let ts = u64::from_be_bytes(buf[8..16].try_into().unwrap());
                            rtts.push((epoch.elapsed().as_nanos() as u64).saturating_sub(ts) as u32);
                            true
                        } else {
                            false
                        }
                    };
                    if pace.is_none() {
                        for _ in 0..o.window {
                            queue(&mut tx, &mut sent);
                        }
                        send_all(&s, &mut tx);
                    }
                    while Instant::now() < deadline && sent < budget {
                        if let Some(r) = pace {
                            let due = (epoch.elapsed().as_secs_f64() * r) as u64;
                            while sent < due {
                                queue(&mut tx, &mut sent);
                            }
                            send_all(&s, &mut tx);
                            match rx.recv(&s) {
                                Ok(n) => (0..n).for_each(|i| {
                                    if let Some((buf, _)) = rx.get(i) {
                                        answer(buf, &mut rtts);
                                    }
                                }),
                                Err(_) => {
                                    wait_readable(&s, 1);
                                }
                            }
                            continue;
                        }
                        match rx.recv(&s) {
                            Ok(n) => {
                                for i in 0..n {
                                    if rx.get(i).is_some_and(|(buf, _)| answer(buf, &mut rtts)) {
                                        queue(&mut tx, &mut sent);
                                    }
                                }
                                send_all(&s, &mut tx);
                            }
                            Err(_) => {
                                if !wait_readable(&s, 100) {
                                    for _ in 0..o.window {
                                        queue(&mut tx, &mut sent);
                                    }
                                    send_all(&s, &mut tx);
                                }
                            }
                        }
                    }
                    let active = epoch.elapsed();
                    // Collect stragglers for a moment so that in-flight requests are not counted as lost.
                    while wait_readable(&s, 200) {
                        if let Ok(n) = rx.recv(&s) {
                            for i in 0..n {
                                if let Some((buf, _)) = rx.get(i) {
                                    answer(buf, &mut rtts);
                                }
                            }
                        }
                    }
                    (rtts, sent, active)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = results.iter().map(|r| r.2).max().unwrap_or_default();
    let sent = results.iter().map(|r| r.1).sum();
    stats(results.into_iter().flat_map(|r| r.0).collect(), elapsed, sent, cpu_time(pid) - cpu0, 1)
}

/// Send everything queued, waiting for room in the socket buffer when it is full.
fn send_all(s: &UdpSocket, tx: &mut mmsg::SendBatch) {
    use std::os::fd::AsRawFd;
    while tx.flush(s).is_err() {
        let mut p = libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
        // SAFETY: as above.
        unsafe { libc::poll(&mut p, 1, 100) };
    }
}

/// With `floor`, `server` is the bare forwarder ([`serve_floor`]): no allocation, one setup datagram naming the peer.
fn relay_phase(server: SocketAddr, pid: u32, o: &Opts, pace: Option<f64>, floor: bool) -> anyhow::Result<Stats> {
    // The echo peer: one socket, one thread, returns every datagram to its sender, in batches (recvmmsg/sendmmsg)
    // like the clients, so that the generator leaves as much CPU as it can to the server under test.
    let peer = UdpSocket::bind("127.0.0.1:0")?;
    turn::big_buffers(&peer);
    peer.set_nonblocking(true)?;
    let peer_addr = peer.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let stop = stop.clone();
        let gso = o.generator_gso;
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let mut rx = mmsg::RecvBatch::new();
            while !stop.load(Ordering::Relaxed) {
                let Ok(n) = rx.recv(&peer) else {
                    wait_readable(&peer, 50);
                    continue;
                };
                let got: Vec<usize> = (0..n).filter(|&i| rx.get(i).is_some()).collect();
                let mut sent = 0;
                while sent < got.len() {
                    let rest = &got[sent..];
                    let item = |k: usize| {
                        let (data, from) = rx.get(rest[k]).expect("checked above");
                        (from, data)
                    };
                    let sent_now = if gso {
                        mmsg::send_segmented(peer.as_raw_fd(), rest.len(), item)
                    } else {
                        mmsg::send_many(peer.as_raw_fd(), rest.len(), item)
                    };
                    match sent_now {
                        Ok(k) => sent += k.max(1),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            let mut p = libc::pollfd { fd: peer.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
                            // SAFETY: one valid pollfd for the duration of the call.
                            unsafe { libc::poll(&mut p, 1, 100) };
                        }
                        Err(_) => sent += 1,
                    }
                }
            }
        })
    };
    let mut clients = Vec::new();
    for id in 0..o.clients {
        let mut c = TurnClient::new(server, id)?;
        if floor {
            floor_setup(&c.s, server, peer_addr)?;
            c.s.set_read_timeout(Some(Duration::from_millis(100)))?;
            clients.push(c);
            continue;
        }
        c.request(METHOD_ALLOCATE, &|m| m.add(AttrType(ATTR_REQUESTED_TRANSPORT), &[17, 0, 0, 0]))?;
        c.request(METHOD_CHANNEL_BIND, &|m| {
            m.add(AttrType(ATTR_CHANNEL_NUMBER), &[0x40, 0x00, 0, 0]);
            stun::xoraddr::XorMappedAddress { ip: peer_addr.ip(), port: peer_addr.port() }
                .add_to_as(m, AttrType(ATTR_XOR_PEER_ADDRESS))
                .unwrap();
        })?;
        c.s.set_read_timeout(Some(Duration::from_millis(100)))?;
        clients.push(c);
    }
    let cpu0 = cpu_time(pid);
    let steal0 = turn::steal_time();
    let sleeps0 = sleeps(pid);
    let epoch = Instant::now();
    let deadline = epoch + Duration::from_secs(o.secs);
    let budget = MAX_PER_PHASE / o.clients as u64;
    let size = o.size;
    let window = o.window;
    let results: Vec<(Vec<u32>, u64, Duration)> = std::thread::scope(|sc| {
        let hs: Vec<_> = clients
            .iter()
            .map(|c| {
                sc.spawn(move || {
                    // Batched like the Binding generator (see there).
                    c.s.set_nonblocking(true).unwrap();
                    let (mut rx, mut tx) = (mmsg::RecvBatch::new(), mmsg::SendBatch::segmented(o.generator_gso));
                    let mut frame = vec![0u8; 4 + size];
                    frame[0..2].copy_from_slice(&0x4000u16.to_be_bytes());
                    frame[2..4].copy_from_slice(&(size as u16).to_be_bytes());
                    let mut rtts = Vec::with_capacity(1 << 20);
                    let mut sent = 0u64;
                    let mut queue = |tx: &mut mmsg::SendBatch, sent: &mut u64| {
                        frame[4..12].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_be_bytes());
                        tx.push(c.server, frame.clone());
                        *sent += 1;
                    };
                    let on = |buf: &[u8], rtts: &mut Vec<u32>| -> bool {
                        if buf.len() >= 12 && buf[0] == 0x40 && buf[1] == 0x00 {
                            let ts = u64::from_be_bytes(buf[4..12].try_into().unwrap());
                            rtts.push((epoch.elapsed().as_nanos() as u64).saturating_sub(ts) as u32);
                            return true;
                        }
                        false
                    };
                    if pace.is_none() {
                        for _ in 0..window {
                            queue(&mut tx, &mut sent);
                        }
                        send_all(&c.s, &mut tx);
                    }
                    while Instant::now() < deadline && sent < budget {
                        if let Some(r) = pace {
                            let due = (epoch.elapsed().as_secs_f64() * r) as u64;
                            while sent < due {
                                queue(&mut tx, &mut sent);
                            }
                            send_all(&c.s, &mut tx);
                            match rx.recv(&c.s) {
                                Ok(n) => (0..n).for_each(|i| {
                                    if let Some((buf, _)) = rx.get(i) {
                                        on(buf, &mut rtts);
                                    }
                                }),
                                Err(_) => {
                                    wait_readable(&c.s, 1);
                                }
                            }
                            continue;
                        }
                        match rx.recv(&c.s) {
                            Ok(n) => {
                                for i in 0..n {
                                    if rx.get(i).is_some_and(|(buf, _)| on(buf, &mut rtts)) {
                                        queue(&mut tx, &mut sent);
                                    }
                                }
                                send_all(&c.s, &mut tx);
                            }
                            Err(_) => {
                                if !wait_readable(&c.s, 100) {
                                    for _ in 0..window {
                                        queue(&mut tx, &mut sent);
                                    }
                                    send_all(&c.s, &mut tx);
                                }
                            }
                        }
                    }
                    let active = epoch.elapsed();
                    while wait_readable(&c.s, 200) {
                        if let Ok(n) = rx.recv(&c.s) {
                            for i in 0..n {
                                if let Some((buf, _)) = rx.get(i) {
                                    on(buf, &mut rtts);
                                }
                            }
                        }
                    }
                    c.s.set_nonblocking(false).unwrap();
                    (rtts, sent, active)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let cpu = cpu_time(pid) - cpu0;
    let steal = turn::steal_time().saturating_sub(steal0);
    let slept = sleeps(pid).saturating_sub(sleeps0);
    stop.store(true, Ordering::Relaxed);
    let _ = echo.join();
    for c in &mut clients {
        c.s.set_read_timeout(Some(Duration::from_secs(2)))?;
        // Drain anything left, then delete the allocation so that the next phase starts clean.
        let mut buf = [0u8; 2048];
        c.s.set_nonblocking(true)?;
        while c.s.recv_from(&mut buf).is_ok() {}
        c.s.set_nonblocking(false)?;
        if floor {
            continue;
        }
        let _ = c.request(METHOD_REFRESH, &|m| m.add(AttrType(ATTR_LIFETIME), &0u32.to_be_bytes()));
    }
    let elapsed = results.iter().map(|r| r.2).max().unwrap_or_default();
    let sent = results.iter().map(|r| r.1).sum();
    // Two relayed packets per echo round trip (client→peer, peer→client).
    let mut st = stats(results.into_iter().flat_map(|r| r.0).collect(), elapsed, sent, cpu, 2);
    st.sleeps_per_k = slept as f64 * 1000.0 / (st.rate * elapsed.as_secs_f64() * 2.0).max(1.0);
    st.steal = steal;
    Ok(st)
}

/// Voluntary context switches of every thread of `pid` so far (a thread blocking, to be woken later).
fn sleeps(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("voluntary_ctxt_switches:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Resident set size of process `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct AllocStats {
    count: usize,
    before_kib: u64,
    after_kib: u64,
    /// Allocations created per second (401 challenge + signed Allocate each).
    rate: f64,
}

impl AllocStats {
    fn per_alloc(&self) -> f64 {
        self.after_kib.saturating_sub(self.before_kib) as f64 * 1024.0 / self.count.max(1) as f64
    }
}

/// Create `o.allocations` allocations (each from its own socket, with its own username, as browsers do), read
/// the server's RSS, then delete them all so the next phases start clean.
fn alloc_phase(server: SocketAddr, pid: u32, o: &Opts) -> anyhow::Result<AllocStats> {
    let before_kib = rss_kib(pid);
    let threads = o.clients.max(1);
    let t0 = Instant::now();
    let made: Vec<anyhow::Result<Vec<TurnClient>>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                sc.spawn(move || {
                    let mut mine = Vec::new();
                    for i in (t..o.allocations).step_by(threads) {
                        let mut c = TurnClient::new(server, 100_000 + i)?;
                        c.request(METHOD_ALLOCATE, &|m| m.add(AttrType(ATTR_REQUESTED_TRANSPORT), &[17, 0, 0, 0]))
                            .map_err(|e| e.context(format!("allocation {i}")))?;
                        mine.push(c);
                    }
                    Ok(mine)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = t0.elapsed();
    let mut clients = Vec::new();
    for m in made {
        clients.push(m?);
    }
    // Let the server settle (lazy frees, deferred work) before reading its memory.
    std::thread::sleep(Duration::from_millis(500));
    let after_kib = rss_kib(pid);
    let count = clients.iter().map(Vec::len).sum();
    std::thread::scope(|sc| {
        for mine in &mut clients {
            sc.spawn(move || {
                for c in mine.iter_mut() {
                    let _ = c.request(METHOD_REFRESH, &|m| m.add(AttrType(ATTR_LIFETIME), &0u32.to_be_bytes()));
                }
            });
        }
    });
    Ok(AllocStats { count, before_kib, after_kib, rate: count as f64 / elapsed.as_secs_f64() })
}

/// Tell the floor forwarder which peer this client's datagrams go to ("PEER" + port), waiting for its "OK".
fn floor_setup(s: &UdpSocket, floor: SocketAddr, peer: SocketAddr) -> anyhow::Result<()> {
    let mut msg = b"PEER".to_vec();
    msg.extend_from_slice(&peer.port().to_be_bytes());
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut buf = [0u8; 64];
    for _ in 0..50 {
        s.send_to(&msg, floor)?;
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            if &buf[..n] == b"OK" {
                return Ok(());
            }
        }
    }
    anyhow::bail!("the floor forwarder at {floor} does not answer")
}

/// The floor: a bare UDP forwarder that does what a TURN relay's data path must do and nothing else (no STUN, no
/// authentication, permissions, channels, quotas or expiry), in one thread with epoll and recvmmsg/sendmmsg. A client
/// names its peer once ("PEER" + port, answered "OK") and gets its own relay socket; its ChannelData payloads go out
/// of that socket to the peer, and the peer's datagrams come back as ChannelData (0x4000). Its CPU per relayed
/// packet is what the kernel's UDP path costs: the least any relay on this machine can spend.
fn serve_floor(port: &str) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    const LISTENER: mio::Token = mio::Token(usize::MAX);
    let listener = UdpSocket::bind(("127.0.0.1", port.parse::<u16>()?))?;
    turn::big_buffers(&listener);
    listener.set_nonblocking(true)?;
    let mut poll = mio::Poll::new()?;
    poll.registry().register(&mut mio::unix::SourceFd(&listener.as_raw_fd()), LISTENER, mio::Interest::READABLE)?;
    // aHash, like ponte's data path (SipHash would make the floor spend more than ponte in user space).
    let mut by_client: std::collections::HashMap<SocketAddr, (usize, SocketAddr), ahash::RandomState> =
        Default::default();
    let mut relays: Vec<(UdpSocket, SocketAddr)> = Vec::new();
    let mut rx = mmsg::RecvBatch::with_layout(mmsg::BATCH, 4, 2048, 0);
    let mut events = mio::Events::with_capacity(256);
    let mut ready: Vec<mio::Token> = Vec::new();
    let mut lens = Vec::with_capacity(mmsg::BATCH);
    loop {
        poll.poll(&mut events, if ready.is_empty() { None } else { Some(Duration::ZERO) })?;
        for ev in events.iter() {
            if !ready.contains(&ev.token()) {
                ready.push(ev.token());
            }
        }
        let mut i = 0;
        while i < ready.len() {
            let t = ready[i];
            let sock = if t == LISTENER { &listener } else { &relays[t.0].0 };
            let n = match rx.recv(sock) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                Err(_) => {
                    i += 1;
                    continue;
                }
            };
            if t == LISTENER {
                let mut out: Vec<(usize, SocketAddr, &[u8])> = Vec::with_capacity(n);
                for k in 0..n {
                    let Some((data, from)) = rx.get(k) else { continue };
                    if data.len() == 6 && &data[..4] == b"PEER" {
                        let peer = SocketAddr::from(([127, 0, 0, 1], u16::from_be_bytes([data[4], data[5]])));
                        let r = UdpSocket::bind("127.0.0.1:0")?;
                        turn::big_buffers(&r);
                        r.set_nonblocking(true)?;
                        let tok = mio::Token(relays.len());
                        poll.registry().register(
                            &mut mio::unix::SourceFd(&r.as_raw_fd()),
                            tok,
                            mio::Interest::READABLE,
                        )?;
                        relays.push((r, from));
                        by_client.insert(from, (tok.0, peer));
                        let _ = listener.send_to(b"OK", from);
                    } else if data.len() >= 4 && data[0] & 0xc0 == 0x40 {
                        if let Some(&(r, peer)) = by_client.get(&from) {
                            out.push((r, peer, &data[4..]));
                        }
                    }
                }
                // Runs of datagrams for the same relay socket leave in one sendmmsg.
                let mut a = 0;
                while a < out.len() {
                    let b = a + out[a..].iter().take_while(|x| x.0 == out[a].0).count();
                    let run = &out[a..b];
                    forward(&relays[run[0].0].0, run.len(), |k| (run[k].1, run[k].2));
                    a = b;
                }
            } else {
                let client = relays[t.0].1;
                lens.clear();
                for k in 0..n {
                    if let Some((buf, len, _)) = rx.slot_mut(k) {
                        buf[0..2].copy_from_slice(&0x4000u16.to_be_bytes());
                        buf[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                        lens.push((k, len));
                    }
                }
                forward(&listener, lens.len(), |k| (client, &rx.slot(lens[k].0)[..4 + lens[k].1]));
            }
            if n < rx.capacity() {
                ready.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }
}

/// Send `n` datagrams, as many per sendmmsg as fit, waiting for room when the socket buffer is full.
fn forward<'a>(s: &UdpSocket, n: usize, item: impl Fn(usize) -> (SocketAddr, &'a [u8])) {
    use std::os::fd::AsRawFd;
    let mut sent = 0;
    while sent < n {
        let from = sent;
        // Runs to one destination as UDP GSO messages, like ponte (so the floor stays the least a relay can spend).
        match mmsg::send_segmented(s.as_raw_fd(), n - from, |k| item(from + k)) {
            Ok(k) => sent += k.max(1),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut p = libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
                // SAFETY: one valid pollfd for the duration of the call.
                unsafe { libc::poll(&mut p, 1, 100) };
            }
            Err(_) => sent += 1,
        }
    }
}
