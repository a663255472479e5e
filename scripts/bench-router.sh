#!/usr/bin/env bash
# Router benchmarks besides the NATS comparison, each a section of
# BENCHMARKS.md. The router runs on CPU 0 and the load generator on CPU 1;
# figures are medians of $RUNS runs. Raw JSON results are kept in $OUT.
#
#   scripts/bench-router.sh direct     # shard-direct versus plain connections
#   scripts/bench-router.sh churn      # session opens and closes per second
#   scripts/bench-router.sh memory     # resident memory per session, 1M and 10M
#   scripts/bench-router.sh all
#
# ROUTER_BIN=/path/to/imrouter runs another build of the router (an A/B).
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
ROUTER_CPU=${ROUTER_CPU:-0}
GENERATOR_CPU=${GENERATOR_CPU:-1}
PORT=${PORT:-17810}
OUT=${OUT:-$top/target/bench-router}
router_bin=${ROUTER_BIN:-$top/target/release/imrouter}
loadgen_bin=$top/target/release/imrouter-loadgen

log() { printf '%s\n' "$*" >&2; }
(cd "$top" && cargo build --release --workspace --quiet)
mkdir -p "$OUT"

router_pid=""
stop_router() {
  if [ -n "$router_pid" ]; then
    kill "$router_pid" 2>/dev/null || true
    wait "$router_pid" 2>/dev/null || true
    router_pid=""
  fi
}
trap stop_router EXIT

# start_router NAME ARGS...: the router's log (its counters at exit) goes to
# $OUT/NAME.router.log.
start_router() {
  local name=$1; shift
  taskset -c "$ROUTER_CPU" "$router_bin" serve --listen "127.0.0.1:$PORT" --cpus "$ROUTER_CPU" "$@" \
    2>"$OUT/$name.router.log" &
  router_pid=$!
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  log "the router did not start"; return 1
}

# generate NAME ARGS...: one load generator run against the running router.
generate() {
  local name=$1; shift
  "$loadgen_bin" --router "127.0.0.1:$PORT" --cpus "$GENERATOR_CPU" --router-pid "$router_pid" \
    --quiet --json "$OUT/$name.json" "$@" >"$OUT/$name.txt" 2>&1 || log "  $name: faults or failure, see $OUT/$name.txt"
}

summary() {
  python3 - "$OUT" "$@" <<'PY'
import json, os, statistics, sys
out, section, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
def load(name):
    rs = []
    for run in range(1, runs + 1):
        path = os.path.join(out, f"{name}-{run}.json")
        if os.path.exists(path):
            rs.append(json.load(open(path)))
    return rs
med = lambda rs, f: statistics.median([f(r) for r in rs]) if rs else float("nan")
def counters(name):
    # The router's totals, logged when it stops: "imrouter: stopped: a=1 b=2 ...".
    values = []
    for run in range(1, runs + 1):
        path = os.path.join(out, f"{name}-{run}.router.log")
        for line in open(path) if os.path.exists(path) else []:
            if "stopped:" in line:
                values.append(dict(kv.split("=") for kv in line.split("stopped:")[1].split()))
    return values
faults = lambda rs: sum(r["lost"] + r["duplicated"] + r["misrouted"] + r["wrong_verdict"] for r in rs)
cpu_share = lambda r: (r["router_cpu_s"] or 0) / r["duration_s"]
if section == "direct":
    print(f"{'':<34}{'plain':>12}{'shard-direct':>14}{'direct/plain':>14}")
    for rate in ("max", "100000"):
        p, d = load(f"direct-plain-{rate}"), load(f"direct-direct-{rate}")
        rows = [("msgs/s", lambda r: r["throughput_msgs_per_s"], ",.0f"),
                ("msgs per router CPU second", lambda r: r["msgs_per_router_cpu_s"] or 0, ",.0f"),
                ("latency p50 (us)", lambda r: r["latency_us"]["p50"], ".0f"),
                ("latency p99 (us)", lambda r: r["latency_us"]["p99"], ".0f")]
        print(f"rate {rate}:")
        for label, f, fmt in rows:
            a, b = med(p, f), med(d, f)
            print(f"  {label:<32}{format(a, fmt):>12}{format(b, fmt):>14}{b / a if a else float('nan'):>14.2f}")
        print(f"  oracle faults: plain {faults(p)}, shard-direct {faults(d)}")
        for mode in ("plain", "direct"):
            cs = counters(f"direct-{mode}-{rate}")
            if cs:
                per = statistics.median([int(c["batches_sent"]) / max(int(c["routes_in"]), 1) for c in cs])
                print(f"  {mode}: cross-core batches per routed message {per:.4f}")
elif section == "churn":
    rs = load("churn")
    ops = med(rs, lambda r: r["session_ops_per_s"])
    per_cpu = med(rs, lambda r: r["session_ops_per_s"] / cpu_share(r) if cpu_share(r) else 0)
    print(f"session opens+closes per second: {ops:,.0f} (router at {100 * med(rs, cpu_share):.0f}% of a core)")
    print(f"session opens+closes per router CPU second: {per_cpu:,.0f}")
    print(f"messages during the storm: {med(rs, lambda r: r['throughput_msgs_per_s']):,.0f}/s, "
          f"oracle faults {faults(rs)}")
elif section == "memory":
    for users in ("1000000", "10000000"):
        rs = load(f"memory-{users}")
        rss = med(rs, lambda r: r["router_rss_bytes"] or 0)
        per = med(rs, lambda r: float(r["rss_bytes_per_session"] or 0))
        print(f"{int(users):>12,} sessions: router RSS {rss / 2**20:,.1f} MiB, {per:.1f} bytes per session")
PY
}

section_direct() {
  log "shard-direct versus plain: 2 shards on CPU $ROUTER_CPU"
  for rate in max 100000; do
    for run in $(seq 1 "$RUNS"); do
      for mode in plain direct; do
        start_router "direct-$mode-$rate-$run" --shards 2
        local flag=""; [ "$mode" = direct ] && flag="--shard-direct"
        generate "direct-$mode-$rate-$run" --scenario chat --nodes 4 --users 10000 \
          --offline-ratio 0 --to-device-ratio 0 --rate "$rate" --duration "$DURATION" \
          --warmup "$WARMUP" $flag
        stop_router
      done
    done
  done
  summary direct "$RUNS"
}

section_churn() {
  log "session churn: as many opens and closes as the router confirms, light message traffic"
  for run in $(seq 1 "$RUNS"); do
    start_router "churn-$run" --shards 1
    generate "churn-$run" --scenario churn --churn-rate max --rate 1000 --nodes 4 \
      --users 100000 --devices-per-user 2 --duration "$DURATION" --warmup "$WARMUP"
    stop_router
  done
  summary churn "$RUNS"
}

section_memory() {
  log "resident memory per session (16-byte user ids, one device each)"
  for users in 1000000 10000000; do
    for run in $(seq 1 "$RUNS"); do
      start_router "memory-$users-$run" --shards 1 --max-sessions 20000000
      generate "memory-$users-$run" --scenario chat --nodes 4 --users "$users" \
        --duration 0 --warmup 0 --drain 1
      stop_router
    done
  done
  summary memory "$RUNS"
}

case "${1:-all}" in
  direct) section_direct ;;
  churn) section_churn ;;
  memory) section_memory ;;
  all) section_direct; section_churn; section_memory ;;
  *) log "usage: $0 direct|churn|memory|all"; exit 2 ;;
esac
