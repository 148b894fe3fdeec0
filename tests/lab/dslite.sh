#!/usr/bin/env bash
# A home server reachable only over IPv6 (DS-Lite), in network namespaces (run as root): issue #19.
#
#   dslite.sh up PREFIX PHONES      PHONES = punch | nopunch
#   dslite.sh down PREFIX
#
# After `up` (every address is TEST-NET-2, 2001:db8::/32 documentation space, 10.77/16 or 100.64/10; nothing is
# connected to the host's own namespace, so no lab packet leaves the machine):
#   PREFIX-inet   the "internet": one bridge; IPv4 198.51.100.0/24, IPv6 2001:db8::/64 between the routers
#   PREFIX-cgn    the provider's carrier-grade NAT: wan 198.51.100.31, inside 100.64.0.1/24 towards home 1
#   PREFIX-r1     home router 1: wan 2001:db8::21 (IPv6 only), IPv4 100.64.0.2 behind PREFIX-cgn,
#                 lan 10.77.1.1 + 2001:db8:1::1/64 (the home's delegated prefix)
#   PREFIX-srv    the home server (ponte runs here): 10.77.1.10, 2001:db8:1::10
#   PREFIX-h1     a laptop at home: 10.77.1.2, 2001:db8:1::2
#   PREFIX-r2     phone A's router: wan 198.51.100.22 + 2001:db8::22, lan 10.77.2.1 + 2001:db8:2::1/64
#   PREFIX-h2     phone A (dual stack): 10.77.2.2, 2001:db8:2::2
#   PREFIX-r3     phone B's router: wan 198.51.100.23 + 2001:db8::23, lan 10.77.3.1 + 2001:db8:3::1/64
#   PREFIX-h3     phone B (dual stack): 10.77.3.2, 2001:db8:3::2
#
# IPv4: every home is NATed (MASQUERADE); home 1's IPv4 goes out through r1's NAT *and* the provider's CGNAT, so
# nothing outside can open a connection to the server over IPv4 and no port forward could change that. (Real
# DS-Lite carries that IPv4 in an IPv4-in-IPv6 tunnel to the provider's AFTR; the lab models its effect, a
# carrier-grade NAT, not the tunnel.)
# IPv6: no NAT. Every router is a stateful IPv6 firewall: it forwards what its LAN sends, answers to it
# (conntrack ESTABLISHED/RELATED) and ICMPv6, and drops every other unsolicited inbound packet, except that r1
# opens ponte's ports for the server (TCP 8080, UDP+TCP 3478, UDP 49160-49200, the lab's relay range).
# punch   = the phones' firewalls are just that: UDP hole punching between the phones works (both send first).
# nopunch = the phones' networks also let UDP out only towards the server (as some mobile and corporate networks
#           do): no direct path between the phones, they must relay through ponte's IPv6 relay.
set -Eeuo pipefail

NODES="inet cgn r1 srv h1 r2 h2 r3 h3"
USAGE="up PREFIX punch|nopunch | down PREFIX"
# shellcheck source=lab-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lab-lib.sh"
SRV6=2001:db8:1::10
FWD_UDP="3478,49160:49200"
FWD_TCP="8080,3478"

# Address without duplicate address detection: the lab's addresses are unique by construction, and waiting for
# DAD would leave them "tentative" (unusable) for a second or two.
addr6() { ip -n "$P-$1" -6 addr add "$2" dev "$3" nodad; }

