//! Automatic certificates from an ACME CA (Let's Encrypt): on-disk cache, TLS-ALPN-01/HTTP-01 orders, renewal.
//!
//! RFC 8555 (ACME) and RFC 8737 (TLS-ALPN-01); the protocol itself is instant-acme's.
//!
//! The certificate goes into the same [`Certs`] the TLS listener already uses, so a renewal swaps it live. Until
//! the first certificate arrives the TLS port serves a self-signed placeholder for the configured names: the rest
//! of ponte (plain HTTP, TURN) starts and reports READY without waiting for the CA.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_util::sync::CancellationToken;

use crate::challenges::Challenges;
use crate::config::{AcmeChallenge, AcmeConfig};
use crate::metrics::{Sample, Source};
use crate::pem::CertInfo;
use crate::tls::Certs;

pub use crate::challenges::{ALPN, HTTP_PREFIX};
pub use crate::pem::cert_info;

/// Without a failure, the cache is looked at this often (renewal is due long before expiry; a long sleep alone
/// would not notice a clock jump or a certificate replaced by hand).
const CHECK_INTERVAL: Duration = Duration::from_secs(12 * 3600);
/// First wait after a failed attempt, doubled each time up to [`MAX_BACKOFF`]. Five attempts take over an hour,
/// which keeps a broken setup under Let's Encrypt's limit of 5 failed validations per name per hour.
const FIRST_BACKOFF: Duration = Duration::from_secs(5 * 60);
const MAX_BACKOFF: Duration = Duration::from_secs(12 * 3600);
/// How long one order may wait for validation and for issuance.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct AcmeStats {
    issued: AtomicU64,
    failed: AtomicU64,
}

impl Source for AcmeStats {
    fn collect(&self, out: &mut Vec<Sample>) {
        let help = "ACME certificate orders by result";
        out.push(Sample::counter("acme_orders", help, self.issued.load(Ordering::Relaxed)).label("result", "issued"));
        out.push(Sample::counter("acme_orders", help, self.failed.load(Ordering::Relaxed)).label("result", "failed"));
    }
}

/// The files of one ACME server's account and certificate, in a subdirectory of the cache named after the
/// directory URL: switching from staging to production never reuses a staging certificate.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(cfg: &AcmeConfig) -> anyhow::Result<Cache> {
        let root = cfg.cache_dir().context("tls.acme.cache_dir is not set (and $STATE_DIRECTORY is not set)")?;
        let slug: String = cfg
            .directory
            .trim_start_matches("https://")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
            .collect();
        Ok(Cache { dir: root.join(slug) })
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn account(&self) -> PathBuf {
        self.dir.join("account.json")
    }
    /// The certificate chain, leaf first (PEM).
    pub fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
}

fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl CertInfo {
    /// When to renew: 30 days before expiry, or a third of the lifetime before it for short-lived certificates
    /// (whichever comes later), so a 90-day certificate renews at day 60 and a 6-day one at day 4.
    pub fn renew_at(&self) -> i64 {
        let lifetime = (self.not_after - self.not_before).max(0);
        let margin = (30 * 86_400).min(lifetime / 3);
        self.not_after - margin
    }

    pub fn covers(&self, domains: &[String]) -> bool {
        domains.iter().all(|d| self.dns_names.contains(&d.to_ascii_lowercase()))
    }
}

/// The cached certificate, if it is usable for `domains`: readable, matching its key, for every name, unexpired.
fn cached(cache: &Cache, domains: &[String]) -> Option<CertInfo> {
    let ck = crate::pem::load_certified_key(&cache.cert(), &cache.key()).ok()?;
    let info = cert_info(&ck.cert[0]).ok()?;
    (info.covers(domains) && info.not_after > now_unix()).then_some(info)
}

/// The certificate to start with: the cached one when usable, else a self-signed placeholder for the domains.
pub fn initial_certs(cfg: &AcmeConfig) -> anyhow::Result<Arc<Certs>> {
    let cache = Cache::new(cfg)?;
    if let Some(info) = cached(&cache, &cfg.domains) {
        tracing::info!(
            cache = %cache.dir().display(),
            "using the cached ACME certificate for {} (expires in {} days)",
            cfg.domains.join(", "),
            (info.not_after - now_unix()) / 86_400
        );
        return Certs::load_acme(&cache.cert(), &cache.key(), None);
    }
    let mut params = rcgen::CertificateParams::new(cfg.domains.clone()).context("tls.acme.domains")?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "ponte placeholder: certificate not yet issued");
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let ck = certified_key(cert.der().clone(), &key)?;
    Certs::load_acme(&cache.cert(), &cache.key(), Some(ck))
}

/// A certificate made here with its key. Not `CertifiedKey::from_der`: its key check parses the certificate with
/// webpki, which refuses the critical acmeIdentifier extension of a TLS-ALPN-01 answer.
fn certified_key(cert: CertificateDer<'static>, key: &rcgen::KeyPair) -> anyhow::Result<CertifiedKey> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = rustls::crypto::ring::default_provider().key_provider.load_private_key(key)?;
    Ok(CertifiedKey::new(vec![cert], signer))
}

