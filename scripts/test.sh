#!/usr/bin/env bash
# Runs every test of the workspace (unit, property, table, conformance). The cargo target
# directory lives outside the clone so RocksDB (a C++ build of ~12 min) is compiled once.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --tests
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tern-target}"
cargo test --workspace --all-targets
cargo test --workspace --doc
