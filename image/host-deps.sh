#!/usr/bin/env bash
# Installs what building and booting the appliance image needs on a Debian 12 (bookworm) host,
# as root, idempotently: mkosi 24.3 and systemd 254 (systemd-repart, ukify, systemd-analyze
# security --offline) from bookworm-backports, the rest from bookworm. An apt pin keeps every
# other package on bookworm. See image/README.md for why each one is needed.
#
#   image/host-deps.sh          everything: image build, qemu boot test, unit checks
#   image/host-deps.sh check    the checks every CI run makes: units (systemd-analyze 254) and
#                               the image definition (mkosi summary)
#   image/host-deps.sh units    only what the unit checks need (systemd-analyze 254)
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "host-deps.sh: run as root (apt-get)" >&2; exit 1; }
. /etc/os-release
[ "${VERSION_CODENAME:-}" = bookworm ] || {
    echo "host-deps.sh: written for Debian 12 (bookworm), this is ${PRETTY_NAME:-unknown}" >&2
    exit 1
}
export DEBIAN_FRONTEND=noninteractive

sources=/etc/apt/sources.list.d/bookworm-backports.sources
pin=/etc/apt/preferences.d/moebox-image-backports
if [ ! -e "$sources" ] && ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    cat >"$sources" <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
fi
if [ ! -e "$pin" ]; then
    cat >"$pin" <<'PIN'
# Only what the moebox image build names comes from bookworm-backports (image/host-deps.sh).
Package: *
Pin: release n=bookworm-backports
Pin-Priority: 100
PIN
fi

# systemd 254: its libraries move together, or apt wants to remove packages that need them.
systemd_backports=(systemd libsystemd-shared libsystemd0 libudev1 udev libpam-systemd
    libnss-systemd systemd-timesyncd)
mode=${1:-all}
want=()
case "$mode" in
    units) ;;
    check) want+=(mkosi) ;;
    all)
        want+=(mkosi systemd-container systemd-boot systemd-boot-efi systemd-repart systemd-ukify
            qemu-system-x86 qemu-system-common qemu-system-data qemu-utils seabios)
        ;;
    *) echo "host-deps.sh: unknown mode $mode (units | check | all)" >&2; exit 2 ;;
esac
from_bookworm=(ovmf mtools dosfstools erofs-utils cryptsetup-bin bubblewrap python3-pefile
    python3-cryptography squashfs-tools zstd xz-utils cpio kmod uidmap fdisk e2fsprogs
    openssl curl bmap-tools)
[ "$mode" = all ] || from_bookworm=()

have_backports_systemd() {
    dpkg-query -W -f='${Version}' systemd 2>/dev/null | grep -q 'bpo12'
}
missing=()
for p in "${want[@]}" "${from_bookworm[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if have_backports_systemd && [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
apt-get update -qq
# Only packages that exist in this release's index (systemd-repart and systemd-ukify are
# separate packages from systemd 255 on; in 254 they are part of systemd).
bp=()
for p in "${systemd_backports[@]}" "${want[@]}"; do
    # (grep reads all of madison's output: with -q it could exit first and fail the pipe.)
    [ "$(apt-cache madison "$p" 2>/dev/null | grep -c bookworm-backports)" -gt 0 ] && bp+=("$p/bookworm-backports")
done
plain=()
for p in "${from_bookworm[@]}"; do
    plain+=("$p")
done
apt-get install -y -qq --no-install-recommends "${bp[@]}" "${plain[@]}"
