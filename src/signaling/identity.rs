//! Lasting identities (docs/protocol.md, "Identities, contacts and presence"): the proof of a browser's key, and
//! the binding table ID <-> public key with last-seen times, presence consents and blocks.
//!
//! [`Identities`] is the whole table in memory and touches no file: every change is also queued as an [`Op`],
//! which `store.rs` writes to disk on its own thread. So the hub, which runs under one lock, never waits for a
//! disk, and the fuzzer and unit tests drive the table without one.

use std::collections::HashMap;

use base64::Engine;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
use serde::{Deserialize, Serialize};

use super::ids::Id;

/// An uncompressed P-256 point, `0x04 || X || Y`, as WebCrypto's `exportKey("raw")` gives it.
pub const KEY_LEN: usize = 65;
/// Raw `r || s`, as WebCrypto's ECDSA `sign` gives it.
pub const SIG_LEN: usize = 64;
/// Prepended to the challenge before signing, so these signatures mean nothing in any other context.
pub const SIGN_PREFIX: &str = "ponte-identity-v1:";
/// Contacts (presence consents) and, separately, blocks one identity may hold.
pub const MAX_EDGES: usize = 256;
const DAY: u64 = 86_400;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.encode())
    }
}

/// base64url with or without `=` padding (we always send it without; browsers' helpers differ).
fn decode_b64url(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

impl PublicKey {
    /// The wire form: base64url of the 65-byte point. Only the form is checked here; a point that is not on the
    /// curve fails at verification (ring checks it there), which the handshake reports as `bad_signature`.
    pub fn parse(b64: &str) -> Option<PublicKey> {
        let bytes = decode_b64url(b64)?;
        let key: [u8; KEY_LEN] = bytes.try_into().ok()?;
        (key[0] == 0x04).then_some(PublicKey(key))
    }

    pub fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Does `signature_b64` (raw r||s, base64url) sign `SIGN_PREFIX + challenge` with this key?
    pub fn verify(&self, challenge: &str, signature_b64: &str) -> bool {
        let Some(sig) = decode_b64url(signature_b64).filter(|s| s.len() == SIG_LEN) else { return false };
        let mut msg = Vec::with_capacity(SIGN_PREFIX.len() + challenge.len());
        msg.extend_from_slice(SIGN_PREFIX.as_bytes());
        msg.extend_from_slice(challenge.as_bytes());
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.0[..]).verify(&msg, &sig).is_ok()
    }
}

/// A fresh challenge: 32 random bytes, base64url (43 characters).
pub fn challenge() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// What is kept about one identity. Nothing else: no names, no messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: PublicKey,
    /// Unix seconds of the last successful proof or session end.
    pub last_seen: u64,
    /// IDs this identity consented to presence with (`contact_add`).
    pub contacts: Vec<Id>,
    /// IDs this identity blocks.
    pub blocks: Vec<Id>,
}

/// On-disk form of a [`Record`] (JSON in the store's value column: readable with any redb tool, and a field can
/// be added later without a migration).
#[derive(Serialize, Deserialize)]
struct RecordDisk {
    key: String,
    last_seen: u64,
    #[serde(default)]
    contacts: Vec<String>,
    #[serde(default)]
    blocks: Vec<String>,
}

impl Record {
    pub fn to_bytes(&self) -> Vec<u8> {
        let d = RecordDisk {
            key: self.key.encode(),
            last_seen: self.last_seen,
            contacts: self.contacts.iter().map(|i| i.as_str().to_string()).collect(),
            blocks: self.blocks.iter().map(|i| i.as_str().to_string()).collect(),
        };
        serde_json::to_vec(&d).unwrap_or_default()
    }

    /// `None` for a value this version cannot read (it is then skipped with a warning by the loader).
    pub fn from_bytes(b: &[u8]) -> Option<Record> {
        let d: RecordDisk = serde_json::from_slice(b).ok()?;
        let ids = |v: Vec<String>| v.iter().filter_map(|s| Id::parse(s)).take(MAX_EDGES).collect::<Vec<_>>();
        Some(Record {
            key: PublicKey::parse(&d.key)?,
            last_seen: d.last_seen,
            contacts: ids(d.contacts),
            blocks: ids(d.blocks),
        })
    }
}

/// A change to write to disk, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(Id, Record),
    Delete(Id),
    /// The ID of a forgotten identity, reserved until the given unix time.
    Reserve(Id, u64),
    Unreserve(Id),
}

/// Why an edge could not be added.
#[derive(Debug, PartialEq, Eq)]
pub enum EdgeError {
    /// I am not an identity, or the other ID is not one.
    NotIdentity,
    TooMany,
}

