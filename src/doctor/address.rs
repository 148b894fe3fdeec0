//! The relay address browsers are told (turn.external_ip or the relay's own) and the ports to forward.

use std::net::SocketAddr;

use super::report::{Level, Report};
use crate::addr::{classify, AddressClass};
use crate::config::Config;

/// The ports a router must forward to this host, as one phrase.
fn forward_list(cfg: &Config) -> String {
    let mut parts = vec![format!("TCP {} (http.listen)", cfg.http.listen.port())];
    if cfg.tls.enabled() {
        parts.push(format!("TCP {} (tls.listen)", cfg.tls.listen.port()));
    }
    let mut udp: Vec<u16> = cfg.turn.listen_udp.iter().map(|a| a.port()).collect();
    let mut tcp: Vec<u16> = cfg.turn.listen_tcp.iter().map(|a| a.port()).collect();
    udp.sort_unstable();
    udp.dedup();
    tcp.sort_unstable();
    tcp.dedup();
    let join = |v: &[u16]| v.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    if !udp.is_empty() && udp == tcp {
        parts.push(format!("UDP and TCP {} (turn.listen_udp, turn.listen_tcp)", join(&udp)));
    } else {
        if !udp.is_empty() {
            parts.push(format!("UDP {} (turn.listen_udp)", join(&udp)));
        }
        if !tcp.is_empty() {
            parts.push(format!("TCP {} (turn.listen_tcp)", join(&tcp)));
        }
    }
    parts.push(format!(
        "UDP {}-{} (turn.relay_port_min..relay_port_max)",
        cfg.turn.relay_port_min, cfg.turn.relay_port_max
    ));
    parts.join(", ")
}

pub(super) fn check_address(r: &mut Report, cfg: &Config) {
    let t = &cfg.turn;
    if !t.enabled {
        r.add("address", Level::Ok, "turn.enabled = false: no relay address to advertise", None);
        return;
    }
    let listen: Vec<SocketAddr> = t.listen_udp.iter().chain(&t.listen_tcp).copied().collect();
    let forward = forward_list(cfg);
    // One line per relay family (at most one relay address each): what browsers are told, and whether people
    // outside can reach it.
    let mut reachable = Vec::new();
    for relay in crate::turn::relay_ips(t, &listen) {
        let v6 = relay.is_ipv6();
        let family = if v6 { "IPv6" } else { "IPv4" };
        let external = t.external_for(v6);
        let advertised = external.unwrap_or(relay);
        // The key that holds each address: an IPv6 address may sit in the plain keys (IPv6-only homes).
        let ext_key = if t.external_ip == external { "turn.external_ip" } else { "turn.external_ip6" };
        let relay_key = if t.relay_ip == Some(relay) { "turn.relay_ip" } else { "turn.relay_ip6" };
        let source = match external {
            Some(_) => ext_key.to_string(),
            None if t.relay_ips_configured().contains(&relay) => format!("{relay_key}; turn.external_ip is not set"),
            None if v6 => "the IPv6 listener or this host's routes; turn.external_ip6 is not set".to_string(),
            None => "detected from this host's routes; turn.external_ip is not set".to_string(),
        };
        let behind_nat = external.is_some() && classify(relay) != AddressClass::Public && relay != advertised;
        let class = classify(advertised);
        if matches!(class, AddressClass::Public | AddressClass::Documentation) {
            reachable.push((family, advertised));
        }
        let (level, what, advice) = judge(class, external.is_some(), behind_nat, relay, &forward, v6);
        let relay_note = if relay != advertised { format!("; relay sockets bind on {relay}") } else { String::new() };
        r.add(
            "address",
            level,
            format!("advertised relay address {advertised} ({family}, {source}) is {what}{relay_note}"),
            advice,
        );
    }
    check_families(r, cfg, &listen, &reachable);
}

