//! Sans-IO STUN/TURN state machine (RFC 8489 Binding, RFC 8656 allocations): bytes + 5-tuple + time in, actions out; owns allocations, permissions, channels, quotas and counters.
//!
//! No sockets and no clock here: the I/O shells feed packets with `now` and carry out the returned
//! [`Action`]s, so every method, error path and timer is unit-tested by calling functions.
//!
//! Concurrency: the core is shared (`&self`) by every listener and relay task. Allocations live in sharded
//! `DashMap`s and each allocation's small mutable state sits behind its own `parking_lot` mutex, so the relay
//! hot paths take one shard read-lock and one uncontended sync lock — never an async lock — and allocate
//! nothing (payloads are referenced by range, headers are written into the caller's headroom).

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use stun::attributes::AttrType;
use stun::message::{Message, Setter};

use super::auth::{self, Auth, Integrity, KeyError, NonceCheck};
use super::codec::{self, *};
use super::policy::{self, Denied, PeerPolicy};
use super::{FastDashMap, FastMap};
use crate::config::{Secret, TurnConfig};

pub const DEFAULT_ALLOCATION_LIFETIME: Duration = Duration::from_secs(600);
pub const MAX_ALLOCATION_LIFETIME: Duration = Duration::from_secs(3600);
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// How long a response is kept for retransmissions of the same transaction (RFC 8489 §6.3.1: 40 s covers
/// every client retransmission schedule).
const RESPONSE_CACHE_TTL: Duration = Duration::from_secs(40);
/// How long a port reserved by EVEN-PORT (R=1) waits for the Allocate with its RESERVATION-TOKEN
/// (RFC 8656 §7.2 suggests about 30 s).
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);
/// Upper bound on cached responses; past it we stop caching (retransmissions are then re-processed, which is
/// still correct for everything except the Allocate/Refresh-0 corner cases) rather than grow.
const RESPONSE_CACHE_MAX: usize = 65_536;
/// Cached responses per source: far more than one client's transactions in flight over 40 s (a browser sends a
/// few requests per allocation per minute), far less than the whole cache.
const RESPONSE_CACHE_PER_SOURCE: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The client side of an allocation: who sent it, to which of our listening addresses, over what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub transport: Transport,
}

/// The core's one output type: everything it asks of the I/O shell, from every input method
/// ([`Core::handle`], [`Core::from_peer`], [`Core::relay_opened`], [`Core::tick`], [`Core::client_closed`]).
/// Inputs append to a caller-owned `Vec<Action>`, so the hot paths allocate nothing per packet.
#[derive(Debug)]
pub enum Action {
    /// Send a STUN message to a client.
    ToClient { to: FiveTuple, data: Vec<u8> },
    /// Send `input[data]` (a range of the packet passed to `handle`) from relay socket `relay` to `peer`.
    ToPeer { relay: SocketAddr, peer: SocketAddr, data: Range<usize> },
    /// Send `buf[data]` (a peer datagram passed to [`Core::from_peer`], now wrapped in place as ChannelData or a
    /// Data indication) to client `to`.
    FromPeer { to: FiveTuple, data: Range<usize> },
    /// Bind a relay socket for this request and report back with [`Core::relay_opened`].
    OpenRelay(RelayRequest),
    /// Close the relay socket bound at `relay` (allocation deleted or expired).
    CloseRelay { relay: SocketAddr },
    /// Call [`Core::tick`] again at (about) this moment: the next expiry, at most [`MAX_TICK`] away so that state
    /// created by other inputs meanwhile is looked at too. Emitted by every `tick`.
    Timeout(Instant),
}

/// The longest a shell may wait between two [`Core::tick`]s.
pub const MAX_TICK: Duration = Duration::from_secs(1);

/// An authenticated, admitted Allocate waiting for its relay socket.
#[derive(Debug)]
pub struct RelayRequest {
    pub tuple: FiveTuple,
    /// Local address to bind (port chosen by the shell within the configured range).
    pub ip: IpAddr,
    /// EVEN-PORT: the relayed port must be even.
    pub even_port: bool,
    /// EVEN-PORT with R=1: also bind the next port and hold it (the shell keeps it until the core says
    /// `CloseRelay` for it or an Allocate with the token claims it).
    pub reserve_next: bool,
    /// RESERVATION-TOKEN: use the socket the shell holds at this address instead of binding one.
    pub reserved: Option<SocketAddr>,
    /// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §7.2): once this relay is bound, the core asks for a second one at
    /// this address (the other family) with a follow-up [`Action::OpenRelay`].
    additional: Option<IpAddr>,
    /// In that follow-up: the relay already bound for the first family.
    first: Option<SocketAddr>,
    /// ADDRESS-ERROR-CODE for the success response: the family (1 = IPv4, 2 = IPv6) asked for but not
    /// allocated, and why (440: no relay address of that family; 508: no port).
    address_error: Option<(u8, u16)>,
    txid: [u8; 12],
    username: String,
    key: [u8; 16],
    integrity: Integrity,
    lifetime: Duration,
    fingerprint: bool,
}

/// Metrics-ready counters (plain atomics; the exporter reads them with [`Core::counters`]).
#[derive(Debug, Default)]
pub struct Counters {
    pub allocations_active: AtomicU64,
    pub allocations_created: AtomicU64,
    pub binding_requests: AtomicU64,
    pub packets_client_to_peer: AtomicU64,
    pub bytes_client_to_peer: AtomicU64,
    pub packets_peer_to_client: AtomicU64,
    pub bytes_peer_to_client: AtomicU64,
    /// 401 challenges sent to requests without credentials (the normal first round trip).
    pub auth_challenges: AtomicU64,
    /// Requests with wrong, unknown or expired credentials.
    pub auth_failures: AtomicU64,
    /// Unsigned answers (Binding, 401/438, 400) suppressed by `turn.unauthenticated_rate_per_ip`.
    pub challenges_rate_limited: AtomicU64,
    /// Peers refused by the peer policy (403).
    pub denied_peers: AtomicU64,
    /// Requests refused by a quota (486/508).
    pub quota_rejections: AtomicU64,
    /// Packets dropped: garbage, no permission/channel, bandwidth cap.
    pub dropped_packets: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountersSnapshot {
    pub allocations_active: u64,
    pub allocations_created: u64,
    pub binding_requests: u64,
    pub packets_client_to_peer: u64,
    pub bytes_client_to_peer: u64,
    pub packets_peer_to_client: u64,
    pub bytes_peer_to_client: u64,
    pub auth_challenges: u64,
    pub auth_failures: u64,
    pub challenges_rate_limited: u64,
    pub denied_peers: u64,
    pub quota_rejections: u64,
    pub dropped_packets: u64,
}

impl Counters {
    pub fn snapshot(&self) -> CountersSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CountersSnapshot {
            allocations_active: g(&self.allocations_active),
            allocations_created: g(&self.allocations_created),
            binding_requests: g(&self.binding_requests),
            packets_client_to_peer: g(&self.packets_client_to_peer),
            bytes_client_to_peer: g(&self.bytes_client_to_peer),
            packets_peer_to_client: g(&self.packets_peer_to_client),
            bytes_peer_to_client: g(&self.bytes_peer_to_client),
            auth_challenges: g(&self.auth_challenges),
            auth_failures: g(&self.auth_failures),
            challenges_rate_limited: g(&self.challenges_rate_limited),
            denied_peers: g(&self.denied_peers),
            quota_rejections: g(&self.quota_rejections),
            dropped_packets: g(&self.dropped_packets),
        }
    }
}

fn inc(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

pub use crate::addr::source_of;

/// The settings a config reload changes while the core runs ([`Core::reload`]); the rest of `TurnConfig`
/// (addresses, ports, realm, secrets) is fixed at start.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_allocations: usize,
    pub max_allocations_per_user: usize,
    /// Relay ports per source: `turn.max_allocations_per_ip`, and at most `turn.relay_port_share_per_ip_percent`
    /// of the relay range (at least one).
    pub max_ports_per_source: usize,
    pub max_permissions_per_allocation: usize,
    pub max_channels_per_allocation: usize,
    pub max_tcp_connections_per_source: usize,
    pub tcp_setup_timeout: Duration,
    pub software: Option<String>,
}

