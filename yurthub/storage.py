"""The cache's storage seam: objects in their GET form, and list views that say which objects a LIST had.

A *view* is one (component, encoding, resource, namespace, label selector, field selector): every distinct
way a component lists a resource is remembered and answerable offline on its own, so a client that lists
pods twice with two selectors (OpenYurt issue #1400) is served both. Objects are stored once per
(component, encoding, resource) and shared by the views that list them.

Contract, for both implementations (`SqliteStorage` on disk, `MemoryStorage` beside it for tests):
- `replace_list` swaps a view's whole membership in one transaction: a crash leaves the old list or the
  new one, never a mix, and objects the cloud no longer lists drop out of the view.
- An object's resourceVersion never goes backwards: an older write is ignored.
- `apply_events` applies a batch of watch events in order, in one transaction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from yurthub import errors, wire

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Scope:
    """Where a component's objects of one resource type and encoding live."""

    component: str
    encoding: wire.Encoding
    gvr: str


@dataclasses.dataclass(frozen=True)
class ViewKey:
    scope: Scope
    namespace: str
    """The namespace the LIST was scoped to; empty for all namespaces or cluster-scoped resources."""
    label_selector: str = ""
    field_selector: str = ""

    @property
    def selects(self) -> bool:
        return bool(self.label_selector or self.field_selector)


@dataclasses.dataclass(frozen=True)
class View:
    api_version: str
    kind: str
    resource_version: str
    items_typed: bool
    items: list[bytes]
    envelope: bytes = b""


@dataclasses.dataclass(frozen=True)
class Usage:
    component: str
    gvr: str
    encoding: str
    objects: int
    bytes: int


class Storage(Protocol):
    def replace_list(self, key: ViewKey, listing: wire.ListBody) -> None: ...
    def apply_events(self, key: ViewKey, events: Sequence[wire.Event]) -> None: ...
    def put_object(self, scope: Scope, obj: wire.Obj) -> None: ...
    def get_object(self, scope: Scope, namespace: str, name: str) -> bytes | None: ...
    def read_view(self, key: ViewKey) -> View | None: ...
    def usage(self) -> list[Usage]: ...


def rv_number(rv: str) -> int | None:
    return int(rv) if rv.isdigit() else None


def newer_or_same(new: str, old: str | None) -> bool:
    """Whether `new` may replace `old`: resourceVersions compare as numbers when both are numbers."""
    if old is None:
        return True
    n, o = rv_number(new), rv_number(old)
    return n is None or o is None or n >= o


# --- in memory -----------------------------------------------------------------------------------


@dataclasses.dataclass
class _MemView:
    api_version: str
    kind: str
    rv: str
    typed: bool
    members: set[tuple[str, str]]
    envelope: bytes


class MemoryStorage:
    """The same contract in dicts; for tests and as the reference the SQLite one is checked against."""

    def __init__(self) -> None:
        self._objects: dict[Scope, dict[tuple[str, str], wire.Obj]] = {}
        self._views: dict[ViewKey, _MemView] = {}

    def _put(self, scope: Scope, obj: wire.Obj) -> None:
        objects = self._objects.setdefault(scope, {})
        old = objects.get((obj.namespace, obj.name))
        if newer_or_same(obj.resource_version, old.resource_version if old else None):
            objects[(obj.namespace, obj.name)] = obj

    def replace_list(self, key: ViewKey, listing: wire.ListBody) -> None:
        for obj in listing.items:
            self._put(key.scope, obj)
        members = {(o.namespace, o.name) for o in listing.items}
        self._views[key] = _MemView(
            listing.api_version, listing.kind, listing.resource_version, listing.items_typed, members, listing.envelope
        )

    def apply_events(self, key: ViewKey, events: Sequence[wire.Event]) -> None:
        view = self._views.get(key)
        for event in events:
            obj = event.obj
            if obj is None:
                continue
            if view is not None and newer_or_same(obj.resource_version, view.rv):
                view.rv = obj.resource_version
            if event.type in ("ADDED", "MODIFIED"):
                self._put(key.scope, obj)
                if view is not None:
                    view.members.add((obj.namespace, obj.name))
            elif event.type == "DELETED":
                self._delete(key, obj)

    def _delete(self, key: ViewKey, obj: wire.Obj) -> None:
        ident = (obj.namespace, obj.name)
        views = [v for k, v in self._views.items() if k.scope == key.scope]
        view = self._views.get(key)
        if view is not None:
            view.members.discard(ident)
        # Without a selector, DELETED means gone from the cloud; with one, maybe only "no longer matches".
        if not key.selects or not any(ident in v.members for v in views):
            current = self._objects.get(key.scope, {}).get(ident)
            if current is None or newer_or_same(obj.resource_version, current.resource_version):
                self._objects.get(key.scope, {}).pop(ident, None)
                for v in views:
                    v.members.discard(ident)

    def put_object(self, scope: Scope, obj: wire.Obj) -> None:
        self._put(scope, obj)

    def get_object(self, scope: Scope, namespace: str, name: str) -> bytes | None:
        obj = self._objects.get(scope, {}).get((namespace, name))
        return obj.body if obj else None

    def read_view(self, key: ViewKey) -> View | None:
        view = self._views.get(key)
        if view is None:
            return None
        objects = self._objects.get(key.scope, {})
        items = [objects[m].body for m in sorted(view.members) if m in objects]
        return View(view.api_version, view.kind, view.rv, view.typed, items, view.envelope)

    def usage(self) -> list[Usage]:
        return [
            Usage(s.component, s.gvr, s.encoding.value, len(objs), sum(len(o.body) for o in objs.values()))
            for s, objs in sorted(self._objects.items(), key=lambda kv: (kv[0].component, kv[0].gvr))
            if objs
        ]


