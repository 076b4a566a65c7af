# Sourced by scripts/test.sh and loadtest/cluster.sh: a MariaDB server of our own on loopback.
#
#   start_mariadb DIR PORT [mariadbd options…]   a fresh data directory in DIR/data
#       (mariadb-install-db), then mariadbd on 127.0.0.1:PORT with networking on, as the mysql
#       user when we are root (mariadbd drops to it itself). Its pid is in DIR/server.pid, its
#       log in DIR/error.log, its socket DIR/mariadb.sock, where root logs in without a password.
#       Returns 1 when it does not answer within 30 s.
#   mariadb_sql DIR SQL…   runs SQL as root over the socket (tab-separated, no headers).
#   stop_mariadb DIR       SIGTERM (a clean shutdown) and waits for it, at most 30 s.

mariadbd_bin() {
  command -v mariadbd 2>/dev/null || { [ -x /usr/sbin/mariadbd ] && echo /usr/sbin/mariadbd; }
}

start_mariadb() {
  local dir=$1 port=$2 _
  shift 2
  local as_user=()
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    as_user=(--user=mysql)
    chown mysql "$dir"
  fi
  mariadb-install-db --no-defaults "${as_user[@]}" --datadir="$dir/data" \
    --auth-root-authentication-method=normal --skip-test-db >"$dir/install.log" 2>&1 \
    || { cat "$dir/install.log" >&2; return 1; }
  "$(mariadbd_bin)" --no-defaults "${as_user[@]}" --datadir="$dir/data" \
    --socket="$dir/mariadb.sock" --pid-file="$dir/mariadbd.pid" --log-error="$dir/error.log" \
    --port="$port" --bind-address=127.0.0.1 --skip-networking=0 --skip-name-resolve "$@" \
    >/dev/null 2>&1 &
  echo $! > "$dir/server.pid"
  for _ in $(seq 1 300); do
    mariadb-admin --no-defaults --socket="$dir/mariadb.sock" -uroot ping >/dev/null 2>&1 && return 0
    kill -0 "$(cat "$dir/server.pid")" 2>/dev/null || break
    sleep 0.1
  done
  echo "mariadbd did not start:" >&2
  tail -n 20 "$dir/error.log" >&2 2>/dev/null || true
  return 1
}

mariadb_sql() {
  local dir=$1
  shift
  mariadb --no-defaults --socket="$dir/mariadb.sock" -uroot -N -B -e "$*"
}

stop_mariadb() {
  local dir=$1 pid _
  [ -s "$dir/server.pid" ] || return 0
  pid=$(cat "$dir/server.pid")
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}
