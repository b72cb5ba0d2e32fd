"""yurt-manager's CSR decisions, as tables: who asks, which signer, which names."""

from __future__ import annotations

from typing import Any

import pytest

from converter import csr
from tests.unit.csrfixtures import request_b64

NODE = "edge-1"
CTX = csr.Context(
    node_addresses={NODE: frozenset({"10.213.0.2", "edge-1.example"}), "other": frozenset({"10.213.0.9"})},
    service_ips=frozenset({"10.96.0.1"}),
)
SVC = ("kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")


def serving(
    user: str = f"system:node:{NODE}",
    cn: str = f"system:node:{NODE}",
    orgs: tuple[str, ...] = ("system:nodes",),
    ips: tuple[str, ...] = ("127.0.0.1", "169.254.2.1", "10.213.0.2", "10.96.0.1"),
    dns: tuple[str, ...] = SVC,
    usages: tuple[str, ...] = ("digital signature", "key encipherment", "server auth"),
    groups: tuple[str, ...] = ("system:nodes", "system:authenticated"),
    **kw: Any,
) -> dict[str, Any]:
    return {
        "metadata": {"name": "r"},
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


def test_the_nodes_own_names_and_localhost_are_fine() -> None:
    assert csr.decide(serving(dns=("edge-1.example", "localhost", NODE), ips=("::1",)), CTX).verdict == "approve"


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (serving(user="system:node:other"), "WrongRequester"),
        (serving(user="alice", groups=("system:authenticated",)), "WrongRequester"),
        (serving(groups=("system:authenticated",)), "WrongRequester"),
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


def test_a_garbage_serving_request_is_denied() -> None:
    r = serving()
    r["spec"]["request"] = "bm90IGEgY3Ny"
    assert csr.decide(r, CTX).reason == "BadRequest"


def test_yurthub_client_requests_from_the_node_or_a_bootstrap_token_are_approved() -> None:
    assert csr.decide(client(), CTX).verdict == "approve"
    boot = client(user="system:bootstrap:abcdef", groups=("system:bootstrappers", "system:authenticated"))
    assert csr.decide(boot, CTX).verdict == "approve"
    ecdsa = client(
        usages=("digital signature", "client auth"), orgs=("openyurt:yurthub", "system:nodes", "openyurt:tenant:t1")
    )
    assert csr.decide(ecdsa, CTX).verdict == "approve"


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
    ],
)
def test_client_requests_that_fail_a_check_are_denied(request_: dict[str, Any], reason: str) -> None:
    decision = csr.decide(request_, CTX)
    assert (decision.verdict, decision.reason) == ("deny", reason)


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
