//! Hub state: sessions (ID, token, live connection or grace period), pending requests, pairings, and the timers
//! that expire them. Everything here is synchronous and runs under one lock that is never held across `.await`;
//! messages leave through each connection's bounded outbox, so the lock order is the delivery order.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use super::identity::{self, EdgeError, Identities, PublicKey};
use super::ids::Id;
use super::keys::{self, Nonce, SigningKey, TokenClaim};
use super::protocol::{
    self, CancelReason, ClientMsg, ContactState, ErrorCode, IceServer, IdentityInfo, LeftReason, Limits, PeerTicket,
    ServerMsg,
};
use super::stats::Stats;
use super::store::Writer;
use crate::cluster::Link;
use crate::limits::TokenBucket;

#[path = "remote.rs"]
mod remote;

/// Close code the hub asks a connection to use when it is replaced by a resumed session.
pub const CLOSE_RESUMED: u16 = 4001;
/// Close code for a connection whose outbox overflowed (it does not read fast enough).
pub const CLOSE_SLOW: u16 = 1008;
/// Close code for the older connection of an identity that a newer tab (or browser window) took over.
pub const CLOSE_TAKEN_OVER: u16 = 4002;
/// Close code ("try again later") for a session whose fresh ID another node handed out first: reconnecting gets
/// another ID.
pub const CLOSE_ID_CLASH: u16 = 1013;
/// The window of `identity_registrations_per_hour`.
const HOUR_SECS: f64 = 3600.0;
/// Pending `rejoin`s one session may hold (each needs a valid ticket naming it, so a real client has a handful).
const MAX_REJOIN_CLAIMS: usize = 64;
/// The window of `requests_to_one_client_per_min`.
const MINUTE: Duration = Duration::from_secs(60);
/// How often `expire` looks for per-source entries that can be forgotten.
const SOURCE_SWEEP_EVERY: Duration = Duration::from_secs(10);

/// How the hub reaches one live connection task.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub conn_id: u64,
    /// The client's source (`limits::source_key`: its IPv4 address, or its IPv6 /64): per-source limits count here.
    pub source: IpAddr,
    pub tx: mpsc::Sender<Utf8Bytes>,
    pub ctl: Arc<ConnCtl>,
}

/// Out-of-band control of a connection task: works even when its outbox is full.
#[derive(Debug)]
pub struct ConnCtl {
    /// 0 = none chosen (the task closes with 1001 if cancelled by shutdown).
    pub close_code: AtomicU16,
    pub cancel: CancellationToken,
    /// Bytes queued in the outbox and not yet written to the socket.
    pub queued: AtomicUsize,
    /// More than this queued means the client is not reading. Counted in bytes, not messages: 256 queued
    /// 64 KiB signals would otherwise let one stalled client pin 16 MiB.
    pub max_queued: usize,
    /// The identity key this connection proved, set when the hub ended its session because another node of the
    /// cluster had bound that key to another ID first (`remote.rs`, `BindingLost`): the connection task hands it
    /// back to [`State::rebind`], which welcomes the connection again with the key's ID, without a close.
    rebind: parking_lot::Mutex<Option<PublicKey>>,
    /// Wakes the connection task when `rebind` is set.
    pub rebind_wake: tokio::sync::Notify,
}

impl ConnCtl {
    pub fn new(cancel: CancellationToken, max_queued: usize) -> Arc<ConnCtl> {
        Arc::new(ConnCtl {
            close_code: AtomicU16::new(0),
            cancel,
            queued: AtomicUsize::new(0),
            max_queued,
            rebind: parking_lot::Mutex::new(None),
            rebind_wake: tokio::sync::Notify::new(),
        })
    }

    /// Ask the task to have the connection welcomed again as the identity `key` ([`State::rebind`]).
    pub fn rebind(&self, key: PublicKey) {
        *self.rebind.lock() = Some(key);
        self.rebind_wake.notify_one();
    }

    /// The key of a pending [`ConnCtl::rebind`], taken.
    pub fn take_rebind(&self) -> Option<PublicKey> {
        self.rebind.lock().take()
    }

    /// The writer sent a message of `len` bytes.
    pub fn written(&self, len: usize) {
        self.queued.fetch_sub(len, Ordering::Relaxed);
    }

    /// Ask the task to close with `code`. The first reason given wins.
    pub fn kill(&self, code: u16) {
        let _ = self.close_code.compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed);
        self.cancel.cancel();
    }
}

/// Queue `text` on a connection; a full outbox means the client is not reading, so it is disconnected rather
/// than buffered without bound.
pub fn push(handle: &ConnHandle, text: String) {
    let len = text.len();
    let ctl = &handle.ctl;
    if ctl.queued.fetch_add(len, Ordering::Relaxed) + len > ctl.max_queued {
        ctl.queued.fetch_sub(len, Ordering::Relaxed);
        tracing::debug!(conn = handle.conn_id, "outbox over its byte budget; disconnecting slow client");
        ctl.kill(CLOSE_SLOW);
        return;
    }
    match handle.tx.try_send(Utf8Bytes::from(text)) {
        Ok(()) => {}
        Err(e) => {
            ctl.queued.fetch_sub(len, Ordering::Relaxed);
            if matches!(e, mpsc::error::TrySendError::Full(_)) {
                tracing::debug!(conn = handle.conn_id, "outbox full; disconnecting slow client");
                ctl.kill(CLOSE_SLOW);
            }
            // Closed: the task is already gone; its `disconnected` call is on its way.
        }
    }
}

#[derive(Debug)]
struct Session {
    /// The source of the connection that holds (or last held) the session; it counts against that source's cap.
    source: IpAddr,
    /// Fixed for the session's life; its tokens carry it (a resume must match it, see [`Nonce`]).
    nonce: Nonce,
    conn: Option<ConnHandle>,
    /// Set while the client is away: when its grace period ends.
    away_until: Option<Instant>,
    /// The deadline of this session's one grace timer in the heap, if it has one. A session that drops, resumes
    /// and drops again keeps that timer (re-armed when it fires early) instead of adding one per drop, so
    /// connection churn on one session cannot fill the heap.
    grace_timer: Option<Instant>,
    /// Accepted pairings. Vecs, not sets: a client has a handful of partners and an empty Vec costs nothing,
    /// which matters at 10k sessions.
    peers: Vec<Id>,
    /// The partners in `peers` whose pairing I initiated (tickets carry the roles).
    led: Vec<Id>,
    /// Partners I presented a valid ticket for (`rejoin`) that have not presented theirs yet.
    rejoin_claims: Vec<Id>,
    /// Requests I sent that are still pending, with their deadline.
    outgoing: Vec<(Id, Instant)>,
    /// Requests sent to me that are still pending, with the source each came from.
    incoming: Vec<(Id, IpAddr)>,
    /// Pairings made while I was away, with my role: `paired` is replayed to me on resume, since the `peers`
    /// list alone does not tell a client its role.
    paired_while_away: Vec<(Id, bool)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Request {
        from: Id,
        to: Id,
    },
    Grace {
        id: Id,
    },
    /// A partner on another node went away (cluster only; see `remote.rs`).
    RemoteGrace {
        id: Id,
    },
}

/// Settings the state machine needs, copied out of the (live) config; replaced on reload.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub grace: Duration,
    pub request_timeout: Duration,
    pub max_sessions: usize,
    pub limits: Limits,
    /// How old a token may be to resume or restore a session, and a ticket to restore a pairing.
    pub token_max_age: u64,
    /// Sessions (live or in their grace period) one source may hold.
    pub max_sessions_per_source: usize,
    /// Connect requests one source may send to one client per minute, and have pending to it at once.
    pub requests_per_target_per_min: usize,
    /// Identities are forgotten this many days after they were last seen.
    pub identity_forget_after_days: u64,
    /// New identities one source may register per hour.
    pub identity_registrations_per_hour: u32,
    /// Identities the store holds at most.
    pub max_identities: usize,
}

impl Settings {
    pub fn from_config(cfg: &crate::config::Config) -> Settings {
        let s = &cfg.signaling;
        Settings {
            grace: Duration::from_secs(s.reconnect_grace_secs),
            request_timeout: Duration::from_secs(s.request_timeout_secs),
            // Sessions in their grace period hold an ID but no socket; cap them too, or connect/disconnect
            // cycles could pile them up. Twice the connection limit leaves room for a full server whose clients
            // all reconnect at once.
            max_sessions: s.max_connections.saturating_mul(2),
            limits: Limits {
                max_message_bytes: s.max_message_bytes,
                messages_per_sec: s.messages_per_sec,
                connect_requests_per_min: s.connect_requests_per_min,
            },
            token_max_age: s.token_max_age_secs,
            max_sessions_per_source: s.max_sessions_per_ip,
            requests_per_target_per_min: s.requests_to_one_client_per_min as usize,
            identity_forget_after_days: s.identity_forget_after_days,
            identity_registrations_per_hour: s.identity_registrations_per_hour,
            max_identities: s.max_identities,
        }
    }
}

/// What the hub remembers about one source (an IPv4 address or an IPv6 /64) beyond its connections: limits that
/// protect other people must not reset when the source opens a new WebSocket. An entry lives while the source
/// holds sessions, and afterwards until its connect budget is full again and its per-client window is over, so
/// the table holds at most the sources with sessions plus those active in the last minute (and is capped, see
/// `source_mut`).
#[derive(Debug)]
struct Source {
    /// Sessions held, live or in their grace period.
    sessions: usize,
    /// `connect` requests (each answers "is this ID online?", so this is also the ID-probing rate).
    connects: TokenBucket,
    /// Requests delivered in the last minute, by target: the per-client limit.
    recent: Vec<(Id, Instant)>,
}

/// How a session started, as `welcome` tells it (`resumed` / `restored` / neither).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    Resumed,
    Restored,
    Fresh,
}

/// What `hello` decided.
pub enum HelloOutcome {
    Welcomed(Id),
    /// Too many sessions (live + in grace, in total or from this source), or a new identity over its limits; the
    /// error is queued, the caller closes with 1013.
    Full,
}

/// A connection between `hello{identity}` and its `identity_proof`: the key to check and the challenge it must
/// sign. Held by the connection (it dies with it), handed to [`State::apply`] with every message.
#[derive(Debug, Clone)]
pub struct Proving {
    pub key: PublicKey,
    pub challenge: String,
    pub token: Option<String>,
    /// Set by [`Proving::check`] before the hub's lock is taken; `apply` trusts only this.
    verified: bool,
}

impl Proving {
    /// Verify an `identity_proof` against the outstanding challenge, if `msg` is one. The connection task calls
    /// this before it locks the hub: an ECDSA P-256 verification costs ~0.1 ms of CPU, and every connection's
    /// messages wait on that lock, so a stream of fresh connections with proofs (valid or not) must not be able
    /// to serialize everyone else behind their signature checks.
    pub fn check(proving: &mut Option<Proving>, msg: &ClientMsg<'_>) {
        if let (Some(p), ClientMsg::IdentityProof { signature }) = (proving.as_mut(), msg) {
            p.verified = p.key.verify(&p.challenge, signature);
        }
    }
}

/// What [`State::apply`] asks of the connection task, beyond the messages it already queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Continue,
    /// `hello` succeeded: the connection now holds this ID.
    Welcomed(Id),
    /// Close the connection with this code (after flushing the queued error).
    Close {
        code: u16,
        reason: &'static str,
    },
    /// `refresh_ice` from the holder of this ID: the task builds fresh ICE servers from the live config.
    RefreshIce(Id),
}