impl Limits {
    fn new(turn: &TurnConfig, relay_range: (u16, u16)) -> Limits {
        let range = (relay_range.1 as usize + 1).saturating_sub(relay_range.0 as usize);
        Limits {
            max_allocations: turn.max_allocations,
            max_allocations_per_user: turn.max_allocations_per_user,
            max_ports_per_source: turn
                .max_allocations_per_ip
                .min((range * turn.relay_port_share_per_ip_percent as usize / 100).max(1)),
            max_permissions_per_allocation: turn.max_permissions_per_allocation,
            max_channels_per_allocation: turn.max_channels_per_allocation,
            max_tcp_connections_per_source: turn.max_tcp_connections_per_ip,
            tcp_setup_timeout: Duration::from_secs(turn.tcp_setup_timeout_secs),
            software: turn.software.clone(),
        }
    }
}

/// Settings the core needs, settled by the shell at start (addresses resolved).
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub turn: TurnConfig,
    pub secrets: Vec<Secret>,
    /// Local relay addresses, at most one per family.
    pub relay_ips: Vec<IpAddr>,
    /// Every address of this server (listeners, relay, external) — denied as peers.
    pub own_ips: Vec<IpAddr>,
}

/// Token bucket in bytes for the optional per-allocation bandwidth cap (burst = one second's worth).
#[derive(Debug)]
struct Bucket {
    tokens: u64,
    last: Instant,
}

impl Bucket {
    fn take(&mut self, rate: u64, n: usize, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        let dt = now.saturating_duration_since(self.last);
        let refill = (rate as u128 * dt.as_nanos() / 1_000_000_000) as u64;
        if refill > 0 {
            self.tokens = (self.tokens + refill).min(rate);
            self.last = now;
        }
        if self.tokens >= n as u64 {
            self.tokens -= n as u64;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct AllocState {
    /// When the allocation ends: the latest expiry of its live relays.
    expires: Instant,
    /// Expiry of each relay (`[relay, relay2]`); `None`: never allocated, or deleted by a Refresh to 0 for its
    /// family (RFC 8656 §7.1: a dual allocation's families are refreshed and deleted one by one when the Refresh
    /// names a family, together when it does not).
    relay_expires: [Option<Instant>; 2],
    /// Keyed by canonical peer IP (permissions ignore the port, RFC 8656 §9).
    perms: FastMap<IpAddr, Instant>,
    channels: FastMap<u16, (SocketAddr, Instant)>,
    by_peer: FastMap<SocketAddr, u16>,
    up: Bucket,
    down: Bucket,
}

#[derive(Debug)]
struct Allocation {
    tuple: FiveTuple,
    relay: SocketAddr,
    /// The second relay of a dual allocation (ADDITIONAL-ADDRESS-FAMILY): the other family than `relay`.
    relay2: Option<SocketAddr>,
    username: String,
    /// [`source_of`] the client: whose per-source count this allocation's relay port is in.
    source: IpAddr,
    st: Mutex<AllocState>,
}

impl Allocation {
    /// The live relays with their index in [`AllocState::relay_expires`].
    fn live<'a>(&'a self, st: &'a AllocState) -> impl Iterator<Item = (usize, SocketAddr)> + 'a {
        [Some(self.relay), self.relay2]
            .into_iter()
            .enumerate()
            .filter_map(move |(i, r)| r.filter(|_| st.relay_expires[i].is_some()).map(|r| (i, r)))
    }

    /// The live relay that talks to peers of `peer`'s family (RFC 8656: a peer is reached from the relayed
    /// address of its own family), if the allocation has one.
    fn relay_for(&self, st: &AllocState, peer: IpAddr) -> Option<SocketAddr> {
        self.live(st).map(|(_, r)| r).find(|r| r.is_ipv4() == peer.is_ipv4())
    }
}

/// What quotas count. Entries are removed when they reach zero, so the maps hold only sources and users that
/// hold something (bounded by the allocations and reservations that exist).
#[derive(Debug, Default)]
struct Usage {
    total: usize,
    per_user: FastMap<String, usize>,
    /// Relay ports held per source (allocations and EVEN-PORT reservations).
    per_source: FastMap<IpAddr, usize>,
    /// Cached responses per source (the retransmission cache), so one source cannot fill it for everyone.
    cached_per_source: FastMap<IpAddr, usize>,
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut FastMap<K, usize>, key: &K, n: usize) {
    if let Some(c) = map.get_mut(key) {
        *c = c.saturating_sub(n);
        if *c == 0 {
            map.remove(key);
        }
    }
}

/// One STUN request on its way through the control path: what every method handler needs, in one bundle.
struct Req<'a> {
    /// The request as received (integrity is checked over these bytes).
    raw: &'a [u8],
    /// Decoded, with the attributes after MESSAGE-INTEGRITY already dropped (RFC 8489 §14.5).
    msg: Message,
    method: u16,
    txid: [u8; 12],
    from: FiveTuple,
    /// The request carried FINGERPRINT, so the answer does too.
    fingerprint: bool,
    now: Instant,
}

impl Req<'_> {
    fn error(&self, code: u16, reason: &str) -> Message {
        error_message(self.method, self.txid, code, reason)
    }
}

/// Who passed authentication, and how to sign the answer.
struct Authed {
    username: String,
    key: [u8; 16],
    integrity: Integrity,
}

/// The STUN/TURN engine.
pub struct Core {
    /// The configuration at start; only its restart-only keys are read (see [`Limits`] for the live ones).
    cfg: TurnConfig,
    /// Live settings, replaced by [`Core::reload`]; read on the control path only.
    limits: parking_lot::RwLock<Limits>,
    /// `turn.max_bandwidth_per_allocation`, live: read per relayed packet, so an atomic rather than a lock.
    bandwidth: AtomicU64,
    auth: Auth,
    /// Replaced as a whole when a config reload changes `allow_peers`/`deny_peers`; read only on requests
    /// that name a peer (CreatePermission, ChannelBind, Send), never on the ChannelData/Data hot path.
    policy: parking_lot::RwLock<PeerPolicy>,
    /// `turn.allow_peers` / `turn.deny_peers` as last set, and the other cluster nodes' relay addresses
    /// (`[cluster]`; empty on a single node): the policy is rebuilt from the three whenever one changes.
    peer_lists: parking_lot::Mutex<(Vec<ipnet::IpNet>, Vec<ipnet::IpNet>, Vec<policy::ClusterRelay>)>,
    own_ips: Vec<IpAddr>,
    relay_ips: Vec<IpAddr>,
    /// Our relay addresses as clients see them (local and external) → the local relay IP, for addresses the
    /// policy would refuse as "own". Peers there are reachable only at a live relay port: relay↔relay (both
    /// browsers relayed by this server) must work, the server's other services must not.
    relay_aliases: Vec<(IpAddr, IpAddr)>,
    allocs: FastDashMap<FiveTuple, Arc<Allocation>>,
    by_relay: FastDashMap<SocketAddr, Arc<Allocation>>,
    usage: Mutex<Usage>,
    responses: FastDashMap<(FiveTuple, [u8; 12]), (Instant, Vec<u8>)>,
    /// RESERVATION-TOKEN → (reserved local relay address, expiry, source holding it).
    reservations: FastDashMap<[u8; 8], (SocketAddr, Instant, IpAddr)>,
    counters: Arc<Counters>,
    start: Instant,
    start_unix: u64,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").field("allocations", &self.allocs.len()).finish()
    }
}

/// Attributes we understand in requests; any other comprehension-required one (< 0x8000) gets 420.
const KNOWN_ATTRS: &[u16] = &[
    ATTR_USERNAME,
    ATTR_MESSAGE_INTEGRITY,
    ATTR_ERROR_CODE,
    ATTR_UNKNOWN_ATTRIBUTES,
    ATTR_CHANNEL_NUMBER,
    ATTR_LIFETIME,
    ATTR_XOR_PEER_ADDRESS,
    ATTR_DATA,
    ATTR_REALM,
    ATTR_NONCE,
    ATTR_XOR_RELAYED_ADDRESS,
    ATTR_REQUESTED_ADDRESS_FAMILY,
    ATTR_EVEN_PORT,
    ATTR_REQUESTED_TRANSPORT,
    ATTR_MESSAGE_INTEGRITY_SHA256,
    ATTR_XOR_MAPPED_ADDRESS,
    ATTR_RESERVATION_TOKEN,
];

