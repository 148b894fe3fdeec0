//! The ICE server list each client gets: ponte's own STUN/TURN URLs with per-client TURN REST credentials,
//! then the configured extra servers.

use std::net::IpAddr;

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
    /// Mints the per-client TURN REST credentials.
    pub secret: Secret,
}

/// Build the list for client `id`, with credentials valid from `now`. Returns the list and when its
/// credentials expire. `cfg` is the live config (TTL and extra servers follow reloads); the secret and the bound
/// ports are fixed for the process.
pub fn servers_for(own: &OwnIceServers, cfg: &Config, host: Option<&str>, id: Id, now: u64) -> (Vec<IceServer>, u64) {
    let ttl = cfg.turn.credential_ttl_secs;
    let mut out = Vec::new();
    if own.enabled {
        if let Some(host) = host {
            let mut udp_ports = own.udp_ports.clone();
            let mut tcp_ports = own.tcp_ports.clone();
            // `0.0.0.0:3478` and `[::]:3478` are one URL for a browser.
            udp_ports.sort_unstable();
            udp_ports.dedup();
            tcp_ports.sort_unstable();
            tcp_ports.dedup();
            if !udp_ports.is_empty() {
                out.push(IceServer {
                    urls: udp_ports.iter().map(|p| format!("stun:{host}:{p}")).collect(),
                    username: None,
                    credential: None,
                });
            }
            let mut turn_urls: Vec<String> = udp_ports
                .iter()
                .map(|p| format!("turn:{host}:{p}?transport=udp"))
                .chain(tcp_ports.iter().map(|p| format!("turn:{host}:{p}?transport=tcp")))
                .collect();
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
}
