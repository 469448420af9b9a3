#!/usr/bin/env bash
# Runs the `tern` command line (the same release binary scripts/serve.sh runs), e.g.
#   ./scripts/tern.sh user add alice --password alice-pw
#   ./scripts/tern.sh sessions list --json
# Build output goes to the shared target directory; the first build compiles RocksDB.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tern-target}"
(cd "$root" && cargo build --quiet --release --workspace --bins)
exec "$CARGO_TARGET_DIR/release/tern" "$@"
