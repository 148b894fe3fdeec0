//! What the TURN benchmarks (bench-turn, bench-call) share: starting ponte (the benchmark binary re-executed with
//! `--serve-ponte`) and coturn's `turnserver` on loopback, a blocking TURN client with the long-term-credential
//! dance, reading a server's CPU time, and CPU placement. Each example includes this file as its own module.
#![allow(dead_code)] // each example uses its own part

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ponte::turn::codec::{self, *};
use stun::attributes::AttrType;
use stun::message::{Message, Setter};

pub const SECRET: &str = "bench-secret-0123456789abcdef";
pub const REALM: &str = "ponte";

/// A server process, stopped when dropped: SIGTERM, then SIGKILL if it has not exited within 10 s (a server run
/// under a profiler, see [`server_command`], writes its profile on SIGTERM).
pub struct Guard(pub Child);
impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The command that starts a server under test: `program`, or, with `BENCH_SERVER_PREFIX` set (e.g.
/// `valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p`), that command line followed by `program`, to count
/// each server's instructions per operation in the same run.
pub fn server_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    match std::env::var("BENCH_SERVER_PREFIX") {
        Ok(prefix) if !prefix.trim().is_empty() => {
            let mut words = prefix.split_whitespace();
            let mut cmd = Command::new(words.next().expect("not empty"));
            cmd.args(words).arg(program);
            cmd
        }
        _ => Command::new(program),
    }
}

impl Guard {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

pub fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Start ponte (this example's binary, re-executed with `--serve-ponte`, see [`serve_ponte`]) with a `[turn]`
/// section made of the listener, secret and relay address plus `turn_extra` (more `key = value` lines).
pub fn spawn_ponte(dir: &Path, turn_extra: &str) -> anyhow::Result<(Guard, SocketAddr)> {
    spawn_ponte_with_env(dir, turn_extra, None)
}

/// [`spawn_ponte`] with one environment variable set for the server (bench-turn's `--ab NAME=VALUE`).
pub fn spawn_ponte_with_env(
    dir: &Path,
    turn_extra: &str,
    env: Option<&(String, String)>,
) -> anyhow::Result<(Guard, SocketAddr)> {
    let port = free_port();
    let cfg = dir.join("ponte.toml");
    std::fs::write(
        &cfg,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[metrics]\nenabled = false\n[log]\nlevel = \"warn\"\n[turn]\n\
             listen_udp = [\"127.0.0.1:{port}\"]\nlisten_tcp = []\nsecret = \"{SECRET}\"\nrelay_ip = \"127.0.0.1\"\n\
             {turn_extra}"
        ),
    )?;
    let mut cmd = server_command(std::env::current_exe()?);
    cmd.args(["--serve-ponte", cfg.to_str().unwrap()]);
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::inherit()).spawn()?;
    Ok((Guard(child), SocketAddr::from(([127, 0, 0, 1], port))))
}

/// Start coturn's `turnserver` on loopback with the same shared secret, relay ports `ports` and `extra` options.
pub fn spawn_coturn(
    dir: &Path,
    ports: std::ops::RangeInclusive<u16>,
    extra: &[String],
) -> anyhow::Result<(Guard, SocketAddr)> {
    let port = free_port();
    let child = server_command("turnserver")
        .current_dir(dir)
        .args([
            "-n",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--no-rfc5780",
            "--no-software-attribute",
            "--log-file",
            "stdout",
            "--simple-log",
            "--pidfile",
            dir.join("turnserver.pid").to_str().unwrap(),
            "--listening-ip",
            "127.0.0.1",
            "--listening-port",
            &port.to_string(),
            "--relay-ip",
            "127.0.0.1",
            "--min-port",
            &ports.start().to_string(),
            "--max-port",
            &ports.end().to_string(),
            "--use-auth-secret",
            &format!("--static-auth-secret={SECRET}"),
            &format!("--realm={REALM}"),
            // coturn refuses loopback peers before looking at allowed-peer-ip; both are needed here.
            "--allow-loopback-peers",
            "--allowed-peer-ip=127.0.0.1",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!("cannot start coturn's turnserver ({e}); install it with `apt-get install coturn`")
        })?;
    Ok((Guard(child), SocketAddr::from(([127, 0, 0, 1], port))))
}

