//! Embedded STUN/TURN server (RFC 8489 / RFC 8656): wiring of the sans-IO [`core`] to its I/O shells (UDP, TCP, relay sockets), address resolution and metrics.
//!
//! Layout: [`codec`] (wire helpers), [`policy`] (peer policy), [`auth`] (credentials, nonces), [`core`]
//! (the state machine), and the thin shells [`udp`], [`tcp`], [`relay`] that own sockets and carry out the
//! core's [`Action`](core::Action)s.

pub mod auth;
pub mod client;
pub mod codec;
pub mod core;
pub mod mmsg;
pub mod policy;
pub(crate) mod relay;
pub mod selftest;

/// The hash maps of the data path, keyed with aHash instead of std's SipHash: every relayed datagram looks up its
/// allocation, permission, channel and relay socket, and SipHash was ~40 % of the relay's user-space instructions
/// (callgrind, docs/benchmarks.md). aHash's keys are random per process, so clients who choose their addresses and
/// ports still cannot aim for collisions.
mod fast {
    pub type FastMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
    pub type FastDashMap<K, V> = dashmap::DashMap<K, V, ahash::RandomState>;
}
pub(crate) mod stun_alt;
pub(crate) mod tcp;
pub(crate) mod udp;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::Interest;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::core::{Action, Core, CoreConfig, FiveTuple, Transport, MAX_TICK};
pub(crate) use self::fast::{FastDashMap, FastMap};
use crate::config::{Secret, TurnConfig};
use crate::health::{Component, Health, Status};
use crate::live::LiveConfig;
use crate::metrics::Metrics;

pub use self::core::CountersSnapshot;

/// State shared by every shell task: the core plus the socket registries the actions refer to.
pub(crate) struct Shell {
    pub core: Core,
    /// Our UDP listening sockets by local address (responses and relayed data to UDP clients leave from the
    /// address the client talked to).
    pub udp: FastMap<SocketAddr, Arc<UdpSocket>>,
    /// Send queues of live TCP and TLS client connections.
    pub streams: FastDashMap<FiveTuple, tcp::StreamTx>,
    /// Open TCP/TLS client connections per source ([`core::source_of`](self::core::source_of)), for `turn.max_tcp_connections_per_ip`.
    /// An entry is removed when its count drops to zero.
    pub tcp_per_source: parking_lot::Mutex<FastMap<IpAddr, usize>>,
    /// Relay sockets by local address.
    pub relays: FastDashMap<SocketAddr, relay::Relay>,
    /// Ports held for RESERVATION-TOKENs (bound, not yet relaying).
    pub reserved: FastDashMap<SocketAddr, UdpSocket>,
    /// Free ports of the relay range.
    pub ports: relay::PortPool,
    pub shutdown: CancellationToken,
    /// The data-path threads' pollers ([`udp::run`]): where relay sockets are registered.
    pub pollers: Vec<relay::Poller>,
}

/// Which of our sockets a batched datagram leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// The relay socket bound at this address (client → peer).
    Relay(SocketAddr),
    /// The UDP listener at this address (peer → client).
    Listener(SocketAddr),
}

/// Datagrams held back during one receive batch so that they leave together, one `sendmmsg` per socket, after
/// the batch ([`Shell::flush`]) instead of one system call each. Relayed bytes stay in the receive slots.
#[derive(Default)]
pub(crate) struct Batch {
    /// The UDP listener whose receive batch this is: answers to its own clients join the batch.
    pub listener: Option<SocketAddr>,
    /// The receive slot of the packet being handled (the ranges of `ToPeer`/`FromPeer` refer to it).
    pub slot: usize,
    /// Relayed datagrams: (socket, destination, receive slot, range in that slot), in arrival order.
    pub relayed: Vec<(Via, SocketAddr, usize, Range<usize>)>,
    /// Answers to clients of `listener`.
    pub answers: Vec<(SocketAddr, Vec<u8>)>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.relayed.is_empty() && self.answers.is_empty()
    }
}

