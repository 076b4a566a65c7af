#!/usr/bin/env bash
# API fuzzing against our own OpenAPI document: starts otpgate (embedded backends, ES256 keys,
# limits off so every request reaches the handlers), logs a user in for a bearer token, and runs
# schemathesis (installed from PyPI into a temporary venv) with every check but
# positive_data_acceptance: whether a phone number is valid depends on libphonenumber's
# metadata, which no JSON Schema can express, so schema-valid strings like "0" are rightly 422.
# Fails on any server error, schema violation or undeclared status, or on fewer than
# MIN_REQUESTS generated test cases. Extra arguments go to `schemathesis run`.
set -euo pipefail
cd "$(dirname "$0")/.."
EXAMPLES=${EXAMPLES:-500}
MIN_REQUESTS=${MIN_REQUESTS:-2000}

log() { printf '==> %s\n' "$*" >&2; }

work=$(mktemp -d /tmp/otpgate-fuzz.XXXXXX)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

log "installing schemathesis in a venv"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --disable-pip-version-check schemathesis

log "building otpgate"
cargo build --locked --quiet --bin otpgate
bin="$PWD/target/debug/otpgate"
"$bin" keygen --alg ES256 > "$work/jwt.pem"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log "starting otpgate on 127.0.0.1:$port"
(cd "$work" && env -i PATH="$PATH" HOST=127.0.0.1 PORT="$port" LOG_LEVEL=warn \
  RATE_LIMIT_ENABLED=false OTP_RESEND_SECONDS=0 JWT_ALGORITHM=ES256 \
  JWT_PRIVATE_KEY_FILE="$work/jwt.pem" \
  WHATSAPP_VERIFY_TOKEN=fuzz-verify WHATSAPP_WEBHOOK_SECRET=fuzz-secret \
  WHATSAPP_BUSINESS_NUMBER=+15550001234 TELEGRAM_BOT_TOKEN=1:fuzz \
  TELEGRAM_API_BASE=http://127.0.0.1:9 TELEGRAM_WEBHOOK_SECRET=fuzz-secret \
  TELEGRAM_BOT_USERNAME=otpgate_fuzz_bot "$bin" serve > "$work/server.log" 2>&1) &
server_pid=$!
base="http://127.0.0.1:$port"
for _ in $(seq 1 100); do
  PORT="$port" "$bin" healthcheck >/dev/null 2>&1 && break
  sleep 0.1
done

token=$(python3 - "$base" <<'PY'
import json, sys, urllib.request
base = sys.argv[1]
def post(path, body):
    req = urllib.request.Request(base + path, json.dumps(body).encode(), {"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req))
code = post("/api/auth/login", {"phone": "+919876543210"})["otp_code"]
print(post("/api/auth/verify-otp", {"phone": "+919876543210", "otp_code": code})["access_token"])
PY
)

log "schemathesis: $EXAMPLES examples per operation and phase"
set +e
"$work/venv/bin/schemathesis" run "$base/openapi.json" \
  --checks all --exclude-checks positive_data_acceptance \
  --max-examples "$EXAMPLES" --seed "${SEED:-20261123}" \
  -H "Authorization: Bearer $token" \
  "$@" | tee "$work/report.txt"
status=${PIPESTATUS[0]}
set -e

generated=$(grep -Eo '[0-9]+ generated' "$work/report.txt" | tail -n 1 | grep -Eo '[0-9]+' || echo 0)
if grep -qiE 'panic|thread .* panicked' "$work/server.log"; then
  log "the server panicked:"; cat "$work/server.log"; exit 1
fi
if [ "$status" -ne 0 ]; then
  log "schemathesis found failures (exit $status)"; exit "$status"
fi
if [ "$generated" -lt "$MIN_REQUESTS" ]; then
  log "only $generated test cases generated (< $MIN_REQUESTS)"; exit 1
fi
echo "api-fuzz: $generated passed, 0 failed"
