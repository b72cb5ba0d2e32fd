"""Request classification follows kube-apiserver's rules and refuses paths that could escape a cache key.

The resource table is built from kube-apiserver's own `RequestInfoFactory` (k8s.io/apiserver,
pkg/endpoints/request/requestinfo.go) and the cases of its `TestGetAPIRequestInfo`,
`TestGetNonAPIRequestInfo` and `TestFieldSelectorParsing`: resource paths with and without a namespace, the
`watch/` and `proxy/` path verbs (`proxy` keeps its trailing path and has no subresource), subresources with
any number of trailing segments (`pods/foo/proxy/subpath`), the namespace subresources `status` and
`finalize`, `?watch=` read as Go converts a boolean (anything but `0`/`false`), deletecollection, API groups
and versions, and `fieldSelector=metadata.name=X` naming the object of a list or watch. Where yurthub
differs on purpose (the `namespace` of a Namespace object, HEAD) the case says so.
"""

from __future__ import annotations

from typing import Any

import pytest

from yurthub import cache, errors, requestinfo, wire

KUBELET = "kubelet/v1.34.12 (linux/amd64) kubernetes/abc"
FIELDS = ("verb", "group", "version", "namespace", "resource", "subresource", "name", "parts")


def row(
    verb: str, group: str, version: str, namespace: str, resource: str, subresource: str, name: str, *parts: str
) -> tuple[Any, ...]:
    return (verb, group, version, namespace, resource, subresource, name, parts)


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        # resource paths
        ("GET", "/api/v1/namespaces", {}, row("list", "", "v1", "", "namespaces", "", "", "namespaces")),
        # apiserver also sets Namespace=other here; ours is where the object lives: Namespaces are cluster-scoped
        (
            "GET",
            "/api/v1/namespaces/other",
            {},
            row("get", "", "v1", "", "namespaces", "", "other", "namespaces", "other"),
        ),
        ("GET", "/api/v1/namespaces/other/pods", {}, row("list", "", "v1", "other", "pods", "", "", "pods")),
        (
            "GET",
            "/api/v1/namespaces/other/pods/foo",
            {},
            row("get", "", "v1", "other", "pods", "", "foo", "pods", "foo"),
        ),
        ("GET", "/api/v1/pods", {}, row("list", "", "v1", "", "pods", "", "", "pods")),
        ("GET", "/api/v1/pods/", {}, row("list", "", "v1", "", "pods", "", "", "pods")),
        # special verbs
        (
            "GET",
            "/api/v1/proxy/namespaces/other/pods/foo",
            {},
            row("proxy", "", "v1", "other", "pods", "", "foo", "pods", "foo"),
        ),
        (
            "GET",
            "/api/v1/proxy/namespaces/other/pods/foo/subpath/not/a/subresource",
            {},
            row("proxy", "", "v1", "other", "pods", "", "foo", "pods", "foo", "subpath", "not", "a", "subresource"),
        ),
        ("GET", "/api/v1/watch/pods", {}, row("watch", "", "v1", "", "pods", "", "", "pods")),
        ("GET", "/api/v1/pods", {"watch": "true"}, row("watch", "", "v1", "", "pods", "", "", "pods")),
        ("GET", "/api/v1/pods", {"watch": "false"}, row("list", "", "v1", "", "pods", "", "", "pods")),
        ("GET", "/api/v1/watch/namespaces/other/pods", {}, row("watch", "", "v1", "other", "pods", "", "", "pods")),
        (
            "GET",
            "/api/v1/watch/namespaces/other/pods/foo",
            {},
            row("watch", "", "v1", "other", "pods", "", "foo", "pods", "foo"),
        ),
        (
            "GET",
            "/api/v1/namespaces/other/pods",
            {"watch": "1"},
            row("watch", "", "v1", "other", "pods", "", "", "pods"),
        ),
        (
            "GET",
            "/api/v1/namespaces/other/pods",
            {"watch": "0"},
            row("list", "", "v1", "other", "pods", "", "", "pods"),
        ),
        # Go's boolean conversion: present and neither 0 nor false (any case) is true
        ("GET", "/api/v1/pods", {"watch": "yes"}, row("watch", "", "v1", "", "pods", "", "", "pods")),
        ("GET", "/api/v1/pods", {"watch": ""}, row("watch", "", "v1", "", "pods", "", "", "pods")),
        ("GET", "/api/v1/pods", {"watch": "FALSE"}, row("list", "", "v1", "", "pods", "", "", "pods")),
        # `watch` only turns a GET without a name into a watch: a named GET stays a get
        (
            "GET",
            "/api/v1/namespaces/other/pods/foo",
            {"watch": "true"},
            row("get", "", "v1", "other", "pods", "", "foo", "pods", "foo"),
        ),
        # subresource identification, with any number of trailing segments
        (
            "GET",
            "/api/v1/namespaces/other/pods/foo/status",
            {},
            row("get", "", "v1", "other", "pods", "status", "foo", "pods", "foo", "status"),
        ),
        (
            "GET",
            "/api/v1/namespaces/other/pods/foo/proxy/subpath",
            {},
            row("get", "", "v1", "other", "pods", "proxy", "foo", "pods", "foo", "proxy", "subpath"),
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods/x/proxy/a/b",
            {},
            row("create", "", "v1", "default", "pods", "proxy", "x", "pods", "x", "proxy", "a", "b"),
        ),
        (
            "GET",
            "/api/v1/nodes/yurt-test/proxy/metrics",
            {},
            row("get", "", "v1", "", "nodes", "proxy", "yurt-test", "nodes", "yurt-test", "proxy", "metrics"),
        ),
        (
            "GET",
            "/api/v1/namespaces/default/services/https:kubernetes:443/proxy/x/y z",
            {},
            row(
                "get",
                "",
                "v1",
                "default",
                "services",
                "proxy",
                "https:kubernetes:443",
                *("services", "https:kubernetes:443", "proxy", "x", "y z"),
            ),
        ),
        (
            "PUT",
            "/api/v1/namespaces/other/finalize",
            {},
            row("update", "", "v1", "", "namespaces", "finalize", "other", "namespaces", "other", "finalize"),
        ),
        (
            "PUT",
            "/api/v1/namespaces/other/status",
            {},
            row("update", "", "v1", "", "namespaces", "status", "other", "namespaces", "other", "status"),
        ),
        (
            "POST",
            "/api/v1/namespaces/default/serviceaccounts/default/token",
            {},
            row(
                "create",
                "",
                "v1",
                "default",
                "serviceaccounts",
                "token",
                "default",
                "serviceaccounts",
                "default",
                "token",
            ),
        ),
        # verb identification
        (
            "PATCH",
            "/api/v1/namespaces/other/pods/foo",
            {},
            row("patch", "", "v1", "other", "pods", "", "foo", "pods", "foo"),
        ),
        (
            "DELETE",
            "/api/v1/namespaces/other/pods/foo",
            {},
            row("delete", "", "v1", "other", "pods", "", "foo", "pods", "foo"),
        ),
        ("POST", "/api/v1/namespaces/other/pods", {}, row("create", "", "v1", "other", "pods", "", "", "pods")),
        (
            "PATCH",
            "/api/v1/nodes/n1/status",
            {},
            row("patch", "", "v1", "", "nodes", "status", "n1", "nodes", "n1", "status"),
        ),
        # yurthub keeps HEAD as `head` (apiserver: get/list) so a bodiless answer is never cached as an object
        ("HEAD", "/api/v1/pods", {}, row("head", "", "v1", "", "pods", "", "", "pods")),
        # deletecollection verb identification
        ("DELETE", "/api/v1/nodes", {}, row("deletecollection", "", "v1", "", "nodes", "", "", "nodes")),
        ("DELETE", "/api/v1/namespaces", {}, row("deletecollection", "", "v1", "", "namespaces", "", "", "namespaces")),
        (
            "DELETE",
            "/api/v1/namespaces/other/pods",
            {"fieldSelector": "metadata.name=foo"},
            row("deletecollection", "", "v1", "other", "pods", "", "", "pods"),
        ),
        (
            "DELETE",
            "/apis/extensions/v1/namespaces/other/pods",
            {},
            row("deletecollection", "extensions", "v1", "other", "pods", "", "", "pods"),
        ),
        # api group and version identification
        (
            "POST",
            "/apis/extensions/v1beta3/namespaces/other/pods",
            {},
            row("create", "extensions", "v1beta3", "other", "pods", "", "", "pods"),
        ),
        (
            "PUT",
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1",
            {},
            row("update", "coordination.k8s.io", "v1", "kube-node-lease", "leases", "", "n1", "leases", "n1"),
        ),
        ("GET", "/apis/example.com/v1/widgets", {}, row("list", "example.com", "v1", "", "widgets", "", "", "widgets")),
        # fieldSelector metadata.name names the object of a list or watch
        (
            "GET",
            "/api/v1/namespaces/ns/pods",
            {"fieldSelector": "metadata.name=name1"},
            row("list", "", "v1", "ns", "pods", "", "name1", "pods"),
        ),
        (
            "GET",
            "/api/v1/namespaces/ns/pods",
            {"watch": "true", "fieldSelector": "metadata.name=name1"},
            row("watch", "", "v1", "ns", "pods", "", "name1", "pods"),
        ),
        (
            "GET",
            "/api/v1/nodes",
            {"fieldSelector": "spec.unschedulable=false,metadata.name==n1"},
            row("list", "", "v1", "", "nodes", "", "n1", "nodes"),
        ),
        (
            "GET",
            "/api/v1/namespaces/ns/pods",
            {"fieldSelector": "foo=bar"},
            row("list", "", "v1", "ns", "pods", "", "", "pods"),
        ),
        (
            "GET",
            "/api/v1/namespaces/ns/pods",
            {"fieldSelector": "metadata.name!=name1"},
            row("list", "", "v1", "ns", "pods", "", "", "pods"),
        ),
        (  # a selector that does not parse names nothing
            "GET",
            "/api/v1/namespaces/ns/pods",
            {"fieldSelector": "metadata.name=name1,foo"},
            row("list", "", "v1", "ns", "pods", "", "", "pods"),
        ),
        (
            "GET",
            "/api/v1/namespaces/ns/pods",
            {"fieldSelector": "metadata.name=name1,foo", "watch": "true"},
            row("watch", "", "v1", "ns", "pods", "", "", "pods"),
        ),
        (  # a name that could not be a path segment names nothing
            "GET",
            "/api/v1/namespaces/ns/pods",
            {"fieldSelector": "metadata.name=.."},
            row("list", "", "v1", "ns", "pods", "", "", "pods"),
        ),
        (
            "GET",
            "/api/v1/namespaces/ns/pods",
            {"fieldSelector": r"metadata.name=a\,b"},
            row("list", "", "v1", "ns", "pods", "", "a,b", "pods"),
        ),
        # characters the apiserver accepts in a segment are the cloud's to judge, not refused here
        (
            "GET",
            "/api/v1/namespaces/default/pods/a b",
            {},
            row("get", "", "v1", "default", "pods", "", "a b", "pods", "a b"),
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods/x/proxy/q%3Fr%23s%25t;u,v!w",
            {},
            row("get", "", "v1", "default", "pods", "proxy", "x", "pods", "x", "proxy", "q?r#s%t;u,v!w"),
        ),
    ],
)
def test_resource_requests(method: str, path: str, query: dict[str, str], expected: tuple[Any, ...]) -> None:
    info = requestinfo.parse(method, path, query, KUBELET)
    assert info.is_resource
    assert tuple(getattr(info, f) for f in FIELDS) == expected
    assert info.component == "kubelet"


