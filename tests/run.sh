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

if [ -f tests/browser/package.json ]; then
  cargo build --locked --bin ponte
  if [ ! -d tests/browser/node_modules ]; then
    echo "tests/browser/node_modules is missing: run 'npm ci' in tests/browser (as .ci/run does)" >&2
    exit 1
  fi
  (cd tests/browser && node --test --test-concurrency=1)
fi
