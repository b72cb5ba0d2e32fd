"""Which certificate signing requests yurt-manager approves: a pure decision, no I/O.

yurt-manager is responsible for two kinds of request, and leaves every other one alone, neither approved nor
denied (other approvers, such as kube-controller-manager's for kubelet client certificates, another
controller for kubelets' own serving certificates, or a person, decide those):

- yurthub's serving certificate (its HTTPS door for pods): signer `kubernetes.io/kubelet-serving` AND the
  label `app.kubernetes.io/managed-by: yurthub` that yurthub puts on its requests (and `yurtctl revert`
  deletes them by). The label only makes a request ours to judge: anyone may set it, so every check below
  still applies. A kubelet's own serving request (same signer, no label) is not ours.
  Approved only when asked by `system:node:<n>` (group `system:nodes`) for CN `system:node:<n>`, O exactly
  `system:nodes`, usages within digital signature, key encipherment and server auth (server auth
  required), for an existing Node, and with subject alternative names limited to:
  the door address (`--hub-door-addresses`, 169.254.2.1: pods reach yurthub there), the node's own name,
  and the node's own InternalIP/ExternalIP addresses, unless another Node lists that address or the
  kube-apiserver's serving certificate carries it (or the name). The `kubernetes` Service's names and
  ClusterIPs, `localhost` and loopback are approved only with `--approve-apiserver-names` (off by default):
  a certificate for them, signed by the cluster CA, lets a node impersonate the apiserver to pods that
  trust that CA. The apiserver's own names (its public name and addresses) are never approved. No e-mail or
  URI names.
- yurthub client certificates: signer `kubernetes.io/kube-apiserver-client` with O `openyurt:yurthub`.
  Approved only for CN `system:node:<n>`, O = {`openyurt:yurthub`, `system:nodes`} plus tenant groups
  `openyurt:tenant:*` listed in `--allowed-tenant-groups` (none by default), usages client auth plus
  digital signature and/or key encipherment, no SANs, and asked either by that node itself
  (`system:node:<n>`), or with a bootstrap token (`system:bootstrap:<id>`, group `system:bootstrappers`)
  only while no Node `<n>` exists. The stock csrapprover of kube-controller-manager gives a bootstrap-token
  holder a kubelet client certificate for any node name; we are stricter because this certificate is also
  a node's tunnel identity: a token holder may join a new node (as `kubeadm join` does, before its kubelet
  registers it) but cannot become an existing node; an existing node's yurthub renews with its own identity.

A request in our charge that fails a check is denied with the reason; one already approved or denied is
never touched again.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
from typing import Any, Literal

from cryptography import x509
from cryptography.x509.oid import NameOID

Obj = dict[str, Any]
SERVING_SIGNER = "kubernetes.io/kubelet-serving"
CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client"
HUB_ORG = "openyurt:yurthub"
NODES_GROUP = "system:nodes"
BOOTSTRAPPERS = "system:bootstrappers"
HUB_POD_ADDRESS = "169.254.2.1"
LOOPBACK = frozenset({"127.0.0.1", "::1"})
HUB_LABEL = ("app.kubernetes.io/managed-by", "yurthub")
"""The label yurthub puts on its CSRs: what makes a kubelet-serving request ours to judge."""
NODE_IP_TYPES = frozenset({"InternalIP", "ExternalIP"})


@dataclasses.dataclass(frozen=True)
class Decision:
    verdict: Literal["approve", "deny", "ignore"]
    reason: str
    message: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Context:
    nodes: dict[str, frozenset[tuple[str, str]]]
    """Every Node's name mapped to its status.addresses as (type, address)."""
    service_ips: frozenset[str]
    """ClusterIPs of the `default/kubernetes` Service."""
    apiserver_names: frozenset[str]
    """Subject alternative names of the kube-apiserver's serving certificate (IPs as text, DNS names), plus
    any configured as reserved: never approved for a node (save the `kubernetes` ones under
    `approve_apiserver_names`)."""
    cluster_domain: str = "cluster.local"
    door_addresses: frozenset[str] = frozenset({HUB_POD_ADDRESS})
    """Where pods reach yurthub's HTTPS door."""
    approve_apiserver_names: bool = False
    """Also approve loopback, `localhost` and the `kubernetes` Service's names and ClusterIPs."""
    tenant_groups: frozenset[str] = frozenset()
    """`openyurt:tenant:*` organizations a yurthub client certificate may carry."""

    def claimed_by_others(self, node: str) -> set[str]:
        """Every address (any type) that a Node other than `node` lists."""
        return {_canonical(a) for name, pairs in self.nodes.items() if name != node for _, a in pairs}

    def kubernetes_names(self) -> tuple[frozenset[str], frozenset[str]]:
        """(IPs, DNS names) a pod uses for the apiserver: loopback, the Service's ClusterIPs and names."""
        dns = {"kubernetes", "kubernetes.default", "kubernetes.default.svc", "localhost"}
        dns.add(f"kubernetes.default.svc.{self.cluster_domain}")
        return LOOPBACK | {_canonical(i) for i in self.service_ips}, frozenset(dns)


