#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for FUZZ_SECONDS (default 30) each. Installs cargo-fuzz
# when missing. cargo-fuzz wants nightly rustc flags; on a stable toolchain RUSTC_BOOTSTRAP=1
# unlocks them for this build only. Crashes land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH=${FUZZ_SECONDS:-30}

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1

targets=$(cargo fuzz list)
passed=0
for target in $targets; do
  echo "==> fuzzing $target for ${SECONDS_EACH}s"
  cargo fuzz run --sanitizer none "$target" -- -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048
  passed=$((passed + 1))
done
echo "fuzz: $passed passed, 0 failed"
