#!/usr/bin/env bash
# Installs what building and testing tern needs on a fresh Debian machine that has only the
# Rust toolchain: libclang (RocksDB's bindings), a C++ compiler, and the third-party MQTT
# clients of conformance/tests/clients.rs (mosquitto-clients, python3-paho-mqtt). Safe to
# run again.
set -euo pipefail
need=()
command -v clang >/dev/null 2>&1 || [ -e /usr/lib/llvm-14/lib/libclang.so ] || ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
# paho-mqtt for the Debian python3 (apt, not pip: PEP 668); the client tests run /usr/bin/python3.
/usr/bin/python3 -c 'import paho.mqtt.client' >/dev/null 2>&1 || need+=(python3-paho-mqtt)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