/// Which families people outside reach this server over, and what the missing family costs (issue #19).
fn check_families(r: &mut Report, cfg: &Config, listen: &[SocketAddr], reachable: &[(&str, std::net::IpAddr)]) {
    let listens =
        |v6: bool| listen.iter().any(|a| a.is_ipv6() == v6 || (!v6 && a.is_ipv6() && a.ip().is_unspecified()));
    let names = |v6: bool| {
        let v: Vec<String> = cfg
            .turn
            .listen_udp
            .iter()
            .map(|a| format!("udp {a}"))
            .chain(cfg.turn.listen_tcp.iter().map(|a| format!("tcp {a}")))
            .zip(listen.iter())
            .filter(|(_, a)| a.is_ipv6() == v6 || (!v6 && a.is_ipv6() && a.ip().is_unspecified()))
            .map(|(s, _)| s)
            .collect();
        if v.is_empty() {
            "no listener".to_string()
        } else {
            v.join(", ")
        }
    };
    let summary = format!("STUN/TURN listeners: IPv4 {}; IPv6 {}", names(false), names(true));
    let has = |f: &str| reachable.iter().any(|(n, _)| *n == f);
    match (has("IPv4"), has("IPv6")) {
        (true, true) => r.add("families", Level::Ok, format!("reachable over IPv4 and IPv6 ({summary})"), None),
        (false, true) => r.add(
            "families",
            Level::Warn,
            format!("reachable over IPv6 only ({summary})"),
            Some(
                "visitors on IPv4-only networks cannot reach this server at all (its IPv4 is private or behind the \
                 provider's carrier-grade NAT, e.g. DS-Lite); visitors with IPv6 (most mobile networks, many homes) \
                 chat normally, and the IPv6 relay also carries their traffic to IPv4-only peers. For IPv4-only \
                 visitors: a public IPv4 address from the provider, or a small dual-stack server in front"
                    .into(),
            ),
        ),
        (true, false) => r.add(
            "families",
            Level::Warn,
            format!("reachable over IPv4 only ({summary})"),
            Some(if listens(true) {
                "the IPv6 relay address is not reachable from outside (set turn.relay_ip6/turn.external_ip6 to this \
                 host's global IPv6 address); IPv6-only visitors reach IPv4 through their provider's NAT64 at best"
                    .into()
            } else {
                "IPv6-only visitors reach IPv4 through their provider's NAT64 at best; add an IPv6 listener (e.g. \
                 \"[::]:3478\" in turn.listen_udp and turn.listen_tcp) if this host has a global IPv6 address"
                    .into()
            }),
        ),
        // Nothing reachable from outside (loopback, a LAN-only server): the address lines above say why already.
        (false, false) => {}
    }
}

