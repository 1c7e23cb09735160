#!/usr/bin/env bash
# The fast check of the image definition, run by every CI run (.ci/run) without building:
#   - mkosi parses the definition for each variant (`mkosi summary`);
#   - the first-boot repart definitions agree with the build's on every slot size, so that
#     first boot matches the partitions the image brings and makes slot B as big as slot A;
#   - the shell scripts parse.
# The units themselves are checked by crates/moebox/tests/units.rs (./dev test).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO/image"
status=0
for profile in mkosi.profiles/*/; do
    variant=$(basename "$profile")
    if ! summary=$(PATH=/usr/sbin:/usr/bin:/sbin:/bin mkosi --profile "$variant" summary 2>&1); then
        echo "check.sh: mkosi summary --profile $variant failed:" >&2
        echo "$summary" >&2
        status=1
        continue
    fi
    grep -q "Profile: $variant" <<<"$summary" || { echo "check.sh: $variant: profile not applied" >&2; status=1; }
    echo "check.sh: $variant: mkosi summary ok"

    # Sizes: build definition (PROFILE/repart) and first-boot definitions (PROFILE/mkosi.extra).
    size_of() { sed -n "s/^$2=//p" "$1"; }
    runtime=$profile/mkosi.extra/usr/lib/repart.d
    for pair in "10-usr.conf:10-usr.conf" "10-usr.conf:30-usr-b.conf" \
                "11-usr-verity.conf:11-usr-verity.conf" "11-usr-verity.conf:31-usr-verity-b.conf"; do
        built=$profile/repart/${pair%%:*}
        booted=$runtime/${pair##*:}
        [ -f "$built" ] && [ -f "$booted" ] || { echo "check.sh: $variant: missing $built or $booted" >&2; status=1; continue; }
        for key in SizeMinBytes SizeMaxBytes; do
            if [ "$(size_of "$built" $key)" != "$(size_of "$booted" $key)" ] || [ -z "$(size_of "$built" $key)" ]; then
                echo "check.sh: $variant: $key differs: $built ($(size_of "$built" $key)) vs $booted ($(size_of "$booted" $key))" >&2
                status=1
            fi
        done
    done
done
built_root=repart/common/20-root.conf
booted_root=mkosi.extra/usr/lib/repart.d/20-root.conf
for key in SizeMinBytes SizeMaxBytes; do
    [ "$(sed -n "s/^$key=//p" $built_root)" = "$(sed -n "s/^$key=//p" $booted_root)" ] \
        || { echo "check.sh: root $key differs between $built_root and $booted_root" >&2; status=1; }
done
for script in build.sh check.sh host-deps.sh test/boot.sh test/boot-check.sh first-boot/first-boot; do
    bash -n "$script" || status=1
done
[ "$status" = 0 ] && echo "check.sh: image definition ok"
exit "$status"
