"""Services on the real edge node, as a kubeadm cluster has them once `yurtctl convert` put the node behind
yurthub: kube-proxy and CoreDNS, and the HTTPS door of yurthub that CoreDNS reaches the API through.

- kube-proxy: kubeadm's DaemonSet (hostNetwork, privileged, its own `kube-system/kube-proxy` ServiceAccount
  bound to `system:node-proxier`), iptables mode, the image carrying Debian's iptables (`images`). Its
  kubeconfig (kubeadm's `kube-proxy` ConfigMap, key `kubeconfig.conf`: the pod's service-account token and
  CA) points at yurthub's HTTPS door instead of the cloud, where OpenYurt's `inclusterconfig` filter sends it
  too. Not the plain port: client-go sends a kubeconfig's credentials only over TLS, so there kube-proxy would
  be the node (whose RBAC has no EndpointSlices), measured.
- CoreDNS: kubeadm's Deployment (2 replicas), RBAC (`system:coredns`), ConfigMap and `kube-dns` Service at
  `controlplane.CLUSTER_DNS`, the address kubelet's clusterDNS names (`cluster.Settings(services=True)`). It
  has no kubeconfig: in-cluster config, so `KUBERNETES_SERVICE_HOST/PORT`, which kubelet derives from the
  `masterservice`-filtered `kubernetes` Service, lead it to the door with its own token.
- The door needs a serving certificate an operator would supply (`door_certificate`): signed by the cluster
  CA, for the door's address and the names a pod uses for the API.

Deploy after yurthub serves the node (`hubinstall.put_behind_yurthub`), on a cluster started with
`Settings(services=True)`.
"""

from __future__ import annotations

import json
from typing import Any

from testenv import controlplane, hubinstall, images
from testenv.cluster import Cluster
from testenv.kubectl import wait_for

DOOR_IP, DOOR_PORT = "169.254.2.1", 10268
PKI = "/var/lib/yurthub/pki"
DOOR_ARGS = f"--secure-cert-file={PKI}/yurthub-server.crt --secure-key-file={PKI}/yurthub-server.key"
"""yurthub flags that open its HTTPS door with the certificate `door_certificate` wrote."""
API_NAMES = ("kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")
SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105 - a path, not a secret
SA_CA = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
RBAC = "rbac.authorization.k8s.io"

COREFILE = """.:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    cache 30
    loadbalance
}
"""
"""kubeadm's Corefile without `forward`, `loop` and `reload`: nothing upstream answers DNS on this machine."""


def door_certificate(kube: Cluster, *, rsa_key: bool = False) -> None:
    """Write the door's serving certificate and key on the node (before yurthub starts with `DOOR_ARGS`)."""
    if kube.plane is None:
        raise RuntimeError("no control plane")
    node = kube.node.settings.name
    serving = kube.plane.ca.issue(
        f"system:node:{node}",
        organizations=("system:nodes",),
        server=True,
        ip_addresses=(DOOR_IP,),
        dns_names=API_NAMES,
        rsa_key=rsa_key,
    )
    hubinstall.write(kube.node, f"{PKI}/yurthub-server.crt", serving.cert_pem.decode())
    hubinstall.write(kube.node, f"{PKI}/yurthub-server.key", serving.key_pem.decode(), mode=0o600)
    kube.node.run(["chmod", "-R", "go-rwx", PKI])


def _binding(name: str, role: str, account: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{RBAC}/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": "kube-system"}],
    }


def _account(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": "kube-system"}}


def kube_proxy_objects(cluster_cidr: str) -> list[dict[str, Any]]:
    """kubeadm's kube-proxy addon, its kubeconfig pointing at yurthub's HTTPS door with the pod's own token."""
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": "/var/lib/kube-proxy/kubeconfig.conf"},
        "mode": "iptables",
        "clusterCIDR": cluster_cidr,
        # The node is a network namespace of a shared kernel: the conntrack table size is the host's to set
        # (not writable here), so leave conntrack sysctls as they are, as kind does.
        "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "yurthub", "cluster": {"server": f"https://{DOOR_IP}:{DOOR_PORT}", "certificate-authority": SA_CA}}
        ],
        "users": [{"name": "kube-proxy", "user": {"tokenFile": SA_TOKEN}}],
        "contexts": [{"name": "default", "context": {"cluster": "yurthub", "user": "kube-proxy"}}],
        "current-context": "default",
    }
    labels = {"k8s-app": "kube-proxy"}
    return [
        _account("kube-proxy"),
        _binding("kubeadm:node-proxier", "system:node-proxier", "kube-proxy"),
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "kube-proxy", "namespace": "kube-system", "labels": {"app": "kube-proxy"}},
            "data": {"config.conf": json.dumps(config, indent=2), "kubeconfig.conf": json.dumps(kubeconfig, indent=2)},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": "kube-proxy", "namespace": "kube-system", "labels": labels},
            "spec": {
                "selector": {"matchLabels": labels},
                "updateStrategy": {"type": "RollingUpdate"},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "hostNetwork": True,
                        "serviceAccountName": "kube-proxy",
                        "priorityClassName": "system-node-critical",
                        "nodeSelector": {"kubernetes.io/os": "linux"},
                        "tolerations": [{"operator": "Exists"}],
                        "terminationGracePeriodSeconds": 2,
                        "containers": [
                            {
                                "name": "kube-proxy",
                                "image": images.KUBE_PROXY_IMAGE,
                                "imagePullPolicy": "Never",
                                "command": [
                                    "/usr/local/bin/kube-proxy",
                                    "--config=/var/lib/kube-proxy/config.conf",
                                    "--hostname-override=$(NODE_NAME)",
                                ],
                                "env": [
                                    {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
                                ],
                                "securityContext": {"privileged": True},
                                "volumeMounts": [
                                    {"name": "kube-proxy", "mountPath": "/var/lib/kube-proxy"},
                                    {"name": "xtables-lock", "mountPath": "/run/xtables.lock"},
                                ],
                            }
                        ],
                        "volumes": [
                            {"name": "kube-proxy", "configMap": {"name": "kube-proxy"}},
                            {"name": "xtables-lock", "hostPath": {"path": "/run/xtables.lock", "type": "FileOrCreate"}},
                        ],
                    },
                },
            },
        },
    ]


