//! Authentication (RFC 8489 §9.2 long-term credentials, RFC 8656 §5): stateless nonces, TURN REST and static users, MESSAGE-INTEGRITY(-SHA256), and the per-source 401 rate limit.
//!
//! Nothing here keeps per-request state: a nonce is `hex(issue time) || HMAC(server key, time || client IP)`,
//! so a flood of unauthenticated requests costs one HMAC each and no memory. The only table is the fixed-size
//! per-source answer limiter (hashed buckets, no growth).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;
use sha2::Sha256;

use super::codec::{self, ATTR_MESSAGE_INTEGRITY, ATTR_MESSAGE_INTEGRITY_SHA256, STUN_HEADER};
use crate::config::{Secret, TurnConfig};
use crate::credentials;

/// How long a nonce is good for before the client gets 438 Stale Nonce and retries with a fresh one.
pub const NONCE_TTL_SECS: u64 = 600;
/// Buckets in the answer limiter; colliding sources share a bucket (fail-safe: they are limited together).
const LIMITER_SLOTS: usize = 4096;

/// The long-term credential key: MD5(username ":" realm ":" password) (RFC 8489 §9.2.2).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    Valid,
    /// Ours but too old: answer 438 with a fresh nonce.
    Stale,
    /// Not ours (forged, other client, other server run): also 438, RFC 8489 treats both alike.
    Invalid,
}

/// Which integrity attribute a request used, so the response answers in kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    Sha1,
    Sha256,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// A TURN REST username whose expiry has passed.
    Expired,
    /// Neither a REST username (no secrets) nor a static user.
    Unknown,
}

pub struct Auth {
    pub realm: String,
    secrets: Vec<Secret>,
    users: HashMap<String, [u8; 16]>,
    nonce_key: [u8; 32],
    limiter: RateLimiter,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("realm", &self.realm)
            .field("secrets", &self.secrets.len())
            .field("users", &self.users.len())
            .finish()
    }
}

impl Auth {
    pub fn new(cfg: &TurnConfig, secrets: &[Secret]) -> Auth {
        let users = cfg
            .users
            .iter()
            .map(|u| (u.username.clone(), long_term_key(&u.username, &cfg.realm, u.password.expose())))
            .collect();
        Auth {
            realm: cfg.realm.clone(),
            secrets: secrets.iter().filter(|s| !s.is_empty()).cloned().collect(),
            users,
            nonce_key: rand::random(),
            limiter: RateLimiter::new(cfg.unauthenticated_rate_per_ip),
        }
    }

