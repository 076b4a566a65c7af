#!/usr/bin/env bash
# A whole cluster on loopback: Redis, PostgreSQL (or MariaDB), N otpgate replicas and nginx in front (the
# deploy/nginx.conf location block), then otpgate-loadtest against nginx. Prints the report —
# the /health ceiling of the same cluster, flows/s and latency per step, RSS per replica, Redis
# round trips and commands per flow, SQL statements per flow — and stops everything it started.
#
#   loadtest/cluster.sh [--replicas 3] [--scenario login] [--duration 20] [--warmup 2]
#                       [--rate R | --concurrency 96] [--users N] [--replay-check]
#                       [--chaos none|sigterm|redis-restart|redis-failover] [--no-health]
#                       [--smoke] [--profile release|debug] [--redis standalone|cluster]
#                       [--budget-rss MIB] [--budget-round-trips N] [--budget-sql N]
#                       [--budget-cpu US] [--direct] [--db postgres|mariadb]
#
# --direct: the headline scenario of the hot-path budget: one replica and the load generator
# talking to it directly (no nginx in the path), so the figures are otpgate's own.
# --db mariadb: MariaDB (apt's mariadb-server, run as the mysql user when we are root, default
# durability) instead of PostgreSQL; the replicas use DATABASE_URL=mysql://…. SQL statements per
# flow come from its Com_* counters instead of pg_stat_statements, CPU from the mariadbd process.
#
# Every run fails (exit 1, "cluster: checks failed") when the load test result is invalid (a
# failed, dropped or unfinished flow, a code accepted twice; chaos modes that expect 503s check
# their own failures), when a replica's /metrics or /ready does not answer after the run, when a
# replica served no API request during the run, or when a budget given on the command line is
# exceeded or could not be measured: --budget-rss (peak RSS per replica, MiB),
# --budget-round-trips (store operations per flow), --budget-sql (SQL statements per flow),
# --budget-cpu (CPU µs of the replicas per flow). Flows due during --warmup (default 2 s) are
# left out of every figure; the counters are read when the warm-up ends.
#
# --chaos sigterm: a third into the run, one replica gets SIGTERM and is started again 2 s after
# it exited; the run must have no failed flow. --chaos redis-restart: Redis is shut down (nosave)
# and started again 2 s later; only 503s may fail, no other 5xx, no code accepted twice, and the
# rate must be back within 5 s. --redis cluster: a 6-node Redis Cluster (3 primaries, 3
# replicas, cluster-node-timeout 2000) instead of one Redis, the replicas in REDIS_MODE=cluster.
# --chaos redis-failover (with --redis cluster): a third into the run the primary of slot 0 is
# killed (SHUTDOWN NOSAVE); only 503s may fail, no code accepted twice, and the rate must be back
# within 5 s of a replica owning its slots with the cluster reporting cluster_state:ok. The report gives CPU µs per flow of the
# replicas, Redis, the database (PostgreSQL or MariaDB) and nginx (utime+stime from /proc over
# the measured phase), and of the load generator itself (it shares the cores; it reads its own),
# and the run-queue wait µs per flow of each (time their threads were ready to run with no core
# free, from /proc/PID/task/*/schedstat): where open-model latency goes on a shared box.
# --smoke: 10 s, debug binaries, 2 replicas, modest load, the `full` scenario with the replay
# check (used by .ci/run, once with --chaos sigterm). Exit status 1 when a check fails.
# Environment: PG_OPTS (extra PostgreSQL -c options, e.g. "-c synchronous_commit=off"),
# MARIADB_OPTS (extra mariadbd options, e.g. "--innodb-flush-log-at-trx-commit=2"),
# REPLICA_THREADS (Tokio worker threads per replica, default 2), DB_CONNECTIONS (per replica,
# default 8), REDIS_CONNECTIONS (per replica, default 1 as in otpgate), EXTRA_ENV (more
# VAR=value settings for the replicas), EVENT_WEBHOOKS=1 (the replicas POST their security
# events to nginx, which answers 200: the outbox and its deliveries under load; =worker: the
# replicas queue events with EVENT_WEBHOOK_DELIVERY=false and one more otpgate process, serving
# no traffic, delivers them, its CPU reported apart as "worker"), KEEP=1 (keep the
# work folder),
# OTPGATE_BIN (run this otpgate binary as the replicas: before/after comparisons in one sitting),
# LOADTEST_BIN (the same for the load generator), TMPDIR (where the work folder goes, PostgreSQL's
# data and WAL included: TMPDIR=/dev/shm takes the disk out of the figures, for diagnosis only),
# GENERATOR_THREADS (the load generator's worker threads, default 1; the report says how busy
# they were).
set -euo pipefail
cd "$(dirname "$0")/.."

REPLICAS=3 SCENARIO=login DURATION=20 RATE="" CONCURRENCY=96 USERS="" CHAOS=none
HEALTH=1 PROFILE=release SMOKE=0 REPLAY="" REDIS=standalone WARMUP=2 DIRECT=0 DB=postgres
BUDGET_RSS="" BUDGET_ROUND_TRIPS="" BUDGET_SQL="" BUDGET_CPU=""
while [ $# -gt 0 ]; do
  case "$1" in
    --replicas) REPLICAS=$2; shift 2 ;;
    --scenario) SCENARIO=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --budget-rss) BUDGET_RSS=$2; shift 2 ;;
    --budget-round-trips) BUDGET_ROUND_TRIPS=$2; shift 2 ;;
    --budget-sql) BUDGET_SQL=$2; shift 2 ;;
    --budget-cpu) BUDGET_CPU=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --concurrency) CONCURRENCY=$2; shift 2 ;;
    --users) USERS=$2; shift 2 ;;
    --replay-check) REPLAY=--replay-check; shift ;;
    --chaos) CHAOS=$2; shift 2 ;;
    --no-health) HEALTH=0; shift ;;
    --profile) PROFILE=$2; shift 2 ;;
    --redis) REDIS=$2; shift 2 ;;
    --direct) DIRECT=1; REPLICAS=1; shift ;;
    --db) DB=$2; shift 2 ;;
    --smoke) SMOKE=1; PROFILE=debug; DURATION=10; REPLICAS=2; CONCURRENCY=8; HEALTH=0
             SCENARIO=full; REPLAY=--replay-check; shift ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;p}' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
