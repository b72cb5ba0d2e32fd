"""yurt-manager's endpoint webhook served for real (HTTPS on 127.0.0.1, its certificate kept in a Secret of
the in-memory Api), and the pass that lets kept endpoints go (`converter.continuitysync`)."""

from __future__ import annotations

import base64
import json
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from converter import access, components, continuity, continuitysync, endpointwebhook, errors
from tests.unit.test_converter_continuity import IP, NOW, UID, a_slice, endpoint, node, pod

Obj = dict[str, Any]
SECRET = f"/api/v1/namespaces/kube-system/secrets/{components.WEBHOOK_SECRET}"


def cluster(*, autonomous: bool = True) -> access.MemoryApi:
    api = access.MemoryApi()
    for obj in components.endpoint_webhook_objects():
        if obj["kind"] == "Secret":
            api.create("/api/v1/namespaces/kube-system/secrets", obj)
    the_node = node(autonomy="true" if autonomous else None)
    api.create("/api/v1/nodes", the_node)
    the_pod = pod()
    api.create("/api/v1/namespaces/shop/pods", the_pod)
    return api


def settings() -> endpointwebhook.Settings:
    return endpointwebhook.Settings(host="127.0.0.1", port=0, names=("127.0.0.1",))


@pytest.fixture
def served() -> Iterator[tuple[access.MemoryApi, endpointwebhook.Webhook, list[tuple[str, int]]]]:
    api = cluster()
    seen: list[tuple[str, int]] = []
    hook = endpointwebhook.Webhook(api, settings(), lambda r, n: seen.append((r, n)))
    stopping = threading.Event()
    hook.start(stopping, endpointwebhook.ReadFacts(api.list))
    assert hook.serving.wait(30)
    yield api, hook, seen
    stopping.set()
    hook.stop()


def post(hook: endpointwebhook.Webhook, path: str, body: bytes) -> tuple[int, Obj]:
    ca = hook.ca()
    assert ca is not None
    context = ssl.create_default_context(cadata=ca.decode())  # verifies the webhook as the apiserver does
    req = urllib.request.Request(
        f"https://127.0.0.1:{hook.port}{path}", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, context=context, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def review(obj: Obj, operation: str = "UPDATE") -> bytes:
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {"uid": "r-1", "operation": operation, "object": obj},
        }
    ).encode()


def patch_of(answer: Obj) -> list[Obj]:
    response = answer["response"]
    assert response["uid"] == "r-1" and response["allowed"] is True
    if "patch" not in response:
        return []
    assert response["patchType"] == "JSONPatch"
    ops: list[Obj] = json.loads(base64.b64decode(response["patch"]))
    return ops


def test_the_apiservers_review_of_a_slice_gets_a_json_patch_over_verified_tls(served: Any) -> None:
    _, hook, seen = served
    # the clock is the real one: the node went unreachable a minute before "now" in these fixtures, and its
    # autonomy has no duration, so it is kept whatever the date
    status, answer = post(hook, endpointwebhook.SLICES_PATH, review(a_slice(endpoint(False))))
    assert status == 200 and answer["kind"] == "AdmissionReview"
    assert patch_of(answer) == [
        {
            "op": "replace",
            "path": "/endpoints/0/conditions",
            "value": {"ready": True, "serving": True, "terminating": False},
        }
    ]
    assert seen == [("endpointslices", 1)]


def test_attack_a_review_alone_cannot_make_an_endpoint_ready(served: Any) -> None:
    """Whoever reaches the port learns and changes nothing: every fact comes from the apiserver's objects."""
    api, hook, _ = served
    for forged in (
        endpoint(False, uid="uid-invented"),
        endpoint(False, ip="10.0.0.99"),
        endpoint(False) | {"nodeName": "a-node-the-apiserver-does-not-have"},
        endpoint(False, ns="kube-system"),
    ):
        status, answer = post(hook, endpointwebhook.SLICES_PATH, review(a_slice(forged)))
        assert status == 200 and patch_of(answer) == []
    # a node turned plain in the apiserver is plain, whatever the review carries
    plain = node(autonomy=None)
    api.replace("/api/v1/nodes/edge-1", plain)
    slice_ = a_slice(endpoint(False))
    slice_["metadata"]["annotations"] = {"node.beta.openyurt.io/autonomy": "true"}
    assert patch_of(post(hook, endpointwebhook.SLICES_PATH, review(slice_))[1]) == []


