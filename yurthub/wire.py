"""Kubernetes' wire formats, read and written at the byte level so cached answers stay byte-exact.

Pure: no I/O. Two encodings:

- JSON. A GET body is the object with `kind` and `apiVersion` first. A LIST body is
  `{"kind":"<K>List","apiVersion":..,"metadata":{..},"items":[..]}`; items of built-in kinds carry no
  `kind`/`apiVersion`, custom resources do. A watch stream is one `{"type":..,"object":<GET body>}` per line.
- Protobuf. A GET body is `k8s\\0` + `runtime.Unknown{typeMeta{apiVersion,kind}, raw, contentEncoding,
  contentType}`; `raw` is the object message, whose field 1 is ObjectMeta (name 1, namespace 3,
  resourceVersion 6). A LIST's `raw` is `{1: ListMeta{selfLink 1, resourceVersion 2, continue 3}, 2: item*}`
  with bare item messages. A watch stream is frames of a 4-byte big-endian length and a bare
  `WatchEvent{type 1, object 2: RawExtension{raw 1: <GET body>}}`.

An object is kept in its GET form (`Obj.body`); lists are rebuilt from those with the same framing the
apiserver uses, so an offline answer is what the cloud would have sent.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import re
from collections.abc import Callable, Iterator
from typing import TypeVar

from yurthub import errors

MAGIC = b"k8s\x00"
_ITEMS = b"\x00"
_RV = b"\x01"
PROTOBUF = "application/vnd.kubernetes.protobuf"
JSON = "application/json"


class Encoding(enum.StrEnum):
    JSON = "json"
    PROTOBUF = "protobuf"


def encoding_of(content_type: str) -> Encoding | None:
    """The encoding of a response body, from its Content-Type; None for anything we do not cache.

    A body asked for `as=Table` or `as=PartialObjectMetadata[List]` is another kind than the resource's own,
    so it is never read as one.
    """
    media, _, params = content_type.partition(";")
    if "as=" in params.replace(" ", ""):
        return None
    media = media.strip().lower()
    if media == JSON:
        return Encoding.JSON
    if media == PROTOBUF:
        return Encoding.PROTOBUF
    return None


_JSON_BODIES = frozenset(
    {JSON, "application/merge-patch+json", "application/strategic-merge-patch+json", "application/json-patch+json"}
)
_JSON_VALUE_START = frozenset(b'{["-0123456789tfn')
_JSON_WS = frozenset(b" \t\r\n")
BODY_HEAD = 4096
"""How much of a request body `body_refusal` looks at: a JSON body that is only whitespace this far is left
to the cloud to judge."""


def body_refusal(content_type: str, head: bytes) -> str | None:
    """Why a request body that starts with `head` cannot be what its Content-Type says, or None.

    Only what kube-apiserver would refuse too: a JSON body (objects and the three patch types) whose first
    byte past whitespace starts no JSON value, a protobuf body without the `k8s\\0` prefix. Deciding this from
    the first bytes lets yurthub answer before it reads, buffers and forwards the rest (a flood of megabytes
    of garbage costs its senders a 400, not the node its event loop). None also when `head` is too short to
    tell, or the type is one yurthub does not check (YAML, CBOR).
    """
    media = content_type.partition(";")[0].strip().lower()
    if media in _JSON_BODIES:
        for byte in head:
            if byte not in _JSON_WS:
                return None if byte in _JSON_VALUE_START else f"the body is not JSON, as {media} says"
        return None
    if media == PROTOBUF and len(head) >= len(MAGIC) and not head.startswith(MAGIC):
        return f"the body is not a Kubernetes protobuf message (no {MAGIC!r} prefix), as {media} says"
    return None


def content_type(encoding: Encoding, *, watch: bool = False) -> str:
    base = PROTOBUF if encoding is Encoding.PROTOBUF else JSON
    return f"{base};stream=watch" if watch else base


@dataclasses.dataclass(frozen=True)
class Obj:
    """One object in its GET form, with what the cache needs to know about it."""

    namespace: str
    name: str
    resource_version: str
    body: bytes


@dataclasses.dataclass(frozen=True)
class ListBody:
    api_version: str
    kind: str
    """The list kind, e.g. `PodList`."""
    resource_version: str
    complete: bool
    """False when the apiserver returned one page of several (a `continue` token)."""
    items_typed: bool
    """JSON only: whether the items carried `kind`/`apiVersion` (custom resources do)."""
    items: list[Obj]
    envelope: bytes = b""
    """JSON only: the list's own bytes around its items (`_ITEMS` where they go, `_RV` for the list's
    resourceVersion), so a rebuilt list keeps the apiserver's framing, which differs between built-in
    kinds and custom resources (whose keys come sorted)."""


@dataclasses.dataclass(frozen=True)
class Event:
    type: str
    """ADDED, MODIFIED, DELETED, BOOKMARK or ERROR."""
    obj: Obj | None
    """None for ERROR events, whose object is a Status."""


# --- protobuf primitives -------------------------------------------------------------------------


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise errors.WireFormatError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise errors.WireFormatError("varint longer than 64 bits")


def _put_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) for each field of a protobuf message; bytes for length-delimited."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise errors.WireFormatError("protobuf field number 0")
        if wire_type == 0:
            value, pos = _varint(buf, pos)
            yield number, wire_type, value
        elif wire_type == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise errors.WireFormatError("truncated protobuf field")
            yield number, wire_type, buf[pos : pos + length]
            pos += length
        elif wire_type == 1:
            pos += 8
            yield number, wire_type, 0
        elif wire_type == 5:
            pos += 4
            yield number, wire_type, 0
        else:
            raise errors.WireFormatError(f"unsupported protobuf wire type {wire_type}")
        if pos > len(buf):
            raise errors.WireFormatError("truncated protobuf message")


def bytes_field(number: int, data: bytes) -> bytes:
    return _put_varint(number << 3 | 2) + _put_varint(len(data)) + data


def _string(value: int | bytes) -> str:
    if not isinstance(value, bytes):
        raise errors.WireFormatError("expected a length-delimited field")
    return value.decode("utf-8")


def unwrap(body: bytes) -> tuple[str, str, bytes]:
    """(apiVersion, kind, raw) of a protobuf envelope."""
    if not body.startswith(MAGIC):
        raise errors.WireFormatError("protobuf body lacks the k8s\\0 prefix")
    api_version = kind = ""
    raw = b""
    for number, _wt, value in fields(body[len(MAGIC) :]):
        if number == 1:
            for n, _w, v in fields(value if isinstance(value, bytes) else b""):
                if n == 1:
                    api_version = _string(v)
                elif n == 2:
                    kind = _string(v)
        elif number == 2 and isinstance(value, bytes):
            raw = value
    return api_version, kind, raw


def wrap(api_version: str, kind: str, raw: bytes) -> bytes:
    type_meta = bytes_field(1, api_version.encode()) + bytes_field(2, kind.encode())
    return MAGIC + bytes_field(1, type_meta) + bytes_field(2, raw) + bytes_field(3, b"") + bytes_field(4, b"")


def _object_meta(raw: bytes) -> tuple[str, str, str]:
    """(namespace, name, resourceVersion) from an object message's ObjectMeta (field 1)."""
    for number, _wt, value in fields(raw):
        if number == 1 and isinstance(value, bytes):
            name = namespace = rv = ""
            for n, _w, v in fields(value):
                if n == 1:
                    name = _string(v)
                elif n == 3:
                    namespace = _string(v)
                elif n == 6:
                    rv = _string(v)
            return namespace, name, rv
    raise errors.WireFormatError("protobuf object has no metadata")


