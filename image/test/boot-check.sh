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
# moebox-first-boot runs on the first boot only (ConditionFirstBoot): on a later boot it is
# skipped by its condition, which is reported as such, not as a unit state.
units="moebox-provision.service moebox-engine@0.service moebox-gateway.socket \
       moebox-gateway.service moebox.target systemd-repart.service var.mount"
if [ "$(systemctl show -P ConditionResult moebox-first-boot.service)" = no ]; then
    say "first boot: no (moebox-first-boot.service skipped by its condition)"
else
    units="moebox-first-boot.service $units"
fi
for unit in $units; do
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
    # The update's own exit status (a pipeline would report sed's).
    /usr/lib/systemd/systemd-sysupdate update >/run/moebox-sysupdate.log 2>&1
    rc=$?
    sed 's/^/moebox-boot-check: sysupdate update: /' /run/moebox-sysupdate.log
    say "sysupdate rc=$rc"
    /usr/lib/systemd/systemd-sysupdate list 2>&1 | sed 's/^/moebox-boot-check: sysupdate list: /'
    ls /efi/EFI/Linux /boot/EFI/Linux 2>/dev/null | sed 's/^/moebox-boot-check: uki: /'
fi
say done
