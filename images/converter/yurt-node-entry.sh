#!/bin/sh
# yurt-node-entry convert|revert [yurtctl node flags...]
#
# Entry point of yurtctl's per-node Jobs. The container runs with hostPID, privileged, and the node's root
# file system mounted at /host. It hands the node the wheels this image carries, then runs
# `yurtctl node <action>` in the node's own namespaces (nsenter into PID 1), with the node's own python3:
# yurthub must run from the node's disk as a systemd service, independent of any container, so that it
# keeps serving while the cloud is gone and across reboots. A virtualenv it creates is marked so that
# revert removes it again.
set -eu
action=$1
shift
state=/var/lib/yurt-edge/convert
mkdir -p "/host$state/wheels"
cp /opt/yurt-edge/wheels/*.whl "/host$state/wheels/"
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
nsenter -t 1 -m -u -i -n -p -- /bin/sh -euc '
state=$1 action=$2
shift 2
if [ ! -x /opt/yurt-edge/bin/yurtctl ]; then
    if ! command -v python3 >/dev/null 2>&1; then
        echo "yurt-node-entry: this node has no python3; yurthub needs Python 3.11 with venv (Debian 12: apt-get install python3 python3-venv)" >&2
        exit 3
    fi
    [ -e /opt/yurt-edge ] || touch "$state/created-venv"
    python3 -m venv /opt/yurt-edge
    /opt/yurt-edge/bin/pip install -q --no-index --find-links "$state/wheels" yurt-edge
elif [ "$action" = convert ]; then
    /opt/yurt-edge/bin/pip install -q --no-index --find-links "$state/wheels" --upgrade yurt-edge
fi
exec /opt/yurt-edge/bin/yurtctl node "$action" "$@"
' yurt-node-entry "$state" "$action" "$@" || rc=$?
rm -f "$token"
exit "$rc"
