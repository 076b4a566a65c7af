#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/ (its own workspace, outside the root one) and runs each
# for FUZZ_SECONDS (default 30), starting from the seeds in fuzz/seeds/<target>/ plus whatever
# fuzz/corpus/<target>/ holds from earlier runs. Installs cargo-fuzz when missing. cargo-fuzz
# wants nightly rustc flags; on a stable toolchain RUSTC_BOOTSTRAP=1 unlocks them for this build
# only. No sanitizer (a safe-Rust crate; the targets assert their properties themselves), which
# also keeps the instrumented build to one pass. Crashes land in fuzz/artifacts/<target>/; every
# target runs even when one fails, and the closing line counts them.
# FUZZ_PROFILE=dev builds without optimisation: about half the build time from scratch (CI uses
# it; the measurements are in fuzz/README.md), fewer executions per second.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH=${FUZZ_SECONDS:-30}
profile=()
case "${FUZZ_PROFILE:-release}" in
  release) ;;
  dev) profile=(--dev) ;;
  *) echo "FUZZ_PROFILE: release or dev" >&2; exit 2 ;;
esac

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1

echo "==> cargo fuzz build (instrumented, ${FUZZ_PROFILE:-release})"
cargo fuzz build "${profile[@]}" --sanitizer none

targets=$(cargo fuzz list)
passed=0 failed=0
for target in $targets; do
  echo "==> fuzzing $target for ${SECONDS_EACH}s"
  mkdir -p "corpus/$target"
  seeds=()
  [ -d "seeds/$target" ] && seeds=("seeds/$target")
  if cargo fuzz run "${profile[@]}" --sanitizer none "$target" "corpus/$target" "${seeds[@]}" -- \
      -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -print_final_stats=1; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAILED: $target (crash input in fuzz/artifacts/$target/)"
  fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" = 0 ]
