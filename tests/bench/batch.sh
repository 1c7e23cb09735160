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
cd "$(dirname "$0")/../.."
ROOT=$PWD

./dev setup >&2
export ORT_DYLIB_PATH="$ROOT/.moebox/onnxruntime/libonnxruntime.so.1.31.1"
PY=$(tests/fixtures/reference-venv.sh | tail -n1)

cargo build --release -p moebox >&2

if [ -z "${MOEBOX_BENCH_MODEL:-}" ]; then
    if [ -d /work/cache ]; then MOEBOX_BENCH_MODEL=/work/cache/bench-moe; else MOEBOX_BENCH_MODEL=$ROOT/.moebox/bench-moe; fi
fi
if [ ! -f "$MOEBOX_BENCH_MODEL/genai_config.json" ]; then
    export_py=${MOEBOX_EXPORT_PYTHON:-}
    if [ -z "$export_py" ]; then
        for candidate in /work/cache/export-venv/bin/python "$ROOT/.venv-export/bin/python"; do
            if [ -x "$candidate" ]; then export_py=$candidate; break; fi
        done
    fi
    if [ -z "$export_py" ] || ! "$export_py" -c 'import torch, onnxruntime_genai.models.builder' 2>/dev/null; then
        cat >&2 <<EOT
batch.sh: the bench model $MOEBOX_BENCH_MODEL is missing, and generating it needs the export
environment with torch (tests/fixtures/requirements-export.txt), e.g.:
    python3 -m venv .venv-export && .venv-export/bin/pip install -r tests/fixtures/requirements-export.txt
then rerun (or set MOEBOX_EXPORT_PYTHON to that venv's python, or MOEBOX_BENCH_MODEL to an
existing model folder made by: make_tiny_moe.py --preset bench --out DIR).
EOT
        exit 1
    fi
    echo "batch.sh: generating the bench model into $MOEBOX_BENCH_MODEL (about 20 s)" >&2
    HF_HUB_OFFLINE=1 "$export_py" tests/fixtures/make_tiny_moe.py --preset bench --out "$MOEBOX_BENCH_MODEL" >&2
fi

busy=$( (pgrep -a cargo; pgrep -a rustc) 2>/dev/null | grep -v "^$$ " || true)
if [ -n "$busy" ]; then
    echo "batch.sh: warning: a build is running; the numbers will be depressed:" >&2
    echo "$busy" | cut -c1-120 >&2
fi
echo "batch.sh: $(nproc) CPUs; uptime:$(uptime)" >&2

exec "$PY" tests/bench/batch.py --moebox target/release/moebox \
    --model tests/fixtures/tiny-moe --model "$MOEBOX_BENCH_MODEL" "$@"
