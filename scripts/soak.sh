#!/usr/bin/env bash
# Soak: a router alone under half its measured maximum rate for 30 minutes
# (DURATION seconds), with session churn and one node's connection cut
# every minute (alternately resumed and given up: `--scenario soak`).
# Every 10 s the router's RSS, routed messages per second, session
# operations per second and time-in-router percentiles (from its admin
# port's /metrics) go into $OUT/soak.csv, plotted into $OUT/soak.png.
#
# It fails when the load generator's oracle finds a message lost,
# duplicated, misrouted or wrongly judged, or when the RSS keeps growing:
# the median of the last third of the samples more than 10% (and 8 MiB)
# above the median of the middle third.
#
#   scripts/soak.sh                    # 30 minutes
#   DURATION=300 scripts/soak.sh       # a shorter run
#
# The router runs on CPU $ROUTER_CPU (0), the generator on $GENERATOR_CPU (1).
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-1800}
ROUTER_CPU=${ROUTER_CPU:-0}
GENERATOR_CPU=${GENERATOR_CPU:-1}
PORT=${PORT:-17880}
ADMIN=${ADMIN:-17881}
OUT=${OUT:-$top/target/soak}
GRACE_MS=${GRACE_MS:-4000}
NODES=${NODES:-8}
USERS=${USERS:-20000}
CHURN=${CHURN:-2000}
router_bin=$top/target/release/imrouter
loadgen_bin=$top/target/release/imrouter-loadgen

(cd "$top" && cargo build --release --workspace --quiet)
mkdir -p "$OUT"

taskset -c "$ROUTER_CPU" "$router_bin" serve --listen "127.0.0.1:$PORT" --cpus "$ROUTER_CPU" \
  --admin-listen "127.0.0.1:$ADMIN" --reconnect-grace-ms "$GRACE_MS" --warmup-ms 0 \
  --park-bytes-max $((64 << 20)) \
  --log-level warn 2>"$OUT/router.log" &
router=$!
sampler=""
cleanup() {
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null || true
  kill "$router" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
  sleep 0.05
done

echo "soak: measuring the maximum rate (10 s)"
"$loadgen_bin" --router "127.0.0.1:$PORT" --cpus "$GENERATOR_CPU" --router-pid "$router" --quiet \
  --scenario chat --nodes "$NODES" --users "$USERS" --rate max --duration 10 --warmup 2 \
  --json "$OUT/max.json" >"$OUT/max.txt" 2>&1
rate=$(python3 -c "import json,sys; print(int(json.load(open(sys.argv[1]))['throughput_msgs_per_s'] / 2))" "$OUT/max.json")
# The generator's oracle keeps every message until the end (about 57
# bytes each: a 30-minute run at 470,000 msg/s was killed by the OOM
# killer at 24 GiB after 16 minutes). Lower the rate to what fits in 60%
# of the memory available, and say so.
fits=$(python3 -c "
import sys
avail = int([l for l in open('/proc/meminfo') if l.startswith('MemAvailable')][0].split()[1]) * 1024
print(int(avail * 0.6 / 57 / float(sys.argv[1])))" "$DURATION")
if [ "$fits" -lt "$rate" ]; then
  echo "soak: half the maximum is $rate msg/s, but the generator's oracle fits $fits msg/s for $DURATION s in this machine's memory: soaking at $fits"
  rate=$fits
fi
echo "soak: maximum $(python3 -c "import json,sys; print(int(json.load(open(sys.argv[1]))['throughput_msgs_per_s']))" "$OUT/max.json") msg/s; soaking at $rate msg/s for $DURATION s"

python3 "$top/scripts/soak_sample.py" sample --admin "127.0.0.1:$ADMIN" --every 10 \
  --csv "$OUT/soak.csv" &
sampler=$!

status=0
"$loadgen_bin" --router "127.0.0.1:$PORT" --cpus "$GENERATOR_CPU" --router-pid "$router" --quiet \
  --scenario soak --nodes "$NODES" --users "$USERS" --rate "$rate" --churn-rate "$CHURN" \
  --reconnect-grace-ms "$GRACE_MS" --duration "$DURATION" --warmup 0 \
  --json "$OUT/soak.json" >"$OUT/soak.txt" 2>&1 || status=$?
sleep 11
kill "$sampler" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
sampler=""

tail -n 30 "$OUT/soak.txt"
python3 "$top/scripts/soak_sample.py" report --csv "$OUT/soak.csv" --png "$OUT/soak.png" || status=1
if [ "$status" != 0 ]; then
  echo "soak: FAILED (see $OUT)" >&2
  exit 1
fi
echo "soak: OK ($OUT/soak.csv, $OUT/soak.png)"
