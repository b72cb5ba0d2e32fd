"""Lists split into objects and rebuild byte for byte; watch streams split into events; bad bytes are refused."""

from __future__ import annotations

import contextlib

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
