#!/usr/bin/env bash
# Capture what `moebox provision` reads on an NVIDIA host into a tarball that
# `moebox provision --sysroot DIR` (and crates/moebox-provision/tests) can read back.
#
#   tests/gpu/capture-sysfs.sh [OUT.tar.gz]      # default: ./sysfs-capture.tar.gz; run as root
#
# The tarball holds one folder, `capture/`, laid out like the machine's root:
#   sys/bus/pci/devices/*/        every PCI function's vendor, device, class; for NVIDIA ones also
#                                 subsystem ids, link speed/width (current, max), numa_node, and
#                                 `driver` as a relative symlink to the bound driver's name
#   sys/module/nvidia*/version
#   proc/driver/nvidia/**         version, gpus/*/information, params, ...
#   proc/devices, proc/modules
#   dev/kmsg                      kernel log lines about the driver (NVRM, Xid, nvidia, nouveau)
#   dev/nvidia*                   device nodes as text stand-ins `c MAJOR:MINOR` (an unprivileged
#                                 tar cannot recreate device nodes; --sysroot reads these)
#   usr/lib/.../libnvidia-ml.so.1, libcuda.so.1
#                                 the sonames as symlinks, every link of their chain as it is
#                                 (also outside these folders, e.g. /usr/local/nvidia/lib64), and
#                                 an empty placeholder named like the real file at its end (the
#                                 version is in the name)
#   reference/                    not read by moebox: nvidia-smi -q, lspci -vv, uname, the full
#                                 driver log, for whoever turns the capture into a test fixture
# Nothing else is copied (no serial numbers beyond what nvidia-smi -q prints in reference/).
set -uo pipefail

out=${1:-sysfs-capture.tar.gz}
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/capture"
mkdir -p "$root"

# Copies a kernel file by reading it (sysfs and procfs report size 0, so `cp` would copy nothing).
grab() {
    local src=$1 dst="$root$1"
    [ -r "$src" ] || return 0
    mkdir -p "$(dirname "$dst")"
    cat "$src" >"$dst" 2>/dev/null || rm -f "$dst"
}

# PCI functions.
for dev in /sys/bus/pci/devices/*; do
    addr=$(basename "$dev")
    for f in vendor device class; do grab "/sys/bus/pci/devices/$addr/$f"; done
    [ "$(cat "$dev/vendor" 2>/dev/null)" = "0x10de" ] || continue
    for f in subsystem_vendor subsystem_device current_link_speed current_link_width \
             max_link_speed max_link_width numa_node local_cpulist power/control power/runtime_status; do
        grab "/sys/bus/pci/devices/$addr/$f"
    done
    if [ -L "$dev/driver" ]; then
        ln -s "../../../bus/pci/drivers/$(basename "$(readlink "$dev/driver")")" \
            "$root/sys/bus/pci/devices/$addr/driver"
    fi
done

# Modules.
for module in /sys/module/nvidia*; do
    [ -d "$module" ] || continue
    for f in version initstate refcnt; do grab "$module/$f"; done
done
[ -d /sys/module/nouveau ] && grab /sys/module/nouveau/initstate

# procfs.
grab /proc/devices
grab /proc/modules
if [ -d /proc/driver/nvidia ]; then
    while IFS= read -r -d '' f; do grab "$f"; done < <(find /proc/driver/nvidia -type f -print0 2>/dev/null)
fi

# Kernel log: /dev/kmsg records since boot, without blocking; `dmesg` if kmsg is unreadable.
mkdir -p "$root/dev" "$root/reference"
pattern='NVRM|Xid|nvidia|nouveau|NVLink|GSP'
if dd if=/dev/kmsg iflag=nonblock bs=16k 2>/dev/null >"$stage/kmsg" && [ -s "$stage/kmsg" ]; then
    grep -aE "$pattern" "$stage/kmsg" >"$root/dev/kmsg" || true
elif dmesg >"$stage/kmsg" 2>/dev/null; then
    grep -aE "$pattern" "$stage/kmsg" >"$root/dev/kmsg" || true
else
    echo "capture: kernel log unreadable (not root?); dev/kmsg left out" >&2
fi
[ -f "$root/dev/kmsg" ] && cp "$root/dev/kmsg" "$root/reference/driver-log.txt"

# Device nodes as stand-ins.
for node in /dev/nvidia*; do
    [ -c "$node" ] || continue
    printf 'c %d:%d\n' "0x$(stat -c %t "$node")" "0x$(stat -c %T "$node")" >"$root$node"
done

# User-space driver sonames and the versioned files they point at (empty placeholders). The
# whole chain is kept, link by link, with each target as written: a soname may point at another
# soname elsewhere (`/usr/lib/libcuda.so.1 -> /usr/local/nvidia/lib64/libcuda.so.1 ->
# libcuda.so.580.159.04`), and only the file at the end carries the version. Absolute targets
# stay absolute; `moebox provision --sysroot` resolves them below the tree.
copy_link_chain() {
    local path=$1 target hops=0
    while [ -L "$path" ] && [ "$hops" -lt 16 ]; do
        target=$(readlink "$path")
        mkdir -p "$root$(dirname "$path")"
        ln -sfn "$target" "$root$path"
        case "$target" in
            /*) path=$target ;;
            *) path="$(dirname "$path")/$target" ;;
        esac
        path=$(realpath -m -s "$path")
        hops=$((hops + 1))
    done
    if [ -f "$path" ] && [ ! -L "$path" ] && [ ! -e "$root$path" ] && [ ! -L "$root$path" ]; then
        mkdir -p "$root$(dirname "$path")"
        : >"$root$path"
    fi
}
for dir in /usr/lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu/nvidia/current /usr/lib64 /usr/lib /lib/x86_64-linux-gnu; do
    for soname in libnvidia-ml.so.1 libcuda.so.1; do
        [ -L "$dir/$soname" ] && copy_link_chain "$dir/$soname"
    done
done

# For people, not for moebox.
{ uname -a; cat /etc/os-release 2>/dev/null; } >"$root/reference/uname.txt"
command -v nvidia-smi >/dev/null && nvidia-smi -q >"$root/reference/nvidia-smi-q.txt" 2>&1
command -v nvidia-smi >/dev/null && nvidia-smi >"$root/reference/nvidia-smi.txt" 2>&1
command -v lspci >/dev/null && lspci -vv -d 10de: >"$root/reference/lspci-vv.txt" 2>&1
date -u +%Y-%m-%dT%H:%M:%SZ >"$root/reference/captured-at.txt"

tar -C "$stage" -czf "$out" capture
gpus=$(grep -l 0x10de "$root"/sys/bus/pci/devices/*/vendor 2>/dev/null | wc -l)
echo "capture: $out ($gpus NVIDIA PCI functions)"