# --- JSON span scanning --------------------------------------------------------------------------

_WS = re.compile(rb"[ \t\r\n]*")
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
"""A JSON string, escapes included (a backslash takes the byte after it, whatever it is)."""
_BETWEEN_BRACKETS = re.compile(rb'(?:[^"{}\[\]]+|"[^"\\]*(?:\\.[^"\\]*)*")*', re.DOTALL)
"""Everything up to the next bracket outside a string."""
_SCALAR = re.compile(rb"[^,}\] \t\r\n]+")
"""Spans are found with compiled patterns, not byte by byte in Python: a list is scanned on the cache writer
thread, and a Python loop there holds the GIL long enough to delay the event loop (a 1000-item list took
~400 ms that way, ~10 ms this way)."""


def _skip_ws(buf: bytes, pos: int) -> int:
    match = _WS.match(buf, pos)
    return match.end() if match else pos


def _value_end(buf: bytes, pos: int) -> int:
    """Index just past the JSON value starting at `pos` (strings, numbers, literals, objects, arrays)."""
    if pos >= len(buf):
        raise errors.WireFormatError("truncated JSON")
    first = buf[pos]
    if first == 0x22:  # "
        string = _STRING.match(buf, pos)
        if string is None:
            raise errors.WireFormatError("unterminated JSON string")
        return string.end()
    if first in b"{[":
        depth = 0
        while True:  # one pattern match per bracket: strings and everything between brackets skipped in C
            pos = _BETWEEN_BRACKETS.match(buf, pos).end()  # type: ignore[union-attr] # matches the empty string
            if pos >= len(buf) or buf[pos] == 0x22:  # the end, or a quote that starts no whole string
                raise errors.WireFormatError("unterminated JSON object or array")
            depth += 1 if buf[pos] in b"{[" else -1
            pos += 1
            if depth == 0:
                return pos
    scalar = _SCALAR.match(buf, pos)
    if scalar is None:
        raise errors.WireFormatError(f"unexpected JSON byte {buf[pos : pos + 1]!r}")
    return scalar.end()


