//! The hub's side of a cluster (`[cluster]`, transport in `crate::cluster`): envelopes between nodes and what
//! each one does to this node's half of the state.
//!
//! Each node holds the sessions of the browsers connected to it, and keeps **its half** of every request or
//! pairing that crosses to another node: A's node records "A asked B" / "A is paired with B", B's node records
//! "B was asked by A" / "B is paired with A". A message crosses only when the sending node's half allows it
//! (`signal` needs A paired with B here), and is delivered only when the receiving node's half allows it too
//! (B paired with A there): consent is enforced on both nodes, so a node that lost or never had its half
//! delivers nothing. Limits that protect a person are checked where that person is (per-target request limits
//! and blocks on the target's node, per-source budgets on the sender's), so they are the same as on one node.
//!
//! Envelopes are JSON, addressed by the `to` ID; `from` is always a session of the sending node. A node that
//! goes away (heartbeat expired) or a session that moved to another node leaves its partners' halves in place
//! with a grace timer: they see `peer_away`, and `peer_left` only if the partner does not come back (a `rejoin`
//! with its ticket from the node it landed on) within `signaling.reconnect_grace_secs`.

use std::cmp::Reverse;
use std::net::IpAddr;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{remove_id, remove_incoming, remove_outgoing, State, Timer};
use crate::cluster::{HashOp, Inbound, Outbound, Refused};
use crate::signaling::identity::{Op, Record};
use crate::signaling::ids::Id;
use crate::signaling::keys;
use crate::signaling::protocol::{self, CancelReason, ErrorCode, LeftReason, ServerMsg};
use crate::signaling::stats::Stats;

/// What one node tells another about two IDs: `from` (a session on the sending node) and `to` (one on the
/// receiving node).
///
/// Externally tagged (`{"signal":{…}}`): an internally tagged enum buffers its fields, and a `RawValue` (the
/// signal's payload, passed through unparsed) cannot be read from a buffer.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "snake_case")]
pub enum Remote {
    /// `from` asks `to` to pair (`source`: from's source, for the per-target limit kept on to's node).
    Connect {
        from: Id,
        to: Id,
        key: Option<String>,
        source: IpAddr,
    },
    /// The request reached `from` (the target): the requester `to` hears `request_sent`.
    ConnectOk {
        from: Id,
        to: Id,
    },
    /// An operation of `to` about `from` failed on from's node (or could not be delivered): `to` gets this
    /// error, and a refused `connect` is withdrawn.
    Refused {
        from: Id,
        to: Id,
        code: ErrorCode,
        r: String,
    },
    Cancel {
        from: Id,
        to: Id,
    },
    /// `from` accepted `to`'s request: `to`'s node pairs its half, or answers `bye` if the request is gone.
    Accept {
        from: Id,
        to: Id,
    },
    Decline {
        from: Id,
        to: Id,
    },
    Signal {
        from: Id,
        to: Id,
        data: Box<RawValue>,
    },
    Bye {
        from: Id,
        to: Id,
    },
    Away {
        from: Id,
        to: Id,
    },
    Back {
        from: Id,
        to: Id,
    },
    /// `from`'s session ended: every trace of it in `to`'s session goes, as on one node.
    Left {
        from: Id,
        to: Id,
    },
    /// `from` presented a valid ticket naming `to`.
    Rejoin {
        from: Id,
        to: Id,
        ticket: String,
    },
    /// `from`'s node restored its half of the pairing named by `ticket`: `to`'s node restores its own.
    RejoinDone {
        from: Id,
        to: Id,
        ticket: String,
    },
    Presence {
        from: Id,
        to: Id,
        online: bool,
    },
}

impl Remote {
    fn ids(&self) -> (Id, Id) {
        match self {
            Remote::Connect { from, to, .. }
            | Remote::ConnectOk { from, to }
            | Remote::Refused { from, to, .. }
            | Remote::Cancel { from, to }
            | Remote::Accept { from, to }
            | Remote::Decline { from, to }
            | Remote::Signal { from, to, .. }
            | Remote::Bye { from, to }
            | Remote::Away { from, to }
            | Remote::Back { from, to }
            | Remote::Left { from, to }
            | Remote::Rejoin { from, to, .. }
            | Remote::RejoinDone { from, to, .. }
            | Remote::Presence { from, to, .. } => (*from, *to),
        }
    }
}

