#!/bin/sh
# Runs inside the booted test image as moebox-boot-check.service (image/test/boot.sh passes it
# in as a credential, so the image carries no test code) and reports on the console, where the
# host reads it: the moebox units' states once the engine is up, the mounts, the installed
# version; with an update disk attached (label moebox-update), installs that version with
# systemd-sysupdate (A/B), then reports again.
say() { echo "moebox-boot-check: $*"; }

i=0
while [ $i -lt 1200 ] && ! systemctl is-active --quiet moebox-engine@0.service; do
    i=$((i + 1)); sleep 1
done
for unit in moebox-first-boot.service moebox-provision.service moebox-engine@0.service \
            moebox-gateway.socket moebox-gateway.service moebox.target \
            systemd-repart.service var.mount; do
    say "$unit $(systemctl is-active "$unit")"
done
say "usr $(findmnt -n -o SOURCE,FSTYPE,OPTIONS /usr)"
say "var $(findmnt -n -o SOURCE,FSTYPE,SIZE /var)"
say "version $(. /usr/lib/os-release && echo "$IMAGE_VERSION")"
say "uptime $(cut -d. -f1 /proc/uptime)"

if [ -e /dev/disk/by-label/moebox-update ]; then
    mkdir -p /run/moebox-update
    mount -o ro /dev/disk/by-label/moebox-update /run/moebox-update
    cp /run/moebox-update/moebox_* /var/lib/moebox-update/
    umount /run/moebox-update
    /usr/lib/systemd/systemd-sysupdate list 2>&1 | sed 's/^/moebox-boot-check: sysupdate list: /'
    if /usr/lib/systemd/systemd-sysupdate update 2>&1 | sed 's/^/moebox-boot-check: sysupdate update: /'; then
        say "sysupdate rc=0"
    else
        say "sysupdate rc=1"
    fi
    /usr/lib/systemd/systemd-sysupdate list 2>&1 | sed 's/^/moebox-boot-check: sysupdate list: /'
    ls /efi/EFI/Linux /boot/EFI/Linux 2>/dev/null | sed 's/^/moebox-boot-check: uki: /'
fi
say done
