#!/usr/bin/env bash
# Single-stream decode benchmark: moebox vs onnxruntime-genai 0.18.0 (CPU), see decode.py.
#
#   tests/bench/decode.sh [decode.py options...]     e.g. --reps 5 --new-tokens 256 --json-out r.json
#
# 1. ./dev setup: ONNX Runtime 1.31.1 into .moebox/, the reference venv (onnxruntime-genai).
# 2. cargo build --release -p moebox.
# 3. The ~80M-parameter bench model (16 experts, top-4), generated once into $MOEBOX_BENCH_MODEL
#    (default /work/cache/bench-moe if /work/cache exists, else .moebox/bench-moe; never
#    committed). Generating it needs the *export* environment, with torch:
#    tests/fixtures/requirements-export.txt. Set MOEBOX_EXPORT_PYTHON to that venv's python
#    (default /work/cache/export-venv/bin/python, then .venv-export/bin/python).
# 4. decode.py on tests/fixtures/tiny-moe and the bench model; the markdown table goes to stdout,
#    progress to stderr. Both engines get the same explicit intra-op thread count (default: the
#    physical cores, ONNX Runtime's and moebox's default; onnxruntime-genai's own default is half the
#    logical CPUs, so it is overridden): --intra-op-threads N to choose, 0 for each engine's default.
#
# Run it on an otherwise idle machine: the script warns when cargo/rustc are running.
set -euo pipefail
BENCH_NAME=decode.sh
source "$(dirname "$0")/common.sh"

exec "$PY" tests/bench/decode.py --moebox target/release/moebox \
    --model tests/fixtures/tiny-moe --model "$MOEBOX_BENCH_MODEL" "$@"
