#!/usr/bin/env bash
# Short coverage-guided runs of every fuzz target, for CI: builds them once (cargo fuzz, libFuzzer
# with AddressSanitizer; RUSTC_BOOTSTRAP lets the stable toolchain take the sanitizer flags),
# then runs each for FUZZ_SECONDS (default 20) from its seed corpus. A crash fails the run and
# leaves its input in fuzz/artifacts/<target>/. Longer runs: see docs/security.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
seconds="${FUZZ_SECONDS:-20}"
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
targets=(decode_protobuf decode_json labels rule_file line_parsers request_head answer)
cargo fuzz build -O --fuzz-dir .
log="$(mktemp)"
for t in "${targets[@]}"; do
  # Runs on a scratch copy of the seeds, so the checked-in corpus stays small.
  work="$(mktemp -d)"
  cp -r "corpus/$t/." "$work/"
  echo "==> fuzz $t for ${seconds}s"
  if ! cargo fuzz run -O --fuzz-dir . "$t" "$work" -- -max_total_time="$seconds" \
      -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz target $t failed (the input is in fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  grep -E "^stat::(number_of_executed_units|peak_rss_mb)" "$log" || true
  rm -rf "$work"
done
rm -f "$log"
echo "fuzz: every target ran ${seconds}s without a crash"
