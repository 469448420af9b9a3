#!/usr/bin/env bash
# Runs every test of the workspace (unit, property, table, conformance). The cargo target
# directory lives outside the clone so RocksDB (a C++ build of ~12 min) is compiled once.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --tests
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tern-target}"
# Test executables of earlier builds (one per hash, kept forever by cargo) are what fills
# the shared target directory; any not rebuilt for two days go (cargo relinks one it
# needs). Libraries and the RocksDB build are left alone.
find "$CARGO_TARGET_DIR/debug/deps" -maxdepth 1 -type f ! -name '*.*' -mtime +2 -delete 2>/dev/null || true
cargo test --workspace --all-targets
cargo test --workspace --doc
# The Debian package: built around the debug binary, installed with dpkg, started from the
# unit's ExecStart line, purged (needs root or sudo).
./scripts/test-deb.sh