#[derive(Debug)]
pub struct State {
    sessions: HashMap<Id, Session>,
    /// Per-source state (see [`Source`]).
    sources: HashMap<IpAddr, Source>,
    next_source_sweep: Option<Instant>,
    /// Deadlines, lazily invalidated: an entry whose request or grace period is gone by the time it fires is
    /// skipped. Stale entries are bounded by the connect rate limit times the timeout.
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    settings: Settings,
    stats: Arc<Stats>,
    key: SigningKey,
    /// Lasting identities: ID <-> key bindings, consents, blocks (see `identity.rs`).
    ids: Identities,
    /// Writes `ids`' changes to disk (`None`: in memory only).
    writer: Option<Writer>,
    /// New identities registered per source, per hour. Separate from `sources`, whose entries go after a minute
    /// of quiet: this budget must outlast that.
    registrations: HashMap<IpAddr, TokenBucket>,
    /// The cluster link (`[cluster]`); `None` on a single node, where nothing below is used.
    cluster: Option<Link>,
    /// How long presence outlives a stopped node (the cluster's TTL), added to remote grace periods.
    cluster_ttl: Duration,
    /// Requests from IDs on other nodes to sessions here, with their deadline (the requester's node keeps the
    /// other half and its own timer).
    remote_incoming: HashMap<(Id, Id), Instant>,
    /// Partners on other nodes that went away, with the end of their grace period here.
    remote_gone: HashMap<Id, Instant>,
}

fn remove_id(v: &mut Vec<Id>, id: Id) -> bool {
    match v.iter().position(|x| *x == id) {
        Some(i) => {
            v.swap_remove(i);
            true
        }
        None => false,
    }
}

fn remove_incoming(v: &mut Vec<(Id, IpAddr)>, id: Id) -> bool {
    match v.iter().position(|(x, _)| *x == id) {
        Some(i) => {
            v.swap_remove(i);
            true
        }
        None => false,
    }
}

fn remove_outgoing(v: &mut Vec<(Id, Instant)>, id: Id) -> bool {
    match v.iter().position(|(x, _)| *x == id) {
        Some(i) => {
            v.swap_remove(i);
            true
        }
        None => false,
    }
}

impl State {
    pub fn new(settings: Settings, stats: Arc<Stats>, key: SigningKey) -> State {
        State {
            sessions: HashMap::new(),
            sources: HashMap::new(),
            next_source_sweep: None,
            timers: BinaryHeap::new(),
            settings,
            stats,
            key,
            ids: Identities::default(),
            writer: None,
            registrations: HashMap::new(),
            cluster: None,
            cluster_ttl: Duration::ZERO,
            remote_incoming: HashMap::new(),
            remote_gone: HashMap::new(),
        }
    }

    /// Route messages for IDs held by other nodes through `link` (`[cluster]`); `ttl` is the presence TTL.
    pub fn with_cluster(mut self, link: Link, ttl: Duration) -> State {
        self.cluster = Some(link);
        self.cluster_ttl = ttl;
        self
    }

    /// Use `ids` (loaded from the store) and write its changes through `writer`.
    pub fn with_identities(mut self, ids: Identities, writer: Option<Writer>) -> State {
        self.ids = ids;
        self.writer = writer;
        self
    }

    /// The writer, for a clean close at shutdown (what is queued gets written).
    pub fn take_writer(&mut self) -> Option<Writer> {
        self.flush();
        self.writer.take()
    }

    /// Hand the identity table's changes to the disk writer (dropped when there is none).
    /// [`State::flush`], for callers outside the dispatch (the cluster's inbound queue).
    pub fn flush_now(&mut self) {
        self.flush();
    }

    fn flush(&mut self) {
        let ops = self.ids.take_ops();
        if ops.is_empty() {
            return;
        }
        self.cluster_identities(&ops);
        if let Some(w) = &self.writer {
            w.send(ops);
        }
    }