def test_a_body_that_is_not_a_review_gets_a_400_status(served: Any) -> None:
    _, hook, _ = served
    for body in (b"not json", json.dumps({"kind": "AdmissionReview"}).encode(), b"[]"):
        status, answer = post(hook, endpointwebhook.ENDPOINTS_PATH, body)
        assert status == 400 and answer["kind"] == "Status" and answer["reason"] == "BadRequest"
        assert "AdmissionReview" in answer["message"]


def test_endpoints_reviews_move_the_kept_address_to_ready(served: Any) -> None:
    _, hook, _ = served
    obj = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "web", "namespace": "shop"},
        "subsets": [
            {
                "notReadyAddresses": [
                    {"ip": IP, "nodeName": "edge-1", "targetRef": {"kind": "Pod", "name": "web-1", "uid": UID}}
                ],
                "ports": [{"port": 80}],
            }
        ],
    }
    ops = patch_of(post(hook, endpointwebhook.ENDPOINTS_PATH, review(obj, "CREATE"))[1])
    assert ops and ops[0]["value"][0]["addresses"][0]["ip"] == IP and "notReadyAddresses" not in ops[0]["value"][0]


def test_replicas_share_one_certificate_and_a_restart_keeps_it() -> None:
    api = cluster()
    a = endpointwebhook.Webhook(api, settings(), lambda r, n: None)
    b = endpointwebhook.Webhook(api, settings(), lambda r, n: None)
    assert a.keep_certificate() and b.keep_certificate()
    assert a.ca() == b.ca() is not None
    stored = api.get(SECRET)
    assert stored is not None and set(stored["data"]) == {"ca.crt", "ca.key", "tls.crt", "tls.key"}
    version = stored["metadata"]["resourceVersion"]
    restarted = endpointwebhook.Webhook(api, settings(), lambda r, n: None)
    assert restarted.keep_certificate() and restarted.ca() == a.ca()
    assert api.get(SECRET)["metadata"]["resourceVersion"] == version  # type: ignore[index]


def test_without_the_secret_convert_makes_there_is_no_certificate_and_no_secret_is_created() -> None:
    api = access.MemoryApi()
    hook = endpointwebhook.Webhook(api, settings(), lambda r, n: None)
    assert not hook.keep_certificate() and hook.ca() is None
    assert api.get(SECRET) is None


def managed_slice(ready: bool) -> Obj:
    s = a_slice(endpoint(ready))
    s["metadata"]["labels"][continuitysync.SERVICE_LABEL] = "web"
    return s


def sync_for(api: access.MemoryApi, lead: bool = True, ca: bytes | None = None) -> continuitysync.EndpointSync:
    def must_lead() -> None:
        if not lead:
            raise errors.ConverterError("not leading")

    return continuitysync.EndpointSync(api, must_lead, api.list, lambda what: None, lambda: ca)


def test_the_pass_lets_go_when_autonomy_is_turned_off_and_makes_good_a_missed_write() -> None:
    api = cluster()
    api.create("/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices", managed_slice(False))
    path = "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices/web-abcde"
    nodes = {n["metadata"]["name"]: n for n in api.list("/api/v1/nodes")}
    # the node went unreachable a minute before NOW; the pass runs at NOW
    sync_for(api).sync(nodes, NOW)
    assert api.get(path)["endpoints"][0]["conditions"]["ready"] is True  # type: ignore[index]
    plain = node(autonomy=None)
    sync_for(api).sync({"edge-1": plain}, NOW)
    assert api.get(path)["endpoints"][0]["conditions"] == {  # type: ignore[index]
        "ready": False,
        "serving": False,
        "terminating": False,
    }


def test_the_pass_leaves_services_publishing_not_ready_addresses_and_hand_made_slices_alone() -> None:
    api = cluster()
    api.create(
        "/api/v1/namespaces/shop/services", {"metadata": {"name": "web"}, "spec": {"publishNotReadyAddresses": True}}
    )
    api.create("/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices", managed_slice(True))
    hand_made = a_slice(endpoint(True))
    hand_made["metadata"] = {"name": "by-hand", "namespace": "shop", "labels": {}}
    api.create("/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices", hand_made)
    before = api.list("/apis/discovery.k8s.io/v1/endpointslices")
    sync_for(api).sync({"edge-1": node(autonomy=None)}, NOW)
    assert api.list("/apis/discovery.k8s.io/v1/endpointslices") == before


