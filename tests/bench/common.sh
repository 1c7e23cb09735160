# Shared set-up of the benchmark scripts, sourced by decode.sh and batch.sh (which set
# BENCH_NAME): ./dev setup, the release build, the bench model, the busy-machine warning. Leaves
# ROOT, PY (the reference venv's python) and MOEBOX_BENCH_MODEL set, and the repository root as
# the working directory.
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
        cat >&2 <<EOF
$BENCH_NAME: the bench model $MOEBOX_BENCH_MODEL is missing, and generating it needs the export
environment with torch (tests/fixtures/requirements-export.txt), e.g.:
    python3 -m venv .venv-export && .venv-export/bin/pip install -r tests/fixtures/requirements-export.txt
then rerun (or set MOEBOX_EXPORT_PYTHON to that venv's python, or MOEBOX_BENCH_MODEL to an
existing model folder made by: make_tiny_moe.py --preset bench --out DIR).
EOF
        exit 1
    fi
    echo "$BENCH_NAME: generating the bench model into $MOEBOX_BENCH_MODEL (about 20 s)" >&2
    HF_HUB_OFFLINE=1 "$export_py" tests/fixtures/make_tiny_moe.py --preset bench --out "$MOEBOX_BENCH_MODEL" >&2
fi

busy=$( (pgrep -a cargo; pgrep -a rustc) 2>/dev/null | grep -v "^$$ " || true)
if [ -n "$busy" ]; then
    echo "$BENCH_NAME: warning: a build is running; the numbers will be depressed:" >&2
    echo "$busy" | cut -c1-120 >&2
fi
echo "$BENCH_NAME: $(nproc) CPUs; uptime:$(uptime)" >&2

