#!/usr/bin/env bash
# Several ponte nodes as one service, in network namespaces (run as root): a load balancer, two ponte nodes with
# their own public addresses (each its own STUN/TURN), Redis on a private network behind them, and two homes
# behind NATs. The test (tests/browser/clusterkit.mjs) starts redis-server, the nodes and HAProxy in them.
#
#   clusterlab.sh up PREFIX [NAT1 [NAT2]]     NAT = cone | symmetric   (default cone)
#   clusterlab.sh down PREFIX
#
# After `up`:
#   PREFIX-inet                                     the "internet": one bridge, 198.51.100.0/24 (TEST-NET-2)
#   PREFIX-dc                                       the operator's private network: one bridge, 10.78.0.0/24
#   PREFIX-lb    wan 198.51.100.10, dc 10.78.0.10   HAProxy: the one address people open (the web page, /ws)
#   PREFIX-n1    wan 198.51.100.11, dc 10.78.0.11   ponte node 1 (its STUN/TURN on the wan address)
#   PREFIX-n2    wan 198.51.100.12, dc 10.78.0.12   ponte node 2
#   PREFIX-db    dc 10.78.0.5 only                  Redis (not reachable from the internet at all)
#   PREFIX-nat1  wan 198.51.100.21, lan 10.77.1.1   home router 1
#   PREFIX-h1    10.77.1.2 (default via nat1)       a computer in home 1
#   PREFIX-nat2  wan 198.51.100.22, lan 10.77.2.1   home router 2
#   PREFIX-h2    10.77.2.2 (default via nat2)       a computer in home 2
# HAProxy reaches the nodes' HTTP over the private network; browsers reach the nodes' TURN on their wan addresses.
# Nothing is connected to the host's own network namespace, so no lab packet can leave the machine.
#
# cone      = iptables MASQUERADE: keeps the source port → endpoint-independent mapping, hole punching works.
# symmetric = MASQUERADE --random-fully: a new random port per destination → only a relay (TURN) gets through.
# Both drop unsolicited inbound packets (as tests/lab/netlab.sh explains).
set -Eeuo pipefail

usage() { echo "usage: $0 up PREFIX [cone|symmetric] [cone|symmetric] | down PREFIX" >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1 P=$2
NODES="inet dc lb n1 n2 db nat1 nat2 h1 h2"

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
  for sw in inet dc; do
    ip -n "$P-$sw" link add br0 type bridge
    ip -n "$P-$sw" link set br0 up
  done

  # plug SWITCH NODE IFNAME ADDR: an interface IFNAME in NODE on SWITCH's bridge
  plug() {
    ip -n "$P-$1" link add "v-$2" type veth peer name "$3" netns "$P-$2"
    ip -n "$P-$1" link set "v-$2" master br0 up
    ip -n "$P-$2" addr add "$4/24" dev "$3"
    ip -n "$P-$2" link set "$3" up
  }
  plug inet lb wan 198.51.100.10
  plug inet n1 wan 198.51.100.11
  plug inet n2 wan 198.51.100.12
  plug inet nat1 wan 198.51.100.21
  plug inet nat2 wan 198.51.100.22
  plug dc lb dc 10.78.0.10
  plug dc n1 dc 10.78.0.11
  plug dc n2 dc 10.78.0.12
  plug dc db dc 10.78.0.5

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
