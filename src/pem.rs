//! Reading PEM certificate and key files (rustls types). A leaf module: the config's file check and the TLS
//! listener both load certificates through it, so config does not depend on the TLS server.

use std::path::Path;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate/key pair could not be used, naming the config key at fault.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct PemError {
    /// `tls.cert` or `tls.key`.
    pub key: &'static str,
    pub message: String,
}

/// The crypto provider every TLS use in ponte shares (ring).
pub fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Read a PEM certificate chain (leaf first, e.g. certbot's `fullchain.pem`) and its private key, and check that
/// they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, PemError> {
    let bad = |key: &'static str, message: String| PemError { key, message };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("tls.cert", format!("cannot read {}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("tls.cert", format!("{} is not a PEM certificate chain: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(bad(
            "tls.cert",
            format!("{} holds no certificate (expected PEM, like fullchain.pem)", cert.display()),
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        bad("tls.key", format!("cannot read a PEM private key from {} (like privkey.pem): {e}", key.display()))
    })?;
    CertifiedKey::from_der(chain, key_der, &provider()).map_err(|e| {
        bad("tls.key", format!("{} does not match the certificate in {}: {e}", key.display(), cert.display()))
    })
}

/// Read one PEM root certificate (a test CA's, for `tls.acme.ca_root`).
pub fn load_root(path: &Path) -> Result<CertificateDer<'static>, String> {
    CertificateDer::from_pem_file(path)
        .map_err(|e| format!("cannot read a PEM certificate from {}: {e}", path.display()))
}

/// What matters about a certificate for renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: i64,
    pub not_after: i64,
    pub dns_names: Vec<String>,
}

/// Validity and DNS names of a DER certificate.
pub fn cert_info(der: &[u8]) -> anyhow::Result<CertInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| anyhow::anyhow!("bad certificate: {e}"))?;
    let validity = cert.validity();
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(n) = name {
                dns_names.push(n.to_ascii_lowercase());
            }
        }
    }
    Ok(CertInfo { not_before: validity.not_before.timestamp(), not_after: validity.not_after.timestamp(), dns_names })
}
