#!/usr/bin/env bash
# Runs the README's quick start as written: `cargo run` (on a free port, in a temporary working
# directory) and then the README's shell block between the `quickstart` markers, pasted line by
# line with `localhost:8000` pointed at that port. Fails when any step fails, when the code is
# not 6 digits, when a token is missing, or when the logged-out token still works. Needs curl
# and jq (installed with apt when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

for tool in curl jq; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then apt-get install -y -qq "$tool" >/dev/null; else sudo apt-get install -y -qq "$tool" >/dev/null; fi
  fi
done

work=$(mktemp -d /tmp/otpgate-quickstart.XXXXXX)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
server=""
cleanup() {
  status=$?
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  [ $status -ne 0 ] && [ -f "$work/server.log" ] && tail -n 20 "$work/server.log" >&2
  rm -rf "$work"
  exit $status
}
trap cleanup EXIT INT TERM

# The quick start's first command, `cargo run`, with nothing else configured.
(cd "$work" && exec env -i PATH="$PATH" HOME="${HOME:-/root}" PORT="$port" \
  cargo run --quiet --locked --manifest-path "$root/Cargo.toml" >"$work/server.log" 2>&1) &
server=$!
# Up to 10 minutes: `cargo run` builds the root package with its own feature set, which may differ
# from the workspace build before it (and a new user's first run compiles everything).
for _ in $(seq 1 3000); do
  curl -fs "localhost:$port/health" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { echo "quickstart: the server exited" >&2; exit 1; }
  sleep 0.2
done
grep -q "listening: API at http://localhost:$port/api/auth, docs at http://localhost:$port/docs" \
  "$work/server.log" || { echo "quickstart: no start-up line with the API and docs URLs" >&2; exit 1; }

# The README's block, as written, then the checks of what it should have done.
block=$(awk '/^<!-- quickstart/ {on=1; next} /^<!-- \/quickstart -->/ {on=0} on' README.md \
  | sed -e '/^```/d' -e "s/localhost:8000/localhost:$port/g")
[ -n "$block" ] || { echo "quickstart: no quickstart block in README.md" >&2; exit 1; }
cat > "$work/steps.sh" <<STEPS
set -euo pipefail
$block
[[ "\$CODE" =~ ^[0-9]{6}\$ ]] || { echo "quickstart: code \$CODE is not 6 digits" >&2; exit 1; }
[ -n "\$ACCESS" ] && [ "\$ACCESS" != null ] && [ -n "\$REFRESH" ] && [ "\$REFRESH" != null ] \
  || { echo "quickstart: no tokens" >&2; exit 1; }
after=\$(curl -s localhost:$port/api/auth/me -H "authorization: Bearer \$ACCESS" | jq -r .code)
[ "\$after" = invalid_token ] || { echo "quickstart: the logged-out token still works (\$after)" >&2; exit 1; }
STEPS
bash "$work/steps.sh" > "$work/steps.out"
grep -q '"phone":"+919876543210"' "$work/steps.out" || { echo "quickstart: /me did not answer" >&2; cat "$work/steps.out" >&2; exit 1; }
grep -q '{"status":"logged_out"}' "$work/steps.out" || { echo "quickstart: no logout" >&2; exit 1; }
echo "quickstart: ok ($(grep -c . "$work/steps.out") lines of output, the README's block as written)"