/// The TLS-ALPN-01 answer for `domain`: a self-signed certificate naming only it, with the critical
/// acmeIdentifier extension holding SHA-256 of the key authorization (RFC 8737 §3).
fn alpn_challenge_cert(domain: &str, digest: &[u8]) -> anyhow::Result<CertifiedKey> {
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    certified_key(cert.der().clone(), &key)
}

/// Write `data` to `path` atomically (temporary file, then rename), readable by the owner only.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn create_dir_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// What the operator can check when an attempt fails.
fn advice(cfg: &AcmeConfig) -> String {
    let names = cfg.domains.join(", ");
    match cfg.challenge {
        AcmeChallenge::TlsAlpn01 => format!(
            "for tls-alpn-01 the CA must reach TCP port 443 of this host (tls.listen, forwarded from the router if \
             needed) at the address {names} resolve to; check the DNS records and the port forwarding"
        ),
        AcmeChallenge::Http01 => format!(
            "for http-01 the CA must reach TCP port 80 of this host (http.listen, forwarded from the router if \
             needed) at the address {names} resolve to; check the DNS records and the port forwarding"
        ),
    }
}

/// Keep a valid certificate in `certs` until `shutdown`: issue one when the cache has none, renew when due,
/// retry failures with backoff. Never fatal: the rest of ponte keeps serving whatever happens here.
pub async fn run(
    cfg: AcmeConfig,
    certs: Arc<Certs>,
    challenges: Arc<Challenges>,
    stats: Arc<AcmeStats>,
    shutdown: CancellationToken,
) {
    // instant-acme's HTTPS client uses the process-wide rustls provider; ring is the one ponte builds with.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cache = match Cache::new(&cfg) {
        Ok(c) => c,
        Err(e) => return tracing::error!("ACME disabled: {e:#}"),
    };
    let mut failures: u32 = 0;
    loop {
        let wait = match cached(&cache, &cfg.domains) {
            Some(info) => Duration::from_secs((info.renew_at() - now_unix()).max(0) as u64),
            None => Duration::ZERO,
        };
        if !wait.is_zero() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait.min(CHECK_INTERVAL)) => continue,
            }
        }
        tracing::info!(directory = %cfg.directory, "requesting an ACME certificate for {} ({})",
            cfg.domains.join(", "), cfg.challenge.as_str());
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = issue(&cfg, &cache, &challenges) => r,
        };
        challenges.clear();
        match attempt.and_then(|()| certs.reload(true).map(|_| ())) {
            Ok(()) => {
                failures = 0;
                stats.issued.fetch_add(1, Ordering::Relaxed);
                let days = cached(&cache, &cfg.domains).map(|i| (i.not_after - now_unix()) / 86_400).unwrap_or(0);
                tracing::info!(cache = %cache.dir().display(),
                    "ACME certificate for {} issued and in use (valid for {days} days)", cfg.domains.join(", "));
            }
            Err(e) => {
                failures += 1;
                stats.failed.fetch_add(1, Ordering::Relaxed);
                let backoff = FIRST_BACKOFF.saturating_mul(1 << (failures - 1).min(16)).min(MAX_BACKOFF);
                tracing::error!(
                    "ACME certificate for {} failed (attempt {failures}), retrying in {} min: {e:#}. Hint: {}",
                    cfg.domains.join(", "),
                    backoff.as_secs() / 60,
                    advice(&cfg)
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
}

/// The account from the cache, or a new one registered (and cached) now.
async fn account(cfg: &AcmeConfig, cache: &Cache) -> anyhow::Result<Account> {
    let builder = || -> anyhow::Result<instant_acme::AccountBuilder> {
        Ok(match &cfg.ca_root {
            Some(root) => Account::builder_with_root(root)
                .with_context(|| format!("tls.acme.ca_root: cannot use {}", root.display()))?,
            None => Account::builder().context("cannot load the system's root certificates (ca-certificates)")?,
        })
    };
    let path = cache.account();
    if let Ok(text) = std::fs::read(&path) {
        let creds: AccountCredentials = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not an ACME account file; delete it to register anew", path.display()))?;
        return builder()?
            .from_credentials(creds)
            .await
            .with_context(|| format!("cannot reach the ACME directory {}", cfg.directory));
    }
    let contact =
        cfg.contact.as_ref().map(|c| if c.starts_with("mailto:") { c.clone() } else { format!("mailto:{c}") });
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    // Configuring [tls.acme] is the operator's agreement to the CA's terms (docs/deploy.md says so).
    let new = NewAccount { contact: &contacts, terms_of_service_agreed: true, only_return_existing: false };
    let (account, creds) = builder()?
        .create(&new, cfg.directory.clone(), None)
        .await
        .with_context(|| format!("cannot register an account at the ACME directory {}", cfg.directory))?;
    write_private(&path, &serde_json::to_vec(&creds)?)
        .with_context(|| format!("cannot save the ACME account to {}", path.display()))?;
    tracing::info!(account = %account.id(), "registered an ACME account");
    Ok(account)
}

/// One order, start to finish: the new certificate and key end up in the cache.
async fn issue(cfg: &AcmeConfig, cache: &Cache, challenges: &Challenges) -> anyhow::Result<()> {
    create_dir_private(cache.dir())
        .with_context(|| format!("cannot create the ACME cache directory {}", cache.dir().display()))?;
    let account = account(cfg, cache).await?;
    let identifiers: Vec<Identifier> = cfg.domains.iter().map(|d| Identifier::Dns(d.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await.context("new order")?;
    let kind = match cfg.challenge {
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        AcmeChallenge::Http01 => ChallengeType::Http01,
    };

    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.context("authorization")?;
        let domain = authz.identifier().to_string();
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => anyhow::bail!("the authorization for {domain} is {other:?}"),
        }
        let mut challenge = authz
            .challenge(kind.clone())
            .with_context(|| format!("the ACME server offers no {} challenge for {domain}", cfg.challenge.as_str()))?;
        let key_auth = challenge.key_authorization();
        match cfg.challenge {
            AcmeChallenge::TlsAlpn01 => {
                let cert = alpn_challenge_cert(&domain, key_auth.digest().as_ref())?;
                challenges.set_alpn(&domain, Arc::new(cert));
            }
            AcmeChallenge::Http01 => {
                challenges.set_http(&challenge.token, key_auth.as_str());
            }
        }
        challenge.set_ready().await.with_context(|| format!("challenge for {domain}"))?;
    }

    let retry = RetryPolicy::new().initial_delay(Duration::from_millis(500)).backoff(1.5).timeout(ORDER_TIMEOUT);
    let status = order.poll_ready(&retry).await.context("waiting for validation")?;
    if status != OrderStatus::Ready {
        // Say why: the CA puts what it saw in each failed challenge.
        let mut reasons = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(Ok(mut authz)) = authorizations.next().await {
            let domain = authz.identifier().to_string();
            if let Ok(state) = authz.refresh().await {
                for c in state.challenges.iter().filter(|c| c.r#type == kind) {
                    if let Some(e) = &c.error {
                        reasons.push(format!("{domain}: {e}"));
                    }
                }
            }
        }
        anyhow::bail!("validation failed ({status:?}): {}", reasons.join("; "));
    }

    let mut params = rcgen::CertificateParams::new(cfg.domains.clone())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let key = rcgen::KeyPair::generate()?;
    let csr = params.serialize_request(&key)?;
    order.finalize_csr(csr.der()).await.context("finalize")?;
    let chain = order.poll_certificate(&retry).await.context("waiting for the certificate")?;

    // Check the pair before it replaces anything on disk.
    let (cert_tmp, key_tmp) = (cache.cert().with_extension("new"), cache.key().with_extension("new"));
    write_private(&key_tmp, key.serialize_pem().as_bytes())?;
    write_private(&cert_tmp, chain.as_bytes())?;
    crate::pem::load_certified_key(&cert_tmp, &key_tmp).context("the CA's certificate does not match our key")?;
    std::fs::rename(&key_tmp, cache.key())?;
    std::fs::rename(&cert_tmp, cache.cert())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_time() {
        let day = 86_400;
        let ninety = CertInfo { not_before: 0, not_after: 90 * day, dns_names: vec![] };
        assert_eq!(ninety.renew_at(), 60 * day);
        let six = CertInfo { not_before: 0, not_after: 6 * day, dns_names: vec![] };
        assert_eq!(six.renew_at(), 4 * day);
    }

    #[test]
    fn cache_is_per_directory() {
        let mut cfg = AcmeConfig { cache_dir: Some("/x".into()), ..Default::default() };
        let prod = Cache::new(&cfg).unwrap();
        cfg.directory = crate::config::LETSENCRYPT_STAGING_DIRECTORY.into();
        let staging = Cache::new(&cfg).unwrap();
        assert_ne!(prod.cert(), staging.cert());
        assert!(prod.cert().starts_with("/x/"), "{:?}", prod.cert());
    }

    #[test]
    fn placeholder_then_cache_and_challenge_cert() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = AcmeConfig {
            domains: vec!["chat.example.org".into()],
            cache_dir: Some(dir.path().into()),
            ..Default::default()
        };
        let certs = initial_certs(&cfg).unwrap();
        let info = cert_info(&certs.leaf()).unwrap();
        assert!(info.covers(&cfg.domains));
        assert_eq!(certs.not_after(), None, "a placeholder has no expiry to report");

        let cert = alpn_challenge_cert("chat.example.org", &[7u8; 32]).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert.cert[0]).unwrap();
        let ext = parsed
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        assert_eq!(&ext.value[2..], &[7u8; 32], "an OCTET STRING of the digest");
    }
}
