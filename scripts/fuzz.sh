#!/usr/bin/env bash
# Runs each fuzz target (fuzz/, cargo-fuzz on the nightly toolchain) for
# SECONDS (default 600), two at a time, on the corpora in fuzz/corpus/
# (which grow; commit them). Prints each run's final statistics; a crash
# leaves its input in fuzz/artifacts/<target>/ and fails the script:
# make it a test in src/fuzzing.rs, fix it, run again.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top/fuzz"
seconds=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frame verifier_differential router_core node_core)
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
cargo +nightly fuzz build -O
status=0
run() {
  local target=$1
  mkdir -p "corpus/$target"
  if cargo +nightly fuzz run -O "$target" "corpus/$target" -- \
      -max_total_time="$seconds" -print_final_stats=1 >"/tmp/imrouter-fuzz-$target.log" 2>&1; then
    echo "$target: OK: $(grep -E '^#[0-9]+.*DONE' "/tmp/imrouter-fuzz-$target.log" | tail -1)"
  else
    echo "$target: FAILED (see /tmp/imrouter-fuzz-$target.log and fuzz/artifacts/$target/)"
    return 1
  fi
}
for ((i = 0; i < ${#targets[@]}; i += 2)); do
  run "${targets[i]}" & first=$!
  if [ $((i + 1)) -lt ${#targets[@]} ]; then run "${targets[i + 1]}" & second=$!; else second=; fi
  wait $first || status=1
  [ -z "$second" ] || wait $second || status=1
done
exit $status