def coredns_objects(cluster_dns: str, node: str) -> list[dict[str, Any]]:
    """kubeadm's CoreDNS addon: RBAC, Corefile, a Deployment of 2 and the `kube-dns` Service. The pods are
    kept on `node` (the test cluster's other nodes are kwok's, which run nothing)."""
    labels = {"k8s-app": "kube-dns"}
    return [
        _account("coredns"),
        {
            "apiVersion": f"{RBAC}/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
            ],
        },
        _binding("system:coredns", "system:coredns", "coredns"),
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "coredns", "namespace": "kube-system"},
            "data": {"Corefile": COREFILE},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "coredns", "namespace": "kube-system", "labels": labels},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "coredns",
                        "priorityClassName": "system-cluster-critical",
                        "dnsPolicy": "Default",
                        "nodeSelector": {"kubernetes.io/os": "linux", "kubernetes.io/hostname": node},
                        "tolerations": [
                            {"key": "CriticalAddonsOnly", "operator": "Exists"},
                            {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"},
                        ],
                        "terminationGracePeriodSeconds": 2,
                        "containers": [
                            {
                                "name": "coredns",
                                "image": images.COREDNS_IMAGE,
                                "imagePullPolicy": "Never",
                                "args": ["-conf", "/etc/coredns/Corefile"],
                                "ports": [
                                    {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                    {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                                    {"name": "metrics", "containerPort": 9153, "protocol": "TCP"},
                                ],
                                "resources": {
                                    "limits": {"memory": "170Mi"},
                                    "requests": {"cpu": "100m", "memory": "70Mi"},
                                },
                                "livenessProbe": {
                                    "httpGet": {"path": "/health", "port": 8080},
                                    "initialDelaySeconds": 60,
                                    "timeoutSeconds": 5,
                                    "failureThreshold": 5,
                                },
                                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
                                "securityContext": {
                                    "allowPrivilegeEscalation": False,
                                    "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
                                    "readOnlyRootFilesystem": True,
                                },
                                "volumeMounts": [
                                    {"name": "config-volume", "mountPath": "/etc/coredns", "readOnly": True}
                                ],
                            }
                        ],
                        "volumes": [
                            {
                                "name": "config-volume",
                                "configMap": {"name": "coredns", "items": [{"key": "Corefile", "path": "Corefile"}]},
                            }
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "kube-dns",
                "namespace": "kube-system",
                "labels": {**labels, "kubernetes.io/name": "CoreDNS"},
            },
            "spec": {
                "selector": labels,
                "clusterIP": cluster_dns,
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                    {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153},
                ],
            },
        },
    ]


def install(kube: Cluster, node: str) -> None:
    """Deploy kube-proxy and CoreDNS (on `node`, the real one) and wait until CoreDNS is ready and kube-proxy
    sends the `kube-dns` Service to it. The node must already go through yurthub with its door open
    (`door_certificate`, `DOOR_ARGS`)."""
    if kube.node.settings.cluster_dns != controlplane.CLUSTER_DNS:
        raise RuntimeError("start the cluster with Settings(services=True): kubelet has no clusterDNS")
    kube.kubectl.apply(
        [*kube_proxy_objects(kube.node.settings.pod_cidr), *coredns_objects(controlplane.CLUSTER_DNS, node)]
    )
    wait_for(
        "kube-proxy's rules for the kube-dns Service",
        lambda: has_rules_for(kube, "kube-system/kube-dns:dns"),
        timeout=180,
    )
    wait_for("CoreDNS to be ready", lambda: ready_replicas(kube, "kube-system", "coredns") == 2, timeout=180)


def has_rules_for(kube: Cluster, service_port: str) -> bool:
    """Whether kube-proxy's iptables rules on the node send `namespace/name:port` somewhere (an endpoint)."""
    rules = kube.node.run(["iptables-save", "-t", "nat"], check=False).stdout
    return any(service_port in line and "-j KUBE-SVC-" in line for line in rules.splitlines())


def endpoints_in_rules(kube: Cluster, service_port: str) -> int:
    """How many endpoints kube-proxy's iptables rules on the node send `namespace/name:port` to."""
    rules = kube.node.run(["iptables-save", "-t", "nat"], check=False).stdout
    marker = f'"{service_port} -> '
    return sum(1 for line in rules.splitlines() if line.startswith("-A KUBE-SVC-") and marker in line)


def addresses_in_rules(kube: Cluster, service_port: str) -> set[str]:
    """The endpoint addresses (without port) kube-proxy's iptables rules on the node send `namespace/name:port`
    to, read from the comments kube-proxy writes on its Service chains (`"ns/name:port -> IP:PORT"`)."""
    rules = kube.node.run(["iptables-save", "-t", "nat"], check=False).stdout
    marker = f'"{service_port} -> '
    found = set()
    for line in rules.splitlines():
        if line.startswith("-A KUBE-SVC-") and marker in line:
            target = line.split(marker, 1)[1].split('"', 1)[0]
            found.add(target.rsplit(":", 1)[0])
    return found


def ready_replicas(kube: Cluster, namespace: str, deployment: str) -> int:
    status = kube.kubectl.get("deployment", deployment, "-n", namespace).get("status", {})
    return int(status.get("readyReplicas", 0))
