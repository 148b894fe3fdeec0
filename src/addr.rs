//! What kind of address an IP is (public, private, carrier-grade NAT, documentation…): the one classification
//! the relay's warnings and `ponte doctor`'s advice share.

use std::net::{IpAddr, Ipv4Addr};

/// Reduce an address to the one form the policy reasons about: IPv4 stays IPv4; IPv4-mapped (`::ffff:a.b.c.d`)
/// and IPv4-compatible (`::a.b.c.d`, except `::` and `::1`) IPv6 become the IPv4 address they carry, because
/// that is where a dual-stack socket would actually send. Other IPv6 forms stay IPv6 (their prefixes are
/// denied whole above).
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
                return IpAddr::V4(Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8));
            }
            ip
        }
    }
}

/// One source for the per-source limits: an IPv4 address, or the /64 an IPv6 address is in (one subscriber's
/// prefix; a host can use any of its 2^64 addresses, so counting single IPv6 addresses would bound nothing).
pub fn source_of(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// What kind of address an IP is, for the advertised-address advice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    Public,
    /// RFC 1918 or IPv6 unique-local: a LAN address.
    Private,
    /// 100.64.0.0/10: the provider's carrier-grade NAT (or a VPN such as Tailscale).
    Cgnat,
    Loopback,
    LinkLocal,
    /// TEST-NET-1/2/3, 2001:db8::/32, 3fff::/20: examples and test labs.
    Documentation,
    /// Anything else no Internet host can have (benchmarking, reserved, multicast, unspecified…).
    Special,
}

/// Classify `ip` (IPv4-mapped IPv6 as the IPv4 it carries).
pub fn classify(ip: IpAddr) -> AddressClass {
    use AddressClass::*;
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Loopback
            } else if v4.is_private() {
                Private
            } else if o[0] == 100 && (o[1] & 0xC0) == 64 {
                Cgnat
            } else if v4.is_link_local() {
                LinkLocal
            } else if v4.is_documentation() {
                Documentation
            } else if v4.is_unspecified()
                || o[0] == 0
                || v4.is_multicast()
                || o[0] >= 240
                || (o[0] == 198 && (o[1] & 0xFE) == 18)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
            {
                Special
            } else {
                Public
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6.is_loopback() {
                Loopback
            } else if (s[0] & 0xfe00) == 0xfc00 {
                Private
            } else if (s[0] & 0xffc0) == 0xfe80 {
                LinkLocal
            } else if (s[0] == 0x2001 && s[1] == 0x0db8) || (s[0] & 0xfff0) == 0x3ff0 {
                Documentation
            } else if (s[0] & 0xe000) == 0x2000 {
                Public
            } else {
                Special
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_classes() {
        use AddressClass::*;
        for (ip, class) in [
            ("8.8.8.8", Public),
            ("2a00:1450::1", Public),
            ("::ffff:9.9.9.9", Public),
            ("10.77.1.2", Private),
            ("172.16.0.1", Private),
            ("192.168.1.10", Private),
            ("fd12::1", Private),
            ("::ffff:192.168.1.1", Private),
            ("100.64.0.1", Cgnat),
            ("100.127.255.254", Cgnat),
            ("127.0.0.1", Loopback),
            ("::1", Loopback),
            ("169.254.1.1", LinkLocal),
            ("fe80::1", LinkLocal),
            ("192.0.2.1", Documentation),
            ("198.51.100.10", Documentation),
            ("203.0.113.7", Documentation),
            ("2001:db8::1", Documentation),
            ("3fff::1", Documentation),
            ("198.18.0.1", Special),
            ("240.0.0.1", Special),
            ("0.0.0.0", Special),
            ("224.0.0.1", Special),
            ("ff02::1", Special),
        ] {
            assert_eq!(classify(ip.parse().unwrap()), class, "{ip}");
        }
        // Just outside CGNAT's /10.
        assert_eq!(classify("100.128.0.1".parse().unwrap()), Public);
    }
}