#[derive(Debug)]
pub struct Identities {
    by_id: HashMap<Id, Record>,
    by_key: HashMap<PublicKey, Id>,
    /// Forgotten IDs, reserved until the unix time given, so a forgotten ID is not soon handed to another key.
    reserved: HashMap<Id, u64>,
    /// Reservations kept at most (`signaling.max_identities`; unlimited until set).
    max_reserved: usize,
    ops: Vec<Op>,
}

impl Default for Identities {
    fn default() -> Identities {
        Identities {
            by_id: HashMap::new(),
            by_key: HashMap::new(),
            reserved: HashMap::new(),
            max_reserved: usize::MAX,
            ops: Vec::new(),
        }
    }
}

impl Identities {
    /// A table from what the store loaded. Records whose key is already bound to another ID (a damaged file)
    /// are dropped: one key, one ID.
    pub fn load(records: Vec<(Id, Record)>, reserved: Vec<(Id, u64)>) -> Identities {
        let mut t = Identities::default();
        for (id, r) in records {
            if t.by_key.contains_key(&r.key) {
                tracing::warn!(%id, "identity store: a second ID for one key; ignoring it");
                continue;
            }
            t.by_key.insert(r.key, id);
            t.by_id.insert(id, r);
        }
        t.reserved = reserved.into_iter().filter(|(id, _)| !t.by_id.contains_key(id)).collect();
        t
    }

    /// A change made on another node of a cluster (or loaded from Redis): applied without being recorded for
    /// writing. One key, one ID: a record whose key is bound to another ID here is ignored (the first binding wins).
    pub fn apply_remote(&mut self, op: Op) {
        match op {
            Op::Put(id, r) => {
                if self.by_key.get(&r.key).is_some_and(|other| *other != id) {
                    tracing::warn!(%id, "cluster: a second ID for one identity key; ignoring it");
                    return;
                }
                if let Some(old) = self.by_id.get(&id) {
                    if old.key != r.key {
                        self.by_key.remove(&old.key);
                    }
                }
                self.reserved.remove(&id);
                self.by_key.insert(r.key, id);
                self.by_id.insert(id, r);
            }
            Op::Delete(id) => {
                if let Some(r) = self.by_id.remove(&id) {
                    self.by_key.remove(&r.key);
                }
            }
            Op::Reserve(id, until) => {
                if !self.by_id.contains_key(&id) {
                    self.reserved.insert(id, until);
                }
            }
            Op::Unreserve(id) => {
                self.reserved.remove(&id);
            }
        }
    }

    /// Every binding and reservation as write operations (to fill a store that lost them: a cluster's Redis
    /// restarted without persistence).
    pub fn export(&self) -> Vec<Op> {
        let mut ops: Vec<Op> = self.by_id.iter().map(|(id, r)| Op::Put(*id, r.clone())).collect();
        ops.extend(self.reserved.iter().map(|(id, until)| Op::Reserve(*id, *until)));
        ops
    }

