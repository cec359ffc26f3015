#!/usr/bin/env bash
# Installs what the testbed needs, idempotently: Debian packages, then a virtual
# environment (.venv) with the project and its Python dependencies.
# Usage: scripts/setup.sh [--labs]
#   --labs: only what a student needs for the labs (make setup-labs): Mininet, tgtd, the
#   network tools and the graders' pytest; no Docker, no guest builder, no test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

LABS_PACKAGES=(mininet tgt bridge-utils iptables ethtool iproute2 nftables tcpdump
               python3-venv python3-dev gcc procps iputils-ping)
if [[ "${1:-}" == "--labs" ]]; then
    APT_PACKAGES=("${LABS_PACKAGES[@]}")
    EXTRAS=labs
else
    APT_PACKAGES=("${LABS_PACKAGES[@]}" libiscsi-bin iperf3 docker.io docker-compose
                  debootstrap qemu-system-x86 busybox-static cpio    # these four: the kernel client
                  qemu-utils syslinux syslinux-common mtools dosfstools fdisk  # make vm-image
                  chromium chromium-driver)          # the live page's browser test
    EXTRAS=test,docker,results,cluster
fi

need=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
    echo "setup: installing Debian packages: ${need[*]}"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# The venv is built on Debian's python3 so that Debian's mininet package (the same
# library that /usr/bin/mn uses) is importable; everything else comes from PyPI.
if [[ ! -x .venv/bin/python ]] || ! .venv/bin/python -c "import mininet" 2>/dev/null; then
    echo "setup: creating .venv"
    rm -rf .venv
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
# The stamp names the extras too: a full setup after setup-labs installs the rest.
stamp=.venv/.installed-${EXTRAS//,/-}-$(sha1sum pyproject.toml | cut -c1-12)
if [[ ! -f $stamp ]]; then
    echo "setup: installing Python dependencies into .venv ($EXTRAS)"
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e ".[$EXTRAS]"
    rm -f ".venv/.installed-${EXTRAS//,/-}-"*
    touch "$stamp"
fi