/// The text of an error a cross-node operation ends with.
fn message_of(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::UnknownPeer => "no client with that ID is online",
        ErrorCode::AlreadyPaired => "you are already paired with that client",
        ErrorCode::DuplicateRequest => "a request between you two is already pending",
        ErrorCode::TooManyRequests => "too many requests to that client from your address; wait a minute",
        ErrorCode::PeerAway => "that client is reconnecting; the message was dropped",
        ErrorCode::NotPaired => "you are not paired with that client",
        ErrorCode::ClusterUnavailable => CLUSTER_UNAVAILABLE,
        _ => "the other node refused the operation",
    }
}

pub(super) const CLUSTER_UNAVAILABLE: &str =
    "that client is on another node of this service, which cannot be reached right now; try again shortly";

/// Identity table changes as hash operations for Redis (`P:identities`, `P:reserved`).
pub(super) fn to_hash_ops(ops: &[Op]) -> Vec<HashOp> {
    ops.iter()
        .map(|op| match op {
            // One key, one ID across the cluster: Redis refuses the set if another ID holds the key.
            Op::Put(id, r) => HashOp {
                reserved: false,
                field: id.as_str().into(),
                value: Some(String::from_utf8_lossy(&r.to_bytes()).into_owned()),
                unique: Some(r.key.encode()),
            },
            Op::Delete(id) => HashOp { reserved: false, field: id.as_str().into(), value: None, unique: None },
            Op::Reserve(id, until) => {
                HashOp { reserved: true, field: id.as_str().into(), value: Some(until.to_string()), unique: None }
            }
            Op::Unreserve(id) => HashOp { reserved: true, field: id.as_str().into(), value: None, unique: None },
        })
        .collect()
}

fn from_hash_op(h: &HashOp) -> Option<Op> {
    let id = Id::parse(&h.field).filter(|i| i.as_str() == h.field)?;
    Some(match (&h.value, h.reserved) {
        (Some(v), false) => Op::Put(id, Record::from_bytes(v.as_bytes())?),
        (None, false) => Op::Delete(id),
        (Some(v), true) => Op::Reserve(id, v.parse().ok()?),
        (None, true) => Op::Unreserve(id),
    })
}

impl State {
    /// `id` is held by another node: clustered, and no session here.
    pub(super) fn is_remote(&self, id: Id) -> bool {
        self.cluster.is_some() && !self.sessions.contains_key(&id)
    }

    /// Hand `msg` to the cluster for the node of its `to`. `bounce` comes back (as an error to its `to`, a
    /// session here) if it cannot be delivered. Err: refused now (Redis down, queue full).
    pub(super) fn forward(&self, msg: &Remote, bounce: Option<Remote>) -> Result<(), Refused> {
        let Some(link) = &self.cluster else { return Ok(()) };
        let (from, to) = msg.ids();
        let body = serde_json::to_string(msg).unwrap_or_default();
        let bounce = bounce.map(|b| serde_json::to_string(&b).unwrap_or_default());
        link.send(Outbound::To { from: from.as_str().into(), to: to.as_str().into(), body, bounce })
    }

    /// [`State::forward`] for notices nobody waits for (`bye`, `peer_away`…): a refusal is counted, not reported.
    pub(super) fn notify(&self, msg: Remote) {
        let _ = self.forward(&msg, None);
    }

    /// Before a cross-node operation of `me` changes anything: is the cluster reachable? If not, `me` gets
    /// `cluster_unavailable` and the operation is not done.
    pub(super) fn cluster_ready(&self, me: Id, ref_: &str, peer: Id) -> bool {
        let up = self.cluster.as_ref().is_some_and(|l| l.is_up());
        if !up {
            if let Some(l) = &self.cluster {
                l.refused();
            }
            self.err(me, ErrorCode::ClusterUnavailable, CLUSTER_UNAVAILABLE, ref_, Some(peer));
        }
        up
    }

