//! The rules serde cannot express, one validator per section. Pure: no file is read here (see `files.rs`), so the
//! same rules run in `check-config`, at start, on reload and in the fuzzer.
//!
//! Every problem names the full key, the offending value and the fix.

use std::net::IpAddr;

use super::schema::*;
use super::Problem;

/// Collects problems with their key; sections push into it in file order.
#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<Problem>);

impl Problems {
    pub(super) fn bad(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem { key: key.into(), message: message.into() });
    }
}

impl Config {
    /// Cross-field rules serde cannot express. Returns every problem, not just the first. Pure: files named by the
    /// config are checked by [`Config::check_files`].
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Problems::default();
        http(&self.http, &mut p);
        turn(&self.turn, &mut p);
        signaling(&self.signaling, &mut p);
        tls(&self.tls, &self.http, &mut p);
        metrics(&self.metrics, &self.http, &mut p);
        log(&self.log, &mut p);
        cluster(&self.cluster, &mut p);
        p.0
    }
}

fn http(h: &HttpConfig, p: &mut Problems) {
    if h.max_connections_per_ip == 0 {
        p.bad("http.max_connections_per_ip", "must be at least 1 (a page load opens a few connections; default 64)");
    }
    if let Some(url) = &h.public_url {
        if parse_origin(url).is_none() {
            p.bad(
                "http.public_url",
                format!("{url:?} is not an http:// or https:// URL; write it like \"https://chat.example.org\""),
            );
        }
    }
    for (i, o) in h.allowed_origins.iter().enumerate() {
        if o != "*" && parse_origin(o).is_none() {
            p.bad(
                format!("http.allowed_origins[{i}]"),
                format!("{o:?} is not an origin; write scheme://host[:port] like \"https://chat.example.org\""),
            );
        }
    }
}

