#!/usr/bin/env bash
# Installs, from Debian's packages, what the cluster build and its tests
# need when it is missing: protoc (etcd-client's build), etcd (the
# integration tests start one on 127.0.0.1), promtool (tests/admin.rs
# checks a scrape with `promtool check metrics`) and, as root, iproute2 (the
# partition test puts routers in network namespaces; without root it is
# skipped). A router alone needs none of them.
set -euo pipefail
need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler libprotobuf-dev)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [ "$(id -u)" = 0 ]; then
  command -v ip >/dev/null 2>&1 || need+=(iproute2)
fi
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "deps.sh: please install ${need[*]} (Debian package names)" >&2
  exit 2
fi
echo "deps.sh: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || {
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${need[@]}" >/dev/null
}
