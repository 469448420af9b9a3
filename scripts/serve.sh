#!/usr/bin/env bash
# Runs the tern broker on its embedded defaults (127.0.0.1:1883, data in ./tern-data).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tern-target}"
exec cargo run --release --bin tern -- serve "$@"