    fn nonce_mac(&self, ts: u64, ip: IpAddr) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.nonce_key).expect("any key length");
        mac.update(&ts.to_be_bytes());
        match ip {
            IpAddr::V4(a) => mac.update(&a.octets()),
            IpAddr::V6(a) => mac.update(&a.octets()),
        }
        mac
    }

    /// A nonce bound to the client's IP and the current time (40 hex characters).
    pub fn mint_nonce(&self, ip: IpAddr, now_unix: u64) -> String {
        let tag = self.nonce_mac(now_unix, ip).finalize().into_bytes();
        let mut s = format!("{now_unix:016x}");
        for b in &tag[..12] {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    pub fn check_nonce(&self, nonce: &[u8], ip: IpAddr, now_unix: u64) -> NonceCheck {
        if nonce.len() != 40 || !nonce.iter().all(u8::is_ascii_hexdigit) {
            return NonceCheck::Invalid;
        }
        let hex = |s: &[u8]| -> Option<Vec<u8>> {
            s.chunks(2).map(|c| u8::from_str_radix(std::str::from_utf8(c).ok()?, 16).ok()).collect()
        };
        let (Some(ts), Some(tag)) = (hex(&nonce[..16]), hex(&nonce[16..])) else { return NonceCheck::Invalid };
        let ts = u64::from_be_bytes(ts.try_into().expect("8 bytes"));
        // verify_truncated_left compares in constant time.
        if self.nonce_mac(ts, ip).verify_truncated_left(&tag).is_err() {
            return NonceCheck::Invalid;
        }
        if ts > now_unix + 5 || now_unix - ts.min(now_unix) >= NONCE_TTL_SECS {
            return NonceCheck::Stale;
        }
        NonceCheck::Valid
    }

    /// Candidate keys for `username`: a static user's key, or one per accepted REST secret (rotation) when the
    /// username is `<expiry>:<id>` and the expiry is not past.
    pub fn keys_for(&self, username: &str, now_unix: u64) -> Result<Vec<[u8; 16]>, KeyError> {
        if let Some(k) = self.users.get(username) {
            return Ok(vec![*k]);
        }
        let Some(expiry) = credentials::rest_expiry(username) else { return Err(KeyError::Unknown) };
        if self.secrets.is_empty() {
            return Err(KeyError::Unknown);
        }
        if expiry < now_unix {
            return Err(KeyError::Expired);
        }
        Ok(self
            .secrets
            .iter()
            .map(|s| long_term_key(username, &self.realm, &credentials::password_for(s, username)))
            .collect())
    }

    /// May we send one more unsigned answer (Binding success, 401/438, error) to this source now? `source` is
    /// the client's [`source_of`](super::core::source_of), so an IPv6 /64 shares one budget.
    pub fn allow_answer(&self, source: IpAddr, now_unix: u64) -> bool {
        self.limiter.allow(source, now_unix)
    }

    /// A config reload changed `turn.unauthenticated_rate_per_ip`.
    pub fn set_answer_rate(&self, per_sec: u32) {
        self.limiter.per_sec.store(per_sec, Ordering::Relaxed);
    }
}

/// Verify the request's integrity with `key`: MESSAGE-INTEGRITY-SHA256 when present (stronger), else
/// MESSAGE-INTEGRITY. Computed over the raw bytes with the header length adjusted as RFC 8489 §14.5/§14.6 say,
/// without copying the message.
pub fn verify(raw: &[u8], key: &[u8]) -> Option<Integrity> {
    let mut mi = None;
    let mut mi256 = None;
    for a in codec::attrs(raw) {
        let (t, r) = a.ok()?;
        if t == ATTR_MESSAGE_INTEGRITY && mi.is_none() && mi256.is_none() {
            mi = Some((r.start - 4, r.clone()));
        } else if t == ATTR_MESSAGE_INTEGRITY_SHA256 && mi256.is_none() {
            mi256 = Some((r.start - 4, r.clone()));
        }
    }
    if let Some((at, v)) = mi256 {
        // Truncation to 16..=32 bytes in steps of 4 is allowed (RFC 8489 §14.6).
        if v.len() < 16 || v.len() > 32 || v.len() % 4 != 0 {
            return None;
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
        feed(&mut mac, raw, at, 4 + v.len());
        return mac.verify_truncated_left(&raw[v]).ok().map(|_| Integrity::Sha256);
    }
    let (at, v) = mi?;
    if v.len() != 20 {
        return None;
    }
    let mut mac = Hmac::<Sha1>::new_from_slice(key).ok()?;
    feed(&mut mac, raw, at, 24);
    mac.verify_slice(&raw[v]).ok().map(|_| Integrity::Sha1)
}

/// HMAC input: the header with its length field covering up to the end of the integrity attribute, then
/// everything before the attribute.
fn feed<M: Mac>(mac: &mut M, raw: &[u8], at: usize, attr_len: usize) {
    let len = (at - STUN_HEADER + attr_len) as u16;
    mac.update(&raw[0..2]);
    mac.update(&len.to_be_bytes());
    mac.update(&raw[4..at]);
}

/// Append MESSAGE-INTEGRITY-SHA256 to an encoded message (stun 0.17 has no setter for it).
pub fn add_integrity_sha256(m: &mut stun::message::Message, key: &[u8]) {
    let at = m.raw.len();
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    feed(&mut mac, &m.raw, at, 36);
    let tag = mac.finalize().into_bytes();
    m.add(stun::attributes::AttrType(ATTR_MESSAGE_INTEGRITY_SHA256), &tag);
}

/// Fixed-size per-source limiter: each slot packs (second << 32 | count) in one atomic, so checking is
/// lock-free and memory never grows with the number of sources.
struct RateLimiter {
    slots: Box<[AtomicU64]>,
    per_sec: std::sync::atomic::AtomicU32,
    hasher: std::collections::hash_map::RandomState,
}

impl RateLimiter {
    fn new(per_sec: u32) -> Self {
        RateLimiter {
            slots: (0..LIMITER_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            per_sec: per_sec.into(),
            hasher: Default::default(),
        }
    }

    fn allow(&self, ip: IpAddr, now: u64) -> bool {
        let per_sec = self.per_sec.load(Ordering::Relaxed);
        if per_sec == 0 {
            return true;
        }
        let slot = &self.slots[(self.hasher.hash_one(ip) as usize) % LIMITER_SLOTS];
        let sec = now & 0xFFFF_FFFF;
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            let (s, c) = (cur >> 32, cur & 0xFFFF_FFFF);
            let next = if s == sec {
                if c >= per_sec as u64 {
                    return false;
                }
                (sec << 32) | (c + 1)
            } else {
                (sec << 32) | 1
            };
            match slot.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(v) => cur = v,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StaticUser;

    fn auth() -> Auth {
        let mut cfg = TurnConfig::default();
        cfg.users.push(StaticUser { username: "alice".into(), password: Secret::new("wonderland") });
        cfg.unauthenticated_rate_per_ip = 3;
        Auth::new(&cfg, &[Secret::new("current-secret"), Secret::new("old-secret")])
    }

    #[test]
    fn nonce_is_bound_to_ip_and_time() {
        let a = auth();
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        let n = a.mint_nonce(ip, 1000);
        assert_eq!(a.check_nonce(n.as_bytes(), ip, 1000), NonceCheck::Valid);
        assert_eq!(a.check_nonce(n.as_bytes(), ip, 1000 + NONCE_TTL_SECS - 1), NonceCheck::Valid);
        assert_eq!(a.check_nonce(n.as_bytes(), ip, 1000 + NONCE_TTL_SECS), NonceCheck::Stale);
        assert_eq!(a.check_nonce(n.as_bytes(), "198.51.100.2".parse().unwrap(), 1000), NonceCheck::Invalid);
        let mut forged = n.clone().into_bytes();
        forged[39] = if forged[39] == b'0' { b'1' } else { b'0' };
        assert_eq!(a.check_nonce(&forged, ip, 1000), NonceCheck::Invalid);
        assert_eq!(a.check_nonce(b"short", ip, 1000), NonceCheck::Invalid);
        assert_eq!(a.check_nonce(&[b'z'; 40], ip, 1000), NonceCheck::Invalid);
        // A different server run (new key) does not accept it.
        assert_eq!(auth().check_nonce(n.as_bytes(), ip, 1000), NonceCheck::Invalid);
    }

    #[test]
    fn rest_usernames_and_rotation() {
        let a = auth();
        let keys = a.keys_for("2000:bob", 1000).unwrap();
        assert_eq!(keys.len(), 2, "one key per accepted secret");
        let pw = credentials::password_for(&Secret::new("old-secret"), "2000:bob");
        assert_eq!(keys[1], long_term_key("2000:bob", "ponte", &pw));
        assert_eq!(a.keys_for("999:bob", 1000), Err(KeyError::Expired));
        assert_eq!(a.keys_for("mallory", 1000), Err(KeyError::Unknown));
        assert_eq!(a.keys_for("alice", 1000).unwrap(), vec![long_term_key("alice", "ponte", "wonderland")]);
    }

    #[test]
    fn rfc5769_long_term_vector() {
        // RFC 5769 §2.4: username "マトリックス" (SASLprep'd), password "TheMatrIX", realm "example.org"
        // — we check the key derivation form with an ASCII username instead (no SASLprep here).
        let k = long_term_key("user", "realm", "pass");
        assert_eq!(k.len(), 16);
        assert_ne!(k, long_term_key("user", "realm", "pasS"));
    }

    #[test]
    fn integrity_round_trip_sha1_and_sha256() {
        use stun::message::Setter;
        let key = long_term_key("u", "r", "p");
        let mut m = codec::message(codec::METHOD_ALLOCATE, 0, [3; 12]);
        m.add(stun::attributes::AttrType(codec::ATTR_USERNAME), b"u");
        stun::integrity::MessageIntegrity(key.to_vec()).add_to(&mut m).unwrap();
        stun::fingerprint::FINGERPRINT.add_to(&mut m).unwrap();
        assert_eq!(verify(&m.raw, &key), Some(Integrity::Sha1));
        assert_eq!(verify(&m.raw, &long_term_key("u", "r", "x")), None);
        let mut tampered = m.raw.clone();
        tampered[25] ^= 1;
        assert_eq!(verify(&tampered, &key), None);

        let mut m2 = codec::message(codec::METHOD_ALLOCATE, 0, [4; 12]);
        m2.add(stun::attributes::AttrType(codec::ATTR_USERNAME), b"u");
        add_integrity_sha256(&mut m2, &key);
        assert_eq!(verify(&m2.raw, &key), Some(Integrity::Sha256));
        assert_eq!(verify(&m2.raw, &[0u8; 16]), None);
        // No integrity at all.
        assert_eq!(verify(&codec::message(1, 0, [0; 12]).raw, &key), None);
    }

    #[test]
    fn limiter_caps_per_second_per_source() {
        let a = auth();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!((0..3).all(|_| a.allow_answer(ip, 50)));
        assert!(!a.allow_answer(ip, 50));
        assert!(a.allow_answer(ip, 51), "next second refills");
    }
}