def _ignore(why: str) -> Decision:
    return Decision("ignore", "NotOurs", why)


def _deny(reason: str, message: str) -> Decision:
    return Decision("deny", reason, message)


def _finished(csr: Obj) -> bool:
    return any(c.get("type") in ("Approved", "Denied", "Failed") for c in csr.get("status", {}).get("conditions") or [])


def _parse(csr: Obj) -> x509.CertificateSigningRequest | None:
    try:
        request = x509.load_pem_x509_csr(base64.b64decode(csr["spec"]["request"]))
    except (KeyError, TypeError, ValueError):
        return None
    return request if request.is_signature_valid else None


def _names(request: x509.CertificateSigningRequest) -> tuple[list[str], list[str]]:
    cn = [str(a.value) for a in request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    orgs = [str(a.value) for a in request.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    return cn, orgs


def _sans(request: x509.CertificateSigningRequest) -> tuple[list[str], list[str], bool]:
    """(IPs, DNS names, whether any other kind of name is present)."""
    try:
        ext = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], [], False
    ips = [str(ip) for ip in ext.get_values_for_type(x509.IPAddress)]
    dns = [str(d).lower() for d in ext.get_values_for_type(x509.DNSName)]
    return ips, dns, len(ips) + len(dns) != len(list(ext))


def _labelled_by_hub(csr: Obj) -> bool:
    labels = (csr.get("metadata") or {}).get("labels") or {}
    return bool(labels.get(HUB_LABEL[0]) == HUB_LABEL[1])


def decide(csr: Obj, ctx: Context) -> Decision:
    spec = csr.get("spec", {})
    signer = spec.get("signerName", "")
    if _finished(csr):
        return _ignore("already decided")
    if signer not in (SERVING_SIGNER, CLIENT_SIGNER):
        return _ignore(f"signer {signer} is not ours")
    if signer == SERVING_SIGNER and not _labelled_by_hub(csr):
        return _ignore("a kubelet-serving request not made by yurthub (no managed-by=yurthub label)")
    request = _parse(csr)
    if request is None:
        if signer == SERVING_SIGNER:
            return _deny("BadRequest", "the request is not a valid PEM certificate request with a valid signature")
        return _ignore("unparsable request for a signer we only partly serve")
    cn, orgs = _names(request)
    if signer == CLIENT_SIGNER:
        if HUB_ORG not in orgs:
            return _ignore("not a yurthub client certificate")
        return _client(spec, request, cn, orgs, ctx)
    return _serving(spec, request, cn, orgs, ctx)


def _usages(spec: Obj) -> set[str]:
    return set(spec.get("usages") or [])


def _node_of(cn: list[str]) -> str | None:
    if len(cn) != 1 or not cn[0].startswith("system:node:") or cn[0] == "system:node:":
        return None
    return cn[0].removeprefix("system:node:")


def _serving(
    spec: Obj, request: x509.CertificateSigningRequest, cn: list[str], orgs: list[str], ctx: Context
) -> Decision:
    node = _node_of(cn)
    if node is None:
        return _deny("BadCommonName", f"a node serving certificate must name CN system:node:<node>, not {cn}")
    username, groups = spec.get("username", ""), spec.get("groups") or []
    if username != cn[0] or NODES_GROUP not in groups:
        return _deny("WrongRequester", f"{username!r} may not ask for a serving certificate of node {node!r}")
    if orgs != [NODES_GROUP]:
        return _deny("BadOrganization", f"organizations must be exactly [system:nodes], not {orgs}")
    usages = _usages(spec)
    if "server auth" not in usages or not usages <= {"digital signature", "key encipherment", "server auth"}:
        return _deny("BadUsages", f"usages {sorted(usages)} are not those of a serving certificate")
    if node not in ctx.nodes:
        return _deny("UnknownNode", f"node {node!r} does not exist")
    ips, dns, other = _sans(request)
    if other:
        return _deny("BadSubjectAltName", "only IP and DNS subject alternative names are allowed")
    if not ips and not dns:
        return _deny("BadSubjectAltName", "a serving certificate needs at least one IP or DNS name")
    bad = _foreign_names(node, [_canonical(i) for i in ips], dns, ctx)
    if bad:
        return _deny("BadSubjectAltName", f"names not approved for node {node!r}: {'; '.join(bad)}")
    return Decision("approve", "YurtEdgeServingCert", f"serving certificate of node {node}, names checked")


def _foreign_names(node: str, ips: list[str], dns: list[str], ctx: Context) -> list[str]:
    """Each requested name that `node` may not have, with why."""
    k8s_ips, k8s_dns = ctx.kubernetes_names()
    doors = {_canonical(d) for d in ctx.door_addresses}
    reserved = {_canonical(n) if _is_ip(n) else n.lower() for n in ctx.apiserver_names}
    own = {_canonical(a) for t, a in ctx.nodes[node] if t in NODE_IP_TYPES and _is_ip(a)}
    others = ctx.claimed_by_others(node)
    bad: list[str] = []
    for ip in ips:
        if ip in doors:
            continue
        if ip in k8s_ips:
            if not ctx.approve_apiserver_names:
                bad.append(f"{ip} (the apiserver's address for pods; only with --approve-apiserver-names)")
        elif ip in reserved:
            bad.append(f"{ip} (carried by the apiserver's serving certificate)")
        elif ip not in own:
            bad.append(f"{ip} (not an InternalIP/ExternalIP of the node)")
        elif ip in others:
            bad.append(f"{ip} (another node lists it too)")
    for name in dns:
        if name in k8s_dns:
            if not ctx.approve_apiserver_names:
                bad.append(f"{name} (the apiserver's name for pods; only with --approve-apiserver-names)")
        elif name in reserved:
            bad.append(f"{name} (carried by the apiserver's serving certificate)")
        elif name != node.lower():
            bad.append(f"{name} (not the node's name)")
    return bad


def _client(
    spec: Obj, request: x509.CertificateSigningRequest, cn: list[str], orgs: list[str], ctx: Context
) -> Decision:
    node = _node_of(cn)
    if node is None:
        return _deny("BadCommonName", f"a yurthub client certificate must name CN system:node:<node>, not {cn}")
    tenants = [o for o in orgs if o.startswith("openyurt:tenant:")]
    extra = [o for o in orgs if o not in (HUB_ORG, NODES_GROUP) and o not in tenants]
    if NODES_GROUP not in orgs or extra:
        return _deny("BadOrganization", f"organizations must be openyurt:yurthub and system:nodes, not {orgs}")
    unlisted = [t for t in tenants if t not in ctx.tenant_groups]
    if unlisted:
        return _deny("TenantNotAllowed", f"tenant groups {unlisted} are not in --allowed-tenant-groups")
    usages = _usages(spec)
    if (
        "client auth" not in usages
        or not usages <= {"digital signature", "key encipherment", "client auth"}
        or len(usages) < 2
    ):
        return _deny("BadUsages", f"usages {sorted(usages)} are not those of a client certificate")
    ips, dns, other = _sans(request)
    if ips or dns or other:
        return _deny("BadSubjectAltName", "a client certificate carries no subject alternative names")
    username, groups = spec.get("username", ""), spec.get("groups") or []
    if username == cn[0]:
        return Decision("approve", "YurtEdgeHubClientCert", f"yurthub client certificate of node {node}")
    if not (username.startswith("system:bootstrap:") and BOOTSTRAPPERS in groups):
        return _deny("WrongRequester", f"{username!r} may not ask for the yurthub certificate of node {node!r}")
    if node in ctx.nodes:
        return _deny(
            "NodeExists",
            f"node {node!r} exists: a bootstrap token may only join a new node; that node's yurthub asks with "
            f"its own identity system:node:{node}",
        )
    return Decision("approve", "YurtEdgeHubClientCert", f"yurthub client certificate of node {node}")


def _canonical(address: str) -> str:
    """An IP address in one spelling (`::1`, not `0::1`); anything else as it is."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def condition(decision: Decision) -> Obj:
    """The status condition that records `decision` on the request."""
    return {
        "type": "Approved" if decision.verdict == "approve" else "Denied",
        "status": "True",
        "reason": decision.reason,
        "message": decision.message,
    }
