"""Lists split into objects and rebuild byte for byte; watch streams split into events; bad bytes are refused."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit import wirefixtures as fx
from yurthub import errors, wire

ENCODINGS = [wire.Encoding.JSON, wire.Encoding.PROTOBUF]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_list_splits_into_get_forms_and_rebuilds_exactly(encoding: wire.Encoding) -> None:
    a, b = fx.obj(encoding, "a", "5", "x"), fx.obj(encoding, "b", "7", "y" * 300)
    body = fx.listing(encoding, "9", a, b)
    parsed = wire.parse_list(encoding, body)
    assert (parsed.kind, parsed.resource_version, parsed.complete) == ("ConfigMapList", "9", True)
    assert [(o.name, o.resource_version, o.body) for o in parsed.items] == [("a", "5", a.body), ("b", "7", b.body)]
    assert (
        wire.build_list(encoding, "v1", "ConfigMapList", "9", parsed.items_typed, [o.body for o in parsed.items])
        == body
    )


def test_json_list_page_with_continue_is_incomplete() -> None:
    body = b'{"kind":"ConfigMapList","apiVersion":"v1","metadata":{"resourceVersion":"3","continue":"x"},"items":[]}'
    assert not wire.parse_list(wire.Encoding.JSON, body).complete


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_watch_stream_splits_into_events_across_arbitrary_chunks(encoding: wire.Encoding) -> None:
    objs = [fx.obj(encoding, f"o{i}", str(10 + i), "z" * (i * 50)) for i in range(5)]
    frames = [fx.event(encoding, "MODIFIED", o.body) for o in objs]
    if encoding is wire.Encoding.PROTOBUF:
        stream = b"".join(len(f).to_bytes(4, "big") + f for f in frames)
    else:
        stream = b"".join(f + b"\n" for f in frames)
    splitter = wire.FrameSplitter(encoding)
    got = []
    for i in range(0, len(stream), 7):
        got += splitter.feed(stream[i : i + 7])
    assert splitter.pending == 0
    events = [wire.parse_event(encoding, f) for f in got]
    assert [(e.type, e.obj.name if e.obj else "", e.obj.body if e.obj else b"") for e in events] == [
        ("MODIFIED", o.name, o.body) for o in objs
    ]


@pytest.mark.parametrize("encoding", ENCODINGS)
@given(
    prefix=st.sampled_from([b"", wire.MAGIC, b"{", b'{"items":[', b'{"type":"ADDED","object":']),
    garbage=st.binary(max_size=200),
)
def test_garbage_is_a_wire_format_error_never_a_crash(encoding: wire.Encoding, prefix: bytes, garbage: bytes) -> None:
    for parse in (wire.parse_list, wire.parse_object, wire.parse_event):
        with contextlib.suppress(errors.WireFormatError):
            parse(encoding, prefix + garbage)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_truncated_list_is_refused(encoding: wire.Encoding) -> None:
    body = fx.listing(encoding, "9", fx.obj(encoding, "a", "5", "x" * 100))
    with pytest.raises(errors.WireFormatError):
        wire.parse_list(encoding, body[: len(body) // 2])


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet=st.characters(codec="utf-8")),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


@given(values=st.lists(_JSON_VALUES, max_size=5), ensure_ascii=st.booleans())
def test_json_list_items_are_split_exactly_whatever_their_strings_hold(
    values: list[object], ensure_ascii: bool
) -> None:
    """Item spans come from patterns that skip strings (quotes, backslashes, brackets inside them)."""
    items = [
        {"kind": "ConfigMap", "metadata": {"name": f"n{i}", "resourceVersion": "5"}, "data": v}
        for i, v in enumerate(values)
    ]
    raw = [json.dumps(item, ensure_ascii=ensure_ascii).encode() for item in items]
    body = (
        b'{"kind":"ConfigMapList","apiVersion":"v1","metadata":{"resourceVersion":"9"},"items":['
        + b" , ".join(raw)
        + b"]}"
    )
    listing = wire.parse_list(wire.Encoding.JSON, body)
    assert [json.loads(o.body) for o in listing.items] == items
    assert [o.name for o in listing.items] == [f"n{i}" for i in range(len(values))]


def _pattern_spans(body: bytes) -> dict[str, tuple[int, int]]:
    """`wire.top_level` as it scans a body too big for the C scanner: patterns only."""
    padded = body + b" " * (wire.C_SCAN_MAX + 1 - len(body))
    return wire.top_level(padded)


@given(
    event=st.dictionaries(st.text(max_size=6), _JSON_VALUES, max_size=5),
    ensure_ascii=st.booleans(),
    spacing=st.sampled_from([(",", ":"), (", ", ": "), (" ,\n ", " :\t")]),
)
def test_an_objects_top_level_spans_are_the_same_whichever_scanner_finds_them(
    event: dict[str, object], ensure_ascii: bool, spacing: tuple[str, str]
) -> None:
    """Small ASCII bodies (watch events) are scanned by the json module's C scanner, others by patterns:
    both give the byte spans of exactly the cloud's bytes of each value, non-ASCII strings included."""
    body = json.dumps(event, ensure_ascii=ensure_ascii, separators=spacing).encode()
    spans = wire.top_level(body)
    assert spans == _pattern_spans(body)
    assert {k: json.loads(body[a:b]) for k, (a, b) in spans.items()} == event


@pytest.mark.parametrize(
    "body",
    [
        b'{"type":"MODIFIED","object":{"a":[1,2}}',
        b'{"type":"MODIFIED","object":{"a":tru}}',
        b'{"type":"MODIFIED","object":{"a":"x}',
        b'{"type":"MODIFIED","object":',
        b'{"type":"MODIFIED","object":{"a":1}',
    ],
)
def test_a_broken_event_is_a_wire_format_error_from_either_scanner(body: bytes) -> None:
    for scanned in (body, body + b" " * (wire.C_SCAN_MAX + 1 - len(body))):
        with pytest.raises(errors.WireFormatError):
            wire.parse_event(wire.Encoding.JSON, scanned)


@pytest.mark.parametrize(
    ("content_type", "head", "refused"),
    [
        ("application/json", b"", False),
        ("application/json", b" \r\n\t", False),
        ("application/json", b'  {"a":1}', False),
        ("application/json", b"null", False),
        ("Application/JSON; charset=utf-8", b"\xef\xbb\xbf{}", True),
        ("application/json-patch+json", b"[]", False),
        ("application/merge-patch+json", b"<", True),
        (wire.PROTOBUF, b"k8s", False),
        (wire.PROTOBUF, b"k8s\x00\x0a", False),
        (wire.PROTOBUF, b"{}{}", True),
        ("application/yaml", b"\x00\x01", False),
        ("", b"\x00\x01", False),
    ],
)
def test_body_refusal_says_no_only_to_what_cannot_be_its_content_type(
    content_type: str, head: bytes, refused: bool
) -> None:
    assert (wire.body_refusal(content_type, head) is not None) is refused