impl Core {
    /// `now`/`now_unix` anchor the monotonic clock the shells pass in to wall-clock time (REST expiry, nonces).
    pub fn new(cfg: CoreConfig, now: Instant, now_unix: u64) -> Core {
        let policy = PeerPolicy::new(&cfg.turn.allow_peers, &cfg.turn.deny_peers, &cfg.own_ips);
        let mut relay_aliases = Vec::new();
        for l in &cfg.relay_ips {
            relay_aliases.push((*l, *l));
            if let Some(e) = cfg.turn.external_for(l.is_ipv6()) {
                relay_aliases.push((policy::canonical(e), *l));
            }
        }
        relay_aliases.retain(|(a, _)| policy.check(*a) == Err(Denied::OwnAddress));
        Core {
            relay_aliases,
            limits: parking_lot::RwLock::new(Limits::new(
                &cfg.turn,
                (cfg.turn.relay_port_min, cfg.turn.relay_port_max),
            )),
            bandwidth: AtomicU64::new(cfg.turn.max_bandwidth_per_allocation),
            auth: Auth::new(&cfg.turn, &cfg.secrets),
            policy: parking_lot::RwLock::new(policy),
            peer_lists: parking_lot::Mutex::new((
                cfg.turn.allow_peers.clone(),
                cfg.turn.deny_peers.clone(),
                Vec::new(),
            )),
            own_ips: cfg.own_ips,
            relay_ips: cfg.relay_ips,
            cfg: cfg.turn,
            allocs: FastDashMap::default(),
            by_relay: FastDashMap::default(),
            usage: Mutex::new(Usage::default()),
            responses: FastDashMap::default(),
            reservations: FastDashMap::default(),
            counters: Arc::default(),
            start: now,
            start_unix: now_unix,
        }
    }

    /// Permissions and channels currently installed, over all allocations (read at scrape time, not on the hot path).
    pub fn permission_and_channel_counts(&self) -> (u64, u64) {
        let (mut perms, mut chans) = (0u64, 0u64);
        for a in self.allocs.iter() {
            let st = a.st.lock();
            perms += st.perms.len() as u64;
            chans += st.channels.len() as u64;
        }
        (perms, chans)
    }

    /// Apply new `turn.allow_peers`/`turn.deny_peers` (config reload). Existing permissions stay until they
    /// expire or are refreshed; refreshing re-checks the peer against the new policy.
    pub fn set_peer_lists(&self, allow: &[ipnet::IpNet], deny: &[ipnet::IpNet]) {
        let mut lists = self.peer_lists.lock();
        lists.0 = allow.to_vec();
        lists.1 = deny.to_vec();
        self.rebuild_policy(&lists);
    }

    /// The relay addresses and relay port ranges the other nodes of a cluster announce (`[cluster]`): relaying
    /// between allocations on different nodes needs them, and they may be addresses the built-in ranges refuse
    /// (a private network between the nodes, a lab). Each such address is allowed as that exact host and only at
    /// its node's relay ports (its other services stay out of reach); this node's own addresses stay refused.
    pub fn set_cluster_peers(&self, peers: Vec<policy::ClusterRelay>) {
        let mut lists = self.peer_lists.lock();
        if lists.2 == peers {
            return;
        }
        lists.2 = peers;
        self.rebuild_policy(&lists);
    }

    fn rebuild_policy(&self, (allow, deny, peers): &(Vec<ipnet::IpNet>, Vec<ipnet::IpNet>, Vec<policy::ClusterRelay>)) {
        *self.policy.write() = PeerPolicy::new(allow, deny, &self.own_ips).with_cluster(peers);
    }

    /// Apply a reloaded `[turn]` section: the peer lists, the quotas and per-source bounds, the bandwidth cap,
    /// the unsigned-answer budget and `software` take effect for the next request or packet. Allocations,
    /// permissions and channels that exist stay (a lowered quota refuses new ones only). Addresses, ports,
    /// realm and credentials are restart-only and ignored here.
    pub fn reload(&self, turn: &TurnConfig) {
        self.set_peer_lists(&turn.allow_peers, &turn.deny_peers);
        *self.limits.write() = Limits::new(turn, (self.cfg.relay_port_min, self.cfg.relay_port_max));
        self.bandwidth.store(turn.max_bandwidth_per_allocation, Ordering::Relaxed);
        self.auth.set_answer_rate(turn.unauthenticated_rate_per_ip);
    }

    /// The live settings now in effect.
    pub fn limits(&self) -> Limits {
        self.limits.read().clone()
    }

    /// `turn.tcp_setup_timeout_secs`, live (read per TCP read, so without cloning all of [`Limits`]).
    pub fn tcp_setup_timeout(&self) -> Duration {
        self.limits.read().tcp_setup_timeout
    }

