//! Configuration: the TOML schema (serde, unknown keys rejected), embedded defaults, and `validate()` for cross-field rules.
//!
//! Every error names the full key path, the offending value and the fix. Secrets are wrapped in
//! [`Secret`] so that neither `Debug` nor logs can print them.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

/// A secret string (TURN shared secret, static user password). `Debug`/`Display` print `***`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret's value. Call sites are the only places a secret leaves this wrapper; keep them few.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// A fresh random secret (32 bytes of CSPRNG output, base64url), used when no secret is configured.
    pub fn generate() -> Self {
        use base64::Engine;
        let bytes: [u8; 32] = rand::random();
        Secret(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// The whole configuration file. Every section is optional; a missing file means all defaults.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub turn: TurnConfig,
    pub signaling: SignalingConfig,
    pub metrics: MetricsConfig,
    pub tls: TlsConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address the HTTP + WebSocket listener binds. `[::]:8080` binds dual-stack.
    pub listen: SocketAddr,
    /// Serve the web client from this directory instead of the copy embedded in the binary.
    pub web_root: Option<PathBuf>,
    /// The URL people use to reach this server, e.g. `https://chat.example.org`. Used for share links,
    /// the default WebSocket Origin allow-list, and the host in ICE server URLs when `turn.external_ip` is unset.
    pub public_url: Option<String>,
    /// Extra Origins allowed to open the signaling WebSocket. Empty: only the page's own origin
    /// (the request's Host, or `public_url`).
    pub allowed_origins: Vec<String>,
    /// Reverse proxies whose `X-Forwarded-For` header is believed. Empty: the socket's address is the client's.
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "0.0.0.0:8080".parse().unwrap(),
            web_root: None,
            public_url: None,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// A static TURN user (long-term credentials), for clients that do not use TURN REST credentials.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticUser {
    pub username: String,
    pub password: Secret,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TurnConfig {
    /// Run the embedded STUN/TURN server. When false, clients get only the `signaling.ice_servers` entries.
    pub enabled: bool,
    /// UDP addresses for STUN/TURN (port 3478 is the IANA STUN/TURN port).
    pub listen_udp: Vec<SocketAddr>,
    /// TCP addresses for STUN/TURN.
    pub listen_tcp: Vec<SocketAddr>,
    /// The realm sent in 401 challenges.
    pub realm: String,
    /// TURN REST shared secret (coturn's `static-auth-secret`). Unset with no `secret_file`: a random one per start.
    pub secret: Option<Secret>,
    /// Read the shared secret from this file (first line), e.g. a systemd credential.
    pub secret_file: Option<PathBuf>,
    /// Older secrets still accepted while clients holding credentials minted with them expire (rotation).
    pub accept_secrets: Vec<Secret>,
    /// Lifetime of the TURN REST credentials handed to each browser, in seconds.
    pub credential_ttl_secs: u64,
    /// Static long-term-credential users, in addition to TURN REST.
    pub users: Vec<StaticUser>,
    /// Lowest UDP port used for relay sockets.
    pub relay_port_min: u16,
    /// Highest UDP port used for relay sockets.
    pub relay_port_max: u16,
    /// Local address relay sockets bind on. Unset: the address of the interface with the default route.
    pub relay_ip: Option<IpAddr>,
    /// Public address advertised in XOR-RELAYED-ADDRESS and in ICE URLs, for a server behind a router
    /// with port forwarding.
    pub external_ip: Option<IpAddr>,
    /// Peer networks allowed even though the default policy denies them (allow wins over deny).
    pub allow_peers: Vec<IpNet>,
    /// Peer networks denied in addition to the built-in special-purpose ranges.
    pub deny_peers: Vec<IpNet>,
    /// Most allocations at once, over all users.
    pub max_allocations: usize,
    /// Most allocations at once for one username.
    pub max_allocations_per_user: usize,
    /// Most permissions one allocation may hold.
    pub max_permissions_per_allocation: usize,
    /// Most channels one allocation may bind.
    pub max_channels_per_allocation: usize,
    /// Relay bandwidth cap per allocation in bytes/s, each direction; 0 = unlimited.
    pub max_bandwidth_per_allocation: u64,
    /// Most 401 answers per second to one source IP (stops reflection/amplification through challenges).
    pub unauthenticated_rate_per_ip: u32,
    /// SOFTWARE attribute value in responses. Unset: none is sent (do not tell scanners what we run).
    pub software: Option<String>,
    /// At start, relay a test packet between two allocations on our own TURN server and log the result.
    pub self_test: bool,
    /// Sockets (and tasks) per `listen_udp` address, sharing the port through SO_REUSEPORT so that STUN/TURN over
    /// UDP uses several cores; the kernel keeps each client on one socket. 0 = one per CPU, at most 8.
    pub udp_workers: usize,
}

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            enabled: true,
            listen_udp: vec!["0.0.0.0:3478".parse().unwrap()],
            listen_tcp: vec!["0.0.0.0:3478".parse().unwrap()],
            realm: "ponte".into(),
            secret: None,
            secret_file: None,
            accept_secrets: Vec::new(),
            credential_ttl_secs: 86_400,
            users: Vec::new(),
            relay_port_min: 49152,
            relay_port_max: 65535,
            relay_ip: None,
            external_ip: None,
            allow_peers: Vec::new(),
            deny_peers: Vec::new(),
            max_allocations: 1000,
            max_allocations_per_user: 10,
            max_permissions_per_allocation: 64,
            max_channels_per_allocation: 64,
            max_bandwidth_per_allocation: 0,
            unauthenticated_rate_per_ip: 20,
            software: None,
            self_test: true,
            udp_workers: 0,
        }
    }
}

