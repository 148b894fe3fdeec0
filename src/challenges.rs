//! The answers ponte gives to an ACME CA's validation requests: written by the ACME client (src/acme.rs), read by
//! the TLS listener (TLS-ALPN-01 handshakes) and the HTTP server (HTTP-01 requests). Its own module so that the
//! listeners do not depend on the ACME client, which depends on them.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::sign::CertifiedKey;

/// The ALPN protocol of TLS-ALPN-01 validation handshakes (RFC 8737 §6.2).
pub const ALPN: &[u8] = b"acme-tls/1";
/// The HTTP-01 path prefix (RFC 8555 §8.3).
pub const HTTP_PREFIX: &str = "/.well-known/acme-challenge/";

/// The answers ponte currently gives to the CA's validation requests.
#[derive(Debug, Default)]
pub struct Challenges {
    /// TLS-ALPN-01: the self-signed certificate with the acmeIdentifier extension, by domain (the SNI).
    alpn: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    /// HTTP-01: the key authorization, by token.
    http: RwLock<HashMap<String, String>>,
}

impl Challenges {
    /// The TLS-ALPN-01 certificate for a validation handshake naming `domain`.
    pub fn alpn_cert(&self, domain: &str) -> Option<Arc<CertifiedKey>> {
        self.alpn.read().get(&domain.to_ascii_lowercase()).cloned()
    }

    /// The HTTP-01 response body for `token`.
    pub fn http_answer(&self, token: &str) -> Option<String> {
        self.http.read().get(token).cloned()
    }

    pub(crate) fn set_alpn(&self, domain: &str, cert: Arc<CertifiedKey>) {
        self.alpn.write().insert(domain.to_ascii_lowercase(), cert);
    }

    pub(crate) fn set_http(&self, token: &str, key_authorization: &str) {
        self.http.write().insert(token.to_string(), key_authorization.to_string());
    }

    pub(crate) fn clear(&self) {
        self.alpn.write().clear();
        self.http.write().clear();
    }
}
