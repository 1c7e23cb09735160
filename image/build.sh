#!/usr/bin/env bash
# Builds the appliance disk image with mkosi (image/README.md).
#
#   image/build.sh [--variant cpu|gpu] [--model DIR] [--binary FILE] [--output DIR]
#
#   --variant  cpu (default): CPU execution provider, no NVIDIA packages, one engine.
#              gpu: NVIDIA open kernel modules built at image build time, CUDA libraries.
#   --model    the served model folder (default: the tiny fixture, tests/fixtures/tiny-moe).
#   --binary   a moebox binary to ship (default: `cargo build --release -p moebox`).
#   --output   where the image goes (default: .moebox/image/VARIANT).
#
# Stages the binary, the units, sysusers/tmpfiles, the first-boot script and the pinned
# artefacts (provisioning/assemble.py: ONNX Runtime for the variant's role, the smoke model,
# SHA256SUMS) into OUTPUT/stage, then runs mkosi with it as an extra tree. Writes
# OUTPUT/moebox_VERSION.raw, its .bmap and SHA256SUMS, the split /usr, verity and UKI files
# that systemd-sysupdate installs, and OUTPUT/build.json (version, sizes, seconds).
# Needs root and the host tools of image/host-deps.sh.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
variant=cpu
model=$REPO/tests/fixtures/tiny-moe
binary=
output=
while [ $# -gt 0 ]; do
    case "$1" in
        --variant) variant=$2; shift 2 ;;
        --model) model=$2; shift 2 ;;
        --binary) binary=$2; shift 2 ;;
        --output) output=$2; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$variant" in
    cpu) role=cpu ;;
    gpu) role=cuda ;;
    *) echo "build.sh: --variant must be cpu or gpu, not $variant" >&2; exit 2 ;;
esac
[ -f "$model/genai_config.json" ] || {
    echo "build.sh: --model $model is not an onnxruntime-genai folder (no genai_config.json)" >&2
    exit 2
}
[ "$(id -u)" = 0 ] || { echo "build.sh: mkosi needs root here (run as root)" >&2; exit 1; }
command -v mkosi >/dev/null || { echo "build.sh: mkosi missing: run image/host-deps.sh" >&2; exit 1; }
output=${output:-$REPO/.moebox/image/$variant}
mkdir -p "$output"
output=$(cd "$output" && pwd)
started=$(date +%s)

# Versions sort the way systemd-sysupdate compares them: the crate version, then the commit count.
crate_version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -1)
version=${MOEBOX_IMAGE_VERSION:-$crate_version.$(git -C "$REPO" rev-list --count HEAD)}

if [ -z "$binary" ]; then
    (cd "$REPO" && cargo build --release --locked -p moebox)
    binary=${CARGO_TARGET_DIR:-$REPO/target}/release/moebox
fi
[ -x "$binary" ] || { echo "build.sh: --binary $binary is not an executable" >&2; exit 2; }

