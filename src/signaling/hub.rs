//! Hub state: sessions (ID, token, live connection or grace period), pending requests, pairings, and the timers
//! that expire them. Everything here is synchronous and runs under one lock that is never held across `.await`;
//! messages leave through each connection's bounded outbox, so the lock order is the delivery order.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use super::ids::Id;
use super::keys::{self, Nonce, SigningKey};
use super::protocol::{self, CancelReason, ErrorCode, IceServer, LeftReason, Limits, PeerTicket, ServerMsg};
use super::stats::Stats;

/// Close code the hub asks a connection to use when it is replaced by a resumed session.
pub const CLOSE_RESUMED: u16 = 4001;
/// Close code for a connection whose outbox overflowed (it does not read fast enough).
pub const CLOSE_SLOW: u16 = 1008;
/// Pending `rejoin`s one session may hold (each needs a valid ticket naming it, so a real client has a handful).
const MAX_REJOIN_CLAIMS: usize = 64;

/// How the hub reaches one live connection task.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub conn_id: u64,
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
}

impl ConnCtl {
    pub fn new(cancel: CancellationToken, max_queued: usize) -> Arc<ConnCtl> {
        Arc::new(ConnCtl { close_code: AtomicU16::new(0), cancel, queued: AtomicUsize::new(0), max_queued })
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
    /// Fixed for the session's life; its tokens carry it (a resume must match it, see [`Nonce`]).
    nonce: Nonce,
    conn: Option<ConnHandle>,
    /// Set while the client is away: when its grace period ends.
    away_until: Option<Instant>,
    /// Accepted pairings. Vecs, not sets: a client has a handful of partners and an empty Vec costs nothing,
    /// which matters at 10k sessions.
    peers: Vec<Id>,
    /// The partners in `peers` whose pairing I initiated (tickets carry the roles).
    led: Vec<Id>,
    /// Partners I presented a valid ticket for (`rejoin`) that have not presented theirs yet.
    rejoin_claims: Vec<Id>,
    /// Requests I sent that are still pending, with their deadline.
    outgoing: Vec<(Id, Instant)>,
    /// Requests sent to me that are still pending.
    incoming: Vec<Id>,
    /// Pairings made while I was away, with my role: `paired` is replayed to me on resume, since the `peers`
    /// list alone does not tell a client its role.
    paired_while_away: Vec<(Id, bool)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Request { from: Id, to: Id },
    Grace { id: Id },
}

/// Settings the state machine needs, copied out of the (live) config; replaced on reload.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub grace: Duration,
    pub request_timeout: Duration,
    pub max_sessions: usize,
    pub limits: Limits,
    /// How old a token or ticket may be to restore an ID or pairing this process does not hold.
    pub token_max_age: u64,
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
        }
    }
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
    /// Too many sessions (live + in grace); the error is queued, the caller closes with 1013.
    ServerFull,
}

#[derive(Debug)]
pub struct State {
    sessions: HashMap<Id, Session>,
    /// Deadlines, lazily invalidated: an entry whose request or grace period is gone by the time it fires is
    /// skipped. Stale entries are bounded by the connect rate limit times the timeout.
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    settings: Settings,
    stats: Arc<Stats>,
    key: SigningKey,
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
        State { sessions: HashMap::new(), timers: BinaryHeap::new(), settings, stats, key }
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Accepted pairings (each counted once, though both partners list it).
    pub fn pairing_count(&self) -> usize {
        self.sessions.values().map(|s| s.peers.len()).sum::<usize>() / 2
    }

