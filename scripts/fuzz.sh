#!/usr/bin/env bash
# Runs each cargo-fuzz target (fuzz/) for a bounded time: SECONDS each,
# default 60. Needs cargo-fuzz (`cargo install cargo-fuzz`); a stable
# toolchain works through RUSTC_BOOTSTRAP. New inputs go to a scratch corpus
# so the committed seeds in fuzz/corpus/ stay small; crashes are kept in
# fuzz/artifacts/<target>/ and make the script fail.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(unpack manifest frame_decoder)
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is not installed: cargo install cargo-fuzz" >&2; exit 1; }
export RUSTC_BOOTSTRAP=1
# AddressSanitizer needs a nightly std to link on some machines; the
# targets check behaviour with assertions, so run without it by default.
sanitizer="${SEDGE_FUZZ_SANITIZER:-none}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  echo "fuzzing $t for ${seconds}s"
  log="$scratch/$t.log"
  rc=0
  cargo fuzz run --sanitizer "$sanitizer" "$t" "$scratch/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -max_len=65536 -timeout=20 -rss_limit_mb=1024 -print_final_stats=1 >"$log" 2>&1 || rc=$?
  grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb)|Done [0-9]+ runs" "$log" || true
  if [ "$rc" -ne 0 ]; then
    # The panic message and the saved input; libFuzzer's dump of the input
    # bytes is left out.
    grep -E -A2 "panicked at|^==[0-9]+==|SUMMARY" "$log" >&2 || tail -n 20 "$log" >&2
    grep -E "artifacts/$t/" "$log" | head -n 2 >&2 || true
    echo "$t found a failure (exit $rc); the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