case "$CHAOS" in none|sigterm|redis-restart|redis-failover) ;; *) echo "--chaos: none, sigterm, redis-restart or redis-failover" >&2; exit 2 ;; esac
case "$REDIS" in standalone|cluster) ;; *) echo "--redis: standalone or cluster" >&2; exit 2 ;; esac
case "$DB" in postgres|mariadb) ;; *) echo "--db: postgres or mariadb" >&2; exit 2 ;; esac
if [ "$CHAOS" = redis-failover ] && [ "$REDIS" != cluster ]; then
  echo "--chaos redis-failover needs --redis cluster" >&2; exit 2
fi
if [ "$CHAOS" = redis-restart ] && [ "$REDIS" != standalone ]; then
  echo "--chaos redis-restart needs --redis standalone" >&2; exit 2
fi
[ "$CHAOS" != none ] && REPLAY=--replay-check

log() { printf '==> %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
pg_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
command -v curl >/dev/null 2>&1 || missing+=(curl)
. scripts/lib/mariadb.sh
if [ "$DB" = mariadb ]; then
  { [ -n "$(mariadbd_bin)" ] && command -v mariadb-install-db >/dev/null 2>&1; } || missing+=(mariadb-server)
else
  [ -n "$(pg_bindir)" ] && [ -x "$(pg_bindir)/initdb" ] || missing+=(postgresql)
fi
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
PG_BIN=$(pg_bindir)
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# With OTPGATE_BIN only the load generator is built: a comparison measures the binaries it was
# given, and no compiler competes with them for the cores.
packages="-p otpgate-loadtest"
[ -n "${OTPGATE_BIN:-}" ] || packages="-p otpgate $packages"
if [ "$PROFILE" = release ]; then
  log "building release binaries (minutes on 2 cores)"
  cargo build --locked --release --quiet $packages
  target=target/release
else
  cargo build --locked --quiet $packages
  target=target/debug
fi
bin="${OTPGATE_BIN:-$PWD/$target/otpgate}"
loadtest="${LOADTEST_BIN:-$PWD/$target/otpgate-loadtest}"

. scripts/lib/ports.sh

work=$(mktemp -d "${TMPDIR:-/tmp}/otpgate-cluster.XXXXXX")
chmod 755 "$work"
free_port redis_port; free_port pg_port; free_port lb_port; free_port stub_port
pg_user=$(id -un)
run_pg() { "$@"; }
if [ "$(id -u)" = 0 ]; then
  pg_user=postgres
  run_pg() { runuser -u postgres -- "$@"; }
fi

declare -a replica_ports replica_pids
cleanup() {
  status=$?
  # From the pid files: a replica restarted by the chaos task is not in replica_pids here.
  for f in "$work"/replica-*.pid "$work/worker.pid"; do [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  [ -n "${sampler_pid:-}" ] && kill "$sampler_pid" 2>/dev/null || true
  [ -n "${PSQL_PID:-}" ] && kill "$PSQL_PID" 2>/dev/null || true
  redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
  for p in "${cluster_ports[@]:-}"; do
    [ -n "$p" ] && redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true
  done
  [ -f "$work/pg/postmaster.pid" ] && run_pg "$PG_BIN/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
  stop_mariadb "$work/mariadb"
  wait 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then log "kept $work"; else rm -rf "$work"; fi
  exit $status
}
trap cleanup EXIT INT TERM

start_redis() {
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize yes --pidfile "$work/redis.pid" --logfile "$work/redis.log" --dir "$work"
  for _ in $(seq 1 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && return; sleep 0.1; done
  log "redis did not start"; return 1
}
cluster_ports=()
. scripts/lib/redis-cluster.sh
# The Redis nodes that serve traffic (for counters and CPU).
redis_nodes() {
  if [ "$REDIS" = cluster ]; then printf '%s\n' "${cluster_ports[@]}"; else echo "$redis_port"; fi
}
db_name=PostgreSQL
[ "$DB" = mariadb ] && db_name=MariaDB
if [ "$REDIS" = cluster ]; then
  log "starting a Redis Cluster and $db_name on :$pg_port"
  start_redis_cluster "$work"
  redis_env=(REDIS_MODE=cluster REDIS_URL="$(printf 'redis://127.0.0.1:%s,' "${cluster_ports[@]}" | sed 's/,$//')")
else
  log "starting Redis on :$redis_port and $db_name on :$pg_port"
  start_redis
  redis_env=(REDIS_URL="redis://127.0.0.1:$redis_port")
fi
if [ "$DB" = mariadb ]; then
  # Default durability (a commit is on disk when it returns), as PostgreSQL's below.
  # shellcheck disable=SC2086
  start_mariadb "$work/mariadb" "$pg_port" --max-connections=200 ${MARIADB_OPTS:-}
  mariadb_sql "$work/mariadb" "CREATE DATABASE otpgate"
  database_url="mysql://root@127.0.0.1:$pg_port/otpgate"
else
  mkdir -p "$work/pg"
  [ "$pg_user" = postgres ] && chown postgres "$work/pg"
  run_pg "$PG_BIN/initdb" -D "$work/pg" -U postgres -A trust >/dev/null
  run_pg "$PG_BIN/pg_ctl" -D "$work/pg" -l "$work/pg/server.log" -w -t 60 start \
    -o "-p $pg_port -k $work/pg -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_preload_libraries=pg_stat_statements ${PG_OPTS:-}" >/dev/null
  psql -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -q -c "CREATE DATABASE otpgate" >/dev/null
  database_url="postgres://postgres@127.0.0.1:$pg_port/otpgate"
fi
psql_q() { psql -h 127.0.0.1 -p "$pg_port" -U postgres -d otpgate -Atq -c "$1"; }
[ "$DB" = postgres ] && psql_q "CREATE EXTENSION pg_stat_statements" >/dev/null
# PostgreSQL's statements of ours by kind (INSERT|n, WITH|n, …) since the statistics' reset.
pg_statements="SELECT split_part(ltrim(query), ' ', 1), sum(calls) FROM pg_stat_statements
  WHERE query !~* 'pg_stat_statements|^\s*(BEGIN|COMMIT|ROLLBACK|SET|SHOW)' GROUP BY 1"
# MariaDB's statements by kind (SELECT|n, INSERT|n, …): its global Com_* counters, which count
# prepared statements when they execute; pings, SET and SHOW are not statements of ours.
mariadb_statements() {
  mariadb_sql "$work/mariadb" "SHOW GLOBAL STATUS WHERE Variable_name IN
    ('Com_select', 'Com_insert', 'Com_update', 'Com_delete', 'Com_replace', 'Com_insert_select')" \
    | awk '{ sub(/^Com_/, "", $1); print toupper($1) "|" $2 }'
}
DATABASE_URL="$database_url" "$bin" migrate >/dev/null
if [ "$DB" = postgres ]; then
  # A PostgreSQL that has been running writes its WAL into 16 MB segments its checkpoints
  # recycled; a new one creates and zero-fills a segment at every switch, and commits wait
  # for it: at 3,000 sign-ups/s that was a switch every ~2.3 s and a 20-80 ms stall of every
  # flow at each (the slow flows of a run lined up with the segments' last writes). So the
  # run starts as in a running database: ~250 MB of WAL written, then a checkpoint that keeps
  # those segments for reuse.
  psql_q "CREATE TABLE wal_warmup AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 800000) g" >/dev/null
  psql_q "DROP TABLE wal_warmup" >/dev/null
  psql_q "CHECKPOINT" >/dev/null
fi

webhook_secret=loadtest-webhook-secret
replica_vars=(
  PATH="$PATH" HOST=127.0.0.1 LOG_LEVEL=warn LOG_FORMAT=json \
    "${redis_env[@]}" DATABASE_URL="$database_url" \
    RUN_MIGRATIONS=false DATABASE_MAX_CONNECTIONS="${DB_CONNECTIONS:-8}" REDIS_CONNECTIONS="${REDIS_CONNECTIONS:-1}" \
    JWT_SECRET_KEY=loadtest-secret-loadtest-secret-loadtest EXPOSE_OTP=true \
    SHUTDOWN_GRACE_SECONDS=5 TRUSTED_PROXIES=127.0.0.1/32 \
    RATE_LIMIT_FRONTDOOR_PER_SECOND=1000000 RATE_LIMIT_FRONTDOOR_BURST=1000000 \
    RATE_LIMIT_PHONE_PER_HOUR=1000000 RATE_LIMIT_IP_PER_HOUR=1000000000 \
    RATE_LIMIT_PREFIX_PER_HOUR=1000000000 RATE_LIMIT_VERIFY_IP_PER_HOUR=1000000000 \
    OTP_RESEND_SECONDS=0 TOKIO_WORKER_THREADS="${REPLICA_THREADS:-2}" ${EXTRA_ENV:-} \
    WHATSAPP_WEBHOOK_SECRET="$webhook_secret" WHATSAPP_BUSINESS_NUMBER=+15550001234 \
    WHATSAPP_ACCESS_TOKEN=stub WHATSAPP_PHONE_NUMBER_ID=1 \
    WHATSAPP_API_BASE="http://127.0.0.1:$stub_port/v21.0"
)
case "${EVENT_WEBHOOKS:-0}" in
  1|worker)
    replica_vars+=(EVENT_WEBHOOK_URL="http://127.0.0.1:$stub_port/events"
      EVENT_WEBHOOK_SECRET="whsec_bG9hZHRlc3QtZXZlbnQtd2ViaG9vay1zZWNyZXQ=") ;;
esac
[ "${EVENT_WEBHOOKS:-0}" = worker ] && replica_vars+=(EVENT_WEBHOOK_DELIVERY=false)
start_replica() {
  local i=$1
  rm -f "$work/replica-$i.pid" "$work/replica-$i.exit"
  # env execs otpgate, so the pid written is the server itself (SIGTERM reaches it); the
  # subshell around it records its exit status, which the sigterm chaos checks.
  (
    env -i "${replica_vars[@]}" PORT="${replica_ports[$i]}" "$bin" serve >> "$work/replica-$i.log" 2>&1 &
    echo $! > "$work/replica-$i.pid"
    status=0
    wait $! || status=$?
    echo "$status" > "$work/replica-$i.exit"
  ) &
  for _ in $(seq 1 100); do [ -s "$work/replica-$i.pid" ] && break; sleep 0.02; done
  replica_pids[$i]=$(cat "$work/replica-$i.pid")
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:${replica_ports[$i]}/ready" >/dev/null 2>&1 && return
    sleep 0.1
  done
  log "replica $i did not become ready"; cat "$work/replica-$i.log" >&2; return 1
}
log "starting $REPLICAS replicas ($PROFILE build)"
for i in $(seq 1 "$REPLICAS"); do
  free_port replica_port; replica_ports[$i]=$replica_port
  start_replica "$i"
done
if [ "${EVENT_WEBHOOKS:-0}" = worker ]; then
  # The event webhook worker: the same settings, delivery on, no traffic routed to it.
  free_port worker_port
  env -i "${replica_vars[@]}" EVENT_WEBHOOK_DELIVERY=true PORT="$worker_port" "$bin" serve \
    >> "$work/worker.log" 2>&1 &
  echo $! > "$work/worker.pid"
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$worker_port/ready" >/dev/null 2>&1 && break
    sleep 0.1
  done
fi

# nginx: the location block of deploy/nginx.conf, with the loopback replicas as upstream.
servers=""
for i in $(seq 1 "$REPLICAS"); do
  servers+="    server 127.0.0.1:${replica_ports[$i]} max_fails=1 fail_timeout=2s;"$'\n'
done
location=$(sed -n '/^    location \/ {/,/^    }/p' deploy/nginx.conf)
run_as=""
[ "$(id -u)" = 0 ] && run_as="user root;"
cat > "$work/nginx.conf" <<EOF
$run_as
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx-body;
  proxy_temp_path $work/nginx-proxy;
  fastcgi_temp_path $work/nginx-fastcgi;
  uwsgi_temp_path $work/nginx-uwsgi;
  scgi_temp_path $work/nginx-scgi;
  upstream otpgate {
$servers    keepalive 64;
  }
  server {
    listen 127.0.0.1:$lb_port;
    client_max_body_size 64k;
$location
  }
  # Stand-in for the WhatsApp Cloud API (webhook replies).
  server {
    listen 127.0.0.1:$stub_port;
    location / {
      default_type application/json;
      return 200 '{"messaging_product":"whatsapp","messages":[{"id":"wamid.stub"}]}';
    }
  }
}
EOF
"$NGINX" -p "$work" -c "$work/nginx.conf" -e "$work/nginx-error.log"
target_url="http://127.0.0.1:$lb_port"
via="through nginx"
if [ "$DIRECT" = 1 ]; then
  # nginx stays up for the WhatsApp stand-in only.
  target_url="http://127.0.0.1:${replica_ports[1]}"
  via="direct to the replica"
fi
for _ in $(seq 1 50); do curl -fsS "$target_url/health" >/dev/null 2>&1 && break; sleep 0.1; done

# Peak RSS of each replica (VmHWM: the kernel's own high-water mark), read every 0.5 s so a
# restarted replica's peak is kept too. Shell built-ins only: no process is started while the
# flows are measured (the wait is a read with a timeout on a pipe nobody writes to).
(
  exec {nap}<> <(:)
  while true; do
    for ((i = 1; i <= REPLICAS; i++)); do
      { read -r pid < "$work/replica-$i.pid"; } 2>/dev/null || continue
      while read -r key kb _; do
        if [ "$key" = VmHWM: ]; then
          prev=0
          { read -r prev < "$work/rss-$i"; } 2>/dev/null || true
          [ "$kb" -gt "$prev" ] && echo "$kb" > "$work/rss-$i"
        fi
      done 2>/dev/null < "/proc/$pid/status" || true
    done
    read -r -t 0.5 -u "$nap" _ || true
  done
) &
sampler_pid=$!

if [ "$HEALTH" = 1 ]; then
  log "phase 1: /health $via, closed model, 5 s (the framework ceiling)"
  # Two generator threads at least: a ceiling must be the server's, never a thin generator's
  # (the flow phase's share of it would look better than it is).
  health_threads=${GENERATOR_THREADS:-1}; [ "$health_threads" -lt 2 ] && health_threads=2
  "$loadtest" --target "$target_url" --scenario health --concurrency 64 --duration 5 \
    --threads "$health_threads" --json "$work/health.json" --quiet
fi

# The moment the warm-up ends is measured too: what the script does then must not take the
# cores the flows need. Starting processes did (redis-cli, psql with a new backend, curl, awk,
# pgrep: the flows due in the first 100-300 ms after the warm-up all took over 10 ms). So the
# counters are reset and read with shell built-ins: Redis and HTTP over bash's /dev/tcp,
# PostgreSQL through one psql started before the run, /proc read with `read`.
redis_say() { # port, an inline command: whether Redis answered +OK
  local fd reply
  exec {fd}<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf '%s\r\n' "$2" >&"$fd"
  read -r reply <&"$fd" || reply=
  exec {fd}>&-
  [ "${reply:0:3}" = +OK ]
}
http_body() { # port, path, file: the body of a 200 answer to a GET
  local fd line status
  exec {fd}<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&"$fd"
  read -r _ status _ <&"$fd" || status=
  while IFS= read -r line <&"$fd" && [ "$line" != $'\r' ]; do :; done
  while IFS= read -r line <&"$fd" || [ -n "$line" ]; do printf '%s\n' "$line"; done > "$3"
  exec {fd}>&-
  [ "$status" = 200 ]
}
if [ "$DB" = postgres ]; then
  coproc PSQL { psql -h 127.0.0.1 -p "$pg_port" -U postgres -d otpgate -Atq 2>&1; }
fi

# Counters from zero for the measured phase (called when the warm-up ends). A replica whose
# /metrics does not answer is a failed check, not a missing figure.
start_counters() {
  local p i reply
  local -a ports=("$redis_port")
  [ "$REDIS" = cluster ] && ports=("${cluster_ports[@]}")
  for p in "${ports[@]}"; do
    redis_say "$p" "CONFIG RESETSTAT" || echo "Redis :$p: CONFIG RESETSTAT failed" >> "$work/problems"
  done
  if [ "$DB" = mariadb ]; then
    mariadb_statements > "$work/sql-before.txt"
  else
    # Read, not reset: pg_stat_statements_reset() takes the statistics' lock exclusively, and
    # every statement that ends meanwhile waits for it.
    printf '%s;\n\\echo end\n' "$pg_statements" >&"${PSQL[1]}"
    while read -r reply <&"${PSQL[0]}" && [ "$reply" != end ]; do
      case "$reply" in ERROR*|psql:*) echo "pg_stat_statements: $reply" >> "$work/problems" ;; esac
      printf '%s\n' "$reply"
    done > "$work/sql-before.txt"
  fi
  for ((i = 1; i <= REPLICAS; i++)); do
    http_body "${replica_ports[$i]}" /metrics "$work/metrics-before-$i" || {
      rm -f "$work/metrics-before-$i"
      echo "replica $i: /metrics did not answer before the run" >> "$work/problems"
    }
  done
}