_DECODER = json.JSONDecoder()
C_SCAN_MAX = 64 * 1024
"""A JSON object up to this size whose bytes are all ASCII (a watch event's frame, an object: nearly always) has
its top-level values' ends found by the json module's C scanner, where character and byte offsets agree: a pod's
event is ~180 pattern matches in a Python loop, or one C call that parses it whole in a fraction of that time
(the cache's watch events per second are bound by it). Bigger bodies keep the patterns: the C scanner holds the
GIL for the whole value, and a megabyte list would stall the event loop for milliseconds at a time."""


def _c_value_end(text: str, pos: int) -> int:
    try:
        return int(_DECODER.raw_decode(text, pos)[1])
    except ValueError as exc:  # JSONDecodeError, and a number too big for int()
        raise errors.WireFormatError(f"JSON value at byte {pos} does not parse: {exc}") from exc


def top_level(buf: bytes) -> dict[str, tuple[int, int]]:
    """Byte spans of the values of a JSON object's top-level keys."""
    pos = _skip_ws(buf, 0)
    if pos >= len(buf) or buf[pos] != 0x7B:
        raise errors.WireFormatError("JSON body is not an object")
    text = buf.decode("ascii") if len(buf) <= C_SCAN_MAX and buf.isascii() else None
    spans: dict[str, tuple[int, int]] = {}
    pos += 1
    while True:
        pos = _skip_ws(buf, pos)
        if pos < len(buf) and buf[pos] == 0x7D:
            return spans
        key_end = _value_end(buf, pos)
        key = json.loads(buf[pos:key_end])
        pos = _skip_ws(buf, key_end)
        if pos >= len(buf) or buf[pos] != 0x3A:
            raise errors.WireFormatError("expected ':' in JSON object")
        start = _skip_ws(buf, pos + 1)
        end = _value_end(buf, start) if text is None or start >= len(buf) else _c_value_end(text, start)
        spans[key] = (start, end)
        pos = _skip_ws(buf, end)
        if pos < len(buf) and buf[pos] == 0x2C:
            pos += 1
        elif pos < len(buf) and buf[pos] == 0x7D:
            return spans
        else:
            raise errors.WireFormatError("expected ',' or '}' in JSON object")


def _array_items(buf: bytes, start: int, end: int) -> list[bytes]:
    pos = _skip_ws(buf, start + 1)
    items = []
    while pos < end - 1:
        item_end = _value_end(buf, pos)
        items.append(buf[pos:item_end])
        pos = _skip_ws(buf, item_end)
        if buf[pos] == 0x2C:
            pos = _skip_ws(buf, pos + 1)
    return items


def _json_object(body: bytes) -> dict[str, object]:
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise errors.WireFormatError(f"JSON object does not parse: {exc}") from exc
    if not isinstance(value, dict):
        raise errors.WireFormatError("JSON value is not an object")
    return value


def _meta_of(value: dict[str, object]) -> tuple[str, str, str]:
    meta = value.get("metadata") or {}
    if not isinstance(meta, dict):
        raise errors.WireFormatError("JSON object's metadata is not an object")
    return _text(meta, "namespace"), _text(meta, "name"), _text(meta, "resourceVersion")


def _text(meta: dict[str, object], key: str) -> str:
    value = meta.get(key, "")
    return value if isinstance(value, str) else ""


def _json_meta(body: bytes) -> tuple[str, str, str]:
    return _meta_of(_json_object(body))


def _json_str(buf: bytes, spans: dict[str, tuple[int, int]], key: str) -> str:
    if key not in spans:
        return ""
    value = json.loads(buf[spans[key][0] : spans[key][1]])
    return value if isinstance(value, str) else ""


