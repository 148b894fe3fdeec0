//! The signaling key: reconnect tokens and pairing tickets signed with it (HMAC-SHA256), and where it comes from
//! (a key file in the state directory, the configured TURN secret, or one random key per run).
//!
//! Tokens and tickets are verifiable without any stored state, so they survive a restart as long as the key does.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::ids::{Id, ID_LEN};
use crate::config::Config;

type HmacSha256 = Hmac<Sha256>;

/// Name of the key file inside the state directory.
pub const KEY_FILE: &str = "signaling.key";
/// Bytes of MAC kept in a token or ticket: 128 bits is far beyond guessing at any rate limit.
const MAC_LEN: usize = 16;
const NONCE_LEN: usize = 16;
/// A token or ticket dated this far in the future (clock stepped back) is still taken.
const CLOCK_SKEW_SECS: u64 = 300;

/// The HMAC key that signs tokens and tickets. `Debug` never prints it.
#[derive(Clone)]
pub struct SigningKey([u8; 32]);

/// Where the key came from, for the startup log and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `<state_dir>/signaling.key` (created on first start).
    File(PathBuf),
    /// Derived from `turn.secret` / `turn.secret_file`.
    TurnSecret,
    /// Random for this run: IDs and pairings do not survive a restart.
    Random,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

/// The random part of a session, fixed for its lifetime: a resume inside the same process must present it, so a
/// token cannot take over an ID that was since given to somebody else.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Nonce([u8; NONCE_LEN]);

impl Nonce {
    pub fn random() -> Nonce {
        Nonce(rand::random())
    }

    /// Constant-time comparison.
    pub fn matches(&self, other: &Nonce) -> bool {
        self.0.iter().zip(&other.0).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Nonce(***)")
    }
}

/// What a verified token says.
#[derive(Debug, Clone, Copy)]
pub struct TokenClaim {
    pub id: Id,
    pub nonce: Nonce,
    /// Unix time the token was issued.
    pub issued: u64,
}

/// What a verified ticket says: who was the initiator of the pairing, and when it was issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketClaim {
    pub initiator: Id,
    pub responder: Id,
    pub issued: u64,
}

/// The state directory: `signaling.state_dir`, else systemd's `$STATE_DIRECTORY` (the first one listed), else
/// none. The signaling key and the identity store live there.
pub fn state_dir(config: &Config) -> Option<PathBuf> {
    config.signaling.state_dir.clone().or_else(|| {
        // systemd may list several directories, separated by ':'; ponte's unit has one.
        std::env::var_os("STATE_DIRECTORY")
            .and_then(|v| v.to_str().and_then(|s| s.split(':').next()).map(PathBuf::from))
            .filter(|p| !p.as_os_str().is_empty())
    })
}

impl SigningKey {
    pub fn random() -> SigningKey {
        SigningKey(rand::random())
    }

    /// A key derived from a configured secret; the label keeps it apart from the TURN credentials made with it.
    pub fn derive(secret: &str) -> SigningKey {
        let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
        mac.update(b"ponte signaling key v1");
        SigningKey(mac.finalize().into_bytes().into())
    }

