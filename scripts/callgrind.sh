#!/usr/bin/env bash
# Instructions the router executes per operation, counted by callgrind:
# a figure that does not depend on the machine's noise. Runs the release
# router (one shard) under valgrind, zeroes the counts once it is up, drives
# it with the load generator, dumps the counts, and divides.
#
#   scripts/callgrind.sh route    # one-to-one chat messages
#   scripts/callgrind.sh churn    # session opens and closes
#   scripts/callgrind.sh fanout   # group messages (Fanout) to 10, 100 or
#                                 # 1,000 members (plus 5% offline)
#   scripts/callgrind.sh route2   # messages to users with two devices on
#                                 # two nodes, with ACK (two Delivers, their
#                                 # reports collected for one verdict)
#
# Needs valgrind (apt-get install valgrind). Results in $OUT.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
WHAT=${1:-route}
PORT=${PORT:-17830}
OUT=${OUT:-$top/target/callgrind}
router_bin=$top/target/release/imrouter
loadgen_bin=$top/target/release/imrouter-loadgen
command -v valgrind >/dev/null || { echo "callgrind.sh: needs valgrind" >&2; exit 2; }
(cd "$top" && cargo build --release --workspace --quiet)
mkdir -p "$OUT"
profile=$OUT/callgrind.$WHAT.out
rm -f "$profile"*

valgrind --tool=callgrind --callgrind-out-file="$profile" \
  "$router_bin" serve --listen "127.0.0.1:$PORT" --shards 1 --cpus 0 2>"$OUT/$WHAT.router.log" &
pid=$!
trap 'kill -9 $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
  sleep 0.1
done
callgrind_control -z "$pid" >/dev/null

case $WHAT in
  route)
    # 10,000 users on 4 nodes, every message to an online user's every
    # device (one), no ACK: one Route in and one Deliver out per message.
    "$loadgen_bin" --router "127.0.0.1:$PORT" --cpus 1 --quiet --json "$OUT/$WHAT.json" \
      --scenario chat --nodes 4 --users 10000 --offline-ratio 0 --to-device-ratio 0 \
      --rate 20000 --duration 8 --warmup 0 >"$OUT/$WHAT.txt" 2>&1
    ;;
  route2)
    "$loadgen_bin" --router "127.0.0.1:$PORT" --cpus 1 --quiet --json "$OUT/$WHAT.json" \
      --scenario chat --nodes 4 --users 10000 --devices-per-user 2 --offline-ratio 0 \
      --to-device-ratio 0 --ack --rate 20000 --duration 8 --warmup 0 >"$OUT/$WHAT.txt" 2>&1
    ;;
  fanout)
    "$loadgen_bin" --router "127.0.0.1:$PORT" --cpus 1 --quiet --json "$OUT/$WHAT.json" \
      --scenario fanout --nodes 4 --users 10000 --group-sizes 10,100,1000 --offline-ratio 0.05 \
      --rate 30 --duration 8 --warmup 0 >"$OUT/$WHAT.txt" 2>&1
    ;;
  churn)
    "$loadgen_bin" --router "127.0.0.1:$PORT" --cpus 1 --quiet --json "$OUT/$WHAT.json" \
      --scenario churn --nodes 4 --users 10000 --churn-rate 40000 --rate 1000 \
      --duration 8 --warmup 0 >"$OUT/$WHAT.txt" 2>&1
    ;;
  *) echo "callgrind.sh: route, route2, fanout or churn, not $WHAT" >&2; exit 2 ;;
esac
callgrind_control -d "$pid" >/dev/null
sleep 1
kill -9 "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true

# The largest: valgrind may leave an empty file behind as the router dies.
dump=$(ls -S "$profile"* | head -1)
total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
python3 - "$OUT/$WHAT.json" "$total" "$WHAT" <<'PY'
import json, sys
r, total, what = json.load(open(sys.argv[1])), int(sys.argv[2]), sys.argv[3]
# Every message sent (nothing is warm-up here) and every session operation.
sessions = r["users"] * r["devices_per_user"]
if what == "fanout":
    # The same seed sends the same groups: compare runs per Fanout.
    print(f"instructions: {total:,} for {r['sent']:,} Fanouts and {sessions:,} session opens")
    print(f"per Fanout: {total / r['sent']:,.0f} (oracle faults: {r['lost'] + r['duplicated'] + r['misrouted'] + r['wrong_verdict']})")
elif what in ("route", "route2"):
    ops = r["sent"] + sessions
    print(f"instructions: {total:,} for {r['sent']:,} messages and {sessions:,} session opens")
    print(f"per operation: {total / ops:,.0f} (oracle faults: {r['lost'] + r['duplicated'] + r['misrouted'] + r['wrong_verdict']})")
else:
    churn_ops = round(r["session_ops_per_s"] * r["duration_s"])
    ops = r["sent"] + sessions + churn_ops
    print(f"instructions: {total:,} for {churn_ops:,} churn opens+closes, {sessions:,} initial opens, {r['sent']:,} messages")
    print(f"per operation: {total / ops:,.0f} (oracle faults: {r['lost'] + r['duplicated'] + r['misrouted'] + r['wrong_verdict']})")
PY
echo "top functions (inclusive): callgrind_annotate --inclusive=yes $dump | head -40"
