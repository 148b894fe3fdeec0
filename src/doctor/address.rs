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
    let relay_ips = crate::turn::relay_ips(t, &listen);
    let relay = relay_ips[0];
    let advertised = crate::turn::public_ip(t, &listen);
    let source = match t.external_ip {
        Some(_) => "turn.external_ip".to_string(),
        None if t.relay_ip.is_some() => "turn.relay_ip; turn.external_ip is not set".to_string(),
        None => "detected from this host's routes; turn.external_ip is not set".to_string(),
    };
    let forward = forward_list(cfg);
    let behind_nat = t.external_ip.is_some() && classify(relay) != AddressClass::Public && relay != advertised;
    let (level, what, advice) = match classify(advertised) {
        AddressClass::Public => (
            Level::Ok,
            "public: browsers anywhere can reach the relay".to_string(),
            Some(if behind_nat {
                format!("the router must forward {forward} to this host ({relay})")
            } else {
                format!("a firewall must let in {forward}")
            }),
        ),
        AddressClass::Private if t.external_ip.is_some() => (
            Level::Warn,
            "a private LAN address: only devices on that network can reach the relay".to_string(),
            Some("turn.external_ip should be the router's public address unless everybody chats from this LAN".into()),
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
            Some("set turn.external_ip to your public address".into()),
        ),
    };
    let relay_note = if relay != advertised { format!("; relay sockets bind on {relay}") } else { String::new() };
    r.add("address", level, format!("advertised relay address {advertised} ({source}) is {what}{relay_note}"), advice);
}

#[cfg(test)]
mod tests {
    use super::*;

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
