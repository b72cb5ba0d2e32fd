"""One contract, two storages: the SQLite cache on disk and the in-memory one beside it.

The cache holds what the cloud currently lists: deletions (relist, watch, a 404) remove objects and leave
bounded tombstones, views and idle token scopes are bounded, and SQLite keeps all of it across restarts."""

from __future__ import annotations

import base64
import json
import random
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit import wirefixtures as fx
from yurthub import errors, storage, wire

ENC = wire.Encoding.PROTOBUF
SCOPE = storage.Scope("kubelet", ENC, "configmaps.v1.core")
ALL = storage.ViewKey(SCOPE, "ns")
SELECTED = storage.ViewKey(SCOPE, "ns", label_selector="app=x")


JSON_SCOPE = storage.Scope("kubelet", wire.Encoding.JSON, "configmaps.v1.core")
BY_NAME = storage.ViewKey(SCOPE, "ns", field_selector="metadata.name=a")


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


Factory = Callable[..., storage.Storage]


@pytest.fixture(params=["memory", "sqlite"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    """Builds a storage of the parametrized kind with the given keyword settings."""
    opened: list[storage.SqliteStorage] = []

    def build(**settings: Any) -> storage.Storage:
        if request.param == "memory":
            return storage.MemoryStorage(**settings)
        s = storage.SqliteStorage(tmp_path / f"cache{len(opened)}", **settings)
        opened.append(s)
        return s

    yield build
    for s in opened:
        s.close()


@pytest.fixture
def store(make: Factory) -> storage.Storage:
    return make()


def listed(store: storage.Storage, key: storage.ViewKey, rv: str, *objs: wire.Obj) -> None:
    store.replace_list(key, wire.parse_list(key.scope.encoding, fx.listing(key.scope.encoding, rv, *objs)))


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


# --- objects the cloud deleted -------------------------------------------------------------------


def test_a_relist_deletes_what_the_cloud_no_longer_lists_and_remembers_it_deleted(store: storage.Storage) -> None:
    listed(store, ALL, "10", fx.obj(ENC, "a", "5"), fx.obj(ENC, "b", "6"))
    listed(store, ALL, "20", fx.obj(ENC, "b", "6"))
    assert store.get_object(SCOPE, "ns", "a") is None
    assert store.is_deleted("kubelet", SCOPE.gvr, "ns", "a")
    assert not store.is_deleted("kubelet", SCOPE.gvr, "ns", "b")
    assert store.counts().objects == 1


def test_a_deletion_removes_the_object_in_every_encoding(store: storage.Storage) -> None:
    store.put_object(JSON_SCOPE, fx.obj(wire.Encoding.JSON, "a", "5"))
    listed(store, ALL, "10", fx.obj(ENC, "a", "5"))
    listed(store, ALL, "20")
    assert store.get_object(JSON_SCOPE, "ns", "a") is None


def test_an_object_only_ever_read_by_get_is_untouched_by_relists(store: storage.Storage) -> None:
    store.put_object(SCOPE, fx.obj(ENC, "solo", "3"))
    listed(store, ALL, "10", fx.obj(ENC, "a", "5"))
    listed(store, ALL, "20")
    assert store.get_object(SCOPE, "ns", "solo") is not None
    assert not store.is_deleted("kubelet", SCOPE.gvr, "ns", "solo")


def test_an_object_that_left_a_selecting_view_is_dropped_but_not_called_deleted(store: storage.Storage) -> None:
    listed(store, SELECTED, "10", fx.obj(ENC, "a", "5"), fx.obj(ENC, "b", "5"))
    other = storage.ViewKey(SCOPE, "ns", label_selector="tier=web")
    listed(store, other, "10", fx.obj(ENC, "b", "5"))
    listed(store, SELECTED, "20")  # a and b stopped matching app=x (or were deleted: a selector cannot tell)
    assert store.get_object(SCOPE, "ns", "a") is None
    assert not store.is_deleted("kubelet", SCOPE.gvr, "ns", "a")
    assert store.get_object(SCOPE, "ns", "b") is not None  # tier=web still lists it
    assert names(store, other) == ["b"]


def test_a_watch_deletion_from_a_full_or_by_name_view_is_a_tombstone(store: storage.Storage) -> None:
    listed(store, ALL, "10", fx.obj(ENC, "a", "5"))
    store.apply_events(ALL, [wire.Event("DELETED", fx.obj(ENC, "a", "11"))])
    assert store.is_deleted("kubelet", SCOPE.gvr, "ns", "a")
    store.put_object(SCOPE, fx.obj(ENC, "a", "12"))
    listed(store, BY_NAME, "12", fx.obj(ENC, "a", "12"))  # kubelet's per-object watch of a ConfigMap
    store.apply_events(BY_NAME, [wire.Event("DELETED", fx.obj(ENC, "a", "13"))])
    assert store.get_object(SCOPE, "ns", "a") is None
    assert store.is_deleted("kubelet", SCOPE.gvr, "ns", "a")
    assert names(store, BY_NAME) == []


def test_a_watch_deletion_from_a_selecting_view_is_not_a_tombstone(store: storage.Storage) -> None:
    listed(store, SELECTED, "10", fx.obj(ENC, "a", "5"))
    store.apply_events(SELECTED, [wire.Event("DELETED", fx.obj(ENC, "a", "11"))])
    assert store.get_object(SCOPE, "ns", "a") is None
    assert not store.is_deleted("kubelet", SCOPE.gvr, "ns", "a")


def test_a_newer_write_clears_the_tombstone_an_older_one_cannot_resurrect(store: storage.Storage) -> None:
    listed(store, ALL, "10", fx.obj(ENC, "a", "5"))
    listed(store, ALL, "20")
    store.put_object(SCOPE, fx.obj(ENC, "a", "15"))  # a GET answer from before the deletion, stored late
    assert store.get_object(SCOPE, "ns", "a") is None
    assert store.is_deleted("kubelet", SCOPE.gvr, "ns", "a")
    store.apply_events(ALL, [wire.Event("ADDED", fx.obj(ENC, "a", "21"))])  # made again
    assert store.get_object(SCOPE, "ns", "a") is not None
    assert not store.is_deleted("kubelet", SCOPE.gvr, "ns", "a")
    assert names(store, ALL) == ["a"]


def test_a_relist_keeps_an_object_written_after_the_list_was_taken(store: storage.Storage) -> None:
    listed(store, ALL, "10", fx.obj(ENC, "a", "5"))
    store.put_object(SCOPE, fx.obj(ENC, "a", "30"))  # newer than the list below
    listed(store, ALL, "20")
    assert store.get_object(SCOPE, "ns", "a") is not None
    assert not store.is_deleted("kubelet", SCOPE.gvr, "ns", "a")


# --- a list older than the view (its body finished after newer watch events were stored) -----------


def test_an_older_list_keeps_members_newer_events_added_and_the_view_never_goes_back(store: storage.Storage) -> None:
    listed(store, ALL, "10", fx.obj(ENC, "a", "5"))
    store.apply_events(ALL, [wire.Event("ADDED", fx.obj(ENC, "b", "12"))])
    listed(store, ALL, "11", fx.obj(ENC, "a", "5"))  # its snapshot was taken before b was made
    assert names(store, ALL) == ["a", "b"]
    assert store.read_view(ALL).resource_version == "12"  # type: ignore[union-attr]
    store.apply_events(ALL, [wire.Event("ADDED", fx.obj(ENC, "c", "13"))])
    assert names(store, ALL) == ["a", "b", "c"]  # no gap: the set the cloud had at 13
    assert not store.is_deleted("kubelet", SCOPE.gvr, "ns", "b")


def test_an_older_list_does_not_bring_back_what_newer_events_deleted(store: storage.Storage) -> None:
    listed(store, ALL, "10", fx.obj(ENC, "a", "5"), fx.obj(ENC, "b", "6"))
    store.apply_events(ALL, [wire.Event("DELETED", fx.obj(ENC, "b", "12"))])
    listed(store, ALL, "11", fx.obj(ENC, "a", "5"), fx.obj(ENC, "b", "6"))
    assert names(store, ALL) == ["a"]
    assert store.get_object(SCOPE, "ns", "b") is None
    assert store.is_deleted("kubelet", SCOPE.gvr, "ns", "b")
    assert store.read_view(ALL).resource_version == "12"  # type: ignore[union-attr]


def test_an_older_list_does_not_bring_back_what_left_a_selecting_view(store: storage.Storage) -> None:
    listed(store, SELECTED, "10", fx.obj(ENC, "a", "5"), fx.obj(ENC, "b", "6"))
    store.apply_events(SELECTED, [wire.Event("DELETED", fx.obj(ENC, "b", "12"))])  # no longer matches app=x
    listed(store, SELECTED, "11", fx.obj(ENC, "a", "5"), fx.obj(ENC, "b", "6"))
    assert names(store, SELECTED) == ["a"]
    assert store.get_object(SCOPE, "ns", "b") is None


def test_an_older_list_updates_members_and_drops_those_gone_before_it(store: storage.Storage) -> None:
    listed(store, ALL, "10", fx.obj(ENC, "a", "5"), fx.obj(ENC, "b", "6"))
    store.apply_events(ALL, [wire.Event("ADDED", fx.obj(ENC, "c", "20"))])
    # the list at 15 says b was gone by then (a deletion the view missed) and has a newer a
    listed(store, ALL, "15", fx.obj(ENC, "a", "14", "changed"))
    assert names(store, ALL) == ["a", "c"]
    assert store.get_object(SCOPE, "ns", "a") == fx.obj(ENC, "a", "14", "changed").body
    assert store.is_deleted("kubelet", SCOPE.gvr, "ns", "b")
    assert store.read_view(ALL).resource_version == "20"  # type: ignore[union-attr]


def test_a_list_whose_resource_versions_do_not_compare_replaces_the_view(store: storage.Storage) -> None:
    listed(store, ALL, "10", fx.obj(ENC, "a", "5"))
    store.apply_events(ALL, [wire.Event("ADDED", fx.obj(ENC, "b", "12"))])
    listed(store, ALL, "opaque", fx.obj(ENC, "a", "5"))
    assert names(store, ALL) == ["a"]
    assert store.read_view(ALL).resource_version == "opaque"  # type: ignore[union-attr]


def test_delete_object_is_a_404_from_the_cloud(store: storage.Storage) -> None:
    store.put_object(SCOPE, fx.obj(ENC, "a", "5"))
    store.put_object(JSON_SCOPE, fx.obj(wire.Encoding.JSON, "a", "5"))
    store.delete_object("kubelet", SCOPE.gvr, "ns", "a")
    assert store.get_object(SCOPE, "ns", "a") is None
    assert store.get_object(JSON_SCOPE, "ns", "a") is None
    assert store.is_deleted("kubelet", SCOPE.gvr, "ns", "a")
    store.delete_object("kubelet", SCOPE.gvr, "ns", "optional-config")  # never held, same resource type
    assert store.is_deleted("kubelet", SCOPE.gvr, "ns", "optional-config")
    store.put_object(SCOPE, fx.obj(ENC, "a", "40"))
    assert not store.is_deleted("kubelet", SCOPE.gvr, "ns", "a")


def test_404s_for_resource_types_a_component_holds_nothing_of_store_nothing(store: storage.Storage) -> None:
    for n in range(5):
        store.delete_object("token/x", f"made-up{n}.v1.example.com", "ns", "a")
    assert store.counts() == storage.Counts(views=0, components=0, token_scopes=0, tombstones=0, objects=0)


def test_tombstones_are_capped_per_resource_oldest_first(make: Factory) -> None:
    store = make(max_tombstones_per_scope=3)
    store.put_object(SCOPE, fx.obj(ENC, "held", "1"))
    for n in range(5):
        store.delete_object("kubelet", SCOPE.gvr, "ns", f"gone{n}")
    assert [store.is_deleted("kubelet", SCOPE.gvr, "ns", f"gone{n}") for n in range(5)] == [
        False,
        False,
        True,
        True,
        True,
    ]
    assert store.counts().tombstones == 3


# --- bounds --------------------------------------------------------------------------------------


def test_views_per_scope_are_capped_least_recently_used_first(make: Factory) -> None:
    clock = Clock()
    store = make(max_views_per_scope=2, clock=clock)
    first, second, third = (storage.ViewKey(SCOPE, "ns", field_selector=f"metadata.name={n}") for n in "abc")
    listed(store, first, "10", fx.obj(ENC, "a", "5"))
    clock.now += 1
    listed(store, second, "10", fx.obj(ENC, "b", "5"))
    clock.now += 1
    assert store.read_view(first) is not None  # a read counts as use: `second` is now the oldest
    clock.now += 1
    assert store.forgotten() == 0
    listed(store, third, "10", fx.obj(ENC, "c", "5"))
    assert store.forgotten() == 1  # whoever skips storing a list it stored before must store `second` again
    assert store.read_view(second) is None
    assert store.get_object(SCOPE, "ns", "b") is None  # only that view held it
    assert not store.is_deleted("kubelet", SCOPE.gvr, "ns", "b")  # evicted, not deleted in the cloud
    assert names(store, first) == ["a"]
    assert names(store, third) == ["c"]
    assert store.counts().views == 2


def test_idle_components_are_dropped_whole(make: Factory) -> None:
    clock = Clock()
    store = make(clock=clock)
    old, busy = storage.Scope("token/old", ENC, SCOPE.gvr), storage.Scope("token/busy", ENC, SCOPE.gvr)
    for s in (old, busy):
        listed(store, storage.ViewKey(s, "ns"), "10", fx.obj(ENC, "a", "5"), fx.obj(ENC, "b", "5"))
        listed(store, storage.ViewKey(s, "ns"), "11", fx.obj(ENC, "a", "5"))  # b: a tombstone
    store.put_object(SCOPE, fx.obj(ENC, "a", "5"))
    clock.now += 3600
    assert store.get_object(busy, "ns", "a") is not None  # a read is a use
    assert store.counts() == storage.Counts(views=2, components=3, token_scopes=2, tombstones=2, objects=3)
    assert store.forgotten() == 0
    assert store.drop_idle("token/", clock.now - 1800) == 1
    assert store.forgotten() == 1  # the old scope's one view
    assert store.get_object(old, "ns", "a") is None
    assert store.read_view(storage.ViewKey(old, "ns")) is None
    assert not store.is_deleted("token/old", SCOPE.gvr, "ns", "b")
    assert store.get_object(busy, "ns", "a") is not None
    assert store.get_object(SCOPE, "ns", "a") is not None  # not a token scope: never expired this way
    assert store.counts() == storage.Counts(views=1, components=2, token_scopes=1, tombstones=1, objects=2)
    assert store.drop_idle("token/", clock.now - 1800) == 0


def test_the_cache_follows_what_the_cloud_lists(store: storage.Storage) -> None:
    many = [fx.obj(ENC, f"o{n:03}", "5", "x" * 100) for n in range(200)]
    listed(store, ALL, "10", *many)
    assert store.counts().objects == 200
    listed(store, ALL, "20", *many[:10])
    assert store.counts().objects == 10
    assert [u.objects for u in store.usage()] == [10]


def _noise(seed: int, size: int) -> str:
    """Text that does not compress much (bodies are stored compressed), the same for the same seed."""
    return base64.b64encode(random.Random(seed).randbytes(size * 3 // 4)).decode()  # noqa: S311 - test data


def test_sqlite_deleted_rows_are_gone_and_their_pages_reused(tmp_path: Path) -> None:
    s = storage.SqliteStorage(tmp_path / "cache")
    many = [fx.obj(ENC, f"o{n:03}", "5", _noise(n, 2000)) for n in range(200)]
    s.replace_list(ALL, wire.parse_list(ENC, fx.listing(ENC, "10", *many)))
    db = sqlite3.connect(s.path)
    peak = db.execute("PRAGMA page_count").fetchone()[0]
    s.replace_list(ALL, wire.parse_list(ENC, fx.listing(ENC, "20", *many[:10])))
    assert db.execute("SELECT COUNT(*) FROM objects").fetchone()[0] == 10
    assert db.execute("PRAGMA freelist_count").fetchone()[0] > 0
    again = [fx.obj(ENC, f"p{n:03}", "25", _noise(1000 + n, 2000)) for n in range(190)]
    s.replace_list(ALL, wire.parse_list(ENC, fx.listing(ENC, "30", *many[:10], *again)))
    assert db.execute("SELECT COUNT(*) FROM objects").fetchone()[0] == 200
    assert db.execute("PRAGMA page_count").fetchone()[0] <= peak * 1.1  # freed pages were used again
    db.close()
    s.close()


def test_sqlite_tombstones_and_last_use_survive_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    s = storage.SqliteStorage(tmp_path / "cache", clock=clock)
    token = storage.Scope("token/t", ENC, SCOPE.gvr)
    listed(s, ALL, "10", fx.obj(ENC, "a", "5"))
    listed(s, ALL, "20")
    listed(s, storage.ViewKey(token, "ns"), "10", fx.obj(ENC, "a", "5"))
    clock.now += 10
    s.get_object(token, "ns", "a")  # a read: kept in memory, written at close
    s.close()
    reopened = storage.SqliteStorage(tmp_path / "cache", clock=clock)
    assert reopened.is_deleted("kubelet", SCOPE.gvr, "ns", "a")
    assert reopened.drop_idle("token/", clock.now - 5) == 0  # its last use was the read, 10 s after the write
    assert reopened.drop_idle("token/", clock.now + 1) == 1
    reopened.close()


_SCHEMA_V1 = """
CREATE TABLE objects (
    component TEXT NOT NULL, encoding TEXT NOT NULL, gvr TEXT NOT NULL,
    namespace TEXT NOT NULL, name TEXT NOT NULL, rv TEXT NOT NULL, rvn INTEGER, body BLOB NOT NULL,
    PRIMARY KEY (component, encoding, gvr, namespace, name)
) WITHOUT ROWID;
CREATE TABLE views (
    id INTEGER PRIMARY KEY,
    component TEXT NOT NULL, encoding TEXT NOT NULL, gvr TEXT NOT NULL, namespace TEXT NOT NULL,
    label TEXT NOT NULL, field TEXT NOT NULL,
    api_version TEXT NOT NULL, kind TEXT NOT NULL, rv TEXT NOT NULL, typed INTEGER NOT NULL,
    envelope BLOB NOT NULL,
    UNIQUE (component, encoding, gvr, namespace, label, field)
);
CREATE TABLE members (
    view INTEGER NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    PRIMARY KEY (view, namespace, name)
) WITHOUT ROWID;
PRAGMA user_version=1;
"""


def test_a_version_1_cache_is_migrated_and_keeps_serving(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    db = sqlite3.connect(tmp_path / "cache" / storage.SqliteStorage.FILE)
    db.executescript(_SCHEMA_V1)
    a = fx.obj(ENC, "a", "5")
    db.execute(
        "INSERT INTO objects VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        ("kubelet", ENC.value, SCOPE.gvr, "ns", "a", "5", 5, a.body),
    )
    db.execute(
        "INSERT INTO views (component, encoding, gvr, namespace, label, field, api_version, kind, rv, typed, "
        "envelope) VALUES ('kubelet', ?, ?, 'ns', '', '', 'v1', 'ConfigMapList', '10', 0, x'')",
        (ENC.value, SCOPE.gvr),
    )
    db.execute("INSERT INTO members VALUES (1, 'ns', 'a')")
    db.commit()
    db.close()
    s = storage.SqliteStorage(tmp_path / "cache")
    assert s.set_aside is None
    assert names(s, ALL) == ["a"]
    assert s.counts() == storage.Counts(views=1, components=1, token_scopes=0, tombstones=0, objects=1)
    listed(s, ALL, "20")
    assert s.is_deleted("kubelet", SCOPE.gvr, "ns", "a")
    s.close()


def test_a_version_2_cache_is_migrated_to_a_rowid_objects_table_and_keeps_everything(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    db = sqlite3.connect(tmp_path / "cache" / storage.SqliteStorage.FILE)
    db.executescript(_SCHEMA_V1.replace("PRAGMA user_version=1;", ""))
    db.executescript(
        """
        ALTER TABLE views ADD COLUMN used REAL NOT NULL DEFAULT 0;
        CREATE TABLE tombstones (
            id INTEGER PRIMARY KEY,
            component TEXT NOT NULL, gvr TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
            rv TEXT NOT NULL, UNIQUE (component, gvr, namespace, name)
        );
        CREATE INDEX tombstones_age ON tombstones (component, gvr, id);
        CREATE TABLE components (component TEXT PRIMARY KEY, used REAL NOT NULL) WITHOUT ROWID;
        PRAGMA user_version=2;
        """
    )
    a = fx.obj(ENC, "a", "5")
    db.execute(
        "INSERT INTO objects VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        ("kubelet", ENC.value, SCOPE.gvr, "ns", "a", "5", 5, a.body),
    )
    db.execute(
        "INSERT INTO views (component, encoding, gvr, namespace, label, field, api_version, kind, rv, typed, "
        "envelope, used) VALUES ('kubelet', ?, ?, 'ns', '', '', 'v1', 'ConfigMapList', '10', 0, x'', 1)",
        (ENC.value, SCOPE.gvr),
    )
    db.execute("INSERT INTO members VALUES (1, 'ns', 'a')")
    db.execute(
        "INSERT INTO tombstones (component, gvr, namespace, name, rv) VALUES ('kubelet', ?, 'ns', 'z', '4')",
        (SCOPE.gvr,),
    )
    db.execute("INSERT INTO components VALUES ('kubelet', 1)")
    db.commit()
    db.close()
    s = storage.SqliteStorage(tmp_path / "cache")
    assert s.set_aside is None
    assert names(s, ALL) == ["a"]
    assert s.get_object(SCOPE, "ns", "a") == a.body
    assert s.is_deleted("kubelet", SCOPE.gvr, "ns", "z")
    s.put_object(SCOPE, fx.obj(ENC, "a", "6", "newer"))  # the unique key still decides what an upsert replaces
    assert s.get_object(SCOPE, "ns", "a") == fx.obj(ENC, "a", "6", "newer").body
    assert s.counts().objects == 1
    s.close()
    db = sqlite3.connect(tmp_path / "cache" / storage.SqliteStorage.FILE)
    (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name='objects'").fetchone()
    assert "WITHOUT ROWID" not in sql
    assert db.execute("PRAGMA user_version").fetchone()[0] == storage.SCHEMA_VERSION
    db.close()


def test_a_list_of_kilobyte_objects_takes_about_its_own_size_on_disk(tmp_path: Path) -> None:
    """1,000 objects of 1.4 KB, like a node's pods in protobuf: the database file, its write-ahead log and
    shared memory together stay under twice the objects' bytes (a WITHOUT ROWID table put each on an overflow
    page of its own, and the log kept a second copy: 6.5 times), and every object reads back intact."""
    s = storage.SqliteStorage(tmp_path / "cache")
    objs = [fx.obj(ENC, f"p{i:04}", str(100 + i), "x" * 1400) for i in range(1000)]
    for rv in ("2000", "3000"):  # a relist of the same objects, as after a reconnect
        listed(s, ALL, rv, *objs)
    payload = sum(len(o.body) for o in objs)
    on_disk = sum(p.stat().st_size for p in (tmp_path / "cache").iterdir())
    assert on_disk < 2 * payload
    view = s.read_view(ALL)
    assert view is not None and view.items == [o.body for o in objs]
    s.close()
    reopened = storage.SqliteStorage(tmp_path / "cache")
    assert reopened.set_aside is None
    assert reopened.get_object(SCOPE, "ns", "p0999") == objs[-1].body
    reopened.close()


def _pod_json(i: int) -> bytes:
    """A pod's JSON as kube-apiserver sends it, about 1.9 KB: what kubelet's pod list caches."""
    pod = {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": f"web-{i:04}",
            "namespace": "shop",
            "uid": f"0f6c2a4e-{i:04}-4b7e-9d1a-5c3e8f2b1a{i % 100:02}",
            "resourceVersion": str(1000 + i),
            "labels": {"app": "web", "pod-template-hash": "5d8f7c9b4"},
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f7c9b4", "uid": "u", "controller": True}
            ],
        },
        "spec": {
            "nodeName": "edge-1",
            "containers": [
                {
                    "name": "web",
                    "image": "busybox:1.36",
                    "command": ["httpd", "-f", "-p", "8080"],
                    "terminationMessagePath": "/dev/termination-log",
                    "imagePullPolicy": "IfNotPresent",
                }
            ],
            "tolerations": [
                {"key": k, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
                for k in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
            ],
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": "2026-11-29T10:00:00Z"}
                for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
            ],
            "podIP": f"10.244.{i // 250}.{i % 250}",
            "containerStatuses": [{"name": "web", "ready": True, "restartCount": 0, "imageID": "sha256:" + f"{i:064}"}],
        },
    }
    return json.dumps(pod).encode()


def test_a_node_pods_are_stored_compressed_and_read_back_as_the_cloud_sent_them(tmp_path: Path) -> None:
    """1,000 pods as JSON (kubelet's pod list) take well under their own bytes on disk, and every one reads
    back byte for byte, from the view, by name and per scope, after a reopen."""
    scope = storage.Scope("kubelet", wire.Encoding.JSON, "pods.v1.core")
    view = storage.ViewKey(scope, "")
    s = storage.SqliteStorage(tmp_path / "cache")
    body = b'{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"5000"},"items":['
    listing = wire.parse_list(wire.Encoding.JSON, body + b",".join(_pod_json(i) for i in range(1000)) + b"]}")
    objs = listing.items
    s.replace_list(view, listing)
    payload = sum(len(o.body) for o in objs)
    assert sum(u.bytes for u in s.usage()) < payload / 2  # usage counts the bytes as stored
    s.close()  # the log checkpointed into the file (unpacked, the file alone was 1.15x the payload)
    on_disk = sum(p.stat().st_size for p in (tmp_path / "cache").iterdir())
    assert on_disk < payload * 0.7, (on_disk, payload)
    reopened = storage.SqliteStorage(tmp_path / "cache")
    got = reopened.read_view(view)
    assert got is not None and got.items == [o.body for o in objs]
    assert reopened.get_object(scope, "shop", "web-0999") == objs[-1].body
    assert reopened.scope_objects(scope) == [o.body for o in objs]
    reopened.close()


@pytest.mark.parametrize(
    "body",
    [b"", b"{}", b"k8s\x00" + bytes(range(256)) * 4, b"\x00", b"\x00" + b"a" * 1000, b'{"a":"' + b"b" * 5000 + b'"}'],
)
def test_every_body_is_stored_so_that_it_reads_back_exactly(body: bytes) -> None:
    """Small bodies and incompressible ones are kept as they are; a body that starts with the packed marker is
    always packed, so no stored body is ever taken for what it is not."""
    stored = storage.pack(body)
    assert storage.unpack(stored) == body
    assert stored.startswith(storage.PACKED) == (body.startswith(storage.PACKED) or stored != body)


def test_a_packed_body_that_does_not_inflate_is_a_storage_error(tmp_path: Path) -> None:
    s = storage.SqliteStorage(tmp_path / "cache")
    s.put_object(SCOPE, fx.obj(ENC, "a", "5", "x" * 2000))
    s.close()
    db = sqlite3.connect(tmp_path / "cache" / storage.SqliteStorage.FILE)
    (stored,) = db.execute("SELECT body FROM objects").fetchone()
    assert stored.startswith(storage.PACKED)
    db.execute("UPDATE objects SET body=?", (stored[:-8] + b"\xff" * 8,))
    db.commit()
    db.close()
    s = storage.SqliteStorage(tmp_path / "cache")
    with pytest.raises(errors.StorageError, match="does not inflate"):
        s.get_object(SCOPE, "ns", "a")
    s.close()


def test_a_cache_of_an_unknown_schema_version_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    db = sqlite3.connect(tmp_path / "cache" / storage.SqliteStorage.FILE)
    db.executescript("CREATE TABLE future (x); PRAGMA user_version=99;")
    db.close()
    s = storage.SqliteStorage(tmp_path / "cache")
    assert s.set_aside is not None and s.set_aside.exists()
    assert s.counts().objects == 0
    s.close()


def test_evicting_a_view_keeps_the_objects_the_new_view_lists(make: Factory) -> None:
    clock = Clock()
    store = make(max_views_per_scope=1, clock=clock)
    listed(store, SELECTED, "10", fx.obj(ENC, "a", "5"), fx.obj(ENC, "b", "5"))
    clock.now += 1
    listed(store, ALL, "11", fx.obj(ENC, "a", "5"))
    assert store.read_view(SELECTED) is None
    assert names(store, ALL) == ["a"]
    assert store.get_object(SCOPE, "ns", "b") is None


@pytest.mark.parametrize(
    ("label", "field", "exhaustive"),
    [
        ("", "", True),
        ("", "metadata.name=a", True),
        ("", "metadata.name==a", True),
        ("", "spec.nodeName=edge-1", True),  # a pod's node never changes once set
        ("", "metadata.namespace=ns,metadata.name=a", True),
        ("app=x", "", False),
        ("", "metadata.name!=a", False),
        ("", "status.phase=Running", False),
        ("", "spec.nodeName=edge-1,status.phase!=Succeeded", False),
    ],
)
def test_which_views_say_an_object_missing_from_them_is_gone(label: str, field: str, exhaustive: bool) -> None:
    assert storage.ViewKey(SCOPE, "ns", label, field).exhaustive is exhaustive


def test_a_pod_that_left_kubelets_node_view_is_deleted(store: storage.Storage) -> None:
    pods = storage.ViewKey(storage.Scope("kubelet", ENC, "pods.v1.core"), "", field_selector="spec.nodeName=edge-1")
    listed(store, pods, "10", fx.obj(ENC, "web-0", "5"), fx.obj(ENC, "web-1", "5"))
    listed(store, pods, "20", fx.obj(ENC, "web-1", "5"))
    assert store.get_object(pods.scope, "ns", "web-0") is None
    assert store.is_deleted("kubelet", "pods.v1.core", "ns", "web-0")


def test_a_client_inventing_selectors_cannot_grow_the_cache(store: storage.Storage) -> None:
    hostile = storage.Scope(storage.TOKEN_SCOPE + "abc", ENC, SCOPE.gvr)
    for n in range(storage.MAX_VIEWS_PER_SCOPE + 50):
        key = storage.ViewKey(hostile, "ns", label_selector=f"x={n}")
        listed(store, key, str(n + 10), fx.obj(ENC, f"o{n}", "5"))
    counts = store.counts()
    assert counts.views == storage.MAX_VIEWS_PER_SCOPE
    assert counts.objects == storage.MAX_VIEWS_PER_SCOPE  # the evicted views' objects went with them


def test_sqlite_reads_never_write(tmp_path: Path) -> None:
    clock = Clock()
    s = storage.SqliteStorage(tmp_path / "cache", clock=clock)
    listed(s, ALL, "10", fx.obj(ENC, "a", "5"))
    listed(s, ALL, "20")  # a tombstone for a
    watcher = sqlite3.connect(s.path)
    before = watcher.execute("PRAGMA data_version").fetchone()[0]
    for _ in range(3):
        clock.now += storage.USE_FLUSH_S * 2
        assert s.read_view(ALL) is not None
        assert s.get_object(SCOPE, "ns", "a") is None
        assert s.is_deleted("kubelet", SCOPE.gvr, "ns", "a")
        s.counts()
    assert watcher.execute("PRAGMA data_version").fetchone()[0] == before  # no other connection committed
    s.put_object(SCOPE, fx.obj(ENC, "b", "30"))
    assert watcher.execute("PRAGMA data_version").fetchone()[0] != before  # (the probe does see commits)
    watcher.close()
    s.close()


def test_touch_counts_as_use_and_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    s = storage.SqliteStorage(tmp_path / "cache", clock=clock)
    s.put_object(storage.Scope("token/t", ENC, SCOPE.gvr), fx.obj(ENC, "a", "5"))
    clock.now += 100
    s.touch("token/t")
    s.touch("token/never-held")
    s.close()
    reopened = storage.SqliteStorage(tmp_path / "cache", clock=clock)
    assert reopened.counts().components == 1
    assert reopened.drop_idle("token/", clock.now - 50) == 0
    reopened.close()


# --- events out of order (two streams of one view, a GET answer stored late) -----------------------------


@pytest.mark.parametrize("key", [ALL, SELECTED], ids=["full", "selecting"])
def test_a_deletion_older_than_what_the_view_holds_keeps_the_member(
    store: storage.Storage, key: storage.ViewKey
) -> None:
    listed(store, key, "10", fx.obj(ENC, "a", "5"))
    store.apply_events(key, [wire.Event("MODIFIED", fx.obj(ENC, "a", "20", "made again"))])
    store.apply_events(key, [wire.Event("DELETED", fx.obj(ENC, "a", "15"))])  # from a stream behind the view
    assert names(store, key) == ["a"]
    assert store.get_object(SCOPE, "ns", "a") == fx.obj(ENC, "a", "20", "made again").body
    assert not store.is_deleted("kubelet", SCOPE.gvr, "ns", "a")


def test_a_deletion_older_than_the_stored_copy_keeps_the_member_of_a_full_view(store: storage.Storage) -> None:
    listed(store, ALL, "10", fx.obj(ENC, "a", "5"))
    store.put_object(SCOPE, fx.obj(ENC, "a", "20", "made again"))  # a GET answer: a exists at 20
    store.apply_events(ALL, [wire.Event("DELETED", fx.obj(ENC, "a", "15"))])
    assert names(store, ALL) == ["a"]  # what a GET answers, the list shows too
    assert store.get_object(SCOPE, "ns", "a") == fx.obj(ENC, "a", "20", "made again").body


def test_an_old_event_does_not_put_back_a_member_that_left_a_selecting_view(store: storage.Storage) -> None:
    listed(store, ALL, "10", fx.obj(ENC, "a", "5"))
    listed(store, SELECTED, "10", fx.obj(ENC, "a", "5"))
    store.apply_events(SELECTED, [wire.Event("DELETED", fx.obj(ENC, "a", "12"))])  # no longer matches app=x
    store.apply_events(ALL, [wire.Event("MODIFIED", fx.obj(ENC, "a", "12"))])
    store.apply_events(SELECTED, [wire.Event("ADDED", fx.obj(ENC, "a", "8"))])  # from a stream behind the view
    assert names(store, SELECTED) == []
    assert names(store, ALL) == ["a"]


def test_an_old_event_does_not_put_back_a_member_whose_stored_copy_is_newer(store: storage.Storage) -> None:
    listed(store, ALL, "10", fx.obj(ENC, "a", "5"))
    listed(store, SELECTED, "3")
    store.apply_events(ALL, [wire.Event("MODIFIED", fx.obj(ENC, "a", "12", "relabelled"))])
    store.apply_events(SELECTED, [wire.Event("ADDED", fx.obj(ENC, "a", "8"))])  # matched app=x at 8, not at 12
    assert names(store, SELECTED) == []
    assert store.get_object(SCOPE, "ns", "a") == fx.obj(ENC, "a", "12", "relabelled").body


def test_an_old_event_cannot_resurrect_what_a_404_deleted(store: storage.Storage) -> None:
    listed(store, ALL, "10", fx.obj(ENC, "a", "5"))
    store.delete_object("kubelet", SCOPE.gvr, "ns", "a")  # a GET answered 404: gone after 5
    store.apply_events(ALL, [wire.Event("ADDED", fx.obj(ENC, "a", "5"))])  # a watch from before, stored late
    assert store.get_object(SCOPE, "ns", "a") is None
    assert store.is_deleted("kubelet", SCOPE.gvr, "ns", "a")
    assert names(store, ALL) == []
    store.apply_events(ALL, [wire.Event("ADDED", fx.obj(ENC, "a", "30"))])  # made again
    assert names(store, ALL) == ["a"]


def test_an_old_deletion_does_not_move_a_tombstone_back(store: storage.Storage) -> None:
    listed(store, ALL, "10", fx.obj(ENC, "a", "5"))
    store.apply_events(ALL, [wire.Event("DELETED", fx.obj(ENC, "a", "20"))])
    store.apply_events(ALL, [wire.Event("DELETED", fx.obj(ENC, "a", "12"))])  # an older stream's deletion
    store.apply_events(ALL, [wire.Event("ADDED", fx.obj(ENC, "a", "15"))])  # between the two: still gone at 20
    assert store.get_object(SCOPE, "ns", "a") is None
    assert store.is_deleted("kubelet", SCOPE.gvr, "ns", "a")
    assert names(store, ALL) == []
