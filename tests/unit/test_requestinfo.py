"""Request classification follows kube-apiserver's rules and refuses paths that could escape a cache key."""

from __future__ import annotations

import pytest

from yurthub import cache, errors, requestinfo, wire


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        ("GET", "/api/v1/namespaces/default/pods", {}, ("list", "", "v1", "pods", "default", "", "")),
        ("GET", "/api/v1/namespaces/default/pods/p1", {}, ("get", "", "v1", "pods", "default", "p1", "")),
        ("GET", "/api/v1/pods", {"watch": "true"}, ("watch", "", "v1", "pods", "", "", "")),
        ("GET", "/api/v1/watch/namespaces/a/pods", {}, ("watch", "", "v1", "pods", "a", "", "")),
        ("PATCH", "/api/v1/nodes/n1/status", {}, ("patch", "", "v1", "nodes", "", "n1", "status")),
        ("GET", "/api/v1/namespaces/kube-system", {}, ("get", "", "v1", "namespaces", "", "kube-system", "")),
        (
            "PUT",
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1",
            {},
            ("update", "coordination.k8s.io", "v1", "leases", "kube-node-lease", "n1", ""),
        ),
        ("POST", "/api/v1/namespaces/default/events", {}, ("create", "", "v1", "events", "default", "", "")),
        ("DELETE", "/api/v1/namespaces/default/pods", {}, ("deletecollection", "", "v1", "pods", "default", "", "")),
        ("GET", "/apis/example.com/v1/widgets", {}, ("list", "example.com", "v1", "widgets", "", "", "")),
    ],
)
def test_resource_requests(method: str, path: str, query: dict[str, str], expected: tuple[str, ...]) -> None:
    info = requestinfo.parse(method, path, query, "kubelet/v1.34.12 (linux/amd64) kubernetes/abc")
    assert info.is_resource
    assert (info.verb, info.group, info.version, info.resource, info.namespace, info.name, info.subresource) == expected
    assert info.component == "kubelet"


def test_selectors_and_paging_are_read_from_the_query() -> None:
    info = requestinfo.parse(
        "GET",
        "/api/v1/pods",
        {"labelSelector": "a=b", "fieldSelector": "spec.nodeName=n1", "continue": "tok", "timeoutSeconds": "30"},
    )
    assert (info.label_selector, info.field_selector, info.paged, info.timeout_seconds) == (
        "a=b",
        "spec.nodeName=n1",
        True,
        30,
    )
    assert info.gvr == "pods.v1.core"


@pytest.mark.parametrize("path", ["/version", "/api", "/apis", "/apis/apps", "/healthz", "/api/v1"])
def test_non_resource_paths(path: str) -> None:
    assert not requestinfo.parse("GET", path, {}).is_resource


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/namespaces/../secrets",
        "/api/v1/namespaces/default/pods/..",
        "/api/v1/namespaces/default/pods/%2e%2e",
        "/api/v1/namespaces/default%2Fother/pods",
        "/api/v1//pods",
        "/api/v1/namespaces/default/pods/" + "a" * 254,
        "/api/v1/namespaces/default/pods/a b",
        "/" + "x/" * 3000,
    ],
)
def test_dangerous_paths_are_refused(path: str) -> None:
    with pytest.raises(errors.BadRequest):
        requestinfo.parse("GET", path, {})


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("", ["json"]),
        ("application/vnd.kubernetes.protobuf,application/json", ["protobuf", "json"]),
        ("application/json;as=Table;v=v1;g=meta.k8s.io,application/json", ["json"]),
        ("application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io", []),
        ("*/*", ["json", "protobuf"]),
    ],
)
def test_accept_headers_name_the_encodings_the_cache_may_answer_in(accept: str, expected: list[str]) -> None:
    assert [e.value for e in cache.accepted(accept)] == expected


def test_tables_and_partial_metadata_are_never_read_as_the_resource() -> None:
    assert wire.encoding_of("application/json;as=Table;v=v1;g=meta.k8s.io") is None
    assert wire.encoding_of("application/vnd.kubernetes.protobuf;stream=watch") is wire.Encoding.PROTOBUF
