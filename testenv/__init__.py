"""A real Kubernetes on one machine, for yurt-edge's end-to-end tests and demo.

Not part of the yurt-edge distribution. `cluster.Cluster` starts etcd, kube-apiserver, kube-controller-manager
and kube-scheduler on the host (the "cloud"), one real node (a Debian root booted with systemd as PID 1 in its
own namespaces, running containerd and kubelet as units) joined over a veth link that tests can cut, and any
number of kwok nodes. Every process the harness starts lives in one cgroup subtree, so stopping (or cleaning
up after a crashed run) is: kill what is in the subtree, remove it, delete the link.
"""