/// Runs ponte in this (child) process.
pub fn serve_ponte(cfg: &str) -> anyhow::Result<()> {
    let config = ponte::config::Config::load(std::path::Path::new(cfg))?;
    // Warnings (a refused allocation and why) reach the terminal; the config sets the level to warn.
    ponte::logging::init(&config.log);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let listeners = ponte::Listeners::bind(&config)?;
        ponte::run(config, listeners, tokio_util::sync::CancellationToken::new()).await
    })
}

/// Wait (up to 10 s) until `addr` answers a STUN Binding request.
pub fn wait_ready(addr: SocketAddr) -> anyhow::Result<()> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        s.send_to(&binding_request(0, 0), addr)?;
        if s.recv_from(&mut buf).is_ok() {
            return Ok(());
        }
    }
    anyhow::bail!("timeout")
}

/// A Binding request whose transaction ID carries the send time (ns since `epoch`) and a sequence number,
/// so RTTs need no bookkeeping.
pub fn binding_request(ts: u64, seq: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[1] = 0x01;
    b[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    b[8..16].copy_from_slice(&ts.to_be_bytes());
    b[16..20].copy_from_slice(&seq.to_be_bytes());
    b
}

/// CPU time used so far by process `pid` (all threads), from /proc.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15 (1-based).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// Large socket buffers for the benchmark's own sockets (generator, echo peer, floor), like ponte's: after the VM
/// or a thread stalls for a few milliseconds, a paced generator catches up in one burst, and a fast relay passes
/// it on back to back; with the default 208 KiB the burst was dropped at the benchmark's sockets, which counted as
/// the server's loss (and hid those round trips from its latency).
pub fn big_buffers(s: &UdpSocket) {
    let s = socket2::SockRef::from(s);
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
}

/// The machine's steal time so far (all CPUs): time this VM's CPUs wanted to run but the hypervisor ran something
/// else. A phase with steal has latencies that no server caused, so latency comparisons leave such rounds out.
pub fn steal_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    // "cpu  user nice system idle iowait irq softirq steal ...": steal is the 8th number.
    let ticks =
        stat.lines().next().and_then(|l| l.split_whitespace().nth(8)).and_then(|x| x.parse().ok()).unwrap_or(0u64);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// Wait up to `ms` for the socket to have something to read.
pub fn wait_readable(s: &UdpSocket, ms: i32) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

/// Restrict every thread of process `pid` to `cpus` (threads it starts later inherit it from their creator).
pub fn set_pid_cpus(pid: u32, cpus: std::ops::Range<usize>) -> std::io::Result<()> {
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Some(tid) = t?.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        // SAFETY: as in set_cpus, for another thread id.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for c in cpus.clone() {
                libc::CPU_SET(c, &mut set);
            }
            // A thread may have ended since the listing: not an error.
            libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
    Ok(())
}

/// Restrict the calling thread (and the threads it starts afterwards) to `cpus`.
pub fn set_cpus(cpus: std::ops::Range<usize>) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET stays within it for CPU numbers below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Blocking request/response with the long-term-credential dance (401 → realm/nonce → signed request).
pub struct TurnClient {
    pub s: UdpSocket,
    pub server: SocketAddr,
    user: String,
    pass: String,
    nonce: Vec<u8>,
}

