#!/usr/bin/env bash
# Fuzzes the loaders a user feeds files to (safetensors q/k/v, config, plan) with cargo-fuzz (libFuzzer).
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 20; CI runs the short default)
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 lets the stable toolchain build them.
set -euo pipefail
secs=${1:-20}
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install -q cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
mkdir -p corpus/fuzz_safetensors corpus/fuzz_config corpus/fuzz_plan
# seed the safetensors corpus with a real capture when the shared data is there
seed=../../shared/data/real-qkv/minilm_p00_l0.safetensors
[ -f "$seed" ] && cp "$seed" corpus/fuzz_safetensors/
# seed the plan corpus with a valid plan, so that mutations start from the format's structure
cp ../crates/sage-core/tests/data/plan.json corpus/fuzz_plan/
cargo fuzz build -O
for target in fuzz_safetensors fuzz_config fuzz_plan; do
  cargo fuzz run -O "$target" -- -max_total_time="$secs" -max_len=20000 2>&1 | grep -E "^Done|ERROR|panicked|SUMMARY" || true
  # libFuzzer leaves a crash-* file and a non-zero status on any failure
  if ls artifacts/"$target"/crash-* >/dev/null 2>&1; then
    echo "fuzz target $target found a crash: $(ls artifacts/$target/crash-*)" >&2
    exit 1
  fi
done