impl Shell {
    /// The one place the core's actions are carried out. `pkt` is the buffer the `ToPeer`/`FromPeer` ranges
    /// refer to. With a `batch`, UDP datagrams are queued in it for [`Shell::flush`]; without one they leave at
    /// once. Returns the last [`Action::Timeout`] seen (the tick task sleeps until then).
    pub fn execute(
        self: &Arc<Self>,
        pkt: &[u8],
        actions: &mut Vec<Action>,
        mut batch: Option<&mut Batch>,
    ) -> Option<Instant> {
        let mut timeout = None;
        // OpenRelay produces further actions (the Allocate answer), so drain in a loop.
        while !actions.is_empty() {
            let mut more = Vec::new();
            for a in actions.drain(..) {
                match a {
                    Action::ToPeer { relay, peer, data } => match batch.as_deref_mut() {
                        Some(b) => b.relayed.push((Via::Relay(relay), peer, b.slot, data)),
                        None => {
                            let sock = self.relays.get(&relay).map(|r| r.socket.clone());
                            if let Some(s) = sock {
                                send_udp(&s, 1, |_| (peer, &pkt[data.clone()]));
                            }
                        }
                    },
                    Action::FromPeer { to, data } => match (to.transport, batch.as_deref_mut()) {
                        (Transport::Udp, Some(b)) => {
                            b.relayed.push((Via::Listener(to.server), to.client, b.slot, data))
                        }
                        _ => self.to_client(to, &pkt[data]),
                    },
                    Action::ToClient { to, data } => match batch.as_deref_mut() {
                        Some(b) if to.transport == Transport::Udp && b.listener == Some(to.server) => {
                            b.answers.push((to.client, data))
                        }
                        _ => self.to_client(to, &data),
                    },
                    Action::OpenRelay(req) => {
                        let bound = relay::open(self, &req);
                        self.core.relay_opened(req, bound, Instant::now(), &mut more);
                    }
                    Action::CloseRelay { relay } => {
                        let mut held = false;
                        if let Some((_, r)) = self.relays.remove(&relay) {
                            r.stop(self);
                            held = true;
                        }
                        held |= self.reserved.remove(&relay).is_some();
                        if held {
                            self.ports.give_back(relay);
                        }
                    }
                    Action::Timeout(at) => timeout = Some(at),
                }
            }
            // Appended rather than assigned: `actions` keeps its capacity (the data-path threads reuse one vector
            // for every packet; assigning `more` here cost an allocation per packet), and `more` allocates only
            // when an OpenRelay produced something.
            actions.append(&mut more);
        }
        timeout
    }

    /// Send what `batch` holds: the answers from its listener, the relayed datagrams one `sendmmsg` per socket in
    /// arrival order. `slot(i)` is receive slot `i`, the buffer the ranges refer to.
    pub fn flush<'a>(&self, batch: &mut Batch, slot: impl Fn(usize) -> &'a [u8]) {
        if batch.is_empty() {
            return;
        }
        if let Some(s) = batch.listener.and_then(|l| self.udp.get(&l)) {
            let answers = &batch.answers;
            send_udp(s, answers.len(), |k| (answers[k].0, &answers[k].1[..]));
        }
        batch.answers.clear();
        let mut group: Vec<(SocketAddr, &'a [u8])> = Vec::with_capacity(batch.relayed.len());
        while let Some(&(via, ..)) = batch.relayed.first() {
            group.clear();
            batch.relayed.retain(|(v, to, i, r)| {
                if *v != via {
                    return true;
                }
                if let Some(bytes) = slot(*i).get(r.clone()) {
                    group.push((*to, bytes));
                }
                false
            });
            let sock = match via {
                Via::Relay(a) => self.relays.get(&a).map(|r| r.socket.clone()),
                Via::Listener(a) => self.udp.get(&a).cloned(),
            };
            if let Some(s) = sock {
                send_udp(&s, group.len(), |k| group[k]);
            }
        }
    }

    pub fn to_client(&self, to: FiveTuple, data: &[u8]) {
        match to.transport {
            Transport::Udp => {
                if let Some(s) = self.udp.get(&to.server) {
                    send_udp(s, 1, |_| (to.client, data));
                }
            }
            Transport::Tcp => {
                let tx = self.streams.get(&to).map(|t| t.clone());
                // A full queue means the client does not read: drop rather than stall the relay or buffer more.
                if tx.is_some_and(|tx| !tx.send(data)) {
                    self.core.count_dropped();
                }
            }
        }
    }
}

