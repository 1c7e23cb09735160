#!/usr/bin/env bash
# Load and soak test: builds the release binary and drives `moebox up` on loopback with
# tests/load/soak.py. Arguments go to soak.py, e.g.
#   tests/load/run.sh --duration 30 --clients 50     # quick check, about 1.5 minutes
#   tests/load/run.sh                                # the soak: 200 clients for 10 minutes
# Exits non-zero when a target fails (see docs/reliability.md, "Load and soak").
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
if [ -z "${ORT_DYLIB_PATH:-}" ]; then
    export ORT_DYLIB_PATH="$ROOT/.moebox/onnxruntime/libonnxruntime.so.1.31.1"
    [ -f "$ORT_DYLIB_PATH" ] || ./dev setup
fi
cargo build --release -p moebox
exec python3 tests/load/soak.py "$@"
