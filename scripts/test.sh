#!/usr/bin/env bash
# The README's test command: every test, the cluster's included (three
# router processes and a real etcd). Installs protoc and etcd first when
# they are missing (scripts/deps.sh). Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
exec cargo test --workspace --features cluster "$@"
