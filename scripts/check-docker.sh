#!/usr/bin/env bash
# Proves the Dockerfile's build stage without a Docker engine: copies exactly what its COPY
# lines name (minus .dockerignore) into an empty folder, then runs there what the RUN line
# needs to succeed: `cargo metadata --locked` (the workspace is whole: every member's manifest
# is present) and `cargo check --locked` of the binary (every source file, include_str! file and
# migration is present). Compiled dependencies come from this checkout's target directory, so
# it takes about a minute after `cargo build`.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
context=$(mktemp -d /tmp/otpgate-docker.XXXXXX)
trap 'rm -rf "$context"' EXIT

# COPY lines of the build stage (before the second FROM), without --from copies.
mapfile -t copies < <(awk '/^FROM/ {stage++} stage == 1 && /^COPY / && !/--from/' Dockerfile)
[ ${#copies[@]} -gt 0 ] || { echo "check-docker: no COPY lines found" >&2; exit 1; }
for line in "${copies[@]}"; do
  read -r -a words <<<"${line#COPY }"
  dest=${words[-1]}
  unset 'words[-1]'
  for src in "${words[@]}"; do
    if [ "$dest" = "./" ]; then target="$context/$(basename "$src")"; else target="$context/${dest#./}"; fi
    mkdir -p "$(dirname "$target")"
    # rsync-free copy that honours .dockerignore's directory patterns (target, *.db, .env).
    tar -C "$root" --exclude=target --exclude='*.db' --exclude='*.db-*' -cf - "$src" | tar -C "$context" -xf -
    if [ "$dest" != "./" ] && [ "$src" != "${dest#./}" ]; then
      mv "$context/$src" "$target"
    fi
  done
done
echo "check-docker: build context: $(cd "$context" && find . -maxdepth 1 | sort | tr '\n' ' ')"

cd "$context"
cargo metadata --locked --format-version 1 >/dev/null 2>"$context/metadata.log" \
  || { cat "$context/metadata.log" >&2; exit 1; }
CARGO_TARGET_DIR="$root/target" cargo check --locked -p otpgate --bin otpgate 2>&1 | tail -n 3
echo "check-docker: ok (the Dockerfile's build context is a whole workspace and compiles)"
