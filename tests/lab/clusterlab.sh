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
# Both drop unsolicited inbound packets (lab-lib.sh, lab_home, says why). The steps shared with netlab.sh are in
# lab-lib.sh.
set -Eeuo pipefail

NODES="inet dc lb n1 n2 db nat1 nat2 h1 h2"
USAGE="up PREFIX [cone|symmetric] [cone|symmetric] | down PREFIX"
# shellcheck source=lab-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lab-lib.sh"

up() {
  local m1 m2
  m1=$(lab_nat_mode "${1:-cone}"); m2=$(lab_nat_mode "${2:-cone}")
  lab_begin
  lab_switch inet
  lab_switch dc
  lab_plug inet lb wan 198.51.100.10
  lab_plug inet n1 wan 198.51.100.11
  lab_plug inet n2 wan 198.51.100.12
  lab_plug inet nat1 wan 198.51.100.21
  lab_plug inet nat2 wan 198.51.100.22
  lab_plug dc lb dc 10.78.0.10
  lab_plug dc n1 dc 10.78.0.11
  lab_plug dc n2 dc 10.78.0.12
  lab_plug dc db dc 10.78.0.5
  lab_home 1 "$m1"
  lab_home 2 "$m2"
  trap - ERR
}

lab_main "$@"