    /// Keep at most `n` reserved IDs (applied at the next `forget_unused`).
    pub fn set_max_reserved(&mut self, n: usize) {
        self.max_reserved = n;
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn reserved_len(&self) -> usize {
        self.reserved.len()
    }

    /// The changes since the last call, for the disk writer.
    pub fn take_ops(&mut self) -> Vec<Op> {
        std::mem::take(&mut self.ops)
    }

    pub fn id_of(&self, key: &PublicKey) -> Option<Id> {
        self.by_key.get(key).copied()
    }

    pub fn key_of(&self, id: Id) -> Option<PublicKey> {
        self.by_id.get(&id).map(|r| r.key)
    }

    pub fn get(&self, id: Id) -> Option<&Record> {
        self.by_id.get(&id)
    }

    /// Not free for a new session: bound to a key, or reserved after being forgotten.
    pub fn is_taken(&self, id: Id) -> bool {
        self.by_id.contains_key(&id) || self.reserved.contains_key(&id)
    }

    /// Bind `key` to `id` (the caller chose an ID that is free everywhere and checked the key is new).
    pub fn register(&mut self, id: Id, key: PublicKey, now_unix: u64) {
        debug_assert!(!self.is_taken(id) && !self.by_key.contains_key(&key));
        let r = Record { key, last_seen: now_unix, contacts: Vec::new(), blocks: Vec::new() };
        self.by_key.insert(key, id);
        self.ops.push(Op::Put(id, r.clone()));
        self.by_id.insert(id, r);
    }

    fn put(&mut self, id: Id) {
        if let Some(r) = self.by_id.get(&id) {
            self.ops.push(Op::Put(id, r.clone()));
        }
    }

    /// The identity was just seen (a proof, or its session ended).
    pub fn seen(&mut self, id: Id, now_unix: u64) {
        if let Some(r) = self.by_id.get_mut(&id) {
            // Day resolution is all forgetting needs; writing at most once an hour keeps reconnect storms off
            // the disk.
            if now_unix.saturating_sub(r.last_seen) >= 3600 || now_unix < r.last_seen {
                r.last_seen = now_unix;
                self.put(id);
            }
        }
    }

    /// Both consented to presence with each other, and neither blocks the other.
    pub fn mutual(&self, a: Id, b: Id) -> bool {
        let (Some(ra), Some(rb)) = (self.by_id.get(&a), self.by_id.get(&b)) else { return false };
        ra.contacts.contains(&b) && rb.contacts.contains(&a)
    }

    /// The mutual contacts of `me`.
    pub fn mutuals(&self, me: Id) -> Vec<Id> {
        self.by_id
            .get(&me)
            .map_or_else(Vec::new, |r| r.contacts.iter().copied().filter(|c| self.mutual(me, *c)).collect())
    }

    pub fn blocks(&self, by: Id, whom: Id) -> bool {
        self.by_id.get(&by).is_some_and(|r| r.blocks.contains(&whom))
    }

    /// `me` consents to presence with `peer` (lifting a block of `peer`). Returns whether it is now mutual.
    pub fn add_contact(&mut self, me: Id, peer: Id) -> Result<bool, EdgeError> {
        if !self.by_id.contains_key(&peer) {
            return Err(EdgeError::NotIdentity);
        }
        let r = self.by_id.get_mut(&me).ok_or(EdgeError::NotIdentity)?;
        if !r.contacts.contains(&peer) {
            if r.contacts.len() >= MAX_EDGES {
                return Err(EdgeError::TooMany);
            }
            r.contacts.push(peer);
            r.blocks.retain(|b| *b != peer);
            self.put(me);
        } else if r.blocks.contains(&peer) {
            r.blocks.retain(|b| *b != peer);
            self.put(me);
        }
        Ok(self.mutual(me, peer))
    }

    /// `me` withdraws its consent to `peer`. Returns whether it was mutual before.
    pub fn remove_contact(&mut self, me: Id, peer: Id) -> bool {
        let was = self.mutual(me, peer);
        if let Some(r) = self.by_id.get_mut(&me) {
            if let Some(i) = r.contacts.iter().position(|c| *c == peer) {
                r.contacts.swap_remove(i);
                self.put(me);
            }
        }
        was
    }

    /// `me` blocks `peer` (withdrawing its consent). Returns whether the consent was mutual before.
    pub fn block(&mut self, me: Id, peer: Id) -> Result<bool, EdgeError> {
        if !self.by_id.contains_key(&peer) {
            return Err(EdgeError::NotIdentity);
        }
        let r = self.by_id.get(&me).ok_or(EdgeError::NotIdentity)?;
        if !r.blocks.contains(&peer) && r.blocks.len() >= MAX_EDGES {
            return Err(EdgeError::TooMany);
        }
        let was = self.remove_contact(me, peer);
        let r = self.by_id.get_mut(&me).ok_or(EdgeError::NotIdentity)?;
        if !r.blocks.contains(&peer) {
            r.blocks.push(peer);
            self.put(me);
        }
        Ok(was)
    }

    pub fn unblock(&mut self, me: Id, peer: Id) {
        if let Some(r) = self.by_id.get_mut(&me) {
            if let Some(i) = r.blocks.iter().position(|c| *c == peer) {
                r.blocks.swap_remove(i);
                self.put(me);
            }
        }
    }

    /// Forget identities last seen more than `forget_after_days` ago (except those `in_use` says are online),
    /// with every edge from or to them, and reserve their IDs for as long again; drop reservations that ran
    /// out. Returns the forgotten IDs.
    pub fn forget_unused(&mut self, now_unix: u64, forget_after_days: u64, in_use: impl Fn(Id) -> bool) -> Vec<Id> {
        let keep = forget_after_days.saturating_mul(DAY);
        let gone: Vec<Id> = self
            .by_id
            .iter()
            .filter(|(id, r)| now_unix.saturating_sub(r.last_seen) > keep && !in_use(**id))
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            if let Some(r) = self.by_id.remove(id) {
                self.by_key.remove(&r.key);
            }
            self.ops.push(Op::Delete(*id));
            let until = now_unix.saturating_add(keep);
            self.reserved.insert(*id, until);
            self.ops.push(Op::Reserve(*id, until));
        }
        if !gone.is_empty() {
            let touched: Vec<Id> = self
                .by_id
                .iter_mut()
                .filter_map(|(id, r)| {
                    let before = r.contacts.len() + r.blocks.len();
                    r.contacts.retain(|c| !gone.contains(c));
                    r.blocks.retain(|c| !gone.contains(c));
                    (r.contacts.len() + r.blocks.len() != before).then_some(*id)
                })
                .collect();
            for id in touched {
                self.put(id);
            }
        }
        let mut expired: Vec<Id> =
            self.reserved.iter().filter(|(_, until)| **until <= now_unix).map(|(id, _)| *id).collect();
        // Reservations are bounded like the bindings: beyond as many as the store may hold identities, the ones
        // closest to running out go first (a new ID clashing with one of them is a 1 in 10^11 chance anyway).
        let over = (self.reserved.len() - expired.len()).saturating_sub(self.max_reserved);
        if over > 0 {
            let mut live: Vec<(u64, Id)> =
                self.reserved.iter().filter(|(_, u)| **u > now_unix).map(|(id, u)| (*u, *id)).collect();
            live.sort_unstable();
            expired.extend(live.into_iter().take(over).map(|(_, id)| id));
        }
        for id in expired {
            self.reserved.remove(&id);
            self.ops.push(Op::Unreserve(id));
        }
        gone
    }

