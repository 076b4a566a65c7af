# Sourced by scripts/test.sh and loadtest/cluster.sh: starts a 6-node Redis Cluster (3 primaries,
# 3 replicas, cluster-node-timeout 2000) on loopback, each node in "$1/cluster-PORT" (its pid in
# redis.pid there), and sets the array `cluster_ports`. Returns 1 when the cluster does not form.

# A port whose cluster bus port (+10000) is free too.
free_cluster_port() {
  python3 -c 'import random, socket
while True:
    p = random.randint(20000, 29999)
    try:
        for q in (p, p + 10000):
            s = socket.socket(); s.bind(("127.0.0.1", q)); s.close()
        print(p); break
    except OSError:
        pass'
}

start_redis_cluster() {
  local work=$1 p _ ok
  cluster_ports=()
  while [ ${#cluster_ports[@]} -lt 6 ]; do
    p=$(free_cluster_port)
    case " ${cluster_ports[*]} " in *" $p "*) ;; *) cluster_ports+=("$p") ;; esac
  done
  for p in "${cluster_ports[@]}"; do
    mkdir -p "$work/cluster-$p"
    redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
      --cluster-config-file "$work/cluster-$p/nodes.conf" --cluster-node-timeout 2000 \
      --save '' --appendonly no --daemonize yes --pidfile "$work/cluster-$p/redis.pid" \
      --logfile "$work/cluster-$p/redis.log" --dir "$work/cluster-$p"
  done
  for p in "${cluster_ports[@]}"; do
    for _ in $(seq 1 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  redis-cli --cluster create $(printf '127.0.0.1:%s ' "${cluster_ports[@]}") \
    --cluster-replicas 1 --cluster-yes >/dev/null
  for _ in $(seq 1 100); do
    ok=1
    for p in "${cluster_ports[@]}"; do
      redis-cli -p "$p" cluster info 2>/dev/null | grep -q 'cluster_state:ok' || ok=0
    done
    [ "$ok" = 1 ] && return 0
    sleep 0.1
  done
  echo "the Redis Cluster did not form" >&2
  return 1
}