def test_only_the_leader_writes_and_the_ca_bundle_lands_in_our_configuration() -> None:
    api = cluster()
    api.create("/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices", managed_slice(True))
    config = next(o for o in components.endpoint_webhook_objects() if o["kind"] == "MutatingWebhookConfiguration")
    api.create(continuitysync.CONFIGS, config)
    with pytest.raises(errors.ConverterError, match="not leading"):
        sync_for(api, lead=False, ca=b"CA").sync({"edge-1": node(autonomy=None)}, NOW)
    sync_for(api, ca=b"CA").sync({"edge-1": node(autonomy=None)}, NOW)
    written = api.get(f"{continuitysync.CONFIGS}/{components.ENDPOINT_WEBHOOK}")
    assert written is not None
    assert {w["clientConfig"]["caBundle"] for w in written["webhooks"]} == {base64.b64encode(b"CA").decode()}
    assert (
        api.get("/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices/web-abcde")["endpoints"][0][  # type: ignore[index]
            "conditions"
        ]["ready"]
        is False
    )


def test_the_webhook_configuration_is_narrow_and_fails_open() -> None:
    config = next(o for o in components.endpoint_webhook_objects() if o["kind"] == "MutatingWebhookConfiguration")
    for w in config["webhooks"]:
        assert w["failurePolicy"] == "Ignore" and w["sideEffects"] == "None" and w["timeoutSeconds"] <= 5
        assert w["admissionReviewVersions"] == ["v1"]
        assert [r["operations"] for r in w["rules"]] == [["CREATE", "UPDATE"]]
        assert w["clientConfig"]["service"]["name"] == components.WEBHOOK_SERVICE
    slices, endpoints = config["webhooks"]
    assert slices["objectSelector"]["matchLabels"] == continuity.SLICE_MANAGED_BY
    assert endpoints["matchConditions"][0]["expression"] == (
        "request.userInfo.username in "
        "['system:serviceaccount:kube-system:endpoint-controller', 'system:kube-controller-manager']"
    )
    by_url = next(o for o in components.endpoint_webhook_objects("https://10.0.0.1:10273") if "webhooks" in o)
    assert by_url["webhooks"][0]["clientConfig"] == {"url": "https://10.0.0.1:10273/mutate-endpointslices"}
    secret_rules = [r for r in components.manager_rules() if "secrets" in r["resources"]]
    assert secret_rules == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": [components.WEBHOOK_SECRET],
            "verbs": ["get", "update"],
        }
    ]


def test_convert_installs_the_webhook_objects_and_revert_deletes_every_one() -> None:
    from converter import plan  # noqa: PLC0415 - only this test needs the plan

    opts = plan.Options(cloud_nodes=("cloud-1",), manager_webhook_url="https://10.0.0.1:10273")
    nodes = [{"metadata": {"name": n, "labels": {}}, "status": {}} for n in ("cloud-1", "edge-1")]
    convert = plan.convert_plan(opts, nodes, None)
    applied = {(c.body["kind"], c.body["metadata"]["name"]) for c in convert.before if c.verb == "apply" and c.body}
    ours = {(o["kind"], o["metadata"]["name"]) for o in components.endpoint_webhook_objects()}
    assert ours <= applied
    hook = next(c.body for c in convert.before if c.body and c.body.get("kind") == "MutatingWebhookConfiguration")
    assert hook["webhooks"][1]["clientConfig"] == {"url": "https://10.0.0.1:10273/mutate-endpoints"}
    deleted = {c.path for c in plan.revert_plan(nodes, [], None).after if c.verb == "delete"}
    assert {plan.object_path(o) for o in components.endpoint_webhook_objects()} <= deleted


def test_a_copy_that_still_shows_the_node_ready_is_checked_against_the_apiserver() -> None:
    """The lifecycle controller writes the node before it marks the pods: a copy a moment behind must not let
    the pod go."""
    fresh = cluster()
    behind = cluster()
    behind.replace("/api/v1/nodes/edge-1", node(ready="True"))
    slice_ = a_slice(endpoint(False))
    now = NOW  # the fixtures' node went unreachable a minute before NOW
    assert endpointwebhook.decide("endpointslices", slice_, endpointwebhook.ReadFacts(behind.list), now) == []
    kept = endpointwebhook.decide("endpointslices", slice_, endpointwebhook.ReadFacts(behind.list, fresh.get), now)
    assert [op["path"] for op in kept] == ["/endpoints/0/conditions"]
    # a plain node is never read again: nothing to keep there whatever its state
    plain = cluster(autonomous=False)
    assert endpointwebhook.decide("endpointslices", slice_, endpointwebhook.ReadFacts(plain.list, fresh.get), now) == []
