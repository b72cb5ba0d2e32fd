"""An offline GET of an object the cloud deleted answers the apiserver's own 404, byte for byte.

The expected bodies are written out by hand from apimachinery (v0.34): `errors.NewNotFound` builds the
Status (message `<resource>[.<group>] "<name>" not found`, details name/group/kind=resource), the JSON
serializer writes struct order with `omitempty` and a closing newline, and the generated protobuf code
writes every string field of Status, ListMeta and StatusDetails even when empty, plus `retryAfterSeconds` 0.
"""

from __future__ import annotations

import dataclasses

import pytest

from tests.unit import wirefixtures as fx
from yurthub import cache, requestinfo, storage, wire

KUBELET_ACCEPT = "application/vnd.kubernetes.protobuf,application/json"


def get(path: str, component: str = "kubelet") -> requestinfo.RequestInfo:
    return requestinfo.parse("GET", path, {}, f"{component}/v1.34")


def _pb_status(message: bytes, name: bytes, group: bytes, resource: bytes) -> bytes:
    def field(number: int, data: bytes) -> bytes:
        assert len(data) < 128
        return bytes([number << 3 | 2, len(data)]) + data

    details = field(1, name) + field(2, group) + field(3, resource) + b"\x28\x00" + field(6, b"")
    raw = (
        field(1, b"\x0a\x00\x12\x00\x1a\x00")  # ListMeta: selfLink, resourceVersion, continue
        + field(2, b"Failure")
        + field(3, message)
        + field(4, b"NotFound")
        + field(5, details)
        + b"\x30\x94\x03"  # code 404
    )
    type_meta = field(1, b"v1") + field(2, b"Status")
    return b"k8s\x00" + field(1, type_meta) + field(2, raw) + field(3, b"") + field(4, b"")


@pytest.mark.parametrize(
    ("path", "encoding", "body"),
    [
        (
            "/api/v1/namespaces/ns/pods/web-0",
            wire.Encoding.JSON,
            b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods \\"web-0\\" not '
            b'found","reason":"NotFound","details":{"name":"web-0","kind":"pods"},"code":404}\n',
        ),
        (
            "/apis/apps/v1/namespaces/ns/deployments/web",
            wire.Encoding.JSON,
            b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"deployments.apps '
            b'\\"web\\" not found","reason":"NotFound","details":{"name":"web","group":"apps","kind":"deployments"}'
            b',"code":404}\n',
        ),
        (
            "/api/v1/nodes/edge-1",
            wire.Encoding.JSON,
            b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"nodes \\"edge-1\\" not '
            b'found","reason":"NotFound","details":{"name":"edge-1","kind":"nodes"},"code":404}\n',
        ),
        (
            "/api/v1/namespaces/ns/pods/web-0",
            wire.Encoding.PROTOBUF,
            _pb_status(b'pods "web-0" not found', b"web-0", b"", b"pods"),
        ),
        (
            "/apis/example.com/v1/namespaces/ns/widgets/w",
            wire.Encoding.PROTOBUF,
            _pb_status(b'widgets.example.com "w" not found', b"w", b"example.com", b"widgets"),
        ),
    ],
    ids=["core-json", "group-json", "cluster-scoped-json", "core-protobuf", "custom-resource-protobuf"],
)
def test_not_found_is_the_apiservers_status(path: str, encoding: wire.Encoding, body: bytes) -> None:
    answer = cache.not_found(get(path), encoding)
    assert answer == cache.Answer(404, wire.content_type(encoding), body)


def test_the_protobuf_status_reads_back_as_a_status() -> None:
    api_version, kind, raw = wire.unwrap(
        cache.not_found(get("/api/v1/namespaces/ns/pods/p"), wire.Encoding.PROTOBUF).body
    )
    assert (api_version, kind) == ("v1", "Status")
    top = {n: v for n, _w, v in wire.fields(raw)}
    assert (top[2], top[4], top[6]) == (b"Failure", b"NotFound", 404)


@pytest.fixture
def store() -> storage.MemoryStorage:
    return storage.MemoryStorage()


def held(store: storage.Storage, *names: str) -> None:
    """kubelet lists the namespace's ConfigMaps in both encodings and the cloud has `names`."""
    for encoding in wire.Encoding:
        key = cache.view_key(requestinfo.parse("GET", "/api/v1/namespaces/ns/configmaps", {}, "kubelet/1"), encoding)
        store.replace_list(
            key, wire.parse_list(encoding, fx.listing(encoding, "10", *(fx.obj(encoding, n, "5") for n in names)))
        )


