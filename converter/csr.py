"""Which certificate signing requests yurt-manager approves: a pure decision, no I/O.

yurt-manager is responsible for two kinds of request, and leaves every other one alone (other approvers,
such as kube-controller-manager's for kubelet client certificates, or a person, decide those):

- serving certificates of a node's components (yurthub's HTTPS port for pods): signer
  `kubernetes.io/kubelet-serving`. Approved only when asked by `system:node:<n>` (group `system:nodes`)
  for CN `system:node:<n>`, O exactly `system:nodes`, usages within digital signature, key encipherment
  and server auth (server auth required), and subject alternative names limited to loopback,
  169.254.2.1 (yurthub's address for pods), the node's own addresses and names, and the `kubernetes`
  Service's ClusterIPs and DNS names. No e-mail or URI names.
- yurthub client certificates: signer `kubernetes.io/kube-apiserver-client` with O `openyurt:yurthub`.
  Approved only for CN `system:node:<n>`, O = {`openyurt:yurthub`, `system:nodes`} plus optional
  `openyurt:tenant:*`, usages client auth plus digital signature and/or key encipherment, no SANs, asked
  by that node itself (`system:node:<n>`) or with a bootstrap token (group `system:bootstrappers`).

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
HUB_POD_ADDRESS = "169.254.2.1"
LOOPBACK = frozenset({"127.0.0.1", "::1"})


@dataclasses.dataclass(frozen=True)
class Decision:
    verdict: Literal["approve", "deny", "ignore"]
    reason: str
    message: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Context:
    node_addresses: dict[str, frozenset[str]]
    """Every node's name mapped to its addresses (status.addresses: IPs and host names)."""
    service_ips: frozenset[str]
    """ClusterIPs of the `default/kubernetes` Service."""
    cluster_domain: str = "cluster.local"


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


def decide(csr: Obj, ctx: Context) -> Decision:
    spec = csr.get("spec", {})
    signer = spec.get("signerName", "")
    if _finished(csr):
        return _ignore("already decided")
    if signer not in (SERVING_SIGNER, CLIENT_SIGNER):
        return _ignore(f"signer {signer} is not ours")
    request = _parse(csr)
    if request is None:
        if signer == SERVING_SIGNER:
            return _deny("BadRequest", "the request is not a valid PEM certificate request with a valid signature")
        return _ignore("unparsable request for a signer we only partly serve")
    cn, orgs = _names(request)
    if signer == CLIENT_SIGNER:
        if HUB_ORG not in orgs:
            return _ignore("not a yurthub client certificate")
        return _client(spec, request, cn, orgs)
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
    if node not in ctx.node_addresses:
        return _deny("UnknownNode", f"node {node!r} does not exist")
    ips, dns, other = _sans(request)
    if other:
        return _deny("BadSubjectAltName", "only IP and DNS subject alternative names are allowed")
    if not ips and not dns:
        return _deny("BadSubjectAltName", "a serving certificate needs at least one IP or DNS name")
    own = ctx.node_addresses[node]
    allowed_ips = {str(ipaddress.ip_address(a)) for a in own if _is_ip(a)} | LOOPBACK | {HUB_POD_ADDRESS}
    allowed_ips |= set(ctx.service_ips)
    svc = ["kubernetes", "kubernetes.default", "kubernetes.default.svc", f"kubernetes.default.svc.{ctx.cluster_domain}"]
    allowed_dns = {a.lower() for a in own if not _is_ip(a)} | {node.lower(), "localhost"} | set(svc)
    bad = [ip for ip in ips if ip not in allowed_ips] + [d for d in dns if d not in allowed_dns]
    if bad:
        return _deny("BadSubjectAltName", f"names not belonging to node {node!r}: {', '.join(bad)}")
    return Decision("approve", "YurtEdgeServingCert", f"serving certificate of node {node}, names checked")


def _client(spec: Obj, request: x509.CertificateSigningRequest, cn: list[str], orgs: list[str]) -> Decision:
    node = _node_of(cn)
    if node is None:
        return _deny("BadCommonName", f"a yurthub client certificate must name CN system:node:<node>, not {cn}")
    extra = [o for o in orgs if o not in (HUB_ORG, NODES_GROUP) and not o.startswith("openyurt:tenant:")]
    if NODES_GROUP not in orgs or extra:
        return _deny("BadOrganization", f"organizations must be openyurt:yurthub and system:nodes, not {orgs}")
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
    if username != cn[0] and "system:bootstrappers" not in groups:
        return _deny("WrongRequester", f"{username!r} may not ask for the yurthub certificate of node {node!r}")
    return Decision("approve", "YurtEdgeHubClientCert", f"yurthub client certificate of node {node}")


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
