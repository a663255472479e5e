#!/usr/bin/env bash
# The peer comparison: imrouter (one shard) against nats-server
# (GOMAXPROCS=1) on the same chat workload, each pinned to CPU 0 with the
# load generator on CPU 1. Runs every target several times at the maximum
# rate and at fixed rates, and prints the medians and the imrouter/NATS
# ratio. Raw JSON results are kept in $OUT.
#
#   scripts/bench-vs-nats.sh            # 3 runs of 10 s per point
#   RUNS=5 DURATION=20 scripts/bench-vs-nats.sh
#
# Installs nats-server from Debian's packages when it is missing. Builds the
# release binaries once. Everything listens on 127.0.0.1 only.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
RATES=${RATES:-"100000 250000 500000"}
NODES=${NODES:-4}
USERS=${USERS:-10000}
PAYLOAD=${PAYLOAD:-64}
WINDOW=${WINDOW:-256}
SERVER_CPU=${SERVER_CPU:-0}
GENERATOR_CPU=${GENERATOR_CPU:-1}
IMROUTER_PORT=${IMROUTER_PORT:-17800}
NATS_PORT=${NATS_PORT:-14222}
OUT=${OUT:-$top/target/bench-vs-nats}

log() { printf '%s\n' "$*" >&2; }

if ! command -v nats-server >/dev/null 2>&1; then
  log "installing nats-server from Debian's packages"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nats-server >/dev/null
fi
nats_version=$(nats-server --version)

log "building release binaries"
(cd "$top" && cargo build --release --workspace --quiet)
router_bin=$top/target/release/imrouter
loadgen_bin=$top/target/release/imrouter-loadgen
mkdir -p "$OUT"

server_pid=""
stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
trap stop_server EXIT

wait_for_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  log "nothing listens on port $1"; return 1
}

start_server() {
  case "$1" in
    imrouter)
      taskset -c "$SERVER_CPU" "$router_bin" serve --listen "127.0.0.1:$IMROUTER_PORT" \
        --shards 1 --cpus "$SERVER_CPU" 2>"$OUT/imrouter.log" &
      server_pid=$!; wait_for_port "$IMROUTER_PORT" ;;
    nats)
      GOMAXPROCS=1 taskset -c "$SERVER_CPU" nats-server -a 127.0.0.1 -p "$NATS_PORT" \
        2>"$OUT/nats.log" &
      server_pid=$!; wait_for_port "$NATS_PORT" ;;
  esac
}

# run TARGET RATE RUN: one load generator run against a fresh server.
run() {
  local target=$1 rate=$2 run=$3 port
  if [ "$target" = imrouter ]; then port=$IMROUTER_PORT; else port=$NATS_PORT; fi
  start_server "$target"
  local json="$OUT/$target-$rate-$run.json"
  # Same workload for both: every recipient online, one device per user,
  # no ACK (NATS has no verdicts).
  "$loadgen_bin" --target "$target" --router "127.0.0.1:$port" --cpus "$GENERATOR_CPU" \
    --scenario chat --nodes "$NODES" --users "$USERS" --devices-per-user 1 \
    --payload-bytes "$PAYLOAD" --offline-ratio 0 --to-device-ratio 0 \
    --rate "$rate" --window "$WINDOW" --duration "$DURATION" --warmup "$WARMUP" \
    --router-pid "$server_pid" --quiet --json "$json" >"$OUT/$target-$rate-$run.txt" 2>&1 || true
  stop_server
  if [ ! -s "$json" ]; then
    log "  $target rate=$rate run $run: no result (see $OUT/$target-$rate-$run.txt)"
  fi
}

for rate in max $RATES; do
  for run in $(seq 1 "$RUNS"); do
    for target in imrouter nats; do
      log "$target rate=$rate run $run/$RUNS"
      run "$target" "$rate" "$run"
    done
  done
done

python3 - "$OUT" "$RUNS" "$RATES" "$nats_version" "$DURATION" "$NODES" "$USERS" "$PAYLOAD" <<'PY'
import json, statistics, sys, os
out, runs, rates, nats_version, duration, nodes, users, payload = sys.argv[1:]
runs = int(runs)
def results(target, rate):
    found = []
    for run in range(1, runs + 1):
        path = os.path.join(out, f"{target}-{rate}-{run}.json")
        if os.path.exists(path) and os.path.getsize(path) > 0:
            found.append(json.load(open(path)))
    return found
def median(values):
    return statistics.median(values) if values else float("nan")
def faults(rs):
    return sum(r["lost"] + r["duplicated"] + r["misrouted"] + r["wrong_verdict"] for r in rs)

print(f"chat workload: {nodes} nodes, {users} users, {payload}-byte payloads, no ACK, "
      f"{duration} s measured; medians of {runs} runs")
print(f"imrouter --shards 1 and {nats_version} (GOMAXPROCS=1) on one CPU, generator on another")
print()
print(f"{'':<30}{'imrouter':>14}{'nats':>14}{'imrouter/nats':>16}")
def row(label, a, b, fmt):
    ratio = a / b if b else float("nan")
    print(f"{label:<30}{format(a, fmt):>14}{format(b, fmt):>14}{ratio:>16.2f}")
i, n = results("imrouter", "max"), results("nats", "max")
row("max msgs/s", median([r["throughput_msgs_per_s"] for r in i]),
    median([r["throughput_msgs_per_s"] for r in n]), ",.0f")
row("  server CPU in use (%)", median([100 * (r["router_cpu_s"] or 0) / r["duration_s"] for r in i]),
    median([100 * (r["router_cpu_s"] or 0) / r["duration_s"] for r in n]), ".0f")
row("  msgs per server CPU second", median([r["msgs_per_router_cpu_s"] or 0 for r in i]),
    median([r["msgs_per_router_cpu_s"] or 0 for r in n]), ",.0f")
for rate in rates.split():
    i, n = results("imrouter", rate), results("nats", rate)
    k = int(rate) // 1000
    row(f"{k}k/s achieved msgs/s", median([r["throughput_msgs_per_s"] for r in i]),
        median([r["throughput_msgs_per_s"] for r in n]), ",.0f")
    for q in ("p50", "p99", "p999"):
        row(f"  latency {q} (us)", median([r["latency_us"][q] for r in i]),
            median([r["latency_us"][q] for r in n]), ".1f")
    row("  msgs per server CPU second", median([r["msgs_per_router_cpu_s"] or 0 for r in i]),
        median([r["msgs_per_router_cpu_s"] or 0 for r in n]), ",.0f")
all_i = [r for rate in ["max"] + rates.split() for r in results("imrouter", rate)]
all_n = [r for rate in ["max"] + rates.split() for r in results("nats", rate)]
print()
print(f"oracle faults (lost+duplicated+misrouted+wrong verdict): imrouter {faults(all_i)}, nats {faults(all_n)}")
PY
