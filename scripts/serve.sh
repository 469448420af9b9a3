#!/usr/bin/env bash
# Runs the tern broker on its embedded defaults (127.0.0.1:1883, data in ./tern-data);
# arguments go to `tern serve`. Built with --workspace so the release build (RocksDB's C++
# takes a while the first time) is the same one the benchmarks use.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tern-target}"
cargo build --release --workspace --bins
exec "$CARGO_TARGET_DIR/release/tern" serve "$@"