    /// A copy of the table without pending writes (the fuzzer's restarted server).
    pub fn snapshot(&self) -> Identities {
        Identities {
            by_id: self.by_id.clone(),
            by_key: self.by_key.clone(),
            reserved: self.reserved.clone(),
            max_reserved: self.max_reserved,
            ops: Vec::new(),
        }
    }

    /// Invariants the fuzzer checks: one key, one ID; edges bounded; nothing both bound and reserved.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.by_id.len() != self.by_key.len() {
            return Err(format!("{} IDs but {} keys", self.by_id.len(), self.by_key.len()));
        }
        for (id, r) in &self.by_id {
            if self.by_key.get(&r.key) != Some(id) {
                return Err(format!("{id}: key index points elsewhere"));
            }
            if r.contacts.len() > MAX_EDGES || r.blocks.len() > MAX_EDGES {
                return Err(format!("{id}: too many edges"));
            }
            if r.contacts.iter().any(|c| r.blocks.contains(c)) {
                return Err(format!("{id}: a contact is also blocked"));
            }
            if self.reserved.contains_key(id) {
                return Err(format!("{id}: bound and reserved"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    fn keypair() -> EcdsaKeyPair {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap()
    }

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    fn id(s: &str) -> Id {
        Id::parse(s).unwrap()
    }

    #[test]
    fn proofs_verify_only_for_the_key_and_the_challenge() {
        let kp = keypair();
        let key = PublicKey::parse(&b64(kp.public_key().as_ref())).unwrap();
        let ch = challenge();
        assert_eq!(ch.len(), 43);
        let rng = SystemRandom::new();
        let sig = kp.sign(&rng, format!("{SIGN_PREFIX}{ch}").as_bytes()).unwrap();
        assert!(key.verify(&ch, &b64(sig.as_ref())));
        // Padding is accepted.
        assert!(key.verify(&ch, &format!("{}==", b64(sig.as_ref()))));
        // Another challenge, the challenge without the prefix, another key, a damaged signature: all refused.
        assert!(!key.verify(&challenge(), &b64(sig.as_ref())));
        let bare = kp.sign(&rng, ch.as_bytes()).unwrap();
        assert!(!key.verify(&ch, &b64(bare.as_ref())));
        let other = PublicKey::parse(&b64(keypair().public_key().as_ref())).unwrap();
        assert!(!other.verify(&ch, &b64(sig.as_ref())));
        let mut bad = sig.as_ref().to_vec();
        bad[10] ^= 1;
        assert!(!key.verify(&ch, &b64(&bad)));
        assert!(!key.verify(&ch, "not base64!"));
        assert!(!key.verify(&ch, &b64(&sig.as_ref()[..63])));
        // A point off the curve parses (form only) but never verifies.
        let mut off = [7u8; KEY_LEN];
        off[0] = 4;
        assert!(!PublicKey(off).verify(&ch, &b64(sig.as_ref())));
    }

    #[test]
    fn key_form() {
        let kp = keypair();
        let raw = kp.public_key().as_ref();
        assert_eq!(raw.len(), KEY_LEN);
        let k = PublicKey::parse(&b64(raw)).unwrap();
        assert_eq!(k.encode().len(), 87);
        assert_eq!(PublicKey::parse(&k.encode()), Some(k));
        assert!(PublicKey::parse(&b64(&raw[..64])).is_none());
        let mut compressed = raw.to_vec();
        compressed[0] = 2;
        assert!(PublicKey::parse(&b64(&compressed)).is_none());
        assert!(PublicKey::parse("").is_none());
        assert!(PublicKey::parse("+/+/").is_none());
    }

    #[test]
    fn records_round_trip() {
        let r = Record {
            key: PublicKey([4; KEY_LEN]),
            last_seen: 17,
            contacts: vec![id("abcd2345")],
            blocks: vec![id("zzzz2345")],
        };
        assert_eq!(Record::from_bytes(&r.to_bytes()), Some(r));
        assert_eq!(Record::from_bytes(b"{}"), None);
        assert_eq!(Record::from_bytes(b"\xff"), None);
    }

    #[test]
    fn consent_blocks_and_forgetting() {
        let (a, b, c) = (id("aaaa2345"), id("bbbb2345"), id("cccc2345"));
        let mut t = Identities::default();
        t.register(a, PublicKey([4; KEY_LEN]), 1000);
        t.register(b, PublicKey([5; KEY_LEN]), 1000);
        assert_eq!(t.add_contact(a, c), Err(EdgeError::NotIdentity));
        assert_eq!(t.add_contact(c, a), Err(EdgeError::NotIdentity));
        assert_eq!(t.add_contact(a, b), Ok(false));
        assert!(!t.mutual(a, b) && !t.mutual(b, a));
        assert_eq!(t.add_contact(b, a), Ok(true));
        assert!(t.mutual(a, b) && t.mutual(b, a));
        assert_eq!(t.mutuals(a), vec![b]);
        // Blocking withdraws consent; adding again lifts the block.
        assert_eq!(t.block(a, b), Ok(true));
        assert!(!t.mutual(a, b) && t.blocks(a, b));
        assert_eq!(t.add_contact(a, b), Ok(true));
        assert!(!t.blocks(a, b));
        assert!(t.remove_contact(b, a));
        assert!(!t.remove_contact(b, a));
        t.check_invariants().unwrap();
        // Forgetting: b unseen for long, a kept alive by `in_use`.
        t.seen(a, 1000 + 200 * DAY);
        let gone = t.forget_unused(1000 + 200 * DAY, 180, |_| false);
        assert_eq!(gone, vec![b]);
        assert!(t.is_taken(b) && t.key_of(b).is_none() && t.id_of(&PublicKey([5; KEY_LEN])).is_none());
        assert!(t.get(a).unwrap().contacts.is_empty());
        t.check_invariants().unwrap();
        // Reservations are capped: with room for none, b's goes at the next sweep.
        let mut capped = t.snapshot();
        capped.set_max_reserved(0);
        capped.forget_unused(1000 + 201 * DAY, 180, |_| true);
        assert!(!capped.is_taken(b) && capped.reserved_len() == 0);
        // The reservation runs out after as long again.
        assert!(t.forget_unused(1000 + 400 * DAY, 180, |x| x == a).is_empty());
        assert!(!t.is_taken(b) && t.reserved_len() == 0);
        let ops = t.take_ops();
        assert!(ops.contains(&Op::Delete(b)) && ops.contains(&Op::Unreserve(b)));
    }

    #[test]
    fn edges_are_bounded() {
        let me = id("aaaa2345");
        let mut t = Identities::default();
        t.register(me, PublicKey([4; KEY_LEN]), 0);
        let mut n = 0u32;
        let mut others = Vec::new();
        while others.len() < MAX_EDGES + 1 {
            let o = Id::random();
            n += 1;
            if t.is_taken(o) {
                continue;
            }
            let mut k = [9u8; KEY_LEN];
            k[1..5].copy_from_slice(&n.to_be_bytes());
            t.register(o, PublicKey(k), 0);
            others.push(o);
        }
        for o in &others[..MAX_EDGES] {
            t.block(me, *o).unwrap();
        }
        assert_eq!(t.block(me, others[MAX_EDGES]), Err(EdgeError::TooMany));
        // Adding a contact lifts its block, so the contacts fill up as the blocks empty.
        for o in &others[..MAX_EDGES] {
            t.add_contact(me, *o).unwrap();
        }
        assert!(t.get(me).unwrap().blocks.is_empty());
        assert_eq!(t.add_contact(me, others[MAX_EDGES]), Err(EdgeError::TooMany));
        t.check_invariants().unwrap();
    }
}
