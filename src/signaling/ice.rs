//! The ICE server list each client gets: ponte's own STUN/TURN URLs with per-client TURN REST credentials,
//! then the configured extra servers.

use std::net::{IpAddr, SocketAddr};

use crate::config::{Config, Secret};
use crate::credentials;

use super::ids::Id;
use super::protocol::IceServer;

/// The host to put in ponte's own `stun:`/`turn:` URLs: `turn.external_ip`, else the host of `http.public_url`,
/// else the `Host` the browser used (port stripped, IPv6 bracketed). `None` when none of them is usable.
pub fn advertised_host(cfg: &Config, host_header: Option<&str>) -> Option<String> {
    if let Some(ip) = cfg.turn.external_ip {
        return Some(format_ip(ip));
    }
    if let Some(url) = &cfg.http.public_url {
        let authority = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
        let authority = authority.split(['/', '?', '#']).next().unwrap_or("");
        let authority = authority.rsplit('@').next().unwrap_or("");
        if let Some(h) = host_of(authority) {
            return Some(h);
        }
    }
    host_header.and_then(host_of)
}

/// The host for ponte's own ICE URLs for one client: a LAN address of this server when the browser came from
/// the server's own network (see [`lan_host`]), else [`advertised_host`].
pub fn host_for(own: &OwnIceServers, cfg: &Config, host_header: Option<&str>, client: IpAddr) -> Option<String> {
    if cfg.turn.enabled {
        let lan = lan_host(cfg, &own.listen, host_header, client, || {
            // Only asked for clients on a private network, so no syscall per ordinary connection.
            crate::turn::interface_ips()
        });
        if lan.is_some() {
            return lan;
        }
    }
    advertised_host(cfg, host_header)
}

/// A private address of this server for a browser that reached ponte from inside the server's own network, or
/// `None` for everyone else.
///
/// Why: behind a home router `turn.external_ip` is the router's public address, and a router without NAT
/// loopback (hairpin) drops what the LAN sends to it; a laptop at home handed `stun:`/`turn:` URLs at
/// `external_ip` would get no relay and no reflexive candidate and never connect (issue #13). The relay it
/// allocates through the LAN address still advertises `external_ip:port`, so people outside reach it.
///
/// Two signs, both requiring ponte's STUN/TURN to listen on the address handed out:
/// 1. the `Host` the browser used is a private IP literal of this host (someone outside cannot have typed it);
/// 2. the client's own address is private (not loopback) and the `Host` is not `external_ip`, nor the public name
///    (e.g. `homeserver.lan`): a reverse proxy that forwards outside traffic shows up with the public name, so
///    its clients are not mistaken for the LAN, unless `http.trusted_proxies` resolves them.
pub fn lan_host(
    cfg: &Config,
    listen: &[SocketAddr],
    host_header: Option<&str>,
    client: IpAddr,
    local_ips: impl FnOnce() -> Vec<IpAddr>,
) -> Option<String> {
    let client = crate::turn::policy::canonical(client);
    if !is_lan(client) {
        return None;
    }
    let listens_on = |ip: IpAddr, local: &[IpAddr]| {
        listen.iter().any(|a| {
            let l = crate::turn::policy::canonical(a.ip());
            l == ip || (l.is_unspecified() && l.is_ipv4() == ip.is_ipv4() && local.contains(&ip))
        })
    };
    let local = local_ips();
    let used = host_header.and_then(host_of);
    if let Some(ip) = used.as_deref().and_then(|h| h.trim_matches(['[', ']']).parse::<IpAddr>().ok()) {
        let ip = crate::turn::policy::canonical(ip);
        if is_lan(ip) && listens_on(ip, &local) {
            return Some(format_ip(ip));
        }
        if cfg.turn.external_ips().into_iter().any(|e| crate::turn::policy::canonical(e) == ip) {
            return None;
        }
    }
    let public_name = cfg.http.public_url.as_deref().and_then(|u| {
        let a = u.split_once("://").map(|(_, r)| r).unwrap_or(u);
        host_of(a.split(['/', '?', '#']).next().unwrap_or(""))
    });
    // Unless `http.trusted_proxies` is set (then `client` is the real browser's address even through a proxy, and
    // a private one is at home, e.g. with split DNS).
    if used.is_some() && used == public_name && cfg.http.trusted_proxies.is_empty() {
        return None;
    }
    // The LAN address of this server in the client's family: a specific listener first, else the relay
    // address (where a wildcard listener answers too).
    let specific = listen
        .iter()
        .map(|a| crate::turn::policy::canonical(a.ip()))
        .find(|ip| is_lan(*ip) && ip.is_ipv4() == client.is_ipv4());
    let relay = || {
        crate::turn::relay_ips(&cfg.turn, listen)
            .into_iter()
            .find(|ip| is_lan(*ip) && ip.is_ipv4() == client.is_ipv4() && listens_on(*ip, &local))
    };
    specific.or_else(relay).map(format_ip)
}