chaos() {
  sleep "$(python3 -c "print($DURATION / 3)")"
  case "$CHAOS" in
    sigterm)
      # Its counters up to now (the restarted process starts from zero).
      curl -fsS "http://127.0.0.1:${replica_ports[1]}/metrics" > "$work/metrics-stopped-1" || {
        rm -f "$work/metrics-stopped-1"
        echo "replica 1: /metrics did not answer before SIGTERM" >> "$work/problems"
      }
      log "chaos: SIGTERM to replica 1"
      kill -TERM "$(cat "$work/replica-1.pid")"
      # It must drain and exit 0 within its grace (SHUTDOWN_GRACE_SECONDS=5), plus a second.
      for _ in $(seq 1 120); do [ -f "$work/replica-1.exit" ] && break; sleep 0.05; done
      if [ ! -f "$work/replica-1.exit" ]; then
        echo "replica 1: still running 6 s after SIGTERM" >> "$work/problems"
        kill -KILL "$(cat "$work/replica-1.pid")" 2>/dev/null || true
        for _ in $(seq 1 100); do [ -f "$work/replica-1.exit" ] && break; sleep 0.05; done
      elif [ "$(cat "$work/replica-1.exit")" != 0 ]; then
        echo "replica 1: exit status $(cat "$work/replica-1.exit") after SIGTERM" >> "$work/problems"
      fi
      touch "$work/restarted-1"
      sleep 2
      log "chaos: replica 1 starting again"
      start_replica 1
      ;;
    redis-failover)
      victim=$(for p in "${cluster_ports[@]}"; do
        redis-cli -p "$p" cluster nodes | awk -v p=":$p@" 'index($2, p) && $3 ~ /myself,master/ && $9 ~ /^0-/ { print substr($2, 1, index($2, "@") - 1) }'
      done | head -n 1)
      victim=${victim##*:}
      survivor=$(for p in "${cluster_ports[@]}"; do [ "$p" != "$victim" ] && echo "$p"; done | head -n 1)
      log "chaos: Redis Cluster primary :$victim (slot 0) killed"
      date +%s.%N > "$work/outage-start"
      redis-cli -p "$victim" shutdown nosave >/dev/null 2>&1 || true
      # Recovered: a replica owns slot 0 and the cluster says ok.
      slot0_owner() {
        redis-cli -p "$survivor" cluster nodes | awk '$3 ~ /master/ && $3 !~ /fail/ && $9 ~ /^0-/ {
          a = $2; sub(/@.*/, "", a); sub(/.*:/, "", a); print a }'
      }
      until [ -n "$(slot0_owner)" ] && [ "$(slot0_owner)" != "$victim" ] \
        && redis-cli -p "$survivor" cluster info | grep -q cluster_state:ok; do sleep 0.05; done
      date +%s.%N > "$work/outage-end"
      log "chaos: slot 0 served by :$(slot0_owner), cluster_state:ok"
      ;;
    redis-restart)
      log "chaos: Redis shut down"
      date +%s.%N > "$work/outage-start"
      redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
      sleep 2
      start_redis
      date +%s.%N > "$work/outage-end"
      log "chaos: Redis back"
      ;;
  esac
}
model=(--concurrency "$CONCURRENCY")
[ -n "$RATE" ] && model=(--rate "$RATE")
users=()
[ -n "$USERS" ] && users=(--users "$USERS")
log "phase 2: $SCENARIO $via, ${model[*]}, ${DURATION}s, chaos $CHAOS"
# CPU of every process of the cluster: utime+stime ticks from /proc, per group.
# /proc/PID/stat's fields after "PID (comm) ", in the array `stat` (index 0: the state, field
# 3; index n - 3: field n). Whether the process is there.
read_stat() {
  local line
  { read -r line < "/proc/$1/stat"; } 2>/dev/null || return 1
  # shellcheck disable=SC2206
  stat=(${line##*) })
}
# utime + stime (clock ticks) of the processes in `pids`, in `ticks`.
cpu_ticks() {
  local pid
  ticks=0
  for pid in "${pids[@]}"; do
    read_stat "$pid" || continue
    ticks=$((ticks + stat[11] + stat[12]))
  done
}
# The processes whose parent is $1, added to `pids`.
children_of() {
  local f pid
  for f in /proc/[0-9]*/stat; do
    pid=${f#/proc/}; pid=${pid%/stat}
    read_stat "$pid" && [ "${stat[1]}" = "$1" ] && pids+=("$pid")
  done
  return 0
}
# The processes of group $1, in `pids`.
group_pids() {
  local f p pm
  local -a ports=("$redis_port")
  [ "$REDIS" = cluster ] && ports=("${cluster_ports[@]}")
  pids=()
  case "$1" in
    replicas) for f in "$work"/replica-*.pid; do
                { read -r p < "$f"; } 2>/dev/null && pids+=("$p")
              done ;;
    redis) for p in "${ports[@]}"; do
             f="$work/redis.pid"; [ "$REDIS" = cluster ] && f="$work/cluster-$p/redis.pid"
             { read -r pm < "$f"; } 2>/dev/null && pids+=("$pm")
           done ;;
    postgres) read -r pm < "$work/pg/postmaster.pid"; pids+=("$pm"); children_of "$pm" ;;
    # One process: its threads' CPU is in its own /proc/PID/stat.
    mariadb) read -r pm < "$work/mariadb/server.pid"; pids+=("$pm") ;;
    worker) { read -r p < "$work/worker.pid"; } 2>/dev/null && pids+=("$p") ;;
    nginx) if [ -f "$work/nginx.pid" ]; then
             read -r pm < "$work/nginx.pid"; pids+=("$pm"); children_of "$pm"
           fi ;;
  esac
}
# Time runnable but waiting for a core (ns), summed over the threads of the given processes:
# the second field of /proc/PID/task/TID/schedstat. Threads that end during the run take their
# share with them.
wait_ns() {
  local pid t run queued
  waited=0
  for pid in "${pids[@]}"; do
    for t in /proc/"$pid"/task/*/schedstat; do
      { read -r run queued _ < "$t"; } 2>/dev/null || continue
      waited=$((waited + queued))
    done
  done
}
cpu_snapshot() {
  local g
  : > "$1"; : > "$1-wait"
  for g in replicas redis "$DB" nginx $([ -f "$work/worker.pid" ] && echo worker); do
    group_pids "$g"
    cpu_ticks
    wait_ns
    echo "$g $ticks" >> "$1"
    echo "$g $waited" >> "$1-wait"
  done
}

# Chaos that expects 503s checks its failures itself (below); the generator must not call
# the run invalid for them. A code accepted twice still makes it invalid.
allow_errors=()
# The statement statistics from here (the top statements below include the warm-up).
[ "$DB" = postgres ] && psql_q "SELECT pg_stat_statements_reset()" >/dev/null
case "$CHAOS" in redis-restart|redis-failover) allow_errors=(--allow-errors) ;; esac
"$loadtest" --target "$target_url" --scenario "$SCENARIO" "${model[@]}" "${users[@]}" $REPLAY \
  --threads "${GENERATOR_THREADS:-1}" \
  "${allow_errors[@]}" --warmup "$WARMUP" --duration "$DURATION" \
  --webhook-secret "$webhook_secret" --json "$work/report.json" &
loadtest_pid=$!
sleep "$WARMUP"
printf '%s\n' "$EPOCHREALTIME" > "$work/run-start"
start_counters
cpu_snapshot "$work/cpu-before"
if [ "$CHAOS" != none ]; then chaos & chaos_pid=$!; fi
loadtest_status=0
wait "$loadtest_pid" || loadtest_status=$?
if [ -n "${chaos_pid:-}" ]; then
  wait "$chaos_pid" || echo "chaos $CHAOS: the chaos step itself failed" >> "$work/problems"
fi
cpu_snapshot "$work/cpu-after"
echo "$loadtest_status" > "$work/loadtest-status"

# Primaries only: replicas replay the scripts' effects, which are not calls of ours.
for p in $(redis_nodes); do
  redis-cli -p "$p" role 2>/dev/null | head -n 1 | grep -q master || continue
  redis-cli -p "$p" info commandstats 2>/dev/null || true
done > "$work/commandstats.txt"
# The growth of each statement counter over the run.
if [ "$DB" = mariadb ]; then
  mariadb_statements > "$work/sql-after.txt" || rm -f "$work/sql-after.txt"
else
  psql_q "$pg_statements" > "$work/sql-after.txt" || rm -f "$work/sql-after.txt"
fi
{ [ -f "$work/sql-after.txt" ] && [ -f "$work/sql-before.txt" ] && awk -F'|' 'NR == FNR { before[$1] = $2; next }
    $2 > before[$1] { print $1 "|" $2 - before[$1] }' "$work/sql-before.txt" "$work/sql-after.txt" > "$work/sql.txt"; } \
  || rm -f "$work/sql.txt"
if [ "$DB" = postgres ]; then
  # Where PostgreSQL's time went, statement by statement, warm-up included (kept in the work
  # folder: KEEP=1).
  psql_q "SELECT calls, round(total_exec_time::numeric, 1) AS total_ms,
                 round(mean_exec_time::numeric, 3) AS mean_ms, rows,
                 left(regexp_replace(query, '\s+', ' ', 'g'), 100)
          FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 12" > "$work/sql-top.txt" || true
fi
if [ -f "$work/worker.pid" ]; then
  curl -fsS "http://127.0.0.1:$worker_port/metrics" > "$work/metrics-worker" \
    || echo "worker: /metrics did not answer after the run" >> "$work/problems"
fi
# Every replica must still be up and ready, and have served API requests during the run.
for i in $(seq 1 "$REPLICAS"); do
  curl -fsS "http://127.0.0.1:${replica_ports[$i]}/metrics" > "$work/metrics-after-$i" || {
    rm -f "$work/metrics-after-$i"
    echo "replica $i: /metrics did not answer after the run" >> "$work/problems"
  }
  curl -fsS "http://127.0.0.1:${replica_ports[$i]}/ready" >/dev/null \
    || echo "replica $i: /ready did not answer 200 after the run" >> "$work/problems"
done
sleep 0.3

WORK="$work" REPLICAS="$REPLICAS" CHAOS="$CHAOS" SMOKE="$SMOKE" REDIS="$REDIS" DB="$DB" \
  BUDGET_RSS="$BUDGET_RSS" BUDGET_ROUND_TRIPS="$BUDGET_ROUND_TRIPS" BUDGET_SQL="$BUDGET_SQL" \
  BUDGET_CPU="$BUDGET_CPU" CLK_TCK="$(getconf CLK_TCK)" python3 - <<'PY'
import json, os, re, sys
work = os.environ["WORK"]; replicas = int(os.environ["REPLICAS"])
chaos = os.environ["CHAOS"]; smoke = os.environ["SMOKE"] == "1"
problems = []
try:
    problems += [line.strip() for line in open(f"{work}/problems") if line.strip()]
except OSError:
    pass
try:
    report = json.load(open(f"{work}/report.json"))
except (OSError, ValueError):
    print("FAILED: the load generator wrote no report")
    print("cluster: checks failed")
    sys.exit(1)
flows = report["flows"]; done = flows["completed"]
def na(value, fmt="{:.2f}", unit=""):
    return "n/a" if value is None else fmt.format(value) + unit
def per_flow(total):
    """A count per completed flow, or None (not measured) without completed flows."""
    return None if total is None or not done else total / done
print()
print("== cluster summary ==")
print(f"flows: {flows['offered']} offered = {flows['completed']} completed + {flows['failed']} failed + "
      f"{flows['dropped']} dropped + {flows['unfinished']} unfinished; {flows['per_second']:.0f} completed/s "
      f"over the scheduled {report['seconds']:.0f} s; requests {report['requests']['per_second']:.0f}/s; "
      f"flow p50 {na(flows['latency'].get('p50_ms'), unit=' ms')}, p99 {na(flows['latency'].get('p99_ms'), unit=' ms')}; "
      f"failed flows p99 {na(flows['failed_latency'].get('p99_ms'), unit=' ms')}")
if not report["valid"]:
    problems.append("load test result invalid: " + "; ".join(report["invalid_because"]))
if os.path.exists(f"{work}/health.json"):
    health = json.load(open(f"{work}/health.json"))["requests"]["per_second"]
    ratio = report["requests"]["per_second"] / health if health else 0
    print(f"/health ceiling: {health:.0f} req/s; flow requests are {100 * ratio:.2f}% of it")
else:
    print("/health ceiling: n/a (--no-health)")
rss = []
for i in range(1, replicas + 1):
    try:
        rss.append(int(open(f"{work}/rss-{i}").read()) / 1024)
    except (OSError, ValueError):
        rss.append(None)
print("peak RSS per replica (MiB): " + ", ".join(na(r, "{:.1f}") for r in rss))
def metrics(path):
    """The samples of a /metrics text as {(name, labels): value}, or None when it is missing."""
    try:
        text = open(path).read()
    except OSError:
        return None
    samples = {}
    for line in text.splitlines():
        m = re.match(r'([a-z_]+)(\{[^}]*\})? (\S+)$', line)
        if m:
            samples[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return samples
restarted = {i for i in range(1, replicas + 1) if os.path.exists(f"{work}/restarted-{i}")}
def growth(before, after, keep):
    out = {}
    for key, value in after.items():
        label = keep(*key)
        if label is not None:
            out[label] = out.get(label, 0) + value - before.get(key, 0)
    return out
def increase(i, keep):
    """What the counters `keep` selects grew by on replica i during the run (None: unknown).
    A restarted replica: up to its SIGTERM, plus its new process from zero."""
    before, after = metrics(f"{work}/metrics-before-{i}"), metrics(f"{work}/metrics-after-{i}")
    if before is None or after is None:
        return None
    if i not in restarted:
        return growth(before, after, keep)
    stopped = metrics(f"{work}/metrics-stopped-{i}")
    if stopped is None:
        return None
    out = growth(before, stopped, keep)
    for label, n in growth({}, after, keep).items():
        out[label] = out.get(label, 0) + n
    return out
# Traffic on every replica: API requests it answered during the run.
for i in range(1, replicas + 1):
    api = increase(i, lambda name, labels: "api" if name == "otpgate_http_requests_total"
                   and 'route="/api/' in labels else None)
    served = None if api is None else api.get("api", 0)
    since = None
    if i in restarted and metrics(f"{work}/metrics-after-{i}") is not None:
        since = growth({}, metrics(f"{work}/metrics-after-{i}"), lambda name, labels: "api"
                       if name == "otpgate_http_requests_total" and 'route="/api/' in labels else None).get("api", 0)
    print(f"replica {i}: {na(served, '{:.0f}')} API requests during the run"
          + (f" ({since:.0f} of them after its restart)" if since is not None else ""))
    if served is not None and served <= 0:
        problems.append(f"replica {i} served no API request during the run")
# Store round trips: one per store operation, counted by every replica.
round_trips = {}
for i in range(1, replicas + 1):
    ops = increase(i, lambda name, labels: (re.search(r'op="([^"]+)"', labels) or [None, None])[1]
                   if name == "otpgate_store_operation_duration_seconds_count" else None)
    if ops is None:
        round_trips = None
        break
    for op, n in ops.items():
        round_trips[op] = round_trips.get(op, 0) + n
rt = None if round_trips is None else per_flow(sum(v for k, v in round_trips.items() if k != "ping"))
print(f"store operations per flow (one Redis round trip each on a standalone Redis; on a Cluster the "
      f"quotas of other slots add one concurrent round trip, see EVALSHA below): {na(rt)}"
      + ("" if rt is None else
         f" ({', '.join(f'{k} {v / done:.2f}' for k, v in sorted(round_trips.items()) if v)})")
      + (" — approximate: a replica restarted" if restarted else ""))
cmds = {}
for line in open(f"{work}/commandstats.txt"):
    m = re.match(r"cmdstat_([a-z|]+):calls=(\d+)", line)
    if m and m.group(1).split("|")[0] not in ("info", "config", "ping", "command", "client", "hello", "script", "cluster", "readonly"):
        cmds[m.group(1)] = cmds.get(m.group(1), 0) + int(m.group(2))
redis_cmds = per_flow(sum(cmds.values())) if cmds else None
print(f"Redis commands per flow (scripts' inner commands included): {na(redis_cmds)}"
      + ("" if redis_cmds is None else f" ({', '.join(f'{k} {v / done:.2f}' for k, v in sorted(cmds.items()))})"))
sql = None
if os.path.exists(f"{work}/sql.txt"):
    sql = {}
    for line in open(f"{work}/sql.txt"):
        if "|" in line:
            kind, n = line.strip().rsplit("|", 1)
            sql[kind.upper()] = sql.get(kind.upper(), 0) + int(n)
sql_per_flow = None if sql is None else per_flow(sum(sql.values()))
print(f"SQL statements per flow: {na(sql_per_flow)}"
      + ("" if sql_per_flow is None else f" ({', '.join(f'{k} {v / done:.2f}' for k, v in sorted(sql.items()))})"))
def cpu(path):
    try:
        return {g: int(n) for g, n in (line.split() for line in open(path))}
    except (OSError, ValueError):
        return None
before, after = cpu(f"{work}/cpu-before"), cpu(f"{work}/cpu-after")
tick_us = 1e6 / int(os.environ["CLK_TCK"])
cpu_per_flow = {g: None if before is None or after is None or g not in before or g not in after
                else per_flow((after[g] - before[g]) * tick_us)
                for g in ("replicas", "redis", os.environ["DB"], "nginx", "worker")
                if g != "worker" or (before and "worker" in before)}
# The generator's own CPU (it shares the cores): reported by itself over the measured phase.
gen_ticks = report.get("generator_cpu_ticks")
cpu_per_flow["generator"] = None if gen_ticks is None else per_flow(gen_ticks * tick_us)
# A generator near the end of its threads measures itself: said, not hidden.
gen_busy = None if gen_ticks is None else (
    gen_ticks * tick_us / 1e6 / float(report["seconds"]) / max(1, report.get("generator_threads") or 1))
print(f"Redis: {os.environ['REDIS']}; database: {os.environ['DB']}; CPU µs per flow: " + ", ".join(
    f"{g} {na(v, '{:.0f}')}" for g, v in cpu_per_flow.items())
    + (" — approximate: a process restarted" if chaos != "none" else ""))
# Event webhooks: delivered since start (warm-up included) and each deliverer's last lag.
hooks = [(f"replica {i}", metrics(f"{work}/metrics-after-{i}")) for i in range(1, replicas + 1)]
hooks.append(("worker", metrics(f"{work}/metrics-worker")))
hooks = [(who, m) for who, m in hooks if m]
delivered = sum(m.get(("otpgate_event_webhook_deliveries_total", '{outcome="delivered"}'), 0)
                for _, m in hooks)
if delivered:
    print(f"event webhooks: {delivered:.0f} delivered since start; lag (s): " + ", ".join(
        f"{who} {m.get(('otpgate_event_webhook_lag_seconds', ''), 0):.3f}" for who, m in hooks))
# Run-queue wait: how long the processes' threads were ready to run but had no core. On a
# box whose cores the server shares with Redis, the database and the generator, this is where
# latency goes once the cores are busy: it is not CPU, and it falls only as the cores get less
# busy (less CPU per flow in any process) or the work comes in fewer, shorter bursts.
wait_before, wait_after = cpu(f"{work}/cpu-before-wait"), cpu(f"{work}/cpu-after-wait")
if wait_before and wait_after:
    waits = {g: per_flow((wait_after[g] - wait_before[g]) / 1e3)
             for g in ("replicas", "redis", os.environ["DB"], "nginx")
             if g in wait_before and g in wait_after}
    gen_wait = report.get("generator_wait_ns")
    waits["generator"] = None if gen_wait is None else per_flow(gen_wait / 1e3)
    print("run-queue wait µs per flow (ready, no free core): " + ", ".join(
        f"{g} {na(v, '{:.0f}')}" for g, v in waits.items())
        + (" — approximate: a process restarted" if chaos != "none" else ""))
if gen_busy is not None:
    print(f"generator: {gen_busy:.0%} of its {report.get('generator_threads') or 1} thread(s) busy"
          + (" — near its limit: the figures may be the generator's (raise --threads)" if gen_busy > 0.6 else ""))
print(f"non-503 5xx: {report['non_503_5xx']}, transport errors: {report['transport_errors']}, "
      f"codes accepted twice: {na(report['double_accepts'], '{}')}")
if report["failures"]:
    print(f"failures: {report['failures']}")
# Budgets from the command line: exceeded, or not measured, fails the run.
budgets = [
    ("BUDGET_RSS", "peak RSS per replica (MiB)", None if None in rss else max(rss, default=None)),
    ("BUDGET_ROUND_TRIPS", "store operations per flow", rt),
    ("BUDGET_SQL", "SQL statements per flow", sql_per_flow),
    ("BUDGET_CPU", "replica CPU µs per flow", cpu_per_flow["replicas"]),
]
for var, what, value in budgets:
    limit = os.environ.get(var, "")
    if not limit:
        continue
    if value is None:
        problems.append(f"{what}: not measured, so the budget {limit} cannot be checked")
    elif value > float(limit):
        problems.append(f"{what}: {value:.2f} over the budget {limit}")
    else:
        print(f"budget: {what} {value:.2f} <= {limit}")
if chaos == "sigterm":
    if flows["failed"] or report["transport_errors"] or flows["dropped"] or flows["unfinished"]:
        problems.append("SIGTERM of a replica failed requests")
if chaos in ("redis-restart", "redis-failover"):
    if report["non_503_5xx"] or report["double_accepts"]:
        problems.append("a 5xx other than 503, or a code accepted twice")
    if flows["dropped"] or flows["unfinished"]:
        problems.append("flows dropped or unfinished")
    start = float(open(f"{work}/run-start").read())
    end = float(open(f"{work}/outage-end").read()) - start
    outage = float(open(f"{work}/outage-start").read()) - start
    timeline = report["timeline"]
    before = [s["completed"] for s in timeline if s["t"] < int(outage) and s["t"] >= 1]
    baseline = sum(before) / len(before) if before else 0
    back = next((s["t"] for s in timeline if s["t"] >= int(end) and s["completed"] >= 0.8 * baseline), None)
    print(f"Redis {'down' if chaos == 'redis-restart' else 'failing over'} from {outage:.1f} s to {end:.1f} s; {baseline:.0f} flows/s before; "
          + (f"back to >= 80% in second {back} ({back - end:.1f} s after Redis returned)" if back is not None else "never back"))
    if back is None or back - end > 5:
        problems.append("the rate did not come back within 5 s")
    print("per second (completed/failed/503/other 5xx): " + " ".join(
        f"{s['completed']}/{s['failed']}/{s['status_503']}/{s['other_5xx']}" for s in timeline))
if smoke and (flows["failed"] or flows["completed"] == 0 or report["non_503_5xx"]):
    problems.append("the smoke run had failures")
for p in problems:
    print(f"FAILED: {p}")
print("cluster: " + ("checks failed" if problems else "ok"))
sys.exit(1 if problems else 0)
PY
