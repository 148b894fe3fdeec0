#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs what it needs (tests/setup.sh; root), then the Rust
# unit and integration tests (including the network-namespace labs), the Debian package under a real systemd,
# benchmark smoke runs, the browser end-to-end tests, and a short pass of every fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/setup.sh

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
bench_smoke "ponte vs peerjs-server" target/debug/examples/bench-signaling --vs-peerjs --clients 40 --pairs 4 --seconds 1
bench_smoke "memory per allocation" target/debug/examples/bench-turn --secs 1 --rounds 1 --allocations 100
cargo build --locked --example bench-call
bench_smoke "max concurrent calls without loss" target/debug/examples/bench-call --secs 1 --max-calls 2

if [ -f tests/browser/package.json ]; then
  cargo build --locked --bin ponte
  (cd tests/browser && node --test --test-concurrency=1)
  # The NAT lab needs root; outside CI without it, the browser benchmark is skipped (labkit says why in CI).
  if [ "$(id -u)" = 0 ] || [ "${CI:-}" = true ]; then
    (cd tests/browser && bench_smoke "browser time-to-connected" node bench-connect.mjs --rounds 1 --only direct,relayed)
  else
    echo "bench smoke skipped: bench-connect.mjs needs root (network namespaces)"
  fi
fi

# A short pass of every fuzz target from the committed seeds (fuzz/run.sh 3600 runs them for an hour each).
bash fuzz/run.sh 20
