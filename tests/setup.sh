#!/usr/bin/env bash
# Installs everything the test suite needs on a Debian 12 machine, and nothing that is already there (so a second
# run takes seconds). Called by tests/run.sh; needs root for apt when a package is missing.
#
# apt: iproute2/iptables (the network-namespace NAT lab), coturn (reference STUN/TURN clients and peer), chromium
# and firefox-esr (browser tests, driven by npm playwright-core / puppeteer-core: never a downloaded browser),
# systemd-container (systemd-nspawn boots a throw-away container for the .deb), zbar-tools (decodes the share-link
# QR code), pebble (the ACME test CA), redis-server and haproxy (the cluster tests start their own). cargo: cargo-deb (packaging test), cargo-fuzz (the fuzz pass). npm: the
# browser test drivers and peerjs-server (the signaling benchmark's peer).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(iproute2 iptables iputils-ping procps ca-certificates systemd systemd-container coturn chromium
  firefox-esr fonts-dejavu-core zbar-tools pebble redis-server haproxy)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "tests/setup.sh: missing Debian packages: ${missing[*]}; run the tests as root (sudo) so they can be installed" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # The coturn, redis-server and haproxy packages may start their own services; the tests run the binaries
  # themselves, on ports of their own.
  (systemctl stop coturn 2>/dev/null || service coturn stop 2>/dev/null || pkill -x turnserver) || true
  (systemctl stop redis-server 2>/dev/null || service redis-server stop 2>/dev/null || pkill -x redis-server) || true
  (systemctl stop haproxy 2>/dev/null || service haproxy stop 2>/dev/null || pkill -x haproxy) || true
fi

command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --quiet
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet

# npm ci only when node_modules is missing or older than the lock file.
for dir in tests/browser tests/turn-browser bench/peerjs; do
  if [ ! -d "$dir/node_modules" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules" ]; then
    (cd "$dir" && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund && touch node_modules)
  fi
done
