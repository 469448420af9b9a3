#!/usr/bin/env bash
# Runs every test of the workspace (unit, property, table, conformance). The cargo target
# directory lives outside the clone so RocksDB (a C++ build of ~12 min) is compiled once.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --tests
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tern-target}"
# Test executables of earlier builds (one per hash, kept forever by cargo: every change of
# a test crate, and every checkout at another path, makes new ones) are what fills the
# shared target directory: of each name only the newest stays, and none not rebuilt for two
# days (cargo relinks one it needs). Libraries and the RocksDB build are left alone.
deps="$CARGO_TARGET_DIR/debug/deps"
if [ -d "$deps" ]; then
    declare -A newest
    while read -r _ file; do
        name="${file%-*}"
        if [ -n "${newest[$name]:-}" ]; then
            rm -f "$deps/$file"
        else
            newest[$name]=1
        fi
    done < <(find "$deps" -maxdepth 1 -type f ! -name '*.*' -printf '%T@ %f\n' | sort -rn)
    find "$deps" -maxdepth 1 -type f ! -name '*.*' -mtime +2 -delete 2>/dev/null || true
fi
cargo test --workspace --all-targets
cargo test --workspace --doc
# The Debian package: built around the debug binary, installed with dpkg, started from the
# unit's ExecStart line, purged (needs root or sudo).
./scripts/test-deb.sh
