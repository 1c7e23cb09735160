#!/usr/bin/env bash
# Pack what the GPU checks (tests/gpu/run.sh) need from onnxruntime-gpu into parts small enough
# for the device tool (64 MiB of working tree + carried paths per call), and strip a copy of the
# moebox binary to carry with the last part. Run here, on the development machine; see
# tests/gpu/README.md for the whole procedure.
#
#   tests/gpu/make-parts.sh [--wheel PATH] [--part-size SIZE]   # libraries -> parts (slow: ~5 min)
#   tests/gpu/make-parts.sh --bin                               # only re-strip target/release/moebox
#   tests/gpu/make-parts.sh --telemetry-test                    # build + strip the NVML gpu_ test
#
# Writes (all under .gpu-parts/, which .git/info/exclude ignores, except the two sum files):
#   .gpu-parts/ort-gpu-1.31.1.tar.xz.part-aa ...  the xz stream of a tar of the three libraries, split
#   .gpu-parts/SHA256SUMS                         sha256 of the stream and of every part
#   .gpu-parts/moebox                             target/release/moebox without debug info (~10 MB)
#   .gpu-parts/moebox.info                        its sha256 and the unstripped binary's
#   .gpu-parts/telemetry-test                     crates/moebox-telemetry/tests/gpu.rs, built
#                                                 (release) and stripped (no ONNX Runtime in it)
#   tests/gpu/SHA256SUMS                          sha256 of the three libraries (what run.sh checks
#                                                 after unpacking; they come from the pinned wheel)
#   tests/gpu/parts.sha256                        the same lines as .gpu-parts/SHA256SUMS, so they
#                                                 travel with every device call without a carry
#
# Compression: xz -9e (measured on this wheel: 313,456,640 bytes of tar -> 193,484,544 with xz -9e;
# zstd --ultra -22 --long=27 gave 194,363,124, no smaller). xz because the device image may lack
# zstd, while xz-utils or, failing that, Python's standard lzma module can always decompress it.
# The tar is reproducible (sorted names, fixed owner and mtime), and xz -T1 is deterministic, so
# the same wheel and xz version give the same parts.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DEST="$REPO/.gpu-parts"
STREAM=ort-gpu-1.31.1.tar.xz
LIBS=(libonnxruntime.so.1.31.1 libonnxruntime_providers_cuda.so libonnxruntime_providers_shared.so)
WHEEL_FILE=onnxruntime_gpu-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl
# 4 parts of 49 MiB: each stage call carries ~52 MiB with the working tree, and the last call
# carries the last part (~37 MiB), the stripped binary (~10 MiB) and the tree (~3 MiB).
PART_SIZE=49M
MAX_PART_BYTES=$((60 * 1024 * 1024))

wheel=""
bin_only=0
telemetry_only=0
while [ $# -gt 0 ]; do
    case "$1" in
        --wheel) wheel=$2; shift 2 ;;
        --part-size) PART_SIZE=$2; shift 2 ;;
        --bin) bin_only=1; shift ;;
        --telemetry-test) telemetry_only=1; shift ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "make-parts: unknown argument $1" >&2; exit 2 ;;
    esac
done

mkdir -p "$DEST"
exclude="$REPO/.git/info/exclude"
if [ -f "$exclude" ] && ! grep -qxF '/.gpu-parts/' "$exclude"; then
    echo '/.gpu-parts/' >>"$exclude"
    echo "make-parts: added /.gpu-parts/ to .git/info/exclude"
fi

strip_binary() {
    local src="$REPO/target/release/moebox"
    if [ ! -x "$src" ]; then
        echo "make-parts: $src not found; build it (cargo build --release -p moebox) and run make-parts.sh --bin" >&2
        return 1
    fi
    strip --strip-debug -o "$DEST/moebox.tmp" "$src"
    mv "$DEST/moebox.tmp" "$DEST/moebox"
    {
        echo "source: target/release/moebox $(stat -c '%y' "$src")"
        echo "source_sha256: $(sha256sum <"$src" | cut -c1-64)"
        echo "stripped_sha256: $(sha256sum <"$DEST/moebox" | cut -c1-64)"
        echo "stripped_bytes: $(stat -c %s "$DEST/moebox")"
    } >"$DEST/moebox.info"
    echo "make-parts: .gpu-parts/moebox ($(stat -c %s "$DEST/moebox") bytes, debug info stripped)"
}

