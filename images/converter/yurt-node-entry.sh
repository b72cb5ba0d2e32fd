#!/bin/sh
# yurt-node-entry convert|revert [yurtctl node flags...]
#
# Entry point of yurtctl's per-node Jobs. The container runs with hostPID, privileged, and the node's root
# file system mounted at /host. It installs the self-contained executable this image carries
# (/opt/yurt-edge-node: bin/yurthub, bin/yurt-tunnel-agent, bin/yurtctl... and lib/yurt-edge, its own Python
# and every dependency) as the node's /opt/yurt-edge, then runs `yurtctl node <action>` from there in the
# node's own namespaces (nsenter into PID 1): yurthub runs from the node's disk as a systemd service,
# independent of any container, so that it keeps serving while the cloud is gone and across reboots. The
# node needs no Python. An /opt/yurt-edge this script creates is marked (created-install) so that revert
# removes it again; a virtualenv an operator made there (pip install yurt-edge, pyvenv.cfg) is used as it is,
# never replaced nor removed.
set -eu
action=$1
shift
state=/var/lib/yurt-edge/convert
bundle=/opt/yurt-edge-node
target=/host/opt/yurt-edge
mkdir -p "/host$state"
if [ -f "$target/pyvenv.cfg" ] && [ ! -x "$target/bin/yurtctl" ]; then
    echo "yurt-node-entry: /opt/yurt-edge is a virtualenv without yurt-edge: pip install yurt-edge into it, or remove it so the Job installs the executable" >&2
    exit 3
fi
if [ ! -f "$target/pyvenv.cfg" ]; then
    if [ ! -e "$target" ]; then
        touch "/host$state/created-install"
    fi
    # The build stamp says which sources a bundle was built from (the bootloader is the same for every build).
    stamp=lib/yurt-edge/_internal/yurt-edge-build.json
    if [ -x "$target/bin/yurtctl" ] && cmp -s "$target/$stamp" "$bundle/$stamp"; then
        : # this very build is installed already: nothing to copy, the services keep running it
    elif [ "$action" = convert ] || [ ! -x "$target/bin/yurtctl" ]; then
        # A complete copy beside the old one, then two renames: the services keep the files they opened.
        rm -rf "$target.new" "$target.old"
        mkdir -p "$target.new"
        cp -a "$bundle/." "$target.new/"
        if [ -e "$target" ]; then
            mv "$target" "$target.old"
        fi
        mv "$target.new" "$target"
        rm -rf "$target.old"
        # A running service of another build would read its modules from the new files: restart it.
        nsenter -t 1 -m -u -i -n -p -- systemctl try-restart yurthub.service yurt-tunnel-agent.service || true
    fi
fi
# With the tunnel, the Job mounts the tunnel server's CA here; the node step installs it for the agent.
if [ -f /etc/yurt-edge/tunnel-ca/ca.crt ]; then
    cp /etc/yurt-edge/tunnel-ca/ca.crt "/host$state/tunnel-ca.crt"
fi
# With --join-token-file, the Job mounts the token's Secret here (0400). It is copied under umask 077, so
# the node's copy is owner-only from its first moment, and removed once the node step has installed it.
token="/host$state/join-token"
if [ -f /etc/yurt-edge/join-token/token ]; then
    (umask 077 && rm -f "$token" && cp /etc/yurt-edge/join-token/token "$token")
fi
rc=0
nsenter -t 1 -m -u -i -n -p -- /opt/yurt-edge/bin/yurtctl node "$action" "$@" || rc=$?
rm -f "$token"
exit "$rc"
