#!/usr/bin/env bash
# Concurrent-request benchmark: moebox's continuous-batching scheduler (`moebox bench`) vs
# onnxruntime-genai 0.18.0's Engine (CPU), see batch.py.
#
#   tests/bench/batch.sh [batch.py options...]    e.g. --reps 3 --max-tokens 128 --json-out r.json
#
# 1. ./dev setup: ONNX Runtime 1.31.1 into .moebox/, the reference venv (onnxruntime-genai).
# 2. cargo build --release -p moebox.
# 3. The ~80M-parameter bench model, generated once into $MOEBOX_BENCH_MODEL (default
#    /work/cache/bench-moe if /work/cache exists, else .moebox/bench-moe; never committed), as
#    tests/bench/decode.sh does it (needs the export environment with torch,
#    tests/fixtures/requirements-export.txt; MOEBOX_EXPORT_PYTHON names its python).
# 4. batch.py on tests/fixtures/tiny-moe and the bench model: concurrency 1, 4, 16, 32 for both
#    engines with the same explicit intra-op thread count (default: the physical cores;
#    --intra-op-threads N), then moebox's short-request-under-load scenario. The markdown tables
#    go to stdout, progress to stderr.
#
# Run it on an otherwise idle machine: the script warns when cargo/rustc are running, and
# batch.py redoes runs during which other processes took CPU.
set -euo pipefail
BENCH_NAME=batch.sh
source "$(dirname "$0")/common.sh"

exec "$PY" tests/bench/batch.py --moebox target/release/moebox \
    --model tests/fixtures/tiny-moe --model "$MOEBOX_BENCH_MODEL" "$@"
