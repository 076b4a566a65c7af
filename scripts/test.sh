#!/usr/bin/env bash
# Runs the whole test suite against the embedded backends, against a real redis-server and
# PostgreSQL, against a real 6-node Redis Cluster with PostgreSQL, and against a real
# redis-server and MariaDB, which this script installs when missing (apt), starts on loopback in a
# temporary directory, and stops again. The failover
# and restart tests start their own Redis servers (redis-server, run as a sentinel too, and
# redis-cli: the redis-server package brings both). It also provides promtool (apt: prometheus)
# and the official Prometheus Python client (in a venv) for the /metrics format checks. Extra
# arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

pg_bindir() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
[ -n "$(pg_bindir)" ] && [ -x "$(pg_bindir)/initdb" ] || missing+=(postgresql)
. scripts/lib/mariadb.sh
{ [ -n "$(mariadbd_bin)" ] && command -v mariadb-install-db >/dev/null 2>&1; } || missing+=(mariadb-server)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
PG_BIN=$(pg_bindir)

. scripts/lib/ports.sh

work=$(mktemp -d /tmp/otpgate-test.XXXXXX)
chmod 755 "$work"
free_port redis_port
free_port pg_port
free_port mariadb_port

# PostgreSQL refuses to run as root: run it as the postgres user when we are root.
pg_user=$(id -un)
run_pg() { "$@"; }
if [ "$(id -u)" = 0 ]; then
  pg_user=postgres
  run_pg() { runuser -u postgres -- "$@"; }
fi

cleanup() {
  status=$?
  if [ -f "$work/pg/postmaster.pid" ]; then
    run_pg "$PG_BIN/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
  fi
  stop_mariadb "$work/mariadb"
  for pidfile in "$work"/redis.pid "$work"/cluster-*/redis.pid; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  rm -rf "$work"
  exit $status
}
trap cleanup EXIT INT TERM

log "starting redis-server on 127.0.0.1:$redis_port"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --daemonize yes --pidfile "$work/redis.pid" --logfile "$work/redis.log" --dir "$work"

# A real 6-node Redis Cluster (3 primaries, 3 replicas) for the cluster variant of the suite.
. scripts/lib/redis-cluster.sh
log "starting a Redis Cluster on 127.0.0.1"
start_redis_cluster "$work"

log "starting PostgreSQL on 127.0.0.1:$pg_port"
mkdir -p "$work/pg"
[ "$pg_user" = postgres ] && chown postgres "$work/pg"
run_pg "$PG_BIN/initdb" -D "$work/pg" -U postgres -A trust --no-sync >/dev/null
run_pg "$PG_BIN/pg_ctl" -D "$work/pg" -l "$work/pg/server.log" -w -t 60 start \
  -o "-p $pg_port -k $work/pg -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" >/dev/null

# MariaDB, as the mysql user when we are root; durability off, as for PostgreSQL above. The
# tests connect over TCP as otpgate_admin, which creates a database and a user per test app.
log "starting MariaDB on 127.0.0.1:$mariadb_port"
start_mariadb "$work/mariadb" "$mariadb_port" --innodb-flush-log-at-trx-commit=0 \
  --skip-innodb-doublewrite --innodb-flush-method=nosync --innodb-buffer-pool-size=128M \
  --max-connections=500
mariadb_sql "$work/mariadb" "CREATE USER otpgate_admin@'%' IDENTIFIED BY 'otpgate-test-admin';
  GRANT ALL PRIVILEGES ON *.* TO otpgate_admin@'%' WITH GRANT OPTION;"

for _ in $(seq 1 50); do
  redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
  sleep 0.1
done

log "checking the shipped alert rules and dashboard"
promtool check rules helm/otpgate/dashboards/alerts.rules.yaml >/dev/null
(cd helm/otpgate/dashboards && promtool test rules alerts.test.yaml)
python3 -m json.tool helm/otpgate/dashboards/otpgate.json >/dev/null

log "creating a venv with prometheus-client and openapi-spec-validator"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --disable-pip-version-check prometheus-client openapi-spec-validator
export METRICS_PARSER_PYTHON="$work/venv/bin/python"
export OPENAPI_SPEC_VALIDATOR="$work/venv/bin/openapi-spec-validator"

export TEST_REDIS_URL="redis://127.0.0.1:$redis_port"
TEST_REDIS_CLUSTER_URL=$(printf 'redis://127.0.0.1:%s,' "${cluster_ports[@]}")
export TEST_REDIS_CLUSTER_URL=${TEST_REDIS_CLUSTER_URL%,}
export TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
export TEST_MARIADB_URL="mysql://otpgate_admin:otpgate-test-admin@127.0.0.1:$mariadb_port/mysql"
export OTPGATE_REQUIRE_BACKENDS=1

# What the tests write to the temporary folder (databases, keys, configuration files, the
# servers they start) goes in the work folder and leaves with it.
mkdir -p "$work/tmp"
chmod 1777 "$work/tmp"
export TMPDIR="$work/tmp"

log "cargo test"
cargo test --locked --workspace --all-targets "$@" 2>&1 | tee "$work/cargo-test.log"

# One closing line over every test binary (cargo prints one `test result:` line per binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' \
  "$work/cargo-test.log"