fn turn(t: &TurnConfig, p: &mut Problems) {
    if t.relay_port_min > t.relay_port_max {
        p.bad(
            "turn.relay_port_min",
            format!(
                "relay port range is inverted ({} > turn.relay_port_max {}); set relay_port_min <= relay_port_max",
                t.relay_port_min, t.relay_port_max
            ),
        );
    }
    if t.udp_workers > 64 {
        p.bad(
            "turn.udp_workers",
            format!(
                "{} sockets per address is more than any machine can use; use 0 (one per two CPUs) or 1-64",
                t.udp_workers
            ),
        );
    }
    if let Some(a) = t.stun_alt_listen {
        if a.port() == 0 || t.listen_udp.iter().any(|l| l.port() == a.port()) {
            p.bad(
                "turn.stun_alt_listen",
                format!(
                    "{a} must have a fixed port other than turn.listen_udp's (it is a second STUN destination), \
                     e.g. \"0.0.0.0:3479\""
                ),
            );
        }
    }
    if t.relay_port_min == 0 {
        p.bad("turn.relay_port_min", "0 is not a port; use a range such as 49152-65535");
    }
    if t.secret.is_some() && t.secret_file.is_some() {
        p.bad("turn.secret", "set either turn.secret or turn.secret_file, not both");
    }
    if let Some(s) = &t.secret {
        if s.expose().len() < 16 {
            p.bad(
                "turn.secret",
                "is shorter than 16 characters; use a long random string (e.g. `openssl rand -hex 32`)",
            );
        }
    }
    if t.realm.is_empty() || t.realm.len() > 127 {
        p.bad("turn.realm", "must be 1 to 127 characters (RFC 8489 §14.9)");
    }
    if !(60..=7 * 86_400).contains(&t.credential_ttl_secs) {
        p.bad(
            "turn.credential_ttl_secs",
            format!("{} is out of range; use 60 to 604800 seconds (default 86400)", t.credential_ttl_secs),
        );
    }
    for (i, u) in t.users.iter().enumerate() {
        if u.username.is_empty() || u.username.contains(':') {
            p.bad(
                format!("turn.users[{i}].username"),
                format!("{:?} must be non-empty and contain no ':' (':' marks TURN REST usernames)", u.username),
            );
        }
        if u.password.is_empty() {
            p.bad(format!("turn.users[{i}].password"), "must not be empty");
        }
    }
    if t.enabled {
        if t.listen_udp.is_empty() && t.listen_tcp.is_empty() {
            p.bad("turn.listen_udp", "turn is enabled but has no listen address; add one (e.g. \"0.0.0.0:3478\") or set turn.enabled = false");
        }
        if let Some(ip) = t.external_ip {
            if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
                p.bad(
                    "turn.external_ip",
                    format!(
                        "{ip} cannot be advertised to browsers; set the public IP of your router (or remove the key)"
                    ),
                );
            }
        }
        // `[::]:P` is bound dual-stack (src/listeners.rs): it already serves IPv4, and a `0.0.0.0:P` beside it would
        // fight it for the port.
        for (key, list) in [("turn.listen_udp", &t.listen_udp), ("turn.listen_tcp", &t.listen_tcp)] {
            for a in list.iter().filter(|a| a.is_ipv6() && a.ip().is_unspecified() && a.port() != 0) {
                if list.iter().any(|b| b.is_ipv4() && b.ip().is_unspecified() && b.port() == a.port()) {
                    p.bad(
                        key,
                        format!(
                            "0.0.0.0:{port} and {a} both listed: {a} serves IPv4 and IPv6 already; remove 0.0.0.0:{port}",
                            port = a.port()
                        ),
                    );
                }
            }
        }
        if let Some(ip) = t.external_ip6 {
            if !ip.is_ipv6() {
                p.bad(
                    "turn.external_ip6",
                    format!("{ip} is not an IPv6 address; put the IPv4 one in turn.external_ip"),
                );
            } else if t.external_ip.is_some_and(|e| e.is_ipv6()) {
                p.bad(
                    "turn.external_ip6",
                    format!("{ip}: turn.external_ip is IPv6 too, one address per family; set turn.external_ip to the IPv4 one or remove it"),
                );
            } else if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
                p.bad("turn.external_ip6", format!("{ip} cannot be advertised to browsers; set this host's public IPv6 address (or remove the key)"));
            }
        }
        if let Some(ip) = t.relay_ip {
            if ip.is_multicast() {
                p.bad("turn.relay_ip", format!("{ip} is multicast; use an address of one of this host's interfaces"));
            }
        }
        if let Some(ip) = t.relay_ip6 {
            if !ip.is_ipv6() {
                p.bad("turn.relay_ip6", format!("{ip} is not an IPv6 address; put the IPv4 one in turn.relay_ip"));
            } else if t.relay_ip.is_some_and(|r| r.is_ipv6()) {
                p.bad(
                    "turn.relay_ip6",
                    format!("{ip}: turn.relay_ip is IPv6 too, one address per family; set turn.relay_ip to the IPv4 one or remove it"),
                );
            } else if ip.is_multicast() || ip.is_unspecified() {
                p.bad(
                    "turn.relay_ip6",
                    format!("{ip} is not an address of this host's interfaces; use one (e.g. its public IPv6 address)"),
                );
            }
        }
    }
    for (key, v) in [
        ("max_allocations", t.max_allocations),
        ("max_allocations_per_user", t.max_allocations_per_user),
        ("max_permissions_per_allocation", t.max_permissions_per_allocation),
        ("max_channels_per_allocation", t.max_channels_per_allocation),
    ] {
        if v == 0 {
            p.bad(format!("turn.{key}"), "must be at least 1");
        }
    }
    if t.max_channels_per_allocation > 0x4000 {
        p.bad("turn.max_channels_per_allocation", "must be at most 16384 (channel numbers 0x4000-0x7FFF)");
    }
    // Per-source bounds.
    if t.max_allocations_per_ip == 0 {
        p.bad("turn.max_allocations_per_ip", "0 would refuse every allocation; use at least 1 (default 32)");
    }
    if !(1..=100).contains(&t.relay_port_share_per_ip_percent) {
        p.bad(
            "turn.relay_port_share_per_ip_percent",
            format!("{} is not a share; use 1 to 100 (default 25)", t.relay_port_share_per_ip_percent),
        );
    }
    if t.max_tcp_connections_per_ip == 0 {
        p.bad("turn.max_tcp_connections_per_ip", "0 would refuse every TCP/TLS client; use at least 1 (default 32)");
    }
    if !(1..=400).contains(&t.tcp_setup_timeout_secs) {
        p.bad(
            "turn.tcp_setup_timeout_secs",
            format!("{} is out of range; use 1 to 400 (default 10)", t.tcp_setup_timeout_secs),
        );
    }
}

