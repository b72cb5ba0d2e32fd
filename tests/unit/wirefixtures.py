"""Small Kubernetes objects in both wire encodings, built the way the apiserver frames them."""

from __future__ import annotations

import json

from yurthub import wire


def pb_object(name: str, namespace: str, rv: str, payload: str = "", kind: str = "ConfigMap") -> bytes:
    meta = wire.bytes_field(1, name.encode()) + wire.bytes_field(3, namespace.encode())
    meta += wire.bytes_field(6, rv.encode())
    raw = wire.bytes_field(1, meta) + wire.bytes_field(2, payload.encode())
    return wire.wrap("v1", kind, raw)


def json_object(name: str, namespace: str, rv: str, payload: str = "", kind: str = "ConfigMap") -> bytes:
    doc = {
        "kind": kind,
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": rv},
        "data": {"p": payload},
    }
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def obj(encoding: wire.Encoding, name: str, rv: str, payload: str = "", namespace: str = "ns") -> wire.Obj:
    make = pb_object if encoding is wire.Encoding.PROTOBUF else json_object
    return wire.Obj(namespace, name, rv, make(name, namespace, rv, payload))


def listing(encoding: wire.Encoding, rv: str, *objs: wire.Obj) -> bytes:
    return wire.build_list(encoding, "v1", "ConfigMapList", rv, False, [o.body for o in objs])


def pb_event(event_type: str, body: bytes) -> bytes:
    return wire.bytes_field(1, event_type.encode()) + wire.bytes_field(2, wire.bytes_field(1, body))


def json_event(event_type: str, body: bytes) -> bytes:
    return b'{"type":"' + event_type.encode() + b'","object":' + body.rstrip(b"\n") + b"}"


def event(encoding: wire.Encoding, event_type: str, body: bytes) -> bytes:
    return (pb_event if encoding is wire.Encoding.PROTOBUF else json_event)(event_type, body)
