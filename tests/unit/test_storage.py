"""One contract, two storages: the SQLite cache on disk and the in-memory one beside it."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit import wirefixtures as fx
from yurthub import storage, wire

ENC = wire.Encoding.PROTOBUF
SCOPE = storage.Scope("kubelet", ENC, "configmaps.v1.core")
ALL = storage.ViewKey(SCOPE, "ns")
SELECTED = storage.ViewKey(SCOPE, "ns", label_selector="app=x")


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[storage.Storage]:
    if request.param == "memory":
        yield storage.MemoryStorage()
    else:
        s = storage.SqliteStorage(tmp_path / "cache")
        yield s
        s.close()


def names(store: storage.Storage, key: storage.ViewKey) -> list[str]:
    view = store.read_view(key)
    assert view is not None
    return [wire.parse_object(ENC, b).name for b in view.items]


def test_a_list_replaces_the_view_so_objects_gone_from_the_cloud_disappear(store: storage.Storage) -> None:
    a, b, c = (fx.obj(ENC, n, "5") for n in "abc")
    store.replace_list(ALL, wire.parse_list(ENC, fx.listing(ENC, "10", a, b)))
    assert names(store, ALL) == ["a", "b"]
    store.replace_list(ALL, wire.parse_list(ENC, fx.listing(ENC, "20", b, c)))
    assert names(store, ALL) == ["b", "c"]
    assert store.read_view(ALL).resource_version == "20"  # type: ignore[union-attr]


def test_each_selector_is_its_own_view(store: storage.Storage) -> None:
    a, b = fx.obj(ENC, "a", "5"), fx.obj(ENC, "b", "5")
    store.replace_list(ALL, wire.parse_list(ENC, fx.listing(ENC, "10", a, b)))
    store.replace_list(SELECTED, wire.parse_list(ENC, fx.listing(ENC, "10", b)))
    assert names(store, ALL) == ["a", "b"]
    assert names(store, SELECTED) == ["b"]
    assert store.read_view(storage.ViewKey(SCOPE, "ns", label_selector="app=y")) is None


def test_resource_version_never_goes_backwards(store: storage.Storage) -> None:
    store.put_object(SCOPE, fx.obj(ENC, "a", "10", "new"))
    store.put_object(SCOPE, fx.obj(ENC, "a", "9", "old"))
    assert store.get_object(SCOPE, "ns", "a") == fx.obj(ENC, "a", "10", "new").body
    store.apply_events(ALL, [wire.Event("MODIFIED", fx.obj(ENC, "a", "8", "older"))])
    assert store.get_object(SCOPE, "ns", "a") == fx.obj(ENC, "a", "10", "new").body


def test_watch_events_apply_in_order(store: storage.Storage) -> None:
    store.replace_list(ALL, wire.parse_list(ENC, fx.listing(ENC, "10", fx.obj(ENC, "a", "5"))))
    store.apply_events(
        ALL,
        [
            wire.Event("ADDED", fx.obj(ENC, "b", "11")),
            wire.Event("MODIFIED", fx.obj(ENC, "a", "12", "changed")),
            wire.Event("DELETED", fx.obj(ENC, "b", "13")),
            wire.Event("BOOKMARK", wire.Obj("", "", "14", b"")),
        ],
    )
    assert names(store, ALL) == ["a"]
    assert store.get_object(SCOPE, "ns", "a") == fx.obj(ENC, "a", "12", "changed").body
    assert store.get_object(SCOPE, "ns", "b") is None
    assert store.read_view(ALL).resource_version == "14"  # type: ignore[union-attr]


def test_deleted_from_a_selector_view_keeps_an_object_another_view_lists(store: storage.Storage) -> None:
    a = fx.obj(ENC, "a", "5")
    store.replace_list(ALL, wire.parse_list(ENC, fx.listing(ENC, "10", a)))
    store.replace_list(SELECTED, wire.parse_list(ENC, fx.listing(ENC, "10", a)))
    store.apply_events(SELECTED, [wire.Event("DELETED", fx.obj(ENC, "a", "11"))])  # no longer matches app=x
    assert names(store, SELECTED) == []
    assert names(store, ALL) == ["a"]
    assert store.get_object(SCOPE, "ns", "a") is not None


def test_usage_counts_objects_per_component_and_resource(store: storage.Storage) -> None:
    store.put_object(SCOPE, fx.obj(ENC, "a", "1"))
    store.put_object(SCOPE, fx.obj(ENC, "b", "1"))
    [usage] = store.usage()
    assert (usage.component, usage.gvr, usage.objects) == ("kubelet", "configmaps.v1.core", 2)


def test_sqlite_cache_is_private_and_survives_reopening(tmp_path: Path) -> None:
    s = storage.SqliteStorage(tmp_path / "cache")
    s.replace_list(ALL, wire.parse_list(ENC, fx.listing(ENC, "10", fx.obj(ENC, "a", "5"))))
    s.close()
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "cache" / storage.SqliteStorage.FILE).stat().st_mode) == 0o600
    reopened = storage.SqliteStorage(tmp_path / "cache")
    assert names(reopened, ALL) == ["a"]
    reopened.close()


def test_a_corrupted_cache_file_is_set_aside_and_a_new_one_begins(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    s = storage.SqliteStorage(directory)
    s.put_object(SCOPE, fx.obj(ENC, "a", "5"))
    s.close()
    path = directory / storage.SqliteStorage.FILE
    data = bytearray(path.read_bytes())
    data[0:16] = b"not a database!!"
    path.write_bytes(bytes(data))
    fresh = storage.SqliteStorage(directory)
    assert fresh.set_aside is not None and fresh.set_aside.exists()
    assert fresh.get_object(SCOPE, "ns", "a") is None
    fresh.put_object(SCOPE, fx.obj(ENC, "a", "6"))
    assert fresh.get_object(SCOPE, "ns", "a") is not None
    fresh.close()
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(fresh.set_aside).execute("PRAGMA quick_check").fetchone()
