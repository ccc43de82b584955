# Sourced by scripts/bench-http.sh and scripts/bench-tracker.sh: a temporary folder removed on
# exit, processes tracked by PID (add each to `pids`) and stopped on exit, free loopback ports,
# and waiting for a listener. Usage: source scripts/bench-lib.sh NAME  (sets $tmp).
tmp=$(mktemp -d "/tmp/$1.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_port PORT: until something accepts on 127.0.0.1:PORT (10 s at most, else exit 1).
wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on port $1 after 10 s" >&2
  exit 1
}