    /// A session started here: claim its ID in the cluster, and learn which of its mutual contacts are online
    /// on other nodes (they are then announced with `presence`).
    pub(super) fn cluster_started(&self, id: Id, exclusive: bool) {
        let Some(link) = &self.cluster else { return };
        link.claim(id.as_str(), exclusive);
        let elsewhere: Vec<String> = self
            .ids
            .mutuals(id)
            .into_iter()
            .filter(|c| !self.sessions.contains_key(c))
            .map(|c| c.as_str().into())
            .collect();
        if !elsewhere.is_empty() {
            let _ = link.send(Outbound::Online { for_id: id.as_str().into(), ids: elsewhere });
        }
    }

    /// Tell the cluster about identity changes (called from `flush`).
    pub(super) fn cluster_identities(&self, ops: &[Op]) {
        if let Some(link) = &self.cluster {
            link.identities(to_hash_ops(ops));
        }
    }

    /// Arm the grace timer of a partner on another node that went away (its node stopped, it moved, or its
    /// node said `peer_away`): if nothing is heard from it before, it is treated as gone.
    fn remote_away(&mut self, id: Id, now: Instant) {
        // The holder's own grace plus a presence TTL: when the holder is alive its `Left` comes first.
        let until = now + self.settings.grace + self.cluster_ttl;
        self.remote_gone.insert(id, until);
        self.timers.push(Reverse((until, Timer::RemoteGrace { id })));
    }

