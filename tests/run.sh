#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests (including the network-namespace labs, which need
# root), then the browser end-to-end tests in Chromium. Installs nothing: see .ci/run for what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --locked --all-targets

# Debian packaging (cargo-deb, dpkg).
bash tests/deb.sh
# The package under a real systemd (a throw-away systemd-nspawn container): start, reload, crash-restart, stop.
bash tests/systemd-boot.sh

# Benchmarks are commands, not timed tests: a tiny run of each only checks that it still runs against its peer
# and prints its table (no figure is asserted). Real runs and results: docs/benchmarks.md.
bench_smoke() {
  local want=$1 out
  shift
  if ! out=$("$@" 2>&1); then
    echo "$out"
    echo "bench smoke FAILED: $*" >&2
    return 1
  fi
  if ! grep -q -- "$want" <<<"$out"; then
    echo "$out"
    echo "bench smoke FAILED: '$want' missing from the output of: $*" >&2
    return 1
  fi
  echo "bench smoke ok: $*"
}
cargo build --locked --bin ponte --example bench-signaling --example bench-turn
if [ ! -d bench/peerjs/node_modules ]; then
  echo "bench/peerjs/node_modules is missing: run 'npm ci' in bench/peerjs (as .ci/run does)" >&2
  exit 1
fi
bench_smoke "ponte vs peerjs-server" target/debug/examples/bench-signaling --vs-peerjs --clients 40 --pairs 4 --seconds 1
bench_smoke "memory per allocation" target/debug/examples/bench-turn --secs 1 --rounds 1 --allocations 100

if [ -f tests/browser/package.json ]; then
  cargo build --locked --bin ponte
  if [ ! -d tests/browser/node_modules ]; then
    echo "tests/browser/node_modules is missing: run 'npm ci' in tests/browser (as .ci/run does)" >&2
    exit 1
  fi
  (cd tests/browser && node --test --test-concurrency=1)
  # The NAT lab needs root; outside CI without it, the browser benchmark is skipped (labkit says why in CI).
  if [ "$(id -u)" = 0 ] || [ "${CI:-}" = true ]; then
    (cd tests/browser && bench_smoke "browser time-to-connected" node bench-connect.mjs --rounds 1 --only direct,relayed)
  else
    echo "bench smoke skipped: bench-connect.mjs needs root (network namespaces)"
  fi
fi