# --- SQLite on disk ------------------------------------------------------------------------------

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    component TEXT NOT NULL, encoding TEXT NOT NULL, gvr TEXT NOT NULL,
    namespace TEXT NOT NULL, name TEXT NOT NULL, rv TEXT NOT NULL, rvn INTEGER, body BLOB NOT NULL,
    PRIMARY KEY (component, encoding, gvr, namespace, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS views (
    id INTEGER PRIMARY KEY,
    component TEXT NOT NULL, encoding TEXT NOT NULL, gvr TEXT NOT NULL, namespace TEXT NOT NULL,
    label TEXT NOT NULL, field TEXT NOT NULL,
    api_version TEXT NOT NULL, kind TEXT NOT NULL, rv TEXT NOT NULL, typed INTEGER NOT NULL,
    envelope BLOB NOT NULL,
    UNIQUE (component, encoding, gvr, namespace, label, field)
);
CREATE TABLE IF NOT EXISTS members (
    view INTEGER NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    PRIMARY KEY (view, namespace, name)
) WITHOUT ROWID;
"""

_UPSERT = """
INSERT INTO objects (component, encoding, gvr, namespace, name, rv, rvn, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (component, encoding, gvr, namespace, name) DO UPDATE SET rv = excluded.rv, rvn = excluded.rvn,
    body = excluded.body
WHERE excluded.rvn IS NULL OR objects.rvn IS NULL OR excluded.rvn >= objects.rvn
"""


class SqliteStorage:
    """The cache on disk, one SQLite file in WAL mode, readable by root only.

    Writes are atomic per call (one transaction). With `synchronous=NORMAL` a killed process loses
    nothing committed; a power cut may lose the last commits but never leaves a torn list or object.
    A file that fails SQLite's integrity check at start is moved aside and a new cache begins; the
    cloud fills it again.
    """

    FILE = "cache.sqlite3"

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        directory.chmod(0o700)
        self.path = directory / self.FILE
        self.set_aside: Path | None = None
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            self.set_aside = self.path.with_name(f"{self.FILE}.corrupt-{int(time.time())}")
            log.error(
                "cache file %s is damaged (%s); moved to %s, starting an empty cache",
                self.path,
                exc,
                self.set_aside,
            )
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{self.path}{suffix}")
                if src.exists():
                    src.rename(Path(f"{self.set_aside}{suffix}"))
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        old_umask = os.umask(0o077)
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        finally:
            os.umask(old_umask)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            result = db.execute("PRAGMA quick_check").fetchone()[0]
            if result != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {result}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            empty = db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
            if not empty and version != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"cache schema version {version}, this yurthub uses {SCHEMA_VERSION}")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise errors.StorageError(f"cache write failed: {exc}") from exc

    @staticmethod
    def _row(scope: Scope, obj: wire.Obj) -> tuple[object, ...]:
        return (
            scope.component,
            scope.encoding.value,
            scope.gvr,
            obj.namespace,
            obj.name,
            obj.resource_version,
            rv_number(obj.resource_version),
            obj.body,
        )

    def _view_id(self, db: sqlite3.Connection, key: ViewKey) -> int | None:
        s = key.scope
        row = db.execute(
            "SELECT id FROM views WHERE component=? AND encoding=? AND gvr=? AND namespace=? AND label=? AND field=?",
            (s.component, s.encoding.value, s.gvr, key.namespace, key.label_selector, key.field_selector),
        ).fetchone()
        return int(row[0]) if row else None

    def replace_list(self, key: ViewKey, listing: wire.ListBody) -> None:
        s = key.scope
        with self._tx() as db:
            db.executemany(_UPSERT, [self._row(s, o) for o in listing.items])
            view = self._view_id(db, key)
            if view is None:
                view = db.execute(
                    "INSERT INTO views (component, encoding, gvr, namespace, label, field, api_version, kind, "
                    "rv, typed, envelope) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (
                        s.component,
                        s.encoding.value,
                        s.gvr,
                        key.namespace,
                        key.label_selector,
                        key.field_selector,
                        listing.api_version,
                        listing.kind,
                        listing.resource_version,
                        int(listing.items_typed),
                        listing.envelope,
                    ),
                ).fetchone()[0]
            else:
                db.execute(
                    "UPDATE views SET api_version=?, kind=?, rv=?, typed=?, envelope=? WHERE id=?",
                    (
                        listing.api_version,
                        listing.kind,
                        listing.resource_version,
                        int(listing.items_typed),
                        listing.envelope,
                        view,
                    ),
                )
                db.execute("DELETE FROM members WHERE view=?", (view,))
            db.executemany(
                "INSERT OR IGNORE INTO members (view, namespace, name) VALUES (?, ?, ?)",
                [(view, o.namespace, o.name) for o in listing.items],
            )

    def apply_events(self, key: ViewKey, events: Sequence[wire.Event]) -> None:
        s = key.scope
        with self._tx() as db:
            view = self._view_id(db, key)
            for event in events:
                obj = event.obj
                if obj is None:
                    continue
                if view is not None and obj.resource_version:
                    current = db.execute("SELECT rv FROM views WHERE id=?", (view,)).fetchone()[0]
                    if newer_or_same(obj.resource_version, current):
                        db.execute("UPDATE views SET rv=? WHERE id=?", (obj.resource_version, view))
                if event.type in ("ADDED", "MODIFIED"):
                    db.execute(_UPSERT, self._row(s, obj))
                    if view is not None:
                        db.execute(
                            "INSERT OR IGNORE INTO members (view, namespace, name) VALUES (?, ?, ?)",
                            (view, obj.namespace, obj.name),
                        )
                elif event.type == "DELETED":
                    self._delete(db, key, view, obj)

    def _delete(self, db: sqlite3.Connection, key: ViewKey, view: int | None, obj: wire.Obj) -> None:
        s = key.scope
        if view is not None:
            db.execute("DELETE FROM members WHERE view=? AND namespace=? AND name=?", (view, obj.namespace, obj.name))
        scope_views = "SELECT id FROM views WHERE component=? AND encoding=? AND gvr=?"
        scope_args = (s.component, s.encoding.value, s.gvr)
        if key.selects:
            still = db.execute(
                f"SELECT 1 FROM members WHERE namespace=? AND name=? AND view IN ({scope_views}) LIMIT 1",  # noqa: S608 - fixed SQL, values bound
                (obj.namespace, obj.name, *scope_args),
            ).fetchone()
            if still:
                return
        row = db.execute(
            "SELECT rv FROM objects WHERE component=? AND encoding=? AND gvr=? AND namespace=? AND name=?",
            (*scope_args, obj.namespace, obj.name),
        ).fetchone()
        if row is not None and not newer_or_same(obj.resource_version, row[0]):
            return
        db.execute(
            "DELETE FROM objects WHERE component=? AND encoding=? AND gvr=? AND namespace=? AND name=?",
            (*scope_args, obj.namespace, obj.name),
        )
        db.execute(
            f"DELETE FROM members WHERE namespace=? AND name=? AND view IN ({scope_views})",  # noqa: S608 - fixed SQL, values bound
            (obj.namespace, obj.name, *scope_args),
        )

    def put_object(self, scope: Scope, obj: wire.Obj) -> None:
        with self._tx() as db:
            db.execute(_UPSERT, self._row(scope, obj))

    def get_object(self, scope: Scope, namespace: str, name: str) -> bytes | None:
        try:
            row = self._db.execute(
                "SELECT body FROM objects WHERE component=? AND encoding=? AND gvr=? AND namespace=? AND name=?",
                (scope.component, scope.encoding.value, scope.gvr, namespace, name),
            ).fetchone()
        except sqlite3.Error as exc:
            raise errors.StorageError(f"cache read failed: {exc}") from exc
        return bytes(row[0]) if row else None

    def read_view(self, key: ViewKey) -> View | None:
        s = key.scope
        try:
            with self._tx() as db:  # one snapshot: the view's header and its members agree
                view = self._view_id(db, key)
                if view is None:
                    return None
                api_version, kind, rv, typed, envelope = db.execute(
                    "SELECT api_version, kind, rv, typed, envelope FROM views WHERE id=?", (view,)
                ).fetchone()
                rows = db.execute(
                    "SELECT o.body FROM members m JOIN objects o ON o.component=? AND o.encoding=? AND o.gvr=? "
                    "AND o.namespace=m.namespace AND o.name=m.name WHERE m.view=? ORDER BY m.namespace, m.name",
                    (s.component, s.encoding.value, s.gvr, view),
                ).fetchall()
        except errors.StorageError:
            raise
        return View(api_version, kind, rv, bool(typed), [bytes(r[0]) for r in rows], bytes(envelope))

    def usage(self) -> list[Usage]:
        rows = self._db.execute(
            "SELECT component, gvr, encoding, COUNT(*), SUM(LENGTH(body)) FROM objects "
            "GROUP BY component, gvr, encoding ORDER BY component, gvr"
        ).fetchall()
        return [Usage(c, g, e, n, b or 0) for c, g, e, n, b in rows]
