#!/usr/bin/env bash
# Router CPU per routed message through the node core's cluster logic
# (the load generator's `cluster` scenario, --rate max): a router alone
# without etcd, a cluster of one router with etcd, and three routers of
# one shard each, interleaved over N rounds; prints each run's routed
# messages per router CPU second and the medians. Routers and etcd on
# CPU 0, the generator on CPU 1.
#
#   scripts/cluster-bench.sh [N]     (default 5; builds the release binaries)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
rounds=${1:-5}
scripts/deps.sh
cargo build --release --features cluster --bins --quiet
lg=target/release/imrouter-loadgen
common=(--scenario cluster --nodes 8 --users 8000 --rate max --window 256
  --warmup 1 --duration 5 --router-cpus 0 --cpus 1 --quiet)
declare -A runs
for round in $(seq 1 "$rounds"); do
  for config in alone one three; do
    case $config in
      alone) args=(--routers 1 --standalone) ;;
      one) args=(--routers 1) ;;
      three) args=(--routers 3) ;;
    esac
    line=$("$lg" "${common[@]}" "${args[@]}" --seed "$round" | grep '^measured')
    per=$(echo "$line" | sed -E 's/.*: ([0-9]+) routed messages per router CPU second.*/\1/')
    echo "round $round $config: $line"
    runs[$config]="${runs[$config]:-} $per"
  done
done
median() { printf '%s\n' $1 | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
for config in alone one three; do
  echo "$config: median $(median "${runs[$config]}") routed messages per router CPU second (runs:${runs[$config]})"
done
