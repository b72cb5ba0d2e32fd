"""yurt-manager's CSR decisions, as tables: who asks, which signer, which names. Each attack of a node (or a
bootstrap-token holder) on the trust boundary is a row that must be denied or left alone."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from converter import csr
from tests.unit.csrfixtures import request_b64

NODE = "edge-1"
APISERVER = frozenset({"127.0.0.1", "10.96.0.1", "203.0.113.7", "api.example", "kubernetes", "localhost"})
"""What a kube-apiserver's serving certificate typically carries: loopback, the ClusterIP, its public address
and name, the `kubernetes` names."""
CTX = csr.Context(
    nodes={
        NODE: frozenset(
            {
                ("InternalIP", "10.213.0.2"),
                ("ExternalIP", "198.51.100.2"),
                ("Hostname", "edge-1.example"),
                ("InternalIP", "10.213.0.50"),
                ("InternalIP", "203.0.113.7"),
            }
        ),
        "other": frozenset({("InternalIP", "10.213.0.9"), ("InternalIP", "10.213.0.50")}),
        "api.example": frozenset({("InternalIP", "10.213.0.77")}),
        "kubernetes": frozenset({("InternalIP", "10.213.0.78")}),
    },
    service_ips=frozenset({"10.96.0.1"}),
    apiserver_names=APISERVER,
)
SVC = ("kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")
OPEN = dataclasses.replace(CTX, approve_apiserver_names=True)
"""yurt-manager --approve-apiserver-names."""
HUB = {"app.kubernetes.io/managed-by": "yurthub"}
BOOT_USER, BOOT_GROUPS = "system:bootstrap:abcdef", ("system:bootstrappers", "system:authenticated")


def serving(
    user: str = f"system:node:{NODE}",
    cn: str = f"system:node:{NODE}",
    orgs: tuple[str, ...] = ("system:nodes",),
    ips: tuple[str, ...] = ("169.254.2.1", "10.213.0.2"),
    dns: tuple[str, ...] = (),
    usages: tuple[str, ...] = ("digital signature", "key encipherment", "server auth"),
    groups: tuple[str, ...] = ("system:nodes", "system:authenticated"),
    labels: dict[str, str] | None = None,
    **kw: Any,
) -> dict[str, Any]:
    return {
        "metadata": {"name": "r", "labels": HUB if labels is None else labels},
        "spec": {
            "signerName": csr.SERVING_SIGNER,
            "request": request_b64(cn, list(orgs), ips=ips, dns=dns, **kw),
            "username": user,
            "groups": list(groups),
            "usages": list(usages),
        },
    }


def client(
    user: str = f"system:node:{NODE}",
    cn: str = f"system:node:{NODE}",
    orgs: tuple[str, ...] = ("openyurt:yurthub", "system:nodes"),
    usages: tuple[str, ...] = ("digital signature", "key encipherment", "client auth"),
    groups: tuple[str, ...] = ("system:nodes",),
    **kw: Any,
) -> dict[str, Any]:
    return {
        "metadata": {"name": "r"},
        "spec": {
            "signerName": csr.CLIENT_SIGNER,
            "request": request_b64(cn, list(orgs), **kw),
            "username": user,
            "groups": list(groups),
            "usages": list(usages),
        },
    }


def test_a_yurthub_serving_request_from_its_node_is_approved() -> None:
    assert csr.decide(serving(), CTX).verdict == "approve"


def test_the_door_the_nodes_name_and_its_own_internal_and_external_ips_are_fine() -> None:
    names = serving(dns=(NODE,), ips=("169.254.2.1", "10.213.0.2", "198.51.100.2"))
    assert csr.decide(names, CTX).verdict == "approve"
    moved = dataclasses.replace(CTX, door_addresses=frozenset({"169.254.9.9"}))
    assert csr.decide(serving(ips=("169.254.9.9",)), moved).verdict == "approve"
    assert csr.decide(serving(ips=("169.254.2.1",)), moved).reason == "BadSubjectAltName"


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (serving(user="system:node:other"), "WrongRequester"),
        (serving(user="alice", groups=("system:authenticated",)), "WrongRequester"),
        (serving(groups=("system:authenticated",)), "WrongRequester"),
        (serving(user=BOOT_USER, groups=BOOT_GROUPS), "WrongRequester"),
        (serving(cn="admin"), "BadCommonName"),
        (serving(orgs=("system:nodes", "system:masters")), "BadOrganization"),
        (serving(orgs=()), "BadOrganization"),
        (serving(usages=("digital signature", "client auth")), "BadUsages"),
        (serving(usages=("server auth", "client auth")), "BadUsages"),
        (serving(ips=("10.213.0.9",)), "BadSubjectAltName"),
        (serving(ips=("8.8.8.8",)), "BadSubjectAltName"),
        (serving(dns=("evil.example",)), "BadSubjectAltName"),
        (serving(ips=(), dns=()), "BadSubjectAltName"),
        (serving(uris=("spiffe://x/y",)), "BadSubjectAltName"),
        (serving(user="system:node:ghost", cn="system:node:ghost"), "UnknownNode"),
    ],
)
def test_serving_requests_that_fail_a_check_are_denied_with_the_reason(request_: dict[str, Any], reason: str) -> None:
    decision = csr.decide(request_, CTX)
    assert (decision.verdict, decision.reason) == ("deny", reason)
    assert decision.message


@pytest.mark.parametrize(
    ("attack", "request_"),
    [
        ("the kubernetes names", serving(dns=SVC)),
        ("kubernetes.default.svc only", serving(dns=("kubernetes.default.svc",))),
        ("the kubernetes ClusterIP", serving(ips=("10.96.0.1",))),
        ("localhost", serving(dns=("localhost",))),
        ("IPv4 loopback", serving(ips=("127.0.0.1",))),
        ("IPv6 loopback", serving(ips=("::1",))),
        ("the apiserver's public address, written into its own status", serving(ips=("203.0.113.7",))),
        (
            "a node named like the apiserver's public name",
            serving(user="system:node:api.example", cn="system:node:api.example", dns=("api.example",), ips=()),
        ),
        (
            "a node named kubernetes",
            serving(user="system:node:kubernetes", cn="system:node:kubernetes", dns=("kubernetes",), ips=()),
        ),
        ("an address another node lists too", serving(ips=("10.213.0.50",))),
        ("another node's address", serving(ips=("10.213.0.9",))),
        ("its Hostname-type address (not its name)", serving(dns=("edge-1.example",))),
        ("an IP in a non-canonical spelling of loopback", serving(ips=("0:0:0:0:0:0:0:1",))),
    ],
)
def test_a_node_cannot_get_a_serving_certificate_for_names_that_are_not_its_own(
    attack: str, request_: dict[str, Any]
) -> None:
    decision = csr.decide(request_, CTX)
    assert (decision.verdict, decision.reason) == ("deny", "BadSubjectAltName"), attack


def test_the_kubernetes_names_only_with_the_explicit_flag_and_never_the_apiservers_own() -> None:
    kube = serving(ips=("169.254.2.1", "127.0.0.1", "::1", "10.96.0.1"), dns=(*SVC, "localhost"))
    assert csr.decide(kube, CTX).verdict == "deny"
    assert csr.decide(kube, OPEN).verdict == "approve"
    assert csr.decide(serving(ips=("203.0.113.7",)), OPEN).reason == "BadSubjectAltName"
    named = serving(user="system:node:api.example", cn="system:node:api.example", dns=("api.example",), ips=())
    assert csr.decide(named, OPEN).reason == "BadSubjectAltName"


def test_kubelet_serving_requests_without_yurthubs_label_are_left_to_others() -> None:
    kubelet = serving(labels={}, dns=(*SVC, "evil.example"), user="system:node:other")
    assert csr.decide(kubelet, CTX).verdict == "ignore"
    relabelled = serving(labels={"app.kubernetes.io/managed-by": "kubelet"})
    assert csr.decide(relabelled, CTX).verdict == "ignore"
    # the label only makes it ours to judge: a labelled request still passes every check
    assert csr.decide(serving(dns=SVC), CTX).verdict == "deny"


def test_a_garbage_serving_request_is_denied() -> None:
    r = serving()
    r["spec"]["request"] = "bm90IGEgY3Ny"
    assert csr.decide(r, CTX).reason == "BadRequest"


def test_yurthub_client_requests_from_the_node_or_a_bootstrap_token_for_a_new_node_are_approved() -> None:
    assert csr.decide(client(), CTX).verdict == "approve"
    boot = client(user=BOOT_USER, groups=BOOT_GROUPS, cn="system:node:new-node")
    assert csr.decide(boot, CTX).verdict == "approve"
    ecdsa = client(
        usages=("digital signature", "client auth"), orgs=("openyurt:yurthub", "system:nodes", "openyurt:tenant:t1")
    )
    tenants = dataclasses.replace(CTX, tenant_groups=frozenset({"openyurt:tenant:t1"}))
    assert csr.decide(ecdsa, tenants).verdict == "approve"


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (client(user="system:node:other"), "WrongRequester"),
        (client(cn="system:admin"), "BadCommonName"),
        (client(orgs=("openyurt:yurthub",)), "BadOrganization"),
        (client(orgs=("openyurt:yurthub", "system:nodes", "system:masters")), "BadOrganization"),
        (client(usages=("client auth",)), "BadUsages"),
        (client(usages=("digital signature", "key encipherment", "client auth", "server auth")), "BadUsages"),
        (client(ips=("127.0.0.1",)), "BadSubjectAltName"),
        # a bootstrap-token holder takes over an existing node's (and tunnel) identity
        (client(user=BOOT_USER, groups=BOOT_GROUPS), "NodeExists"),
        # the bootstrap group without a bootstrap user name, or the name without the group
        (client(user="alice", groups=("system:bootstrappers",), cn="system:node:new-node"), "WrongRequester"),
        (client(user=BOOT_USER, groups=("system:authenticated",), cn="system:node:new-node"), "WrongRequester"),
        # tenant groups not allow-listed (none are by default)
        (client(orgs=("openyurt:yurthub", "system:nodes", "openyurt:tenant:t1")), "TenantNotAllowed"),
        (
            client(
                user=BOOT_USER,
                groups=BOOT_GROUPS,
                cn="system:node:new-node",
                orgs=("openyurt:yurthub", "system:nodes", "openyurt:tenant:other-team"),
            ),
            "TenantNotAllowed",
        ),
    ],
)
def test_client_requests_that_fail_a_check_are_denied(request_: dict[str, Any], reason: str) -> None:
    decision = csr.decide(request_, CTX)
    assert (decision.verdict, decision.reason) == ("deny", reason)


def test_only_allow_listed_tenant_groups_are_approved() -> None:
    tenants = dataclasses.replace(CTX, tenant_groups=frozenset({"openyurt:tenant:t1"}))
    two = client(orgs=("openyurt:yurthub", "system:nodes", "openyurt:tenant:t1", "openyurt:tenant:t2"))
    assert csr.decide(two, tenants).reason == "TenantNotAllowed"


def test_requests_that_are_not_ours_are_left_alone() -> None:
    kubelet_client = client(orgs=("system:nodes",))
    kubelet_client["spec"]["signerName"] = "kubernetes.io/kube-apiserver-client-kubelet"
    assert csr.decide(kubelet_client, CTX).verdict == "ignore"
    plain_client = client(orgs=("developers",), cn="alice")
    assert csr.decide(plain_client, CTX).verdict == "ignore"
    decided = serving(user="system:node:other")
    decided["status"] = {"conditions": [{"type": "Approved", "status": "True"}]}
    assert csr.decide(decided, CTX).verdict == "ignore"


def test_conditions_record_the_verdict() -> None:
    assert csr.condition(csr.Decision("approve", "R", "m"))["type"] == "Approved"
    assert csr.condition(csr.Decision("deny", "R", "m")) == {
        "type": "Denied",
        "status": "True",
        "reason": "R",
        "message": "m",
    }
