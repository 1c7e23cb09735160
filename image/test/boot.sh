#!/usr/bin/env bash
# Boot test of the appliance image (image/README.md, "Boot test"): boots the CPU variant under
# qemu (TCG: no KVM here), then proves from the host, through a forwarded port:
#   - first boot printed an admin and a user key on the console;
#   - every moebox unit is active (a check unit, passed in as a systemd credential so the image
#     itself carries no test code, prints their states on the console);
#   - GET /readyz answers 200 over HTTPS;
#   - POST /v1/chat/completions with the first-boot user key is answered by the engine;
#   - GET /admin/ with the admin key (the TCO page) is reported with its status.
# Prints the image size, build time (when it builds) and boot-to-ready time; writes them to
# OUTPUT/boot.json. Exit 0 only when every check passed.
#
#   image/test/boot.sh [--build] [--image RAW] [--update-from DIR] [--timeout SECONDS] [--port PORT]
#
#   --build        build the CPU image first (image/build.sh), timing it
#   --image        the raw image (default: the newest .moebox/image/cpu/moebox_*.raw)
#   --update-from  a newer version's build output (image/build.sh --output DIR): after the
#                  checks, the guest installs it with systemd-sysupdate into slot B, powers off,
#                  boots again into it, and the same checks run on the new version with the
#                  first boot's keys (configuration and database carried over)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
build=no
image=
update_from=
timeout=900
port=${MOEBOX_BOOT_TEST_PORT:-18443}
while [ $# -gt 0 ]; do
    case "$1" in
        --build) build=yes; shift ;;
        --image) image=$2; shift 2 ;;
        --update-from) update_from=$2; shift 2 ;;
        --timeout) timeout=$2; shift 2 ;;
        --port) port=$2; shift 2 ;;
        -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "boot.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
out=$REPO/.moebox/image/cpu
build_seconds=None
if [ "$build" = yes ]; then
    t0=$(date +%s)
    "$REPO/image/build.sh" --variant cpu --output "$out"
    build_seconds=$(( $(date +%s) - t0 ))
fi
if [ -z "$image" ]; then
    image=$(ls -t "$out"/moebox_*.raw 2>/dev/null | grep -v -E '\.(usr|root|esp)' | head -1 || true)
fi
[ -f "$image" ] || { echo "boot.sh: no image (build one: image/test/boot.sh --build)" >&2; exit 2; }

