#!/usr/bin/env bash
# Gateway benchmarks on loopback (issue 4's targets), against `moebox up` on the fixture model:
#   1. authenticated GET /v1/models with keep-alive: wrk, requests/s and latency percentiles;
#   2. streaming through the gateway vs straight from the engine socket (tests/bench/stream.py):
#      tokens/s, and the latency the gateway adds to each token, measured in pairs;
#   3. the gateway's RSS idle and after the load (`up` runs the gateway in its own process; the
#      engine is its child);
#   4. the paired per-token latency again with the engine on one core (`up --intra-op-threads 1`),
#      leaving the other to the gateway and the client, as a GPU engine leaves the appliance's
#      cores: on two cores a CPU engine's ONNX Runtime threads spin on both, and every other
#      process waits its turn for a core.
# Usage: tests/bench/gateway.sh [--duration SECONDS] [--connections N] [--model DIR]
# (--model: a model folder for `up`, e.g. the 80M bench model of tests/bench/common.sh, whose
# tokens cost what a real model's do relative to the gateway; default the tiny fixture, which
# makes tokens so cheap that the gateway's per-chunk work shows at its largest.)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
duration=15
connections=50
model_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) duration=$2; shift 2 ;;
        --connections) connections=$2; shift 2 ;;
        --model) model_args=(--model "$2"); shift 2 ;;
        *) echo "usage: $0 [--duration S] [--connections N] [--model DIR]" >&2; exit 2 ;;
    esac
done
command -v wrk >/dev/null || { echo "gateway.sh: needs wrk (apt-get install wrk)" >&2; exit 1; }
./dev setup >&2
cargo build --release -p moebox >&2
busy=$( (pgrep -a cargo; pgrep -a rustc) 2>/dev/null || true)
[ -z "$busy" ] || echo "gateway.sh: WARNING: compilers are running; figures will be low" >&2

data=$(mktemp -d)
up=
trap 'stop_up; rm -rf "$data"' EXIT
stop_up() { [ -z "$up" ] || { kill "$up" 2>/dev/null; wait "$up" 2>/dev/null || true; }; up=; }
# start_up [up's flags...]: sets $up, $url, $key, $model.
start_up() {
    rm -rf "$data"/*
    MOEBOX_LOG=warn target/release/moebox up "${model_args[@]}" "$@" --data-dir "$data" \
        --listen 127.0.0.1:0 >"$data/up.out" 2>"$data/up.err" &
    up=$!
    for _ in $(seq 1200); do grep -q '^ready' "$data/up.out" && break; sleep 0.1; done
    grep -q '^ready' "$data/up.out" || { cat "$data/up.err" >&2; exit 1; }
    url=$(sed -n 's/^url: //p' "$data/up.out")
    key=$(sed -n 's/^user key: //p' "$data/up.out")
    model=$(curl -sS -H "Authorization: Bearer $key" "$url/v1/models" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
}
stream() {
    python3 tests/bench/stream.py --engine-socket "$data/engine-0.sock" --gateway "${url#http://}" \
        --key "$key" --model "$model" --clients 8 --requests 16 --max-tokens 128 "$@"
}
rss() { awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' "/proc/$up/status"; }

start_up
echo "machine: $(nproc) cores, $(uname -r); gateway = moebox up (pid $up); $url"
echo "gateway RSS idle: $(rss)"

echo "== GET /v1/models, authenticated, keep-alive: wrk -t2 -c$connections -d${duration}s"
wrk -t2 -c"$connections" -d"${duration}s" --latency -H "Authorization: Bearer $key" "$url/v1/models"
echo "gateway RSS after wrk: $(rss)"

echo "== streaming: engine socket vs gateway (same requests), engine on every core"
# --clients 4 pairs: eight streams, the rows `up` gives the engine, so that both requests of a
# pair are admitted in the same step.
stream --reps 3 --pairs 0
stream --reps 0 --clients 4 --pairs 48
echo "gateway RSS after streaming: $(rss)"
stop_up

echo "== per-token latency added, engine on one core: moebox up --intra-op-threads 1"
start_up --intra-op-threads 1
stream --reps 0 --clients 4 --pairs 48
