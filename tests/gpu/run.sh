#!/usr/bin/env bash
# moebox's GPU checks, for a bare NVIDIA machine with no network and no Rust toolchain: it needs
# bash, coreutils, tar, xz (or python3's lzma module), python3 with the nvidia-* CUDA 13 wheels
# (as PyTorch installs them) and an NVIDIA driver >= 580. Nothing is built there: the moebox
# binary and the ONNX Runtime GPU libraries are carried in. See tests/gpu/README.md.
#
#   tests/gpu/run.sh stage [PART...]     copy carried parts of the ONNX Runtime stream into
#                                        /tmp/moebox-gpu/parts/ and verify their sha256
#                                        (no PART: every .gpu-parts/*.part-* in the checkout)
#   tests/gpu/run.sh run [--wheels DIR] [--bin PATH]
#                                        unpack ONNX Runtime GPU (from the staged and carried
#                                        parts, or from the wheels in DIR), then run every check,
#                                        logs to $OUT (default ./gpu-out), summary table last
#   tests/gpu/run.sh status              list the staged parts
#
# Environment: OUT (results folder), MOEBOX_GPU_WORK (default /tmp/moebox-gpu), MOEBOX_BIN,
# MOEBOX_GPU_DRY_EP=cpu (dry run without a GPU: "cuda" generations use the CPU provider),
# MOEBOX_GPU_BUDGET_S (seconds after which remaining checks are skipped; default 300; a check
# started before it can still take up to 2 minutes, so give the call a 540 s timeout).
# Exit status of `run`: 0 when no check failed, 1 otherwise; `stage`: 0 when every part given
# verified.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
WORK=${MOEBOX_GPU_WORK:-/tmp/moebox-gpu}
STREAM=ort-gpu-1.31.1.tar.xz
LIBS=(libonnxruntime.so.1.31.1 libonnxruntime_providers_cuda.so libonnxruntime_providers_shared.so)
PARTS_SUMS="$HERE/parts.sha256"   # written by make-parts.sh: the stream and each part
LIB_SUMS="$HERE/SHA256SUMS"       # the three libraries, from the pinned wheel
FP32_MODEL="$REPO/tests/fixtures/tiny-moe"
FP16_MODEL="$HERE/tiny-moe-fp16-cuda"
PROMPTS=("The balance sheet shows" "Quarterly revenue grew because" "Dear client, your tax filing")
MAX_TOKENS=120
SMOKE_TOKENS=8   # provision.smoke_tokens' default: ids must agree at least this far
export NO_COLOR=1

sum_of() { sha256sum <"$1" | cut -c1-64; }
# The pinned sha256 of NAME in a sha256sum-format FILE.
pinned_sum() { awk -v n="$2" '$2 == n || $2 == "*" n { print $1; exit }' "$1" 2>/dev/null; }
part_names() { awk '$2 ~ /\.part-/ { sub(/^\*/, "", $2); print $2 }' "$PARTS_SUMS"; }

usage() { sed -n '2,20p' "$0" >&2; exit 2; }

# ---------------------------------------------------------------------------------------------
# stage / status

