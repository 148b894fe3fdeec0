//! The TOML schema: every section as a serde struct (unknown keys rejected) with its embedded defaults.
//!
//! Nothing here checks values or touches files: `validate.rs` holds the rules, `files.rs` the file checks.
//! Secrets are wrapped in [`Secret`] so that neither `Debug` nor logs can print them.

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
    pub cluster: ClusterConfig,
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
    /// Open HTTP(S) connections at once from one address (IPv6: one /64), WebSockets included until upgraded.
    pub max_connections_per_ip: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "0.0.0.0:8080".parse().unwrap(),
            web_root: None,
            public_url: None,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            max_connections_per_ip: 64,
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
    /// Local IPv6 address for IPv6 relay sockets, beside an IPv4 `relay_ip` (dual stack). Unset: the IPv6 listener's
    /// address or, with a wildcard `[::]` listener, the IPv6 address of the default route.
    pub relay_ip6: Option<IpAddr>,
    /// Public address advertised in XOR-RELAYED-ADDRESS and in ICE URLs, for a server behind a router
    /// with port forwarding.
    pub external_ip: Option<IpAddr>,
    /// Public IPv6 address advertised for IPv6 relays and in IPv6 ICE URLs, beside an IPv4 `external_ip`.
    pub external_ip6: Option<IpAddr>,
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
    /// Relay bandwidth cap per allocation in bytes/s, each direction; 0 = unlimited. The default, 1,250,000
    /// (10 Mbit/s), is four times what a 720p video call sends (about 2.6 Mbit/s each way with audio) and twice a
    /// camera plus a screen share, with a one-second burst (a keyframe is tens of kB), while one allocation cannot
    /// take a home uplink (a file transfer over the relay shares the same allocation). See docs/turn.md.
    pub max_bandwidth_per_allocation: u64,
    /// Most unsigned answers per second to one source IP (an IPv6 /64 counts as one source): Binding
    /// responses, 401/438 challenges and errors to requests without valid credentials. Their source address
    /// is unverified, so this caps what the server reflects to a spoofed victim. 0 = unlimited.
    pub unauthenticated_rate_per_ip: u32,
    /// SOFTWARE attribute value in responses. Unset: none is sent (do not tell scanners what we run).
    pub software: Option<String>,
    /// At start, relay a test packet between two allocations on our own TURN server and log the result.
    pub self_test: bool,
    /// Sockets (and tasks) per `listen_udp` address, sharing the port through SO_REUSEPORT so that STUN/TURN over
    /// UDP uses several cores; the kernel keeps each client on one socket. 0 = one per two CPUs (at least 1, at most 8).
    pub udp_workers: usize,
    /// A second UDP address answering STUN Binding requests only (no TURN, no relay), on another port than
    /// `listen_udp`. With two STUN destinations /diag compares the public ports a browser's NAT picks for each and
    /// tells a symmetric NAT (only the relay works) from one that allows direct connections. Unset: off.
    pub stun_alt_listen: Option<SocketAddr>,
    // Per-source bounds (a source is one IPv4 address or one IPv6 /64), so that minting usernames does not
    // get around the per-user quota and one source cannot take the relay range or the connection table.
    /// Most relay ports one source holds at once (each allocation holds one, an EVEN-PORT reservation a second).
    pub max_allocations_per_ip: usize,
    /// Most of the relay port range one source may hold, in percent, whatever `max_allocations_per_ip` says:
    /// with a small range, one source must still not take every port.
    pub relay_port_share_per_ip_percent: u8,
    /// Most TURN-over-TCP/TLS connections open at once from one source.
    pub max_tcp_connections_per_ip: usize,
    /// Seconds a TURN-over-TCP/TLS connection without an allocation may stay silent (the first request must
    /// come within it too); connections with an allocation get the 400 s idle timeout.
    pub tcp_setup_timeout_secs: u64,
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
            relay_ip6: None,
            external_ip: None,
            external_ip6: None,
            allow_peers: Vec::new(),
            deny_peers: Vec::new(),
            max_allocations: 1000,
            max_allocations_per_user: 10,
            max_permissions_per_allocation: 64,
            max_channels_per_allocation: 64,
            max_bandwidth_per_allocation: 1_250_000,
            unauthenticated_rate_per_ip: 100,
            software: None,
            self_test: true,
            udp_workers: 0,
            stun_alt_listen: None,
            max_allocations_per_ip: 32,
            relay_port_share_per_ip_percent: 25,
            max_tcp_connections_per_ip: 32,
            tcp_setup_timeout_secs: 10,
        }
    }
}

impl TurnConfig {
    /// The configured relay addresses (`relay_ip`, `relay_ip6`), at most one per family.
    pub fn relay_ips_configured(&self) -> Vec<IpAddr> {
        self.relay_ip.into_iter().chain(self.relay_ip6).collect()
    }

    /// The public address advertised for one family: `external_ip` when it is of that family, else
    /// `external_ip6` for IPv6. Either key may hold the IPv6 one (a home reachable only over IPv6 sets just
    /// `external_ip`), validation keeps them to one per family.
    pub fn external_for(&self, v6: bool) -> Option<IpAddr> {
        self.external_ips().into_iter().find(|ip| ip.is_ipv6() == v6)
    }

    /// Every configured public address (`external_ip`, `external_ip6`).
    pub fn external_ips(&self) -> Vec<IpAddr> {
        self.external_ip.into_iter().chain(self.external_ip6).collect()
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
    /// Days an identity (ID <-> public key binding, consents, blocks) is kept after it was last seen.
    pub identity_forget_after_days: u64,
    /// New identities one source may register per hour.
    pub identity_registrations_per_hour: u32,
    /// Identities the store holds at most.
    pub max_identities: usize,
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
            identity_forget_after_days: 180,
            identity_registrations_per_hour: 10,
            max_identities: 10_000,
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

/// `[cluster]`: several nodes share signaling through Redis (docs/architecture.md, "Several nodes"). Off unless
/// `redis_url` is set: then no Redis connection, no cluster task, nothing changes for a single node.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://[:password@]host[:port][/db]` of the Redis every node shares. A secret: it may carry a password.
    pub redis_url: Option<Secret>,
    /// This node's name, unique in the cluster: it names the node's Redis channel and its presence records.
    pub node_name: Option<String>,
    /// This node's public (relay/external) addresses, announced to the other nodes so their TURN peer policy lets
    /// relayed traffic between allocations on different nodes through. Empty: `turn.external_ip`/`relay_ip`.
    pub public_addresses: Vec<IpAddr>,
    /// Prefix of every Redis key and channel (several clusters can share one Redis).
    pub key_prefix: String,
    /// How long a node's presence records outlive it (a killed node's IDs are freed and its browsers' partners
    /// see them away after this); refreshed every third of it.
    pub presence_ttl_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: None,
            node_name: None,
            public_addresses: Vec::new(),
            key_prefix: "ponte".into(),
            presence_ttl_secs: 15,
        }
    }
}

impl ClusterConfig {
    pub fn enabled(&self) -> bool {
        self.redis_url.is_some()
    }
}
