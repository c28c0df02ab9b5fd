#!/usr/bin/env bash
# Runs every workload of docs/benchmarks.md against Herald and the Socket.IO
# peer, one after the other, on clusters that `loadtest --spawn` starts and
# stops itself (loopback only; every run is bounded by --max-time).
#
#   loadtest/benchmarks.sh [OUT_DIR]      # default: target/bench
#
# Needs: a release build (cargo build --release -p herald -p herald-loadtest),
# redis-server, and for the Socket.IO peer node + `npm ci` in
# loadtest/peers/socketio. Run it on a quiet machine: the load client, Redis
# and every node share its cores. Takes about 20 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-target/bench}
mkdir -p "$out"
lt=target/release/loadtest
[ -x "$lt" ] || { echo "build first: cargo build --release -p herald -p herald-loadtest" >&2; exit 1; }
if [ ! -d loadtest/peers/socketio/node_modules ]; then
  (cd loadtest/peers/socketio && npm ci --no-audit --no-fund)
fi

failed=0
run() { # run NAME TARGET ARGS...: one workload; summary to NAME.txt, report to NAME.json
  local name=$1 target=$2; shift 2
  echo "== $name: loadtest $* --target $target"
  "$lt" "$@" --spawn --target "$target" --quiet --max-time 600 --json "$out/$name.json" | tee "$out/$name.txt" ||
    { echo "!! $name failed (exit $?)"; failed=1; }
  sleep 5 # let sockets in TIME_WAIT and the last processes go
}

run fanout-5 both fanout --conns 10000 --rate 5 --duration 10
run fanout-ramp both fanout --conns 10000 --ramp --p99-ms 100 --ramp-start 5 --ramp-max 200 --step-secs 5
# The throughput ceiling: the highest zero-loss rate with p99 under a second.
run fanout-capacity both fanout --conns 10000 --ramp --p99-ms 1000 --ramp-start 10 --ramp-max 400 --ramp-factor 1.5 --step-secs 5
# Three nodes: a process may hold at most 20 000 file descriptors here.
run idle-50k both idle --conns 50000 --gateways 3 --settle 5 --hold 10
run connect-10k both connect --conns 10000 --concurrency 10000
run rooms-1000 both fanout --conns 10000 --rooms 1000 --rate 2000 --duration 10
run churn-500 both churn --conns 10000 --rate 5 --reconnects 500 --duration 10
# The Socket.IO peer has no client publish: chat measures Herald alone.
run chat herald chat --conns 1000 --room-size 10 --rate 1 --duration 10
echo "reports in $out"
exit $failed