parts_status() {
    local have=() missing=() name
    [ -f "$PARTS_SUMS" ] || { echo "parts: $PARTS_SUMS missing (run tests/gpu/make-parts.sh)"; return 1; }
    for name in $(part_names); do
        if [ -f "$WORK/parts/$name" ]; then have+=("${name##*.part-}"); else missing+=("${name##*.part-}"); fi
    done
    echo "parts in $WORK/parts: have [${have[*]:-}] missing [${missing[*]:-}]"
    [ ${#missing[@]} -eq 0 ]
}

# Copies one part into $WORK/parts after checking it; 0 when it is there and verified.
stage_one() {
    local src=$1 name want got
    name=$(basename "$src")
    want=$(pinned_sum "$PARTS_SUMS" "$name")
    if [ -z "$want" ]; then echo "stage: $name is not listed in tests/gpu/parts.sha256"; return 1; fi
    if [ ! -f "$src" ]; then echo "stage: $src not found (did the call carry it?)"; return 1; fi
    mkdir -p "$WORK/parts"
    cp "$src" "$WORK/parts/$name.tmp" || { echo "stage: cannot copy $src"; return 1; }
    got=$(sum_of "$WORK/parts/$name.tmp")
    if [ "$got" != "$want" ]; then
        rm -f "$WORK/parts/$name.tmp"
        echo "stage: $name sha256 $got, expected $want: NOT staged"
        return 1
    fi
    mv "$WORK/parts/$name.tmp" "$WORK/parts/$name"
    echo "stage: $name ok ($(stat -c %s "$WORK/parts/$name") bytes, sha256 verified)"
}

cmd_stage() {
    local rc=0 part
    mkdir -p "$WORK/parts"
    [ -f "$PARTS_SUMS" ] || { echo "stage: $PARTS_SUMS missing (run tests/gpu/make-parts.sh here first)"; return 1; }
    if [ $# -eq 0 ]; then
        set -- "$REPO"/.gpu-parts/"$STREAM".part-*
        [ -e "$1" ] || { echo "stage: no .gpu-parts/$STREAM.part-* in this checkout (carry one)"; parts_status; return 1; }
    fi
    for part in "$@"; do
        case "$part" in /*) ;; *) [ -e "$part" ] || part="$REPO/$part" ;; esac
        stage_one "$part" || rc=1
    done
    parts_status
    # A first look at the machine, so a stage call already shows what the run will find.
    echo "stage: df $(df -h "$WORK" | awk 'NR==2 { print $4 " free on " $6 }'); xz: $(command -v xz || echo "none (python3 lzma will do)");" \
        "python3: $(python3 -c 'import sys; print(sys.version.split()[0])' 2>&1)"
    command -v nvidia-smi >/dev/null && echo "stage: GPU: $(timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -2 | tr '\n' ' ')"
    return $rc
}

# ---------------------------------------------------------------------------------------------
# results

R_NAME=()
R_STATUS=()
R_DETAIL=()
START=$SECONDS
BUDGET=${MOEBOX_GPU_BUDGET_S:-300}

# result NAME PASS|FAIL|WARN|SKIP|INFO DETAIL
result() {
    R_NAME+=("$1")
    R_STATUS+=("$2")
    R_DETAIL+=("$3")
    printf '>>> %-4s %s: %s\n' "$2" "$1" "$3"
}

section() { printf '\n=== %s (t=%ds)\n' "$1" $((SECONDS - START)); }

# True while the time budget lasts; otherwise records a SKIP for NAME.
in_budget() {
    if (( SECONDS - START > BUDGET )); then
        result "$1" SKIP "time budget of ${BUDGET}s spent"
        return 1
    fi
}

summary() {
    local i fails=0 warns=0 passes=0 skips=0
    for i in "${!R_NAME[@]}"; do
        case "${R_STATUS[$i]}" in
            FAIL) fails=$((fails + 1)) ;; WARN) warns=$((warns + 1)) ;;
            PASS) passes=$((passes + 1)) ;; SKIP) skips=$((skips + 1)) ;;
        esac
    done
    {
        printf '\n==================== moebox GPU checks: summary ====================\n'
        printf '%-4s  %-34s  %s\n' "" "check" "detail"
        for i in "${!R_NAME[@]}"; do
            printf '%-4s  %-34s  %s\n' "${R_STATUS[$i]}" "${R_NAME[$i]}" "${R_DETAIL[$i]}"
        done
        printf 'TOTAL: %d pass, %d warn, %d fail, %d skip; %ds; device: %s\n' \
            "$passes" "$warns" "$fails" "$skips" $((SECONDS - START)) "${GPU_NAME:-none}"
    } | tee "$OUT/summary.txt"
    [ "$fails" -eq 0 ]
}

# ---------------------------------------------------------------------------------------------
# setup: ONNX Runtime GPU libraries, CUDA libraries, binary

ORT_DIR="$WORK/ort"
ORT_LIB="$ORT_DIR/libonnxruntime.so.1.31.1"
CUDA_DIRS=()
BIN=""

libs_verified() {
    local lib want
    for lib in "${LIBS[@]}"; do
        want=$(pinned_sum "$LIB_SUMS" "$lib")
        [ -n "$want" ] && [ -f "$ORT_DIR/$lib" ] && [ "$(sum_of "$ORT_DIR/$lib")" = "$want" ] || return 1
    done
}

# Decompresses xz from stdin to stdout: xz if present, else Python's lzma.
unxz_stream() {
    if command -v xz >/dev/null; then
        xz -dc
    else
        python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer, 1 << 20)'
    fi
}

unpack_from_parts() {
    local name want missing=0 files=() got
    if [ ! -f "$PARTS_SUMS" ]; then
        result setup.parts FAIL "tests/gpu/parts.sha256 missing (run tests/gpu/make-parts.sh)"
        return 1
    fi
    mkdir -p "$WORK/parts"
    for name in $(part_names); do
        if [ ! -f "$WORK/parts/$name" ] && [ -f "$REPO/.gpu-parts/$name" ]; then
            stage_one "$REPO/.gpu-parts/$name" || true
        fi
        if [ -f "$WORK/parts/$name" ]; then files+=("$WORK/parts/$name"); else missing=1; fi
    done
    parts_status
    if [ "$missing" = 1 ]; then
        result setup.parts FAIL "$(parts_status | sed 's/^parts in [^:]*: //'): stage the missing ones (README)"
        return 1
    fi
    want=$(pinned_sum "$PARTS_SUMS" "$STREAM")
    got=$(cat "${files[@]}" | sha256sum | cut -c1-64)
    if [ "$got" != "$want" ]; then
        result setup.parts FAIL "stream sha256 $got, expected $want"
        return 1
    fi
    result setup.parts PASS "${#files[@]} parts, stream sha256 $got ($(command -v xz >/dev/null && echo xz || echo python3-lzma))"
    rm -rf "$ORT_DIR.tmp" && mkdir -p "$ORT_DIR.tmp"
    if ! cat "${files[@]}" | unxz_stream | tar -xf - -C "$ORT_DIR.tmp"; then
        result setup.unpack FAIL "xz/tar failed"
        return 1
    fi
    rm -rf "$ORT_DIR" && mv "$ORT_DIR.tmp" "$ORT_DIR"
}

# --wheels DIR: provisioning/fetch.py unpacks every cuda-role wheel of the manifest from DIR
# (checking each wheel's pinned sha256); if DIR lacks some of them (fetch.py would need the
# network), only the onnxruntime-gpu wheel is unpacked, after the same sha256 check.
unpack_from_wheels() {
    local dir=$1 fetched="$WORK/fetch"
    if python3 "$REPO/provisioning/fetch.py" --role cuda --dest "$fetched" --cache "$dir" \
        >"$LOGS/fetch.log" 2>&1; then
        result setup.wheels PASS "provisioning/fetch.py --role cuda --cache $dir: every wheel's sha256 ok"
        rm -rf "$ORT_DIR" && mkdir -p "$ORT_DIR"
        cp "$fetched"/onnxruntime-gpu/lib* "$ORT_DIR"/
        CUDA_DIRS+=("$fetched/cuda")
        return 0
    fi
    echo "fetch.py failed (see logs/fetch.log); unpacking the onnxruntime-gpu wheel alone"
    if ! python3 - "$REPO/provisioning/manifest.toml" "$dir" "$ORT_DIR" "${LIBS[@]}" <<'EOF'
import hashlib, os, shutil, sys, tomllib, zipfile
manifest, folder, dest, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
wheel = next(w for w in tomllib.load(open(manifest, "rb"))["wheel"] if w["name"] == "onnxruntime-gpu")
path = os.path.join(folder, wheel["file"])
digest = hashlib.sha256()
with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
if digest.hexdigest() != wheel["sha256"]:
    sys.exit(f"{path}: sha256 {digest.hexdigest()}, the manifest pins {wheel['sha256']}")
shutil.rmtree(dest, ignore_errors=True)
os.makedirs(dest)
with zipfile.ZipFile(path) as z:
    for name in names:
        with z.open("onnxruntime/capi/" + name) as src, open(os.path.join(dest, name), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
print(f"{wheel['file']}: sha256 ok, unpacked {len(names)} libraries")
EOF
    then
        result setup.wheels FAIL "no usable onnxruntime-gpu wheel in $dir"
        return 1
    fi
    result setup.wheels WARN "only the onnxruntime-gpu wheel was unpacked from $dir; CUDA libraries from python's nvidia packages"
}

setup_ort() {
    section "setup: ONNX Runtime GPU"
    if [ -n "$WHEELS" ]; then
        unpack_from_wheels "$WHEELS" || return 1
    elif libs_verified; then
        result setup.parts PASS "already unpacked and verified in $ORT_DIR (an earlier run on this machine)"
    else
        unpack_from_parts || return 1
    fi
    local lib want got bad=()
    for lib in "${LIBS[@]}"; do
        want=$(pinned_sum "$LIB_SUMS" "$lib")
        got=$( [ -f "$ORT_DIR/$lib" ] && sum_of "$ORT_DIR/$lib" )
        echo "$lib: sha256 ${got:-missing} (pinned ${want:-none})"
        [ -n "$want" ] && [ "$got" = "$want" ] || bad+=("$lib")
    done
    if [ ${#bad[@]} -gt 0 ]; then
        result setup.libraries FAIL "sha256 mismatch or missing: ${bad[*]}"
        return 1
    fi
    chmod 755 "$ORT_DIR"/lib* 2>/dev/null
    (cd "$ORT_DIR" && sha256sum "${LIBS[@]}") >"$ORT_DIR/SHA256SUMS"
    result setup.libraries PASS "3 libraries match tests/gpu/SHA256SUMS (from onnxruntime-gpu 1.31.1)"
}

# Every lib/ folder of python's nvidia packages (nvidia/cu13/lib, nvidia/cudnn/lib, ...).
python_nvidia_dirs() {
    python3 - <<'EOF' 2>/dev/null
import os
try:
    import nvidia
    bases = list(nvidia.__path__)
except Exception:
    bases = []
import glob
bases += glob.glob("/opt/*/.venv/lib/python3*/site-packages/nvidia") + \
         glob.glob("/usr/local/lib/python3*/dist-packages/nvidia") + \
         glob.glob("/usr/lib/python3/dist-packages/nvidia")
seen = set()
for base in bases:
    for root, dirs, files in os.walk(os.path.realpath(base)):
        dirs[:] = [d for d in dirs if d not in ("include", "__pycache__", "bin")]
        if os.path.basename(root) == "lib" and any(".so" in f for f in files) and root not in seen:
            seen.add(root)
            print(root)
EOF
}

setup_cuda_libs() {
    section "setup: CUDA runtime libraries"
    local d driver_dir="" missing inherited
    while IFS= read -r d; do [ -n "$d" ] && CUDA_DIRS+=("$d"); done < <(python_nvidia_dirs)
    # The user-space driver (libcuda.so.1, libnvidia-ml.so.1): normally on the loader's path.
    # Only when neither ldconfig nor the inherited LD_LIBRARY_PATH finds it.
    if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
        IFS=: read -ra inherited <<<"${LD_LIBRARY_PATH:-}"
        for d in "${inherited[@]}"; do [ -n "$d" ] && [ -e "$d/libcuda.so.1" ] && driver_dir=inherited; done
        if [ -z "$driver_dir" ]; then
            for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib/wsl/lib; do
                [ -e "$d/libcuda.so.1" ] && { driver_dir=$d; CUDA_DIRS+=("$d"); break; }
            done
        fi
    fi
    local joined
    joined=$(IFS=:; echo "${CUDA_DIRS[*]:-}")
    export LD_LIBRARY_PATH="$ORT_DIR${joined:+:$joined}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    {
        echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
        for d in "${CUDA_DIRS[@]}"; do echo "== $d"; ls -l "$d"; done
        echo "== ldconfig -p (nvidia, cuda)"; ldconfig -p 2>/dev/null | grep -Ei 'libcuda|nvidia-ml|libcudart|libcublas|libcudnn'
        echo "== python nvidia packages"
        python3 -c 'import importlib.metadata as m; [print(d.metadata["Name"], d.version) for d in sorted(m.distributions(), key=lambda d: d.metadata["Name"] or "") if (d.metadata["Name"] or "").lower().startswith(("nvidia", "torch", "onnx", "cuda"))]' 2>&1
    } >"$LOGS/cuda-libs.txt" 2>&1
    if [ ${#CUDA_DIRS[@]} -eq 0 ]; then
        result setup.cuda_lib_dirs FAIL "no nvidia/*/lib folder found in python3's site-packages"
    fi
    ldd "$ORT_DIR/libonnxruntime_providers_cuda.so" >"$LOGS/ldd-providers-cuda.txt" 2>&1
    missing=$(grep 'not found' "$LOGS/ldd-providers-cuda.txt" | awk '{print $1}' | tr '\n' ' ')
    cat "$LOGS/ldd-providers-cuda.txt" | grep -E 'cuda|cublas|cudnn|curand|cufft|not found' || true
    if [ -n "$missing" ]; then
        result setup.cuda_libs FAIL "libonnxruntime_providers_cuda.so: not found: $missing"
    elif [ ${#CUDA_DIRS[@]} -gt 0 ]; then
        local cudart
        cudart=$(grep -o 'libcudart.so.13 => [^ ]*' "$LOGS/ldd-providers-cuda.txt" | awk '{print $3}')
        result setup.cuda_libs PASS "every dependency of the CUDA provider resolves (libcudart: ${cudart:-?}; ${#CUDA_DIRS[@]} lib dirs)"
    fi
    # The user-space driver as the loader resolves it for the CUDA provider, and NVML (provision).
    local libcuda nvml
    libcuda=$(grep -o 'libcuda.so.1 => [^ ]*' "$LOGS/ldd-providers-cuda.txt" | awk '{print $3}')
    nvml=$( { ldconfig -p 2>/dev/null | grep -m1 'libnvidia-ml\.so\.1 ' | awk '{print $NF}'; } )
    if [ -z "$nvml" ]; then
        IFS=: read -ra inherited <<<"$LD_LIBRARY_PATH"
        for d in "${inherited[@]}"; do [ -e "$d/libnvidia-ml.so.1" ] && { nvml="$d/libnvidia-ml.so.1"; break; }; done
    fi
    if [ -n "$libcuda" ] && [ "$libcuda" != not ]; then
        result setup.driver_libs PASS "libcuda.so.1 -> $(readlink -f "$libcuda"); libnvidia-ml.so.1 -> ${nvml:+$(readlink -f "$nvml")}${nvml:-NOT FOUND}"
    else
        result setup.driver_libs FAIL "libcuda.so.1 not found by the loader (ldconfig, LD_LIBRARY_PATH, /usr/local/nvidia/lib64)"
    fi
}

setup_binary() {
    section "setup: moebox binary"
    local candidate
    for candidate in "${BIN_ARG:-}" "${MOEBOX_BIN:-}" "$REPO/.gpu-parts/moebox" "$REPO/target/release/moebox"; do
        [ -n "$candidate" ] && [ -f "$candidate" ] && { BIN=$candidate; break; }
    done
    if [ -z "$BIN" ]; then
        result setup.binary FAIL "no moebox binary: carry .gpu-parts/moebox (or target/release/moebox)"
        return 1
    fi
    chmod +x "$BIN" 2>/dev/null
    local version
    {
        echo "binary: $BIN"; echo "sha256: $(sum_of "$BIN")"
        [ -f "$REPO/.gpu-parts/moebox.info" ] && cat "$REPO/.gpu-parts/moebox.info"
        ldd "$BIN"; ldd --version 2>&1 | head -1
    } >"$LOGS/binary.txt" 2>&1
    if version=$("$BIN" --version 2>&1); then
        result setup.binary PASS "$version ($BIN, sha256 $(sum_of "$BIN" | cut -c1-12)...)"
    else
        result setup.binary FAIL "cannot run $BIN: $version"
        return 1
    fi
}

# ---------------------------------------------------------------------------------------------
# checks

GPU_NAME=""

check_nvidia_smi() {
    section "a. nvidia-smi"
    if ! command -v nvidia-smi >/dev/null; then
        result a.nvidia_smi FAIL "nvidia-smi not found"
        return
    fi
    local q
    q=$(timeout 30 nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used,pci.bus_id,compute_cap,persistence_mode,ecc.mode.current,mig.mode.current,temperature.gpu,power.limit --format=csv 2>&1) \
        || q=$(timeout 30 nvidia-smi --query-gpu=index,name,driver_version,memory.total,pci.bus_id --format=csv 2>&1)
    echo "$q"
    timeout 30 nvidia-smi 2>&1 | tee "$LOGS/nvidia-smi.txt"
    timeout 60 nvidia-smi -q 2>&1 | head -c 4000000 >"$OUT/nvidia-smi-q.txt"
    GPU_NAME=$(timeout 30 nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
    local driver mem
    driver=$(timeout 30 nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
    mem=$(timeout 30 nvidia-smi --query-gpu=memory.total --format=csv,noheader 2>/dev/null | head -1)
    if [ -n "$GPU_NAME" ]; then
        result a.nvidia_smi PASS "$GPU_NAME, driver $driver, $mem; nvidia-smi -q in nvidia-smi-q.txt"
    else
        result a.nvidia_smi FAIL "nvidia-smi lists no GPU: $(echo "$q" | tail -1)"
    fi
    case "$driver" in
        "") ;;
        *) if [ "$(printf '%s\n' 580.65.06 "$driver" | sort -V | head -1)" = 580.65.06 ]; then
               result a.driver_min PASS "driver $driver >= 580.65.06 (CUDA 13, manifest [triple])"
           else
               result a.driver_min FAIL "driver $driver < 580.65.06: onnxruntime-gpu 1.31.1 needs CUDA 13"
           fi ;;
    esac
}

check_capture() {
    section "b. capture-sysfs.sh"
    in_budget b.capture_sysfs || return
    local rc line
    line=$(timeout 90 bash "$HERE/capture-sysfs.sh" "$OUT/sysfs-capture.tar.gz" 2>&1); rc=$?
    echo "$line"
    if [ $rc -eq 0 ] && [ -s "$OUT/sysfs-capture.tar.gz" ]; then
        result b.capture_sysfs PASS "$(echo "$line" | tail -1 | sed "s|$OUT/||"), $(stat -c %s "$OUT/sysfs-capture.tar.gz") bytes"
    else
        result b.capture_sysfs FAIL "exit $rc: $(echo "$line" | tail -1)"
        return
    fi
    # Replay the capture through `moebox provision --sysroot` (what crates/moebox-provision's
    # tests will do with it): NVML and the smoke test are skipped there by design.
    [ -n "$BIN" ] || return
    rm -rf "$WORK/capture" && mkdir -p "$WORK/capture" && tar -xzf "$OUT/sysfs-capture.tar.gz" -C "$WORK/capture"
    cat >"$LOGS/provision-sysroot.toml" <<EOF
[onnxruntime]
library = "$ORT_LIB"
[engine]
model = "$FP32_MODEL"
[provision]
expected_gpus = 1
report = "$LOGS/provision-sysroot.json"
artefacts = "$ORT_DIR/SHA256SUMS"
EOF
    timeout 60 "$BIN" provision --config "$LOGS/provision-sysroot.toml" --sysroot "$WORK/capture/capture" \
        >"$LOGS/provision-sysroot-table.txt" 2>&1; rc=$?
    cat "$LOGS/provision-sysroot-table.txt"
    case $rc in
        0|1) result b.provision_sysroot PASS "exit $rc: $(head -1 "$LOGS/provision-sysroot-table.txt") (replay of the capture)" ;;
        *) result b.provision_sysroot FAIL "exit $rc: $(tail -1 "$LOGS/provision-sysroot-table.txt")" ;;
    esac
}

# The error a failed command printed, long lines cut in the middle (ONNX Runtime's messages put the
# cause at the end).
errline() {
    local s
    s=$(grep -a 'moebox:' "$1" 2>/dev/null | tail -1)
    [ -n "$s" ] || s=$(tail -1 "$1" 2>/dev/null)
    if [ ${#s} -gt 360 ]; then s="${s:0:110} [...] ${s: -240}"; fi
    echo "$s"
}

ids_of() { sed -n 's/.*"output_ids":\[\([0-9,]*\)\].*/\1/p' "$1" 2>/dev/null | head -1; }
tps_of() { grep -o 'decode [0-9.]* tokens/s' "$1" 2>/dev/null | tail -1 | awk '{print $2}'; }
# Index of the first differing id (0-based), or "same".
first_diff() {
    awk -v a="$1" -v b="$2" 'BEGIN { n = split(a, x, ","); m = split(b, y, ",");
        k = (n < m) ? n : m; for (i = 1; i <= k; i++) if (x[i] != y[i]) { print i - 1; exit }
        if (n != m) print k; else print "same" }'
}

# gen TAG MODEL EP PROMPT [extra env...]: one `moebox generate`, stdout -> $LOGS/TAG.json,
# stderr -> $LOGS/TAG.err; returns its exit status.
# MOEBOX_GPU_DRY_EP=cpu runs the "cuda" generations on the CPU provider: a dry run of this
# script's logic on a machine without a GPU (the results then say nothing about CUDA).
real_ep() { if [ "$1" = cuda ] && [ -n "${MOEBOX_GPU_DRY_EP:-}" ]; then echo "$MOEBOX_GPU_DRY_EP"; else echo "$1"; fi; }

# After a CUDA run times out, later CUDA runs are skipped (a hung GPU would eat the time budget).
CUDA_HUNG=0
gen() {
    local tag=$1 model=$2 ep=$3 prompt=$4 rc; shift 4
    if [ "$ep" = cuda ] && [ "$CUDA_HUNG" = 1 ]; then
        echo "moebox: (run.sh) skipped: an earlier CUDA run timed out" >"$LOGS/$tag.err"
        : >"$LOGS/$tag.json"
        return 125
    fi
    env MOEBOX_LOG=info ORT_LOG=warning ORT_DYLIB_PATH="$ORT_LIB" "$@" \
        timeout -k 5 60 "$BIN" generate --model "$model" --prompt "$prompt" --max-tokens "$MAX_TOKENS" \
        --json --timing --execution-provider "$(real_ep "$ep")" --gpu 0 >"$LOGS/$tag.json" 2>"$LOGS/$tag.err"
    rc=$?
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        echo "moebox: (run.sh) timed out after 60 s" >>"$LOGS/$tag.err"
        [ "$ep" = cuda ] && CUDA_HUNG=1
    fi
    return $rc
}

# placement_summary VERBOSE_LOG: the first session's "Node placements" block of an ORT_LOG=verbose
# log: one line per provider, then (when nodes are split between providers) how many nodes of each
# op type each provider got, and ORT's warning about nodes off the preferred provider.
placement_summary() {
    awk '
        /Session successfully initialized/ { exit }
        /All nodes placed on \[|Node\(s\) placed on \[/ {
            line = $0; sub(/^.*VerifyEachNodeIsAssignedToAnEp\] */, "", line); print line
            ep = ""
            if (match($0, /Node\(s\) placed on \[[^]]*\]/)) ep = substr($0, RSTART + 19, RLENGTH - 20)
            next
        }
        # Node lines: "[...VerifyEachNodeIsAssignedToAnEp]   OpType (name)", or bare "  OpType (name)".
        /VerifyEachNodeIsAssignedToAnEp\]   *[A-Za-z]/ && ep != "" {
            line = $0; sub(/^.*VerifyEachNodeIsAssignedToAnEp\] */, "", line)
            split(line, a, " "); n[ep " " a[1]]++; next
        }
        /^[0-9][0-9][0-9][0-9]-/ { ep = ""; next }
        ep != "" && /^  *[A-Za-z]/ { split($0, a, " "); n[ep " " a[1]]++ }
        END { for (k in n) printf "    %s: %d\n", k, n[k] }
    ' "$1"
    grep -a 'not assigned to the preferred' "$1" | head -1 | sed 's/^.*\] //'
    grep -aE 'kernel not found in registries' "$1" | sed 's/^.*\] //' | sort | uniq -c | head -8
}

# Node placement as ONNX Runtime reports it (verbose log of a 4-token run).
placement() {
    local tag=$1 model=$2
    [ "$CUDA_HUNG" = 1 ] && { result "$3" SKIP "an earlier CUDA run timed out"; return; }
    env MOEBOX_LOG=info ORT_LOG=verbose ORT_DYLIB_PATH="$ORT_LIB" \
        timeout -k 5 60 "$BIN" generate --model "$model" --prompt "${PROMPTS[0]}" --max-tokens 4 \
        --json --execution-provider "$(real_ep cuda)" --gpu 0 >"$LOGS/$tag.json" 2>"$LOGS/$tag.verbose.err"
    placement_summary "$LOGS/$tag.verbose.err" >"$LOGS/$tag.placement.txt"
    # Cap the verbose log (it goes into logs.tar.gz).
    head -c 8000000 "$LOGS/$tag.verbose.err" >"$LOGS/$tag.verbose.err.tmp" && mv "$LOGS/$tag.verbose.err.tmp" "$LOGS/$tag.verbose.err"
    cat "$LOGS/$tag.placement.txt"
    local line
    line=$(grep -aE 'placed on \[|^    [A-Za-z]*ExecutionProvider (GroupQueryAttention|MoE|Memcpy)' "$LOGS/$tag.placement.txt" \
        | sed 's/^ *//; s/ExecutionProvider/EP/g' | tr '\n' ';' | sed 's/;$//; s/  */ /g')
    result "$3" INFO "${line:-ORT printed no placement (see logs/$tag.verbose.err)}"
}

check_fp32() {
    section "c. fp32 fixture (tests/fixtures/tiny-moe): CUDA vs CPU provider, same GPU library"
    [ -n "$BIN" ] && [ -f "$ORT_LIB" ] || { result c.fp32 SKIP "no binary or no ONNX Runtime GPU library"; return; }
    local i rc ids_cuda ids_cpu d tps_cuda=() tps_cpu=() cuda_ok=1 cpu_ok=1
    for i in 0 1 2; do
        in_budget "c.fp32.prompt$i" || return
        gen "fp32-cuda-p$i" "$FP32_MODEL" cuda "${PROMPTS[$i]}"; rc=$?
        grep -aE 'model loaded|timing:|not assigned|WARN' "$LOGS/fp32-cuda-p$i.err" | cut -c1-300
        if [ $rc -ne 0 ]; then
            result "c.fp32.cuda.prompt$i" FAIL "exit $rc: $(errline "$LOGS/fp32-cuda-p$i.err")"
            cuda_ok=0
        fi
        gen "fp32-cpu-p$i" "$FP32_MODEL" cpu "${PROMPTS[$i]}"; rc=$?
        if [ $rc -ne 0 ]; then
            result "c.fp32.cpu.prompt$i" FAIL "exit $rc: $(errline "$LOGS/fp32-cpu-p$i.err")"
            cpu_ok=0
            continue
        fi
        ids_cuda=$(ids_of "$LOGS/fp32-cuda-p$i.json"); ids_cpu=$(ids_of "$LOGS/fp32-cpu-p$i.json")
        tps_cuda+=("$(tps_of "$LOGS/fp32-cuda-p$i.err")"); tps_cpu+=("$(tps_of "$LOGS/fp32-cpu-p$i.err")")
        [ -n "$ids_cuda" ] || continue
        d=$(first_diff "$ids_cuda" "$ids_cpu")
        if [ "$d" = same ]; then
            result "c.fp32.ids.prompt$i" PASS "CUDA ids == CPU ids ($(echo "$ids_cuda" | tr ',' '\n' | wc -l) tokens)"
        elif [ "$d" -ge "$SMOKE_TOKENS" ]; then
            result "c.fp32.ids.prompt$i" WARN "CUDA and CPU ids agree for $d tokens, then differ (numerics; provision compares $SMOKE_TOKENS)"
        else
            result "c.fp32.ids.prompt$i" FAIL "CUDA and CPU ids differ at token $d"
        fi
    done
    if [ "$cuda_ok" = 1 ]; then
        local dev
        dev=$(grep -aho 'device=[^ ]*' "$LOGS"/fp32-cuda-p*.err | sort -u | tr '\n' ' ' | sed 's/ $//')
        result c.fp32.cuda PASS "3 prompts x $MAX_TOKENS tokens on CUDA ($dev); decode tokens/s CUDA [${tps_cuda[*]:-}] CPU [${tps_cpu[*]:-}]"
    elif [ "$cpu_ok" = 1 ]; then
        result c.fp32.cpu PASS "3 prompts on the CPU provider with the GPU library; decode tokens/s [$(for i in 0 1 2; do tps_of "$LOGS/fp32-cpu-p$i.err"; done | tr '\n' ' ' | sed 's/ $//')]"
    fi
    # What ONNX Runtime placed where (also when the CUDA provider failed: the log says why).
    in_budget c.fp32.placement && placement fp32-placement "$FP32_MODEL" c.fp32.placement
}

check_fp16() {
    section "d. fp16 CUDA export (tests/gpu/tiny-moe-fp16-cuda)"
    [ -n "$BIN" ] && [ -f "$ORT_LIB" ] || { result d.fp16 SKIP "no binary or no ONNX Runtime GPU library"; return; }
    local i rc a b d tps=() ok=1 cpu_note=()
    for i in 0 1 2; do
        in_budget "d.fp16.prompt$i" || return
        gen "fp16-cuda-p$i-run1" "$FP16_MODEL" cuda "${PROMPTS[$i]}"; rc=$?
        grep -aE 'model loaded|timing:|not assigned|WARN' "$LOGS/fp16-cuda-p$i-run1.err" | cut -c1-300
        if [ $rc -ne 0 ]; then
            result "d.fp16.cuda.prompt$i" FAIL "exit $rc: $(errline "$LOGS/fp16-cuda-p$i-run1.err")"
            ok=0
            continue
        fi
        gen "fp16-cuda-p$i-run2" "$FP16_MODEL" cuda "${PROMPTS[$i]}"
        a=$(ids_of "$LOGS/fp16-cuda-p$i-run1.json"); b=$(ids_of "$LOGS/fp16-cuda-p$i-run2.json")
        tps+=("$(tps_of "$LOGS/fp16-cuda-p$i-run1.err")/$(tps_of "$LOGS/fp16-cuda-p$i-run2.err")")
        if [ -n "$a" ] && [ "$a" = "$b" ]; then
            result "d.fp16.deterministic.prompt$i" PASS "two CUDA runs give the same $(echo "$a" | tr ',' '\n' | wc -l) ids"
        else
            result "d.fp16.deterministic.prompt$i" FAIL "two CUDA runs differ at token $(first_diff "$a" "$b")"
            ok=0
        fi
        # For information: the same fp16 folder on the CPU provider, and the fp32 model's CPU ids.
        gen "fp16-cpu-p$i" "$FP16_MODEL" cpu "${PROMPTS[$i]}" \
            && cpu_note+=("p$i:cpu-fp16=$(first_diff "$a" "$(ids_of "$LOGS/fp16-cpu-p$i.json")"),cpu-fp32=$(first_diff "$a" "$(ids_of "$LOGS/fp32-cpu-p$i.json")")")
    done
    if [ "$ok" = 1 ]; then
        result d.fp16.cuda PASS "3 prompts x $MAX_TOKENS tokens, decode tokens/s run1/run2 [${tps[*]:-}]"
    fi
    [ ${#cpu_note[@]} -gt 0 ] && result d.fp16.vs_cpu INFO "first differing token vs CPU runs (same = identical): ${cpu_note[*]}"
    if [ "$ok" = 1 ]; then
        in_budget d.fp16.placement && placement fp16-placement "$FP16_MODEL" d.fp16.placement
    fi
}

check_provision() {
    section "e. moebox provision (live)"
    [ -n "$BIN" ] || { result e.provision SKIP "no binary"; return; }
    in_budget e.provision || return
    cat >"$OUT/provision.toml" <<EOF
# written by tests/gpu/run.sh
[onnxruntime]
library = "$ORT_LIB"

[engine]
model = "$FP32_MODEL"
execution_provider = "cuda"

[provision]
expected_gpus = 1
report = "$OUT/provision.json"
# the three ONNX Runtime GPU libraries as unpacked (sha256sum format, relative to the list)
artefacts = "$ORT_DIR/SHA256SUMS"
EOF
    local rc out
    out=$("$BIN" config check --config "$OUT/provision.toml" 2>&1); rc=$?
    echo "config check: $out"
    [ $rc -eq 0 ] || { result e.provision FAIL "config check: $out"; return; }
    env -u ORT_DYLIB_PATH CUDA_DEVICE_ORDER=PCI_BUS_ID MOEBOX_LOG=info \
        timeout -k 5 120 "$BIN" provision --config "$OUT/provision.toml" >"$OUT/provision-table.txt" 2>"$LOGS/provision.err"
    rc=$?
    echo "exit status: $rc" >>"$OUT/provision-table.txt"
    cat "$OUT/provision-table.txt"
    grep -avE 'INFO' "$LOGS/provision.err" | head -20
    local verdict smoke
    verdict=$(head -1 "$OUT/provision-table.txt")
    smoke=$(grep -aE '^(cuda_smoke|cpu_reference) ' "$OUT/provision-table.txt" | awk '{print $1 "=" $3}' | tr '\n' ' ')
    case $rc in
        0) result e.provision PASS "exit 0: $verdict; $smoke" ;;
        1) result e.provision FAIL "exit 1: $verdict; $smoke(see provision-table.txt)" ;;
        *) result e.provision FAIL "exit $rc: $(tail -2 "$LOGS/provision.err" | tr '\n' ' ' | cut -c1-300)" ;;
    esac
    in_budget e.provision_json || return
    env -u ORT_DYLIB_PATH CUDA_DEVICE_ORDER=PCI_BUS_ID \
        timeout -k 5 120 "$BIN" provision --config "$OUT/provision.toml" --json >"$LOGS/provision-stdout.json" 2>"$LOGS/provision-json.err"
    rc=$?
    if python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(r.get("verdict"), len(r.get("checks", [])), "checks")' \
        "$OUT/provision.json" >"$LOGS/provision-json-parse.txt" 2>&1 && cmp -s "$OUT/provision.json" "$LOGS/provision-stdout.json"; then
        result e.provision_json PASS "exit $rc; --json stdout == provision.json ($(cat "$LOGS/provision-json-parse.txt"))"
    elif [ -s "$OUT/provision.json" ]; then
        result e.provision_json WARN "exit $rc; report written, but stdout differs from it or does not parse: $(head -c 200 "$LOGS/provision-json-parse.txt")"
    else
        result e.provision_json FAIL "exit $rc; no $OUT/provision.json"
    fi
}

collect_logs() {
    section "f. logs"
    env | grep -E '^(LD_LIBRARY_PATH|CUDA|NVIDIA|PATH)=' >"$LOGS/env.txt"
    { uname -a; cat /etc/os-release 2>/dev/null; nproc; free -g 2>/dev/null; df -h /tmp 2>/dev/null; } >"$LOGS/host.txt" 2>&1
    tar -C "$(dirname "$LOGS")" -czf "$OUT/logs.tar.gz" "$(basename "$LOGS")" 2>/dev/null
    local size
    size=$(stat -c %s "$OUT/logs.tar.gz" 2>/dev/null || echo 0)
    if [ "$size" -gt 15000000 ]; then
        # Too big to come back: drop the verbose ONNX Runtime logs.
        tar -C "$(dirname "$LOGS")" --exclude='*.verbose.err' -czf "$OUT/logs.tar.gz" "$(basename "$LOGS")"
        size=$(stat -c %s "$OUT/logs.tar.gz")
    fi
    echo "logs.tar.gz: $size bytes"
    ls -l "$OUT"
}

# f. The batched KV cache on the GPU: the gpu_ test of crates/moebox-engine/tests/batch.rs,
# prebuilt here (`tests/gpu/make-parts.sh --bin` copies it to .gpu-parts/batch-test). Test
# binaries find the repository through the path they were built at, /work/main.
check_batch() {
    section "f. batched decode on CUDA (gpu_ test)"
    local test_bin=".gpu-parts/batch-test"
    # A stage call may have brought it earlier, to keep the last call under the carry limit.
    [ -x "$test_bin" ] || test_bin=/tmp/moebox-gpu/batch-test
    [ -x "$test_bin" ] && [ -f "$ORT_LIB" ] || { result f.batch SKIP "no test binary or no ONNX Runtime GPU library"; return; }
    in_budget f.batch || return
    if [ ! -e /work/main ]; then mkdir -p /work && ln -s "$PWD" /work/main; fi
    ORT_DYLIB_PATH="$ORT_LIB" timeout -k 5 120 "$test_bin" gpu_ --nocapture >"$LOGS/batch-test.log" 2>&1
    local rc=$?
    tail -5 "$LOGS/batch-test.log"
    if [ $rc -eq 0 ] && grep -q "1 passed" "$LOGS/batch-test.log"; then
        result f.batch PASS "rows at different positions decode on the GPU exactly as alone (fp16 export)"
    else
        result f.batch FAIL "exit $rc: $(grep -m1 -E 'panicked|error' "$LOGS/batch-test.log" | cut -c1-200)"
    fi
}

# h. Telemetry on the GPU: the gpu_ test of crates/moebox-telemetry/tests/gpu.rs samples NVML on
# GPU 0 through the engine's live source and sampler thread for 6 s while a load keeps the GPU
# busy, and checks the values are plausible (memory, power, temperature, clocks, utilisation) and
# that the energy counter rises, integrates without resets and agrees with the power readings.
# Prebuilt here (`tests/gpu/make-parts.sh --telemetry-test` writes .gpu-parts/telemetry-test; a
# stage call may have brought it to /tmp/moebox-gpu/ earlier). It needs no ONNX Runtime.
TELEMETRY_LOAD_S=25   # the load outlives the test: start-up (~5 s) + 6 s of sampling + margin
check_telemetry() {
    section "h. NVML telemetry on GPU 0 under load (gpu_ test)"
    local test_bin="$REPO/.gpu-parts/telemetry-test"
    [ -x "$test_bin" ] || test_bin="$WORK/telemetry-test"
    [ -x "$test_bin" ] || { result h.telemetry SKIP "no test binary (tests/gpu/make-parts.sh --telemetry-test, then carry .gpu-parts/telemetry-test)"; return; }
    [ -z "${MOEBOX_GPU_DRY_EP:-}" ] || { result h.telemetry SKIP "dry run: no GPU to sample"; return; }
    in_budget h.telemetry || return
    local load_pid="" load_kind="" rc
    # The load: PyTorch fp16 matmuls when the device's python has CUDA torch, else moebox bench
    # on the fp16 CUDA export.
    if timeout 60 python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
        timeout -k 5 "$TELEMETRY_LOAD_S" python3 -c '
import sys, time, torch
end = time.time() + float(sys.argv[1])
a = torch.randn(8192, 8192, device="cuda:0", dtype=torch.float16)
n = 0
while time.time() < end:
    b = a @ a
    n += 1
    if n % 16 == 0:
        torch.cuda.synchronize()
print(f"load: {n} fp16 matmuls of 8192x8192", flush=True)
' "$TELEMETRY_LOAD_S" >"$LOGS/telemetry-load.log" 2>&1 &
        load_pid=$!; load_kind="pytorch fp16 matmul"
    elif [ -n "$BIN" ] && [ -f "$ORT_LIB" ]; then
        ORT_DYLIB_PATH="$ORT_LIB" timeout -k 5 "$TELEMETRY_LOAD_S" "$BIN" bench --model "$FP16_MODEL" \
            --execution-provider cuda --gpu 0 --concurrency 32 --max-tokens 128 --long-max-tokens 128 \
            >"$LOGS/telemetry-load.log" 2>&1 &
        load_pid=$!; load_kind="moebox bench (fp16 export)"
    else
        load_kind="none available (no CUDA torch, no binary + ONNX Runtime GPU)"
    fi
    echo "telemetry load: $load_kind"
    # Let the load get past CUDA start-up before the window opens.
    [ -n "$load_pid" ] && sleep 5
    timeout -k 5 60 "$test_bin" gpu_ --nocapture >"$LOGS/telemetry-test.log" 2>&1
    rc=$?
    if [ -n "$load_pid" ]; then kill "$load_pid" 2>/dev/null; wait "$load_pid" 2>/dev/null; fi
    grep -aE '^(gpu 0|energy)' "$LOGS/telemetry-test.log" | cut -c1-600
    tail -5 "$LOGS/telemetry-test.log"
    local figures
    figures=$(grep -a '^energy' "$LOGS/telemetry-test.log" | head -1 | cut -c1-220)
    if [ $rc -eq 0 ] && grep -q "1 passed" "$LOGS/telemetry-test.log"; then
        result h.telemetry PASS "${figures:-NVML sampled} (load: $load_kind)"
    else
        result h.telemetry FAIL "exit $rc: $(grep -a -m1 -A2 'panicked' "$LOGS/telemetry-test.log" | tr '\n' ' ' | cut -c1-300) (load: $load_kind)"
    fi
}

# g. The continuous-batching scheduler on the GPU: aggregate tokens/s at 1, 4, 16 and 32
# concurrent requests, and a short request's time to first token under 15 long ones.
check_bench() {
    section "g. scheduler benchmark on CUDA (moebox bench)"
    [ -n "$BIN" ] && [ -f "$ORT_LIB" ] || { result g.bench SKIP "no binary or no ONNX Runtime GPU library"; return; }
    in_budget g.bench || return
    ORT_DYLIB_PATH="$ORT_LIB" timeout -k 5 150 "$BIN" bench --model "$FP16_MODEL" --execution-provider cuda --gpu 0 \
        --concurrency 1,4,16,32 --max-tokens 128 --long-max-tokens 128 >"$LOGS/bench-cuda.txt" 2>"$LOGS/bench-cuda.err"
    local rc=$?
    cat "$LOGS/bench-cuda.txt"
    if [ $rc -eq 0 ]; then
        result g.bench PASS "see the table above (fp16 tiny export)"
    else
        result g.bench FAIL "exit $rc: $(errline "$LOGS/bench-cuda.err")"
    fi
}

# The gateway in front of a CUDA engine: the latency it adds to each token, measured in pairs
# against the engine's own socket (tests/bench/stream.py; docs/benchmarks.md, "Gateway"). On
# the appliance the engine's work is on the GPU and the gateway has CPU cores to itself: this
# is that set-up's figure (issue 4: p99 added < 1 ms).
check_gateway() {
    section "i. gateway in front of a CUDA engine: latency added per token (paired)"
    [ -n "$BIN" ] && [ -f "$ORT_LIB" ] || { result i.gateway SKIP "no binary or no ONNX Runtime GPU library"; return; }
    command -v python3 >/dev/null || { result i.gateway SKIP "no python3"; return; }
    command -v curl >/dev/null || { result i.gateway SKIP "no curl"; return; }
    in_budget i.gateway || return
    local dir=$WORK/gateway port=18781
    rm -rf "$dir" && mkdir -p "$dir"
    cat >"$dir/moebox.toml" <<EOF
# written by tests/gpu/run.sh
[onnxruntime]
library = "$ORT_LIB"

[engine]
model = "$FP16_MODEL"
execution_provider = "$(real_ep cuda)"
socket = "$dir/engine-{gpu}.sock"
kv_budget_tokens = 4096
max_sequence_tokens = 512

[ledger]
database = "$dir/moebox.sqlite"

[gateway]
listen = "127.0.0.1:$port"
tls = false
engine_count = 1
engine_poll_interval_ms = 100
EOF
    local key engine gateway rc=0 i
    key=$("$BIN" keys create --config "$dir/moebox.toml" --name gpu-bench 2>"$LOGS/gateway-keys.err" | grep -o 'mbx_[A-Za-z0-9]*' | head -1)
    [ -n "$key" ] || { result i.gateway FAIL "keys create: $(errline "$LOGS/gateway-keys.err")"; return; }
    env -u ORT_DYLIB_PATH MOEBOX_LOG=warn "$BIN" engine --config "$dir/moebox.toml" --gpu 0 2>"$LOGS/gateway-engine.err" &
    engine=$!
    MOEBOX_LOG=warn "$BIN" serve --config "$dir/moebox.toml" 2>"$LOGS/gateway-serve.err" &
    gateway=$!
    ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz")" = 200 ]; }
    for i in $(seq 600); do ready && break; sleep 0.1; done
    if ! ready; then
        result i.gateway FAIL "not ready in 60 s: $(errline "$LOGS/gateway-engine.err") $(errline "$LOGS/gateway-serve.err")"
    else
        timeout -k 5 150 python3 "$REPO/tests/bench/stream.py" --engine-socket "$dir/engine-0.sock" \
            --gateway "127.0.0.1:$port" --key "$key" --model "$(basename "$FP16_MODEL")" \
            --clients 4 --requests 8 --max-tokens 128 --reps 1 --pairs 32 \
            >"$LOGS/gateway-stream.txt" 2>&1 || rc=$?
        cat "$LOGS/gateway-stream.txt"
        local added tokens
        added=$(sed -n 's/.*added by the gateway, gateway vs engine: //p' "$LOGS/gateway-stream.txt")
        tokens=$(sed -n 's/^median tokens\/s: //p' "$LOGS/gateway-stream.txt")
        if [ $rc -eq 0 ] && [ -n "$added" ]; then
            result i.gateway PASS "added per token: $added; tokens/s $tokens"
        else
            result i.gateway FAIL "stream.py exit $rc: $(tail -2 "$LOGS/gateway-stream.txt" | tr '\n' ' ' | cut -c1-300)"
        fi
    fi
    kill "$engine" "$gateway" 2>/dev/null
    wait "$engine" "$gateway" 2>/dev/null
}

checks() {
    echo "moebox GPU checks: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname 2>/dev/null); repo $REPO; out $OUT"
    setup_binary
    if setup_ort; then setup_cuda_libs; fi
    check_nvidia_smi
    check_capture
    check_fp32
    check_fp16
    check_batch
    check_telemetry
    check_bench
    check_gateway
    check_provision
    collect_logs
    summary
}

cmd_run() {
    WHEELS=""
    BIN_ARG=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --wheels) WHEELS=$(cd "$2" && pwd) || exit 2; shift 2 ;;
            --bin) BIN_ARG=$2; shift 2 ;;
            *) usage ;;
        esac
    done
    OUT=${OUT:-$REPO/gpu-out}
    mkdir -p "$OUT" "$WORK"
    LOGS="$WORK/logs"
    rm -rf "$LOGS" && mkdir -p "$LOGS"
    checks 2>&1 | tee "$OUT/run.log"
    return "${PIPESTATUS[0]}"
}

case "${1:-}" in
    stage) shift; cmd_stage "$@" ;;
    status) parts_status ;;
    placement-summary) placement_summary "$2" ;;
    run) shift; cmd_run "$@" ;;
    *) usage ;;
esac