work=$(mktemp -d /var/tmp/moebox-boot.XXXXXX)
qemu_pid=
cleanup() {
    [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null && wait "$qemu_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
log=$work/serial.log
fail() {
    echo "boot.sh: FAIL: $*" >&2
    echo "---- last 60 lines of the serial console ----" >&2
    tail -60 "$log" >&2 || true
    exit 1
}

# The disk is bigger than the image, as a server's is: first boot's systemd-repart adds the B
# slots and /var in the free space. A qcow2 overlay keeps the image itself unchanged and costs
# only what the guest writes.
qemu-img create -q -f qcow2 -F raw -b "$(realpath "$image")" "$work/disk.qcow2" \
    "$(( $(stat -c %s "$image") + 4 * 1024 * 1024 * 1024 ))"
cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/vars.fd"

# The check, as credentials (systemd >= 256 in the guest): systemd.extra-unit.* installs the
# unit, systemd.unit-dropin.* makes moebox.target want it, and the unit imports the script
# (image/test/boot-check.sh) from its own credential.
check_unit='[Unit]
Description=moebox boot test: report the moebox units
After=moebox.target moebox-gateway.service moebox-engine@0.service

[Service]
Type=oneshot
ImportCredential=moebox-boot-check.sh
StandardOutput=tty
StandardError=tty
TTYPath=/dev/console
ExecStart=/bin/sh ${CREDENTIALS_DIRECTORY}/moebox-boot-check.sh
'
dropin='[Unit]
Wants=moebox-boot-check.service
'
b64() { printf '%s' "$1" | base64 -w0; }

qemu_args=(
    -machine q35 -accel tcg -cpu max -smp 2 -m 2G
    -nographic -monitor "unix:$work/monitor,server,nowait"
    -drive "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"
    -drive "if=pflash,format=raw,file=$work/vars.fd"
    -drive "if=virtio,format=qcow2,file=$work/disk.qcow2,discard=unmap"
    -netdev "user,id=net0,hostfwd=tcp:127.0.0.1:$port-:443"
    -device virtio-net-pci,netdev=net0
    -device isa-debug-exit,iobase=0xf4,iosize=0x04
    -smbios "type=11,value=io.systemd.credential.binary:systemd.extra-unit.moebox-boot-check.service=$(b64 "$check_unit")"
    -smbios "type=11,value=io.systemd.credential.binary:systemd.unit-dropin.moebox.target=$(b64 "$dropin")"
    -smbios "type=11,value=io.systemd.credential.binary:moebox-boot-check.sh=$(b64 "$(cat "$REPO/image/test/boot-check.sh")")"
    # The journal on the console too, so that a failure shows its cause in this test's output
    # (the image's own command line is in its UKI; systemd-stub appends this one).
    -smbios "type=11,value=io.systemd.stub.kernel-cmdline-extra=systemd.journald.forward_to_console=1"
)
started=$(date +%s.%N)
elapsed() { python3 -c "import time; print(round(time.time() - $started, 1))"; }
# A newer version on a second disk (ext4, label moebox-update), for the update pass.
new_version=
if [ -n "$update_from" ]; then
    uki=$(ls "$update_from"/moebox_*.efi | head -1)
    new_version=$(basename "$uki" .efi); new_version=${new_version#moebox_}
    mkdir "$work/update"
    cp "$update_from/moebox_$new_version".usr-x86-64.*.raw "$update_from/moebox_$new_version".usr-x86-64-verity.*.raw \
        "$uki" "$work/update/"
    mkfs.ext4 -q -L moebox-update -d "$work/update" "$work/update.img" \
        "$(( $(du -sm "$work/update" | cut -f1) + 64 ))M"
    rm -rf "$work/update"
    qemu_args+=(-drive "if=virtio,format=raw,readonly=on,file=$work/update.img")
fi
start_qemu() { # start_qemu SERIAL_LOG
    log=$1
    qemu-system-x86_64 "${qemu_args[@]}" -serial "file:$log" &
    qemu_pid=$!
}
start_qemu "$work/serial.log"
echo "boot.sh: booting $(basename "$image") (qemu pid $qemu_pid, https://127.0.0.1:$port)"

deadline=$(( $(date +%s) + timeout ))
wait_for() { # wait_for DESCRIPTION COMMAND...: until COMMAND succeeds, the console fails, or time is up
    local what=$1; shift
    until "$@"; do
        kill -0 "$qemu_pid" 2>/dev/null || fail "qemu exited while waiting for $what"
        grep -q -E 'Emergency Mode|emergency mode|Kernel panic|Failed to start .*moebox' "$log" 2>/dev/null \
            && fail "the console shows a failure while waiting for $what"
        [ "$(date +%s)" -lt "$deadline" ] || fail "timed out after ${timeout}s waiting for $what"
        sleep 2
    done
}
keys_printed() { grep -q '^moebox user key: mbx_' "$log" 2>/dev/null; }
wait_for "the first-boot keys on the console" keys_printed
keys_seconds=$(elapsed)
admin=$(sed -n 's/^moebox admin key: \(mbx_[A-Za-z0-9]*\).*/\1/p' "$log" | head -1)
user=$(sed -n 's/^moebox user key: \(mbx_[A-Za-z0-9]*\).*/\1/p' "$log" | head -1)
[ -n "$admin" ] && [ -n "$user" ] || fail "cannot read the keys from the console"
echo "boot.sh: first-boot keys printed after ${keys_seconds}s"

ready() { [ "$(curl -k -s -o /dev/null -w '%{http_code}' --max-time 5 "https://127.0.0.1:$port/readyz")" = 200 ]; }
serves() { # the checks of one boot, from /readyz on
wait_for "GET /readyz 200" ready
ready_seconds=$(elapsed)
echo "boot.sh: GET /readyz 200 after ${ready_seconds}s (boot to ready, qemu start to first 200)"

checked() { grep -q '^moebox-boot-check: done' "$log" 2>/dev/null; }
wait_for "the check unit's report" checked
grep '^moebox-boot-check:' "$log" | tr -d '\r'
inactive=$(grep -E '^moebox-boot-check: [^ ]+\.(service|socket|target|mount) ' "$log" | tr -d '\r' \
    | grep -v -E ' active$' || true)
[ -z "$inactive" ] || fail "units not active: $inactive"

# The model's id is what the engine reports (the model folder's name): ask, as a client would.
model=$(curl -k -sS --max-time 30 -H "Authorization: Bearer $user" "https://127.0.0.1:$port/v1/models" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["data"][0]["id"])') \
    || fail "GET /v1/models with the user key did not list a model"
body='{"model":"'"$model"'","messages":[{"role":"user","content":"Summarise the quarterly ledger in one sentence."}],"max_tokens":16,"temperature":0}'
t0=$(date +%s.%N)
status=$(curl -k -sS -o "$work/completion.json" -w '%{http_code}' --max-time 300 \
    -H "Authorization: Bearer $user" -H 'Content-Type: application/json' \
    -d "$body" "https://127.0.0.1:$port/v1/chat/completions") || fail "chat completion request failed"
completion_seconds=$(python3 -c "import time; print(round(time.time() - $t0, 1))")
[ "$status" = 200 ] || fail "chat completion answered $status: $(cat "$work/completion.json")"
python3 - "$work/completion.json" <<'PY' || fail "chat completion is not an answer: $(cat "$work/completion.json")"
import json, sys
answer = json.load(open(sys.argv[1]))
choice = answer["choices"][0]
assert choice["message"]["role"] == "assistant"
assert isinstance(choice["message"]["content"], str) and choice["finish_reason"] in ("stop", "length")
assert answer["usage"]["completion_tokens"] > 0
print(f"boot.sh: chat completion answered in the VM: finish_reason={choice['finish_reason']} "
      f"completion_tokens={answer['usage']['completion_tokens']} content={choice['message']['content']!r}")
PY
echo "boot.sh: completion took ${completion_seconds}s under TCG"

unauthorised=$(curl -k -s -o /dev/null -w '%{http_code}' --max-time 30 \
    -H 'Content-Type: application/json' -d "$body" "https://127.0.0.1:$port/v1/chat/completions")
[ "$unauthorised" = 401 ] || fail "a completion without a key answered $unauthorised, not 401"
admin_status=$(curl -k -s -o "$work/admin.html" -w '%{http_code}' --max-time 60 \
    -H "Authorization: Bearer $admin" "https://127.0.0.1:$port/admin/")
echo "boot.sh: GET /admin/ with the admin key: $admin_status ($(wc -c <"$work/admin.html") bytes)"
user_admin=$(curl -k -s -o /dev/null -w '%{http_code}' --max-time 60 \
    -H "Authorization: Bearer $user" "https://127.0.0.1:$port/admin/")
[ "$user_admin" = 403 ] || fail "GET /admin/ with the user key answered $user_admin, not 403"
# The keys were shown on the console once, and never logged: with the journal forwarded to
# the console here, a key in any log line would appear a second time.
for key in "$admin" "$user"; do
    [ "$(grep -c -F "$key" "$work/serial.log")" = 1 ] || fail "a first-boot key appears in a log line"
done
}
ready() { [ "$(curl -k -s -o /dev/null -w '%{http_code}' --max-time 5 "https://127.0.0.1:$port/readyz")" = 200 ]; }
serves
first_ready_seconds=$ready_seconds
updated_ready_seconds=None

if [ -n "$update_from" ]; then
    updated() { grep -q '^moebox-boot-check: sysupdate rc=' "$log"; }
    wait_for "systemd-sysupdate in the guest" updated
    grep -q '^moebox-boot-check: sysupdate rc=0' "$log" || fail "systemd-sysupdate update failed"
    echo "boot.sh: version $new_version installed into slot B; powering off"
    python3 -c "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b'system_powerdown\\n')" "$work/monitor"
    for _ in $(seq 1 90); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 2; done
    kill -0 "$qemu_pid" 2>/dev/null && fail "the guest did not power off"
    wait "$qemu_pid" || true
    started=$(date +%s.%N)
    deadline=$(( $(date +%s) + timeout ))
    start_qemu "$work/serial-updated.log"
    echo "boot.sh: booting again (qemu pid $qemu_pid): the newest UKI, $new_version"
    serves
    grep -q "^moebox-boot-check: version $new_version" "$log" || fail "the second boot is not version $new_version"
    grep -q "^moebox-boot-check: first boot: no" "$log" || fail "the second boot ran the first-boot set-up again"
    updated_ready_seconds=$ready_seconds
    echo "boot.sh: updated to $new_version: served with the first boot's keys after ${ready_seconds}s"
fi

image_bytes=$(stat -c %s "$image")
allocated=$(( $(stat -c %b "$image") * 512 ))
python3 - "$out/boot.json" <<JSON
import json, sys
json.dump({
    "image": "$(basename "$image")",
    "image_bytes": $image_bytes,
    "image_allocated_bytes": $allocated,
    "build_seconds": $build_seconds,
    "keys_on_console_seconds": $keys_seconds,
    "boot_to_ready_seconds": $first_ready_seconds,
    "updated_to": "$new_version" or None,
    "updated_boot_to_ready_seconds": $updated_ready_seconds,
    "completion_seconds": $completion_seconds,
    "admin_status": $admin_status,
}, open(sys.argv[1], "w"), indent=2)
JSON
cat "$out/boot.json"
echo "boot.sh: PASS"