    pub fn identity_count(&self) -> usize {
        self.ids.len()
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Accepted pairings (each counted once, though both partners list it).
    pub fn pairing_count(&self) -> usize {
        self.sessions.values().map(|s| s.peers.len()).sum::<usize>() / 2
    }

    /// Apply reloaded settings: new timers and new sessions use them; running timers keep their deadlines.
    /// Per-source connect budgets take the new rate at once (a source that keeps its entry would otherwise keep
    /// the old rate for as long as it stays active).
    pub fn set_settings(&mut self, settings: Settings) {
        let cpm = settings.limits.connect_requests_per_min;
        if cpm != self.settings.limits.connect_requests_per_min {
            let cpm = cpm as f64;
            for s in self.sources.values_mut() {
                s.connects.set_rate(cpm / 60.0, cpm.max(1.0));
            }
        }
        if settings.identity_registrations_per_hour != self.settings.identity_registrations_per_hour {
            // A new hourly budget for everybody at the new rate: an operator who raises it wants it to apply now.
            self.registrations.clear();
        }
        self.settings = settings;
    }

    /// Send to a client if it is connected (messages to a client in its grace period are dropped; partners
    /// learned it is away from `peer_away`).
    fn send(&self, to: Id, text: String) {
        if let Some(h) = self.sessions.get(&to).and_then(|s| s.conn.as_ref()) {
            push(h, text);
        }
    }

    fn err(&self, to: Id, code: ErrorCode, message: &str, ref_: &str, peer: Option<Id>) {
        self.stats.error(code);
        self.send(to, protocol::error(code, message, Some(ref_), peer));
    }

    /// True if `conn_id` is the connection currently holding `id`. A connection replaced by a resume keeps
    /// running until it notices its cancellation; whatever it sends meanwhile must not act for the ID.
    pub fn is_current(&self, id: Id, conn_id: u64) -> bool {
        self.sessions.get(&id).and_then(|s| s.conn.as_ref()).is_some_and(|c| c.conn_id == conn_id)
    }

    /// Handle one parsed client message from the connection `conn`, which holds the ID `me` once its `hello`
    /// succeeded, at `now` (monotonic) and `now_unix` (wall clock: tokens and tickets carry it). This is the one
    /// dispatch of client messages to the state machine: the connection task (`conn.rs`) and the fuzz driver
    /// (`fuzzing.rs`) both call it. `ice` builds the ICE list for a `welcome`.
    ///
    /// `proving` is the connection's identity handshake in progress (docs/protocol.md): set by a
    /// `hello{identity}`, consumed by the `identity_proof` that follows.
    pub fn apply(
        &mut self,
        conn: &ConnHandle,
        me: Option<Id>,
        proving: &mut Option<Proving>,
        msg: ClientMsg<'_>,
        (now, now_unix): (Instant, u64),
        ice: impl FnOnce(Id) -> (Vec<IceServer>, u64),
    ) -> Applied {
        let applied = self.dispatch(conn, me, proving, msg, (now, now_unix), ice);
        self.flush();
        applied
    }

    fn dispatch(
        &mut self,
        conn: &ConnHandle,
        me: Option<Id>,
        proving: &mut Option<Proving>,
        msg: ClientMsg<'_>,
        (now, now_unix): (Instant, u64),
        ice: impl FnOnce(Id) -> (Vec<IceServer>, u64),
    ) -> Applied {
        Stats::inc(&self.stats.by_type[msg.index()]);
        let Some(me) = me else {
            if let Some(p) = proving.take() {
                let ClientMsg::IdentityProof { .. } = msg else {
                    *proving = Some(p);
                    self.reply_err(conn, ErrorCode::ProofRequired, "send identity_proof first", msg.type_name());
                    return Applied::Continue;
                };
                if !p.verified {
                    self.reply_err(
                        conn,
                        ErrorCode::BadSignature,
                        "the signature does not verify: sign \"ponte-identity-v1:\" + challenge with the key sent in \
                         hello (ECDSA P-256, SHA-256, raw r||s, base64url)",
                        "identity_proof",
                    );
                    return Applied::Close { code: 1008, reason: "identity proof failed" };
                }
                return match self.identity_hello(conn.clone(), p.key, p.token.as_deref(), now, now_unix, ice) {
                    HelloOutcome::Welcomed(id) => Applied::Welcomed(id),
                    HelloOutcome::Full => Applied::Close { code: 1013, reason: "server full, try again later" },
                };
            }
            let ClientMsg::Hello { v, token, identity } = msg else {
                let (code, text) = match msg {
                    ClientMsg::IdentityProof { .. } => (ErrorCode::BadMessage, "no identity challenge is outstanding"),
                    _ => (ErrorCode::HelloRequired, "send hello first"),
                };
                self.reply_err(conn, code, text, msg.type_name());
                return Applied::Continue;
            };
            if v != protocol::VERSION {
                self.reply_err(conn, ErrorCode::UnsupportedVersion, "this server speaks protocol version 1", "hello");
                return Applied::Close { code: 1002, reason: "unsupported protocol version" };
            }
            if let Some(key) = identity {
                let Some(key) = PublicKey::parse(&key) else {
                    self.reply_err(
                        conn,
                        ErrorCode::BadKey,
                        "identity.key must be base64url of the 65-byte raw P-256 public key (exportKey(\"raw\"))",
                        "hello",
                    );
                    return Applied::Close { code: 1008, reason: "bad identity key" };
                };
                let challenge = identity::challenge();
                push(conn, ServerMsg::IdentityChallenge { challenge: challenge.clone() }.to_text());
                *proving = Some(Proving { key, challenge, token, verified: false });
                return Applied::Continue;
            }
            return match self.hello(conn.clone(), token.as_deref(), now, now_unix, ice) {
                HelloOutcome::Welcomed(id) => Applied::Welcomed(id),
                HelloOutcome::Full => Applied::Close { code: 1013, reason: "server full, try again later" },
            };
        };
        match msg {
            ClientMsg::Hello { .. } => {
                self.reply_err(conn, ErrorCode::BadMessage, "hello was already sent on this connection", "hello");
                return Applied::Continue;
            }
            ClientMsg::RefreshIce => return Applied::RefreshIce(me),
            ClientMsg::Ping { t } => {
                push(conn, ServerMsg::Pong { t }.to_text());
                return Applied::Continue;
            }
            _ => {}
        }
        // A connection replaced by a resume keeps running until it notices its cancellation; whatever it sends
        // meanwhile must not act for the ID.
        if !self.is_current(me, conn.conn_id) {
            return Applied::Continue;
        }
        match msg {
            ClientMsg::Connect { to } => self.connect(me, &to, now),
            ClientMsg::Cancel { to } => self.cancel(me, &to),
            ClientMsg::Accept { from } => self.accept(me, &from),
            ClientMsg::Decline { from } => self.decline(me, &from),
            ClientMsg::Signal { to, data } => self.signal(me, &to, data),
            ClientMsg::Bye { to } => self.bye(me, &to),
            ClientMsg::Rejoin { to, ticket } => self.rejoin(me, &to, &ticket, now_unix),
            ClientMsg::ContactAdd { id } => self.contact_add(me, &id, now),
            ClientMsg::ContactRemove { id } => self.contact_remove(me, &id),
            ClientMsg::Block { id } => self.block(me, &id, now),
            ClientMsg::Unblock { id } => self.unblock(me, &id),
            ClientMsg::IdentityProof { .. } => {
                self.err(me, ErrorCode::BadMessage, "no identity challenge is outstanding", "identity_proof", None)
            }
            ClientMsg::Hello { .. } | ClientMsg::RefreshIce | ClientMsg::Ping { .. } => {}
        }
        Applied::Continue
    }

    /// An error to a connection that may not hold an ID yet.
    fn reply_err(&self, conn: &ConnHandle, code: ErrorCode, message: &str, ref_: &str) {
        self.stats.error(code);
        push(conn, protocol::error(code, message, Some(ref_), None));
    }

    /// `hello`: resume the session named by a valid token, restore its ID if this process does not hold it (a
    /// restart, or a grace period that ended), or start a new one. A token older than `token_max_age` does
    /// neither (docs/security.md): it is treated as no token. `ice` builds the ICE list for the ID finally chosen.
    pub fn hello(
        &mut self,
        conn: ConnHandle,
        token: Option<&str>,
        now: Instant,
        now_unix: u64,
        ice: impl FnOnce(Id) -> (Vec<IceServer>, u64),
    ) -> HelloOutcome {
        let max_age = self.settings.token_max_age;
        // An identity's ID goes only to a connection that proved its key: its tokens alone bring back nothing.
        let claim = token
            .and_then(|t| self.key.check_token(t))
            .filter(|c| keys::fresh(c.issued, now_unix, max_age) && !self.ids.is_taken(c.id));
        if let Some(c) = claim.filter(|c| self.resumable(c, now)) {
            return self.resume(conn, c.id, now, now_unix, ice);
        }
        if !self.room_for_session(&conn) {
            return HelloOutcome::Full;
        }
        match claim.filter(|c| !self.sessions.contains_key(&c.id)) {
            Some(c) => self.restore(conn, c, now, now_unix, ice),
            None => self.fresh(conn, now, now_unix, ice),
        }
    }

    /// The token's session is held here, with the same nonce, and its grace period has not run out (one that ran
    /// out counts as over even if the sweeper has not removed the session yet).
    fn resumable(&self, c: &TokenClaim, now: Instant) -> bool {
        self.sessions
            .get(&c.id)
            .is_some_and(|s| s.nonce.matches(&c.nonce) && s.away_until.is_none_or(|until| until > now))
    }

    /// Whether a new session may start for `conn`: under the total cap and its source's cap. If not, the error
    /// is queued on `conn`.
    fn room_for_session(&mut self, conn: &ConnHandle) -> bool {
        let (code, message) = if self.sessions.len() >= self.settings.max_sessions {
            (ErrorCode::ServerFull, "the server is full; try again later")
        } else if self.sources.get(&conn.source).is_some_and(|s| s.sessions >= self.settings.max_sessions_per_source) {
            // Sessions in their grace period count: connect, hello, close in a loop from one address used to
            // pile up sessions until the server was full for everybody.
            (ErrorCode::TooManySessions, "too many sessions from your address; try again later")
        } else {
            return true;
        };
        self.reply_err(conn, code, message, "hello");
        false
    }

    /// Take over the live or away session `id` (the token matched it): the old connection, if any, is closed
    /// with 4001, and what the client may have missed is replayed.
    fn resume(
        &mut self,
        conn: ConnHandle,
        id: Id,
        now: Instant,
        now_unix: u64,
        ice: impl FnOnce(Id) -> (Vec<IceServer>, u64),
    ) -> HelloOutcome {
        let new_source = conn.source;
        let s = self.sessions.get_mut(&id).expect("resumable checked it");
        let was_away = s.conn.is_none();
        if let Some(old) = s.conn.replace(conn) {
            tracing::debug!(%id, old = old.conn_id, "session resumed by another connection; closing the old one");
            old.ctl.kill(CLOSE_RESUMED);
        }
        s.away_until = None;
        // A client that changed networks: its session now counts against the address it holds it from.
        let old_source = std::mem::replace(&mut s.source, new_source);
        let token = self.key.token(id, &s.nonce, now_unix);
        let peers = s.peers.clone();
        let incoming: Vec<Id> = s.incoming.iter().map(|(p, _)| *p).collect();
        let outgoing: Vec<Id> = s.outgoing.iter().map(|(p, _)| *p).collect();
        let paired_while_away = std::mem::take(&mut s.paired_while_away);
        if old_source != new_source {
            self.source_left(old_source);
            self.source_mut(new_source, now).sessions += 1;
        }
        let (ice_servers, ice_expires) = ice(id);
        self.send(id, self.welcome(id, token, Start::Resumed, &ice_servers, ice_expires, peers.clone()));
        // Replay what the client may have missed so it can rebuild its view from this connection alone.
        for p in &peers {
            let away = self.sessions.get(p).is_some_and(|ps| ps.conn.is_none());
            if away {
                self.send(id, ServerMsg::PeerAway { peer: *p }.to_text());
            }
            if was_away {
                if self.is_remote(*p) {
                    self.notify(remote::Remote::Back { from: id, to: *p });
                } else {
                    self.send(*p, ServerMsg::PeerBack { peer: id }.to_text());
                }
            }
        }
        for (p, initiator) in paired_while_away.into_iter().filter(|(p, _)| peers.contains(p)) {
            let ticket = if initiator { self.ticket(id, p) } else { self.ticket(p, id) };
            self.send(id, ServerMsg::Paired { peer: p, initiator, ticket, peer_key: self.key_str(p) }.to_text());
        }
        for p in incoming {
            self.send(id, ServerMsg::Incoming { peer: p, peer_key: self.key_str(p) }.to_text());
        }
        for p in outgoing {
            self.send(id, ServerMsg::RequestSent { peer: p }.to_text());
        }
        HelloOutcome::Welcomed(id)
    }

    /// A valid, fresh token for an ID nobody here holds (the server restarted, or the grace period ended): the
    /// ID comes back, without pairings. Only its token holder can do this.
    fn restore(
        &mut self,
        conn: ConnHandle,
        c: TokenClaim,
        now: Instant,
        now_unix: u64,
        ice: impl FnOnce(Id) -> (Vec<IceServer>, u64),
    ) -> HelloOutcome {
        tracing::debug!(id = %c.id, "ID restored from its token");
        self.start_session(conn, (c.id, c.nonce, Start::Restored), now, now_unix, ice)
    }

    /// A new session under a new random ID.
    fn fresh(
        &mut self,
        conn: ConnHandle,
        now: Instant,
        now_unix: u64,
        ice: impl FnOnce(Id) -> (Vec<IceServer>, u64),
    ) -> HelloOutcome {
        let id = self.free_id();
        self.start_session(conn, (id, Nonce::random(), Start::Fresh), now, now_unix, ice)
    }

    /// A random ID nobody holds: no session, no identity, not reserved after being forgotten.
    fn free_id(&self) -> Id {
        loop {
            let id = Id::random();
            if !self.sessions.contains_key(&id) && !self.ids.is_taken(id) {
                break id;
            }
        }
    }

    /// `hello{identity}` whose proof verified: the key's ID (bound now if the key is new), resumed when the
    /// token names its live session, else taken over from any older connection (newest tab wins, 4002) and
    /// started afresh. Mutual contacts online hear `presence` when the ID was not online before.
    fn identity_hello(
        &mut self,
        conn: ConnHandle,
        key: PublicKey,
        token: Option<&str>,
        now: Instant,
        now_unix: u64,
        ice: impl FnOnce(Id) -> (Vec<IceServer>, u64),
    ) -> HelloOutcome {
        let Some(id) = self.ids.id_of(&key) else {
            return self.register(conn, key, now, now_unix, ice);
        };
        self.ids.seen(id, now_unix);
        let max_age = self.settings.token_max_age;
        let claim = token
            .and_then(|t| self.key.check_token(t))
            .filter(|c| c.id == id && keys::fresh(c.issued, now_unix, max_age) && self.resumable(c, now));
        if claim.is_some() {
            return self.resume(conn, id, now, now_unix, ice);
        }
        let was_online = self.sessions.contains_key(&id);
        if was_online {
            // Another tab of the same profile (or a reload that lost its token): the newest connection wins.
            if let Some(old) = self.sessions.get(&id).and_then(|s| s.conn.as_ref()) {
                tracing::debug!(%id, old = old.conn_id, "identity opened in another connection; closing the old one");
                old.ctl.kill(CLOSE_TAKEN_OVER);
            }
            self.end_session(id, false);
        }
        if !self.room_for_session(&conn) {
            if was_online {
                self.announce(id, false);
            }
            return HelloOutcome::Full;
        }
        let out = self.start_session(conn, (id, Nonce::random(), Start::Restored), now, now_unix, ice);
        if !was_online {
            self.announce(id, true);
        }
        out
    }

    /// The connection `conn` (holding `me`, if anything) proved `key`, and the session it was welcomed with ended
    /// because another node of the cluster had bound the key to another ID first ([`ConnCtl::rebind`]): welcome
    /// it again in place, as a returning identity (`restored`, the key's ID; if that ID's session is connected
    /// here or on another node, the newest connection wins as for any returning identity, and the older one is
    /// closed with 4002), rather than closing it and making the browser reconnect to learn the ID.
    pub fn rebind(
        &mut self,
        conn: &ConnHandle,
        me: Option<Id>,
        key: PublicKey,
        (now, now_unix): (Instant, u64),
        ice: impl FnOnce(Id) -> (Vec<IceServer>, u64),
    ) -> Applied {
        // A connection that holds a session (a stale wake-up) keeps it.
        if me.is_some_and(|id| self.is_current(id, conn.conn_id)) {
            return Applied::Continue;
        }
        let applied = match self.identity_hello(conn.clone(), key, None, now, now_unix, ice) {
            HelloOutcome::Welcomed(id) => Applied::Welcomed(id),
            HelloOutcome::Full => Applied::Close { code: 1013, reason: "server full, try again later" },
        };
        self.flush();
        applied
    }

    /// A key never seen: bind it to a new ID, within the per-source and total limits.
    fn register(
        &mut self,
        conn: ConnHandle,
        key: PublicKey,
        now: Instant,
        now_unix: u64,
        ice: impl FnOnce(Id) -> (Vec<IceServer>, u64),
    ) -> HelloOutcome {
        if !self.room_for_session(&conn) {
            return HelloOutcome::Full;
        }
        let over_total = self.ids.len() >= self.settings.max_identities;
        if over_total || !self.registration_budget(conn.source, now) {
            let message = if over_total {
                "the server holds as many identities as it may; try again later or use ponte without one"
            } else {
                "too many new identities from your address; try again in an hour or use ponte without one"
            };
            self.reply_err(&conn, ErrorCode::TooManyIdentities, message, "identity_proof");
            return HelloOutcome::Full;
        }
        let id = self.free_id();
        self.ids.register(id, key, now_unix);
        tracing::debug!(%id, "new identity");
        self.start_session(conn, (id, Nonce::random(), Start::Fresh), now, now_unix, ice)
    }

    /// Take one new identity from `source`'s hourly budget.
    fn registration_budget(&mut self, source: IpAddr, now: Instant) -> bool {
        let per_hour = self.settings.identity_registrations_per_hour as f64;
        if !self.registrations.contains_key(&source) && self.registrations.len() >= self.settings.max_sessions {
            self.registrations.retain(|_, b| !b.is_full_at(now));
        }
        let b = self
            .registrations
            .entry(source)
            .or_insert_with(|| TokenBucket::full_at(per_hour / HOUR_SECS, per_hour.max(1.0), now));
        b.try_take_at(now)
    }

    /// Tell `id`'s online mutual contacts that it came online or went offline.
    fn announce(&self, id: Id, online: bool) {
        for c in self.ids.mutuals(id) {
            if self.sessions.contains_key(&c) {
                self.send(c, ServerMsg::Presence { peer: id, online }.to_text());
            } else if self.cluster.is_some() {
                // Dropped quietly if the contact is online nowhere.
                self.notify(remote::Remote::Presence { from: id, to: c, online });
            }
        }
    }

    /// The identity key of `id`, in wire form, if it has one.
    fn key_str(&self, id: Id) -> Option<String> {
        self.ids.key_of(id).map(|k| k.encode())
    }

    /// Insert the session `(id, nonce)` held by `conn` and welcome it.
    fn start_session(
        &mut self,
        conn: ConnHandle,
        (id, nonce, how): (Id, Nonce, Start),
        now: Instant,
        now_unix: u64,
        ice: impl FnOnce(Id) -> (Vec<IceServer>, u64),
    ) -> HelloOutcome {
        let token = self.key.token(id, &nonce, now_unix);
        let source = conn.source;
        self.source_mut(source, now).sessions += 1;
        self.sessions.insert(
            id,
            Session {
                source,
                nonce,
                conn: Some(conn),
                away_until: None,
                grace_timer: None,
                peers: Vec::new(),
                led: Vec::new(),
                rejoin_claims: Vec::new(),
                outgoing: Vec::new(),
                incoming: Vec::new(),
                paired_while_away: Vec::new(),
            },
        );
        let (ice_servers, ice_expires) = ice(id);
        self.send(id, self.welcome(id, token, how, &ice_servers, ice_expires, Vec::new()));
        self.cluster_started(id, how == Start::Fresh);
        if how != Start::Fresh {
            // Only an ID that existed before can have partners here (a scan of the sessions: not per fresh hello).
            self.moved_here(id, now);
        }
        HelloOutcome::Welcomed(id)
    }

    /// The entry of `source`, made if needed. The table is capped: sources with sessions are at most
    /// `max_sessions`; beyond twice that, entries of sources without sessions are forgotten first (an attacker
    /// who can use that many addresses gains little from resetting their buckets).
    fn source_mut(&mut self, source: IpAddr, now: Instant) -> &mut Source {
        if !self.sources.contains_key(&source) && self.sources.len() >= self.settings.max_sessions.saturating_mul(2) {
            self.sources.retain(|_, s| s.sessions > 0);
        }
        let cpm = self.settings.limits.connect_requests_per_min as f64;
        self.sources.entry(source).or_insert_with(|| Source {
            sessions: 0,
            connects: TokenBucket::full_at(cpm / 60.0, cpm.max(1.0), now),
            recent: Vec::new(),
        })
    }

    /// A session of `source` ended or moved away; its entry stays until the sweep finds it idle.
    fn source_left(&mut self, source: IpAddr) {
        if let Some(s) = self.sources.get_mut(&source) {
            s.sessions = s.sessions.saturating_sub(1);
        }
    }

    /// A pairing ticket for `initiator` and `responder`, issued now.
    fn ticket(&self, initiator: Id, responder: Id) -> String {
        self.key.ticket(initiator, responder, crate::credentials::unix_now())
    }

    /// A fresh token and tickets for the session `id` held by `conn_id` (sent periodically, so that a client
    /// connected for days still holds a token young enough to restore its ID after a restart).
    pub fn renewed_tokens(&self, id: Id, conn_id: u64, now_unix: u64) -> Option<String> {
        if !self.is_current(id, conn_id) {
            return None;
        }
        let s = self.sessions.get(&id)?;
        let tickets = s
            .peers
            .iter()
            .map(|p| {
                let (i, r) = if s.led.contains(p) { (id, *p) } else { (*p, id) };
                PeerTicket { peer: *p, ticket: self.key.ticket(i, r, now_unix) }
            })
            .collect();
        Some(ServerMsg::Tokens { token: self.key.token(id, &s.nonce, now_unix), tickets }.to_text())
    }

    fn welcome(
        &self,
        id: Id,
        token: String,
        how: Start,
        ice: &[IceServer],
        ice_expires: u64,
        peers: Vec<Id>,
    ) -> String {
        ServerMsg::Welcome {
            v: protocol::VERSION,
            id,
            display_id: id.display(),
            token,
            resumed: how == Start::Resumed,
            restored: how == Start::Restored,
            ice_servers: ice,
            ice_expires,
            peers,
            limits: self.settings.limits,
            identity: self.ids.key_of(id).map(|k| IdentityInfo { key: k.encode() }),
            contacts: self.ids.get(id).map(|r| {
                r.contacts
                    .iter()
                    .map(|&peer| {
                        let mutual = self.ids.mutual(id, peer);
                        ContactState { peer, mutual, online: mutual && self.sessions.contains_key(&peer) }
                    })
                    .collect()
            }),
            blocked: self.ids.get(id).map(|r| r.blocks.clone()),
        }
        .to_text()
    }

    /// The connection `conn_id` holding `id` ended. Start the grace period (or end the session at once when
    /// the grace period is zero).
    pub fn disconnected(&mut self, id: Id, conn_id: u64, now: Instant, notify: bool) {
        let grace = self.settings.grace;
        let Some(s) = self.sessions.get_mut(&id) else { return };
        if s.conn.as_ref().map(|c| c.conn_id) != Some(conn_id) {
            return; // already replaced by a resume
        }
        s.conn = None;
        if grace.is_zero() {
            self.remove_session(id);
            return;
        }
        let until = now + grace;
        s.away_until = Some(until);
        let peers = s.peers.clone();
        // One grace timer per session: an earlier one still in the heap re-arms itself when it fires.
        if s.grace_timer.is_none() {
            s.grace_timer = Some(until);
            self.timers.push(Reverse((until, Timer::Grace { id })));
        }
        if notify {
            for p in peers {
                if self.is_remote(p) {
                    self.notify(remote::Remote::Away { from: id, to: p });
                } else {
                    self.send(p, ServerMsg::PeerAway { peer: id }.to_text());
                }
            }
        }
    }

    /// End a session for good: partners get `peer_left`, pending requests are withdrawn on both sides, and an
    /// identity's mutual contacts see it go offline.
    fn remove_session(&mut self, id: Id) {
        self.end_session(id, true);
    }

    /// [`State::remove_session`]; `announce: false` when the same ID starts again at once (a takeover), so its
    /// contacts see no flicker.
    fn end_session(&mut self, id: Id, announce: bool) {
        let Some(s) = self.sessions.remove(&id) else { return };
        tracing::debug!(%id, "session ended");
        self.ids.seen(id, crate::credentials::unix_now());
        if announce {
            self.announce(id, false);
        }
        self.source_left(s.source);
        if self.cluster.is_some() {
            let requests: Vec<Id> =
                s.outgoing.iter().map(|(p, _)| *p).chain(s.incoming.iter().map(|(p, _)| *p)).collect();
            self.cluster_ended(id, &s.peers, &requests);
            self.remote_incoming.retain(|(_, to), _| *to != id);
        }
        for p in s.peers {
            if let Some(ps) = self.sessions.get_mut(&p) {
                remove_id(&mut ps.peers, id);
                remove_id(&mut ps.led, id);
            }
            self.send(p, ServerMsg::PeerLeft { peer: id, reason: LeftReason::Disconnected }.to_text());
        }
        for (to, _) in s.outgoing {
            if let Some(ts) = self.sessions.get_mut(&to) {
                remove_incoming(&mut ts.incoming, id);
            }
            self.send(to, ServerMsg::IncomingCancelled { peer: id, reason: CancelReason::Left }.to_text());
        }
        for (from, _) in s.incoming {
            if let Some(fs) = self.sessions.get_mut(&from) {
                remove_outgoing(&mut fs.outgoing, id);
            }
            self.send(from, ServerMsg::PeerLeft { peer: id, reason: LeftReason::Disconnected }.to_text());
        }
    }

    /// Fire every timer due at `now`.
    pub fn expire(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, timer))) = self.timers.pop() else { break };
            match timer {
                Timer::Request { from, to } if self.is_remote(from) => {
                    // A request from another node: its half here expires by itself (the requester's node
                    // tells its client).
                    if self.remote_incoming.get(&(from, to)).is_some_and(|d| *d <= now) {
                        self.remote_incoming.remove(&(from, to));
                        if self.sessions.get_mut(&to).is_some_and(|s| remove_incoming(&mut s.incoming, from)) {
                            self.send(
                                to,
                                ServerMsg::IncomingCancelled { peer: from, reason: CancelReason::Timeout }.to_text(),
                            );
                        }
                    }
                }
                Timer::RemoteGrace { id } => self.remote_grace_over(id, at),
                Timer::Request { from, to } => {
                    let due = self
                        .sessions
                        .get(&from)
                        .and_then(|s| s.outgoing.iter().find(|(p, _)| *p == to))
                        .is_some_and(|(_, deadline)| *deadline <= now);
                    if !due {
                        continue;
                    }
                    if let Some(s) = self.sessions.get_mut(&from) {
                        remove_outgoing(&mut s.outgoing, to);
                    }
                    if let Some(s) = self.sessions.get_mut(&to) {
                        remove_incoming(&mut s.incoming, from);
                    }
                    self.send(from, ServerMsg::RequestTimeout { peer: to }.to_text());
                    self.send(to, ServerMsg::IncomingCancelled { peer: from, reason: CancelReason::Timeout }.to_text());
                }
                Timer::Grace { id } => {
                    let Some(s) = self.sessions.get_mut(&id) else { continue };
                    if s.grace_timer != Some(at) {
                        continue;
                    }
                    s.grace_timer = None;
                    match s.away_until.filter(|_| s.conn.is_none()) {
                        Some(until) if until <= now => self.remove_session(id),
                        // Away again since this timer was set (it resumed and dropped): wait for the new end.
                        Some(until) => {
                            s.grace_timer = Some(until);
                            self.timers.push(Reverse((until, Timer::Grace { id })));
                        }
                        None => {}
                    }
                }
            }
        }
        if self.next_source_sweep.is_none_or(|t| t <= now) {
            self.next_source_sweep = Some(now + SOURCE_SWEEP_EVERY);
            self.sweep_sources(now);
        }
        self.flush();
    }

    /// Forget identities unused for `identity_forget_after_days` (never one that is online), and let their
    /// reserved IDs go after as long again. Called about once a minute.
    pub fn forget_identities(&mut self, now_unix: u64) {
        let days = self.settings.identity_forget_after_days;
        self.ids.set_max_reserved(self.settings.max_identities);
        let sessions = &self.sessions;
        let gone = self.ids.forget_unused(now_unix, days, |id| sessions.contains_key(&id));
        if !gone.is_empty() {
            tracing::info!(count = gone.len(), "forgot identities unused for {days} days");
        }
        self.flush();
    }

    /// Forget sources that hold no session, whose connect budget is full again and whose per-client window is
    /// over: remembering them would change nothing.
    fn sweep_sources(&mut self, now: Instant) {
        self.sources.retain(|_, s| {
            s.recent.retain(|(_, at)| now.saturating_duration_since(*at) < MINUTE);
            s.sessions > 0 || !s.recent.is_empty() || !s.connects.is_full_at(now)
        });
        self.registrations.retain(|_, b| !b.is_full_at(now));
    }

    /// `connect{to}` from `me`. Limited per source, before any lookup (failed attempts are exactly what an ID scan
    /// consists of, and `unknown_peer` vs `request_sent` tells who is online), and per source and target, so that
    /// one address cannot flood one person with prompts by switching connections or IDs.
    pub fn connect(&mut self, me: Id, to_raw: &str, now: Instant) {
        const R: &str = "connect";
        let Some(source) = self.sessions.get(&me).map(|s| s.source) else { return };
        if !self.source_mut(source, now).connects.try_take_at(now) {
            return self.err(me, ErrorCode::TooManyRequests, "too many connect requests; wait a minute", R, None);
        }
        let Some(to) = Id::parse(to_raw) else {
            return self.err(me, ErrorCode::UnknownPeer, "no client with that ID is online", R, None);
        };
        if to == me {
            return self.err(me, ErrorCode::SelfConnect, "that is your own ID", R, Some(to));
        }
        if self.is_remote(to) {
            return self.connect_remote(me, to, source, now);
        }
        // Blocked: the same answer as offline, so the blocked side cannot tell.
        if !self.sessions.contains_key(&to) || self.ids.blocks(to, me) {
            return self.err(me, ErrorCode::UnknownPeer, "no client with that ID is online", R, Some(to));
        }
        if self.paired_or_pending(me, to) {
            return;
        }
        let per_target = self.settings.requests_per_target_per_min;
        let src = self.sources.get_mut(&source).expect("made above");
        src.recent.retain(|(_, at)| now.saturating_duration_since(*at) < MINUTE);
        let recent = src.recent.iter().filter(|(t, _)| *t == to).count();
        let pending = self.sessions.get(&to).map_or(0, |ts| ts.incoming.iter().filter(|(_, s)| *s == source).count());
        if recent >= per_target || pending >= per_target {
            return self.err(
                me,
                ErrorCode::TooManyRequests,
                "too many requests to that client from your address; wait a minute",
                R,
                Some(to),
            );
        }
        src.recent.push((to, now));
        let deadline = now + self.settings.request_timeout;
        if let Some(s) = self.sessions.get_mut(&me) {
            s.outgoing.push((to, deadline));
        }
        if let Some(ts) = self.sessions.get_mut(&to) {
            ts.incoming.push((me, source));
        }
        self.timers.push(Reverse((deadline, Timer::Request { from: me, to })));
        self.send(to, ServerMsg::Incoming { peer: me, peer_key: self.key_str(me) }.to_text());
        self.send(me, ServerMsg::RequestSent { peer: to }.to_text());
    }

    /// Whether `me` may not ask `to` because the two are paired or a request between them is pending (either
    /// way); answers `me` with the error then. The same rule for a local and a cross-node `connect`. A session that
    /// is gone counts as "may not", silently.
    fn paired_or_pending(&self, me: Id, to: Id) -> bool {
        const R: &str = "connect";
        let Some(s) = self.sessions.get(&me) else { return true };
        if s.peers.contains(&to) {
            self.err(me, ErrorCode::AlreadyPaired, "you are already paired with that client", R, Some(to));
            return true;
        }
        if s.outgoing.iter().any(|(p, _)| *p == to) || s.incoming.iter().any(|(p, _)| *p == to) {
            self.err(me, ErrorCode::DuplicateRequest, "a request between you two is already pending", R, Some(to));
            return true;
        }
        false
    }

    /// `connect` to an ID that is not here: this node keeps the requester's half (limits per source, the
    /// timer), the target's node makes the checks that protect the target and answers (`remote.rs`).
    fn connect_remote(&mut self, me: Id, to: Id, source: IpAddr, now: Instant) {
        const R: &str = "connect";
        if !self.cluster_ready(me, R, to) {
            return;
        }
        if self.paired_or_pending(me, to) {
            return;
        }
        let per_target = self.settings.requests_per_target_per_min;
        let src = self.sources.get_mut(&source).expect("made by connect");
        src.recent.retain(|(_, at)| now.saturating_duration_since(*at) < MINUTE);
        if src.recent.iter().filter(|(t, _)| *t == to).count() >= per_target {
            return self.err(
                me,
                ErrorCode::TooManyRequests,
                "too many requests to that client from your address; wait a minute",
                R,
                Some(to),
            );
        }
        let msg = remote::Remote::Connect { from: me, to, key: self.key_str(me), source };
        // Offline (no node holds it) comes back as `unknown_peer`, as on one node.
        let bounce = remote::Remote::Refused { from: to, to: me, code: ErrorCode::UnknownPeer, r: R.into() };
        if self.forward(&msg, Some(bounce)).is_err() {
            return self.err(
                me,
                ErrorCode::ClusterUnavailable,
                "the cluster is busy or unreachable; try again",
                R,
                Some(to),
            );
        }
        if let Some(src) = self.sources.get_mut(&source) {
            src.recent.push((to, now));
        }
        let deadline = now + self.settings.request_timeout;
        if let Some(s) = self.sessions.get_mut(&me) {
            s.outgoing.push((to, deadline));
        }
        self.timers.push(Reverse((deadline, Timer::Request { from: me, to })));
        // `request_sent` follows when the target's node accepted the request (`ConnectOk`).
    }

    pub fn cancel(&mut self, me: Id, to_raw: &str) {
        let to = Id::parse(to_raw);
        let removed = match (to, self.sessions.get_mut(&me)) {
            (Some(to), Some(s)) => remove_outgoing(&mut s.outgoing, to),
            _ => false,
        };
        let Some(to) = to.filter(|_| removed) else {
            return self.err(me, ErrorCode::NoRequest, "you have no pending request to that client", "cancel", to);
        };
        if let Some(ts) = self.sessions.get_mut(&to) {
            remove_incoming(&mut ts.incoming, me);
        }
        if self.is_remote(to) {
            self.notify(remote::Remote::Cancel { from: me, to });
        }
        self.send(to, ServerMsg::IncomingCancelled { peer: me, reason: CancelReason::Cancelled }.to_text());
        self.send(me, ServerMsg::RequestCancelled { peer: to }.to_text());
    }

    /// Take the pending request `from` → `me` out of both sessions; `None` if there is none.
    fn take_incoming(&mut self, me: Id, from_raw: &str, ref_: &str) -> Option<Id> {
        let from = Id::parse(from_raw);
        let removed = match (from, self.sessions.get_mut(&me)) {
            (Some(from), Some(s)) => remove_incoming(&mut s.incoming, from),
            _ => false,
        };
        let Some(from) = from.filter(|_| removed) else {
            self.err(me, ErrorCode::NoRequest, "there is no pending request from that client", ref_, from);
            return None;
        };
        if let Some(fs) = self.sessions.get_mut(&from) {
            remove_outgoing(&mut fs.outgoing, me);
        }
        Some(from)
    }

    pub fn accept(&mut self, me: Id, from_raw: &str) {
        if let Some(from) = Id::parse(from_raw).filter(|f| self.is_remote(*f)) {
            if !self.cluster_ready(me, "accept", from) {
                return;
            }
        }
        let Some(from) = self.take_incoming(me, from_raw, "accept") else { return };
        if self.is_remote(from) {
            self.remote_incoming.remove(&(from, me));
            // The requester's node pairs its half when this arrives (or answers `bye` if its request is gone).
            if self.forward(&remote::Remote::Accept { from: me, to: from }, None).is_err() {
                return self.err(
                    me,
                    ErrorCode::ClusterUnavailable,
                    "the cluster is busy or unreachable; ask again",
                    "accept",
                    Some(from),
                );
            }
        }
        self.pair(from, me);
    }

    /// Make the pairing: both sides get `paired` with their role and the same ticket.
    fn pair(&mut self, initiator: Id, responder: Id) {
        for (a, b, leads) in [(initiator, responder, true), (responder, initiator, false)] {
            if let Some(s) = self.sessions.get_mut(&a) {
                if !s.peers.contains(&b) {
                    s.peers.push(b);
                }
                remove_id(&mut s.led, b);
                if leads {
                    s.led.push(b);
                }
                remove_id(&mut s.rejoin_claims, b);
                if s.conn.is_none() {
                    s.paired_while_away.push((b, leads));
                }
            }
        }
        let ticket = self.ticket(initiator, responder);
        let (ikey, rkey) = (self.key_str(initiator), self.key_str(responder));
        self.send(
            initiator,
            ServerMsg::Paired { peer: responder, initiator: true, ticket: ticket.clone(), peer_key: rkey }.to_text(),
        );
        self.send(responder, ServerMsg::Paired { peer: initiator, initiator: false, ticket, peer_key: ikey }.to_text());
        // A new partner that is mid-reconnect: say so now, as if it had dropped after pairing.
        for (a, b) in [(initiator, responder), (responder, initiator)] {
            if self.sessions.get(&b).is_some_and(|s| s.conn.is_none()) {
                self.send(a, ServerMsg::PeerAway { peer: b }.to_text());
            }
        }
    }

    /// `rejoin{to, ticket}`: re-make a pairing after a restart. Both partners must present the ticket (each one's
    /// client does so only while it still has the conversation), so neither is paired against its will; the
    /// second presentation pairs them at once, with the roles the ticket names and no request to accept.
    pub fn rejoin(&mut self, me: Id, to_raw: &str, ticket: &str, now_unix: u64) {
        const R: &str = "rejoin";
        let to = Id::parse(to_raw);
        let max_age = self.settings.token_max_age;
        let claim = to
            .and_then(|to| self.key.check_ticket(ticket, me, to))
            .filter(|c| keys::fresh(c.issued, now_unix, max_age));
        let Some(c) = claim else {
            return self.err(me, ErrorCode::BadTicket, "that ticket does not re-pair you with that client", R, to);
        };
        let to = if c.initiator == me { c.responder } else { c.initiator };
        let Some(s) = self.sessions.get_mut(&me) else { return };
        if s.peers.contains(&to) {
            return self.err(me, ErrorCode::AlreadyPaired, "you are already paired with that client", R, Some(to));
        }
        if self.is_remote(to) {
            if !self.cluster_ready(me, R, to) {
                return;
            }
            let Some(s) = self.sessions.get_mut(&me) else { return };
            if !s.rejoin_claims.contains(&to) {
                if s.rejoin_claims.len() >= MAX_REJOIN_CLAIMS {
                    return self.err(me, ErrorCode::TooManyRequests, "too many pending rejoins", R, Some(to));
                }
                s.rejoin_claims.push(to);
            }
            self.send(me, ServerMsg::RejoinWaiting { peer: to }.to_text());
            // The partner's node pairs its half if its client presented the ticket too (or never left the
            // pairing) and answers `RejoinDone`; otherwise its own `rejoin` will ask this node.
            self.notify(remote::Remote::Rejoin { from: me, to, ticket: ticket.to_string() });
            return;
        }
        if self.sessions.get(&to).is_some_and(|ps| ps.peers.contains(&me)) {
            // `to` kept its half while I was on another node (that node stopped, or I moved here from it) and I
            // landed on its node: my half comes back at once, as when `to`'s node answers a remote `rejoin`.
            tracing::debug!(%me, %to, "pairing restored from its ticket; the partner kept its half");
            return self.rejoin_half(me, to, c);
        }
        let both = self.sessions.get(&to).is_some_and(|ps| ps.rejoin_claims.contains(&me));
        if !both {
            let Some(s) = self.sessions.get_mut(&me) else { return };
            if !s.rejoin_claims.contains(&to) {
                if s.rejoin_claims.len() >= MAX_REJOIN_CLAIMS {
                    return self.err(me, ErrorCode::TooManyRequests, "too many pending rejoins", R, Some(to));
                }
                s.rejoin_claims.push(to);
            }
            self.send(me, ServerMsg::RejoinWaiting { peer: to }.to_text());
            return;
        }
        // The pairing replaces any plain request still pending between the two.
        for (a, b) in [(me, to), (to, me)] {
            if let Some(s) = self.sessions.get_mut(&a) {
                remove_outgoing(&mut s.outgoing, b);
                remove_incoming(&mut s.incoming, b);
            }
        }
        tracing::debug!(%me, %to, "pairing restored from its ticket");
        self.pair(c.initiator, c.responder);
    }

    /// `me` presented a valid ticket for `to`, a session here that still holds its half of the pairing (kept
    /// while `me` was on another node): only `me`'s half is made. `me` gets `rejoin_waiting` and `paired` with
    /// the ticket's role and `to` gets `peer_back`, exactly what each gets when `me` lands on a third node
    /// (`RejoinDone` there, `remote_rejoin` here), so a client cannot tell which node its partner came back on.
    fn rejoin_half(&mut self, me: Id, to: Id, c: keys::TicketClaim) {
        let leads = c.initiator == me;
        let Some(s) = self.sessions.get_mut(&me) else { return };
        remove_outgoing(&mut s.outgoing, to);
        remove_incoming(&mut s.incoming, to);
        remove_id(&mut s.rejoin_claims, to);
        s.peers.push(to);
        remove_id(&mut s.led, to);
        if leads {
            s.led.push(to);
        }
        if let Some(ts) = self.sessions.get_mut(&to) {
            remove_id(&mut ts.rejoin_claims, me);
            remove_outgoing(&mut ts.outgoing, me);
            remove_incoming(&mut ts.incoming, me);
        }
        let ticket = self.ticket(c.initiator, c.responder);
        // The same two messages as when the partner is on another node, where the answer takes a round trip.
        self.send(me, ServerMsg::RejoinWaiting { peer: to }.to_text());
        self.send(me, ServerMsg::Paired { peer: to, initiator: leads, ticket, peer_key: self.key_str(to) }.to_text());
        if self.sessions.get(&to).is_some_and(|s| s.conn.is_none()) {
            self.send(me, ServerMsg::PeerAway { peer: to }.to_text());
        }
        self.send(to, ServerMsg::PeerBack { peer: me }.to_text());
    }

    pub fn decline(&mut self, me: Id, from_raw: &str) {
        let Some(from) = self.take_incoming(me, from_raw, "decline") else { return };
        if self.is_remote(from) {
            self.remote_incoming.remove(&(from, me));
            self.notify(remote::Remote::Decline { from: me, to: from });
        }
        self.send(from, ServerMsg::Declined { peer: me }.to_text());
    }

    /// The partner `to` if `me` is paired with it, else an error to `me`.
    fn paired_peer(&self, me: Id, to_raw: &str, ref_: &str) -> Option<Id> {
        let to = Id::parse(to_raw);
        let paired = to.is_some_and(|to| self.sessions.get(&me).is_some_and(|s| s.peers.contains(&to)));
        if !paired {
            self.err(me, ErrorCode::NotPaired, "you are not paired with that client", ref_, to);
            return None;
        }
        to
    }

    pub fn signal(&mut self, me: Id, to_raw: &str, data: &RawValue) {
        let Some(to) = self.paired_peer(me, to_raw, "signal") else { return };
        if self.is_remote(to) {
            let msg = remote::Remote::Signal { from: me, to, data: data.to_owned() };
            // A partner whose node stopped is away, as one whose connection dropped.
            let bounce = remote::Remote::Refused { from: to, to: me, code: ErrorCode::PeerAway, r: "signal".into() };
            if self.forward(&msg, Some(bounce)).is_err() {
                self.err(me, ErrorCode::ClusterUnavailable, remote::CLUSTER_UNAVAILABLE, "signal", Some(to));
            }
            return;
        }
        // A partner that moved here from another node is not paired with `me` again until it rejoins (consent
        // on its side too, as a remote node checks): until then it is away.
        let to_session = self.sessions.get(&to).filter(|s| s.peers.contains(&me));
        match to_session.and_then(|s| s.conn.as_ref()) {
            // The sender's ID is stamped here; whatever `from` the client wrote was never parsed.
            Some(h) => {
                Stats::inc(&self.stats.relayed);
                push(h, protocol::signal(me, data));
            }
            None => self.err(
                me,
                ErrorCode::PeerAway,
                "that client is reconnecting; the message was dropped",
                "signal",
                Some(to),
            ),
        }
    }

    pub fn bye(&mut self, me: Id, to_raw: &str) {
        let Some(to) = self.paired_peer(me, to_raw, "bye") else { return };
        let mut had = false;
        for (a, b) in [(me, to), (to, me)] {
            if let Some(s) = self.sessions.get_mut(&a) {
                let was = remove_id(&mut s.peers, b);
                remove_id(&mut s.led, b);
                remove_id(&mut s.rejoin_claims, b);
                had = a == to && was;
            }
        }
        if self.is_remote(to) {
            self.notify(remote::Remote::Bye { from: me, to });
        }
        // `had`: `to`'s side of the pairing. A partner that moved here and has not rejoined yet has none, and
        // hears nothing (as its remote node would not tell it either).
        if had {
            self.send(to, ServerMsg::PeerLeft { peer: me, reason: LeftReason::Bye }.to_text());
        }
    }

    /// The ID a contact message names, if `me` is an identity and the ID is well formed; the error otherwise.
    /// `lookup`: the message reveals whether the ID is registered, so it spends the source's connect budget
    /// (the same scan that `connect` guards against).
    fn contact_target(&mut self, me: Id, raw: &str, ref_: &str, lookup: Option<Instant>) -> Option<Id> {
        if self.ids.key_of(me).is_none() {
            self.err(
                me,
                ErrorCode::IdentityRequired,
                "contacts need a lasting identity (hello with identity)",
                ref_,
                None,
            );
            return None;
        }
        if let Some(now) = lookup {
            let source = self.sessions.get(&me)?.source;
            if !self.source_mut(source, now).connects.try_take_at(now) {
                self.err(me, ErrorCode::TooManyRequests, "too many look-ups of IDs; wait a minute", ref_, None);
                return None;
            }
        }
        match Id::parse(raw).filter(|id| *id != me) {
            Some(id) => Some(id),
            None => {
                self.err(me, ErrorCode::NotIdentity, "that is not the ID of another identity", ref_, None);
                None
            }
        }
    }

    fn edge_err(&self, me: Id, e: EdgeError, peer: Id, ref_: &str) {
        match e {
            EdgeError::NotIdentity => {
                self.err(me, ErrorCode::NotIdentity, "that ID belongs to no lasting identity", ref_, Some(peer))
            }
            EdgeError::TooMany => self.err(
                me,
                ErrorCode::TooManyContacts,
                &format!("an identity holds at most {} contacts and as many blocks", identity::MAX_EDGES),
                ref_,
                Some(peer),
            ),
        }
    }

    /// `contact_add{id}`: my consent to presence with `id`. The other side hears of it only once it is mutual.
    pub fn contact_add(&mut self, me: Id, raw: &str, now: Instant) {
        const R: &str = "contact_add";
        let Some(peer) = self.contact_target(me, raw, R, Some(now)) else { return };
        let was = self.ids.mutual(me, peer);
        match self.ids.add_contact(me, peer) {
            Err(e) => self.edge_err(me, e, peer, R),
            Ok(mutual) => {
                let online = mutual && self.sessions.contains_key(&peer);
                self.send(me, ServerMsg::Contact { peer, mutual, online }.to_text());
                if online && !was {
                    self.send(peer, ServerMsg::Presence { peer: me, online: true }.to_text());
                }
                if mutual && !was && self.is_remote(peer) {
                    // The peer may be online on another node: it hears of me, and I of it (`Online`).
                    self.notify(remote::Remote::Presence { from: me, to: peer, online: true });
                    if let Some(link) = &self.cluster {
                        let _ = link.send(crate::cluster::Outbound::Online {
                            for_id: me.as_str().into(),
                            ids: vec![peer.as_str().into()],
                        });
                    }
                }
            }
        }
    }

    /// `contact_remove{id}`: withdraw my consent; if it was mutual, `id` sees me offline from now on.
    pub fn contact_remove(&mut self, me: Id, raw: &str) {
        let Some(peer) = self.contact_target(me, raw, "contact_remove", None) else { return };
        let was = self.ids.remove_contact(me, peer);
        self.send(me, ServerMsg::ContactRemoved { peer }.to_text());
        if was && self.sessions.contains_key(&peer) {
            self.send(peer, ServerMsg::Presence { peer: me, online: false }.to_text());
        } else if was && self.is_remote(peer) {
            self.notify(remote::Remote::Presence { from: me, to: peer, online: false });
        }
    }

    /// `block{id}`: withdraw consent and refuse `connect`s from `id` (it sees me as offline).
    pub fn block(&mut self, me: Id, raw: &str, now: Instant) {
        const R: &str = "block";
        let Some(peer) = self.contact_target(me, raw, R, Some(now)) else { return };
        match self.ids.block(me, peer) {
            Err(e) => self.edge_err(me, e, peer, R),
            Ok(was) => {
                self.send(me, ServerMsg::Blocked { peer }.to_text());
                if was && self.sessions.contains_key(&peer) {
                    self.send(peer, ServerMsg::Presence { peer: me, online: false }.to_text());
                } else if was && self.is_remote(peer) {
                    self.notify(remote::Remote::Presence { from: me, to: peer, online: false });
                }
            }
        }
    }

    pub fn unblock(&mut self, me: Id, raw: &str) {
        let Some(peer) = self.contact_target(me, raw, "unblock", None) else { return };
        self.ids.unblock(me, peer);
        self.send(me, ServerMsg::Unblocked { peer }.to_text());
    }
}

