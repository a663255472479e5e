#!/usr/bin/env bash
# Runs the deterministic simulation (src/sim) over many seeds: a whole
# router and several nodes in one thread, on virtual time, with faults;
# every promise to the nodes checked after every step and at the end.
#
#   scripts/simulate.sh --seeds 100000              # seeds 0..99999
#   scripts/simulate.sh --seeds 50000 --first 1000000
#   scripts/simulate.sh --seed 1234 --trace         # replay one, with its trace
#   scripts/simulate.sh --control --seeds 10000     # the cluster's control plane
#                                                   # (routers' memberships, a fake etcd)
#
# Prints progress every 10,000 seeds, then a summary (steps, faults, the
# router paths the runs went through); for the first failing seed, its
# configuration, the broken promises and the end of its trace, and exits 1.
# Builds the release binary once.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
(cd "$top" && cargo build --release --quiet --bin imrouter-sim)
exec "${CARGO_TARGET_DIR:-$top/target}/release/imrouter-sim" "$@"
