#!/usr/bin/env bash
# Install what `make demo` and `make test` need on a fresh Debian machine, skipping what is already there:
# Debian packages, the virtualenv with yurt-edge and its test extras (and one per extra supported Python,
# hack/extra-pythons.sh), the reference Kubernetes binaries (and CoreDNS) and the node's Debian root (both
# cached outside the repository).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(debootstrap busybox-static iptables iproute2 util-linux file ca-certificates binutils time)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.yurt-edge-installed
want=$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing yurt-edge and its test dependencies into .venv" >&2
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test]'
    echo "$want" > "$stamp"
fi

hack/extra-pythons.sh
hack/build-binaries.sh >/dev/null
hack/build-binaries.sh coredns >/dev/null
hack/node-rootfs.sh >/dev/null
