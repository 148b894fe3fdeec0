#!/usr/bin/env bash
# ponte at home, in network namespaces (run as root): the server sits in home 1 behind the home router, which
# forwards ponte's ports from its public address; a laptop (and a second one) on the same LAN, a phone in home 2.
#
#   homelab.sh up PREFIX LOOPBACK PHONE_NAT    LOOPBACK = loopback | noloopback, PHONE_NAT = cone | symmetric
#   homelab.sh down PREFIX
#
# After `up`:
#   PREFIX-inet                                   the "internet": one bridge, 198.51.100.0/24 (TEST-NET-2)
#   PREFIX-r1    wan 198.51.100.21, lan 10.77.1.1 home router 1; forwards TCP 8080, UDP+TCP 3478, UDP 3479 and
#                                                 UDP 49160-49200 (the lab's relay range) to 10.77.1.10
#   PREFIX-srv   10.77.1.10 (default via r1)      the home server (ponte runs here)
#   PREFIX-h1    10.77.1.2  (default via r1)      a laptop at home
#   PREFIX-h3    10.77.1.3  (default via r1)      a second laptop at home
#   PREFIX-r2    wan 198.51.100.22, lan 10.77.2.1 home router 2 (the phone's NAT)
#   PREFIX-h2    10.77.2.2  (default via r2)      the phone
# The LAN of home 1 is a bridge inside PREFIX-r1 (the router's switch ports). Nothing is connected to the host's
# own network namespace, so no lab packet can leave the machine.
#
# loopback   = r1 also applies its port forwards to packets from the LAN (DNAT) and masquerades them to its LAN
#              address, so the LAN reaches ponte at 198.51.100.21 ("NAT loopback" / hairpin).
# noloopback = what many ISP routers do: a packet from the LAN to 198.51.100.21 is for the router itself, which
#              has nothing on those ports (ICMP port unreachable / TCP RST).
# r1 NATs the LAN with plain MASQUERADE (keeps source ports when it can). r2 is cone (MASQUERADE) or symmetric
# (MASQUERADE --random-fully). Both routers drop unsolicited inbound packets except r1's forwarded ports.
set -Eeuo pipefail

NODES="inet r1 r2 srv h1 h3 h2"
USAGE="up PREFIX loopback|noloopback cone|symmetric | down PREFIX"
# shellcheck source=lab-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lab-lib.sh"
PUB1=198.51.100.21
SRV=10.77.1.10
FWD_UDP="3478,3479,49160:49200"
FWD_TCP="8080,3478"

up() {
  local loopback=${1:-noloopback} phone=${2:-cone} m2
  case "$loopback" in loopback|noloopback) ;; *) usage ;; esac
  case "$phone" in cone|symmetric) m2=$(lab_nat_mode "$phone") ;; *) usage ;; esac
  lab_begin
  lab_switch inet
  lab_plug inet r1 wan "$PUB1"
  lab_plug inet r2 wan 198.51.100.22

  # Home 1: the router's LAN is a bridge with the server and two laptops on it.
  ip -n "$P-r1" link add lan type bridge
  ip -n "$P-r1" addr add 10.77.1.1/24 dev lan
  ip -n "$P-r1" link set lan up
  # Bridged LAN-to-LAN frames must not go through the router's iptables (if br_netfilter is loaded).
  ip netns exec "$P-r1" sysctl -qw net.bridge.bridge-nf-call-iptables=0 2>/dev/null || true
  lanhost() {
    ip -n "$P-r1" link add "p-$1" type veth peer name eth0 netns "$P-$1"
    ip -n "$P-r1" link set "p-$1" master lan up
    ip -n "$P-$1" addr add "$2/24" dev eth0
    ip -n "$P-$1" link set eth0 up
    ip -n "$P-$1" route add default via "$3"
  }
  lanhost srv "$SRV" 10.77.1.1
  lanhost h1 10.77.1.2 10.77.1.1
  lanhost h3 10.77.1.3 10.77.1.1
  local r1=(ip netns exec "$P-r1")
  "${r1[@]}" sysctl -qw net.ipv4.ip_forward=1
  "${r1[@]}" iptables -t nat -A POSTROUTING -o wan -j MASQUERADE
  "${r1[@]}" iptables -t nat -A PREROUTING -i wan -d "$PUB1" -p udp -m multiport --dports "$FWD_UDP" -j DNAT --to-destination "$SRV"
  "${r1[@]}" iptables -t nat -A PREROUTING -i wan -d "$PUB1" -p tcp -m multiport --dports "$FWD_TCP" -j DNAT --to-destination "$SRV"
  "${r1[@]}" iptables -t mangle -A PREROUTING -i wan -d "$PUB1" -p udp -m multiport --dports "$FWD_UDP" -j ACCEPT
  "${r1[@]}" iptables -t mangle -A PREROUTING -i wan -d "$PUB1" -p tcp -m multiport --dports "$FWD_TCP" -j ACCEPT
  "${r1[@]}" iptables -t mangle -A PREROUTING -i wan -m conntrack --ctstate NEW -j DROP
  if [ "$loopback" = loopback ]; then
    "${r1[@]}" iptables -t nat -A PREROUTING -i lan -d "$PUB1" -p udp -m multiport --dports "$FWD_UDP" -j DNAT --to-destination "$SRV"
    "${r1[@]}" iptables -t nat -A PREROUTING -i lan -d "$PUB1" -p tcp -m multiport --dports "$FWD_TCP" -j DNAT --to-destination "$SRV"
    "${r1[@]}" iptables -t nat -A POSTROUTING -o lan -s 10.77.1.0/24 -m conntrack --ctstate DNAT -j MASQUERADE
  fi

  # Home 2: the phone behind its own NAT.
  lab_home 2 "$m2" r2
  trap - ERR
}

lab_main "$@"
