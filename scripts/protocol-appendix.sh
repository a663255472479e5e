#!/usr/bin/env bash
# Copies schema/imrouter.fbs into the appendix of docs/PROTOCOL.md, which
# must embed it verbatim (tests/docs.rs checks it).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
doc="$top/docs/PROTOCOL.md"
marker='## Appendix: schema/imrouter.fbs'
head=$(awk -v m="$marker" '$0 == m { exit } { print }' "$doc")
{
  printf '%s\n%s\n\n```fbs\n' "$head" "$marker"
  cat "$top/schema/imrouter.fbs"
  printf '```\n'
} >"$doc.tmp"
mv "$doc.tmp" "$doc"
echo "protocol-appendix.sh: docs/PROTOCOL.md now embeds schema/imrouter.fbs"
