#!/usr/bin/env bash
# Fuzzes the codec's decoder (fuzz/fuzz_targets/decode.rs) for a bounded time, because a
# broker decodes whatever a peer sends. Runs on the stable toolchain: without a sanitizer
# (`-s none`) cargo-fuzz passes only stable rustc flags (SanitizerCoverage via -Cpasses/-Cllvm-args),
# and the codec has no `unsafe`, so AddressSanitizer would add little. FUZZ_SANITIZER=address
# turns it on anyway, through RUSTC_BOOTSTRAP=1 (-Zsanitizer is nightly-only).
# Exits non-zero on a crash, a timeout (-timeout) or an out-of-memory (-rss_limit_mb); the
# input is then in fuzz/artifacts/decode/ (replay: cargo fuzz run decode -s none <file>).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-60}"
sanitizer="${FUZZ_SANITIZER:-none}"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/tern-fuzz-target}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi
if [ "$sanitizer" != none ]; then
  export RUSTC_BOOTSTRAP=1
  CARGO_TARGET_DIR="$CARGO_TARGET_DIR-$sanitizer"
fi
# The corpus grows across local runs (it is git-ignored); fuzz/seeds/decode holds hand-made
# frames of every packet type to start from.
mkdir -p fuzz/corpus/decode
cargo fuzz run decode -s "$sanitizer" --target-dir "$CARGO_TARGET_DIR" \
  fuzz/corpus/decode fuzz/seeds/decode -- \
  -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=5 -print_final_stats=1
