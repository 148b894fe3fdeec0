#!/usr/bin/env bash
# A small internet in network namespaces, for NAT traversal tests (run as root).
#
#   netlab.sh up PREFIX [NAT1 [NAT2]]     NAT = cone | symmetric   (default cone)
#   netlab.sh down PREFIX
#
# After `up`:
#   PREFIX-srv   198.51.100.10   "public" server host (ponte runs here)
#   PREFIX-peer  198.51.100.30   "public" echo peer (e.g. turnutils_peer)
#   PREFIX-nat1  wan 198.51.100.21, lan 10.77.1.1   home router 1
#   PREFIX-h1    10.77.1.2 (default via nat1)       a computer in home 1
#   PREFIX-nat2  wan 198.51.100.22, lan 10.77.2.1   home router 2
#   PREFIX-h2    10.77.2.2 (default via nat2)       a computer in home 2
# All "public" hosts hang off one bridge in PREFIX-inet; 198.51.100.0/24 is TEST-NET-2. Nothing is connected to
# the host's own network namespace, so no lab packet can leave the machine.
#
# cone      = iptables MASQUERADE: keeps the source port → endpoint-independent mapping, hole punching works.
# symmetric = MASQUERADE --random-fully: a new random port per destination → only a relay (TURN) gets through.
# Both drop unsolicited inbound packets before conntrack confirms them: otherwise a peer's early punch packet
# creates an inbound conntrack entry that makes the NAT pick a different port for the outgoing flow.
set -Eeuo pipefail

usage() { echo "usage: $0 up PREFIX [cone|symmetric] [cone|symmetric] | down PREFIX" >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1 P=$2
NODES="inet srv peer nat1 nat2 h1 h2"

down() {
  for n in $NODES; do
    ns="$P-$n"
    ip netns list 2>/dev/null | grep -qw -- "$ns" || continue
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
}

nat_mode() {
  case "$1" in
    cone) echo "" ;;
    symmetric) echo "--random-fully" ;;
    *) echo "unknown NAT type '$1' (cone|symmetric)" >&2; exit 2 ;;
  esac
}

up() {
  local m1 m2
  m1=$(nat_mode "${1:-cone}"); m2=$(nat_mode "${2:-cone}")
  down
  trap 'down' ERR
  for n in $NODES; do
    ip netns add "$P-$n"
    ip -n "$P-$n" link set lo up
  done
  ip -n "$P-inet" link add br0 type bridge
  ip -n "$P-inet" link set br0 up

  # attach NODE ADDR: a "public" interface `wan` on the shared bridge
  attach() {
    ip -n "$P-inet" link add "v-$1" type veth peer name wan netns "$P-$1"
    ip -n "$P-inet" link set "v-$1" master br0 up
    ip -n "$P-$1" addr add "$2/24" dev wan
    ip -n "$P-$1" link set wan up
  }
  attach srv 198.51.100.10
  attach peer 198.51.100.30
  attach nat1 198.51.100.21
  attach nat2 198.51.100.22

  # home I MASQ_FLAGS: router natI with a LAN to host hI
  home() {
    local i=$1 flags=$2 r="$P-nat$1" h="$P-h$1"
    ip -n "$r" link add lan type veth peer name eth0 netns "$h"
    ip -n "$r" addr add "10.77.$i.1/24" dev lan
    ip -n "$r" link set lan up
    ip -n "$h" addr add "10.77.$i.2/24" dev eth0
    ip -n "$h" link set eth0 up
    ip -n "$h" route add default via "10.77.$i.1"
    ip netns exec "$r" sysctl -qw net.ipv4.ip_forward=1
    # shellcheck disable=SC2086
    ip netns exec "$r" iptables -t nat -A POSTROUTING -o wan -j MASQUERADE $flags
    ip netns exec "$r" iptables -t mangle -A PREROUTING -i wan -m conntrack --ctstate NEW -j DROP
  }
  home 1 "$m1"
  home 2 "$m2"
  trap - ERR
}

case "$cmd" in
  up) shift 2; up "$@" ;;
  down) down ;;
  *) usage ;;
esac