# --- objects, lists and events -------------------------------------------------------------------

_T = TypeVar("_T")


def _wire_errors(fn: Callable[[Encoding, bytes], _T]) -> Callable[[Encoding, bytes], _T]:
    """Any failure to read a body is a WireFormatError, whatever deep call noticed it."""

    @functools.wraps(fn)
    def wrapper(encoding: Encoding, body: bytes) -> _T:
        try:
            return fn(encoding, body)
        except errors.WireFormatError:
            raise
        except (ValueError, UnicodeDecodeError, IndexError, KeyError, TypeError, AttributeError) as exc:
            raise errors.WireFormatError(f"{type(exc).__name__}: {exc}") from exc

    return wrapper


@_wire_errors
def parse_object(encoding: Encoding, body: bytes) -> Obj:
    if encoding is Encoding.PROTOBUF:
        _av, _kind, raw = unwrap(body)
        namespace, name, rv = _object_meta(raw)
    else:
        body = body if body.endswith(b"\n") else body + b"\n"  # the apiserver ends JSON bodies with one
        namespace, name, rv = _json_meta(body)
    if not name:
        raise errors.WireFormatError("object has no metadata.name")
    return Obj(namespace, name, rv, body)


_ITEMS_AFTER_HEAD = b',"items":['
LIST_HEAD_MAX = 4096


def json_list_head(body: bytes) -> tuple[str, int] | None:
    """For a whole JSON list as kube-apiserver writes it (`{"kind":...,"apiVersion":...,"metadata":{...},
    "items":[...]}`, no white space), its resourceVersion and where its items start; None for anything else
    (another layout, a page with a `continue`, a head past `LIST_HEAD_MAX`), which is then handled as any list.

    What it is for: a LIST without a resourceVersion is answered at the cloud's current revision, so two LISTs
    of the same unchanged objects differ in that one field. Comparing what follows the head tells the cache
    that nothing but the resourceVersion moved, without parsing a thousand objects again (`remote._keep`)."""
    at = body.find(_ITEMS_AFTER_HEAD, 0, LIST_HEAD_MAX)
    if at < 0:
        return None
    try:
        head = json.loads(body[:at] + b"}")
    except ValueError:
        return None
    if not isinstance(head, dict) or set(head) != {"kind", "apiVersion", "metadata"}:
        return None
    meta = head["metadata"]
    if not isinstance(meta, dict) or meta.get("continue"):
        return None
    rv = meta.get("resourceVersion")
    return (rv, at) if isinstance(rv, str) and rv else None


@_wire_errors
def parse_list(encoding: Encoding, body: bytes) -> ListBody:
    if encoding is Encoding.PROTOBUF:
        api_version, kind, raw = unwrap(body)
        item_kind = kind.removesuffix("List")
        rv = cont = ""
        items = []
        for number, _wt, value in fields(raw):
            if number == 1 and isinstance(value, bytes):
                for n, _w, v in fields(value):
                    if n == 2:
                        rv = _string(v)
                    elif n == 3:
                        cont = _string(v)
            elif number == 2 and isinstance(value, bytes):
                namespace, name, item_rv = _object_meta(value)
                items.append(Obj(namespace, name, item_rv, wrap(api_version, item_kind, value)))
        return ListBody(api_version, kind, rv, not cont, False, items)
    spans = top_level(body)
    if "items" not in spans:
        raise errors.WireFormatError("JSON list has no items")
    api_version, kind = _json_str(body, spans, "apiVersion"), _json_str(body, spans, "kind")
    meta = json.loads(body[slice(*spans["metadata"])]) if "metadata" in spans else {}
    prefix = _json_type_prefix(kind.removesuffix("List"), api_version)
    raw_items = _array_items(body, *spans["items"])
    parsed = [_json_object(i) for i in raw_items]
    typed = bool(raw_items) and all("kind" in p for p in parsed)
    items = []
    for raw_item, item in zip(raw_items, parsed, strict=True):
        full = (raw_item if typed else prefix + raw_item[_skip_ws(raw_item, 1) :]) + b"\n"
        namespace, name, item_rv = _meta_of(item)
        items.append(Obj(namespace, name, item_rv, full))
    rv = meta.get("resourceVersion", "")
    start, end = spans["items"]
    head, tail = body[: start + 1], body[end - 1 :]
    old_rv = b'"resourceVersion":' + json.dumps(rv).encode()
    envelope = b""
    if (head + tail).count(old_rv) == 1:
        marked = b'"resourceVersion":"' + _RV + b'"'
        envelope = head.replace(old_rv, marked) + _ITEMS + tail.replace(old_rv, marked)
    return ListBody(api_version, kind, rv, not meta.get("continue"), typed, items, envelope)


