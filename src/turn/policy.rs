//! Peer address policy (RFC 8656 §21.2.3, "secure by default"): which peers a relay may talk to, after canonicalising every IPv4-in-IPv6 encoding.
//!
//! Why so strict: a TURN server is an authenticated open proxy from the Internet into the server's own
//! network. Relaying to loopback, RFC 1918, link-local (cloud metadata at 169.254.169.254) and friends turns it
//! into an SSRF tool. coturn's CVE-2020-26262 was exactly an alternate encoding (`0.0.0.0`, `[::]`) reaching
//! loopback past its checks, so every address is canonicalised *before* any list is consulted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Why a peer was refused (for logs and counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// An IANA special-purpose range (name of the range).
    SpecialPurpose(&'static str),
    /// One of this server's own addresses.
    OwnAddress,
    /// `turn.deny_peers`.
    Configured,
    /// Another cluster node's relay address, at a port outside the relay range it announces: only its relays
    /// are reachable through this one, not its other services.
    OutsideClusterRelayRange,
}

/// Another cluster node's announced relay address and its relay port range (`turn.relay_port_min..=max` there).
pub type ClusterRelay = (IpAddr, u16, u16);

/// IPv4 special-purpose ranges (IANA IPv4 Special-Purpose Address Registry plus multicast and reserved).
///
/// The documentation ranges (TEST-NET-1/2/3) are refused too: no real host uses them, so a request for one is
/// either a test or a probe, and a LAN numbered out of them (it happens) must not become reachable. A test lab
/// that uses TEST-NET-2 as its "internet" opts in with `turn.allow_peers = ["198.51.100.0/24"]`.
const V4_DENY: &[(&str, &str)] = &[
    ("0.0.0.0/8", "this network"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "shared address space (CGNAT, RFC 6598)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (incl. cloud metadata 169.254.169.254)"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)"),
    ("192.31.196.0/24", "AS112"),
    ("192.52.193.0/24", "AMT"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("192.175.48.0/24", "AS112 direct delegation"),
    ("198.18.0.0/15", "benchmarking (RFC 2544)"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved (incl. broadcast)"),
];

/// IPv6 special-purpose ranges. Ranges that embed IPv4 (NAT64, 6to4, Teredo) are denied whole: a relay has no
/// business sending through translators, and it closes every "embedded private IPv4" trick at once.
const V6_DENY: &[(&str, &str)] = &[
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible (deprecated)"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("::ffff:0:0:0/96", "IPv4-translated (SIIT)"),
    ("64:ff9b::/96", "NAT64 well-known prefix"),
    ("64:ff9b:1::/48", "NAT64 local-use"),
    ("100::/64", "discard-only"),
    ("2001::/23", "IETF protocol assignments (incl. Teredo, benchmarking, ORCHID)"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "SRv6 SIDs"),
    ("fc00::/7", "unique local (ULA)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
];

pub use crate::addr::canonical;

/// The IPv4 address embedded in well-known translation prefixes (NAT64, 6to4, Teredo), for log lines.
pub fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let o = v6.octets();
    if s[0] == 0x64 && s[1] == 0xff9b {
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    if s[0] == 0x2001 && s[1] == 0 {
        // Teredo: the client address is the last 32 bits, inverted.
        return Some(Ipv4Addr::new(!o[12], !o[13], !o[14], !o[15]));
    }
    None
}

fn canonical_net(n: &IpNet) -> IpNet {
    // `::ffff:10.0.0.0/104` in a config means 10.0.0.0/8: compare like with like.
    if let IpNet::V6(v6) = n {
        if let (IpAddr::V4(a), true) = (canonical(IpAddr::V6(v6.network())), v6.prefix_len() >= 96) {
            if v6.network().to_ipv4_mapped().is_some() {
                return IpNet::V4(Ipv4Net::new(a, v6.prefix_len() - 96).expect("prefix <= 32"));
            }
        }
    }
    *n
}

/// The peer policy of one server: the server's own addresses (always refused), then the owner's allow list
/// (wins over the rest), the owner's deny list, and the built-in special-purpose ranges.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    builtin: Vec<(IpNet, &'static str)>,
    own: Vec<IpAddr>,
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    /// Other cluster nodes' relay addresses that the lists above refuse (a private network between the nodes,
    /// a lab), each let through at its node's relay port range only. Sorted by address.
    cluster: Vec<ClusterRelay>,
}

impl PeerPolicy {
    pub fn new(allow: &[IpNet], deny: &[IpNet], own: &[IpAddr]) -> PeerPolicy {
        let mut builtin = Vec::new();
        for (n, why) in V4_DENY {
            builtin.push((IpNet::V4(n.parse::<Ipv4Net>().expect("static range")), *why));
        }
        for (n, why) in V6_DENY {
            builtin.push((IpNet::V6(n.parse::<Ipv6Net>().expect("static range")), *why));
        }
        let mut own: Vec<IpAddr> = own.iter().map(|a| canonical(*a)).filter(|a| !a.is_unspecified()).collect();
        own.sort();
        own.dedup();
        PeerPolicy {
            builtin,
            own,
            allow: allow.iter().map(canonical_net).collect(),
            deny: deny.iter().map(canonical_net).collect(),
            cluster: Vec::new(),
        }
    }

    /// This policy plus the other cluster nodes' relays: each address the policy refuses becomes reachable at
    /// its announced relay ports (and no other port). Addresses the policy allows anyway stay ordinary peers
    /// (any port, like any host on the Internet); this server's own addresses stay refused.
    pub fn with_cluster(mut self, relays: &[ClusterRelay]) -> PeerPolicy {
        let mut cluster: Vec<ClusterRelay> = relays
            .iter()
            .map(|(ip, lo, hi)| (canonical(*ip), *lo, *hi))
            .filter(|(ip, lo, hi)| lo <= hi && !self.own.contains(ip) && self.check(*ip).is_err())
            .collect();
        cluster.sort();
        cluster.dedup();
        self.cluster = cluster;
        self
    }

    /// Check a peer with its port (CreatePermission, ChannelBind): [`PeerPolicy::check`], plus the cluster
    /// exception at the announced relay ports. Returns the canonical address or why not.
    pub fn check_peer(&self, peer: SocketAddr) -> Result<SocketAddr, Denied> {
        match self.check(peer.ip()) {
            Ok(ip) => Ok(SocketAddr::new(ip, peer.port())),
            Err(why) => {
                let ip = canonical(peer.ip());
                let mut ranges = self.cluster.iter().filter(|(a, _, _)| *a == ip).peekable();
                if ranges.peek().is_none() {
                    return Err(why);
                }
                if ranges.any(|(_, lo, hi)| (*lo..=*hi).contains(&peer.port())) {
                    Ok(SocketAddr::new(ip, peer.port()))
                } else {
                    Err(Denied::OutsideClusterRelayRange)
                }
            }
        }
    }

    /// A permission for a cluster node's address covers all its ports (permissions are per address, RFC 8656
    /// §9): a Send indication to one of its ports outside the relay range is refused here. Cheap when there is
    /// no cluster (the list is empty).
    pub fn cluster_port_refused(&self, peer: SocketAddr) -> bool {
        if self.cluster.is_empty() {
            return false;
        }
        let ip = canonical(peer.ip());
        let mut ranges = self.cluster.iter().filter(|(a, _, _)| *a == ip).peekable();
        ranges.peek().is_some() && !ranges.any(|(_, lo, hi)| (*lo..=*hi).contains(&peer.port()))
    }

    /// Check a peer. Returns the canonical address to use (so callers send where they checked) or why not.
    /// Order: `allow_peers` wins over everything (the owner asked for it), then own addresses, the
    /// configured deny list, and the built-in ranges.
    pub fn check(&self, ip: IpAddr) -> Result<IpAddr, Denied> {
        let ip = canonical(ip);
        // The server's own addresses come first: `allow_peers` opens *networks* (a LAN, a lab), and a network
        // that merely contains this server must not make its own services (SSH, HTTP, metrics) reachable
        // through its relay. Only an allow entry naming the exact host (/32, /128) does that, deliberately.
        // (Relay-to-relay traffic is let through by the core, at live relay ports only.)
        if self.own.contains(&ip) {
            let named = self.allow.iter().any(|n| n.prefix_len() == n.max_prefix_len() && n.contains(&ip));
            return if named { Ok(ip) } else { Err(Denied::OwnAddress) };
        }
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return Ok(ip);
        }
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return Err(Denied::Configured);
        }
        if let Some((_, why)) = self.builtin.iter().find(|(n, _)| n.contains(&ip)) {
            return Err(Denied::SpecialPurpose(why));
        }
        Ok(ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> PeerPolicy {
        PeerPolicy::new(&[], &[], &["203.0.113.200".parse().unwrap(), "8.8.4.4".parse().unwrap()])
    }

    fn denied(s: &str) -> bool {
        p().check(s.parse().unwrap()).is_err()
    }

    #[test]
    fn public_addresses_pass() {
        for a in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "11.0.0.1",
            "223.255.255.255",
        ] {
            assert_eq!(p().check(a.parse().unwrap()), Ok(a.parse().unwrap()), "{a} should be allowed");
        }
    }

    #[test]
    fn every_ipv4_special_range_denied() {
        for a in [
            "192.0.2.1",
            "198.51.100.30",
            "203.0.113.9",
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "169.254.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.31.196.1",
            "192.52.193.1",
            "192.88.99.1",
            "192.168.1.1",
            "192.175.48.1",
            "198.18.0.1",
            "198.19.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(denied(a), "{a} must be denied");
        }
    }

    #[test]
    fn every_ipv6_special_range_denied() {
        for a in [
            "2001:db8::1",
            "3fff::1",
            "::ffff:198.51.100.30",
            "::",
            "::1",
            "::2",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "ff05::1:3",
            "64:ff9b::7f00:1",
            "64:ff9b::808:808",
            "64:ff9b:1::a00:1",
            "100::1",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:2::1",
            "2001:10::1",
            "2002:7f00:1::1",
            "2002:808:808::1",
            "5f00::1",
        ] {
            assert!(denied(a), "{a} must be denied");
        }
    }

    #[test]
    fn ipv4_in_ipv6_encodings_are_canonicalised() {
        // Mapped and compatible forms of private/loopback addresses are denied as their IPv4 selves…
        for a in [
            "::ffff:127.0.0.1",
            "::ffff:7f00:1",
            "::127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
            "::0.0.0.2",
            "::ffff:192.168.0.1",
            "::ffff:100.64.0.1",
            "::ffff:224.0.0.1",
        ] {
            assert!(denied(a), "{a} must be denied");
        }
        assert_eq!(canonical("::ffff:127.0.0.1".parse().unwrap()), "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(canonical("::10.1.2.3".parse().unwrap()), "10.1.2.3".parse::<IpAddr>().unwrap());
        assert_eq!(canonical("::1".parse().unwrap()), "::1".parse::<IpAddr>().unwrap());
        // …and mapped public addresses are allowed, returned in IPv4 form so the relay sends where it checked.
        assert_eq!(p().check("::ffff:8.8.8.8".parse().unwrap()), Ok("8.8.8.8".parse().unwrap()));
        // Translators are refused even when they embed a public address.
        assert!(denied("64:ff9b::8.8.8.8"));
        assert!(denied("::ffff:0:8.8.8.8"));
        assert_eq!(embedded_ipv4("64:ff9b::a00:1".parse().unwrap()), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(embedded_ipv4("2002:c0a8:101::".parse().unwrap()), Some("192.168.1.1".parse().unwrap()));
        assert_eq!(
            embedded_ipv4("2001:0:4136:e378:8000:63bf:3fff:fdd2".parse().unwrap()),
            Some("192.0.2.45".parse().unwrap())
        );
    }

    #[test]
    fn own_addresses_denied_in_every_form() {
        assert_eq!(p().check("203.0.113.200".parse().unwrap()), Err(Denied::OwnAddress));
        assert_eq!(p().check("8.8.4.4".parse().unwrap()), Err(Denied::OwnAddress));
        assert_eq!(p().check("::ffff:8.8.4.4".parse().unwrap()), Err(Denied::OwnAddress));
        assert_eq!(p().check("::8.8.4.4".parse().unwrap()), Err(Denied::OwnAddress));
    }

    #[test]
    fn allow_wins_and_deny_adds() {
        let pol = PeerPolicy::new(
            &["192.168.1.0/24".parse().unwrap(), "127.0.0.1/32".parse().unwrap()],
            &["8.8.8.0/24".parse().unwrap(), "::ffff:9.9.9.0/120".parse().unwrap()],
            &["127.0.0.1".parse().unwrap()],
        );
        assert!(pol.check("192.168.1.20".parse().unwrap()).is_ok());
        assert!(pol.check("::ffff:192.168.1.20".parse().unwrap()).is_ok(), "allow list matches the canonical form");
        assert!(pol.check("192.168.2.20".parse().unwrap()).is_err());
        assert!(pol.check("127.0.0.1".parse().unwrap()).is_ok(), "an own address named exactly is allowed");
        assert!(pol.check("127.0.0.2".parse().unwrap()).is_err());
        assert_eq!(pol.check("8.8.8.8".parse().unwrap()), Err(Denied::Configured));
        assert_eq!(pol.check("::ffff:8.8.8.8".parse().unwrap()), Err(Denied::Configured));
        assert_eq!(
            pol.check("9.9.9.9".parse().unwrap()),
            Err(Denied::Configured),
            "mapped CIDR in config canonicalised"
        );
        assert!(pol.check("8.8.9.8".parse().unwrap()).is_ok());
    }

    #[test]
    fn allowing_a_network_does_not_open_the_server_itself() {
        // A LAN owner allows 192.168.1.0/24; the server is 192.168.1.10 on that LAN.
        let own: Vec<IpAddr> = vec!["192.168.1.10".parse().unwrap()];
        let pol = PeerPolicy::new(&["192.168.1.0/24".parse().unwrap()], &[], &own);
        assert!(pol.check("192.168.1.20".parse().unwrap()).is_ok());
        assert_eq!(pol.check("192.168.1.10".parse().unwrap()), Err(Denied::OwnAddress));
        assert_eq!(pol.check("::ffff:192.168.1.10".parse().unwrap()), Err(Denied::OwnAddress));
        // Naming the host exactly is a deliberate choice and is honoured.
        let pol = PeerPolicy::new(&["192.168.1.10/32".parse().unwrap()], &[], &own);
        assert!(pol.check("192.168.1.10".parse().unwrap()).is_ok());
    }

    /// `[cluster]`: another node's relay address that the policy refuses is reachable at its announced relay
    /// ports only (its SSH, HTTP, metrics stay out of reach); a public node address is an ordinary peer; this
    /// server's own address is never opened by an announcement.
    #[test]
    fn cluster_relays_open_only_their_relay_ports() {
        let own: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap()];
        let pol = PeerPolicy::new(&[], &[], &own).with_cluster(&[
            ("10.0.0.7".parse().unwrap(), 49152, 65535),
            ("::ffff:198.51.100.20".parse().unwrap(), 40000, 40099),
            ("8.8.8.8".parse().unwrap(), 50000, 50010),
            ("10.0.0.5".parse().unwrap(), 1, 65535),
        ]);
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(pol.check_peer(sa("10.0.0.7:49152")), Ok(sa("10.0.0.7:49152")));
        assert_eq!(pol.check_peer(sa("10.0.0.7:65535")), Ok(sa("10.0.0.7:65535")));
        assert_eq!(pol.check_peer(sa("10.0.0.7:22")), Err(Denied::OutsideClusterRelayRange));
        assert_eq!(pol.check_peer(sa("10.0.0.7:49151")), Err(Denied::OutsideClusterRelayRange));
        assert!(pol.cluster_port_refused(sa("10.0.0.7:8080")));
        assert!(!pol.cluster_port_refused(sa("10.0.0.7:50000")));
        // Announced in mapped form, checked in canonical form.
        assert_eq!(pol.check_peer(sa("198.51.100.20:40050")), Ok(sa("198.51.100.20:40050")));
        assert_eq!(pol.check_peer(sa("[::ffff:198.51.100.20]:40100")), Err(Denied::OutsideClusterRelayRange));
        // Only the exact host.
        assert_eq!(pol.check_peer(sa("10.0.0.8:50000")), Err(Denied::SpecialPurpose("private (RFC 1918)")));
        // A public node is an ordinary peer: any port, no port check on Send.
        assert_eq!(pol.check_peer(sa("8.8.8.8:22")), Ok(sa("8.8.8.8:22")));
        assert!(!pol.cluster_port_refused(sa("8.8.8.8:22")));
        // Our own address stays refused whatever another node announces.
        assert_eq!(pol.check_peer(sa("10.0.0.5:50000")), Err(Denied::OwnAddress));
        // Without a cluster nothing changes.
        let plain = PeerPolicy::new(&[], &[], &own);
        assert!(plain.check_peer(sa("10.0.0.7:50000")).is_err());
        assert!(!plain.cluster_port_refused(sa("10.0.0.7:22")));
    }
}