up() {
  local phones=${1:-punch}
  case "$phones" in punch|nopunch) ;; *) usage ;; esac
  lab_begin
  for n in $NODES; do
    ip netns exec "$P-$n" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
    # No router advertisements or autoconfigured addresses: every address and route is set below.
    ip netns exec "$P-$n" sysctl -qw net.ipv6.conf.all.accept_ra=0 net.ipv6.conf.default.accept_ra=0
  done
  lab_switch inet

  # A router's wan port on the internet bridge. $2: IPv4 (or -), $3: IPv6 (or -).
  wan() {
    ip -n "$P-inet" link add "v-$1" type veth peer name wan netns "$P-$1"
    ip -n "$P-inet" link set "v-$1" master br0 up
    [ "$2" = - ] || ip -n "$P-$1" addr add "$2/24" dev wan
    [ "$3" = - ] || addr6 "$1" "$3/64" wan
    ip -n "$P-$1" link set wan up
  }
  wan cgn 198.51.100.31 -
  wan r1 - 2001:db8::21
  wan r2 198.51.100.22 2001:db8::22
  wan r3 198.51.100.23 2001:db8::23

  # The "internet" routes each home's IPv6 prefix to that home's router.
  for r in r1 r2 r3; do
    for h in 1 2 3; do
      [ "$r" = "r$h" ] || ip -n "$P-$r" -6 route add "2001:db8:$h::/64" via "2001:db8::2$h"
    done
    ip netns exec "$P-$r" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
  done

  # The provider's CGNAT in front of home 1's IPv4.
  ip -n "$P-cgn" link add cust type veth peer name cgn netns "$P-r1"
  ip -n "$P-cgn" addr add 100.64.0.1/24 dev cust
  ip -n "$P-cgn" link set cust up
  ip -n "$P-r1" addr add 100.64.0.2/24 dev cgn
  ip -n "$P-r1" link set cgn up
  ip -n "$P-r1" route add default via 100.64.0.1
  ip netns exec "$P-cgn" sysctl -qw net.ipv4.ip_forward=1
  ip netns exec "$P-cgn" iptables -t nat -A POSTROUTING -o wan -j MASQUERADE
  ip netns exec "$P-cgn" iptables -A FORWARD -i wan -m conntrack --ctstate NEW -j DROP

  # A home: router $1 with LAN bridge $2 (IPv4 /24 first three octets) and IPv6 prefix $3, hosts "name:last-octet".
  home() {
    local r=$1 v4=$2 v6=$3
    shift 3
    ip -n "$P-$r" link add lan type bridge
    ip -n "$P-$r" addr add "$v4.1/24" dev lan
    addr6 "$r" "$v6::1/64" lan
    ip -n "$P-$r" link set lan up
    ip netns exec "$P-$r" sysctl -qw net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0 2>/dev/null || true
    for h in "$@"; do
      local name=${h%%:*} last=${h##*:}
      ip -n "$P-$r" link add "p-$name" type veth peer name eth0 netns "$P-$name"
      ip -n "$P-$r" link set "p-$name" master lan up
      ip -n "$P-$name" addr add "$v4.$last/24" dev eth0
      addr6 "$name" "$v6::$last/64" eth0
      ip -n "$P-$name" link set eth0 up
      ip -n "$P-$name" route add default via "$v4.1"
      ip -n "$P-$name" -6 route add default via "$v6::1"
    done
    local out=wan
    [ "$r" = r1 ] && out=cgn
    ip netns exec "$P-$r" iptables -t nat -A POSTROUTING -o "$out" -j MASQUERADE
    ip netns exec "$P-$r" iptables -A FORWARD -i "$out" -m conntrack --ctstate NEW -j DROP
    # The stateful IPv6 firewall every home router runs.
    local f6=(ip netns exec "$P-$r" ip6tables -A FORWARD)
    "${f6[@]}" -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
    "${f6[@]}" -p ipv6-icmp -j ACCEPT
    "${f6[@]}" -i lan -o wan -j ACCEPT
  }
  home r1 10.77.1 2001:db8:1 srv:10 h1:2
  home r2 10.77.2 2001:db8:2 h2:2
  home r3 10.77.3 2001:db8:3 h3:2

  # Home 1 opens ponte's ports for the server in its IPv6 firewall (there is nothing to forward: no NAT).
  local r1=(ip netns exec "$P-r1" ip6tables -A FORWARD -i wan -o lan -d "$SRV6")
  "${r1[@]}" -p udp -m multiport --dports "$FWD_UDP" -j ACCEPT
  "${r1[@]}" -p tcp -m multiport --dports "$FWD_TCP" -j ACCEPT
  for r in r1 r2 r3; do
    ip netns exec "$P-$r" ip6tables -A FORWARD -i wan -j DROP
  done
  if [ "$phones" = nopunch ]; then
    # UDP out only to the server (IPv6; over IPv4 it is unreachable anyway): the phones can use ponte's STUN and
    # relay but never reach each other directly. Inserted first, before the "LAN may send anything" rule.
    for r in r2 r3; do
      ip netns exec "$P-$r" ip6tables -I FORWARD 1 -i lan -o wan -p udp ! -d "$SRV6" -j DROP
      ip netns exec "$P-$r" iptables -I FORWARD 1 -i lan -o wan -p udp -j DROP
    done
  fi
  trap - ERR
}

lab_main "$@"
