#!/usr/bin/env bash
# The chat example's browser test: Debian's Chromium driven by
# playwright-core, against a router and two chat nodes, then against etcd
# and three routers with one killed mid-conversation. Installs what is
# missing (chromium and nodejs/npm from Debian's packages, as root;
# playwright-core from npm, never a downloaded browser) and builds the
# binaries it needs (debug, with the cluster). Screenshots go to
# examples/chat/browser-test/screenshots/.
#
#   examples/chat/browser-test/run.sh            both variants
#   examples/chat/browser-test/run.sh single     one of them
set -euo pipefail
top=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$top"
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "browser test: please install ${need[*]} (Debian package names)" >&2
    exit 2
  fi
  echo "browser test: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null
    apt-get install -y -qq "${need[@]}" >/dev/null
  }
fi
scripts/deps.sh
dir=examples/chat/browser-test
if [ ! -d "$dir/node_modules/playwright-core" ]; then
  (cd "$dir" && npm ci --no-audit --no-fund --silent)
fi
# (Two builds: `--bin` would select the router's binary in both packages.)
cargo build --quiet --features cluster -p imrouter --bin imrouter
cargo build --quiet -p imrouter-chat
target=${CARGO_TARGET_DIR:-target}
export IMROUTER="$target/debug/imrouter" CHAT="$target/debug/imrouter-chat"
for mode in ${1:-single cluster}; do
  node "$dir/run.mjs" "$mode"
done