/// How long a full socket send buffer may hold up a task before the rest of what it was sending is dropped: a
/// stalled listener or relay task is worse than lost UDP datagrams, which clients retransmit or tolerate.
pub(crate) const SEND_STALL: Duration = Duration::from_millis(100);

/// The data path's one way to send UDP: datagrams `item(0..n)` (destination, bytes) from `sock`, as many per
/// `sendmmsg` as fit, runs to one destination as one UDP GSO message ([`mmsg::send_segmented`]). Never waits in the common case. When the socket buffer is full, a data-path thread waits for
/// room (backpressure on that thread's sockets) at most [`SEND_STALL`] in all, then drops the rest; any other
/// caller (a TCP/TLS client's task, the tick task, on the async runtime) drops at once rather than block a runtime
/// worker: UDP may lose datagrams, and clients retransmit or tolerate it. A datagram the kernel refuses on its own
/// (e.g. an unreachable destination) is skipped.
pub(crate) fn send_udp<'a>(sock: &UdpSocket, n: usize, item: impl Fn(usize) -> (SocketAddr, &'a [u8])) {
    let mut deadline = None;
    let mut sent = 0;
    while sent < n {
        let from = sent;
        match mmsg::send_segmented(sock.as_raw_fd(), n - from, |k| item(from + k)) {
            Ok(k) => sent += k.max(1),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let now = Instant::now();
                let until = *deadline.get_or_insert(now + SEND_STALL);
                if !relay::on_data_thread() || now >= until {
                    tracing::debug!("UDP send buffer full: dropping {} datagrams", n - sent);
                    return;
                }
                let ms = (until - now).as_millis().clamp(1, i32::MAX as u128) as i32;
                let mut p = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
                // SAFETY: one valid pollfd for the duration of the call.
                unsafe { libc::poll(&mut p, 1, ms) };
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::trace!("UDP send to {} failed: {e}", item(sent).0);
                sent += 1;
            }
        }
    }
}

/// The same on a runtime socket, for async shells (`turn.stun_alt_listen`): datagrams `item(0..n)` from `sock`, as
/// many per `sendmmsg` as fit. Never waits in the common case; when the socket buffer is full, waits for room (backpressure
/// on this one task) at most [`SEND_STALL`] in all, then drops the rest. A datagram the kernel refuses on its own
/// (e.g. an unreachable destination) is skipped.
pub(crate) async fn send_datagrams<'a>(
    sock: &tokio::net::UdpSocket,
    n: usize,
    item: impl Fn(usize) -> (SocketAddr, &'a [u8]),
) {
    let deadline = tokio::time::Instant::now() + SEND_STALL;
    let mut sent = 0;
    while sent < n {
        let from = sent;
        match sock.try_io(Interest::WRITABLE, || mmsg::send_segmented(sock.as_raw_fd(), n - from, |k| item(from + k))) {
            Ok(k) => sent += k.max(1),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if tokio::time::timeout_at(deadline, sock.writable()).await.is_err() {
                    tracing::debug!("UDP send buffer full for {SEND_STALL:?}: dropping {} datagrams", n - sent);
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::trace!("UDP send to {} failed: {e}", item(sent).0);
                sent += 1;
            }
        }
    }
}

