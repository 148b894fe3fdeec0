//! TURN REST credentials (coturn's `use-auth-secret` format): minting for browsers, checking for the TURN server.
//!
//! username = `<expiry-unix-time>:<id>`, password = base64(HMAC-SHA1(secret, username)).

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::config::Secret;

/// A username/password pair handed to a browser for `turn:` URLs.
#[derive(Clone, PartialEq, Eq)]
pub struct RestCredential {
    pub username: String,
    pub password: String,
    /// Unix time after which the TURN server refuses the username.
    pub expires: u64,
}

impl std::fmt::Debug for RestCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestCredential").field("username", &self.username).field("password", &"***").finish()
    }
}

/// Mint a credential for `id` valid for `ttl_secs` from `now_unix`.
pub fn mint(secret: &Secret, id: &str, now_unix: u64, ttl_secs: u64) -> RestCredential {
    let expires = now_unix + ttl_secs;
    let username = format!("{expires}:{id}");
    let password = password_for(secret, &username);
    RestCredential { username, password, expires }
}

/// The password that goes with a TURN REST `username` under `secret`.
pub fn password_for(secret: &Secret, username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.expose().as_bytes()).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The expiry of a TURN REST username (`<expiry>:<id>`, or coturn's bare `<expiry>`), if it is one.
pub fn rest_expiry(username: &str) -> Option<u64> {
    let ts = username.split(':').next()?;
    if ts.is_empty() || ts.len() > 20 || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ts.parse().ok()
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // Computed independently with `printf %s 1433895918:user | openssl dgst -sha1 -hmac north -binary | base64`.
        let s = Secret::new("north");
        assert_eq!(password_for(&s, "1433895918:user"), "/gk4t5tUc08OpM3NjrVjHSFVNmY=");
    }

    #[test]
    fn mint_format_and_expiry() {
        let c = mint(&Secret::new("k"), "abcd1234", 1000, 60);
        assert_eq!(c.username, "1060:abcd1234");
        assert_eq!(rest_expiry(&c.username), Some(1060));
        assert_eq!(c.password, password_for(&Secret::new("k"), "1060:abcd1234"));
        assert!(!format!("{c:?}").contains(&c.password));
        assert_eq!(rest_expiry("bob"), None);
        assert_eq!(rest_expiry("12a:x"), None);
        assert_eq!(rest_expiry("99"), Some(99));
    }
}
