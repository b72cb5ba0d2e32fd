"""`yurtctl join`, the cloud side of adding a new machine: a short-lived bootstrap token, the RBAC a token
holder needs to join, and the one command to run on the machine.

What it makes, through the admin's kubeconfig, each step idempotent:
- a bootstrap token Secret `kube-system/bootstrap-token-<id>` (type `bootstrap.kubernetes.io/token`) with an
  `expiration` `--ttl` from now (the controller-manager's tokencleaner deletes it then; the apiserver refuses
  it from that moment anyway), usages authentication and signing (signing: the bootstrapsigner signs
  `cluster-info` with it), and the extra group `JOIN_GROUP`, so only tokens made here carry the join rights
  below, not every bootstrap token of the cluster;
- the RBAC kubeadm sets up for joining, created when missing and never changed when present: `JOIN_GROUP` may
  create CSRs (`system:node-bootstrapper`) and has its node client CSR approved by the controller-manager
  (`...:nodeclient`), nodes renew their own (`...:selfnodeclient`), and `JOIN_GROUP` may read the
  `kube-system/kubelet-config` ConfigMap (a kubeadm cluster's kubelet configuration, which the machine uses
  when it is there);
- the public `kube-public/cluster-info` ConfigMap (the cluster's CA and address, readable anonymously, as
  kubeadm publishes it) when the cluster has none, made from the admin kubeconfig's CA and server.

The machine checks that CA by its hash (`ca_cert_hash`, printed in the command) before trusting anything
the cloud says; the token is printed once (or written to an owner-only file with `--token-out`), never put
into the command, which reads it from a file or from standard input.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import json
import secrets
import shlex
import string
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from converter import access, appset, errors, jointoken

Obj = dict[str, Any]
NAMESPACE = "kube-system"
JOIN_GROUP = "system:bootstrappers:yurt-edge:join"
"""The extra group of the tokens `yurtctl join` makes; the join RBAC is bound to it."""
TOKEN_SECRET_PREFIX = "bootstrap-token-"  # noqa: S105 - a name prefix, not a secret
CLUSTER_INFO = "/api/v1/namespaces/kube-public/configmaps/cluster-info"
KUBELET_CONFIG = "/api/v1/namespaces/kube-system/configmaps/kubelet-config"
MANAGED_BY = {"app.kubernetes.io/managed-by": "yurtctl"}
_ALPHABET = string.ascii_lowercase + string.digits


def new_token() -> str:
    """A fresh bootstrap token `<6>.<16>` of [a-z0-9] from the system's CSPRNG (kubeadm's format)."""
    return f"{_random(6)}.{_random(16)}"


def _random(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def ca_cert_hash(ca_pem: bytes) -> str:
    """kubeadm's CA pin: `sha256:<hex>` of the DER SubjectPublicKeyInfo of the (first) certificate in `ca_pem`.
    Pinning the public key, not the certificate, keeps the pin valid across a re-issued CA with the same key."""
    try:
        cert = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as exc:
        raise errors.PreflightFailed(f"the cluster CA is not a PEM certificate: {exc}") from exc
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def token_secret(token: str, ttl: datetime.timedelta, now: datetime.datetime, description: str) -> Obj:
    """The bootstrap token Secret: expires `ttl` after `now`, authentication and signing, `JOIN_GROUP`."""
    token_id, token_value = jointoken.parse(token, "the new token").split(".")
    expiry = (now + ttl).astimezone(datetime.UTC)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "bootstrap.kubernetes.io/token",
        "metadata": {"name": TOKEN_SECRET_PREFIX + token_id, "namespace": NAMESPACE, "labels": dict(MANAGED_BY)},
        "stringData": {
            "token-id": token_id,
            "token-secret": token_value,
            "expiration": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "usage-bootstrap-authentication": "true",
            "usage-bootstrap-signing": "true",
            "auth-extra-groups": JOIN_GROUP,
            "description": description,
        },
    }


def _binding(kind: str, name: str, role: str, group: str, namespace: str = "") -> Obj:
    meta: Obj = {"name": name, "labels": dict(MANAGED_BY)}
    if namespace:
        meta["namespace"] = namespace
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind.removesuffix("Binding"), "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}],
    }


def rbac_objects() -> list[Obj]:
    """kubeadm's join RBAC, bound to `JOIN_GROUP` (and `system:nodes` for renewals)."""
    csr_role = "system:certificates.k8s.io:certificatesigningrequests:"
    return [
        _binding("ClusterRoleBinding", "yurt-edge:join:node-bootstrapper", "system:node-bootstrapper", JOIN_GROUP),
        _binding("ClusterRoleBinding", "yurt-edge:join:node-autoapprove", csr_role + "nodeclient", JOIN_GROUP),
        _binding(
            "ClusterRoleBinding", "yurt-edge:join:node-autoapprove-renewal", csr_role + "selfnodeclient", "system:nodes"
        ),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "yurt-edge:join:kubelet-config", "namespace": NAMESPACE, "labels": dict(MANAGED_BY)},
            "rules": [
                {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["kubelet-config"], "verbs": ["get"]}
            ],
        },
        _binding(
            "RoleBinding", "yurt-edge:join:kubelet-config", "yurt-edge:join:kubelet-config", JOIN_GROUP, NAMESPACE
        ),
    ]