    /// Whether the client at `tuple` has an allocation (TCP shells use the short setup timeout until it has).
    pub fn has_allocation(&self, tuple: &FiveTuple) -> bool {
        self.allocs.contains_key(tuple)
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    pub fn allocation_count(&self) -> usize {
        self.allocs.len()
    }

    fn unix(&self, now: Instant) -> u64 {
        self.start_unix + now.saturating_duration_since(self.start).as_secs()
    }

    /// The address clients are told for a relay socket bound at `local`: the external IP when configured
    /// (same family), else the local one.
    pub fn advertised(&self, local: SocketAddr) -> SocketAddr {
        match self.cfg.external_for(local.is_ipv6()) {
            Some(ip) => SocketAddr::new(ip, local.port()),
            None => local,
        }
    }

    /// Count a datagram the shell discarded before it reached [`Core::handle`] (truncated, unknown family).
    pub fn count_dropped(&self) {
        inc(&self.counters.dropped_packets);
    }

    /// Process one packet from a client (a UDP datagram or one TCP frame).
    pub fn handle(&self, pkt: &[u8], from: FiveTuple, now: Instant, out: &mut Vec<Action>) {
        match codec::classify(pkt) {
            Kind::ChannelData => self.channel_data(pkt, from, now, out),
            Kind::Stun => self.stun(pkt, from, now, out),
            Kind::Garbage => inc(&self.counters.dropped_packets),
        }
    }

    // ---------------------------------------------------------------- hot path: client → peer

    /// Where a client→peer datagram really goes: a peer at one of our relay aliases must be a live relay
    /// allocation (sent to its local address, no hairpin through the router), anything else as is.
    fn dest(&self, peer: SocketAddr) -> Option<SocketAddr> {
        for (alias, local) in &self.relay_aliases {
            if *alias == peer.ip() {
                let l = SocketAddr::new(*local, peer.port());
                return self.by_relay.contains_key(&l).then_some(l);
            }
        }
        Some(peer)
    }

    fn channel_data(&self, pkt: &[u8], from: FiveTuple, now: Instant, out: &mut Vec<Action>) {
        let Some((ch, data)) = codec::parse_channel_data(pkt) else {
            inc(&self.counters.dropped_packets);
            return;
        };
        let Some(a) = self.allocs.get(&from) else {
            inc(&self.counters.dropped_packets);
            return;
        };
        let mut st = a.st.lock();
        let peer = match st.channels.get(&ch) {
            Some((peer, exp)) if *exp > now => *peer,
            _ => {
                inc(&self.counters.dropped_packets);
                return;
            }
        };
        let permitted = st.perms.get(&peer.ip()).is_some_and(|e| *e > now);
        if !permitted || !st.up.take(self.bandwidth.load(Ordering::Relaxed), data.len(), now) {
            inc(&self.counters.dropped_packets);
            return;
        }
        let relay = a.relay_for(&st, peer.ip());
        drop(st);
        let (Some(peer), Some(relay)) = (self.dest(peer), relay) else {
            inc(&self.counters.dropped_packets);
            return;
        };
        self.counters.packets_client_to_peer.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes_client_to_peer.fetch_add(data.len() as u64, Ordering::Relaxed);
        out.push(Action::ToPeer { relay, peer, data });
    }

    /// Send indication (RFC 8656 §11.2): parsed with the zero-copy attribute walker, no allocation.
    fn send_indication(&self, pkt: &[u8], from: FiveTuple, now: Instant, out: &mut Vec<Action>) {
        let drop_it = || inc(&self.counters.dropped_packets);
        let Some(a) = self.allocs.get(&from) else { return drop_it() };
        let (mut peer, mut data) = (None, None);
        for attr in codec::attrs(pkt) {
            let Ok((t, r)) = attr else { return drop_it() };
            match t {
                ATTR_XOR_PEER_ADDRESS if peer.is_none() => {
                    peer = codec::decode_xor_addr(&pkt[r], &codec::transaction_id(pkt))
                }
                ATTR_DATA if data.is_none() => data = Some(r),
                _ => {}
            }
        }
        let (Some(peer), Some(data)) = (peer, data) else { return drop_it() };
        let peer = SocketAddr::new(policy::canonical(peer.ip()), peer.port());
        let mut st = a.st.lock();
        let Some(relay) = a.relay_for(&st, peer.ip()) else {
            drop(st);
            return drop_it();
        };
        // A permission exists only for peers that passed the policy when it was installed.
        let permitted = st.perms.get(&peer.ip()).is_some_and(|e| *e > now);
        if !permitted || !st.up.take(self.bandwidth.load(Ordering::Relaxed), data.len(), now) {
            return drop_it();
        }
        drop(st);
        // A permission covers every port of its address; another cluster node's is usable at its relay ports only.
        if self.policy.read().cluster_port_refused(peer) {
            return drop_it();
        }
        let Some(peer) = self.dest(peer) else {
            inc(&self.counters.dropped_packets);
            return;
        };
        self.counters.packets_client_to_peer.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes_client_to_peer.fetch_add(data.len() as u64, Ordering::Relaxed);
        out.push(Action::ToPeer { relay, peer, data });
    }

    // ---------------------------------------------------------------- hot path: peer → client

    /// A datagram arrived on relay socket `relay` from `peer`. The payload is `buf[HEADROOM..HEADROOM+len]`
    /// and `buf` has [`TAILROOM`] bytes after it. Emits [`Action::FromPeer`] with the frame's range in `buf` (the
    /// ChannelData or Data-indication header is written in place), or nothing to drop it (no permission).
    pub fn from_peer(
        &self,
        relay: SocketAddr,
        peer: SocketAddr,
        buf: &mut [u8],
        len: usize,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if let Some((to, data)) = self.wrap_for_client(relay, peer, buf, len, now) {
            out.push(Action::FromPeer { to, data });
        }
    }

    fn wrap_for_client(
        &self,
        relay: SocketAddr,
        peer: SocketAddr,
        buf: &mut [u8],
        len: usize,
        now: Instant,
    ) -> Option<(FiveTuple, Range<usize>)> {
        let mut peer = SocketAddr::new(policy::canonical(peer.ip()), peer.port());
        if self.relay_aliases.iter().any(|(_, l)| *l == peer.ip()) {
            // From our own relay address: only another live relay allocation may talk (not some other local
            // process), and the client knows that relay by its advertised address. Checked before taking
            // the `by_relay` guard below: a second lookup while holding it could deadlock on its shard.
            if !self.by_relay.contains_key(&peer) {
                inc(&self.counters.dropped_packets);
                return None;
            }
            if let Some(ext) = self.cfg.external_for(peer.is_ipv6()) {
                peer.set_ip(policy::canonical(ext));
            }
        }
        let a = self.by_relay.get(&relay)?;
        let mut st = a.st.lock();
        let permitted = st.perms.get(&peer.ip()).is_some_and(|e| *e > now);
        if !permitted || !st.down.take(self.bandwidth.load(Ordering::Relaxed), len, now) {
            drop(st);
            inc(&self.counters.dropped_packets);
            return None;
        }
        let ch = st.by_peer.get(&peer).copied().filter(|c| st.channels.get(c).is_some_and(|(_, e)| *e > now));
        drop(st);
        let tuple = a.tuple;
        let range = match ch {
            Some(c) => codec::wrap_channel_data(buf, HEADROOM, len, c, tuple.transport == Transport::Tcp),
            None => codec::wrap_data_indication(buf, HEADROOM, len, peer, &rand::random()),
        };
        self.counters.packets_peer_to_client.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes_peer_to_client.fetch_add(len as u64, Ordering::Relaxed);
        Some((tuple, range))
    }

    // ---------------------------------------------------------------- STUN control path

    fn stun(&self, pkt: &[u8], from: FiveTuple, now: Instant, out: &mut Vec<Action>) {
        let len = u16::from_be_bytes([pkt[2], pkt[3]]) as usize;
        if len % 4 != 0 || STUN_HEADER + len > pkt.len() {
            inc(&self.counters.dropped_packets);
            return;
        }
        let pkt = &pkt[..STUN_HEADER + len];
        // Validate the attribute layout and FINGERPRINT (must be last and correct, RFC 8489 §14.7) once.
        let mut fingerprint = false;
        for a in codec::attrs(pkt) {
            let Ok((t, r)) = a else {
                inc(&self.counters.dropped_packets);
                return;
            };
            if t == ATTR_FINGERPRINT {
                let ok = r.len() == 4
                    && r.end == pkt.len()
                    && u32::from_be_bytes(pkt[r.clone()].try_into().expect("4 bytes"))
                        == stun::fingerprint::fingerprint_value(&pkt[..r.start - 4]);
                if !ok {
                    inc(&self.counters.dropped_packets);
                    return;
                }
                fingerprint = true;
            }
        }
        let (method, class) = codec::method_and_class(pkt);
        let txid = codec::transaction_id(pkt);
        match (class, method) {
            (1, METHOD_SEND) => self.send_indication(pkt, from, now, out),
            (1, _) => {} // Binding indications are keepalives; other indications are ignored.
            (0, METHOD_BINDING) => {
                // Every ICE agent sends these, so they take the shortest path: no look-up in the answer cache (a
                // Binding answer is never cached: it is stateless, a retransmission gets the same one anew), no
                // decoding, no HMAC; encoded directly, one allocation per answer (SOFTWARE read under the lock
                // rather than cloned).
                inc(&self.counters.binding_requests);
                if !self.may_answer_unsigned(from, now) {
                    return;
                }
                let client = SocketAddr::new(policy::canonical(from.client.ip()), from.client.port());
                let data = {
                    let limits = self.limits.read();
                    codec::binding_success(&txid, client, limits.software.as_deref(), fingerprint)
                };
                out.push(Action::ToClient { to: from, data });
            }
            (0, _) => {
                if let Some(cached) = self.responses.get(&(from, txid)) {
                    // Retransmission: same transaction, same answer (RFC 8489 §6.3.1).
                    out.push(Action::ToClient { to: from, data: cached.1.clone() });
                    return;
                }
                let Some(mut msg) = codec::decode(pkt) else {
                    inc(&self.counters.dropped_packets);
                    return;
                };
                drop_unprotected(&mut msg);
                let req = Req { raw: pkt, msg, method, txid, from, fingerprint, now };
                self.request(&req, out);
            }
            _ => inc(&self.counters.dropped_packets), // responses are never for us
        }
    }

    /// One more answer without MESSAGE-INTEGRITY (Binding success, challenges, errors to unauthenticated
    /// requests) to this source now? Such answers go to an address nobody has proven to own, so they share one
    /// per-source budget (`turn.unauthenticated_rate_per_ip`): the server cannot be used as a reflector.
    fn may_answer_unsigned(&self, from: FiveTuple, now: Instant) -> bool {
        self.may_answer_unsigned_to(from.client.ip(), now)
    }

    /// [`Core::may_answer_unsigned`] for answers sent outside the core (the STUN-only `turn.stun_alt_listen` port).
    pub fn may_answer_unsigned_to(&self, client: IpAddr, now: Instant) -> bool {
        if self.auth.allow_answer(source_of(client), self.unix(now)) {
            return true;
        }
        inc(&self.counters.challenges_rate_limited);
        false
    }

    fn request(&self, req: &Req, out: &mut Vec<Action>) {
        if !matches!(req.method, METHOD_ALLOCATE | METHOD_REFRESH | METHOD_CREATE_PERMISSION | METHOD_CHANNEL_BIND) {
            if self.may_answer_unsigned(req.from, req.now) {
                let m = req.error(400, "Unknown method");
                out.push(Action::ToClient { to: req.from, data: self.finish(m, None, req.fingerprint) });
            }
            return;
        }
        let Some(who) = self.authenticate(req, out) else { return };
        let unknown: Vec<AttrType> = req
            .msg
            .attributes
            .0
            .iter()
            .map(|a| a.typ)
            .filter(|t| t.0 < 0x8000 && !KNOWN_ATTRS.contains(&t.0))
            .collect();
        let result = if !unknown.is_empty() {
            let mut m = req.error(420, "Unknown Attribute");
            let _ = stun::uattrs::UnknownAttributes(unknown).add_to(&mut m);
            Err(m)
        } else {
            match req.method {
                METHOD_ALLOCATE => self.allocate(req, &who, out),
                METHOD_REFRESH => self.refresh(req, &who, out),
                METHOD_CREATE_PERMISSION => self.create_permission(req, &who),
                _ => self.channel_bind(req, &who),
            }
        };
        let m = match result {
            Ok(Some(m)) | Err(m) => m,
            Ok(None) => return, // Allocate in progress: the response comes from relay_opened
        };
        let data = self.finish(m, Some(&who), req.fingerprint);
        self.remember(req.from, req.txid, &data, req.now);
        out.push(Action::ToClient { to: req.from, data });
    }

    /// Long-term credential check (RFC 8489 §9.2.4). Challenges and failures are rate-limited per source
    /// because they are sent to unauthenticated (possibly spoofed) addresses.
    fn authenticate(&self, req: &Req, out: &mut Vec<Action>) -> Option<Authed> {
        let (msg, from) = (&req.msg, req.from);
        let unix = self.unix(req.now);
        let ip = from.client.ip();
        let has_mi =
            msg.contains(AttrType(ATTR_MESSAGE_INTEGRITY)) || msg.contains(AttrType(ATTR_MESSAGE_INTEGRITY_SHA256));
        let challenge = |code: u16, reason: &str, out: &mut Vec<Action>| {
            if !self.may_answer_unsigned(from, req.now) {
                return;
            }
            let mut m = req.error(code, reason);
            if code == 401 || code == 438 {
                m.add(AttrType(ATTR_REALM), self.auth.realm.as_bytes());
                m.add(AttrType(ATTR_NONCE), self.auth.mint_nonce(ip, unix).as_bytes());
            }
            out.push(Action::ToClient { to: from, data: self.finish(m, None, req.fingerprint) });
        };
        if !has_mi {
            inc(&self.counters.auth_challenges);
            challenge(401, "Unauthorized", out);
            return None;
        }
        let text = |t: u16| msg.get(AttrType(t)).ok();
        let (Some(user), Some(realm), Some(nonce)) = (text(ATTR_USERNAME), text(ATTR_REALM), text(ATTR_NONCE)) else {
            inc(&self.counters.auth_failures);
            challenge(400, "Missing USERNAME, REALM or NONCE", out);
            return None;
        };
        if self.auth.check_nonce(&nonce, ip, unix) != NonceCheck::Valid {
            challenge(438, "Stale Nonce", out);
            return None;
        }
        // REALM must be ours (RFC 8489 §9.2.4 makes the realm part of the key, so another realm could only
        // verify by accident of configuration): refuse it explicitly, and the 401 tells the client our realm.
        if realm != self.auth.realm.as_bytes() {
            inc(&self.counters.auth_failures);
            tracing::debug!(client = %from.client, "TURN auth failed: REALM is not turn.realm");
            challenge(401, "Unauthorized", out);
            return None;
        }
        let Ok(username) = String::from_utf8(user) else {
            inc(&self.counters.auth_failures);
            challenge(401, "Unauthorized", out);
            return None;
        };
        let keys = match self.auth.keys_for(&username, unix) {
            Ok(k) => k,
            Err(e) => {
                inc(&self.counters.auth_failures);
                tracing::debug!(client = %from.client, username, "TURN auth failed: {}", if e == KeyError::Expired { "expired REST credential" } else { "unknown user" });
                challenge(401, "Unauthorized", out);
                return None;
            }
        };
        for key in keys {
            if let Some(integrity) = auth::verify(req.raw, &key) {
                return Some(Authed { username, key, integrity });
            }
        }
        inc(&self.counters.auth_failures);
        tracing::debug!(client = %from.client, username, "TURN auth failed: wrong password");
        challenge(401, "Unauthorized", out);
        None
    }

    fn allocate(&self, req: &Req, who: &Authed, out: &mut Vec<Action>) -> Result<Option<Message>, Message> {
        let (msg, from, now) = (&req.msg, req.from, req.now);
        let e = |code, reason| Err(req.error(code, reason));
        if self.allocs.contains_key(&from) {
            // Same transaction would have hit the response cache; a new one is a mismatch (RFC 8656 §7.2 step 2).
            return e(437, "Allocation Mismatch");
        }
        let Ok(transport) = msg.get(AttrType(ATTR_REQUESTED_TRANSPORT)) else {
            return e(400, "Missing REQUESTED-TRANSPORT");
        };
        if transport.len() != 4 {
            return e(400, "Bad REQUESTED-TRANSPORT");
        }
        if transport[0] != 17 {
            return e(442, "Unsupported Transport Protocol");
        }
        let family = msg.get(AttrType(ATTR_REQUESTED_ADDRESS_FAMILY)).ok();
        let additional = msg.get(AttrType(ATTR_ADDITIONAL_ADDRESS_FAMILY)).ok();
        let even = msg.get(AttrType(ATTR_EVEN_PORT)).ok();
        let token = msg.get(AttrType(ATTR_RESERVATION_TOKEN)).ok();
        if token.is_some() && (even.is_some() || family.is_some() || additional.is_some()) {
            return e(400, "RESERVATION-TOKEN with EVEN-PORT or an address family");
        }
        // RFC 8656 §7.2: ADDITIONAL-ADDRESS-FAMILY may only ask for IPv6 (the first relay is IPv4), and not
        // together with REQUESTED-ADDRESS-FAMILY.
        if additional.is_some() && family.is_some() {
            return e(400, "REQUESTED-ADDRESS-FAMILY with ADDITIONAL-ADDRESS-FAMILY");
        }
        if additional.as_deref().is_some_and(|a| a != [2, 0, 0, 0]) {
            return e(400, "ADDITIONAL-ADDRESS-FAMILY must be IPv6");
        }
        // A reserved pair of ports is one family; a dual allocation with one would need a pair per family.
        if additional.is_some() && even.as_deref().is_some_and(|b| b.first().is_some_and(|b| b & 0x80 != 0)) {
            return e(400, "EVEN-PORT with R=1 and ADDITIONAL-ADDRESS-FAMILY");
        }
        let reserved = match token.as_deref() {
            None => None,
            Some(t) => {
                let Ok(t) = <[u8; 8]>::try_from(t) else { return e(400, "Bad RESERVATION-TOKEN") };
                match self.reservations.get(&t).map(|r| *r) {
                    Some((addr, exp, owner)) if exp > now => Some((t, addr, owner)),
                    // Unknown or expired token (RFC 8656 §7.2 step 6).
                    _ => return e(508, "Insufficient Capacity"),
                }
            }
        };
        let relay_of = |v6: bool| self.relay_ips.iter().copied().find(|ip| ip.is_ipv6() == v6);
        let (v4, v6) = (relay_of(false), relay_of(true));
        let mut address_error = None;
        let mut second = None;
        let ip = match (reserved, family.as_deref(), additional.is_some()) {
            (Some((_, addr, _)), ..) => addr.ip(),
            (None, Some([1, 0, 0, 0]), _) => v4.ok_or_else(|| req.error(440, "Address Family not Supported"))?,
            (None, Some([2, 0, 0, 0]), _) => v6.ok_or_else(|| req.error(440, "Address Family not Supported"))?,
            (None, Some(_), _) => return e(440, "Address Family not Supported"),
            // Dual allocation: IPv4 first, then IPv6. A family we have no relay address of is named in
            // ADDRESS-ERROR-CODE of the success answer, and the client gets the other one (RFC 8656 §7.2).
            (None, None, true) => match (v4, v6) {
                (Some(a), Some(b)) => {
                    second = Some(b);
                    a
                }
                (Some(a), None) => {
                    address_error = Some((2, 440));
                    a
                }
                (None, Some(b)) => {
                    address_error = Some((1, 440));
                    b
                }
                (None, None) => return e(440, "Address Family not Supported"),
            },
            // No family asked: IPv4 (RFC 8656 §7.2), or IPv6 when this server relays IPv6 only, e.g. a home
            // reachable only over IPv6 (DS-Lite). Browsers do not ask for a family, and a 440 would leave them
            // without any relay where an IPv6 one serves them.
            (None, None, false) => match v4.or(v6) {
                Some(ip) => ip,
                None => return e(440, "Address Family not Supported"),
            },
        };
        let (even_port, reserve_next) = match even.as_deref() {
            None => (false, false),
            Some([b, ..]) => (true, b & 0x80 != 0),
            Some([]) => return e(400, "Bad EVEN-PORT"),
        };
        let lifetime = requested_lifetime(msg).unwrap_or(DEFAULT_ALLOCATION_LIFETIME);
        let lifetime = lifetime.min(MAX_ALLOCATION_LIFETIME).max(DEFAULT_ALLOCATION_LIFETIME);
        let source = source_of(from.client.ip());
        // Relay ports this request makes its source hold: the allocation's, and the reserved next one. A claimed
        // reservation's port is already counted for the source that reserved it.
        let ports = match reserved {
            Some((_, _, owner)) if owner == source => 0,
            _ => 1 + reserve_next as usize + second.is_some() as usize,
        };
        {
            // Reserve quota now; relay_opened commits or releases it.
            let limits = self.limits.read();
            let mut u = self.usage.lock();
            let mine = u.per_user.get(&who.username).copied().unwrap_or(0);
            let held = u.per_source.get(&source).copied().unwrap_or(0);
            if mine >= limits.max_allocations_per_user {
                drop(u);
                inc(&self.counters.quota_rejections);
                tracing::warn!(username = %who.username, client = %from.client, "TURN allocation refused: {} allocations per user reached (turn.max_allocations_per_user)", limits.max_allocations_per_user);
                return e(486, "Allocation Quota Reached");
            }
            if held + ports > limits.max_ports_per_source {
                drop(u);
                inc(&self.counters.quota_rejections);
                tracing::warn!(client = %from.client, "TURN allocation refused: this source holds {held} relay ports, {} allowed (turn.max_allocations_per_ip, turn.relay_port_share_per_ip_percent)", limits.max_ports_per_source);
                return e(486, "Allocation Quota Reached");
            }
            if u.total >= limits.max_allocations {
                drop(u);
                inc(&self.counters.quota_rejections);
                tracing::warn!(client = %from.client, "TURN allocation refused: {} allocations in total reached (turn.max_allocations)", limits.max_allocations);
                return e(508, "Insufficient Capacity");
            }
            u.total += 1;
            *u.per_user.entry(who.username.clone()).or_default() += 1;
            *u.per_source.entry(source).or_default() += ports;
            if let Some((t, _, owner)) = reserved {
                // Claimed: a token is good for one Allocate, and its port now counts for the claimer.
                if self.reservations.remove(&t).is_some() && owner != source {
                    decrement(&mut u.per_source, &owner, 1);
                }
            }
        }
        out.push(Action::OpenRelay(RelayRequest {
            tuple: from,
            ip,
            even_port,
            reserve_next,
            reserved: reserved.map(|(_, a, _)| a),
            additional: second,
            first: None,
            address_error,
            txid: req.txid,
            username: who.username.clone(),
            key: who.key,
            integrity: who.integrity,
            lifetime,
            fingerprint: req.fingerprint,
        }));
        Ok(None)
    }

    /// The shell bound (or failed to bind) the relay socket for `req`.
    pub fn relay_opened(
        &self,
        req: RelayRequest,
        bound: std::io::Result<SocketAddr>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let who = Authed { username: req.username.clone(), key: req.key, integrity: req.integrity };
        let source = source_of(req.tuple.client.ip());
        // A dual allocation: the first relay is bound, now the second family's.
        if let (Ok(relay), Some(ip)) = (&bound, req.additional) {
            out.push(Action::OpenRelay(RelayRequest {
                ip,
                even_port: false,
                reserve_next: false,
                reserved: None,
                additional: None,
                first: Some(*relay),
                ..req
            }));
            return;
        }
        // The second relay of a dual allocation could not be bound: the allocation goes on with the first, the
        // answer says why the other family is missing (RFC 8656 §7.2), and the port counted for it is returned.
        let (bound, relay2, address_error) = match (req.first, bound) {
            (None, b) => (b, None, req.address_error),
            (Some(first), Ok(second)) => (Ok(first), Some(second), req.address_error),
            (Some(first), Err(err)) => {
                tracing::warn!(client = %req.tuple.client, "TURN allocation without its IPv6 relay: no relay port available in turn.relay_port_min..max ({err})");
                decrement(&mut self.usage.lock().per_source, &source, 1);
                (Ok(first), None, Some((2, 508)))
            }
        };
        let m = match bound {
            Err(err) => {
                // Give back what allocate() counted: the allocation's port, the next one if it was to be
                // reserved, and the claimed reservation's (its socket is gone with the failure).
                self.release(&req.username, source, 1 + req.reserve_next as usize + req.additional.is_some() as usize);
                inc(&self.counters.quota_rejections);
                tracing::warn!(client = %req.tuple.client, "TURN allocation refused: no relay port available in turn.relay_port_min..max ({err})");
                error_message(METHOD_ALLOCATE, req.txid, 508, "Insufficient Capacity")
            }
            Ok(relay) => {
                let bw = self.bandwidth.load(Ordering::Relaxed);
                let alloc = Arc::new(Allocation {
                    tuple: req.tuple,
                    relay,
                    relay2,
                    username: req.username.clone(),
                    source,
                    st: Mutex::new(AllocState {
                        expires: now + req.lifetime,
                        relay_expires: [Some(now + req.lifetime), relay2.map(|_| now + req.lifetime)],
                        perms: FastMap::default(),
                        channels: FastMap::default(),
                        by_peer: FastMap::default(),
                        up: Bucket { tokens: bw, last: now },
                        down: Bucket { tokens: bw, last: now },
                    }),
                });
                self.allocs.insert(req.tuple, alloc.clone());
                if let Some(r2) = relay2 {
                    self.by_relay.insert(r2, alloc.clone());
                }
                self.by_relay.insert(relay, alloc);
                inc(&self.counters.allocations_created);
                self.counters.allocations_active.store(self.allocs.len() as u64, Ordering::Relaxed);
                tracing::debug!(client = %req.tuple.client, relay = %relay, username = %req.username, "TURN allocation created");
                let mut m = codec::message(METHOD_ALLOCATE, 2, req.txid);
                for r in std::iter::once(relay).chain(relay2) {
                    let adv = self.advertised(r);
                    let _ = stun::xoraddr::XorMappedAddress { ip: adv.ip(), port: adv.port() }
                        .add_to_as(&mut m, AttrType(ATTR_XOR_RELAYED_ADDRESS));
                }
                if let Some((family, code)) = address_error {
                    // RFC 8656 §18.12: family, reserved, then an ERROR-CODE-style class/number and reason.
                    let reason: &[u8] =
                        if code == 440 { b"Address Family not Supported" } else { b"Insufficient Capacity" };
                    let mut v = vec![family, 0, 0, 0];
                    v[2] = (code / 100) as u8;
                    v[3] = (code % 100) as u8;
                    v.extend_from_slice(reason);
                    m.add(AttrType(ATTR_ADDRESS_ERROR_CODE), &v);
                }
                let client = SocketAddr::new(policy::canonical(req.tuple.client.ip()), req.tuple.client.port());
                let _ = stun::xoraddr::XorMappedAddress { ip: client.ip(), port: client.port() }.add_to(&mut m);
                m.add(AttrType(ATTR_LIFETIME), &(req.lifetime.as_secs() as u32).to_be_bytes());
                if req.reserve_next {
                    let token: [u8; 8] = rand::random();
                    let next = SocketAddr::new(relay.ip(), relay.port().wrapping_add(1));
                    self.reservations.insert(token, (next, now + RESERVATION_LIFETIME, source));
                    m.add(AttrType(ATTR_RESERVATION_TOKEN), &token);
                }
                m
            }
        };
        let data = self.finish(m, Some(&who), req.fingerprint);
        self.remember(req.tuple, req.txid, &data, now);
        out.push(Action::ToClient { to: req.tuple, data });
    }

    /// One allocation of `username` is gone (or never came), and `ports` relay ports of `source` with it.
    fn release(&self, username: &str, source: IpAddr, ports: usize) {
        let mut u = self.usage.lock();
        u.total = u.total.saturating_sub(1);
        decrement(&mut u.per_user, &username.to_string(), 1);
        decrement(&mut u.per_source, &source, ports);
    }

    fn delete(&self, tuple: &FiveTuple, out: &mut Vec<Action>) {
        if let Some((_, a)) = self.allocs.remove(tuple) {
            let live: Vec<SocketAddr> = a.live(&a.st.lock()).map(|(_, r)| r).collect();
            for &relay in &live {
                self.by_relay.remove(&relay);
                out.push(Action::CloseRelay { relay });
            }
            self.release(&a.username, a.source, live.len());
            self.counters.allocations_active.store(self.allocs.len() as u64, Ordering::Relaxed);
        }
    }

    /// Close relay `i` of dual allocation `a` (its family refreshed to 0, or expired) while the other stays: the
    /// socket goes and its port returns to the source's count. Call without holding `a`'s state lock: the peer
    /// path holds a `by_relay` guard while it takes that lock, so `by_relay` must never be written under it.
    fn close_one(&self, a: &Allocation, i: usize, out: &mut Vec<Action>) {
        let relay = if i == 0 { Some(a.relay) } else { a.relay2 };
        let closed = {
            let mut st = a.st.lock();
            let had = st.relay_expires[i].take().is_some();
            if let Some(e) = st.relay_expires.iter().flatten().max().copied() {
                st.expires = e;
            }
            had
        };
        if let (true, Some(relay)) = (closed, relay) {
            self.by_relay.remove(&relay);
            out.push(Action::CloseRelay { relay });
            decrement(&mut self.usage.lock().per_source, &a.source, 1);
        }
    }

    /// The allocation for the request's client, checking it exists (437) and belongs to the same user (441).
    fn owned(&self, req: &Req, who: &Authed) -> Result<Arc<Allocation>, Message> {
        let Some(a) = self.allocs.get(&req.from).map(|a| a.clone()) else {
            return Err(req.error(437, "Allocation Mismatch"));
        };
        if a.username != who.username {
            return Err(req.error(441, "Wrong Credentials"));
        }
        Ok(a)
    }

    fn refresh(&self, req: &Req, who: &Authed, out: &mut Vec<Action>) -> Result<Option<Message>, Message> {
        let a = self.owned(req, who)?;
        // REQUESTED-ADDRESS-FAMILY names the one relay of a dual allocation this Refresh is for (RFC 8656 §7.1);
        // a family the allocation has no live relay of is a mismatch.
        let mut only = None;
        if let Ok(f) = req.msg.get(AttrType(ATTR_REQUESTED_ADDRESS_FAMILY)) {
            let v6 = f.first() == Some(&2);
            let st = a.st.lock();
            let Some((i, _)) = a.live(&st).find(|(_, r)| r.is_ipv6() == v6) else {
                return Err(req.error(443, "Peer Address Family Mismatch"));
            };
            // The only live relay: the Refresh is for the whole allocation.
            only = (a.live(&st).count() > 1).then_some(i);
        }
        let asked = requested_lifetime(&req.msg);
        let lifetime = match (asked == Some(Duration::ZERO), only) {
            (true, None) => {
                self.delete(&req.from, out);
                Duration::ZERO
            }
            (true, Some(i)) => {
                self.close_one(&a, i, out);
                Duration::ZERO
            }
            (false, _) => {
                let l = asked
                    .unwrap_or(DEFAULT_ALLOCATION_LIFETIME)
                    .min(MAX_ALLOCATION_LIFETIME)
                    .max(DEFAULT_ALLOCATION_LIFETIME);
                let mut st = a.st.lock();
                for (i, e) in st.relay_expires.iter_mut().enumerate() {
                    if e.is_some() && only.is_none_or(|o| o == i) {
                        *e = Some(req.now + l);
                    }
                }
                st.expires = st.relay_expires.iter().flatten().max().copied().unwrap_or(req.now + l);
                l
            }
        };
        let mut m = codec::message(METHOD_REFRESH, 2, req.txid);
        m.add(AttrType(ATTR_LIFETIME), &(lifetime.as_secs() as u32).to_be_bytes());
        Ok(Some(m))
    }

    /// Every XOR-PEER-ADDRESS of a request, checked against the policy; the first refusal fails the whole
    /// request (RFC 8656 §9.2: all or nothing).
    fn peers(&self, req: &Req, alloc: &Allocation) -> Result<Vec<SocketAddr>, Message> {
        let mut peers = Vec::new();
        for a in req.msg.attributes.0.iter().filter(|a| a.typ.0 == ATTR_XOR_PEER_ADDRESS) {
            let Some(p) = codec::decode_xor_addr(&a.value, &req.txid) else {
                return Err(req.error(400, "Bad XOR-PEER-ADDRESS"));
            };
            let checked = match self.policy.read().check_peer(p) {
                Err(Denied::OwnAddress) if self.relay_aliases.iter().any(|(a, _)| *a == policy::canonical(p.ip())) => {
                    Ok(SocketAddr::new(policy::canonical(p.ip()), p.port()))
                }
                other => other,
            };
            match checked {
                Ok(peer) => {
                    if alloc.relay_for(&alloc.st.lock(), peer.ip()).is_none() {
                        return Err(req.error(443, "Peer Address Family Mismatch"));
                    }
                    peers.push(peer);
                }
                Err(why) => {
                    inc(&self.counters.denied_peers);
                    let what = match why {
                        Denied::SpecialPurpose(r) => r,
                        Denied::OwnAddress => "this server's own address",
                        Denied::Configured => "turn.deny_peers",
                        Denied::OutsideClusterRelayRange => "another cluster node's address outside its relay ports",
                    };
                    tracing::info!(client = %req.from.client, peer = %p.ip(), "TURN peer refused (403): {what}");
                    return Err(req.error(403, "Forbidden"));
                }
            }
        }
        if peers.is_empty() {
            return Err(req.error(400, "Missing XOR-PEER-ADDRESS"));
        }
        Ok(peers)
    }

    fn create_permission(&self, req: &Req, who: &Authed) -> Result<Option<Message>, Message> {
        let a = self.owned(req, who)?;
        let peers = self.peers(req, &a)?;
        let max = self.limits.read().max_permissions_per_allocation;
        let mut st = a.st.lock();
        let new = peers
            .iter()
            .filter(|p| !st.perms.contains_key(&p.ip()))
            .map(|p| p.ip())
            .collect::<std::collections::HashSet<_>>()
            .len();
        if st.perms.len() + new > max {
            drop(st);
            inc(&self.counters.quota_rejections);
            tracing::warn!(client = %req.from.client, "TURN permission refused: {max} per allocation reached (turn.max_permissions_per_allocation)");
            return Err(req.error(508, "Insufficient Capacity"));
        }
        for p in peers {
            st.perms.insert(p.ip(), req.now + PERMISSION_LIFETIME);
        }
        Ok(Some(codec::message(METHOD_CREATE_PERMISSION, 2, req.txid)))
    }

    fn channel_bind(&self, req: &Req, who: &Authed) -> Result<Option<Message>, Message> {
        let now = req.now;
        let a = self.owned(req, who)?;
        let ch = match req.msg.get(AttrType(ATTR_CHANNEL_NUMBER)).ok().as_deref() {
            Some([a, b, _, _]) => u16::from_be_bytes([*a, *b]),
            _ => return Err(req.error(400, "Missing CHANNEL-NUMBER")),
        };
        if !(0x4000..=0x7FFF).contains(&ch) {
            return Err(req.error(400, "Bad channel number"));
        }
        let peers = self.peers(req, &a)?;
        if peers.len() != 1 {
            return Err(req.error(400, "One XOR-PEER-ADDRESS expected"));
        }
        let peer = peers[0];
        let (max_channels, max_perms) = {
            let l = self.limits.read();
            (l.max_channels_per_allocation, l.max_permissions_per_allocation)
        };
        let mut st = a.st.lock();
        if let Some((bound, exp)) = st.channels.get(&ch) {
            if *bound != peer && *exp > now {
                return Err(req.error(400, "Channel bound to another peer"));
            }
        }
        if let Some(c) = st.by_peer.get(&peer) {
            if *c != ch && st.channels.get(c).is_some_and(|(_, e)| *e > now) {
                return Err(req.error(400, "Peer bound to another channel"));
            }
        }
        let fresh = !st.channels.contains_key(&ch);
        if fresh && st.channels.len() >= max_channels {
            drop(st);
            inc(&self.counters.quota_rejections);
            tracing::warn!(client = %req.from.client, "TURN channel refused: {max_channels} per allocation reached (turn.max_channels_per_allocation)");
            return Err(req.error(508, "Insufficient Capacity"));
        }
        if fresh && !st.perms.contains_key(&peer.ip()) && st.perms.len() >= max_perms {
            drop(st);
            inc(&self.counters.quota_rejections);
            return Err(req.error(508, "Insufficient Capacity"));
        }
        if let Some((old, _)) = st.channels.insert(ch, (peer, now + CHANNEL_LIFETIME)) {
            if old != peer {
                st.by_peer.remove(&old);
            }
        }
        st.by_peer.insert(peer, ch);
        // ChannelBind also installs or refreshes the permission (RFC 8656 §12.2).
        st.perms.insert(peer.ip(), now + PERMISSION_LIFETIME);
        Ok(Some(codec::message(METHOD_CHANNEL_BIND, 2, req.txid)))
    }

    // ---------------------------------------------------------------- timers and connection events

    /// Expire allocations, permissions, channels, reservations and cached responses, then emit
    /// [`Action::Timeout`] with the moment the next one is due (at most [`MAX_TICK`] away).
    pub fn tick(&self, now: Instant, out: &mut Vec<Action>) {
        let mut next = now + MAX_TICK;
        let mut dead = Vec::new();
        let mut expired_relays = Vec::new();
        for a in self.allocs.iter() {
            let mut st = a.st.lock();
            if st.expires <= now {
                dead.push(*a.key());
                continue;
            }
            // One family of a dual allocation expired (refreshed separately), the other lives on.
            for i in 0..2 {
                match st.relay_expires[i] {
                    Some(e) if e <= now => expired_relays.push((a.value().clone(), i)),
                    Some(e) => next = next.min(e),
                    None => {}
                }
            }
            st.perms.retain(|_, e| *e > now);
            let mut gone = Vec::new();
            st.channels.retain(|_, (p, e)| {
                let keep = *e > now;
                if !keep {
                    gone.push(*p);
                }
                keep
            });
            for p in gone {
                st.by_peer.remove(&p);
            }
            let soonest = st.perms.values().chain(st.channels.values().map(|(_, e)| e)).min().copied();
            next = next.min(soonest.map_or(st.expires, |p| p.min(st.expires)));
        }
        for t in dead {
            tracing::debug!(client = %t.client, "TURN allocation expired");
            self.delete(&t, out);
        }
        for (a, i) in expired_relays {
            self.close_one(&a, i, out);
        }
        let mut uncached: FastMap<IpAddr, usize> = FastMap::default();
        self.responses.retain(|(t, _), (at, _)| {
            let expires = *at + RESPONSE_CACHE_TTL;
            let keep = expires > now;
            if keep {
                next = next.min(expires);
            } else {
                *uncached.entry(source_of(t.client.ip())).or_default() += 1;
            }
            keep
        });
        let mut unreserved: Vec<IpAddr> = Vec::new();
        self.reservations.retain(|_, (addr, exp, source)| {
            let keep = *exp > now;
            if keep {
                next = next.min(*exp);
            } else {
                out.push(Action::CloseRelay { relay: *addr });
                unreserved.push(*source);
            }
            keep
        });
        if !uncached.is_empty() || !unreserved.is_empty() {
            let mut u = self.usage.lock();
            for (s, n) in uncached {
                decrement(&mut u.cached_per_source, &s, n);
            }
            for s in unreserved {
                decrement(&mut u.per_source, &s, 1);
            }
        }
        out.push(Action::Timeout(next));
    }

    /// A TCP client connection closed: its allocation goes with it (RFC 8656 §3.1).
    pub fn client_closed(&self, tuple: FiveTuple, out: &mut Vec<Action>) {
        self.delete(&tuple, out);
    }

    // ---------------------------------------------------------------- encoding helpers

    /// SOFTWARE (only if configured), integrity in the request's kind, FINGERPRINT if the request had one.
    fn finish(&self, mut m: Message, who: Option<&Authed>, fingerprint: bool) -> Vec<u8> {
        if let Some(s) = &self.limits.read().software {
            m.add(AttrType(ATTR_SOFTWARE), s.as_bytes());
        }
        if let Some(w) = who {
            match w.integrity {
                Integrity::Sha1 => {
                    let _ = stun::integrity::MessageIntegrity(w.key.to_vec()).add_to(&mut m);
                }
                Integrity::Sha256 => auth::add_integrity_sha256(&mut m, &w.key),
            }
        }
        if fingerprint {
            let _ = stun::fingerprint::FINGERPRINT.add_to(&mut m);
        }
        m.raw
    }

    /// Keep an answer for retransmissions of its transaction: at most [`RESPONSE_CACHE_MAX`] in all and
    /// [`RESPONSE_CACHE_PER_SOURCE`] per source, so that one client's request burst cannot push everybody
    /// else's answers out (their retransmitted Allocate would then get 437 instead of its relay).
    fn remember(&self, from: FiveTuple, txid: [u8; 12], data: &[u8], now: Instant) {
        if self.responses.len() >= RESPONSE_CACHE_MAX {
            return;
        }
        let source = source_of(from.client.ip());
        {
            let mut u = self.usage.lock();
            let n = u.cached_per_source.entry(source).or_default();
            if *n >= RESPONSE_CACHE_PER_SOURCE {
                return;
            }
            *n += 1;
        }
        if self.responses.insert((from, txid), (now, data.to_vec())).is_some() {
            decrement(&mut self.usage.lock().cached_per_source, &source, 1);
        }
    }
}

fn error_message(method: u16, txid: [u8; 12], code: u16, reason: &str) -> Message {
    let mut m = codec::message(method, 3, txid);
    let _ = stun::error_code::ErrorCodeAttribute {
        code: stun::error_code::ErrorCode(code),
        reason: reason.as_bytes().to_vec(),
    }
    .add_to(&mut m);
    m
}

/// RFC 8489 §14.5/§14.6: attributes after MESSAGE-INTEGRITY are not covered by it and must be ignored, except
/// MESSAGE-INTEGRITY-SHA256 and FINGERPRINT; after MESSAGE-INTEGRITY-SHA256, all but FINGERPRINT. Dropping them
/// right after decoding means no handler can act on one (a LIFETIME=0 appended to a captured Refresh must not
/// delete the allocation).
fn drop_unprotected(msg: &mut Message) {
    // 0: before any integrity attribute, 1: after MESSAGE-INTEGRITY, 2: after MESSAGE-INTEGRITY-SHA256.
    let mut seen = 0u8;
    msg.attributes.0.retain(|a| {
        let t = a.typ.0;
        let keep = match seen {
            0 => true,
            1 => t == ATTR_MESSAGE_INTEGRITY_SHA256 || t == ATTR_FINGERPRINT,
            _ => t == ATTR_FINGERPRINT,
        };
        if keep && t == ATTR_MESSAGE_INTEGRITY {
            seen = seen.max(1);
        }
        if keep && t == ATTR_MESSAGE_INTEGRITY_SHA256 {
            seen = 2;
        }
        keep
    });
}

fn requested_lifetime(msg: &Message) -> Option<Duration> {
    match msg.get(AttrType(ATTR_LIFETIME)).ok().as_deref() {
        Some([a, b, c, d]) => Some(Duration::from_secs(u32::from_be_bytes([*a, *b, *c, *d]) as u64)),
        _ => None,
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
