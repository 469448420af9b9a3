#!/usr/bin/env bash
# A local try of several nodes: 3 NATS servers (a JetStream cluster on loopback, client ports
# 4222-4224) and 3 tern nodes joined to them (MQTT on 127.0.0.1:1883-1885, admin API on
# 8081-8083), all state under ./tern-cluster (or $1). Ctrl-C stops everything.
#
#   ./scripts/cluster.sh
#   mosquitto_sub -p 1885 -t 'room/#' &
#   mosquitto_pub -p 1883 -t room/1 -m hello      # published on node 1, received on node 3
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --tests
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tern-target}"
cargo build --quiet --release --workspace --bins
tern="$CARGO_TARGET_DIR/release/tern"
nats="${TERN_NATS_SERVER:-${TERN_TOOLS:-$HOME/.cache/tern-tools}/nats-venv/bin/nats-server}"
dir="${1:-tern-cluster}"
mkdir -p "$dir"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
urls='["nats://127.0.0.1:4222", "nats://127.0.0.1:4223", "nats://127.0.0.1:4224"]'
for i in 1 2 3; do
  routes=""
  for j in 1 2 3; do
    [ "$i" = "$j" ] || routes="$routes${routes:+,}nats://127.0.0.1:$((6221 + j))"
  done
  "$nats" -a 127.0.0.1 -p $((4221 + i)) -n "nats-$i" -js -sd "$dir/nats-$i" \
    --cluster_name tern --cluster "nats://127.0.0.1:$((6221 + i))" --routes "$routes" \
    >"$dir/nats-$i.log" 2>&1 &
  pids+=($!)
done
for i in 1 2 3; do
  cat >"$dir/tern-$i.toml" <<EOF
data_dir = "$dir/tern-$i"
[listeners.tcp]
listen = "127.0.0.1:$((1882 + i))"
[admin]
listen = "127.0.0.1:$((8080 + i))"
[cluster]
engine = "nats"
node_id = "node-$i"
nats_urls = $urls
EOF
  "$tern" serve --config "$dir/tern-$i.toml" >"$dir/tern-$i.log" 2>&1 &
  pids+=($!)
done
echo "3 NATS servers (4222-4224) and 3 tern nodes (MQTT 1883-1885); logs in $dir/. Ctrl-C stops."
wait