def cluster_info_objects(server: str, ca_pem: bytes) -> list[Obj]:
    """kubeadm's public `cluster-info` ConfigMap and the Role letting anyone (`system:anonymous`) read it."""
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "", "cluster": {"server": server, "certificate-authority-data": base64.b64encode(ca_pem).decode()}}
        ],
        "contexts": [],
        "users": [],
    }
    role = "yurt-edge:join:cluster-info"
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "cluster-info", "namespace": "kube-public", "labels": dict(MANAGED_BY)},
            "data": {"kubeconfig": json.dumps(kubeconfig)},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": role, "namespace": "kube-public", "labels": dict(MANAGED_BY)},
            "rules": [
                {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cluster-info"], "verbs": ["get"]}
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": role, "namespace": "kube-public", "labels": dict(MANAGED_BY)},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:anonymous"}],
        },
    ]


def cluster_info_ca(config_map: Obj) -> tuple[str, bytes]:
    """(server, CA PEM) of a `cluster-info` ConfigMap's kubeconfig (JSON or YAML; kubeadm writes YAML)."""
    text = (config_map.get("data") or {}).get("kubeconfig", "")
    try:
        loaded = yaml.safe_load(text) or {}
        cluster = loaded["clusters"][0]["cluster"]
        return str(cluster.get("server", "")), base64.b64decode(cluster["certificate-authority-data"])
    except (yaml.YAMLError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise errors.PreflightFailed(f"cluster-info's kubeconfig has no cluster CA: {exc!r}") from exc


def path_of(obj: Obj) -> str:
    """The collection path an object is created in."""
    kind, meta = obj["kind"], obj["metadata"]
    ns = meta.get("namespace")
    if obj["apiVersion"] == "v1":
        plural = {"Secret": "secrets", "ConfigMap": "configmaps"}[kind]
        return f"/api/v1/namespaces/{ns}/{plural}"
    plural = {"ClusterRoleBinding": "clusterrolebindings", "Role": "roles", "RoleBinding": "rolebindings"}[kind]
    base = "/apis/rbac.authorization.k8s.io/v1"
    return f"{base}/namespaces/{ns}/{plural}" if ns else f"{base}/{plural}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Request:
    server: str
    """The apiserver address the machine reaches (https://host:port)."""
    nodepool: str = ""
    """The NodePool the machine joins (empty: none)."""
    node_name: str = ""
    """The name the machine registers as (empty: its hostname)."""
    ttl: datetime.timedelta = datetime.timedelta(hours=1)
    """How long the token authenticates; short, since it lets its holder join a machine."""
    token_file: str = ""
    """Where the machine's command reads the token from; empty: standard input (`-`)."""


@dataclasses.dataclass(frozen=True)
class Issued:
    token: str
    expires: datetime.datetime
    ca_hash: str
    command: str
    created: tuple[str, ...]
    """What did not exist before and was created (kind/namespace/name)."""


def node_command(req: Request, ca_hash: str) -> str:
    """The one command to run on the machine. It carries no secret: the token comes from a file or stdin."""
    argv = ["yurtctl", "node", "join", "--server", req.server, "--ca-cert-hash", ca_hash]
    if req.nodepool:
        argv += ["--nodepool", req.nodepool]
    if req.node_name:
        argv += ["--node-name", req.node_name]
    argv += ["--token-file", req.token_file or "-"]
    return "/opt/yurt-edge/bin/" + shlex.join(argv)


def check_pool(api: access.Api, pool: str) -> None:
    """The pool must exist and be an edge pool (a joined machine is labelled an edge worker)."""
    if not pool:
        return
    try:
        found = api.get(f"{appset.NODEPOOLS}/{pool}")
    except errors.NotFound:
        found = None
    if found is None:
        raise errors.PreflightFailed(
            f"NodePool {pool} not found (is the cluster converted? `yurtctl get pools` lists the pools)"
        )
    kind = (found.get("spec") or {}).get("type") or "Edge"
    if kind != "Edge":
        raise errors.PreflightFailed(f"NodePool {pool} is of type {kind}; a joined machine is an edge node")


def _ensure(api: access.Api, obj: Obj) -> bool:
    """Create `obj` unless one of that name exists (left as it is: an admin's or kubeadm's). True if created."""
    meta = obj["metadata"]
    path = path_of(obj)
    if api.get(f"{path}/{meta['name']}") is not None:
        return False
    try:
        api.create(path, obj)
    except errors.Conflict:
        return False
    return True


def issue(
    api: access.Api, req: Request, *, admin_ca: bytes, now: datetime.datetime, token: str | None = None
) -> Issued:
    """Check the pool, put the RBAC and cluster-info in place, create the token Secret; what to print."""
    if req.ttl <= datetime.timedelta(0):
        raise errors.PreflightFailed("--ttl must be positive")
    check_pool(api, req.nodepool)
    info = api.get(CLUSTER_INFO)
    objects = rbac_objects()
    if info is None:
        objects += cluster_info_objects(req.server, admin_ca)
        ca_pem = admin_ca
    else:
        ca_pem = cluster_info_ca(info)[1]
    created = []
    for obj in objects:
        if _ensure(api, obj):
            meta = obj["metadata"]
            created.append(f"{obj['kind']}/{meta.get('namespace', '')}/{meta['name']}".replace("//", "/"))
    token = token or new_token()
    target = req.node_name or "a new machine"
    pool = f" into NodePool {req.nodepool}" if req.nodepool else ""
    secret = token_secret(token, req.ttl, now, f"yurtctl join: {target}{pool}")
    api.create(path_of(secret), secret)
    created.append(f"Secret/{NAMESPACE}/{secret['metadata']['name']}")
    ca_hash = ca_cert_hash(ca_pem)
    return Issued(token, now + req.ttl, ca_hash, node_command(req, ca_hash), tuple(created))


def render(issued: Issued, req: Request, token_out: str) -> str:
    """What `yurtctl join` prints: the expiry, the token (unless written to `token_out`) and the command."""
    until = issued.expires.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = [f"bootstrap token valid until {until} (--ttl); it lets its holder join one machine, keep it secret."]
    if token_out:
        lines.append(f"token written to {token_out} (owner-only): copy it to the same path on the machine, owner-only")
        lines.append("(chmod 600), then run there as root:")
    else:
        lines.append(f"token: {issued.token}")
        lines.append("run on the new machine as root, and paste the token when asked (or pipe it in on stdin):")
    lines.append(f"  {issued.command}")
    return "\n".join(lines) + "\n"