def test_the_path_after_a_subresource_is_kept() -> None:
    info = requestinfo.parse("GET", "/api/v1/namespaces/default/pods/x/proxy/a/b/", {})
    assert (info.subresource, info.subpath) == ("proxy", "a/b")
    assert requestinfo.parse("GET", "/api/v1/namespaces/default/pods/x", {}).subpath == ""


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


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/version",
        "/api",
        "/api/",
        "/api/v1",
        "/api/v1/",
        "/apis",
        "/apis/apps",
        "/apis/apps/v1",
        "/apis/apps/v1/",
        "/healthz",
        "/livez/etcd",
        "/metrics",
        "/openapi/v2",
        "/openapi/v3/apis/apps/v1",
        "/badprefix/version/resource",
        "/other/a/b/c/d",
    ],
)
def test_non_resource_paths(path: str) -> None:
    info = requestinfo.parse("GET", path, {})
    assert not info.is_resource
    assert (info.verb, info.resource, info.name) == ("get", "", "")


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/api/v1/namespaces/../secrets", "invalid segment"),
        ("/api/v1/namespaces/default/pods/..", "invalid segment"),
        ("/api/v1/namespaces/default/pods/.", "invalid segment"),
        ("/api/v1/namespaces/default/pods/%2e%2e", "invalid segment"),
        ("/api/v1/namespaces/default/pods/x/proxy/../../../secrets/s", "invalid segment"),
        ("/api/v1/namespaces/default%2Fother/pods", "encoded slashes"),
        ("/api/v1/namespaces/default/pods/x/proxy/a%2fb", "encoded slashes"),
        ("/api/v1/namespaces/default/pods/a%5Cb", "encoded slashes"),
        ("/api/v1/namespaces/default/pods/a\\b", "backslash"),
        ("/api/v1//pods", "invalid segment"),
        ("//api/v1/pods", "empty segment"),
        ("/api/v1/pods//", "empty segment"),
        ("/api/v1/namespaces/default/pods/" + "a" * 254, "name is 254"),
        ("/api/v1/namespaces/" + "a" * 254 + "/pods", "namespace is 254"),
        ("/api/v1/namespaces/default/pods/x%0aforged=1", "control character"),
        ("/api/v1/namespaces/default/pods/x%00", "control character"),
        ("/api/v1/namespaces/default/pods/x%zz", "escape"),
        ("/api/v1/namespaces/default/pods/x%4", "escape"),
        ("/api/v1/namespaces/default/pods/%ff", "not UTF-8"),
        ("/api/v1/watch", "no resource"),
        ("/apis/apps/v1/proxy", "no resource"),
        ("api/v1/pods", "not absolute"),
        ("/" + "x/" * 3000, "at most 4096"),
    ],
)
def test_dangerous_paths_are_refused(path: str, why: str) -> None:
    with pytest.raises(errors.BadRequest, match=why):
        requestinfo.parse("GET", path, {})


@pytest.mark.parametrize(
    ("method", "path", "cached"),
    [
        ("GET", "/api/v1/namespaces/default/pods/x/proxy/a/b", False),
        ("GET", "/api/v1/nodes/n1/proxy/metrics", False),
        ("GET", "/api/v1/proxy/nodes/n1/metrics", False),
        ("GET", "/api/v1/namespaces/default/status", True),
        ("PUT", "/api/v1/namespaces/default/finalize", False),
        ("GET", "/api/v1/namespaces/default/pods/x/log", False),
        ("GET", "/api/v1/namespaces/default/pods/x", True),
        ("PATCH", "/api/v1/nodes/n1/status", True),
        ("HEAD", "/api/v1/namespaces/default/pods/x", False),
    ],
)
def test_only_objects_and_their_status_are_cached(method: str, path: str, cached: bool) -> None:
    """A proxied answer is someone else's bytes, never an object to keep; the status of a Namespace is the
    Namespace itself (resource `namespaces`, not a resource called `status` in namespace `default`)."""
    info = requestinfo.parse(method, path, {}, KUBELET)
    assert cache.cacheable(info, frozenset({"kubelet"})) is cached
    if info.resource == "namespaces":
        assert info.gvr == "namespaces.v1.core"


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
