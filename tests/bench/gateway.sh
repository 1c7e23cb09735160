#!/usr/bin/env bash
# Gateway benchmarks on loopback (issue 4's targets), against `moebox up` on the fixture model:
#   1. authenticated GET /v1/models with keep-alive: wrk, requests/s and latency percentiles;
#   2. streaming through the gateway vs straight from the engine socket (tests/bench/stream.py);
#   3. the gateway's RSS idle and after the load (`up` runs the gateway in its own process; the
#      engine is its child).
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
out=$data/up.out
MOEBOX_LOG=warn target/release/moebox up "${model_args[@]}" --data-dir "$data" --listen 127.0.0.1:0 >"$out" 2>"$data/up.err" &
up=$!
trap 'kill $up 2>/dev/null; wait $up 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1200); do grep -q '^ready' "$out" && break; sleep 0.1; done
grep -q '^ready' "$out" || { cat "$data/up.err" >&2; exit 1; }
url=$(sed -n 's/^url: //p' "$out")
key=$(sed -n 's/^user key: //p' "$out")
model=$(curl -sS -H "Authorization: Bearer $key" "$url/v1/models" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
rss() { awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' "/proc/$up/status"; }
echo "machine: $(nproc) cores, $(uname -r); gateway = moebox up (pid $up); $url"
echo "gateway RSS idle: $(rss)"

echo "== GET /v1/models, authenticated, keep-alive: wrk -t2 -c$connections -d${duration}s"
wrk -t2 -c"$connections" -d"${duration}s" --latency -H "Authorization: Bearer $key" "$url/v1/models"
echo "gateway RSS after wrk: $(rss)"

echo "== streaming: engine socket vs gateway (same requests)"
python3 tests/bench/stream.py --engine-socket "$data/engine-0.sock" --gateway "${url#http://}" \
    --key "$key" --model "$model" --clients 8 --requests 16 --max-tokens 128 --reps 3
echo "gateway RSS after streaming: $(rss)"
