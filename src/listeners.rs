//! Binding every listener up front (before anything starts), so that a port clash is reported at once and names
//! the config key that chose the address; `run` then takes the bound sockets.

use std::net::{SocketAddr, TcpListener, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;

/// Every socket the daemon serves on, bound before `run` so that a port clash is reported before anything starts.
#[derive(Debug)]
pub struct Listeners {
    pub http: TcpListener,
    /// `/metrics`, when `metrics.enabled`.
    pub metrics: Option<TcpListener>,
    /// The shared HTTPS/WSS/TURNS port, when TLS is configured.
    pub tls: Option<TcpListener>,
    /// TURNS-only ports (`tls.turns_listen`).
    pub turns: Vec<TcpListener>,
    pub turn_udp: Vec<UdpSocket>,
    pub turn_tcp: Vec<TcpListener>,
    /// `turn.stun_alt_listen`, when set.
    pub stun_alt: Option<UdpSocket>,
}

/// A listener that could not be bound, naming the config key that chose the address.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind {key} = \"{addr}\": {source}{hint}")]
pub struct BindError {
    pub key: String,
    pub addr: SocketAddr,
    pub source: std::io::Error,
    hint: &'static str,
}

impl BindError {
    pub(crate) fn new(key: String, addr: SocketAddr, source: std::io::Error) -> Self {
        let hint = match source.kind() {
            std::io::ErrorKind::AddrInUse => {
                " — another program (or another ponte) already uses this port; stop it or change the address"
            }
            std::io::ErrorKind::PermissionDenied => {
                " — ports below 1024 need CAP_NET_BIND_SERVICE (the systemd unit grants it) or a higher port"
            }
            std::io::ErrorKind::AddrNotAvailable => {
                " — this host has no such address; use one of its interface addresses or 0.0.0.0"
            }
            _ => "",
        };
        BindError { key, addr, source, hint }
    }
}

/// Which protocol a planned listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// What serves on a planned listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Http,
    Metrics,
    /// The shared HTTPS/WSS/TURNS port.
    Tls,
    /// A TURNS-only port (`tls.turns_listen`).
    Turns,
    /// STUN/TURN (`turn.listen_udp`, `turn.listen_tcp`).
    Stun,
    /// STUN Binding only (`turn.stun_alt_listen`), the second destination of /diag's NAT mapping test.
    StunAlt,
}

/// One listener the config asks for, with the key that chose its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub key: String,
    pub addr: SocketAddr,
    pub proto: Proto,
    pub role: Role,
}

/// Every listener `config` asks for, in the order they are bound. `ponte doctor` checks the same list.
pub fn plan(config: &Config) -> Vec<Planned> {
    let planned = |key: String, addr, proto, role| Planned { key, addr, proto, role };
    let mut v = vec![planned("http.listen".into(), config.http.listen, Proto::Tcp, Role::Http)];
    if config.metrics.enabled {
        v.push(planned("metrics.listen".into(), config.metrics.listen, Proto::Tcp, Role::Metrics));
    }
    if config.tls.enabled() {
        v.push(planned("tls.listen".into(), config.tls.listen, Proto::Tcp, Role::Tls));
        if config.turn.enabled {
            for (i, a) in config.tls.turns_listen.iter().enumerate() {
                v.push(planned(format!("tls.turns_listen[{i}]"), *a, Proto::Tcp, Role::Turns));
            }
        }
    }
    if config.turn.enabled {
        for (i, a) in config.turn.listen_udp.iter().enumerate() {
            v.push(planned(format!("turn.listen_udp[{i}]"), *a, Proto::Udp, Role::Stun));
        }
        for (i, a) in config.turn.listen_tcp.iter().enumerate() {
            v.push(planned(format!("turn.listen_tcp[{i}]"), *a, Proto::Tcp, Role::Stun));
        }
        if let Some(a) = config.turn.stun_alt_listen {
            v.push(planned("turn.stun_alt_listen".into(), a, Proto::Udp, Role::StunAlt));
        }
    }
    v
}

