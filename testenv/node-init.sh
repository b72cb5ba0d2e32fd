#!/bin/sh
# PID 1 of a test node's fresh PID, mount, UTS, IPC, network and cgroup namespaces (started by testenv.node
# through `unshare`). Assembles the node's root from the cached Debian root (read-only lower layer) and this
# run's upper layer, mounts what systemd needs, waits for the cloud link (eth0, moved in by the harness),
# then becomes systemd. Nothing mounted here is visible outside the namespace, so when the node's processes
# end, its mounts go with them.
#
# Arguments: LOWER UPPER WORK STATE HOSTNAME ADDRESS/PREFIX GATEWAY
set -eu
lower=$1 upper=$2 work=$3 state=$4 name=$5 address=$6 gateway=$7
root=$state/root

mount --make-rprivate /
mkdir -p "$root"
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$root"

# State that containerd's and kubelet's own overlay mounts need a real file system under.
for dir in var/lib/containerd var/lib/kubelet var/lib/yurt-edge var/log; do
    mkdir -p "$state/$dir" "$root/$dir"
    mount --bind "$state/$dir" "$root/$dir"
done

mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount -t tmpfs -o mode=755 cgroup "$root/sys/fs/cgroup"
# Every cgroup hierarchy of the host, seen from this cgroup namespace: the node's subtree is its root.
awk '$3 == "cgroup" || $3 == "cgroup2" {print $2, $3, $4}' /proc/self/mounts | while read -r path fstype opts; do
    sub=${path#/sys/fs/cgroup/}
    [ "$sub" != "$path" ] || continue
    mkdir -p "$root/sys/fs/cgroup/$sub"
    mount -t "$fstype" -o "$opts" "$fstype" "$root/sys/fs/cgroup/$sub"
done
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=755,size=256m tmpfs "$root/run"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"

hostname "$name"
ip link set lo up
tries=0
until ip link show eth0 >/dev/null 2>&1; do
    tries=$((tries + 1))
    [ "$tries" -lt 200 ] || { echo "node-init: the cloud link eth0 never arrived" >&2; exit 1; }
    sleep 0.05
done
ip addr add "$address" dev eth0
ip link set eth0 up
ip route add default via "$gateway"

cd "$root"
mkdir -p .oldroot
pivot_root . .oldroot
umount -l /.oldroot
rmdir /.oldroot
export container=yurt-edge-testenv
exec /lib/systemd/systemd --log-target=console --show-status=false