/// The local addresses relay sockets bind on (one per family): `turn.relay_ip`, else the specific addresses
/// of the UDP listeners, else the primary interface address, else 127.0.0.1 (with a loud warning).
pub fn relay_ips(cfg: &TurnConfig, listen: &[SocketAddr]) -> Vec<IpAddr> {
    // Configured addresses win for every family: a host that names its IPv4 relay names its IPv6 one too
    // (`turn.relay_ip6`), rather than getting one guessed from a listener it may not route through.
    let configured = cfg.relay_ips_configured();
    if !configured.is_empty() {
        return configured;
    }
    let mut out: Vec<IpAddr> = Vec::new();
    for a in listen.iter().map(|a| policy::canonical(a.ip())) {
        if !a.is_unspecified() && !out.iter().any(|o| o.is_ipv4() == a.is_ipv4()) {
            out.push(a);
        }
    }
    if out.is_empty() {
        if let Some(ip) = primary_ip("198.51.100.1:9") {
            out.push(ip);
        }
        if listen.iter().any(|a| a.is_ipv6()) {
            if let Some(ip) = primary_ip("[2001:db8::1]:9") {
                out.push(ip);
            }
        }
    }
    if out.is_empty() {
        tracing::warn!(
            "TURN: cannot find this host's primary address; relay sockets bind on 127.0.0.1 and relaying will only work \
             on this machine. Set turn.relay_ip to the LAN/public address of this host."
        );
        out.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    out
}

/// The address the routing table would use to reach `probe`: UDP `connect` sends no packet.
fn primary_ip(probe: &str) -> Option<IpAddr> {
    let probe: SocketAddr = probe.parse().ok()?;
    let bind: SocketAddr = if probe.is_ipv4() { "0.0.0.0:0".parse().ok()? } else { "[::]:0".parse().ok()? };
    let s = UdpSocket::bind(bind).ok()?;
    s.connect(probe).ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// The public address clients reach relays on: `turn.external_ip`, else the (first) relay address. The
/// signaling side uses the same host in the `turn:` URLs it hands out.
pub fn public_ip(cfg: &TurnConfig, listen: &[SocketAddr]) -> IpAddr {
    let relays = relay_ips(cfg, listen);
    cfg.external_for(relays[0].is_ipv6()).or(cfg.external_ip).unwrap_or(relays[0])
}

/// The ports a router must forward for TURN, from the addresses really bound (`listen`: the UDP sockets
/// first, `udp_count` of them, then the TCP listeners), e.g. "UDP 18478 and 49152-65535, TCP 18478". Log
/// lines must name the configured ports, not the IANA default.
fn forward_phrase(listen: &[SocketAddr], udp_count: usize, min: u16, max: u16) -> String {
    let ports = |it: &mut dyn Iterator<Item = &SocketAddr>| {
        let mut v: Vec<u16> = it.map(|a| a.port()).collect();
        v.sort_unstable();
        v.dedup();
        v.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
    };
    let udp = ports(&mut listen[..udp_count.min(listen.len())].iter());
    let tcp = ports(&mut listen[udp_count.min(listen.len())..].iter());
    let mut out = if udp.is_empty() { format!("UDP {min}-{max}") } else { format!("UDP {udp} and {min}-{max}") };
    if !tcp.is_empty() {
        out.push_str(&format!(", TCP {tcp}"));
    }
    out
}

/// A LAN, loopback, link-local or carrier-grade NAT address: one a client outside cannot reach.
fn is_private(ip: IpAddr) -> bool {
    use crate::addr::AddressClass::*;
    matches!(crate::addr::classify(ip), Private | Loopback | LinkLocal | Cgnat)
}

/// Every address of this host's interfaces (for the "never relay to ourselves" rule).
pub(crate) fn interface_ips() -> Vec<IpAddr> {
    let mut out = Vec::new();
    // SAFETY: getifaddrs fills a linked list we only read and then free with freeifaddrs.
    unsafe {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut p = head;
        while !p.is_null() {
            let sa = (*p).ifa_addr;
            if !sa.is_null() {
                match (*sa).sa_family as i32 {
                    libc::AF_INET => {
                        let a = &*(sa as *const libc::sockaddr_in);
                        out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))));
                    }
                    libc::AF_INET6 => {
                        let a = &*(sa as *const libc::sockaddr_in6);
                        out.push(IpAddr::V6(std::net::Ipv6Addr::from(a.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}

/// Exposes the core's counters at `/metrics`.
/// The core's counters plus, at scrape time, the permissions and channels installed.
struct TurnMetrics(std::sync::Weak<Shell>);

impl crate::metrics::Source for TurnMetrics {
    fn collect(&self, out: &mut Vec<crate::metrics::Sample>) {
        use crate::metrics::Sample;
        let Some(shell) = self.0.upgrade() else { return };
        let s = shell.core.counters().snapshot();
        let (perms, chans) = shell.core.permission_and_channel_counts();
        out.push(Sample::gauge("turn_permissions", "Current TURN permissions", perms));
        out.push(Sample::gauge("turn_channels", "Current TURN channel bindings", chans));
        out.push(Sample::gauge("turn_allocations", "Current TURN allocations", s.allocations_active));
        out.push(Sample::counter("turn_allocations_created", "TURN allocations created", s.allocations_created));
        out.push(Sample::counter("stun_binding_requests", "STUN Binding requests answered", s.binding_requests));
        out.push(
            Sample::counter("turn_relayed_packets", "Packets relayed", s.packets_client_to_peer)
                .label("direction", "client_to_peer"),
        );
        out.push(
            Sample::counter("turn_relayed_packets", "Packets relayed", s.packets_peer_to_client)
                .label("direction", "peer_to_client"),
        );
        out.push(
            Sample::counter("turn_relayed_bytes", "Payload bytes relayed", s.bytes_client_to_peer)
                .label("direction", "client_to_peer"),
        );
        out.push(
            Sample::counter("turn_relayed_bytes", "Payload bytes relayed", s.bytes_peer_to_client)
                .label("direction", "peer_to_client"),
        );
        out.push(Sample::counter(
            "turn_auth_challenges",
            "401 challenges to requests without credentials",
            s.auth_challenges,
        ));
        out.push(Sample::counter(
            "turn_auth_failures",
            "Requests with wrong, unknown or expired credentials",
            s.auth_failures,
        ));
        out.push(Sample::counter(
            "turn_challenges_rate_limited",
            "Unsigned answers (Binding, 401/438, 400) suppressed by the per-source budget",
            s.challenges_rate_limited,
        ));
        out.push(Sample::counter("turn_denied_peers", "Peers refused by the peer policy", s.denied_peers));
        out.push(Sample::counter("turn_quota_rejections", "Requests refused by a quota", s.quota_rejections));
        out.push(Sample::counter(
            "turn_dropped_packets",
            "Packets dropped (garbage, no permission, bandwidth cap)",
            s.dropped_packets,
        ));
    }
}

/// What the TURN server needs from the daemon, and nothing more.
pub struct Deps {
    /// `[turn]` as the daemon started (listeners, relay range, realm and secrets are fixed for the process).
    pub config: TurnConfig,
    /// The running config: the peer policy follows reloads.
    pub live: LiveConfig,
    /// Every secret TURN REST usernames are checked against, the minting one first.
    pub secrets: Vec<Secret>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    /// `[cluster]`: the other nodes' relay addresses, as the cluster task learns them (see
    /// `Core::set_cluster_peers`); `None` on a single node.
    pub cluster_peers: Option<tokio::sync::watch::Receiver<Vec<policy::ClusterRelay>>>,
    /// TURN-over-TLS connections accepted and decrypted by the TLS listeners (src/tls.rs).
    pub tls_streams: Option<tokio::sync::mpsc::Receiver<TlsConn>>,
}

/// The bound sockets STUN/TURN serves on (from `Listeners::bind`).
pub struct Sockets {
    /// `turn.listen_udp` (several per address with `turn.udp_workers`).
    pub udp: Vec<UdpSocket>,
    /// `turn.listen_tcp`.
    pub tcp: Vec<TcpListener>,
    /// `turn.stun_alt_listen`: STUN Binding only.
    pub stun_alt: Option<UdpSocket>,
}

/// Any byte stream a TURN client can speak over (TCP framing): here the decrypted TLS streams.
pub trait ByteStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> ByteStream for T {}

/// A decrypted TURN-over-TLS connection with its client and local addresses.
pub struct TlsConn {
    pub stream: Box<dyn ByteStream>,
    pub client: SocketAddr,
    pub local: SocketAddr,
}

/// Held by the task that waits for data-path thread `.1`: when it is dropped (shutdown, or the runtime going away
/// with the task still pending) the thread is told to stop.
struct StopOnDrop(Arc<Shell>, usize);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.shutdown.cancel();
        self.0.pollers[self.1].wake();
    }
}

/// Serve STUN/TURN on the given (bound, non-blocking) sockets until `shutdown`. Sets health Turn → Ok once
/// listening; returns `Err` if a listener fails. Relay sockets are closed on return.
pub async fn serve(mut deps: Deps, sockets: Sockets, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Sockets { udp, tcp, stun_alt } = sockets;
    let cfg = &deps.config;
    let listen: Vec<SocketAddr> =
        udp.iter().filter_map(|s| s.local_addr().ok()).chain(tcp.iter().filter_map(|s| s.local_addr().ok())).collect();
    let udp_count = udp.len();
    let relay_ips = relay_ips(cfg, &listen);
    for ip in &relay_ips {
        if is_private(*ip) && cfg.external_for(ip.is_ipv6()).is_none() {
            let key = if ip.is_ipv6() { "turn.external_ip6" } else { "turn.external_ip" };
            tracing::warn!(
                "TURN relay address {ip} is private and {key} is not set: clients outside this network \
                 cannot reach the relay. Behind a router, forward {} to this host and set {key} to the \
                 public address.",
                forward_phrase(&listen, udp_count, cfg.relay_port_min, cfg.relay_port_max)
            );
        }
    }
    let mut own: Vec<IpAddr> = relay_ips.clone();
    own.extend(listen.iter().map(|a| a.ip()));
    own.extend(cfg.external_ips());
    // Every interface address, whatever the listeners: a host with a LAN and a WAN address that listens on
    // one of them must still refuse peers at the other (an allow_peers network may contain it; docs/turn.md).
    own.extend(interface_ips());
    let core = Core::new(
        CoreConfig { turn: cfg.clone(), secrets: deps.secrets.clone(), relay_ips: relay_ips.clone(), own_ips: own },
        Instant::now(),
        crate::credentials::unix_now(),
    );

    let mut udp_socks = Vec::new();
    let mut udp_map = FastMap::default();
    for s in udp {
        let addr = s.local_addr()?;
        s.set_nonblocking(true)?;
        let s = Arc::new(s);
        // Several sockets share an address under SO_REUSEPORT (`turn.udp_workers`); answers and relayed data may
        // leave through any of them, since the source address is the same.
        udp_map.entry(addr).or_insert_with(|| s.clone());
        udp_socks.push(s);
    }
    // One data-path thread per UDP listener socket, at least one (a TCP-only server still has relay sockets).
    let polls: Vec<mio::Poll> =
        (0..udp_socks.len().max(1)).map(|_| mio::Poll::new()).collect::<std::io::Result<_>>()?;
    let pollers =
        polls.iter().enumerate().map(|(i, p)| relay::Poller::new(p, i)).collect::<std::io::Result<Vec<_>>>()?;
    let shell = Arc::new(Shell {
        core,
        udp: udp_map,
        streams: FastDashMap::default(),
        tcp_per_source: parking_lot::Mutex::new(FastMap::default()),
        relays: FastDashMap::default(),
        reserved: FastDashMap::default(),
        ports: relay::PortPool::new((cfg.relay_port_min, cfg.relay_port_max)),
        shutdown: shutdown.child_token(),
        pollers,
    });

    deps.metrics.register(Arc::new(TurnMetrics(Arc::downgrade(&shell))));
    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let mut listening = Vec::new();
    for s in &udp_socks {
        let l = format!("udp://{}", s.local_addr()?);
        if !listening.contains(&l) {
            listening.push(l);
        }
    }
    // The data path runs on its own threads, outside the async runtime (see udp.rs for why). Each reports its end
    // through a task here, so a failed listener fails `serve` as before; dropping that task (the runtime going
    // away) stops the thread too.
    let mut listeners = udp_socks.into_iter();
    for (index, poll) in polls.into_iter().enumerate() {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let (sh, listener) = (shell.clone(), listeners.next());
        std::thread::Builder::new().name(format!("ponte-udp-{index}")).spawn(move || {
            let _ = done_tx.send(udp::run(sh, index, poll, listener));
        })?;
        let stop = StopOnDrop(shell.clone(), index);
        tasks.spawn(async move {
            let _stop = stop;
            done_rx.await.unwrap_or(Ok(()))
        });
    }
    {
        // Threads block in epoll_wait: wake them to see the shutdown.
        let shell = shell.clone();
        tasks.spawn(async move {
            shell.shutdown.cancelled().await;
            shell.pollers.iter().for_each(relay::Poller::wake);
            Ok(())
        });
    }
    for l in tcp {
        let l = tokio::net::TcpListener::from_std(l)?;
        listening.push(format!("tcp://{}", l.local_addr()?));
        tasks.spawn(tcp::run(shell.clone(), l));
    }
    if let Some(s) = stun_alt {
        let s = tokio::net::UdpSocket::from_std(s)?;
        listening.push(format!("udp://{} (STUN Binding only, turn.stun_alt_listen)", s.local_addr()?));
        tasks.spawn(stun_alt::run(shell.clone(), s));
    }
    // Config reload (SIGHUP): the peer policy, quotas, per-source bounds, bandwidth cap, answer budget and
    // `software` follow the new `[turn]` section (see `Core::reload`); addresses and ports need a restart.
    {
        let (shell, mut rx) = (shell.clone(), deps.live.subscribe());
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = shell.shutdown.cancelled() => return Ok(()),
                    changed = rx.changed() => {
                        if changed.is_err() {
                            shell.shutdown.cancelled().await;
                            return Ok(());
                        }
                        let cfg = rx.borrow_and_update().clone();
                        shell.core.reload(&cfg.turn);
                    }
                }
            }
        });
    }
    // `[cluster]`: the other nodes' relay addresses join the peer policy as they come and go.
    if let Some(mut rx) = deps.cluster_peers.take() {
        let shell = shell.clone();
        tasks.spawn(async move {
            loop {
                let peers = rx.borrow_and_update().clone();
                shell.core.set_cluster_peers(peers);
                tokio::select! {
                    _ = shell.shutdown.cancelled() => return Ok(()),
                    changed = rx.changed() => if changed.is_err() {
                        shell.shutdown.cancelled().await;
                        return Ok(());
                    },
                }
            }
        });
    }
    // TURN over TLS: the TLS listeners (src/tls.rs) decrypt and hand the streams over; framing is TCP's.
    if let Some(mut rx) = deps.tls_streams.take() {
        let shell = shell.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = shell.shutdown.cancelled() => return Ok(()),
                    s = rx.recv() => match s {
                        Some(TlsConn { stream, client, local }) => {
                            let (rd, wr) = tokio::io::split(stream);
                            tokio::spawn(tcp::serve_stream(shell.clone(), rd, wr, client, local));
                        }
                        None => {
                            shell.shutdown.cancelled().await;
                            return Ok(());
                        }
                    },
                }
            }
        });
    }
    let advertised: Vec<String> =
        relay_ips.iter().map(|ip| shell.core.advertised(SocketAddr::new(*ip, 0)).ip().to_string()).collect();
    tracing::info!(
        "TURN relays bind on {} ports {}-{}, advertised as {}",
        relay_ips
            .iter()
            .map(|i| format!("{i} ({})", if i.is_ipv6() { "IPv6" } else { "IPv4" }))
            .collect::<Vec<_>>()
            .join(", "),
        cfg.relay_port_min,
        cfg.relay_port_max,
        advertised.join(", ")
    );
    {
        let shell = shell.clone();
        tasks.spawn(async move {
            // The core says when it next has work (Action::Timeout, at most a second away); a floor keeps many
            // staggered expiries from turning into a busy loop (each tick walks every allocation).
            const TICK_FLOOR: Duration = Duration::from_millis(100);
            let mut actions = Vec::new();
            let mut next = tokio::time::Instant::now() + MAX_TICK;
            loop {
                tokio::select! {
                    _ = shell.shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep_until(next) => {
                        let now = Instant::now();
                        shell.core.tick(now, &mut actions);
                        let at = shell.execute(&[], &mut actions, None).unwrap_or(now + MAX_TICK);
                        next = tokio::time::Instant::from_std(at.max(now + TICK_FLOOR));
                    }
                }
            }
        });
    }
    // Healthy before the "listening" lines: tests and operators take those lines to mean "ready".
    deps.health.set(Component::Turn, Status::Ok);
    for l in &listening {
        tracing::info!("STUN/TURN listening on {l}");
    }

    let result = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        Some(r) = tasks.join_next() => match r {
            // Listeners return Ok when they see the shutdown themselves, which can win this race.
            Ok(Ok(())) if shutdown.is_cancelled() => Ok(()),
            Ok(Ok(())) => Err(anyhow::anyhow!("a STUN/TURN listener stopped unexpectedly")),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("a STUN/TURN task panicked: {e}")),
        },
    };
    deps.health.set(Component::Turn, if result.is_ok() { Status::Stopping } else { Status::Failed });
    shell.shutdown.cancel();
    // Close every relay socket now rather than when the last task lets go of it.
    let keys: Vec<SocketAddr> = shell.relays.iter().map(|r| *r.key()).collect();
    for k in keys {
        if let Some((_, r)) = shell.relays.remove(&k) {
            r.stop(&shell);
        }
    }
    shell.reserved.clear();
    // Waiting for the tasks waits for the data-path threads, which drop their relay sockets as they end: the ports
    // are free when `serve` returns.
    let _ = tokio::time::timeout(Duration::from_secs(2), async { while tasks.join_next().await.is_some() {} }).await;
    tasks.abort_all();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_address_resolution_order() {
        let mut cfg = TurnConfig::default();
        let wildcard: Vec<SocketAddr> = vec!["0.0.0.0:3478".parse().unwrap()];
        let specific: Vec<SocketAddr> = vec!["192.0.2.7:3478".parse().unwrap(), "[2001:db8::7]:3478".parse().unwrap()];
        // A specific listener address is the relay address (one per family).
        assert_eq!(
            relay_ips(&cfg, &specific),
            vec!["192.0.2.7".parse::<IpAddr>().unwrap(), "2001:db8::7".parse().unwrap()]
        );
        // Wildcard: the primary interface address (or loopback as the last resort), never unspecified.
        let detected = relay_ips(&cfg, &wildcard);
        assert_eq!(detected.len(), 1);
        assert!(!detected[0].is_unspecified() && detected[0].is_ipv4());
        // turn.relay_ip wins over everything.
        cfg.relay_ip = Some("10.0.0.5".parse().unwrap());
        assert_eq!(relay_ips(&cfg, &specific), vec!["10.0.0.5".parse::<IpAddr>().unwrap()]);
        // The advertised host is turn.external_ip when set.
        assert_eq!(public_ip(&cfg, &specific), "10.0.0.5".parse::<IpAddr>().unwrap());
        cfg.external_ip = Some("203.0.113.9".parse().unwrap());
        assert_eq!(public_ip(&cfg, &specific), "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn private_relay_addresses_are_recognised_for_the_warning() {
        for ip in [
            "10.0.0.1",
            "192.168.1.2",
            "172.20.0.1",
            "127.0.0.1",
            "100.64.1.1",
            "169.254.1.1",
            "fd00::1",
            "fe80::1",
            "::1",
            "::ffff:192.168.1.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["198.51.100.10", "8.8.8.8", "2001:db8::1", "100.128.0.1"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn forward_advice_names_the_configured_ports() {
        let listen: Vec<SocketAddr> = vec!["127.0.0.1:18478".parse().unwrap(), "127.0.0.1:18479".parse().unwrap()];
        let s = forward_phrase(&listen, 1, 50000, 50100);
        assert_eq!(s, "UDP 18478 and 50000-50100, TCP 18479");
        assert!(!s.contains("3478"));
        let both: Vec<SocketAddr> = vec!["0.0.0.0:3478".parse().unwrap(), "[::]:3478".parse().unwrap()];
        assert_eq!(forward_phrase(&both, 2, 49152, 65535), "UDP 3478 and 49152-65535");
    }

    #[test]
    fn interface_addresses_include_loopback() {
        assert!(interface_ips().contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }
}
