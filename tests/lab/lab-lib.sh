# Shared steps of the network-namespace labs (netlab.sh, clusterlab.sh, homelab.sh, dslite.sh): sourced, never run
# by itself.
#
# The sourcing script sets, before sourcing:
#   NODES   the short names of its namespaces (each becomes PREFIX-name)
#   USAGE   its usage line after the script's name
# and defines `up` (its topology, built from the lab_* steps below); then it ends with `lab_main "$@"`, which
# checks the arguments, sets P (the prefix) and runs `up` or `lab_down`.
#
# Everything lives in namespaces; nothing is connected to the host's own network namespace, so no lab packet can
# leave the machine.

usage() { echo "usage: $0 $USAGE" >&2; exit 2; }

# lab_down: kill whatever runs in the lab's namespaces and delete them (fine when some or all are missing).
lab_down() {
  local n ns pid
  for n in $NODES; do
    ns="$P-$n"
    ip netns list 2>/dev/null | grep -qw -- "$ns" || continue
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
}

# lab_nat_mode cone|symmetric: the MASQUERADE flags of that NAT.
# cone      = iptables MASQUERADE: keeps the source port → endpoint-independent mapping, hole punching works.
# symmetric = MASQUERADE --random-fully: a new random port per destination → only a relay (TURN) gets through.
lab_nat_mode() {
  case "$1" in
    cone) echo "" ;;
    symmetric) echo "--random-fully" ;;
    *) echo "unknown NAT type '$1' (cone|symmetric)" >&2; exit 2 ;;
  esac
}

# lab_begin: a clean start (an earlier lab of the same prefix goes), the namespaces with loopback up, and a teardown
# if any later step of `up` fails (`up` ends with `trap - ERR`).
lab_begin() {
  local n
  lab_down
  trap 'lab_down' ERR
  for n in $NODES; do
    ip netns add "$P-$n"
    ip -n "$P-$n" link set lo up
  done
}

# lab_switch NODE: a bridge br0 in NODE (a network segment the others plug into).
lab_switch() {
  ip -n "$P-$1" link add br0 type bridge
  ip -n "$P-$1" link set br0 up
}

# lab_plug SWITCH NODE IFNAME ADDR: an interface IFNAME with ADDR/24 in NODE, on SWITCH's bridge.
lab_plug() {
  ip -n "$P-$1" link add "v-$2" type veth peer name "$3" netns "$P-$2"
  ip -n "$P-$1" link set "v-$2" master br0 up
  ip -n "$P-$2" addr add "$4/24" dev "$3"
  ip -n "$P-$2" link set "$3" up
}

# lab_home I MASQ_FLAGS [ROUTER]: router ROUTER (default natI; its `wan` already plugged) with a LAN 10.77.I.0/24
# to host hI (10.77.I.2). The router drops unsolicited inbound packets before conntrack confirms them: otherwise a
# peer's early punch packet creates an inbound conntrack entry that makes the NAT pick a different port for the
# outgoing flow.
lab_home() {
  local i=$1 flags=$2 r="$P-${3:-nat$1}" h="$P-h$1"
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

# lab_main "$@": `up PREFIX [args…]` runs the script's `up args…`; `down PREFIX` removes the lab.
lab_main() {
  [ $# -ge 2 ] || usage
  local cmd=$1
  P=$2
  case "$cmd" in
    up) shift 2; up "$@" ;;
    down) lab_down ;;
    *) usage ;;
  esac
}
