#!/usr/bin/env bash
# Installs what building tern needs on a fresh Debian machine that has only the Rust
# toolchain: libclang (RocksDB's bindings) and a C++ compiler. With --tests, also what the
# tests drive: the third-party MQTT clients of conformance/tests/clients*.rs
# (mosquitto-clients, python3-paho-mqtt), and for conformance/tests/js_clients.rs Node.js,
# npm, Chromium and the npm packages of conformance/js (MQTT.js, playwright-core; pinned by
# its package-lock.json). Safe to run again.
set -euo pipefail
tests=false
[ "${1:-}" = "--tests" ] && tests=true
need=()
command -v clang >/dev/null 2>&1 || [ -e /usr/lib/llvm-14/lib/libclang.so ] || ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev)
command -v g++ >/dev/null 2>&1 || need+=(g++)
# mosquitto_pub/sub: the README's walkthrough and the tests use them.
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
if $tests; then
  # paho-mqtt for the Debian python3 (apt, not pip: PEP 668); the client tests run /usr/bin/python3.
  /usr/bin/python3 -c 'import paho.mqtt.client' >/dev/null 2>&1 || need+=(python3-paho-mqtt)
  command -v node >/dev/null 2>&1 || need+=(nodejs)
  command -v npm >/dev/null 2>&1 || need+=(npm)
  # The browser the web chat test drives (playwright-core runs it; it downloads none itself).
  [ -x /usr/bin/chromium ] || need+=(chromium)
fi
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# npm ci when node_modules is missing or older than the lock file (npm ci writes
# node_modules/.package-lock.json last).
$tests || exit 0
js="$(dirname "$0")/../conformance/js"
installed="$js/node_modules/.package-lock.json"
if [ ! -e "$installed" ] || [ "$js/package-lock.json" -nt "$installed" ]; then
  (cd "$js" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