def test_an_offline_get_of_an_object_a_relist_dropped_answers_404(store: storage.MemoryStorage) -> None:
    info = get("/api/v1/namespaces/ns/configmaps/a")
    held(store, "a", "b")
    assert cache.answer_read(store, info, KUBELET_ACCEPT) is not None
    assert cache.answer_read(store, info, KUBELET_ACCEPT).status == 200  # type: ignore[union-attr]
    held(store, "b")
    answer = cache.answer_read(store, info, KUBELET_ACCEPT)
    assert answer == cache.not_found(info, wire.Encoding.PROTOBUF)
    assert cache.answer_read(store, info, "application/json") == cache.not_found(info, wire.Encoding.JSON)
    assert cache.answer_read(store, get("/api/v1/namespaces/ns/configmaps/never"), KUBELET_ACCEPT) is None


def test_a_404_from_the_cloud_deletes_and_is_answered_offline(store: storage.MemoryStorage) -> None:
    info = get("/api/v1/namespaces/ns/configmaps/a")
    cache.record_object(store, info, wire.Encoding.JSON, fx.obj(wire.Encoding.JSON, "a", "5").body)
    cache.record_object(store, info, wire.Encoding.PROTOBUF, fx.obj(wire.Encoding.PROTOBUF, "a", "5").body)
    cache.record_absent(store, info)
    assert cache.answer_read(store, info, "application/json") == cache.not_found(info, wire.Encoding.JSON)
    assert cache.answer_read(store, info, wire.PROTOBUF) == cache.not_found(info, wire.Encoding.PROTOBUF)
    other_component = get("/api/v1/namespaces/ns/configmaps/a", component="kube-proxy")
    assert cache.answer_read(store, other_component, "application/json") is None  # its own scope
    cache.record_object(store, info, wire.Encoding.JSON, fx.obj(wire.Encoding.JSON, "a", "9").body)
    assert cache.answer_read(store, info, "application/json").status == 200  # type: ignore[union-attr]


def test_record_absent_ignores_what_is_not_a_get_of_one_object(store: storage.MemoryStorage) -> None:
    info = get("/api/v1/namespaces/ns/configmaps/a")
    cache.record_object(store, info, wire.Encoding.JSON, fx.obj(wire.Encoding.JSON, "a", "5").body)
    cache.record_absent(store, get("/api/v1/namespaces/ns/configmaps"))
    assert cache.answer_read(store, info, "application/json").status == 200  # type: ignore[union-attr]


def test_expire_idle_scopes_removes_token_scopes_unused_for_a_token_lifetime() -> None:
    now = [1_000_000.0]
    store = storage.MemoryStorage(clock=lambda: now[0])
    old, fresh = cache.token_scope("old-token"), cache.token_scope("fresh-token")
    for component in (old, fresh, "kubelet"):
        info = dataclasses.replace(get("/api/v1/namespaces/ns/configmaps/a"), component=component)
        cache.record_object(store, info, wire.Encoding.JSON, fx.obj(wire.Encoding.JSON, "a", "5").body)
        now[0] += 1800
    assert store.counts().token_scopes == 2
    assert cache.expire_idle_scopes(store, now[0], 3600) == 1  # old: used 5400 s ago
    assert store.counts().token_scopes == 1
    assert store.counts().components == 2  # kubelet is never expired by idleness


def test_a_request_that_touches_no_storage_still_keeps_its_scope_alive() -> None:
    now = [1_000_000.0]
    store = storage.MemoryStorage(clock=lambda: now[0])
    watching = dataclasses.replace(get("/api/v1/namespaces/ns/configmaps/a"), component=cache.token_scope("t"))
    cache.record_object(store, watching, wire.Encoding.JSON, fx.obj(wire.Encoding.JSON, "a", "5").body)
    now[0] += 5000
    cache.note_use(store, watching)  # e.g. the pod's watch, quiet for an hour
    assert cache.expire_idle_scopes(store, now[0] + 10, 3600) == 0
    cache.note_use(store, dataclasses.replace(watching, component=cache.token_scope("unknown")))
    assert store.counts().components == 1  # a use of nothing held adds nothing