def build_list(
    encoding: Encoding,
    api_version: str,
    kind: str,
    rv: str,
    items_typed: bool,
    items: list[bytes],
    envelope: bytes = b"",
) -> bytes:
    """A complete LIST body with these items (GET forms), framed as the apiserver frames it."""
    if encoding is Encoding.PROTOBUF:
        list_meta = bytes_field(1, b"") + bytes_field(2, rv.encode()) + bytes_field(3, b"")
        raw = bytes_field(1, list_meta) + b"".join(bytes_field(2, unwrap(i)[2]) for i in items)
        return wrap(api_version, kind, raw)
    prefix = _json_type_prefix(kind.removesuffix("List"), api_version)
    parts = []
    for item in (i.removesuffix(b"\n") for i in items):
        if items_typed:
            parts.append(item)
        elif item.startswith(prefix):  # built-in kinds: list items carry no kind/apiVersion
            parts.append(b"{" + item[len(prefix) :])
        else:
            untyped = {k: v for k, v in json.loads(item).items() if k not in ("kind", "apiVersion")}
            parts.append(json.dumps(untyped, separators=(",", ":")).encode())
    if envelope:
        head, tail = envelope.split(_ITEMS, 1)
        value = json.dumps(rv).encode()[1:-1]
        return head.replace(_RV, value) + b",".join(parts) + tail.replace(_RV, value)
    head = (
        b'{"kind":'
        + json.dumps(kind).encode()
        + b',"apiVersion":'
        + json.dumps(api_version).encode()
        + b',"metadata":{"resourceVersion":'
        + json.dumps(rv).encode()
        + b'},"items":['
    )
    return head + b",".join(parts) + b"]}\n"


def _json_type_prefix(kind: str, api_version: str) -> bytes:
    """How the apiserver starts a built-in object's JSON GET body: kind first, then apiVersion."""
    return b'{"kind":' + json.dumps(kind).encode() + b',"apiVersion":' + json.dumps(api_version).encode() + b","


@_wire_errors
def parse_event(encoding: Encoding, frame: bytes) -> Event:
    if encoding is Encoding.PROTOBUF:
        event_type, obj_body = "", b""
        for number, _wt, value in fields(frame):
            if number == 1:
                event_type = _string(value)
            elif number == 2 and isinstance(value, bytes):
                for n, _w, v in fields(value):
                    if n == 1 and isinstance(v, bytes):
                        obj_body = v
    else:
        spans = top_level(frame)
        event_type = _json_str(frame, spans, "type")
        obj_body = frame[slice(*spans["object"])] if "object" in spans else b""
    if not event_type:
        raise errors.WireFormatError("watch event has no type")
    if event_type == "ERROR":
        return Event(event_type, None)
    if event_type == "BOOKMARK":
        if encoding is Encoding.PROTOBUF:
            _ns, _n, rv = _object_meta(unwrap(obj_body)[2])
        else:
            rv = _json_meta(obj_body)[2]
        return Event(event_type, Obj("", "", rv, b""))
    return Event(event_type, parse_object(encoding, obj_body))


class FrameSplitter:
    """Cuts a watch stream into event frames as bytes arrive: lines for JSON, length prefixes for protobuf."""

    MAX_FRAME = 64 * 1024 * 1024

    def __init__(self, encoding: Encoding) -> None:
        self.encoding = encoding
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        frames = []
        if self.encoding is Encoding.JSON:
            while (nl := self._buf.find(b"\n")) >= 0:
                line = bytes(self._buf[:nl]).strip()
                del self._buf[: nl + 1]
                if line:
                    frames.append(line)
            if len(self._buf) > self.MAX_FRAME:
                raise errors.WireFormatError("watch event longer than 64 MiB")
            return frames
        while len(self._buf) >= 4:
            length = int.from_bytes(self._buf[:4], "big")
            if length > self.MAX_FRAME:
                raise errors.WireFormatError(f"watch frame of {length} bytes")
            if len(self._buf) < 4 + length:
                break
            frames.append(bytes(self._buf[4 : 4 + length]))
            del self._buf[: 4 + length]
        return frames

    @property
    def pending(self) -> int:
        return len(self._buf)