    /// Apply reloaded settings: new timers and new sessions use them; running timers keep their deadlines.
    pub fn set_settings(&mut self, settings: Settings) {
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

    /// `hello`: resume the session named by a valid token, restore its ID if this process does not hold it (a
    /// restart), or start a new one. `ice` builds the ICE list for the ID finally chosen.
    pub fn hello(
        &mut self,
        conn: ConnHandle,
        token: Option<&str>,
        now_unix: u64,
        ice: impl FnOnce(Id) -> (Vec<IceServer>, u64),
    ) -> HelloOutcome {
        let now = Instant::now();
        let claim = token.and_then(|t| self.key.check_token(t));
        // A grace period that ran out counts as over even if the sweeper has not removed the session yet.
        let resume = claim.filter(|c| {
            self.sessions
                .get(&c.id)
                .is_some_and(|s| s.nonce.matches(&c.nonce) && s.away_until.is_none_or(|until| until > now))
        });
        if let Some(c) = resume {
            let id = c.id;
            let s = self.sessions.get_mut(&id).expect("checked above");
            let was_away = s.conn.is_none();
            if let Some(old) = s.conn.replace(conn) {
                tracing::debug!(%id, old = old.conn_id, "session resumed by another connection; closing the old one");
                old.ctl.kill(CLOSE_RESUMED);
            }
            s.away_until = None;
            let token = self.key.token(id, &s.nonce, now_unix);
            let peers = s.peers.clone();
            let incoming = s.incoming.clone();
            let outgoing: Vec<Id> = s.outgoing.iter().map(|(p, _)| *p).collect();
            let paired_while_away = std::mem::take(&mut s.paired_while_away);
            let (ice_servers, ice_expires) = ice(id);
            self.send(id, self.welcome(id, token, Start::Resumed, &ice_servers, ice_expires, peers.clone()));
            // Replay what the client may have missed so it can rebuild its view from this connection alone.
            for p in &peers {
                let away = self.sessions.get(p).is_some_and(|ps| ps.conn.is_none());
                if away {
                    self.send(id, ServerMsg::PeerAway { peer: *p }.to_text());
                }
                if was_away {
                    self.send(*p, ServerMsg::PeerBack { peer: id }.to_text());
                }
            }
            for (p, initiator) in paired_while_away.into_iter().filter(|(p, _)| peers.contains(p)) {
                let ticket = if initiator { self.ticket(id, p) } else { self.ticket(p, id) };
                self.send(id, ServerMsg::Paired { peer: p, initiator, ticket }.to_text());
            }
            for p in incoming {
                self.send(id, ServerMsg::Incoming { peer: p }.to_text());
            }
            for p in outgoing {
                self.send(id, ServerMsg::RequestSent { peer: p }.to_text());
            }
            return HelloOutcome::Welcomed(id);
        }

        // A valid token for an ID nobody here holds (the server restarted, or the grace period ended): the ID
        // comes back, without pairings. Only its token holder can do this, and only while the token is fresh.
        let max_age = self.settings.token_max_age;
        let restore = claim.filter(|c| !self.sessions.contains_key(&c.id) && keys::fresh(c.issued, now_unix, max_age));
        if self.sessions.len() >= self.settings.max_sessions {
            self.stats.error(ErrorCode::ServerFull);
            push(
                &conn,
                protocol::error(ErrorCode::ServerFull, "the server is full; try again later", Some("hello"), None),
            );
            return HelloOutcome::ServerFull;
        }
        let (id, nonce) = match restore {
            Some(c) => {
                tracing::debug!(id = %c.id, "ID restored from its token");
                (c.id, c.nonce)
            }
            None => loop {
                let id = Id::random();
                if !self.sessions.contains_key(&id) {
                    break (id, Nonce::random());
                }
            },
        };
        let token = self.key.token(id, &nonce, now_unix);
        self.sessions.insert(
            id,
            Session {
                nonce,
                conn: Some(conn),
                away_until: None,
                peers: Vec::new(),
                led: Vec::new(),
                rejoin_claims: Vec::new(),
                outgoing: Vec::new(),
                incoming: Vec::new(),
                paired_while_away: Vec::new(),
            },
        );
        let (ice_servers, ice_expires) = ice(id);
        let how = if restore.is_some() { Start::Restored } else { Start::Fresh };
        self.send(id, self.welcome(id, token, how, &ice_servers, ice_expires, Vec::new()));
        HelloOutcome::Welcomed(id)
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
        self.timers.push(Reverse((until, Timer::Grace { id })));
        if notify {
            for p in peers {
                self.send(p, ServerMsg::PeerAway { peer: id }.to_text());
            }
        }
    }

    /// End a session for good: partners get `peer_left`, pending requests are withdrawn on both sides.
    fn remove_session(&mut self, id: Id) {
        let Some(s) = self.sessions.remove(&id) else { return };
        tracing::debug!(%id, "session ended");
        for p in s.peers {
            if let Some(ps) = self.sessions.get_mut(&p) {
                remove_id(&mut ps.peers, id);
                remove_id(&mut ps.led, id);
            }
            self.send(p, ServerMsg::PeerLeft { peer: id, reason: LeftReason::Disconnected }.to_text());
        }
        for (to, _) in s.outgoing {
            if let Some(ts) = self.sessions.get_mut(&to) {
                remove_id(&mut ts.incoming, id);
            }
            self.send(to, ServerMsg::IncomingCancelled { peer: id, reason: CancelReason::Left }.to_text());
        }
        for from in s.incoming {
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
            let Some(Reverse((_, timer))) = self.timers.pop() else { break };
            match timer {
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
                        remove_id(&mut s.incoming, from);
                    }
                    self.send(from, ServerMsg::RequestTimeout { peer: to }.to_text());
                    self.send(to, ServerMsg::IncomingCancelled { peer: from, reason: CancelReason::Timeout }.to_text());
                }
                Timer::Grace { id } => {
                    let due = self
                        .sessions
                        .get(&id)
                        .is_some_and(|s| s.conn.is_none() && s.away_until.is_some_and(|u| u <= now));
                    if due {
                        self.remove_session(id);
                    }
                }
            }
        }
    }

    pub fn connect(&mut self, me: Id, to_raw: &str, now: Instant) {
        const R: &str = "connect";
        let Some(to) = Id::parse(to_raw) else {
            return self.err(me, ErrorCode::UnknownPeer, "no client with that ID is online", R, None);
        };
        if to == me {
            return self.err(me, ErrorCode::SelfConnect, "that is your own ID", R, Some(to));
        }
        if !self.sessions.contains_key(&to) {
            return self.err(me, ErrorCode::UnknownPeer, "no client with that ID is online", R, Some(to));
        }
        let Some(s) = self.sessions.get_mut(&me) else { return };
        if s.peers.contains(&to) {
            return self.err(me, ErrorCode::AlreadyPaired, "you are already paired with that client", R, Some(to));
        }
        if s.outgoing.iter().any(|(p, _)| *p == to) || s.incoming.contains(&to) {
            return self.err(
                me,
                ErrorCode::DuplicateRequest,
                "a request between you two is already pending",
                R,
                Some(to),
            );
        }
        let deadline = now + self.settings.request_timeout;
        s.outgoing.push((to, deadline));
        if let Some(ts) = self.sessions.get_mut(&to) {
            ts.incoming.push(me);
        }
        self.timers.push(Reverse((deadline, Timer::Request { from: me, to })));
        self.send(to, ServerMsg::Incoming { peer: me }.to_text());
        self.send(me, ServerMsg::RequestSent { peer: to }.to_text());
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
            remove_id(&mut ts.incoming, me);
        }
        self.send(to, ServerMsg::IncomingCancelled { peer: me, reason: CancelReason::Cancelled }.to_text());
        self.send(me, ServerMsg::RequestCancelled { peer: to }.to_text());
    }

    /// Take the pending request `from` → `me` out of both sessions; `None` if there is none.
    fn take_incoming(&mut self, me: Id, from_raw: &str, ref_: &str) -> Option<Id> {
        let from = Id::parse(from_raw);
        let removed = match (from, self.sessions.get_mut(&me)) {
            (Some(from), Some(s)) => remove_id(&mut s.incoming, from),
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
        let Some(from) = self.take_incoming(me, from_raw, "accept") else { return };
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
        self.send(initiator, ServerMsg::Paired { peer: responder, initiator: true, ticket: ticket.clone() }.to_text());
        self.send(responder, ServerMsg::Paired { peer: initiator, initiator: false, ticket }.to_text());
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
                remove_id(&mut s.incoming, b);
            }
        }
        tracing::debug!(%me, %to, "pairing restored from its ticket");
        self.pair(c.initiator, c.responder);
    }

    pub fn decline(&mut self, me: Id, from_raw: &str) {
        let Some(from) = self.take_incoming(me, from_raw, "decline") else { return };
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
        match self.sessions.get(&to).and_then(|s| s.conn.as_ref()) {
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
        for (a, b) in [(me, to), (to, me)] {
            if let Some(s) = self.sessions.get_mut(&a) {
                remove_id(&mut s.peers, b);
                remove_id(&mut s.led, b);
            }
        }
        self.send(to, ServerMsg::PeerLeft { peer: me, reason: LeftReason::Bye }.to_text());
    }
}

