#!/usr/bin/env bash
# Failover under load, N times: the load generator's router-kill scenario
# (three routers of one shard, lease TTL 2 s, 8 nodes, 20,000 msg/s; r2
# SIGKILLed at 40% of the traffic). Prints, per run, the longest wait for an
# outcome of a message sent in the 100 ms after the kill (the kill to
# every slot served again), the messages resent and the duplicates
# dropped, then the median and the worst. Any oracle fault fails the run.
#
#   scripts/failover-loadgen.sh [N]     (default 10; builds the release binaries)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
runs=${1:-10}
scripts/deps.sh
cargo build --release --features cluster --bins --quiet
waits=()
for i in $(seq 1 "$runs"); do
  out=$(target/release/imrouter-loadgen --scenario router-kill --nodes 8 --users 8000 \
    --rate 20000 --router-cpus 0 --cpus 1 --quiet --seed "$i") || {
    echo "run $i failed:"; echo "$out"; exit 1; }
  wait=$(echo "$out" | grep 'SIGKILL r2' | sed -E 's/.*: ([0-9.]+) s$/\1/')
  counts=$(echo "$out" | grep '^delivered' | sed -E 's/.*messages resent ([0-9]+).*duplicates dropped ([0-9]+).*/resent \1, duplicates dropped \2/')
  verdict=$(echo "$out" | grep '^oracle')
  echo "run $i: kill to last outcome $wait s; $counts; $verdict"
  waits+=("$wait")
done
printf '%s\n' "${waits[@]}" | sort -n | awk '{ a[NR] = $1 } END {
  m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2;
  printf "%d kills under load: median %.2f s, worst %.2f s, best %.2f s (lease TTL 2 s)\n", NR, m, a[NR], a[1] }'