impl Listeners {
    /// Bind every listener the config asks for ([`plan`]); the first that fails is reported with its key.
    pub fn bind(config: &Config) -> Result<Listeners, BindError> {
        let (mut http, mut metrics, mut tls) = (None, None, None);
        let (mut turns, mut turn_udp, mut turn_tcp, mut stun_alt) = (Vec::new(), Vec::new(), Vec::new(), None);
        let workers = udp_workers(config.turn.udp_workers);
        for p in plan(config) {
            let fail = |e| BindError::new(p.key.clone(), p.addr, e);
            if p.role == Role::StunAlt {
                stun_alt = Some(bind_udp(p.addr).map_err(fail)?);
                continue;
            }
            if p.proto == Proto::Udp {
                turn_udp.extend(bind_udp_group(p.addr, workers).map_err(fail)?);
                continue;
            }
            let tcp = bind_tcp(p.addr).map_err(fail)?;
            match p.role {
                Role::Http => http = Some(tcp),
                Role::Metrics => metrics = Some(tcp),
                Role::Tls => tls = Some(tcp),
                Role::Turns => turns.push(tcp),
                Role::Stun | Role::StunAlt => turn_tcp.push(tcp),
            }
        }
        let http = http.expect("the plan always holds http.listen");
        Ok(Listeners { http, metrics, tls, turns, turn_udp, turn_tcp, stun_alt })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().expect("bound socket has an address")
    }
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|l| l.local_addr().ok())
    }
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }
    /// One entry per `turn.listen_udp` address (the sockets of one SO_REUSEPORT group share it).
    pub fn turn_udp_addrs(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for a in self.turn_udp.iter().filter_map(|s| s.local_addr().ok()) {
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        addrs
    }
    pub fn turn_tcp_addrs(&self) -> Vec<SocketAddr> {
        self.turn_tcp.iter().filter_map(|s| s.local_addr().ok()).collect()
    }
}

fn new_socket(addr: SocketAddr, ty: Type, proto: Protocol) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // `[::]:port` serves IPv4 too, as people expect from a dual-stack wildcard.
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// A TCP listener with SO_REUSEADDR (a restart must not fail on TIME_WAIT) and a deep accept queue.
pub fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = new_socket(addr, Type::STREAM, Protocol::TCP)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// `turn.udp_workers` resolved: 0 means one per two CPUs (at least 1, at most 8).
///
/// Not one per CPU: the relay shares its CPUs with the kernel's receive work and everything else on the box, and
/// a worker that serves several clients' bursts in one batch sleeps (and is woken) far less often than two workers
/// that each wait for one client. On 2 CPUs, with two client threads unpinned, one worker relayed 1.23x the rate
/// of two at 0.7x the CPU per packet in two same-run A/Bs of 10 rounds (docs/benchmarks.md), and one worker still
/// relays ~350 000 packets/s, more than any home uplink carries.
pub fn udp_workers(configured: usize) -> usize {
    match configured {
        0 => (std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) / 2).clamp(1, 8),
        n => n,
    }
}

/// `n` UDP sockets on one address sharing it through SO_REUSEPORT (one plain socket when `n` is 1).
///
/// SO_REUSEPORT would also let a second ponte started by mistake join the group silently (the kernel only asks for
/// the same user) and steal half the clients; so the address is first bound once without it, which fails with
/// "address in use" exactly like a single socket would, and also resolves port 0.
pub fn bind_udp_group(addr: SocketAddr, n: usize) -> std::io::Result<Vec<UdpSocket>> {
    if n <= 1 {
        return Ok(vec![bind_udp(addr)?]);
    }
    // With port 0 the probe's port is free only until the probe is dropped: another process (a browser's ICE
    // socket with SO_REUSEADDR, seen in the test suite) can take it before the group binds, so pick another port
    // then. A configured port is never changed.
    let tries = if addr.port() == 0 { 5 } else { 1 };
    let mut attempt = 1;
    loop {
        match bind_udp_group_once(addr, n) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempt < tries => attempt += 1,
            result => return result,
        }
    }
}

fn bind_udp_group_once(addr: SocketAddr, n: usize) -> std::io::Result<Vec<UdpSocket>> {
    let probe = bind_udp(addr)?;
    let addr = probe.local_addr()?;
    drop(probe);
    (0..n)
        .map(|_| {
            let socket = new_socket(addr, Type::DGRAM, Protocol::UDP)?;
            socket.set_reuse_port(true)?;
            let _ = socket.set_recv_buffer_size(4 << 20);
            let _ = socket.set_send_buffer_size(4 << 20);
            socket.bind(&addr.into())?;
            Ok(socket.into())
        })
        .collect()
}

/// A UDP socket with large buffers: a busy STUN/TURN port drops packets with the default 208 KiB.
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = new_socket(addr, Type::DGRAM, Protocol::UDP)?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Where each listener actually listens (port 0 resolved), settled before any task starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addrs {
    pub http: SocketAddr,
    /// The shared HTTPS/WSS/TURNS port, when TLS is on.
    pub tls: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    /// One entry per `turn.listen_udp` address; empty when TURN is disabled.
    pub turn_udp: Vec<SocketAddr>,
    pub turn_tcp: Vec<SocketAddr>,
}

impl Listeners {
    pub fn addrs(&self) -> Addrs {
        Addrs {
            http: self.http_addr(),
            tls: self.tls_addr(),
            metrics: self.metrics_addr(),
            turn_udp: self.turn_udp_addrs(),
            turn_tcp: self.turn_tcp_addrs(),
        }
    }
}