/// RFC 1918 / IPv6 unique-local: an address a browser has only inside the same site. Loopback is left out
/// (that is a local reverse proxy, not a person), and so are link-local (needs a zone) and CGNAT (the provider's).
fn is_lan(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

fn format_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// The host part of `host[:port]` / `[v6]:port`, validated to hostname/IP characters only: the `Host` header
/// is client-controlled and ends up inside URLs we hand back.
fn host_of(authority: &str) -> Option<String> {
    let authority = authority.trim();
    let host = if let Some(rest) = authority.strip_prefix('[') {
        let v6 = rest.split(']').next()?;
        let ip: std::net::Ipv6Addr = v6.parse().ok()?;
        return Some(format!("[{ip}]"));
    } else {
        match authority.rsplit_once(':') {
            // A bare IPv6 address without brackets has several colons; it cannot carry a port.
            Some((h, _)) if !h.contains(':') => h,
            Some(_) => {
                let ip: std::net::Ipv6Addr = authority.parse().ok()?;
                return Some(format!("[{ip}]"));
            }
            None => authority,
        }
    };
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    ok.then(|| host.to_ascii_lowercase())
}

/// ponte's own STUN/TURN service as browsers see it: fixed for the life of the process.
#[derive(Debug, Clone)]
pub struct OwnIceServers {
    /// `turn.enabled`.
    pub enabled: bool,
    /// The bound STUN/TURN ports (port 0 resolved).
    pub udp_ports: Vec<u16>,
    pub tcp_ports: Vec<u16>,
    /// The shared TLS port, when TLS is on (`turns:` URLs).
    pub tls_port: Option<u16>,
    /// Every bound STUN/TURN address (UDP, then TCP): which LAN addresses can be handed to browsers at home.
    pub listen: Vec<SocketAddr>,
    /// `turn.stun_alt_listen`'s port: a second `stun:` URL for /diag's NAT mapping test.
    pub stun_alt_port: Option<u16>,
    /// The public address of each family this server's STUN/TURN serves ([`family_hosts`]): a browser whose
    /// URLs name an address of one family also gets URLs at the other family's.
    pub family_hosts: Vec<IpAddr>,
    /// Mints the per-client TURN REST credentials.
    pub secret: Secret,
}

/// The address browsers can reach ponte's STUN/TURN at, per family it listens on: `turn.external_ip`/
/// `external_ip6` of that family, else a relay address of that family that people outside can reach (public or
/// documentation/lab; not private, loopback, link-local or CGNAT). At most one per family, IPv4 first.
///
/// Why: a dual-stack phone that reached ponte over IPv6 gets `turn:[v6]` URLs, and one on IPv4 `turn:v4`
/// URLs. With the other family's URLs too it can relay and learn its reflexive address over both, which is
/// what lets an IPv4-only peer meet an IPv6-only peer through the relay (RFC 8656 cross-family relaying).
pub fn family_hosts(turn: &crate::config::TurnConfig, listen: &[SocketAddr]) -> Vec<IpAddr> {
    use crate::addr::AddressClass::*;
    let relays = crate::turn::relay_ips(turn, listen);
    let mut out = Vec::new();
    for v6 in [false, true] {
        // A `[::]` wildcard serves IPv4 too (src/listeners.rs binds it dual-stack).
        let serves = listen.iter().any(|a| a.is_ipv6() == v6 || (!v6 && a.ip().is_unspecified() && a.is_ipv6()));
        if !serves {
            continue;
        }
        let reachable = |ip: &IpAddr| matches!(crate::addr::classify(*ip), Public | Documentation);
        if let Some(ip) = turn.external_for(v6).or_else(|| {
            relays.iter().copied().map(crate::turn::policy::canonical).find(|ip| ip.is_ipv6() == v6 && reachable(ip))
        }) {
            out.push(ip);
        }
    }
    out
}

/// The hosts for one client's URLs: `host`, then (when `host` is an IP literal) the address of each other family
/// from [`OwnIceServers::family_hosts`], bracketed when IPv6. A DNS name is left alone: the browser resolves it
/// (publish A and AAAA records), and literal URLs beside it would double every allocation.
fn hosts_for(own: &OwnIceServers, host: &str) -> Vec<(String, Option<bool>)> {
    let Ok(primary) = host.trim_matches(['[', ']']).parse::<IpAddr>() else { return vec![(host.to_string(), None)] };
    let primary = crate::turn::policy::canonical(primary);
    let mut out = vec![(host.to_string(), Some(primary.is_ipv6()))];
    for ip in &own.family_hosts {
        if ip.is_ipv6() != primary.is_ipv6() {
            out.push((format_ip(*ip), Some(ip.is_ipv6())));
        }
    }
    out
}

/// Build the list for client `id`, with credentials valid from `now`. Returns the list and when its
/// credentials expire. `cfg` is the live config (TTL and extra servers follow reloads); the secret and the bound
/// ports are fixed for the process.
pub fn servers_for(own: &OwnIceServers, cfg: &Config, host: Option<&str>, id: Id, now: u64) -> (Vec<IceServer>, u64) {
    let ttl = cfg.turn.credential_ttl_secs;
    let mut out = Vec::new();
    if own.enabled {
        if let Some(host) = host {
            let hosts = hosts_for(own, host);
            // The ports of listeners serving a family (`None`: a DNS name, every port). `[::]` serves both.
            let serving = |ports: &[u16], v6: Option<bool>| -> Vec<u16> {
                let mut v: Vec<u16> = ports
                    .iter()
                    .copied()
                    .filter(|p| {
                        let Some(v6) = v6 else { return true };
                        own.listen.is_empty()
                            || own.listen.iter().any(|a| {
                                a.port() == *p && (a.is_ipv6() == v6 || (!v6 && a.is_ipv6() && a.ip().is_unspecified()))
                            })
                    })
                    .collect();
                // `0.0.0.0:3478` and `[::]:3478` are one URL for a browser.
                v.sort_unstable();
                v.dedup();
                v
            };
            let (mut stun_urls, mut turn_urls) = (Vec::new(), Vec::new());
            for (host, v6) in &hosts {
                let udp_ports = serving(&own.udp_ports, *v6);
                let tcp_ports = serving(&own.tcp_ports, *v6);
                stun_urls.extend(udp_ports.iter().map(|p| format!("stun:{host}:{p}")));
                turn_urls.extend(
                    udp_ports
                        .iter()
                        .map(|p| format!("turn:{host}:{p}?transport=udp"))
                        .chain(tcp_ports.iter().map(|p| format!("turn:{host}:{p}?transport=tcp"))),
                );
            }
            if !stun_urls.is_empty() {
                // The STUN-only second port (`turn.stun_alt_listen`) goes last: /diag compares the mappings.
                if let Some(alt) = own.stun_alt_port.filter(|p| !own.udp_ports.contains(p)) {
                    stun_urls.push(format!("stun:{host}:{alt}"));
                }
                out.push(IceServer { urls: stun_urls, username: None, credential: None });
            }
            // TURN over TLS on the shared TLS port: the last resort for networks that only let TLS on 443 out.
            // The certificate names a host, so prefer public_url's host over an IP address.
            if let Some(tls_port) = own.tls_port {
                let tls_host = cfg
                    .http
                    .public_url
                    .as_deref()
                    .and_then(crate::config::parse_origin)
                    .and_then(|o| o.split_once("://").and_then(|(_, a)| host_of(a)))
                    .unwrap_or_else(|| host.to_string());
                turn_urls.push(format!("turns:{tls_host}:{tls_port}?transport=tcp"));
            }
            if !turn_urls.is_empty() {
                let c = credentials::mint(&own.secret, id.as_str(), now, ttl);
                out.push(IceServer { urls: turn_urls, username: Some(c.username), credential: Some(c.password) });
            }
        }
    }
    for extra in &cfg.signaling.ice_servers {
        let (username, credential) = if let Some(secret) = &extra.secret {
            let c = credentials::mint(secret, id.as_str(), now, ttl);
            (Some(c.username), Some(c.password))
        } else {
            (extra.username.clone(), extra.credential.as_ref().map(|c| c.expose().to_string()))
        };
        out.push(IceServer { urls: extra.urls.clone(), username, credential });
    }
    (out, now + ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_parsing() {
        assert_eq!(host_of("example.org:8080").as_deref(), Some("example.org"));
        assert_eq!(host_of("Example.ORG").as_deref(), Some("example.org"));
        assert_eq!(host_of("[::1]:8080").as_deref(), Some("[::1]"));
        assert_eq!(host_of("[2001:db8::1]").as_deref(), Some("[2001:db8::1]"));
        assert_eq!(host_of("2001:db8::1").as_deref(), Some("[2001:db8::1]"));
        assert_eq!(host_of("127.0.0.1:1").as_deref(), Some("127.0.0.1"));
        assert_eq!(host_of("evil?x=1"), None);
        assert_eq!(host_of("a b"), None);
        assert_eq!(host_of(""), None);
        assert_eq!(host_of("[nonsense]"), None);
    }

    fn home_cfg() -> Config {
        let mut cfg = Config::default();
        cfg.turn.external_ip = Some("198.51.100.21".parse().unwrap());
        cfg
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn lan_browsers_get_the_lan_address_they_used() {
        let cfg = home_cfg();
        let wildcard: Vec<SocketAddr> = vec!["0.0.0.0:3478".parse().unwrap()];
        let ifaces = || vec![ip("127.0.0.1"), ip("10.77.1.10"), ip("192.168.5.1")];
        // The laptop typed the server's LAN address: it gets exactly that one.
        let h = lan_host(&cfg, &wildcard, Some("10.77.1.10:8080"), ip("10.77.1.2"), ifaces);
        assert_eq!(h.as_deref(), Some("10.77.1.10"));
        let h = lan_host(&cfg, &wildcard, Some("192.168.5.1:8080"), ip("192.168.5.9"), ifaces);
        assert_eq!(h.as_deref(), Some("192.168.5.1"));
        // A private address that is not ours is never handed out because a Host header says so.
        let h = lan_host(&cfg, &["10.77.1.10:3478".parse().unwrap()], Some("10.9.9.9"), ip("10.77.1.2"), ifaces);
        assert_eq!(h.as_deref(), Some("10.77.1.10"), "falls back to our own LAN listener");
        // Someone outside (public client address) keeps external_ip, whatever Host they send.
        assert_eq!(lan_host(&cfg, &wildcard, Some("10.77.1.10:8080"), ip("198.51.100.22"), ifaces), None);
        // A local reverse proxy (loopback client) is not a person on the LAN.
        assert_eq!(lan_host(&cfg, &wildcard, Some("10.77.1.10:8080"), ip("127.0.0.1"), ifaces), None);
        // A LAN client that used the public address (router with NAT loopback) keeps it: it works for them.
        assert_eq!(lan_host(&cfg, &wildcard, Some("198.51.100.21:8080"), ip("10.77.1.1"), ifaces), None);
        // The same for the public IPv6 address (turn.external_ip6), from a unique-local client address.
        let mut cfg = home_cfg();
        cfg.turn.external_ip6 = Some(ip("2001:db8:1::10"));
        let dual: Vec<SocketAddr> = vec!["[::]:3478".parse().unwrap(), "[fd00::10]:3478".parse().unwrap()];
        assert_eq!(lan_host(&cfg, &dual, Some("[2001:db8:1::10]:8080"), ip("fd00::2"), ifaces), None);
    }

    #[test]
    fn lan_browsers_using_a_name_get_the_relay_address_unless_it_is_the_public_name() {
        let mut cfg = home_cfg();
        cfg.turn.relay_ip = Some(ip("10.77.1.10"));
        cfg.http.public_url = Some("https://chat.example.org".into());
        let wildcard: Vec<SocketAddr> = vec!["0.0.0.0:3478".parse().unwrap()];
        let ifaces = || vec![ip("10.77.1.10")];
        let h = lan_host(&cfg, &wildcard, Some("homeserver.lan:8080"), ip("10.77.1.2"), ifaces);
        assert_eq!(h.as_deref(), Some("10.77.1.10"));
        // The public name through a LAN reverse proxy: the proxy's clients are outside, keep external_ip.
        assert_eq!(lan_host(&cfg, &wildcard, Some("chat.example.org"), ip("10.77.1.5"), ifaces), None);
        // With trusted proxies the client address is the browser's own: a private one is at home (split DNS).
        cfg.http.trusted_proxies = vec!["10.77.1.5/32".parse().unwrap()];
        let h = lan_host(&cfg, &wildcard, Some("chat.example.org"), ip("10.77.1.2"), ifaces);
        assert_eq!(h.as_deref(), Some("10.77.1.10"));
        // No LAN address to offer (ponte itself on a public address): nothing changes.
        let mut public = Config::default();
        public.turn.relay_ip = Some(ip("198.51.100.10"));
        let h = lan_host(&public, &["198.51.100.10:3478".parse().unwrap()], Some("x.lan"), ip("10.0.0.2"), Vec::new);
        assert_eq!(h, None);
    }

    #[test]
    fn family_hosts_are_reachable_addresses_of_the_families_listened_on() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        let mut t = crate::config::TurnConfig {
            relay_ip: Some(ip("192.168.1.10")),
            relay_ip6: Some(ip("2001:db8:1::10")),
            ..Default::default()
        };
        // A private IPv4 relay is no address for people outside; the global IPv6 one is.
        assert_eq!(family_hosts(&t, &[sa("0.0.0.0:3478"), sa("[::]:3478")]), [ip("2001:db8:1::10")]);
        t.external_ip = Some(ip("203.0.113.7"));
        assert_eq!(family_hosts(&t, &[sa("[::]:3478")]), [ip("203.0.113.7"), ip("2001:db8:1::10")], "[::] serves both");
        assert_eq!(family_hosts(&t, &[sa("0.0.0.0:3478")]), [ip("203.0.113.7")], "no IPv6 listener");
        // A ULA relay is not reachable from outside either.
        t.relay_ip6 = Some(ip("fd00::10"));
        assert_eq!(family_hosts(&t, &[sa("[::]:3478")]), [ip("203.0.113.7")]);
        t.external_ip6 = Some(ip("2001:db8:1::10"));
        assert_eq!(family_hosts(&t, &[sa("[::]:3478")]), [ip("203.0.113.7"), ip("2001:db8:1::10")]);
    }
}
