#!/usr/bin/env bash
# Runs every test of the workspace (unit, property, table, conformance). The cargo target
# directory lives outside the clone so RocksDB (a C++ build of ~12 min) is compiled once.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --tests
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tern-target}"
# Test executables of earlier builds (one per hash, kept forever by cargo: every change of
# a test crate, and every checkout at another path, makes new ones) are what fills the
# shared target directory. Of each name (a crate's lib and bin tests share one) those linked
# more than an hour before the newest stay only if rebuilt within two days; cargo relinks
# one it needs. Libraries and the RocksDB build are left alone.
deps="$CARGO_TARGET_DIR/debug/deps"
if [ -d "$deps" ]; then
    declare -A newest
    while read -r mtime file; do
        name="${file%-*}"
        mtime="${mtime%.*}"
        if [ -z "${newest[$name]:-}" ]; then
            newest[$name]="$mtime"
        elif [ $((newest[$name] - mtime)) -gt 3600 ]; then
            rm -f "$deps/$file"
        fi
    done < <(find "$deps" -maxdepth 1 -type f ! -name '*.*' -printf '%T@ %f\n' | sort -rn)
    find "$deps" -maxdepth 1 -type f ! -name '*.*' -mtime +2 -delete 2>/dev/null || true
fi
cargo test --workspace --all-targets
cargo test --workspace --doc
# The Debian package: built around the debug binary, installed with dpkg, started from the
# unit's ExecStart line, purged (needs root or sudo).
./scripts/test-deb.sh
