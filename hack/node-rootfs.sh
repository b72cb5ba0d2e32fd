#!/usr/bin/env bash
# Make (once) the Debian root filesystem the test cluster's real edge node boots: systemd as PID 1,
# containerd, runc, the CNI plugins and the tools kubelet needs. Cached outside the repository, keyed by
# the package list, so a warm run finds it at once.
#
# Usage: hack/node-rootfs.sh            prints the rootfs directory on its last line
# Env:   YURT_EDGE_CACHE (default ~/.cache/yurt-edge)
#        NODE_PYTHON=no: the same root without python3 (a node that needs no Python: the converter
#        installs yurt-edge's self-contained executable there)
set -euo pipefail

SUITE=bookworm
PACKAGES=(
    systemd systemd-sysv dbus libpam-systemd
    containerd runc containernetworking-plugins
    iproute2 iptables conntrack ethtool kmod procps util-linux mount ca-certificates socat
    python3 python3-venv
)

if [ "${NODE_PYTHON:-yes}" = no ]; then
    kept=()
    for pkg in "${PACKAGES[@]}"; do
        case $pkg in python3*) ;; *) kept+=("$pkg") ;; esac
    done
    PACKAGES=("${kept[@]}")
fi

cache=${YURT_EDGE_CACHE:-$HOME/.cache/yurt-edge}
key=$(printf '%s\n' "$SUITE" "${PACKAGES[@]}" | sha256sum | cut -c1-12)
root="$cache/rootfs/$SUITE-$key"

if [ -f "$root/.complete" ]; then
    echo "$root"
    exit 0
fi

command -v debootstrap >/dev/null || { echo "node-rootfs: debootstrap is needed (apt-get install debootstrap)" >&2; exit 1; }

# Use the same Debian mirror this machine's apt uses; never hard-code one.
mirror=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)[[:space:]]*$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)
if [ -z "$mirror" ]; then
    mirror=$(awk '$1=="deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
[ -n "$mirror" ] || { echo "node-rootfs: no Debian mirror found in apt's sources" >&2; exit 1; }

rm -rf "$root.tmp"
mkdir -p "$(dirname "$root")"
include=$(IFS=,; echo "${PACKAGES[*]}")
echo "node-rootfs: debootstrap $SUITE with $include" >&2
debootstrap --variant=minbase --include="$include" "$SUITE" "$root.tmp" "$mirror" >&2

# Boot-time trimming: no serial console to wait for, no units that need real hardware.
for unit in serial-getty@ttyS0.service getty@tty1.service console-getty.service systemd-udevd.service \
    systemd-udev-trigger.service systemd-udev-settle.service systemd-networkd-wait-online.service \
    systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
    systemd-remount-fs.service systemd-modules-load.service sys-kernel-config.mount sys-kernel-debug.mount \
    sys-kernel-tracing.mount sys-fs-fuse-connections.mount dev-hugepages.mount getty.target; do
    ln -sf /dev/null "$root.tmp/etc/systemd/system/$unit"
done
# containerd starts when the harness has written its configuration, not at boot.
rm -f "$root.tmp/etc/systemd/system/multi-user.target.wants/containerd.service"
apt_clean() { rm -rf "$root.tmp/var/cache/apt/archives/"*.deb "$root.tmp/var/lib/apt/lists/"*; }
apt_clean
if [ "${NODE_PYTHON:-yes}" = no ] && ls "$root.tmp"/usr/bin/python3* >/dev/null 2>&1; then
    echo "node-rootfs: python3 came in as a dependency; this root was meant to have none" >&2
    exit 1
fi
touch "$root.tmp/.complete"
mv "$root.tmp" "$root"
echo "$root"
