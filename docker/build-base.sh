#!/usr/bin/env bash
# Build the node image's base locally, for machines that cannot pull from a registry.
#
# Usage: docker/build-base.sh [IMAGE]     (default testbed-base:bookworm)
#
# debootstrap installs a minimal Debian bookworm (variant minbase) with what every node
# needs: python3 and venv (the project is pip-installed into /opt/testbed by the
# Dockerfile), tgt (tgtd, tgtadm), iproute2 (ip, tc), nftables, ethtool, iptables and
# procps; the tree is then turned into an image with `docker import`. About 40 s here.
#
# Idempotent: if IMAGE exists and was built with this package list (its label
# org.testbed.packages), nothing is done; a changed list builds it again. The tree is built in a temporary folder that is removed on any exit.
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

IMAGE=${1:-testbed-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=python3,python3-venv,tgt,iproute2,nftables,ethtool,iptables,procps,iputils-ping,iperf3,ca-certificates

have=$(docker image inspect -f '{{index .Config.Labels "org.testbed.packages"}}' "$IMAGE" 2>/dev/null || true)
if [[ $have == "$PACKAGES" ]]; then
    echo "build-base: $IMAGE exists with these packages, nothing to do" >&2
    exit 0
fi
for tool in debootstrap docker tar; do
    if ! command -v "$tool" >/dev/null; then
        echo "build-base: $tool not found (scripts/setup.sh installs debootstrap and docker.io)" >&2
        exit 1
    fi
done
if [[ $(id -u) -ne 0 ]]; then
    echo "build-base: debootstrap needs root" >&2
    exit 1
fi

root=$(mktemp -d /var/tmp/testbed-base.XXXXXX)
trap 'rm -rf --one-file-system "$root"' EXIT

echo "build-base: debootstrap bookworm into $root (packages: $PACKAGES)" >&2
debootstrap --variant=minbase --include="$PACKAGES" bookworm "$root" "$MIRROR" \
    >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"

# What a registry image would have: its own sources list, no package caches.
echo "deb $MIRROR bookworm main" >"$root/etc/apt/sources.list"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

tar --numeric-owner -C "$root" -c . |
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        --change "LABEL org.testbed.packages=$PACKAGES" \
        --message "testbed: debootstrap --variant=minbase bookworm" \
        - "$IMAGE" >/dev/null
echo "build-base: built $IMAGE" >&2
