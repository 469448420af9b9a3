#!/usr/bin/env bash
# The Debian package, end to end: builds it around the debug binary (scripts/deb.sh
# --debug), installs it with dpkg, checks what it installed (binary, unit, config, the tern
# user and /var/lib/tern), starts the broker exactly as the unit's ExecStart line says, as
# the unit's user in its working directory, passes an MQTT message through it, stops it
# with SIGTERM (a clean exit), and purges the package. Needs root or sudo (dpkg).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
fail() { echo "test-deb: $*" >&2; exit 1; }
deb=$(./scripts/deb.sh --debug | tail -n 1)
[ -f "$deb" ] || fail "no package at '$deb'"
$SUDO dpkg --purge tern >/dev/null 2>&1 || true
$SUDO dpkg -i "$deb" >/dev/null
cleanup() {
  [ -n "${pid:-}" ] && $SUDO kill -KILL "$pid" 2>/dev/null || true
  $SUDO dpkg --purge tern >/dev/null 2>&1 || true
}
trap cleanup EXIT
unit=/lib/systemd/system/tern.service
[ -x /usr/bin/tern ] || fail "/usr/bin/tern missing"
[ -f "$unit" ] || fail "$unit missing"
[ -f /etc/tern/tern.toml ] || fail "/etc/tern/tern.toml missing"
getent passwd tern >/dev/null || fail "no user tern"
[ "$(stat -c %U /var/lib/tern)" = tern ] || fail "/var/lib/tern is not tern's"
for key in ProtectSystem=strict NoNewPrivileges=true LimitNOFILE= User=tern; do
  grep -q "^$key" "$unit" || fail "$unit lacks $key"
done
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
user=$(sed -n 's/^User=//p' "$unit")
workdir=$(sed -n 's/^WorkingDirectory=//p' "$unit")
# The installed config on free ports (it says 1883, which may be taken here).
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
$SUDO sed -i "s/127.0.0.1:1883/127.0.0.1:$port/; s/127.0.0.1:8081/127.0.0.1:0/" /etc/tern/tern.toml
log=$(mktemp)
# shellcheck disable=SC2086 # ExecStart is a command line, split as systemd splits it.
$SUDO sh -c "cd '$workdir' && exec runuser -u '$user' -- $exec_start" >"$log" 2>&1 &
for _ in $(seq 1 200); do
  pid=$(pgrep -u "$user" -f "^/usr/bin/tern serve" || true)
  [ -n "$pid" ] && (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break
  sleep 0.05
done
[ -n "$pid" ] || fail "the broker did not start: $(cat "$log")"
received=$(mktemp)
mosquitto_sub -p "$port" -t deb/test -C 1 -W 10 >"$received" &
sub=$!
for _ in $(seq 1 100); do
  mosquitto_pub -p "$port" -t deb/test -m "from the package" -q 1 && sleep 0.1
  grep -q "from the package" "$received" && break
done
wait "$sub" || fail "no message through the installed broker: $(cat "$log")"
grep -q "from the package" "$received" || fail "wrong message: $(cat "$received")"
[ -f /var/lib/tern/CURRENT ] || fail "no database in /var/lib/tern"
$SUDO kill -TERM "$pid"
for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
kill -0 "$pid" 2>/dev/null && fail "the broker did not stop on SIGTERM"
grep -q "stopped" "$log" || fail "no clean stop: $(cat "$log")"
pid=""
$SUDO dpkg --purge tern >/dev/null
[ ! -e /usr/bin/tern ] || fail "/usr/bin/tern left after purge"
! getent passwd tern >/dev/null || fail "user tern left after purge"
echo "test-deb: ok ($deb)"