fn signaling(s: &SignalingConfig, p: &mut Problems) {
    if s.max_message_bytes < 1024 || s.max_message_bytes > 16 * 1024 * 1024 {
        p.bad(
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
        ("signaling.identity_forget_after_days", s.identity_forget_after_days),
        ("signaling.identity_registrations_per_hour", s.identity_registrations_per_hour as u64),
        ("signaling.max_identities", s.max_identities as u64),
    ] {
        if v == 0 {
            p.bad(key, "must be at least 1");
        }
    }
    if s.identity_forget_after_days > 36_500 {
        p.bad(
            "signaling.identity_forget_after_days",
            format!("{} is out of range; use 1 to 36500 days", s.identity_forget_after_days),
        );
    }
    if s.max_identities > 10_000_000 {
        p.bad(
            "signaling.max_identities",
            format!("{} is out of range; use 1 to 10000000 (the store is held in memory too)", s.max_identities),
        );
    }
    if !(5..=300).contains(&s.ping_interval_secs) {
        p.bad(
            "signaling.ping_interval_secs",
            format!("{} is out of range; use 5 to 300 seconds", s.ping_interval_secs),
        );
    }
    for (i, ice) in s.ice_servers.iter().enumerate() {
        if ice.urls.is_empty() {
            p.bad(format!("signaling.ice_servers[{i}].urls"), "needs at least one stun:, turn: or turns: URL");
        }
        for (j, u) in ice.urls.iter().enumerate() {
            if !["stun:", "stuns:", "turn:", "turns:"].iter().any(|scheme| u.starts_with(scheme)) {
                p.bad(
                    format!("signaling.ice_servers[{i}].urls[{j}]"),
                    format!("{u:?} must start with stun:, stuns:, turn: or turns:"),
                );
            }
        }
        if ice.secret.is_some() && (ice.username.is_some() || ice.credential.is_some()) {
            p.bad(
                format!("signaling.ice_servers[{i}].secret"),
                "use either secret (TURN REST) or username + credential, not both",
            );
        }
        if ice.username.is_some() != ice.credential.is_some() {
            p.bad(
                format!("signaling.ice_servers[{i}].username"),
                "username and credential go together; set both or neither",
            );
        }
    }
}

fn tls(t: &TlsConfig, http: &HttpConfig, p: &mut Problems) {
    match (&t.cert, &t.key) {
        (Some(_), None) => {
            p.bad("tls.key", "tls.cert is set but tls.key is not; set both (e.g. privkey.pem) or neither")
        }
        (None, Some(_)) => {
            p.bad("tls.cert", "tls.key is set but tls.cert is not; set both (e.g. fullchain.pem) or neither")
        }
        _ => {}
    }
    if let Some(acme) = &t.acme {
        acme_section(acme, t, p);
    }
    if t.enabled() {
        if t.listen == http.listen && t.listen.port() != 0 {
            p.bad("tls.listen", format!("{} is also http.listen; TLS needs its own port (default 443)", t.listen));
        }
    } else if t.redirect_http {
        p.bad("tls.redirect_http", "needs TLS: set tls.cert and tls.key (or [tls.acme]), or remove redirect_http");
    }
}

fn acme_section(acme: &AcmeConfig, t: &TlsConfig, p: &mut Problems) {
    if t.cert.is_some() || t.key.is_some() {
        p.bad(
            "tls.acme",
            "is set together with tls.cert/tls.key; use either files (e.g. from certbot) or [tls.acme], not both",
        );
    }
    if acme.domains.is_empty() {
        p.bad("tls.acme.domains", "is empty; list the name(s) people use, e.g. [\"chat.example.org\"]");
    }
    for (i, d) in acme.domains.iter().enumerate() {
        if let Some(problem) = domain_problem(d) {
            p.bad(format!("tls.acme.domains[{i}]"), problem);
        }
    }
    if let Some(c) = &acme.contact {
        let addr = c.strip_prefix("mailto:").unwrap_or(c);
        if !addr.contains('@') || addr.contains(char::is_whitespace) || addr.contains(',') {
            p.bad("tls.acme.contact", format!("{c:?} is not an email address; write it like \"admin@example.org\""));
        }
    }
    if !acme.directory.starts_with("https://") {
        p.bad(
            "tls.acme.directory",
            format!(
                "{:?} is not an https:// URL; ACME directories are HTTPS, e.g. {LETSENCRYPT_DIRECTORY:?} \
                 (or the staging {LETSENCRYPT_STAGING_DIRECTORY:?})",
                acme.directory
            ),
        );
    }
    if acme.cache_dir().is_none() {
        p.bad(
            "tls.acme.cache_dir",
            "is not set and $STATE_DIRECTORY is not set (ponte was not started by systemd with \
             StateDirectory=ponte); set cache_dir = \"/var/lib/ponte/acme\" (a directory only ponte can read)",
        );
    }
}

fn metrics(m: &MetricsConfig, http: &HttpConfig, p: &mut Problems) {
    if m.enabled && http.listen == m.listen && http.listen.port() != 0 {
        p.bad(
            "metrics.listen",
            format!("{} is also http.listen; give metrics its own port (default 127.0.0.1:9477)", m.listen),
        );
    }
}

fn log(l: &LogConfig, p: &mut Problems) {
    if tracing_subscriber::EnvFilter::try_new(&l.level).is_err() {
        p.bad(
            "log.level",
            format!(
                "{:?} is not a log filter; use error, warn, info, debug or trace (or e.g. \"info,ponte::turn=debug\")",
                l.level
            ),
        );
    }
}

fn cluster(c: &ClusterConfig, p: &mut Problems) {
    let name_ok = |n: &str| {
        (1..=32).contains(&n.len())
            && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !n.starts_with('-')
    };
    if let Some(url) = &c.redis_url {
        // The URL may hold a password: only its scheme is ever quoted back.
        let u = url.expose();
        if !(u.starts_with("redis://") || u.starts_with("redis+unix://") || u.starts_with("unix://")) {
            p.bad(
                "cluster.redis_url",
                "must start with redis:// (e.g. \"redis://127.0.0.1:6379/0\", or \"redis://:password@host:6379/0\"); \
                 rediss:// (TLS) is not supported: reach Redis over a private network or a tunnel",
            );
        } else if redis::Client::open(u).is_err() {
            p.bad("cluster.redis_url", "is not a valid Redis URL; write it like \"redis://127.0.0.1:6379/0\"");
        }
        match c.node_name.as_deref() {
            None => p.bad(
                "cluster.node_name",
                "must be set when cluster.redis_url is: a name unique in the cluster, e.g. \"node-a\"",
            ),
            Some(n) if !name_ok(n) => p.bad(
                "cluster.node_name",
                format!("{n:?}: use 1 to 32 characters of a-z, 0-9 and -, not starting with -, e.g. \"node-a\""),
            ),
            Some(_) => {}
        }
    } else if c.node_name.is_some() || !c.public_addresses.is_empty() {
        p.bad(
            "cluster.redis_url",
            "must be set for the other [cluster] keys to mean anything (remove them for a single node)",
        );
    }
    if c.key_prefix.is_empty() || c.key_prefix.len() > 32 || !c.key_prefix.bytes().all(|b| b.is_ascii_graphic()) {
        p.bad("cluster.key_prefix", "use 1 to 32 printable characters without spaces (default \"ponte\")");
    }
    if !(3..=300).contains(&c.presence_ttl_secs) {
        p.bad("cluster.presence_ttl_secs", "must be between 3 and 300 seconds (default 15)");
    }
    for (i, a) in c.public_addresses.iter().enumerate() {
        if a.is_unspecified() || a.is_multicast() {
            p.bad(format!("cluster.public_addresses[{i}]"), format!("{a} is not a unicast address of this node"));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(t: TurnConfig) -> Vec<String> {
        let mut p = Problems::default();
        turn(&t, &mut p);
        p.0.into_iter().map(|p| format!("{}: {}", p.key, p.message)).collect()
    }

    #[test]
    fn cluster_keys_are_checked_and_the_url_never_quoted() {
        let check = |c: ClusterConfig| {
            let mut p = Problems::default();
            cluster(&c, &mut p);
            p.0.into_iter().map(|p| format!("{}: {}", p.key, p.message)).collect::<Vec<_>>()
        };
        assert!(check(ClusterConfig::default()).is_empty(), "no [cluster]: nothing to say");
        let ok = ClusterConfig {
            redis_url: Some(Secret::new("redis://:hunter2@10.0.0.5:6379/0")),
            node_name: Some("node-a".into()),
            ..ClusterConfig::default()
        };
        assert!(check(ok.clone()).is_empty(), "{:?}", check(ok.clone()));
        let bad = check(ClusterConfig { node_name: None, ..ok.clone() });
        assert!(bad[0].starts_with("cluster.node_name: must be set"), "{bad:?}");
        let bad = check(ClusterConfig { node_name: Some("Node A".into()), ..ok.clone() });
        assert!(bad[0].starts_with("cluster.node_name: \"Node A\""), "{bad:?}");
        let bad = check(ClusterConfig { redis_url: Some(Secret::new("rediss://:hunter2@h/0")), ..ok.clone() });
        assert!(bad[0].starts_with("cluster.redis_url: must start with redis://"), "{bad:?}");
        assert!(bad.iter().all(|m| !m.contains("hunter2")), "the password was printed: {bad:?}");
        let bad = check(ClusterConfig { presence_ttl_secs: 1, ..ok.clone() });
        assert!(bad[0].starts_with("cluster.presence_ttl_secs"), "{bad:?}");
        let bad = check(ClusterConfig { redis_url: None, ..ok });
        assert!(bad[0].starts_with("cluster.redis_url: must be set"), "{bad:?}");
        assert!(format!("{:?}", ClusterConfig::default().redis_url.or(Some(Secret::new("x")))).contains("***"));
    }

    #[test]
    fn relay_and_external_addresses_one_per_family() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let ok = TurnConfig {
            relay_ip: ip("192.0.2.10"),
            relay_ip6: ip("2001:db8::10"),
            external_ip: ip("203.0.113.7"),
            external_ip6: ip("2001:db8::10"),
            ..TurnConfig::default()
        };
        assert_eq!(keys(ok.clone()), Vec::<String>::new());
        // An IPv6-only home may put its IPv6 address in the plain keys.
        assert!(keys(TurnConfig { relay_ip: ip("2001:db8::10"), relay_ip6: None, ..ok.clone() }).is_empty());
        let bad = keys(TurnConfig { relay_ip6: ip("192.0.2.11"), external_ip6: ip("198.51.100.1"), ..ok.clone() });
        assert!(bad[0].starts_with("turn.external_ip6: 198.51.100.1 is not an IPv6 address"), "{bad:?}");
        assert!(bad[1].starts_with("turn.relay_ip6: 192.0.2.11 is not an IPv6 address"), "{bad:?}");
        let both = keys(TurnConfig { relay_ip: ip("2001:db8::11"), external_ip: ip("2001:db8::11"), ..ok.clone() });
        assert_eq!(both.len(), 2, "{both:?}");
        assert!(both.iter().all(|m| m.contains("one address per family")), "{both:?}");
        assert!(keys(TurnConfig { external_ip6: ip("::1"), ..ok })[0].contains("cannot be advertised"));
        let both = keys(TurnConfig {
            listen_udp: vec!["0.0.0.0:3478".parse().unwrap(), "[::]:3478".parse().unwrap()],
            ..TurnConfig::default()
        });
        assert_eq!(both.len(), 1, "{both:?}");
        assert!(both[0].starts_with("turn.listen_udp: 0.0.0.0:3478 and [::]:3478 both listed"), "{both:?}");
    }
}