/// An extra ICE server handed to browsers besides ponte's own (e.g. an external coturn).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IceServerConfig {
    /// `stun:`, `turn:` or `turns:` URLs.
    pub urls: Vec<String>,
    /// Static username (with `credential`).
    pub username: Option<String>,
    /// Static password (with `username`).
    pub credential: Option<Secret>,
    /// A TURN REST shared secret: ponte mints per-client credentials for this server (coturn `use-auth-secret`).
    pub secret: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SignalingConfig {
    /// How long a disconnected client's ID (and its pairings) is kept for it to reconnect with its token.
    pub reconnect_grace_secs: u64,
    /// How long a connect request waits for the other side to accept.
    pub request_timeout_secs: u64,
    /// Largest WebSocket message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Messages per second one connection may send (token bucket, burst of twice this).
    pub messages_per_sec: u32,
    /// Connect requests per minute one connection may send (stops ID scanning).
    pub connect_requests_per_min: u32,
    /// WebSocket connections at once from one IP address.
    pub max_connections_per_ip: usize,
    /// WebSocket connections at once in total.
    pub max_connections: usize,
    /// Interval of server pings; a client that misses two is dropped.
    pub ping_interval_secs: u64,
    /// Extra ICE servers handed to every client after ponte's own.
    pub ice_servers: Vec<IceServerConfig>,
    /// Where the key that signs reconnect tokens and pairing tickets is kept (`signaling.key`, made on first
    /// start), so IDs and pairings survive a restart. Unset: systemd's `$STATE_DIRECTORY`, else a key derived
    /// from `turn.secret`, else a random key per run.
    pub state_dir: Option<PathBuf>,
    /// How old a token may be to resume or restore an ID, and a ticket to restore a pairing.
    pub token_max_age_secs: u64,
    // Per-source limits (a source is an IPv4 address or an IPv6 /64); they outlive connections.
    /// Sessions (connected or in their reconnect grace period) one source may hold.
    pub max_sessions_per_ip: usize,
    /// Connect requests one source may send to one client per minute (and have pending to it at once).
    pub requests_to_one_client_per_min: u32,
}

