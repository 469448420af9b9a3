#!/usr/bin/env bash
# Runs the `tern` command line (the same release binary scripts/serve.sh runs), e.g.
#   ./scripts/tern.sh user add alice --password alice-pw
#   ./scripts/tern.sh sessions list --json
# It runs from the repository root, like scripts/serve.sh, so both find ./tern-data there
# (relative paths given as arguments are relative to the root too). Build output goes to
# the shared target directory; the first build compiles RocksDB.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tern-target}"
cargo build --quiet --release --workspace --bins
exec "$CARGO_TARGET_DIR/release/tern" "$@"
