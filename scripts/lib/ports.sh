# Sourced by the scripts that start servers on loopback.
#
# free_port NAME: sets the variable NAME to a loopback TCP port that is free now and that this
# shell has not handed out before. Asking the kernel alone is not enough: a port is free again
# as soon as the probe closes it, so two probes in a row may get the same one (Redis and nginx
# then fight over it).
ports_given=" "
free_port() {
  local p
  while :; do
    p=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    case "$ports_given" in *" $p "*) ;; *) break ;; esac
  done
  ports_given+="$p "
  printf -v "$1" '%s' "$p"
}