/// The verdict on one family's advertised relay address.
fn judge(
    class: AddressClass,
    external: bool,
    behind_nat: bool,
    relay: std::net::IpAddr,
    forward: &str,
    v6: bool,
) -> (Level, String, Option<String>) {
    let ext_key = if v6 { "turn.external_ip6" } else { "turn.external_ip" };
    match class {
        AddressClass::Public => (
            Level::Ok,
            "public: browsers anywhere can reach the relay".to_string(),
            Some(if behind_nat {
                format!("the router must forward {forward} to this host ({relay})")
            } else if v6 {
                format!("a firewall (also the home router's IPv6 firewall) must let in {forward} to {relay}")
            } else {
                format!("a firewall must let in {forward}")
            }),
        ),
        AddressClass::Private if external => (
            Level::Warn,
            "a private LAN address: only devices on that network can reach the relay".to_string(),
            Some(format!("{ext_key} should be the router's public address unless everybody chats from this LAN")),
        ),
        AddressClass::Private if v6 => (
            Level::Warn,
            "a unique-local (ULA) address: only devices of this site can reach the relay".to_string(),
            Some("set turn.relay_ip6 to this host's global IPv6 address".into()),
        ),
        AddressClass::Private => (
            Level::Warn,
            "a private LAN address: only devices on this network can reach the relay".to_string(),
            Some(format!(
                "behind a home router, set turn.external_ip to the router's public address and forward {forward} \
                 to this host ({relay})"
            )),
        ),
        AddressClass::Cgnat => (
            Level::Warn,
            "in 100.64.0.0/10: your provider's carrier-grade NAT (or a VPN such as Tailscale)".to_string(),
            Some(
                "port forwarding cannot get through a provider's NAT, so people outside cannot reach the relay; ask \
                 the provider for a public IPv4 address, use IPv6, or run ponte on a small server with a public address"
                    .into(),
            ),
        ),
        AddressClass::Loopback => (
            Level::Warn,
            "loopback: only programs on this machine can reach the relay".to_string(),
            Some("set turn.relay_ip to this host's LAN or public address (and turn.external_ip behind a router)".into()),
        ),
        AddressClass::LinkLocal => (
            Level::Warn,
            "link-local: not even other networks of this site can reach the relay".to_string(),
            Some("set turn.relay_ip to a routable address of this host".into()),
        ),
        AddressClass::Documentation => (
            Level::Warn,
            "in a documentation range (TEST-NET or 2001:db8::/32) that no real network routes".to_string(),
            Some(
                "fine in a test lab; for real use set turn.external_ip to your public address (the lab also needs \
                 turn.allow_peers for its peers)"
                    .into(),
            ),
        ),
        AddressClass::Special => (
            Level::Warn,
            "a special-purpose address no Internet host can reach".to_string(),
            Some(format!("set {ext_key} to your public address")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(c: &Config) -> String {
        let mut r = Report { config: None, ok: true, checks: Vec::new() };
        check_address(&mut r, c);
        r.to_text()
    }

    #[test]
    fn each_family_gets_its_line_and_one_family_only_is_a_warning() {
        let mut c = Config::default();
        c.turn.listen_udp = vec!["0.0.0.0:3478".parse().unwrap(), "[::]:3478".parse().unwrap()];
        c.turn.relay_ip = Some("192.168.1.10".parse().unwrap());
        c.turn.relay_ip6 = Some("2a01:4f8::10".parse().unwrap());
        c.turn.external_ip = Some("100.64.3.4".parse().unwrap());
        // DS-Lite: the IPv4 side is the provider's CGNAT, the IPv6 address is global.
        let t = report(&c);
        assert!(t.contains("advertised relay address 100.64.3.4 (IPv4, turn.external_ip) is in 100.64.0.0/10"), "{t}");
        assert!(
            t.contains(
                "advertised relay address 2a01:4f8::10 (IPv6, turn.relay_ip6; turn.external_ip is not set) is public"
            ),
            "{t}"
        );
        assert!(t.contains("WARN  families  reachable over IPv6 only"), "{t}");
        assert!(t.contains("visitors on IPv4-only networks cannot reach this server"), "{t}");
        assert!(t.contains("IPv4 udp 0.0.0.0:3478, udp [::]:3478, tcp 0.0.0.0:3478; IPv6 udp [::]:3478)"), "{t}");
        c.turn.external_ip = Some("203.0.113.7".parse().unwrap());
        assert!(report(&c).contains("ok    families  reachable over IPv4 and IPv6"), "{}", report(&c));
        c.turn.relay_ip6 = None;
        c.turn.listen_udp.truncate(1);
        let t = report(&c);
        assert!(t.contains("WARN  families  reachable over IPv4 only") && t.contains("add an IPv6 listener"), "{t}");
    }

    #[test]
    fn forward_list_names_every_port_and_key() {
        let mut c = Config::default();
        assert_eq!(
            forward_list(&c),
            "TCP 8080 (http.listen), UDP and TCP 3478 (turn.listen_udp, turn.listen_tcp), UDP 49152-65535 \
             (turn.relay_port_min..relay_port_max)"
        );
        c.turn.listen_tcp = vec!["0.0.0.0:443".parse().unwrap()];
        c.turn.relay_port_min = 50000;
        c.turn.relay_port_max = 50100;
        let s = forward_list(&c);
        assert!(s.contains("UDP 3478 (turn.listen_udp), TCP 443 (turn.listen_tcp), UDP 50000-50100"), "{s}");
    }
}
