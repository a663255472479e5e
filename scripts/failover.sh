#!/usr/bin/env bash
# Failover time of a three-router cluster (lease TTL 2 s) over N SIGKILLs:
# runs tests/cluster_etcd.rs's kill test N times (each: etcd and three
# routers started afresh, 300 Routes, one router killed, 300 more Routes)
# and prints, per kill, the time from the kill to the last outcome of the
# Routes sent after it, then the median and the worst.
#
#   scripts/failover.sh [N]     (default 10; needs etcd and protoc: scripts/deps.sh)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
runs=${1:-10}
scripts/deps.sh
cargo test --features cluster --test cluster_etcd --no-run --quiet 2>/dev/null
times=()
for i in $(seq 1 "$runs"); do
  line=$(cargo test --features cluster --test cluster_etcd three_routers_lose_nothing_when_one_is_killed \
    -- --nocapture 2>&1 | grep '^failover:' || true)
  if [ -z "$line" ]; then
    echo "run $i: the test failed" >&2
    exit 1
  fi
  echo "run $i: $line"
  times+=("$(echo "$line" | sed -E 's/.* ([0-9.]+) s after the kill.*/\1/')")
done
printf '%s\n' "${times[@]}" | sort -n | awk '{ a[NR] = $1 } END {
  m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2;
  printf "%d kills: median %.2f s, worst %.2f s, best %.2f s (lease TTL 2 s)\n", NR, m, a[NR], a[1] }'