stage=$output/stage
rm -rf "$stage"
install -D -m 0755 "$binary" "$stage/usr/bin/moebox"
# Debug info stays with the build, not on the appliance.
objcopy --strip-debug "$stage/usr/bin/moebox"
for unit in "$REPO"/systemd/*.service "$REPO"/systemd/*.socket "$REPO"/systemd/*.target; do
    install -D -m 0644 "$unit" "$stage/usr/lib/systemd/system/$(basename "$unit")"
done
install -D -m 0644 "$REPO/systemd/sysusers.d/moebox.conf" "$stage/usr/lib/sysusers.d/moebox.conf"
install -D -m 0644 "$REPO/systemd/tmpfiles.d/moebox.conf" "$stage/usr/lib/tmpfiles.d/moebox.conf"
install -D -m 0755 "$REPO/image/first-boot/first-boot" "$stage/usr/libexec/moebox/first-boot"
for doc in README.md docs/security.md docs/provisioning.md docs/engine.md image/README.md; do
    [ -f "$REPO/$doc" ] || continue
    name=$(basename "$doc"); [ "$doc" = image/README.md ] && name=image.md
    install -D -m 0644 "$REPO/$doc" "$stage/usr/share/doc/moebox/$name"
done
# ONNX Runtime for the variant's role, the smoke model, the served model, modprobe.d, udev
# rules and SHA256SUMS (verified by `moebox provision` at every boot). Wheels are cached
# beside the stage, outside the image.
python3 "$REPO/provisioning/assemble.py" tree --dest "$stage" --role "$role" \
    --cache "$REPO/.moebox/wheels" --model "$model"

# The GPU variant's driver: NVIDIA's repository key, checked against the manifest's fingerprint,
# and the pinned packages (kernel module and user space at one version).
packages=()
if [ "$variant" = gpu ]; then
    manifest_value() { python3 -c "import tomllib,sys; print(tomllib.load(open('$REPO/provisioning/manifest.toml','rb'))['driver'][sys.argv[1]])" "$1"; }
    repository=$(manifest_value repository)
    fingerprint=$(manifest_value signing_key_fingerprint)
    keyring=$REPO/image/mkosi.profiles/gpu/nvidia.pkgmngr/etc/apt/keyrings/moebox-nvidia-cuda.gpg
    mkdir -p "$(dirname "$keyring")"
    key=$output/nvidia-cuda.pub
    curl -fsSL --max-time 60 -o "$key" "${repository}${fingerprint: -8}.pub" || {
        echo "build.sh: cannot fetch NVIDIA's repository key from ${repository}; the gpu variant needs" \
             "NVIDIA's CUDA repository (provisioning/manifest.toml [driver])" >&2
        exit 1
    }
    found=$(gpg --show-keys --with-colons "$key" | awk -F: '$1 == "fpr" { print $10; exit }')
    [ "$found" = "$fingerprint" ] || {
        echo "build.sh: NVIDIA's key has fingerprint $found, the manifest pins $fingerprint" >&2
        exit 1
    }
    gpg --dearmor <"$key" >"$keyring"
    while read -r spec; do packages+=(--package "$spec"); done \
        < <(python3 "$REPO/provisioning/assemble.py" packages)
fi

staged=$(date +%s)
# PATH: mkosi's tools (ukify) run `python3`, which must be Debian's (python3-pefile), not a
# pyenv one. --incremental caches the installed packages between builds.
rm -f "$output"/moebox_*
PATH=/usr/sbin:/usr/bin:/sbin:/bin mkosi \
    --directory "$REPO/image" \
    --profile "$variant" \
    --extra-tree "$stage" \
    --image-version "$version" \
    --output-dir "$output" \
    --cache-dir "$REPO/.moebox/mkosi-cache" \
    --incremental \
    --force \
    "${packages[@]}" \
    build
built=$(date +%s)

raw=$output/moebox_$version.raw
[ -f "$raw" ] || { echo "build.sh: mkosi wrote no $raw" >&2; ls -l "$output" >&2; exit 1; }
(cd "$output" && bmaptool -q create -o "moebox_$version.raw.bmap" "moebox_$version.raw")
(cd "$output" && sha256sum moebox_"$version".* >SHA256SUMS)
uki=$(ls "$output"/moebox_"$version"*.efi 2>/dev/null | head -1 || true)
python3 - "$output/build.json" <<JSON
import json, os, sys
raw = "$raw"
st = os.stat(raw)
json.dump({
    "version": "$version",
    "variant": "$variant",
    "image": os.path.basename(raw),
    "image_bytes": st.st_size,
    "image_allocated_bytes": st.st_blocks * 512,
    "uki_bytes": os.path.getsize("$uki") if "$uki" else None,
    "stage_seconds": $staged - $started,
    "mkosi_seconds": $built - $staged,
    "total_seconds": $(date +%s) - $started,
}, open(sys.argv[1], "w"), indent=2)
JSON
cat "$output/build.json"