# The telemetry gpu_ test as one executable: cargo names it by hash, so ask cargo which it is.
telemetry_test() {
    local exe
    exe=$(cd "$REPO" && cargo test --release -p moebox-telemetry --test gpu --no-run --message-format=json 2>/dev/null \
        | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "gpu":
        print(m["executable"])')
    if [ -z "$exe" ] || [ ! -x "$exe" ]; then
        echo "make-parts: cannot build the telemetry test (cargo test --release -p moebox-telemetry --test gpu --no-run)" >&2
        return 1
    fi
    strip --strip-debug -o "$DEST/telemetry-test" "$exe"
    echo "make-parts: .gpu-parts/telemetry-test ($(stat -c %s "$DEST/telemetry-test") bytes) from $exe"
}

if [ "$bin_only" = 1 ] || [ "$telemetry_only" = 1 ]; then
    [ "$bin_only" = 0 ] || strip_binary
    [ "$telemetry_only" = 0 ] || telemetry_test
    exit
fi

# The wheel, checked against the manifest's pin.
if [ -z "$wheel" ]; then
    for candidate in "$REPO/.moebox/wheels/$WHEEL_FILE" "/work/cache/wheels/gpu/$WHEEL_FILE" \
                     "$REPO/.moebox/gpu/wheels/$WHEEL_FILE"; do
        [ -f "$candidate" ] && { wheel=$candidate; break; }
    done
fi
if [ -z "$wheel" ] || [ ! -f "$wheel" ]; then
    echo "make-parts: $WHEEL_FILE not found; pass --wheel PATH (python3 provisioning/fetch.py --role cuda fetches it)" >&2
    exit 1
fi
pinned=$(python3 - "$REPO/provisioning/manifest.toml" <<'EOF'
import sys, tomllib
manifest = tomllib.load(open(sys.argv[1], "rb"))
print(next(w["sha256"] for w in manifest["wheel"] if w["name"] == "onnxruntime-gpu"))
EOF
)
found=$(sha256sum <"$wheel" | cut -c1-64)
if [ "$found" != "$pinned" ]; then
    echo "make-parts: $wheel has sha256 $found; the manifest pins $pinned" >&2
    exit 1
fi
echo "make-parts: $wheel sha256 ok ($pinned)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/libs"
python3 - "$wheel" "$work/libs" "${LIBS[@]}" <<'EOF'
import os, shutil, sys, zipfile
wheel, dest, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        with z.open("onnxruntime/capi/" + name) as src, open(os.path.join(dest, name), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.chmod(os.path.join(dest, name), 0o755)
EOF
(cd "$work/libs" && sha256sum "${LIBS[@]}") >"$HERE/SHA256SUMS"
echo "make-parts: library sha256s -> tests/gpu/SHA256SUMS"
cat "$HERE/SHA256SUMS"

echo "make-parts: tar | xz -9e (single-threaded, a few minutes) ..."
rm -f "$DEST/$STREAM".part-* "$DEST/SHA256SUMS"
tar -C "$work/libs" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu \
    -cf - "${LIBS[@]}" | xz -9e -T1 -c >"$work/$STREAM"
(cd "$work" && split -b "$PART_SIZE" -a 2 "$STREAM" "$DEST/$STREAM.part-")
for part in "$DEST/$STREAM".part-*; do
    size=$(stat -c %s "$part")
    if [ "$size" -gt "$MAX_PART_BYTES" ]; then
        echo "make-parts: $(basename "$part") is $size bytes, over 60 MiB; use a smaller --part-size" >&2
        exit 1
    fi
done
{
    (cd "$work" && sha256sum "$STREAM")
    (cd "$DEST" && sha256sum "$STREAM".part-*)
} >"$DEST/SHA256SUMS"
cp "$DEST/SHA256SUMS" "$HERE/parts.sha256"
echo "make-parts: stream $(stat -c %s "$work/$STREAM") bytes; parts:"
ls -l "$DEST/$STREAM".part-*
cat "$DEST/SHA256SUMS"

strip_binary || echo "make-parts: no binary stripped; carry target/release/moebox or run --bin later"