    /// Read `<dir>/signaling.key`, or create it (mode 0600, and the directory 0700 if missing) on first start.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<SigningKey> {
        let path = dir.join(KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => return Self::parse_file(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("signaling.state_dir: cannot read {}", path.display())),
        }
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("signaling.state_dir: cannot create {}", dir.display()))?;
        }
        let key = SigningKey::random();
        // Written whole to a temporary file, then linked into place: a crash never leaves a half key, and if two
        // processes race, the first link wins and both use its key.
        let tmp = dir.join(format!(".{KEY_FILE}.{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(format!("{}\n", B64.encode(key.0)).as_bytes())?;
            f.sync_all()
        };
        let result = write().and_then(|()| std::fs::hard_link(&tmp, &path));
        let _ = std::fs::remove_file(&tmp);
        match result {
            Ok(()) => {
                tracing::info!(path = %path.display(), "created the signaling key (IDs and pairings now survive restarts)");
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("signaling.state_dir: cannot read {}", path.display()))?;
                Self::parse_file(&text, &path)
            }
            Err(e) => Err(e).with_context(|| format!("signaling.state_dir: cannot write {}", path.display())),
        }
    }

    fn parse_file(text: &str, path: &Path) -> anyhow::Result<SigningKey> {
        let bytes = B64.decode(text.trim()).ok().and_then(|b| <[u8; 32]>::try_from(b).ok());
        bytes.map(SigningKey).with_context(|| {
            format!(
                "signaling.state_dir: {} is not a ponte signaling key; delete it to have a new one made (clients \
                 then get new IDs once)",
                path.display()
            )
        })
    }

    /// Settle the key for a run: the state directory's key file (`signaling.state_dir`, else systemd's
    /// `$STATE_DIRECTORY`), else one derived from a configured TURN secret, else a random one (logged once).
    pub fn from_config(config: &Config, turn_secret: Option<&str>) -> anyhow::Result<(SigningKey, KeySource)> {
        if let Some(dir) = state_dir(config) {
            let key = SigningKey::load_or_create(&dir)?;
            return Ok((key, KeySource::File(dir.join(KEY_FILE))));
        }
        if let Some(secret) = turn_secret {
            return Ok((SigningKey::derive(secret), KeySource::TurnSecret));
        }
        tracing::info!(
            "no signaling.state_dir and no turn.secret: client IDs and pairings will not survive a restart \
             (set signaling.state_dir to keep them)"
        );
        Ok((SigningKey::random(), KeySource::Random))
    }

    fn mac(&self, label: &[u8], parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(label);
        for p in parts {
            mac.update(&(p.len() as u32).to_be_bytes());
            mac.update(p);
        }
        mac
    }

    /// The reconnect token for session `id` with `nonce`, issued at `issued`: `<id>.<base64url(nonce, time, mac)>`.
    pub fn token(&self, id: Id, nonce: &Nonce, issued: u64) -> String {
        let t = issued.to_be_bytes();
        let mac = self.mac(b"ponte token v1", &[id.as_str().as_bytes(), &nonce.0, &t]).finalize().into_bytes();
        let mut body = Vec::with_capacity(NONCE_LEN + 8 + MAC_LEN);
        body.extend_from_slice(&nonce.0);
        body.extend_from_slice(&t);
        body.extend_from_slice(&mac[..MAC_LEN]);
        format!("{id}.{}", B64.encode(body))
    }

    /// Verify a presented token; `None` for anything malformed or not signed with this key. Age is the caller's
    /// business (a live session is resumed by its nonce, whatever the token's age).
    pub fn check_token(&self, token: &str) -> Option<TokenClaim> {
        let (id, body) = token.split_once('.')?;
        if id.len() != ID_LEN || body.len() > 64 {
            return None;
        }
        let id = Id::parse(id)?;
        let body = B64.decode(body).ok()?;
        if body.len() != NONCE_LEN + 8 + MAC_LEN {
            return None;
        }
        let (nonce, rest) = body.split_at(NONCE_LEN);
        let (t, mac) = rest.split_at(8);
        self.mac(b"ponte token v1", &[id.as_str().as_bytes(), nonce, t]).verify_truncated_left(mac).ok()?;
        Some(TokenClaim { id, nonce: Nonce(nonce.try_into().ok()?), issued: u64::from_be_bytes(t.try_into().ok()?) })
    }

    /// The pairing ticket for `initiator` and `responder`, issued at `issued`: `base64url(time, mac)`. Both
    /// partners get the same one.
    pub fn ticket(&self, initiator: Id, responder: Id, issued: u64) -> String {
        let t = issued.to_be_bytes();
        let mac = self
            .mac(b"ponte ticket v1", &[initiator.as_str().as_bytes(), responder.as_str().as_bytes(), &t])
            .finalize()
            .into_bytes();
        let mut body = Vec::with_capacity(8 + MAC_LEN);
        body.extend_from_slice(&t);
        body.extend_from_slice(&mac[..MAC_LEN]);
        B64.encode(body)
    }

    /// Verify a ticket presented for the pairing of `a` and `b` (in either role).
    pub fn check_ticket(&self, ticket: &str, a: Id, b: Id) -> Option<TicketClaim> {
        if ticket.len() > 48 || a == b {
            return None;
        }
        let body = B64.decode(ticket).ok()?;
        if body.len() != 8 + MAC_LEN {
            return None;
        }
        let (t, mac) = body.split_at(8);
        let issued = u64::from_be_bytes(t.try_into().ok()?);
        [(a, b), (b, a)].into_iter().find_map(|(initiator, responder)| {
            self.mac(b"ponte ticket v1", &[initiator.as_str().as_bytes(), responder.as_str().as_bytes(), t])
                .verify_truncated_left(mac)
                .ok()
                .map(|()| TicketClaim { initiator, responder, issued })
        })
    }
}