/// Read-only views and a structural self-check for the fuzz target (`signaling::fuzzing`) and tests.
#[cfg(any(test, feature = "fuzzing"))]
impl State {
    /// The identity table as it is (what a restarted server loads from disk), without pending writes.
    pub fn identities_snapshot(&self) -> Identities {
        self.ids.snapshot()
    }

    pub fn is_mutual(&self, a: Id, b: Id) -> bool {
        self.ids.mutual(a, b)
    }

    /// Partners of `id` as the hub records them (empty for an unknown ID).
    pub fn peers_of(&self, id: Id) -> Vec<Id> {
        self.sessions.get(&id).map(|s| s.peers.clone()).unwrap_or_default()
    }

    /// Pending requests of `id`: (sent by it, sent to it).
    pub fn requests_of(&self, id: Id) -> (Vec<Id>, Vec<Id>) {
        self.sessions
            .get(&id)
            .map(|s| (s.outgoing.iter().map(|(p, _)| *p).collect(), s.incoming.iter().map(|(p, _)| *p).collect()))
            .unwrap_or_default()
    }

    /// Check every invariant the state must keep between calls; `Err` names the first one broken.
    pub fn check_invariants(&self) -> Result<(), String> {
        let timer_at = |at: Instant, t: Timer| self.timers.iter().any(|Reverse((a, x))| *a == at && *x == t);
        if self.sessions.len() > self.settings.max_sessions {
            return Err(format!("{} sessions over max_sessions {}", self.sessions.len(), self.settings.max_sessions));
        }
        for (&id, s) in &self.sessions {
            let dup = |v: &[Id]| (1..v.len()).any(|i| v[..i].contains(&v[i]));
            let incoming: Vec<Id> = s.incoming.iter().map(|(p, _)| *p).collect();
            if dup(&s.peers) || dup(&incoming) || dup(&s.outgoing.iter().map(|(p, _)| *p).collect::<Vec<_>>()) {
                return Err(format!("{id}: duplicate entry in peers/incoming/outgoing"));
            }
            for &p in &s.peers {
                if p == id {
                    return Err(format!("{id} is paired with itself"));
                }
                if self.is_remote(p) {
                    continue; // the other half is on another node
                }
                if !self.sessions.get(&p).is_some_and(|ps| ps.peers.contains(&id)) {
                    return Err(format!("pairing {id}-{p} is not symmetric (or {p} is gone)"));
                }
            }
            for &(to, deadline) in &s.outgoing {
                if to == id || s.peers.contains(&to) || incoming.contains(&to) {
                    return Err(format!("request {id}->{to} to itself, to a partner, or crossing another"));
                }
                if !self.is_remote(to)
                    && !self.sessions.get(&to).is_some_and(|ts| ts.incoming.iter().any(|(p, _)| *p == id))
                {
                    return Err(format!("request {id}->{to} missing from {to}'s incoming"));
                }
                if !timer_at(deadline, Timer::Request { from: id, to }) {
                    return Err(format!("request {id}->{to} has no timer: it would never expire"));
                }
            }
            // One source prompts one client a few times at most (a reload that lowers the limit could leave more
            // pending until they expire; the fuzz driver's reloads keep it).
            for &(_, src) in &s.incoming {
                let n = s.incoming.iter().filter(|(_, x)| *x == src).count();
                if n > self.settings.requests_per_target_per_min {
                    return Err(format!("{n} requests from source {src} pending to {id}"));
                }
            }
            for &(from, _) in &s.incoming {
                if !self.is_remote(from)
                    && !self.sessions.get(&from).is_some_and(|fs| fs.outgoing.iter().any(|(p, _)| *p == id))
                {
                    return Err(format!("incoming {from}->{id} missing from {from}'s outgoing"));
                }
            }
            match (&s.conn, s.away_until) {
                (Some(_), None) => {
                    if !s.paired_while_away.is_empty() {
                        return Err(format!("{id} is connected but has paired_while_away entries"));
                    }
                }
                (None, Some(until)) => {
                    let armed = s.grace_timer.is_some_and(|at| at <= until && timer_at(at, Timer::Grace { id }));
                    if !armed {
                        return Err(format!("{id} is away with no grace timer: it would never end"));
                    }
                }
                _ => return Err(format!("{id}: connection and grace period disagree")),
            }
        }
        // Per-source counts match the sessions, every source is under its cap (a reload may lower the cap under
        // what is held: then only new sessions are refused), and the table stays bounded.
        let mut held: HashMap<IpAddr, usize> = HashMap::new();
        for s in self.sessions.values() {
            *held.entry(s.source).or_default() += 1;
        }
        for (ip, n) in &held {
            if self.sources.get(ip).map(|s| s.sessions) != Some(*n) {
                return Err(format!(
                    "source {ip} holds {n} sessions but counts {:?}",
                    self.sources.get(ip).map(|s| s.sessions)
                ));
            }
        }
        if let Some((ip, _)) = self.sources.iter().find(|(ip, s)| s.sessions > 0 && !held.contains_key(ip)) {
            return Err(format!("source {ip} counts sessions it does not hold"));
        }
        if self.sources.len() > self.settings.max_sessions.saturating_mul(2).max(held.len() + 1) {
            return Err(format!("{} sources remembered: the table is not bounded", self.sources.len()));
        }
        self.ids.check_invariants()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            grace: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            max_sessions: 100,
            limits: Limits { max_message_bytes: 65536, messages_per_sec: 50, connect_requests_per_min: 20 },
            token_max_age: 3600,
            max_sessions_per_source: 4,
            requests_per_target_per_min: 2,
            identity_forget_after_days: 180,
            identity_registrations_per_hour: 3,
            max_identities: 1000,
        }
    }

    const SRC_A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 1));
    const SRC_B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 1));

    struct TestConn {
        handle: ConnHandle,
        rx: mpsc::Receiver<Utf8Bytes>,
    }

    fn conn(n: u64) -> TestConn {
        conn_from(n, SRC_A)
    }

    fn conn_from(n: u64, source: IpAddr) -> TestConn {
        let (tx, rx) = mpsc::channel(64);
        let ctl = ConnCtl::new(CancellationToken::new(), 1 << 20);
        TestConn { handle: ConnHandle { conn_id: n, source, tx, ctl }, rx }
    }

    impl TestConn {
        /// Types of everything queued so far.
        fn drain(&mut self) -> Vec<serde_json::Value> {
            let mut out = Vec::new();
            while let Ok(m) = self.rx.try_recv() {
                out.push(serde_json::from_str(m.as_str()).unwrap());
            }
            out
        }
        fn types(&mut self) -> Vec<String> {
            self.drain().iter().map(|v| v["type"].as_str().unwrap().to_string()).collect()
        }
    }

    fn join(st: &mut State, c: &TestConn, token: Option<&str>) -> Id {
        join_at(st, c, token, 1000)
    }

    fn join_at(st: &mut State, c: &TestConn, token: Option<&str>, now_unix: u64) -> Id {
        match st.hello(c.handle.clone(), token, Instant::now(), now_unix, |_| (Vec::new(), 0)) {
            HelloOutcome::Welcomed(id) => id,
            HelloOutcome::Full => panic!("full"),
        }
    }

    /// Two nodes' hubs with the cluster task replaced by this shuttle: what one queues for an ID of the other
    /// is applied there (`apply_cluster`), as the Redis pub/sub would.
    fn shuttle(from: &mut mpsc::Receiver<crate::cluster::Outbound>, to: &mut State) -> usize {
        let mut n = 0;
        while let Ok(o) = from.try_recv() {
            if let crate::cluster::Outbound::To { body, .. } = o {
                to.apply_cluster(crate::cluster::Inbound::Envelope { body }, Instant::now());
                n += 1;
            }
        }
        n
    }

    /// The signature check runs before the hub's lock (`Proving::check`, in the connection task); `apply` must
    /// act on that result only, never on a proof nobody checked, and never verify under the lock itself.
    #[test]
    fn identity_proofs_count_only_when_checked_before_the_lock() {
        use base64::Engine as _;
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let mut st = State::new(settings(), Arc::default(), SigningKey::random());
        let (now, unix) = (Instant::now(), 1000);
        // hello{identity} → challenge → a correctly signed proof; `check` decides whether it counts.
        let mut handshake = |c: &mut TestConn, check: bool| {
            let mut proving = None;
            let hello = ClientMsg::Hello { v: 1, token: None, identity: Some(b64(kp.public_key().as_ref())) };
            assert_eq!(
                st.apply(&c.handle, None, &mut proving, hello, (now, unix), |_| (Vec::new(), 0)),
                Applied::Continue
            );
            let challenge = c.drain()[0]["challenge"].as_str().unwrap().to_string();
            let msg = format!("{}{challenge}", identity::SIGN_PREFIX);
            let signature = b64(kp.sign(&rng, msg.as_bytes()).unwrap().as_ref());
            let proof = ClientMsg::IdentityProof { signature };
            if check {
                Proving::check(&mut proving, &proof);
            }
            st.apply(&c.handle, None, &mut proving, proof, (now, unix), |_| (Vec::new(), 0))
        };
        let (mut a, mut b) = (conn(1), conn(2));
        assert_eq!(handshake(&mut a, false), Applied::Close { code: 1008, reason: "identity proof failed" });
        assert!(matches!(handshake(&mut b, true), Applied::Welcomed(_)));
        st.check_invariants().unwrap();
    }

    #[test]
    fn cross_node_pairing_keeps_consent_on_both_halves() {
        let key = SigningKey::random();
        let (la, mut qa) = crate::cluster::Link::detached("node-a", true);
        let (lb, mut qb) = crate::cluster::Link::detached("node-b", true);
        let ttl = Duration::from_secs(3);
        let mut na = State::new(settings(), Arc::default(), key.clone()).with_cluster(la, ttl);
        let mut nb = State::new(settings(), Arc::default(), key).with_cluster(lb, ttl);
        let (mut a, mut b, mut x) = (conn(1), conn_from(2, SRC_B), conn(3));
        let ia = join(&mut na, &a, None);
        let ib = join(&mut nb, &b, None);
        let ix = join(&mut na, &x, None);
        let now = Instant::now();
        a.drain();
        b.drain();
        x.drain();
        na.connect(ia, ib.as_str(), now);
        assert!(a.types().is_empty(), "request_sent waits for the target's node");
        assert_eq!(shuttle(&mut qa, &mut nb), 1);
        assert_eq!(b.types(), ["incoming"]);
        shuttle(&mut qb, &mut na);
        assert_eq!(a.types(), ["request_sent"]);
        nb.accept(ib, ia.as_str());
        assert_eq!(b.types(), ["paired"]);
        shuttle(&mut qb, &mut na);
        let paired = a.drain();
        assert_eq!((paired[0]["type"].as_str(), paired[0]["initiator"].as_bool()), (Some("paired"), Some(true)));
        let data = RawValue::from_string("{\"n\":1}".into()).unwrap();
        na.signal(ia, ib.as_str(), &data);
        shuttle(&mut qa, &mut nb);
        assert_eq!(b.drain()[0]["data"]["n"], 1);
        // X (node-a, not paired) cannot send; and an envelope claiming to be from X is not delivered by node-b,
        // which knows no pairing of X and B: consent is checked on both nodes.
        na.signal(ix, ib.as_str(), &data);
        assert_eq!(x.drain()[0]["code"], "not_paired");
        let forged = format!("{{\"signal\":{{\"from\":\"{ix}\",\"to\":\"{ib}\",\"data\":{{}}}}}}");
        nb.apply_cluster(crate::cluster::Inbound::Envelope { body: forged }, Instant::now());
        assert!(b.drain().is_empty(), "a signal without a pairing on this node was delivered");
        shuttle(&mut qb, &mut na);
        assert_eq!(x.drain()[0]["code"], "not_paired");
        // bye on one node removes both halves.
        nb.bye(ib, ia.as_str());
        shuttle(&mut qb, &mut na);
        assert_eq!(a.drain()[0]["type"], "peer_left");
        assert!(na.peers_of(ia).is_empty() && nb.peers_of(ib).is_empty());
        na.check_invariants().unwrap();
        nb.check_invariants().unwrap();
    }

    /// Two nodes bound one new identity key at the same instant and Redis kept node-b's binding: node-a's
    /// connection is not closed (it was, with 1013, and the browser had to reconnect to learn the ID); its task is
    /// asked to rebind, and is welcomed again in place with the holder's ID, claimed as a returning identity's
    /// (a take-over of the holder's session on node-b, newest connection wins).
    #[test]
    fn a_binding_lost_to_another_node_welcomes_the_connection_again_with_the_holder_s_id() {
        use crate::cluster::{Inbound, Outbound};
        let key = SigningKey::random();
        let (la, mut qa) = crate::cluster::Link::detached("node-a", true);
        let (lb, _qb) = crate::cluster::Link::detached("node-b", true);
        let ttl = Duration::from_secs(3);
        let mut na = State::new(settings(), Arc::default(), key.clone()).with_cluster(la, ttl);
        let mut nb = State::new(settings(), Arc::default(), key).with_cluster(lb, ttl);
        // The hub never checks the proof (the connection did), only the key's form.
        let mut raw = [7u8; identity::KEY_LEN];
        raw[0] = 4;
        let pk = PublicKey(raw);
        let (mut a, mut b) = (conn(1), conn_from(2, SRC_B));
        let now = Instant::now();
        let no_ice = |_: Id| (Vec::new(), 0);
        let HelloOutcome::Welcomed(ia) = na.identity_hello(a.handle.clone(), pk, None, now, 1000, no_ice) else {
            panic!("full")
        };
        let HelloOutcome::Welcomed(ib) = nb.identity_hello(b.handle.clone(), pk, None, now, 1000, no_ice) else {
            panic!("full")
        };
        assert_ne!(ia, ib, "two fresh IDs for one key, one per node");
        na.flush_now();
        a.drain();
        b.drain();
        while qa.try_recv().is_ok() {}

        let record = nb.identities_snapshot().get(ib).expect("node-b bound it").clone();
        let value = String::from_utf8(record.to_bytes()).unwrap();
        na.apply_cluster(
            Inbound::BindingLost { field: ia.as_str().into(), holder: ib.as_str().into(), value },
            Instant::now(),
        );
        assert!(!a.handle.ctl.cancel.is_cancelled(), "the connection was closed (code {:?})", a.handle.ctl.close_code);
        assert!(!na.is_current(ia, 1), "the losing ID's session ended");
        assert_eq!(na.identities_snapshot().id_of(&pk), Some(ib), "the key is the holder's here too");
        assert_eq!(a.handle.ctl.take_rebind(), Some(pk), "the connection task was asked to rebind");

        let applied = na.rebind(&a.handle, Some(ia), pk, (Instant::now(), 1000), no_ice);
        assert_eq!(applied, Applied::Welcomed(ib));
        let got = a.drain();
        let w = got.iter().find(|m| m["type"] == "welcome").unwrap_or_else(|| panic!("no welcome: {got:?}"));
        assert_eq!((w["id"].as_str(), w["restored"].as_bool()), (Some(ib.as_str()), Some(true)), "{w}");
        assert_eq!(w["identity"]["key"], pk.encode(), "{w}");
        assert!(na.is_current(ib, 1));
        // Claimed as a returning identity's ID (not exclusively): node-b's session, if still there, is taken over
        // (4002, newest wins); the losing ID's presence is released.
        let out: Vec<Outbound> = std::iter::from_fn(|| qa.try_recv().ok()).collect();
        assert!(
            out.iter().any(|o| matches!(o, Outbound::Claim { id, exclusive: false } if id == ib.as_str())),
            "{out:?}"
        );
        assert!(out.iter().any(|o| matches!(o, Outbound::Release { id } if id == ia.as_str())), "{out:?}");
        // No record of the losing ID is written.
        let rewritten = out.iter().any(|o| {
            matches!(o, Outbound::Identities(ops) if ops.iter().any(|h| h.field == ia.as_str() && h.value.is_some()))
        });
        assert!(!rewritten, "{out:?}");
        // A stale wake-up does nothing: the connection holds the key's ID now.
        assert_eq!(na.rebind(&a.handle, Some(ib), pk, (Instant::now(), 1000), no_ice), Applied::Continue);
        assert!(a.drain().is_empty());
        na.check_invariants().unwrap();
    }

    #[test]
    fn cross_node_operations_are_refused_while_redis_is_down() {
        let (link, mut q) = crate::cluster::Link::detached("node-a", false);
        let mut st =
            State::new(settings(), Arc::default(), SigningKey::random()).with_cluster(link, Duration::from_secs(3));
        let mut a = conn(1);
        let (ia, ib) = (join(&mut st, &a, None), conn(2));
        let ib2 = join(&mut st, &ib, None);
        a.drain();
        st.connect(ia, "abcd2345", Instant::now());
        let e = a.drain();
        assert_eq!(e[0]["code"], "cluster_unavailable", "{e:?}");
        assert!(st.requests_of(ia).0.is_empty(), "nothing was half done");
        while let Ok(o) = q.try_recv() {
            assert!(!matches!(o, crate::cluster::Outbound::To { .. }), "queued while Redis is down: {o:?}");
        }
        // The same node still works.
        st.connect(ia, ib2.as_str(), Instant::now());
        assert_eq!(a.types(), ["request_sent"]);
    }

    /// Issue #7: a token older than `token_max_age` must not resume a live session (and close its owner with
    /// 4001); it starts a new session instead. Fails on the old code, which checked the age only to restore.
    #[test]
    fn an_old_token_does_not_take_over_a_live_session() {
        let mut st = State::new(settings(), Arc::default(), SigningKey::random());
        let mut a = conn(1);
        let ia = join_at(&mut st, &a, None, 1000);
        let token = a.drain()[0]["token"].as_str().unwrap().to_string();
        let thief = conn(2);
        let it = join_at(&mut st, &thief, Some(&token), 1000 + 3600 + 1);
        assert_ne!(it, ia, "an expired token resumed the session");
        assert!(!a.handle.ctl.cancel.is_cancelled(), "the owner was closed");
        assert!(st.is_current(ia, 1));
        // Within the age it still resumes.
        let again = conn(3);
        assert_eq!(join_at(&mut st, &again, Some(&token), 1000 + 3600), ia);
    }

    /// Issue #1: sessions in their grace period count against their source, so connect, hello, close in a loop
    /// from one address stops at the per-source cap while another address still gets in. Fails on the old
    /// code, which only had the global cap (the churner filled it and the other address got `server_full`).
    #[test]
    fn grace_sessions_count_against_their_source() {
        let mut s = settings();
        s.max_sessions = 10;
        let mut st = State::new(s, Arc::default(), SigningKey::random());
        let now = Instant::now();
        let mut refused = 0;
        for n in 0..50 {
            let mut c = conn_from(n, SRC_A);
            match st.hello(c.handle.clone(), None, now, 1000, |_| (Vec::new(), 0)) {
                HelloOutcome::Welcomed(id) => st.disconnected(id, n, now, true),
                HelloOutcome::Full => {
                    refused += 1;
                    let e = c.drain().pop().unwrap();
                    assert_eq!(e["code"], "too_many_sessions");
                }
            }
        }
        assert_eq!(st.session_count(), 4, "the churner holds its cap, no more");
        assert_eq!(refused, 46);
        st.check_invariants().unwrap();
        let other = conn_from(100, SRC_B);
        join(&mut st, &other, None);
        // When the grace periods end, the source may start sessions again, and its entry is forgotten later.
        st.expire(now + Duration::from_secs(11));
        assert_eq!(st.session_count(), 1);
        join(&mut st, &conn_from(101, SRC_A), None);
        st.check_invariants().unwrap();
    }

    /// A session that drops, resumes and drops again keeps one grace timer in the heap, not one per drop.
    #[test]
    fn resume_churn_keeps_one_grace_timer_per_session() {
        let mut st = State::new(settings(), Arc::default(), SigningKey::random());
        let mut a = conn(1);
        let ia = join(&mut st, &a, None);
        let token = a.drain()[0]["token"].as_str().unwrap().to_string();
        let t0 = Instant::now();
        st.disconnected(ia, 1, t0, true);
        for n in 2..1000 {
            join(&mut st, &conn(n), Some(&token));
            st.disconnected(ia, n, t0 + Duration::from_millis(n), true);
        }
        assert!(st.timers.len() <= 2, "{} timers for one session", st.timers.len());
        st.check_invariants().unwrap();
        // The first timer fires early, re-arms for the last drop's grace period, which then ends the session.
        st.expire(t0 + Duration::from_secs(10));
        assert_eq!(st.session_count(), 1);
        st.check_invariants().unwrap();
        st.expire(t0 + Duration::from_secs(12));
        assert_eq!(st.session_count(), 0);
    }

    /// Issue #3: the connect budget belongs to the source, not the connection or the ID, and one source may only
    /// prompt one person a few times a minute. Fails on the old code (a budget per connection; none per target).
    #[test]
    fn connect_limits_outlive_connections_and_ids() {
        let mut st = State::new(settings(), Arc::default(), SigningKey::random());
        let mut victim = conn_from(1, SRC_B);
        let iv = join(&mut st, &victim, None);
        victim.drain();
        let now = Instant::now();
        // New connection and new ID for every request, all from one source.
        let mut prompts = 0;
        for n in 0..20 {
            let mut c = conn_from(10 + n, SRC_A);
            let me = join(&mut st, &c, None);
            st.connect(me, iv.as_str(), now);
            let types: Vec<String> = c.drain().iter().map(|v| v["type"].as_str().unwrap().to_string()).collect();
            assert!(types.contains(&"welcome".into()));
            st.disconnected(me, 10 + n, now, true);
            st.expire(now + Duration::from_secs(11));
            prompts += victim.types().iter().filter(|t| *t == "incoming").count();
        }
        assert_eq!(prompts, 2, "one source prompted one person {prompts} times in a minute");
        // The source's budget of 20 lookups a minute is spent too, whichever connection asks.
        let mut c = conn_from(99, SRC_A);
        let me = join(&mut st, &c, None);
        c.drain();
        st.connect(me, "zzzzzzzz", now);
        assert_eq!(c.drain()[0]["code"], "too_many_requests");
        // Another source is not affected.
        let mut d = conn_from(100, SRC_B);
        let md = join(&mut st, &d, None);
        d.drain();
        st.connect(md, me.as_str(), now);
        assert_eq!(d.types(), ["request_sent"]);
        st.check_invariants().unwrap();
    }

    /// A reload that lowers `connect_requests_per_min` applies to sources the hub already knows.
    #[test]
    fn reloaded_connect_budget_applies_to_known_sources() {
        let mut st = State::new(settings(), Arc::default(), SigningKey::random());
        let mut c = conn(1);
        let id = join(&mut st, &c, None);
        c.drain();
        let mut s = settings();
        s.limits.connect_requests_per_min = 2;
        st.set_settings(s);
        let now = Instant::now();
        for _ in 0..3 {
            st.connect(id, "zzzzzzzz", now);
        }
        let codes: Vec<serde_json::Value> = c.drain().iter().map(|v| v["code"].clone()).collect();
        assert_eq!(codes, ["unknown_peer", "unknown_peer", "too_many_requests"]);
    }

    /// Per-source entries are forgotten once they hold no session and their budgets are whole again.
    #[test]
    fn source_entries_expire() {
        let mut st = State::new(settings(), Arc::default(), SigningKey::random());
        let now = Instant::now();
        let c = conn_from(1, SRC_A);
        let id = join(&mut st, &c, None);
        for _ in 0..10 {
            st.connect(id, "zzzzzzzz", now);
        }
        st.disconnected(id, 1, now, true);
        st.expire(now + Duration::from_secs(11));
        assert_eq!(st.session_count(), 0);
        assert_eq!(st.sources.len(), 1, "kept while its budget refills");
        st.expire(now + Duration::from_secs(120));
        assert!(st.sources.is_empty());
    }

    #[test]
    fn stale_request_timer_does_not_expire_a_newer_request() {
        let mut st = State::new(settings(), Arc::default(), SigningKey::random());
        let (mut a, mut b) = (conn(1), conn(2));
        let (ia, ib) = (join(&mut st, &a, None), join(&mut st, &b, None));
        a.drain();
        b.drain();
        let t0 = Instant::now();
        st.connect(ia, ib.as_str(), t0);
        st.cancel(ia, ib.as_str());
        st.connect(ia, ib.as_str(), t0 + Duration::from_secs(3));
        a.drain();
        b.drain();
        // The first request's deadline passes: nothing happens to the second.
        st.expire(t0 + Duration::from_secs(6));
        assert!(a.types().is_empty());
        assert!(b.types().is_empty());
        st.expire(t0 + Duration::from_secs(8));
        assert_eq!(a.types(), ["request_timeout"]);
        assert_eq!(b.types(), ["incoming_cancelled"]);
    }

    #[test]
    fn stale_grace_timer_does_not_end_a_resumed_session() {
        let mut st = State::new(settings(), Arc::default(), SigningKey::random());
        let mut a = conn(1);
        let ia = join(&mut st, &a, None);
        let token = a.drain()[0]["token"].as_str().unwrap().to_string();
        let t0 = Instant::now();
        st.disconnected(ia, 1, t0, true);
        let a2 = conn(2);
        assert_eq!(join(&mut st, &a2, Some(&token)), ia);
        // Drops again later: a new grace period, which the first timer must not cut short.
        st.disconnected(ia, 2, t0 + Duration::from_secs(8), true);
        st.expire(t0 + Duration::from_secs(11));
        assert_eq!(st.session_count(), 1);
        st.expire(t0 + Duration::from_secs(19));
        assert_eq!(st.session_count(), 0);
    }

    #[test]
    fn disconnect_of_a_replaced_connection_is_ignored() {
        let mut st = State::new(settings(), Arc::default(), SigningKey::random());
        let (mut a, mut b) = (conn(1), conn(2));
        let ia = join(&mut st, &a, None);
        let ib = join(&mut st, &b, None);
        let token = a.drain()[0]["token"].as_str().unwrap().to_string();
        st.connect(ia, ib.as_str(), Instant::now());
        st.accept(ib, ia.as_str());
        b.drain();
        let a2 = conn(3);
        join(&mut st, &a2, Some(&token));
        assert!(a.handle.ctl.cancel.is_cancelled(), "old connection told to close");
        assert_eq!(a.handle.ctl.close_code.load(Ordering::Relaxed), CLOSE_RESUMED);
        // The old task ends and reports; the session stays attached to the new connection.
        st.disconnected(ia, 1, Instant::now(), true);
        assert!(st.is_current(ia, 3));
        assert!(b.types().is_empty(), "partner must not see peer_away for a hand-over");
    }

    #[test]
    fn identities_are_forgotten_after_the_reloaded_period_but_never_while_online() {
        let mut st = State::new(settings(), Arc::default(), SigningKey::random());
        let (a, b) = (Id::parse("aaaa2345").unwrap(), Id::parse("bbbb2345").unwrap());
        let mut ids = Identities::default();
        ids.register(a, PublicKey([4; identity::KEY_LEN]), 1_000);
        ids.register(b, PublicKey([5; identity::KEY_LEN]), 1_000);
        st = st.with_identities(ids.snapshot(), None);
        let c = conn(1);
        // b is online (an anonymous session cannot hold it, so put it there as its proof would).
        st.start_session(c.handle.clone(), (b, Nonce::random(), Start::Restored), Instant::now(), 1_000, |_| {
            (Vec::new(), 0)
        });
        let ten_days = 1_000 + 10 * 86_400;
        st.forget_identities(ten_days);
        assert_eq!(st.identity_count(), 2, "180 days by default");
        st.set_settings(Settings { identity_forget_after_days: 7, ..settings() });
        st.forget_identities(ten_days);
        assert_eq!(st.identity_count(), 1, "the reloaded period applies at the next sweep");
        assert!(st.ids.key_of(a).is_none() && st.ids.key_of(b).is_some(), "the online identity stays");
        st.check_invariants().unwrap();
    }

    #[test]
    fn full_outbox_kills_instead_of_growing() {
        let (tx, _rx) = mpsc::channel(4);
        let h = ConnHandle { conn_id: 1, source: SRC_A, tx, ctl: ConnCtl::new(CancellationToken::new(), 1 << 20) };
        for _ in 0..4 {
            push(&h, "x".into());
        }
        assert!(!h.ctl.cancel.is_cancelled());
        push(&h, "x".into());
        assert!(h.ctl.cancel.is_cancelled());
        assert_eq!(h.ctl.close_code.load(Ordering::Relaxed), CLOSE_SLOW);

        let (tx, _rx) = mpsc::channel(64);
        let h = ConnHandle { conn_id: 2, source: SRC_A, tx, ctl: ConnCtl::new(CancellationToken::new(), 100) };
        push(&h, "y".repeat(60));
        assert!(!h.ctl.cancel.is_cancelled());
        push(&h, "y".repeat(60));
        assert!(h.ctl.cancel.is_cancelled(), "byte budget enforced");
    }
}