    /// The grace timer of a partner on another node ran out.
    pub(super) fn remote_grace_over(&mut self, id: Id, at: Instant) {
        if self.remote_gone.get(&id) != Some(&at) {
            return;
        }
        self.remote_gone.remove(&id);
        if self.sessions.contains_key(&id) {
            // It moved here: the partners it rejoined are paired with it again (nothing to say); the others
            // waited long enough.
            let holders: Vec<Id> =
                self.sessions.keys().copied().filter(|h| *h != id && self.dangling(*h, id)).collect();
            for h in holders {
                self.forget_remote(h, id);
            }
            return;
        }
        let holders: Vec<Id> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.peers.contains(&id)
                    || s.incoming.iter().any(|(p, _)| *p == id)
                    || s.outgoing.iter().any(|(p, _)| *p == id)
            })
            .map(|(k, _)| *k)
            .collect();
        for h in holders {
            self.forget_remote(h, id);
        }
    }

    /// Every trace of the remote ID `gone` leaves the local session `me`, with the messages one node sends when
    /// a session ends (`peer_left`, `incoming_cancelled`).
    fn forget_remote(&mut self, me: Id, gone: Id) {
        let Some(s) = self.sessions.get_mut(&me) else { return };
        let paired = remove_id(&mut s.peers, gone);
        remove_id(&mut s.led, gone);
        remove_id(&mut s.rejoin_claims, gone);
        s.paired_while_away.retain(|(p, _)| *p != gone);
        let asked_me = remove_incoming(&mut s.incoming, gone);
        let i_asked = remove_outgoing(&mut s.outgoing, gone);
        self.remote_incoming.remove(&(gone, me));
        if paired || i_asked {
            self.send(me, ServerMsg::PeerLeft { peer: gone, reason: LeftReason::Disconnected }.to_text());
        }
        if asked_me {
            self.send(me, ServerMsg::IncomingCancelled { peer: gone, reason: CancelReason::Left }.to_text());
        }
    }

    /// A session of this node ended for good: the other nodes drop their halves with it.
    pub(super) fn cluster_ended(&self, id: Id, peers: &[Id], requests: &[Id]) {
        let Some(link) = &self.cluster else { return };
        link.release(id.as_str());
        let mut told: Vec<Id> = Vec::new();
        for &p in peers.iter().chain(requests) {
            if !self.sessions.contains_key(&p) && !told.contains(&p) {
                told.push(p);
                self.notify(Remote::Left { from: id, to: p });
            }
        }
    }

    /// Another node took `id` over (its browser reconnected or opened a tab there): the session here ends
    /// without saying `peer_left` to its partners (they see it away until it re-pairs from its new node).
    fn taken_over(&mut self, id: Id, now: Instant) {
        let Some(s) = self.sessions.get(&id) else { return };
        if let Some(c) = &s.conn {
            c.ctl.kill(super::CLOSE_TAKEN_OVER);
        }
        let peers = s.peers.clone();
        // Pending requests end as they would if the session ended (end_session below); pairings stay.
        let s = self.sessions.get_mut(&id).expect("checked");
        s.peers.clear();
        s.led.clear();
        self.end_session(id, false);
        for p in peers {
            if self.sessions.contains_key(&p) {
                // A partner here keeps its half: the ID now lives elsewhere and may rejoin.
                self.send(p, ServerMsg::PeerAway { peer: id }.to_text());
            } else {
                self.notify(Remote::Away { from: id, to: p });
            }
        }
        if self.sessions.values().any(|s| s.peers.contains(&id)) {
            self.remote_away(id, now);
        }
    }

    /// The node of `id` stopped, or `id` moved here from another node: its partners here hear `peer_away` (once:
    /// not again while its grace timer runs) and keep their halves until it rejoins or the timer runs out, and
    /// requests to or from it end, as they cannot be answered any more.
    fn partner_gone(&mut self, id: Id, now: Instant) {
        let partners: Vec<Id> =
            self.sessions.iter().filter(|(k, s)| **k != id && s.peers.contains(&id)).map(|(k, _)| *k).collect();
        if !partners.is_empty() && !self.remote_gone.contains_key(&id) {
            for p in &partners {
                self.send(*p, ServerMsg::PeerAway { peer: id }.to_text());
            }
        }
        let askers: Vec<Id> = self
            .sessions
            .iter()
            .filter(|(k, s)| {
                **k != id && (s.incoming.iter().any(|(p, _)| *p == id) || s.outgoing.iter().any(|(p, _)| *p == id))
            })
            .map(|(k, _)| *k)
            .collect();
        for a in askers {
            if let Some(s) = self.sessions.get_mut(&a) {
                let asked_me = remove_incoming(&mut s.incoming, id);
                let i_asked = remove_outgoing(&mut s.outgoing, id);
                self.remote_incoming.remove(&(id, a));
                if i_asked {
                    self.send(a, ServerMsg::PeerLeft { peer: id, reason: LeftReason::Disconnected }.to_text());
                }
                if asked_me {
                    self.send(a, ServerMsg::IncomingCancelled { peer: id, reason: CancelReason::Left }.to_text());
                }
            }
        }
        if !partners.is_empty() {
            self.remote_away(id, now);
        }
    }

    /// Some nodes stopped. The route cache named `known` as theirs; other remote IDs that sessions here are
    /// paired with or have requests with may have been there too (a route forgotten after a failed delivery,
    /// or pointing at another node after a move): ask the cluster which of them no live node holds, and treat
    /// those as gone too (the answer comes back as a `NodeGone` without nodes). Partners already in their grace
    /// period are not asked about again.
    fn locate_remote_partners(&self, known: &[Id], gone: Vec<String>) {
        let Some(link) = &self.cluster else { return };
        let mut ids: Vec<Id> = self
            .sessions
            .values()
            .flat_map(|s| {
                s.peers
                    .iter()
                    .copied()
                    .chain(s.incoming.iter().map(|(p, _)| *p))
                    .chain(s.outgoing.iter().map(|(p, _)| *p))
            })
            .filter(|p| !self.sessions.contains_key(p) && !known.contains(p) && !self.remote_gone.contains_key(p))
            .collect();
        ids.sort();
        ids.dedup();
        if !ids.is_empty() {
            let _ = link.send(Outbound::Locate { ids: ids.iter().map(|i| i.as_str().into()).collect(), gone });
        }
    }

    /// A session for `id` just started here. If `id` was on another node (that node stopped, or the browser
    /// reconnected here), sessions here may still hold their halves of pairings with it: the new session has
    /// none, so those partners see it away until it rejoins with its ticket ([`State::rejoin`] then makes its
    /// half) or its grace ends (`peer_left`). Requests its old session had with them are over.
    pub(super) fn moved_here(&mut self, id: Id, now: Instant) {
        if self.cluster.is_some() {
            self.partner_gone(id, now);
        }
    }

    /// `holder`'s half of a pairing with `id` whose other half is missing: `id` is not a session here (another
    /// node has it, or nobody), or it is but moved here and has not rejoined `holder`.
    fn dangling(&self, holder: Id, id: Id) -> bool {
        self.sessions.get(&holder).is_some_and(|s| s.peers.contains(&id))
            && self.sessions.get(&id).is_none_or(|s| !s.peers.contains(&holder))
    }

    /// Local sessions that list `id` as a contact.
    fn local_contacts_of(&self, id: Id) -> Vec<Id> {
        self.sessions.keys().copied().filter(|c| self.ids.get(*c).is_some_and(|r| r.contacts.contains(&id))).collect()
    }

    /// One message from the cluster task.
    pub fn apply_cluster(&mut self, msg: Inbound, now: Instant) {
        match msg {
            Inbound::Envelope { body } => match serde_json::from_str::<Remote>(&body) {
                Ok(r) => self.on_remote(r, now),
                Err(e) => tracing::warn!("cluster: unreadable envelope from another node (a different version?): {e}"),
            },
            Inbound::Bounced { body, unreachable } => {
                if let Ok(Remote::Refused { from, to, code, r }) = serde_json::from_str::<Remote>(&body) {
                    let code = if unreachable { code } else { ErrorCode::ClusterUnavailable };
                    self.on_remote(Remote::Refused { from, to, code, r }, now);
                }
            }
            Inbound::Online { for_id, ids } => {
                let Some(me) = Id::parse(&for_id) else { return };
                for peer in ids.iter().filter_map(|i| Id::parse(i)) {
                    if self.sessions.contains_key(&me) && self.ids.mutual(me, peer) {
                        self.send(me, ServerMsg::Presence { peer, online: true }.to_text());
                    }
                }
            }
            Inbound::ClaimLost { id } => {
                // Another node handed out the same fresh ID first (about one chance in 10^12): this session
                // cannot keep it. The browser reconnects and gets another.
                let Some(id) = Id::parse(&id) else { return };
                if let Some(c) = self.sessions.get(&id).and_then(|s| s.conn.as_ref()) {
                    c.ctl.kill(super::CLOSE_ID_CLASH);
                }
                self.end_session(id, false);
            }
            Inbound::BindingLost { field, holder, value } => {
                // Another node bound the same new key first (two browsers of one profile, or a reload, hit two
                // nodes at the same instant): its ID is the key's. Our binding goes before the session ends (so
                // the session's end writes no record for it). The connection stays open: its task is asked to
                // have it welcomed again ([`State::rebind`]: it takes the hub's lock after this, so it finds the
                // holder's record put below) as a returning identity is welcomed, with the holder's ID.
                let (Some(lost), Some(holder)) = (Id::parse(&field), Id::parse(&holder)) else { return };
                let Some(record) = Record::from_bytes(value.as_bytes()) else { return };
                if self.ids.key_of(lost).is_some_and(|k| k == record.key) {
                    self.ids.apply_remote(Op::Delete(lost));
                    if let Some(c) = self.sessions.get(&lost).and_then(|s| s.conn.as_ref()) {
                        c.ctl.rebind(record.key);
                    }
                    self.end_session(lost, false);
                }
                self.ids.apply_remote(Op::Put(holder, record));
            }
            Inbound::TakeOver { id } => {
                if let Some(id) = Id::parse(&id) {
                    self.taken_over(id, now);
                }
            }
            Inbound::NodeGone { ids, nodes } => {
                let ids: Vec<Id> = ids.iter().filter_map(|i| Id::parse(i)).collect();
                for &id in &ids {
                    // An ID that moved here meanwhile is not gone ([`State::moved_here`] dealt with it).
                    if !self.sessions.contains_key(&id) {
                        self.partner_gone(id, now);
                    }
                }
                if !nodes.is_empty() {
                    self.locate_remote_partners(&ids, nodes);
                }
            }
            Inbound::Snapshot { ops, kept, written } => {
                let known: std::collections::HashSet<(bool, &str)> =
                    ops.iter().map(|h| (h.reserved, h.field.as_str())).collect();
                let mine = |reserved: bool, id: Id| {
                    written.as_ref().is_some_and(|w| w.contains(&(reserved, id.as_str().to_string())))
                };
                for h in &ops {
                    // A field this node wrote while Redis was away keeps this node's (newer) value.
                    if Id::parse(&h.field).is_some_and(|id| mine(h.reserved, id)) {
                        continue;
                    }
                    if let Some(op) = from_hash_op(h) {
                        self.ids.apply_remote(op);
                    }
                }
                // What this node holds and Redis lacks: Redis lost it (restarted empty), or another node deleted
                // it while this one could not hear (when Redis kept its data and this node did not write it). The
                // latter is confirmed behind this node's queued writes before it is dropped here: a record this
                // node wrote after the snapshot was read is not missing.
                let mut missing = Vec::new();
                let mut confirm = Vec::new();
                for op in self.ids.export() {
                    let (reserved, id) = match &op {
                        Op::Put(id, _) => (false, *id),
                        Op::Reserve(id, _) => (true, *id),
                        _ => continue,
                    };
                    if mine(reserved, id) {
                        missing.push(op);
                    } else if !known.contains(&(reserved, id.as_str())) {
                        if kept && written.is_some() {
                            confirm.push((reserved, id.as_str().to_string()));
                        } else {
                            missing.push(op);
                        }
                    }
                }
                if let Some(link) = &self.cluster {
                    link.confirm_deleted(confirm);
                }
                if !missing.is_empty() {
                    tracing::info!(count = missing.len(), "cluster: writing identities Redis lacks back to it");
                    self.cluster_identities(&missing);
                }
            }
            Inbound::Identities(ops) => {
                for op in ops.iter().filter_map(from_hash_op) {
                    // A consent given on another node can make a pairing of contacts mutual here (both added
                    // each other at about the same time, each on its own node): the local side then learns
                    // whether the other is online, as it would have from its own `contact_add`.
                    let changed = match &op {
                        Op::Put(id, _) => Some(*id),
                        _ => None,
                    };
                    let before: Vec<(Id, bool)> = changed
                        .map(|id| self.local_contacts_of(id).into_iter().map(|c| (c, self.ids.mutual(id, c))).collect())
                        .unwrap_or_default();
                    self.ids.apply_remote(op);
                    if let (Some(id), Some(link)) = (changed, &self.cluster) {
                        for (c, was) in before {
                            if !was && self.ids.mutual(id, c) {
                                let _ = link.send(Outbound::Online {
                                    for_id: c.as_str().into(),
                                    ids: vec![id.as_str().into()],
                                });
                            }
                        }
                    }
                }
            }
        }
    }

    /// An envelope from another node, about `to` (a session here, or nobody any more).
    fn on_remote(&mut self, msg: Remote, now: Instant) {
        let (from, to) = msg.ids();
        if from == to {
            return;
        }
        if self.sessions.contains_key(&from) {
            // `from` is a session here now: this was sent by (or on behalf of) its old session on the node it
            // left, and is stale. Acting on it would undo what its session here did (a `left` would drop a
            // pairing it rejoined here).
            tracing::debug!(%from, %to, "cluster: envelope from an ID that now lives on this node; ignored");
            return;
        }
        // Anything from `from` means it is alive on some node.
        if !matches!(msg, Remote::Away { .. } | Remote::Left { .. }) {
            self.remote_gone.remove(&from);
        }
        if !self.sessions.contains_key(&to) {
            // Gone from here meanwhile. A request or a signal gets the answer it would get on one node.
            match msg {
                Remote::Connect { .. } => self.refuse(to, from, ErrorCode::UnknownPeer, "connect"),
                Remote::Signal { .. } => self.refuse(to, from, ErrorCode::NotPaired, "signal"),
                Remote::Accept { .. } => self.notify(Remote::Bye { from: to, to: from }),
                _ => {}
            }
            return;
        }
        match msg {
            Remote::Connect { key, source, .. } => self.remote_connect(from, to, key, source, now),
            Remote::ConnectOk { .. } => {
                if self.sessions.get(&to).is_some_and(|s| s.outgoing.iter().any(|(p, _)| *p == from)) {
                    self.send(to, ServerMsg::RequestSent { peer: from }.to_text());
                }
            }
            Remote::Refused { code, r, .. } => {
                if r == "connect" {
                    let Some(s) = self.sessions.get_mut(&to) else { return };
                    if !remove_outgoing(&mut s.outgoing, from) {
                        return; // already timed out or cancelled
                    }
                }
                self.stats.error(code);
                self.send(to, protocol::error(code, message_of(code), Some(&r), Some(from)));
            }
            Remote::Cancel { .. } => {
                let Some(s) = self.sessions.get_mut(&to) else { return };
                if remove_incoming(&mut s.incoming, from) {
                    self.remote_incoming.remove(&(from, to));
                    self.send(
                        to,
                        ServerMsg::IncomingCancelled { peer: from, reason: CancelReason::Cancelled }.to_text(),
                    );
                }
            }
            Remote::Accept { .. } => {
                // `from` accepted the request `to` sent: pair this half if the request is still pending here.
                let pending = self.sessions.get_mut(&to).is_some_and(|s| remove_outgoing(&mut s.outgoing, from));
                if pending {
                    self.pair(to, from);
                } else {
                    // Cancelled or timed out here first: the other half must go.
                    self.notify(Remote::Bye { from: to, to: from });
                }
            }
            Remote::Decline { .. } => {
                if self.sessions.get_mut(&to).is_some_and(|s| remove_outgoing(&mut s.outgoing, from)) {
                    self.send(to, ServerMsg::Declined { peer: from }.to_text());
                }
            }
            Remote::Signal { data, .. } => {
                let s = self.sessions.get(&to).expect("checked");
                if !s.peers.contains(&from) {
                    // Consent on this side too: no pairing known here, nothing delivered.
                    return self.refuse(to, from, ErrorCode::NotPaired, "signal");
                }
                match &s.conn {
                    Some(h) => {
                        Stats::inc(&self.stats.relayed);
                        super::push(h, protocol::signal(from, &data));
                    }
                    None => self.refuse(to, from, ErrorCode::PeerAway, "signal"),
                }
            }
            Remote::Bye { .. } => {
                let Some(s) = self.sessions.get_mut(&to) else { return };
                let was = remove_id(&mut s.peers, from);
                remove_id(&mut s.led, from);
                if was {
                    self.send(to, ServerMsg::PeerLeft { peer: from, reason: LeftReason::Bye }.to_text());
                }
            }
            Remote::Away { .. } => {
                if self.sessions.get(&to).is_some_and(|s| s.peers.contains(&from)) {
                    self.send(to, ServerMsg::PeerAway { peer: from }.to_text());
                    self.remote_away(from, now);
                }
            }
            Remote::Back { .. } => {
                if self.sessions.get(&to).is_some_and(|s| s.peers.contains(&from)) {
                    self.send(to, ServerMsg::PeerBack { peer: from }.to_text());
                }
            }
            Remote::Left { .. } => self.forget_remote(to, from),
            Remote::Rejoin { ticket, .. } => self.remote_rejoin(from, to, ticket, now),
            Remote::RejoinDone { ticket, .. } => {
                let Some(c) = self.valid_ticket(&ticket, to, from) else { return };
                let Some(s) = self.sessions.get_mut(&to) else { return };
                if s.peers.contains(&from) || !remove_id(&mut s.rejoin_claims, from) {
                    return;
                }
                remove_outgoing(&mut s.outgoing, from);
                remove_incoming(&mut s.incoming, from);
                self.pair(c.initiator, c.responder);
            }
            Remote::Presence { online, .. } => {
                // Sent only to mutual contacts by the other node; checked again with this node's table.
                let deliver = if online {
                    self.ids.mutual(from, to)
                } else {
                    self.ids.get(to).is_some_and(|r| r.contacts.contains(&from))
                };
                if deliver {
                    self.send(to, ServerMsg::Presence { peer: from, online }.to_text());
                }
            }
        }
    }

    /// Answer an operation of the remote `asker` about the local `me` with an error.
    fn refuse(&self, me: Id, asker: Id, code: ErrorCode, r: &str) {
        self.notify(Remote::Refused { from: me, to: asker, code, r: r.into() });
    }

    fn valid_ticket(&self, ticket: &str, me: Id, to: Id) -> Option<keys::TicketClaim> {
        self.key
            .check_ticket(ticket, me, to)
            .filter(|c| keys::fresh(c.issued, crate::credentials::unix_now(), self.settings.token_max_age))
    }

    /// `connect` from `from` (on another node) to the local `to`: the checks that protect `to` are made here.
    fn remote_connect(&mut self, from: Id, to: Id, key: Option<String>, source: IpAddr, now: Instant) {
        const R: &str = "connect";
        if self.ids.blocks(to, from) {
            return self.refuse(to, from, ErrorCode::UnknownPeer, R);
        }
        let s = self.sessions.get(&to).expect("checked by the caller");
        if s.peers.contains(&from) {
            return self.refuse(to, from, ErrorCode::AlreadyPaired, R);
        }
        if s.incoming.iter().any(|(p, _)| *p == from) || s.outgoing.iter().any(|(p, _)| *p == from) {
            return self.refuse(to, from, ErrorCode::DuplicateRequest, R);
        }
        let pending = s.incoming.iter().filter(|(_, src)| *src == source).count();
        if pending >= self.settings.requests_per_target_per_min {
            return self.refuse(to, from, ErrorCode::TooManyRequests, R);
        }
        let deadline = now + self.settings.request_timeout;
        if let Some(s) = self.sessions.get_mut(&to) {
            s.incoming.push((from, source));
        }
        self.remote_incoming.insert((from, to), deadline);
        self.timers.push(Reverse((deadline, Timer::Request { from, to })));
        self.send(to, ServerMsg::Incoming { peer: from, peer_key: key.or_else(|| self.key_str(from)) }.to_text());
        self.notify(Remote::ConnectOk { from: to, to: from });
    }

    /// `rejoin` presented on another node by `from` for the local `to`.
    fn remote_rejoin(&mut self, from: Id, to: Id, ticket: String, now: Instant) {
        let Some(c) = self.valid_ticket(&ticket, to, from) else { return };
        let _ = now;
        let s = self.sessions.get_mut(&to).expect("checked by the caller");
        if s.peers.contains(&from) {
            // `to` never left the pairing (its partner's node stopped, or the partner moved): it is back.
            self.send(to, ServerMsg::PeerBack { peer: from }.to_text());
            self.notify(Remote::RejoinDone { from: to, to: from, ticket });
            return;
        }
        if !remove_id(&mut s.rejoin_claims, from) {
            // `to` has not presented its ticket yet: when it does, its node asks `from`'s.
            return;
        }
        remove_outgoing(&mut s.outgoing, from);
        remove_incoming(&mut s.incoming, from);
        self.pair(c.initiator, c.responder);
        self.notify(Remote::RejoinDone { from: to, to: from, ticket });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_with_raw_payloads() {
        let (a, b) = (Id::parse("abcd2345").unwrap(), Id::parse("wxyz6789").unwrap());
        let data = RawValue::from_string(r#"{"sdp":"v=0","n":[1,2]}"#.into()).unwrap();
        let text = serde_json::to_string(&Remote::Signal { from: a, to: b, data }).unwrap();
        let Remote::Signal { from, to, data } = serde_json::from_str(&text).unwrap() else { panic!("{text}") };
        assert_eq!((from, to, data.get()), (a, b, r#"{"sdp":"v=0","n":[1,2]}"#));
        let text =
            serde_json::to_string(&Remote::Refused { from: a, to: b, code: ErrorCode::PeerAway, r: "signal".into() })
                .unwrap();
        assert!(matches!(serde_json::from_str(&text).unwrap(), Remote::Refused { code: ErrorCode::PeerAway, .. }));
        // A forged or damaged ID is refused, not guessed at.
        assert!(serde_json::from_str::<Remote>(r#"{"bye":{"from":"ABCD-2345","to":"wxyz6789"}}"#).is_err());
    }
}