/// Whether something issued at `issued` is still within `max_age` at `now` (both unix seconds).
pub fn fresh(issued: u64, now: u64, max_age: u64) -> bool {
    issued <= now.saturating_add(CLOCK_SKEW_SECS) && now.saturating_sub(issued) <= max_age
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_with_their_key_and_fields() {
        let k = SigningKey::random();
        let id = Id::random();
        let n = Nonce::random();
        let t = k.token(id, &n, 1000);
        let c = k.check_token(&t).unwrap();
        assert_eq!((c.id, c.issued), (id, 1000));
        assert!(c.nonce.matches(&n));
        assert!(!Nonce::random().matches(&n));
        assert!(SigningKey::random().check_token(&t).is_none(), "another key");
        let other = Id::random();
        assert!(k.check_token(&format!("{other}{}", &t[8..])).is_none(), "the ID is signed");
        let mut flipped = t.clone().into_bytes();
        let last = flipped.len() - 3;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert!(k.check_token(std::str::from_utf8(&flipped).unwrap()).is_none());
        for bad in ["", "nonsense", "k7m2x9p4.AAAA", &format!("{id}."), &t[..t.len() - 2]] {
            assert!(k.check_token(bad).is_none(), "{bad:?}");
        }
        assert!(!format!("{k:?}{n:?}").contains(&t[9..]));
    }

    #[test]
    fn tickets_name_both_ids_and_the_roles() {
        let k = SigningKey::random();
        let (a, b, c) = (Id::random(), Id::random(), Id::random());
        let t = k.ticket(a, b, 77);
        let want = TicketClaim { initiator: a, responder: b, issued: 77 };
        assert_eq!(k.check_ticket(&t, a, b), Some(want));
        assert_eq!(k.check_ticket(&t, b, a), Some(want), "either side may present it");
        assert!(k.check_ticket(&t, a, c).is_none());
        assert!(k.check_ticket(&t, c, b).is_none());
        assert!(SigningKey::random().check_ticket(&t, a, b).is_none());
        assert!(k.check_ticket("AAAA", a, b).is_none());
    }

    #[test]
    fn derived_keys_are_stable_and_distinct() {
        let id = Id::random();
        let n = Nonce::random();
        let t = SigningKey::derive("secret-one-0123456789").token(id, &n, 5);
        assert!(SigningKey::derive("secret-one-0123456789").check_token(&t).is_some());
        assert!(SigningKey::derive("secret-two-0123456789").check_token(&t).is_none());
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ponte-key-test-{}-{}", std::process::id(), rand::random::<u32>()));
        let sub = dir.join("state");
        let k1 = SigningKey::load_or_create(&sub).unwrap();
        let mode = std::fs::metadata(sub.join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let k2 = SigningKey::load_or_create(&sub).unwrap();
        let id = Id::random();
        assert!(k2.check_token(&k1.token(id, &Nonce::random(), 1)).is_some(), "same key after a restart");
        std::fs::write(sub.join(KEY_FILE), "garbage\n").unwrap();
        let e = SigningKey::load_or_create(&sub).unwrap_err().to_string();
        assert!(e.contains("signaling.state_dir") && e.contains("delete it"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn freshness() {
        assert!(fresh(1000, 1000, 10));
        assert!(fresh(990, 1000, 10));
        assert!(!fresh(989, 1000, 10));
        assert!(fresh(1200, 1000, 10), "small clock skew tolerated");
        assert!(!fresh(2000, 1000, 10));
    }
}
