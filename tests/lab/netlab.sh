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
# Both drop unsolicited inbound packets before conntrack confirms them (lab-lib.sh, lab_home, says why).
# The steps shared with clusterlab.sh are in lab-lib.sh.
set -Eeuo pipefail

NODES="inet srv peer nat1 nat2 h1 h2"
USAGE="up PREFIX [cone|symmetric] [cone|symmetric] | down PREFIX"
# shellcheck source=lab-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lab-lib.sh"

up() {
  local m1 m2
  m1=$(lab_nat_mode "${1:-cone}"); m2=$(lab_nat_mode "${2:-cone}")
  lab_begin
  lab_switch inet
  # the "public" hosts: an interface `wan` each on the shared bridge
  lab_plug inet srv wan 198.51.100.10
  lab_plug inet peer wan 198.51.100.30
  lab_plug inet nat1 wan 198.51.100.21
  lab_plug inet nat2 wan 198.51.100.22
  lab_home 1 "$m1"
  lab_home 2 "$m2"
  trap - ERR
}

lab_main "$@"
