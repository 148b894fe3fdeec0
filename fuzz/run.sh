#!/usr/bin/env bash
# Build every fuzz target (config, turn_core, signaling_parse, signaling_hub, signaling_identity: `cargo fuzz
# list`) and run each for SECONDS (default 30), starting from the committed seeds.
#   bash fuzz/run.sh            # a short pass, as CI does
#   bash fuzz/run.sh 3600       # an hour per target
# Crashes land in fuzz/artifacts/<target>/; add each as a regression test before fixing it.
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP lets the stable toolchain provide them.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-30}
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo fuzz build -O
n=0
for t in $(cargo fuzz list); do
  mkdir -p "corpus/$t"
  seeds=(); [ -d "seeds/$t" ] && seeds=("seeds/$t")
  echo "== fuzzing $t for ${secs}s"
  cargo fuzz run -O "$t" "corpus/$t" "${seeds[@]}" -- -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
    | grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+== ERROR|SUMMARY|Done)' || true
  if ls "artifacts/$t"/crash-* "artifacts/$t"/oom-* "artifacts/$t"/timeout-* >/dev/null 2>&1; then
    echo "fuzz target $t found a failing input: see fuzz/artifacts/$t" >&2
    echo "fuzz: $n passed, 1 failed"
    exit 1
  fi
  n=$((n + 1))
done
echo "fuzz: $n passed, 0 failed"
