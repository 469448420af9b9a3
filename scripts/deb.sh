#!/usr/bin/env bash
# Builds the Debian package of tern with cargo-deb (installed at a pinned version under
# ~/.cache/tern-tools): the binary, the systemd unit, /etc/tern/tern.toml and the
# maintainer scripts of packaging/ (see [package.metadata.deb] in Cargo.toml). Prints the
# path of the .deb.
#
#   scripts/deb.sh           a release build (what to ship)
#   scripts/deb.sh --debug   the debug binary the tests build (what scripts/test-deb.sh checks)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tern-target}"
TOOLS="${TERN_TOOLS:-$HOME/.cache/tern-tools}"
CARGO_DEB_VERSION=3.8.0
if [ "$("$TOOLS/bin/cargo-deb" --version 2>/dev/null | awk '{print $2}')" != "$CARGO_DEB_VERSION" ]; then
  cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION" --root "$TOOLS" >&2
fi
profile=release
# cargo-deb warns that it will stop packaging the dev profile one day: pinned above, it
# still does, and a second profile would build RocksDB once more.
[ "${1:-}" = "--debug" ] && profile=dev
# --workspace: the features the tests build with, so RocksDB is not built a second time.
cargo build --workspace --bins --profile "$profile" >&2
out="$CARGO_TARGET_DIR/debian"
mkdir -p "$out"
# The release binary is stripped (its line tables are half a gigabyte); the test's is not
# (stripping it would only take time).
strip=(--strip)
[ "$profile" = dev ] && strip=(--no-strip)
"$TOOLS/bin/cargo-deb" --no-build --profile "$profile" "${strip[@]}" --output "$out" -p tern