/// Read-only views and a structural self-check for the fuzz target (`signaling::fuzzing`) and tests.
#[cfg(any(test, feature = "fuzzing"))]
impl State {
    /// Partners of `id` as the hub records them (empty for an unknown ID).
    pub fn peers_of(&self, id: Id) -> Vec<Id> {
        self.sessions.get(&id).map(|s| s.peers.clone()).unwrap_or_default()
    }

    /// Pending requests of `id`: (sent by it, sent to it).
    pub fn requests_of(&self, id: Id) -> (Vec<Id>, Vec<Id>) {
        self.sessions
            .get(&id)
            .map(|s| (s.outgoing.iter().map(|(p, _)| *p).collect(), s.incoming.clone()))
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
            if dup(&s.peers) || dup(&s.incoming) || dup(&s.outgoing.iter().map(|(p, _)| *p).collect::<Vec<_>>()) {
                return Err(format!("{id}: duplicate entry in peers/incoming/outgoing"));
            }
            for &p in &s.peers {
                if p == id {
                    return Err(format!("{id} is paired with itself"));
                }
                if !self.sessions.get(&p).is_some_and(|ps| ps.peers.contains(&id)) {
                    return Err(format!("pairing {id}-{p} is not symmetric (or {p} is gone)"));
                }
            }
            for &(to, deadline) in &s.outgoing {
                if to == id || s.peers.contains(&to) || s.incoming.contains(&to) {
                    return Err(format!("request {id}->{to} to itself, to a partner, or crossing another"));
                }
                if !self.sessions.get(&to).is_some_and(|ts| ts.incoming.contains(&id)) {
                    return Err(format!("request {id}->{to} missing from {to}'s incoming"));
                }
                if !timer_at(deadline, Timer::Request { from: id, to }) {
                    return Err(format!("request {id}->{to} has no timer: it would never expire"));
                }
            }
            for &from in &s.incoming {
                if !self.sessions.get(&from).is_some_and(|fs| fs.outgoing.iter().any(|(p, _)| *p == id)) {
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
                    if !timer_at(until, Timer::Grace { id }) {
                        return Err(format!("{id} is away with no grace timer: it would never end"));
                    }
                }
                _ => return Err(format!("{id}: connection and grace period disagree")),
            }
        }
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
        }
    }

    struct TestConn {
        handle: ConnHandle,
        rx: mpsc::Receiver<Utf8Bytes>,
    }

    fn conn(n: u64) -> TestConn {
        let (tx, rx) = mpsc::channel(64);
        TestConn { handle: ConnHandle { conn_id: n, tx, ctl: ConnCtl::new(CancellationToken::new(), 1 << 20) }, rx }
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
        match st.hello(c.handle.clone(), token, 1000, |_| (Vec::new(), 0)) {
            HelloOutcome::Welcomed(id) => id,
            HelloOutcome::ServerFull => panic!("full"),
        }
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
    fn full_outbox_kills_instead_of_growing() {
        let (tx, _rx) = mpsc::channel(4);
        let h = ConnHandle { conn_id: 1, tx, ctl: ConnCtl::new(CancellationToken::new(), 1 << 20) };
        for _ in 0..4 {
            push(&h, "x".into());
        }
        assert!(!h.ctl.cancel.is_cancelled());
        push(&h, "x".into());
        assert!(h.ctl.cancel.is_cancelled());
        assert_eq!(h.ctl.close_code.load(Ordering::Relaxed), CLOSE_SLOW);

        let (tx, _rx) = mpsc::channel(64);
        let h = ConnHandle { conn_id: 2, tx, ctl: ConnCtl::new(CancellationToken::new(), 100) };
        push(&h, "y".repeat(60));
        assert!(!h.ctl.cancel.is_cancelled());
        push(&h, "y".repeat(60));
        assert!(h.ctl.cancel.is_cancelled(), "byte budget enforced");
    }
}