impl Default for SignalingConfig {
    fn default() -> Self {
        SignalingConfig {
            reconnect_grace_secs: 60,
            request_timeout_secs: 60,
            max_message_bytes: 64 * 1024,
            messages_per_sec: 50,
            connect_requests_per_min: 20,
            max_connections_per_ip: 32,
            max_connections: 10_000,
            ping_interval_secs: 20,
            ice_servers: Vec::new(),
            state_dir: None,
            token_max_age_secs: 86_400,
            max_sessions_per_ip: 64,
            requests_to_one_client_per_min: 3,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first (certbot's `fullchain.pem`). TLS is on when `cert` and `key` are set.
    pub cert: Option<PathBuf>,
    /// PEM private key (certbot's `privkey.pem`).
    pub key: Option<PathBuf>,
    /// The TLS port: HTTPS, WSS and TURN over TLS on one port (only 443 gets through some networks).
    pub listen: SocketAddr,
    /// Extra TURN-over-TLS-only listeners, e.g. the standard `0.0.0.0:5349`.
    pub turns_listen: Vec<SocketAddr>,
    /// Answer plain HTTP on `http.listen` with redirects to HTTPS (except `/healthz`).
    pub redirect_http: bool,
    /// Obtain and renew the certificate automatically from an ACME CA (Let's Encrypt), instead of `cert`/`key`.
    pub acme: Option<AcmeConfig>,
}

/// Let's Encrypt's production directory, the default `tls.acme.directory`.
pub const LETSENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (untrusted certificates, generous rate limits) for trying a setup out.
pub const LETSENCRYPT_STAGING_DIRECTORY: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// How the ACME CA checks that we control the domains.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
pub enum AcmeChallenge {
    /// A TLS handshake on port 443 (`tls.listen`) with ALPN `acme-tls/1` (RFC 8737): needs only the TLS port.
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// `GET /.well-known/acme-challenge/<token>` on port 80 (`http.listen`, forwarded from 80 if needed).
    #[serde(rename = "http-01")]
    Http01,
}

impl AcmeChallenge {
    pub fn as_str(self) -> &'static str {
        match self {
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
            AcmeChallenge::Http01 => "http-01",
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeConfig {
    /// The names on the certificate, e.g. `["chat.example.org"]`; each must resolve to this server.
    pub domains: Vec<String>,
    /// An email address the CA may write to about the account (expiry warnings, policy changes). Optional.
    pub contact: Option<String>,
    /// The ACME directory URL. Default: Let's Encrypt production.
    pub directory: String,
    pub challenge: AcmeChallenge,
    /// Where the account key and certificates are kept. Default: `$STATE_DIRECTORY/acme` (systemd's
    /// `StateDirectory=ponte`, i.e. `/var/lib/ponte/acme`).
    pub cache_dir: Option<PathBuf>,
    /// TEST ONLY: a PEM root certificate trusted for the ACME server's own HTTPS instead of the system roots
    /// (a test CA like pebble serves its API with a certificate no system trusts).
    pub ca_root: Option<PathBuf>,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            domains: Vec::new(),
            contact: None,
            directory: LETSENCRYPT_DIRECTORY.into(),
            challenge: AcmeChallenge::default(),
            cache_dir: None,
            ca_root: None,
        }
    }
}

impl AcmeConfig {
    /// `cache_dir`, or `$STATE_DIRECTORY/acme` when systemd set `STATE_DIRECTORY` (its first entry).
    pub fn cache_dir(&self) -> Option<PathBuf> {
        if let Some(d) = &self.cache_dir {
            return Some(d.clone());
        }
        let state = std::env::var_os("STATE_DIRECTORY")?;
        let first = state.to_str().and_then(|s| s.split(':').next()).filter(|s| !s.is_empty())?;
        Some(Path::new(first).join("acme"))
    }
}

/// Why `name` cannot be a certificate name for ACME http-01/tls-alpn-01, if it cannot.
pub fn domain_problem(name: &str) -> Option<String> {
    if name.starts_with("*.") {
        return Some(format!(
            "{name:?} is a wildcard; wildcards need the dns-01 challenge, which ponte does not do: list each name"
        ));
    }
    if name.parse::<IpAddr>().is_ok() {
        return Some(format!("{name:?} is an IP address; ACME certificates here are for domain names"));
    }
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if name.len() > 253 || !name.contains('.') || !name.split('.').all(ok_label) {
        return Some(format!(
            "{name:?} is not a domain name; write it in lowercase like \"chat.example.org\" (punycode for \
             non-ASCII names, no scheme, port or trailing dot)"
        ));
    }
    None
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: None,
            key: None,
            listen: "0.0.0.0:443".parse().unwrap(),
            turns_listen: Vec::new(),
            redirect_http: false,
            acme: None,
        }
    }
}

impl TlsConfig {
    /// TLS is on with a certificate from files or from ACME.
    pub fn enabled(&self) -> bool {
        (self.cert.is_some() && self.key.is_some()) || self.acme.is_some()
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve Prometheus metrics at `/metrics` on `listen`.
    pub enabled: bool,
    /// Address of the metrics listener. Keep it on loopback (or a management network): metrics reveal usage.
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: true, listen: "127.0.0.1:9477".parse().unwrap() }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines; colours only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, or per-module like `info,ponte::turn=debug`. `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), format: LogFormat::Text }
    }
}

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Full key path, e.g. `turn.relay_port_min`.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a config could not be loaded. Callers branch on it (check-config prints every problem, exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: invalid configuration:\n{}", problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { path: PathBuf, problems: Vec<Problem> },
}

impl ConfigError {
    /// Every problem as a line, for `check-config`.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { path, problems } => {
                problems.iter().map(|p| format!("{}: {p}", path.display())).collect()
            }
            other => vec![other.to_string()],
        }
    }
}

impl Config {
    /// Parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::parse(&text, path)
    }

    /// Parse and validate config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: describe_toml_error(&e, text) })?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid { path: path.to_owned(), problems })
        }
    }

    /// Cross-field rules serde cannot express. Returns every problem, not just the first.
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let mut bad = |key: &str, message: String| p.push(Problem { key: key.into(), message });

        if let Some(root) = &self.http.web_root {
            if !root.is_dir() {
                bad(
                    "http.web_root",
                    format!("{} is not a directory; point it at a folder with index.html, or remove the key to serve the embedded client", root.display()),
                );
            }
        }
        if let Some(url) = &self.http.public_url {
            if parse_origin(url).is_none() {
                bad(
                    "http.public_url",
                    format!("{url:?} is not an http:// or https:// URL; write it like \"https://chat.example.org\""),
                );
            }
        }
        for (i, o) in self.http.allowed_origins.iter().enumerate() {
            if o != "*" && parse_origin(o).is_none() {
                bad(
                    &format!("http.allowed_origins[{i}]"),
                    format!("{o:?} is not an origin; write scheme://host[:port] like \"https://chat.example.org\""),
                );
            }
        }

        let t = &self.turn;
        if t.relay_port_min > t.relay_port_max {
            bad(
                "turn.relay_port_min",
                format!(
                    "relay port range is inverted ({} > turn.relay_port_max {}); set relay_port_min <= relay_port_max",
                    t.relay_port_min, t.relay_port_max
                ),
            );
        }
        if t.udp_workers > 64 {
            bad(
                "turn.udp_workers",
                format!(
                    "{} sockets per address is more than any machine can use; use 0 (one per CPU) or 1-64",
                    t.udp_workers
                ),
            );
        }
        if t.relay_port_min == 0 {
            bad("turn.relay_port_min", "0 is not a port; use a range such as 49152-65535".into());
        }
        if t.secret.is_some() && t.secret_file.is_some() {
            bad("turn.secret", "set either turn.secret or turn.secret_file, not both".into());
        }
        if let Some(s) = &t.secret {
            if s.expose().len() < 16 {
                bad(
                    "turn.secret",
                    "is shorter than 16 characters; use a long random string (e.g. `openssl rand -hex 32`)".into(),
                );
            }
        }
        if let Some(f) = &t.secret_file {
            match std::fs::read_to_string(f) {
                Ok(s) if s.lines().next().map(str::trim).unwrap_or("").is_empty() => {
                    bad("turn.secret_file", format!("{} is empty; write the secret on its first line", f.display()))
                }
                Ok(_) => {}
                Err(e) => bad("turn.secret_file", format!("cannot read {}: {e}", f.display())),
            }
        }
        if t.realm.is_empty() || t.realm.len() > 127 {
            bad("turn.realm", "must be 1 to 127 characters (RFC 8489 §14.9)".into());
        }
        if !(60..=7 * 86_400).contains(&t.credential_ttl_secs) {
            bad(
                "turn.credential_ttl_secs",
                format!("{} is out of range; use 60 to 604800 seconds (default 86400)", t.credential_ttl_secs),
            );
        }
        for (i, u) in t.users.iter().enumerate() {
            if u.username.is_empty() || u.username.contains(':') {
                bad(
                    &format!("turn.users[{i}].username"),
                    format!("{:?} must be non-empty and contain no ':' (':' marks TURN REST usernames)", u.username),
                );
            }
            if u.password.is_empty() {
                bad(&format!("turn.users[{i}].password"), "must not be empty".into());
            }
        }
        if t.enabled {
            if t.listen_udp.is_empty() && t.listen_tcp.is_empty() {
                bad("turn.listen_udp", "turn is enabled but has no listen address; add one (e.g. \"0.0.0.0:3478\") or set turn.enabled = false".into());
            }
            if let Some(ip) = t.external_ip {
                if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
                    bad("turn.external_ip", format!("{ip} cannot be advertised to browsers; set the public IP of your router (or remove the key)"));
                }
            }
            if let Some(ip) = t.relay_ip {
                if ip.is_multicast() {
                    bad("turn.relay_ip", format!("{ip} is multicast; use an address of one of this host's interfaces"));
                }
            }
        }
        for key in [
            "max_allocations",
            "max_allocations_per_user",
            "max_permissions_per_allocation",
            "max_channels_per_allocation",
        ] {
            let v = match key {
                "max_allocations" => t.max_allocations,
                "max_allocations_per_user" => t.max_allocations_per_user,
                "max_permissions_per_allocation" => t.max_permissions_per_allocation,
                _ => t.max_channels_per_allocation,
            };
            if v == 0 {
                bad(&format!("turn.{key}"), "must be at least 1".into());
            }
        }
        if t.max_channels_per_allocation > 0x4000 {
            bad("turn.max_channels_per_allocation", "must be at most 16384 (channel numbers 0x4000-0x7FFF)".into());
        }

        let s = &self.signaling;
        if s.max_message_bytes < 1024 || s.max_message_bytes > 16 * 1024 * 1024 {
            bad(
                "signaling.max_message_bytes",
                format!("{} is out of range; use 1024 to 16777216 (SDP offers need a few KiB)", s.max_message_bytes),
            );
        }
        for (key, v) in [
            ("signaling.messages_per_sec", s.messages_per_sec as u64),
            ("signaling.connect_requests_per_min", s.connect_requests_per_min as u64),
            ("signaling.max_connections_per_ip", s.max_connections_per_ip as u64),
            ("signaling.max_connections", s.max_connections as u64),
            ("signaling.request_timeout_secs", s.request_timeout_secs),
            ("signaling.token_max_age_secs", s.token_max_age_secs),
            ("signaling.max_sessions_per_ip", s.max_sessions_per_ip as u64),
            ("signaling.requests_to_one_client_per_min", s.requests_to_one_client_per_min as u64),
        ] {
            if v == 0 {
                bad(key, "must be at least 1".into());
            }
        }
        if let Some(dir) = &s.state_dir {
            if dir.exists() && !dir.is_dir() {
                bad(
                    "signaling.state_dir",
                    format!(
                        "{} is not a directory; name a directory ponte may write (e.g. /var/lib/ponte)",
                        dir.display()
                    ),
                );
            }
        }
        if !(5..=300).contains(&s.ping_interval_secs) {
            bad(
                "signaling.ping_interval_secs",
                format!("{} is out of range; use 5 to 300 seconds", s.ping_interval_secs),
            );
        }
        for (i, ice) in s.ice_servers.iter().enumerate() {
            if ice.urls.is_empty() {
                bad(
                    &format!("signaling.ice_servers[{i}].urls"),
                    "needs at least one stun:, turn: or turns: URL".into(),
                );
            }
            for (j, u) in ice.urls.iter().enumerate() {
                if !(u.starts_with("stun:")
                    || u.starts_with("stuns:")
                    || u.starts_with("turn:")
                    || u.starts_with("turns:"))
                {
                    bad(
                        &format!("signaling.ice_servers[{i}].urls[{j}]"),
                        format!("{u:?} must start with stun:, stuns:, turn: or turns:"),
                    );
                }
            }
            if ice.secret.is_some() && (ice.username.is_some() || ice.credential.is_some()) {
                bad(
                    &format!("signaling.ice_servers[{i}].secret"),
                    "use either secret (TURN REST) or username + credential, not both".into(),
                );
            }
            if ice.username.is_some() != ice.credential.is_some() {
                bad(
                    &format!("signaling.ice_servers[{i}].username"),
                    "username and credential go together; set both or neither".into(),
                );
            }
        }

        match (&self.tls.cert, &self.tls.key) {
            (Some(_), None) => {
                bad("tls.key", "tls.cert is set but tls.key is not; set both (e.g. privkey.pem) or neither".into())
            }
            (None, Some(_)) => {
                bad("tls.cert", "tls.key is set but tls.cert is not; set both (e.g. fullchain.pem) or neither".into())
            }
            (Some(cert), Some(key)) => {
                if let Err(e) = crate::tls::load_certified_key(cert, key) {
                    let msg = format!("{e:#}");
                    let key_name = if msg.starts_with("tls.key") { "tls.key" } else { "tls.cert" };
                    let detail = msg.split_once(": ").map(|(_, d)| d.to_string()).unwrap_or(msg);
                    bad(key_name, detail);
                }
            }
            (None, None) => {}
        }
        if let Some(acme) = &self.tls.acme {
            if self.tls.cert.is_some() || self.tls.key.is_some() {
                bad(
                    "tls.acme",
                    "is set together with tls.cert/tls.key; use either files (e.g. from certbot) or [tls.acme], \
                     not both"
                        .into(),
                );
            }
            if acme.domains.is_empty() {
                bad("tls.acme.domains", "is empty; list the name(s) people use, e.g. [\"chat.example.org\"]".into());
            }
            for (i, d) in acme.domains.iter().enumerate() {
                if let Some(p) = domain_problem(d) {
                    bad(&format!("tls.acme.domains[{i}]"), p);
                }
            }
            if let Some(c) = &acme.contact {
                let addr = c.strip_prefix("mailto:").unwrap_or(c);
                if !addr.contains('@') || addr.contains(char::is_whitespace) || addr.contains(',') {
                    bad(
                        "tls.acme.contact",
                        format!("{c:?} is not an email address; write it like \"admin@example.org\""),
                    );
                }
            }
            if !acme.directory.starts_with("https://") {
                bad(
                    "tls.acme.directory",
                    format!(
                        "{:?} is not an https:// URL; ACME directories are HTTPS, e.g. {LETSENCRYPT_DIRECTORY:?} \
                         (or the staging {LETSENCRYPT_STAGING_DIRECTORY:?})",
                        acme.directory
                    ),
                );
            }
            if acme.cache_dir().is_none() {
                bad(
                    "tls.acme.cache_dir",
                    "is not set and $STATE_DIRECTORY is not set (ponte was not started by systemd with \
                     StateDirectory=ponte); set cache_dir = \"/var/lib/ponte/acme\" (a directory only ponte can read)"
                        .into(),
                );
            }
            if let Some(root) = &acme.ca_root {
                use rustls_pki_types::pem::PemObject;
                if let Err(e) = rustls_pki_types::CertificateDer::from_pem_file(root) {
                    bad(
                        "tls.acme.ca_root",
                        format!(
                            "cannot read a PEM certificate from {}: {e}; remove the key (it is for tests)",
                            root.display()
                        ),
                    );
                }
            }
        }
        if self.tls.enabled() {
            if self.tls.listen == self.http.listen && self.tls.listen.port() != 0 {
                bad(
                    "tls.listen",
                    format!("{} is also http.listen; TLS needs its own port (default 443)", self.tls.listen),
                );
            }
        } else if self.tls.redirect_http {
            bad(
                "tls.redirect_http",
                "needs TLS: set tls.cert and tls.key (or [tls.acme]), or remove redirect_http".into(),
            );
        }

        if self.metrics.enabled && self.http.listen == self.metrics.listen && self.http.listen.port() != 0 {
            bad(
                "metrics.listen",
                format!(
                    "{} is also http.listen; give metrics its own port (default 127.0.0.1:9477)",
                    self.metrics.listen
                ),
            );
        }

        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            bad("log.level", format!("{:?} is not a log filter; use error, warn, info, debug or trace (or e.g. \"info,ponte::turn=debug\")", self.log.level));
        }
        p
    }
}

/// `scheme://host[:port]` of an http(s) URL, lowercased, with default ports dropped; `None` if not http(s).
pub fn parse_origin(url: &str) -> Option<String> {
    let lower = url.trim().to_ascii_lowercase();
    let (scheme, rest) = lower.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let default_port = if scheme == "http" { ":80" } else { ":443" };
    let authority = authority.strip_suffix(default_port).unwrap_or(authority);
    Some(format!("{scheme}://{authority}"))
}

/// Turns toml's error into "line N, column M: message", naming the key where toml knows it.
fn describe_toml_error(e: &toml::de::Error, text: &str) -> String {
    let mut msg = e.message().trim().to_string();
    if let Some(span) = e.span() {
        let before = text.get(..span.start).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
        let key = enclosing_key(text, span.start);
        let value =
            text.get(span.clone()).map(str::trim).filter(|v| !v.is_empty() && v.len() <= 80 && !v.contains('\n'));
        if let (Some(key), Some(value)) = (&key, value.filter(|_| !msg.contains("unknown field"))) {
            msg = format!("line {line}, column {col}: {key} = {value}: {msg}{}", value_hint(key, &msg));
        } else if let Some(key) = key {
            msg = format!("line {line}, column {col}: {key}: {msg}");
        } else {
            msg = format!("line {line}, column {col}: {msg}");
        }
    }
    if msg.contains("unknown field") {
        msg.push_str(" (remove or rename the key; see config.example.toml for every key)");
    }
    msg
}

/// How to write a value whose syntax serde rejected.
fn value_hint(key: &str, msg: &str) -> &'static str {
    if key.ends_with("_peers") || key.ends_with("trusted_proxies") {
        "; write a network in CIDR form, like \"192.168.1.0/24\" or \"2001:db8::/32\""
    } else if msg.contains("socket address") {
        "; write IP:PORT, like \"0.0.0.0:8080\" or \"[::]:8080\""
    } else if msg.contains("IP address") {
        "; write an IP address, like \"203.0.113.7\" or \"2001:db8::1\""
    } else {
        ""
    }
}

/// Best-effort full key path (`section.key`) for the byte offset of an error, from the nearest `[section]`
/// header above it and the key on the error's line.
fn enclosing_key(text: &str, offset: usize) -> Option<String> {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let line_start = text[..offset].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_end = text[offset..].find('\n').map(|i| offset + i).unwrap_or(text.len());
    let line = text[line_start..line_end].trim();
    let mut section: Option<String> = None;
    for l in text[..line_start].lines() {
        let l = l.trim();
        if l.starts_with('[') {
            section = Some(l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
        }
    }
    if line.starts_with('[') {
        return Some(line.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    }
    let key = line.split('=').next()?.trim();
    if key.is_empty() || !line.contains('=') {
        return section;
    }
    Some(match section {
        Some(s) => format!("{s}.{key}"),
        None => key.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("test.toml"))
    }

    #[test]
    fn udp_workers_default_to_auto_and_are_bounded() {
        assert_eq!(Config::default().turn.udp_workers, 0);
        assert!(parse("[turn]\nudp_workers = 2\n").is_ok());
        match parse("[turn]\nudp_workers = 1000\n") {
            Err(ConfigError::Invalid { problems, .. }) => {
                assert!(problems.iter().any(|p| p.key == "turn.udp_workers"), "{problems:?}")
            }
            other => panic!("udp_workers = 1000 accepted: {other:?}"),
        }
    }

    #[test]
    fn empty_file_is_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert!(Config::default().validate().is_empty());
    }

    #[test]
    fn unknown_key_names_full_path_and_line() {
        let e = parse("[turn]\nrealm = \"x\"\nrelay_prot_min = 5\n").unwrap_err().to_string();
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("turn.relay_prot_min"), "{e}");
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn bad_address_names_key() {
        let e = parse("[http]\nlisten = \"nonsense\"\n").unwrap_err().to_string();
        assert!(e.contains("http.listen"), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn inverted_port_range_names_key_and_fix() {
        let e = parse("[turn]\nrelay_port_min = 60000\nrelay_port_max = 50000\n").unwrap_err();
        let lines = e.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("turn.relay_port_min"), "{lines:?}");
        assert!(lines[0].contains("60000 > turn.relay_port_max 50000"), "{lines:?}");
    }

    #[test]
    fn all_problems_reported_at_once() {
        let e =
            parse("[turn]\nrelay_port_min = 60000\nrelay_port_max = 50000\nrealm = \"\"\n[log]\nlevel = \"loud[\"\n")
                .unwrap_err();
        let keys: Vec<_> = match &e {
            ConfigError::Invalid { problems, .. } => problems.iter().map(|p| p.key.clone()).collect(),
            _ => panic!("{e}"),
        };
        assert_eq!(keys, ["turn.relay_port_min", "turn.realm", "log.level"]);
    }

    #[test]
    fn secrets_never_printed() {
        let c = parse("[turn]\nsecret = \"supersecretvalue-0123456789\"\n[[turn.users]]\nusername = \"bob\"\npassword = \"hunter2hunter2\"\n").unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("supersecretvalue"), "{dbg}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("***"));
        assert_eq!(c.turn.secret.as_ref().unwrap().expose(), "supersecretvalue-0123456789");
    }

    #[test]
    fn short_secret_rejected() {
        let e = parse("[turn]\nsecret = \"short\"\n").unwrap_err().to_string();
        assert!(e.contains("turn.secret"), "{e}");
        assert!(!e.contains("short\""), "the secret itself must not be echoed: {e}");
    }

    #[test]
    fn origins() {
        assert_eq!(parse_origin("https://Chat.Example.org/").as_deref(), Some("https://chat.example.org"));
        assert_eq!(parse_origin("https://x.org:443").as_deref(), Some("https://x.org"));
        assert_eq!(parse_origin("http://x.org:8080/a").as_deref(), Some("http://x.org:8080"));
        assert_eq!(parse_origin("ftp://x.org"), None);
        assert_eq!(parse_origin("x.org"), None);
        let e = parse("[http]\nallowed_origins = [\"evil\"]\n").unwrap_err().to_string();
        assert!(e.contains("http.allowed_origins[0]"), "{e}");
    }

    #[test]
    fn generated_secrets_differ() {
        let a = Secret::generate();
        assert_ne!(a, Secret::generate());
        assert!(a.expose().len() >= 40);
    }
}