impl TurnClient {
    /// A client on its own socket with its own TURN REST username (`bench<id>`), as a browser tab would have.
    pub fn new(server: SocketAddr, id: usize) -> anyhow::Result<TurnClient> {
        let s = UdpSocket::bind("127.0.0.1:0")?;
        big_buffers(&s);
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let cred = ponte::credentials::mint(
            &ponte::config::Secret::new(SECRET),
            &format!("bench{id}"),
            ponte::credentials::unix_now(),
            3600,
        );
        Ok(TurnClient { s, server, user: cred.username, pass: cred.password, nonce: Vec::new() })
    }

    pub fn request(&mut self, method: u16, attrs: &dyn Fn(&mut Message)) -> anyhow::Result<Message> {
        for _ in 0..3 {
            let mut m = codec::message(method, 0, rand::random());
            attrs(&mut m);
            if !self.nonce.is_empty() {
                m.add(AttrType(ATTR_USERNAME), self.user.as_bytes());
                m.add(AttrType(ATTR_REALM), REALM.as_bytes());
                m.add(AttrType(ATTR_NONCE), &self.nonce);
                stun::integrity::MessageIntegrity::new_long_term_integrity(
                    self.user.clone(),
                    REALM.into(),
                    self.pass.clone(),
                )
                .add_to(&mut m)?;
            }
            let r = self.exchange(&m)?;
            let code = r.get(AttrType(ATTR_ERROR_CODE)).ok().map(|v| v[2] as u16 * 100 + v[3] as u16);
            match code {
                None => return Ok(r),
                Some(401) | Some(438) => self.nonce = r.get(AttrType(ATTR_NONCE))?,
                Some(c) => anyhow::bail!("error {c} for method {method:#x}"),
            }
        }
        anyhow::bail!("authentication failed")
    }

    /// Send `m` and wait for its answer, retransmitting (same transaction) after each read timeout, 4 times in all:
    /// a loaded server or a full socket buffer loses a datagram now and then, and a lost Refresh-to-0 would leave an
    /// allocation behind on that 5-tuple. Anything that is not the answer (relayed data still arriving) is skipped.
    fn exchange(&mut self, m: &Message) -> anyhow::Result<Message> {
        let mut buf = [0u8; 1500];
        for _ in 0..4 {
            self.s.send_to(&m.raw, self.server)?;
            loop {
                match self.s.recv_from(&mut buf) {
                    Ok((n, _)) => {
                        if let Some(r) = codec::decode(&buf[..n]) {
                            if r.transaction_id == m.transaction_id {
                                return Ok(r);
                            }
                        }
                    }
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                        break
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        anyhow::bail!("no answer from {} after 4 tries", self.server)
    }

    /// Allocate a UDP relay; returns the relayed address.
    pub fn allocate(&mut self) -> anyhow::Result<SocketAddr> {
        let r = self.request(METHOD_ALLOCATE, &|m| m.add(AttrType(ATTR_REQUESTED_TRANSPORT), &[17, 0, 0, 0]))?;
        let mut relayed = stun::xoraddr::XorMappedAddress::default();
        relayed.get_from_as(&r, AttrType(ATTR_XOR_RELAYED_ADDRESS))?;
        Ok(SocketAddr::new(relayed.ip, relayed.port))
    }

    /// Bind `channel` to `peer` (which also installs the permission for its IP).
    pub fn bind_channel(&mut self, channel: u16, peer: SocketAddr) -> anyhow::Result<()> {
        self.request(METHOD_CHANNEL_BIND, &|m| {
            m.add(AttrType(ATTR_CHANNEL_NUMBER), &[(channel >> 8) as u8, channel as u8, 0, 0]);
            stun::xoraddr::XorMappedAddress { ip: peer.ip(), port: peer.port() }
                .add_to_as(m, AttrType(ATTR_XOR_PEER_ADDRESS))
                .unwrap();
        })?;
        Ok(())
    }

    /// Delete the allocation (Refresh with lifetime 0); errors are ignored (it may be gone already).
    pub fn delete(&mut self) {
        let _ = self.request(METHOD_REFRESH, &|m| m.add(AttrType(ATTR_LIFETIME), &0u32.to_be_bytes()));
    }
}
