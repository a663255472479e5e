#!/usr/bin/env bash
# Resident memory a server spends per idle node connection: a fresh server
# per run, scripts/idle_connections.py against it (1,000 connections, Hello
# done, nothing sent; see that script). BENCHMARKS.md, "Memory per idle
# connection".
#
#   scripts/idle-memory.sh imrouter1 NAME   # --shards 1 --cpus 0, taskset -c 0
#   scripts/idle-memory.sh imrouter2 NAME   # --shards 2 --cpus 0,1
#   scripts/idle-memory.sh nats NAME        # nats-server, GOMAXPROCS=1, taskset -c 0
#
# ROUTER=/path/to/imrouter measures another build; NATS=/path/to/nats-server
# another nats-server (default: the 2.15.1 that scripts/bench-vs-nats.sh
# installs into target/nats-server-venv). N=... connections. Results in
# target/idle-memory/NAME/: out.txt, out.json, server.log, smaps.before/after.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
router=${ROUTER:-$top/target/release/imrouter}
nats=${NATS:-$top/target/nats-server-venv/bin/nats-server}
N=${N:-1000}
mode=$1 name=$2
shift 2
dir=$top/target/idle-memory/$name
mkdir -p "$dir"
ulimit -Sn "$(ulimit -Hn)"

case $mode in
  imrouter1)
    taskset -c 0 "$router" serve --listen 127.0.0.1:17890 --shards 1 --cpus 0 \
      --heartbeat-ms 600000 --node-timeout-ms 1200000 2>"$dir/server.log" &
    addr=127.0.0.1:17890 nats_flag=() ;;
  imrouter2)
    "$router" serve --listen 127.0.0.1:17890 --shards 2 --cpus 0,1 \
      --heartbeat-ms 600000 --node-timeout-ms 1200000 2>"$dir/server.log" &
    addr=127.0.0.1:17890 nats_flag=() ;;
  nats)
    GOMAXPROCS=1 taskset -c 0 "$nats" -a 127.0.0.1 -p 14299 >"$dir/server.log" 2>&1 &
    addr=127.0.0.1:14299 nats_flag=(--nats) ;;
  *) echo "imrouter1, imrouter2 or nats" >&2; exit 2 ;;
esac
pid=$!
echo "$pid" >"$dir/server.pid"
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
# Wait for the server's ready line; no probe connection (a connection that
# comes and goes would allocate and free a read buffer before the measurement).
for _ in $(seq 1 100); do
  if grep -q -E "ready: listening on|Server is ready" "$dir/server.log"; then break; fi
  sleep 0.1
done
grep -q -E "ready: listening on|Server is ready" "$dir/server.log" || { echo "server not ready" >&2; exit 1; }
sleep 1
{
  echo "date: $(date -u)"
  echo "server: $(tr '\0' ' ' </proc/$pid/cmdline)"
} >"$dir/out.txt"
taskset -c 1 python3 ""$top/scripts/idle_connections.py"" --router "$addr" --count "$N" --pid "$pid" \
  "${nats_flag[@]}" --json "$dir/out.json" --smaps-dir "$dir" "$@" | tee -a "$dir/out.txt"
