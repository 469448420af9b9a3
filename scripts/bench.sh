#!/usr/bin/env bash
# tern side by side with Mosquitto and rumqttd (issue 5): installs what is missing, builds
# the release binaries, and runs `tern-compare`, which starts every broker fresh on free
# loopback ports, runs the scenarios round after round alternating the brokers, and writes
# the medians and ratios tern/peer to benches/RESULTS.md. Arguments go to tern-compare:
#
#   ./scripts/bench.sh                                     # everything, 3 rounds (~25 minutes)
#   ./scripts/bench.sh --only fan-in,pairs --rounds 1 --duration 3 --out /tmp/quick.md
#   ./scripts/bench.sh --help
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# Mosquitto, the broker (setup.sh installs only its clients).
if [ ! -x /usr/sbin/mosquitto ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto >/dev/null
fi
# rumqttd, pinned. Not `--locked`: its lock file pins time 0.3.30, which no longer compiles
# with current toolchains; the resolver picks a newer time 0.3.x instead.
TOOLS="$HOME/.cache/tern-tools"
if [ ! -x "$TOOLS/bin/rumqttd" ]; then
  cargo install rumqttd --version 0.19.0 --root "$TOOLS"
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tern-target}"
cargo build --release --workspace --bins
exec "$CARGO_TARGET_DIR/release/tern-compare" --rumqttd "$TOOLS/bin/rumqttd" "$@"
