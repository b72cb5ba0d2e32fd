"""The cache's storage seam: objects in their GET form, list views that say which objects a LIST had, and
tombstones for objects the cloud said are gone.

A *view* is one (component, encoding, resource, namespace, label selector, field selector): every distinct
way a component lists a resource is remembered and answerable offline on its own, so a client that lists
pods twice with two selectors (OpenYurt issue #1400) is served both. Objects are stored once per
(component, encoding, resource) -- a `Scope` -- and shared by the views that list them.

Contract, for both implementations (`SqliteStorage` on disk, `MemoryStorage` beside it for tests):
- `replace_list` swaps a view's whole membership in one transaction: a crash leaves the old list or the
  new one, never a mix. An object that dropped out of the view and is in no other view of its scope is
  deleted. If the view is *exhaustive* (`ViewKey.exhaustive`: no label selector, at most a name/namespace
  field selector) the cloud said the object is gone: it is deleted in every encoding and tombstoned. From a
  selecting view it may only have stopped matching: deleted from that scope, not tombstoned. Objects in no
  view (only ever read by GET) are untouched by relists.
- A list *older* than its view (both resourceVersions numbers, the list's lower: its body finished arriving
  after watch events newer than its snapshot were stored) cannot replace the view: the view keeps its
  resourceVersion and the members newer events gave it, gains nothing the list has that it lacks (removed
  since, or tombstoned), and updates the members both hold. It only drops members whose stored copy is no
  newer than the list and that the list lacks (gone by the list's snapshot, a deletion the view missed).
  resourceVersions that do not compare as numbers keep the plain replacement.
- `apply_events` applies a batch of watch events in order, in one transaction; DELETED follows the same
  rule as a relist (tombstone when the view is exhaustive). Events may come out of order across streams
  (two watches of one view, one started from an older resourceVersion): an event older than its view's
  resourceVersion is already reflected in the view and changes no membership; ADDED/MODIFIED makes an
  object a member only when it is now the held copy (not buried, not older than the copy held); DELETED
  from an exhaustive view leaves the object and its memberships alone when a copy newer than the
  deletion is held (it was made again).
- An object's resourceVersion never goes backwards: an older write is ignored, and so is a write no newer
  than the tombstone of that object (a GET answer that was in flight while the object was deleted).
  A newer write (put, list item, ADDED/MODIFIED) clears the tombstone. A tombstone keeps the newest
  resourceVersion known for the object (`tombstone_rv`): a 404, which carries none, buries every write no
  newer than the copy it deleted, and an older deletion never moves a tombstone back.
- `delete_object` is the cloud answering 404 to a GET: the object goes in every encoding and is tombstoned,
  if the component holds anything of that resource type at all.
- Bounded: at most `max_views_per_scope` views per scope (least recently read or written goes first, with
  the objects only it held), at most `max_tombstones_per_scope` tombstones per (component, resource)
  (oldest first), and `drop_idle` removes whole components nobody used since a given time.
- `forgotten()` counts the views eviction and `drop_idle` removed since start (memory, no I/O): a caller
  that skips storing a list identical to the last one it stored must forget those digests when it changes.
- Last use per component is kept in memory on every read and write (and `touch`, for requests that touch
  no storage) and written to disk at most once a minute per component (inside a write transaction that
  happens anyway), by `drop_idle`, and at `close`: reads never write.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from yurthub import errors, wire

log = logging.getLogger(__name__)

TOKEN_SCOPE = "token/"  # noqa: S105 - a cache-key prefix, not a secret
"""Prefix of the components that are one pod token's scope (see `cache.token_scope`); counted apart."""

MAX_VIEWS_PER_SCOPE = 256
"""Default cap on views per (component, encoding, resource). kubelet keeps one view per ConfigMap and Secret
its pods mount (it watches each with `fieldSelector=metadata.name=<name>`), so a full node (110 pods) can
hold well over a hundred views of one resource; 256 leaves room for that while a client inventing selectors
cannot grow the cache without bound."""

MAX_TOMBSTONES_PER_SCOPE = 1024
"""Default cap on tombstones per (component, resource). A tombstone answers an offline GET for an object a
node component may still ask for (a deleted pod, ConfigMap or Secret). 1024 covers several complete
turnovers of a full node's pods and what they mount; a row is ~100 bytes, so a scope's tombstones stay
under ~100 KB even when a client makes the cloud answer 404 to made-up names."""

USE_FLUSH_S = 60.0
"""A component's last use is written to disk at most this often; idle expiry works in token lifetimes
(an hour or more), so a minute of imprecision after a crash does not matter."""

Clock = Callable[[], float]


@dataclasses.dataclass(frozen=True)
class Scope:
    """Where a component's objects of one resource type and encoding live."""

    component: str
    encoding: wire.Encoding
    gvr: str


_FIXED_FIELDS = ("metadata.name", "metadata.namespace", "spec.nodeName")
"""Fields an object cannot change once they match a selector: its name, its namespace, and a pod's node
(`spec.nodeName` is immutable once set; kubelet lists its pods by it)."""


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

    @property
    def exhaustive(self) -> bool:
        """Whether an object missing from this view is missing from the cloud.

        True without selectors, and with a field selector of equalities on fields an object cannot change
        (`_FIXED_FIELDS`: kubelet's per-object watches of ConfigMaps and Secrets, its pods by node): an object
        cannot stop matching those. A label selector or any other field selector may drop an object that
        merely changed.
        """
        if self.label_selector:
            return False
        for term in self.field_selector.split(","):
            field, op, _value = term.strip().partition("=")
            if term.strip() and (not op or field not in _FIXED_FIELDS):
                return False
        return True


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
    """The objects' bytes as the storage holds them (compressed on disk, see `pack`)."""


@dataclasses.dataclass(frozen=True)
class Counts:
    """How much the cache holds, for `yurthub status` and metrics."""

    views: int
    components: int
    """Components that hold anything, token scopes included."""
    token_scopes: int
    tombstones: int
    objects: int


class Storage(Protocol):
    def replace_list(self, key: ViewKey, listing: wire.ListBody) -> None: ...
    def apply_events(self, key: ViewKey, events: Sequence[wire.Event]) -> None: ...
    def put_object(self, scope: Scope, obj: wire.Obj) -> None: ...
    def get_object(self, scope: Scope, namespace: str, name: str) -> bytes | None: ...
    def read_view(self, key: ViewKey) -> View | None: ...
    def delete_object(self, component: str, gvr: str, namespace: str, name: str, rv: str = "") -> None: ...
    def is_deleted(self, component: str, gvr: str, namespace: str, name: str) -> bool: ...
    def touch(self, component: str) -> None: ...
    def forgotten(self) -> int: ...
    def drop_idle(self, prefix: str, before: float) -> int: ...
    def counts(self) -> Counts: ...
    def usage(self) -> list[Usage]: ...
    def scope_objects(self, scope: Scope) -> list[bytes]: ...
    def is_member(self, key: ViewKey, namespace: str, name: str) -> bool: ...


def rv_number(rv: str) -> int | None:
    return int(rv) if rv.isdigit() else None


def newer_or_same(new: str, old: str | None) -> bool:
    """Whether `new` may replace `old`: resourceVersions compare as numbers when both are numbers."""
    if old is None:
        return True
    n, o = rv_number(new), rv_number(old)
    return n is None or o is None or n >= o


def buried(rv: str, tombstone_rv: str | None) -> bool:
    """Whether a write at `rv` is no newer than the deletion at `tombstone_rv` (so it must not resurrect)."""
    if tombstone_rv is None:
        return False
    n, t = rv_number(rv), rv_number(tombstone_rv)
    return n is not None and t is not None and n <= t


def tombstone_rv(rv: str, known: Iterable[str | None]) -> str:
    """The resourceVersion a tombstone keeps: the newest of the deletion's and those `known` of the object
    (its copies, an earlier tombstone). A 404 carries none, and a deletion from an older stream may be older
    than one already recorded; either way what is known to be gone stays gone for every write no newer."""
    numbers = [r for r in (rv, *known) if r is not None and rv_number(r) is not None]
    return max(numbers, key=lambda r: rv_number(r) or 0) if numbers else rv


Written = Literal["buried", "older", "current"]
"""What became of one object written to a scope: refused by its tombstone, kept out by a newer copy already
held, or now the held copy (a copy of the same resourceVersion included)."""

Ident = tuple[str, str]
"""(namespace, name) of an object."""


def older_list_stale(held: dict[Ident, str | None], list_rv: str) -> list[Ident]:
    """Of the members an older list lacks (`held`: member -> its stored copy's resourceVersion, None when no
    copy is held), those it shows gone: a copy no newer than the list was in the cloud's hands when the list
    was taken, so its absence there means it was deleted (or stopped matching) by then. A copy newer than the
    list was written by an event after the list's snapshot and stays."""
    return sorted(m for m, rv in held.items() if rv is None or newer_or_same(list_rv, rv))


# --- in memory -----------------------------------------------------------------------------------


@dataclasses.dataclass
class _MemView:
    api_version: str
    kind: str
    rv: str
    typed: bool
    members: set[Ident]
    envelope: bytes
    used: float


class MemoryStorage:
    """The same contract in dicts; for tests and as the reference the SQLite one is checked against."""

    def __init__(
        self,
        *,
        max_views_per_scope: int = MAX_VIEWS_PER_SCOPE,
        max_tombstones_per_scope: int = MAX_TOMBSTONES_PER_SCOPE,
        clock: Clock = time.time,
    ) -> None:
        self._objects: dict[Scope, dict[Ident, wire.Obj]] = {}
        self._views: dict[ViewKey, _MemView] = {}
        self._tombstones: dict[tuple[str, str], dict[Ident, str]] = {}
        """(component, gvr) -> ident -> deletion rv, oldest first."""
        self._used: dict[str, float] = {}
        self._forgotten = 0
        self._max_views = max_views_per_scope
        self._max_tombstones = max_tombstones_per_scope
        self._clock = clock

    def _wrote(self, component: str) -> None:
        self._used[component] = self._clock()

    def _read(self, component: str) -> None:
        if component in self._used:
            self._used[component] = self._clock()

    def touch(self, component: str) -> None:
        self._read(component)

    def forgotten(self) -> int:
        return self._forgotten

    def _put(self, scope: Scope, obj: wire.Obj) -> Written:
        """Store `obj` unless it is older than what is held or than its tombstone."""
        tombs = self._tombstones.get((scope.component, scope.gvr), {})
        ident = (obj.namespace, obj.name)
        if buried(obj.resource_version, tombs.get(ident)):
            return "buried"
        tombs.pop(ident, None)
        objects = self._objects.setdefault(scope, {})
        old = objects.get(ident)
        if not newer_or_same(obj.resource_version, old.resource_version if old else None):
            return "older"
        objects[ident] = obj
        return "current"

    def _scope_views(self, scope: Scope) -> list[_MemView]:
        return [v for k, v in self._views.items() if k.scope == scope]

    def _gone(self, component: str, gvr: str, ident: Ident, rv: str) -> None:
        """The cloud says `ident` is gone (at `rv`): every encoding's copy goes and a tombstone stays."""
        scopes = [s for s in self._objects if s.component == component and s.gvr == gvr]
        copies = [self._objects[s][ident] for s in scopes if ident in self._objects[s]]
        if any(not newer_or_same(rv, c.resource_version) for c in copies):
            return  # a copy newer than the deletion: the object was made again since
        for s in scopes:
            self._objects[s].pop(ident, None)
        for k, v in self._views.items():
            if k.scope.component == component and k.scope.gvr == gvr:
                v.members.discard(ident)
        tombs = self._tombstones.setdefault((component, gvr), {})
        rv = tombstone_rv(rv, [tombs.pop(ident, None), *(c.resource_version for c in copies)])
        tombs[ident] = rv
        while len(tombs) > self._max_tombstones:
            del tombs[next(iter(tombs))]

    def _drop(self, scope: Scope, ident: Ident, rv: str | None) -> None:
        """Delete one scope's copy of an object no view of that scope lists any more."""
        if any(ident in v.members for v in self._scope_views(scope)):
            return
        current = self._objects.get(scope, {}).get(ident)
        if current is not None and (rv is None or newer_or_same(rv, current.resource_version)):
            del self._objects[scope][ident]

    def replace_list(self, key: ViewKey, listing: wire.ListBody) -> None:
        old = self._views.get(key)
        if old is not None and not newer_or_same(listing.resource_version, old.rv):
            self._merge_older(key, old, listing)
            return
        live = {(o.namespace, o.name) for o in listing.items if self._put(key.scope, o) != "buried"}
        self._views[key] = _MemView(
            listing.api_version,
            listing.kind,
            listing.resource_version,
            listing.items_typed,
            live,
            listing.envelope,
            self._clock(),
        )
        self._wrote(key.scope.component)
        listed = {(o.namespace, o.name) for o in listing.items}
        for ident in sorted(old.members - listed) if old else []:
            if key.exhaustive:
                self._gone(key.scope.component, key.scope.gvr, ident, listing.resource_version)
            else:
                self._drop(key.scope, ident, listing.resource_version)
        if old is None:
            self._evict(key)

    def _merge_older(self, key: ViewKey, view: _MemView, listing: wire.ListBody) -> None:
        """A list older than the view: only what it can still tell (see `older_list_stale`)."""
        objects = self._objects.get(key.scope, {})
        listed = {(o.namespace, o.name) for o in listing.items}
        for o in listing.items:
            if (o.namespace, o.name) in view.members:
                self._put(key.scope, o)
        held = {m: objects[m].resource_version if m in objects else None for m in view.members - listed}
        for ident in older_list_stale(held, listing.resource_version):
            view.members.discard(ident)
            if key.exhaustive:
                self._gone(key.scope.component, key.scope.gvr, ident, listing.resource_version)
            else:
                self._drop(key.scope, ident, listing.resource_version)
        view.used = self._clock()
        self._wrote(key.scope.component)

    def _evict(self, fresh: ViewKey) -> None:
        keys = [k for k in self._views if k.scope == fresh.scope and k != fresh]
        while len(keys) + 1 > self._max_views:
            victim = min(keys, key=lambda k: self._views[k].used)
            keys.remove(victim)
            members = self._views.pop(victim).members
            self._forgotten += 1
            for ident in sorted(members):
                self._drop(victim.scope, ident, None)

    def apply_events(self, key: ViewKey, events: Sequence[wire.Event]) -> None:
        view = self._views.get(key)
        for event in events:
            obj = event.obj
            if obj is None:
                continue
            behind = view is not None and not newer_or_same(obj.resource_version, view.rv)
            if view is not None and not behind:
                view.rv = obj.resource_version
            if event.type in ("ADDED", "MODIFIED"):
                if self._put(key.scope, obj) == "current" and view is not None and not behind:
                    view.members.add((obj.namespace, obj.name))
            elif event.type == "DELETED":
                self._delete(key, obj, behind=behind)
        if view is not None:
            view.used = self._clock()
        self._wrote(key.scope.component)

    def _delete(self, key: ViewKey, obj: wire.Obj, *, behind: bool) -> None:
        ident = (obj.namespace, obj.name)
        # From an exhaustive view, DELETED means gone from the cloud (`_gone` takes the object out of every
        # view unless a copy newer than the deletion says it was made again); with a selector, maybe "no
        # longer matches", which a deletion older than the view no longer tells.
        if key.exhaustive:
            self._gone(key.scope.component, key.scope.gvr, ident, obj.resource_version)
            return
        view = self._views.get(key)
        if view is not None and not behind:
            view.members.discard(ident)
        self._drop(key.scope, ident, obj.resource_version)

    def put_object(self, scope: Scope, obj: wire.Obj) -> None:
        self._put(scope, obj)
        self._wrote(scope.component)

    def get_object(self, scope: Scope, namespace: str, name: str) -> bytes | None:
        self._read(scope.component)
        obj = self._objects.get(scope, {}).get((namespace, name))
        return obj.body if obj else None

    def read_view(self, key: ViewKey) -> View | None:
        self._read(key.scope.component)
        view = self._views.get(key)
        if view is None:
            return None
        view.used = self._clock()
        objects = self._objects.get(key.scope, {})
        items = [objects[m].body for m in sorted(view.members) if m in objects]
        return View(view.api_version, view.kind, view.rv, view.typed, items, view.envelope)

    def _holds(self, component: str, gvr: str) -> bool:
        return (
            any(s.component == component and s.gvr == gvr and objs for s, objs in self._objects.items())
            or any(k.scope.component == component and k.scope.gvr == gvr for k in self._views)
            or bool(self._tombstones.get((component, gvr)))
        )

    def delete_object(self, component: str, gvr: str, namespace: str, name: str, rv: str = "") -> None:
        if not self._holds(component, gvr):
            return
        self._gone(component, gvr, (namespace, name), rv)
        self._wrote(component)

    def is_deleted(self, component: str, gvr: str, namespace: str, name: str) -> bool:
        self._read(component)
        return (namespace, name) in self._tombstones.get((component, gvr), {})

    def drop_idle(self, prefix: str, before: float) -> int:
        idle = {c for c, used in self._used.items() if c.startswith(prefix) and used < before}
        self._objects = {s: o for s, o in self._objects.items() if s.component not in idle}
        kept = {k: v for k, v in self._views.items() if k.scope.component not in idle}
        self._forgotten += len(self._views) - len(kept)
        self._views = kept
        self._tombstones = {cg: t for cg, t in self._tombstones.items() if cg[0] not in idle}
        for component in idle:
            del self._used[component]
        return len(idle)

    def counts(self) -> Counts:
        return Counts(
            views=len(self._views),
            components=len(self._used),
            token_scopes=sum(1 for c in self._used if c.startswith(TOKEN_SCOPE)),
            tombstones=sum(len(t) for t in self._tombstones.values()),
            objects=sum(len(o) for o in self._objects.values()),
        )

    def usage(self) -> list[Usage]:
        return [
            Usage(s.component, s.gvr, s.encoding.value, len(objs), sum(len(o.body) for o in objs.values()))
            for s, objs in sorted(self._objects.items(), key=lambda kv: (kv[0].component, kv[0].gvr))
            if objs
        ]

    def scope_objects(self, scope: Scope) -> list[bytes]:
        """Every object body one scope holds (offline endpoint rewrites look through a component's slices)."""
        self._read(scope.component)
        return [o.body for _, o in sorted(self._objects.get(scope, {}).items())]

    def is_member(self, key: ViewKey, namespace: str, name: str) -> bool:
        """Whether the view lists this object (a held watch of that view is told when it changes offline)."""
        view = self._views.get(key)
        return view is not None and (namespace, name) in view.members


# --- SQLite on disk ------------------------------------------------------------------------------

SCHEMA_VERSION = 4
"""2: tombstones, components (last use) and views.used added. 3: `objects` is a rowid table (see `_OBJECTS`).
4: bodies may be stored compressed (`pack`). Version-1 to version-3 files are migrated in place (their bodies
are all stored as they are, which version 4 reads as such); an older yurthub sets a version-4 file aside."""

PACKED = b"\x00"
"""First byte of a body stored compressed (zlib). A JSON body starts with `{` (or white space) and a protobuf
one with `k8s\\x00`, so a body as the cloud sent it never starts with it; one that did would be stored packed
whatever its size, so every stored body that starts with it is a packed one."""
PACK_MIN = 256
"""Bodies shorter than this are stored as they are: too small to gain a page's worth."""


def pack(body: bytes) -> bytes:
    """A body as stored on disk: zlib (level 1: ~15 us for a pod, ~2.5x smaller for JSON) when that saves a
    tenth or more. Kubernetes objects repeat their keys and values (a pod's JSON is ~60 % keys, labels,
    image names, timestamps), and the cache of a node's pods on disk was about their bytes plus SQLite's pages:
    compressed, it is well under what one file per object costs (OpenYurt's layout)."""
    if len(body) < PACK_MIN and not body.startswith(PACKED):
        return body
    packed = PACKED + zlib.compress(body, 1)
    return packed if len(packed) * 10 <= len(body) * 9 or body.startswith(PACKED) else body


def unpack(stored: bytes) -> bytes:
    """A body as the cloud sent it, from what `pack` stored; a packed body that does not inflate is a
    damaged cache (`StorageError`)."""
    if not stored.startswith(PACKED):
        return stored
    try:
        return zlib.decompress(stored[1:])
    except zlib.error as exc:
        raise errors.StorageError(f"cache read failed: a stored body does not inflate: {exc}") from exc


_OBJECTS = """CREATE TABLE IF NOT EXISTS objects (
    component TEXT NOT NULL, encoding TEXT NOT NULL, gvr TEXT NOT NULL,
    namespace TEXT NOT NULL, name TEXT NOT NULL, rv TEXT NOT NULL, rvn INTEGER, body BLOB NOT NULL,
    UNIQUE (component, encoding, gvr, namespace, name)
)"""
"""Objects are kilobytes each (a pod in protobuf is 1-6 KB), so they live in a rowid table: its leaf pages hold
rows up to a page minus 35 bytes inline. A WITHOUT ROWID table (schema versions 1 and 2) keeps at most about a
quarter page of a row inline and puts the rest on an overflow page of its own, most of it empty: 1,000 pods of
1.4 KB took 4.7 MB of 4 KiB pages there, 2.2 MB here. The unique index beside it holds only the keys."""

WAL_LIMIT = 1024 * 1024
"""Bytes the write-ahead log may keep on disk once checkpointed (`journal_size_limit`) and about how much it
holds between checkpoints (`wal_autocheckpoint`, in 4 KiB pages). One transaction can still write more (a big
list replaced): `replace_list` checkpoints and truncates the log right after such a commit, so the log never
stays as large as the cache's biggest list on top of the database file itself."""

_SCHEMA = (
    _OBJECTS,
    """CREATE TABLE IF NOT EXISTS views (
    id INTEGER PRIMARY KEY,
    component TEXT NOT NULL, encoding TEXT NOT NULL, gvr TEXT NOT NULL, namespace TEXT NOT NULL,
    label TEXT NOT NULL, field TEXT NOT NULL,
    api_version TEXT NOT NULL, kind TEXT NOT NULL, rv TEXT NOT NULL, typed INTEGER NOT NULL,
    envelope BLOB NOT NULL, used REAL NOT NULL DEFAULT 0,
    UNIQUE (component, encoding, gvr, namespace, label, field)
)""",
    """CREATE TABLE IF NOT EXISTS members (
    view INTEGER NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    PRIMARY KEY (view, namespace, name)
) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS tombstones (
    id INTEGER PRIMARY KEY,
    component TEXT NOT NULL, gvr TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, rv TEXT NOT NULL,
    UNIQUE (component, gvr, namespace, name)
)""",
    "CREATE INDEX IF NOT EXISTS tombstones_age ON tombstones (component, gvr, id)",
    """CREATE TABLE IF NOT EXISTS components (
    component TEXT PRIMARY KEY, used REAL NOT NULL
) WITHOUT ROWID""",
)

_UPSERT = """
INSERT INTO objects (component, encoding, gvr, namespace, name, rv, rvn, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (component, encoding, gvr, namespace, name) DO UPDATE SET rv = excluded.rv, rvn = excluded.rvn,
    body = excluded.body
WHERE excluded.rvn IS NULL OR objects.rvn IS NULL OR excluded.rvn >= objects.rvn
"""
_SCOPE_VIEWS = "SELECT id FROM views WHERE component=? AND encoding=? AND gvr=?"
_KIND_VIEWS = "SELECT id FROM views WHERE component=? AND gvr=?"
_ENCODINGS = tuple(e.value for e in wire.Encoding)
_EVERY_ENCODING = (
    f"component=? AND encoding IN ({', '.join('?' * len(_ENCODINGS))}) AND gvr=? AND namespace=? AND name=?"
)
"""One object in every encoding, spelled so SQLite seeks the primary key instead of scanning a component."""


class SqliteStorage:
    """The cache on disk, one SQLite file in WAL mode, readable by root only.

    Writes are atomic per call (one transaction). With `synchronous=NORMAL` a killed process loses
    nothing committed; a power cut may lose the last commits but never leaves a torn list or object.
    A file that fails SQLite's integrity check at start, or has a schema version this code does not know,
    is moved aside and a new cache begins; the cloud fills it again. A version-1 file is migrated in place
    instead (three tables and a column added), so upgrading yurthub while the node is offline keeps its cache.

    Deleted rows free their pages, which SQLite reuses for later writes: the file stays as large as the
    cache's largest moment rather than shrinking. Auto-vacuum is not used: it would move pages on every
    commit (write amplification on an edge node's flash) to give back space the next relist wants again.
    The write-ahead log beside it is bounded by `WAL_LIMIT`, so the cache on disk is about its objects' bytes
    as stored (compressed, `pack`) plus the keys (`_OBJECTS`), not twice that.
    """

    FILE = "cache.sqlite3"

    def __init__(
        self,
        directory: Path,
        *,
        max_views_per_scope: int = MAX_VIEWS_PER_SCOPE,
        max_tombstones_per_scope: int = MAX_TOMBSTONES_PER_SCOPE,
        clock: Clock = time.time,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        directory.chmod(0o700)
        self.path = directory / self.FILE
        self.set_aside: Path | None = None
        self._max_views = max_views_per_scope
        self._max_tombstones = max_tombstones_per_scope
        self._clock = clock
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
        self._used: dict[str, float] = {str(c): float(u) for c, u in self._db.execute("SELECT * FROM components")}
        """Last use per component that holds anything; authoritative while running."""
        self._flushed: dict[str, float] = dict(self._used)
        """What the components table says, to write a use only when it is a minute newer."""
        self._forgotten = 0
        self._uses = threading.Lock()
        """Guards `_used`: `touch` comes from the event loop while the writer thread reads and drops."""
        self._view_read: dict[int, float] = {}
        """Last read of a view since start; reads are not written to disk (LRU takes the later of the two)."""

    def _open(self) -> sqlite3.Connection:
        old_umask = os.umask(0o077)
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        finally:
            os.umask(old_umask)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
            db.execute(f"PRAGMA wal_autocheckpoint={WAL_LIMIT // 4096}")
            result = db.execute("PRAGMA quick_check").fetchone()[0]
            if result != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {result}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            empty = db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
            if not empty and version not in (1, 2, 3, SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"cache schema version {version}, this yurthub uses {SCHEMA_VERSION}")
            db.execute("BEGIN IMMEDIATE")
            if not empty and version == 1:
                db.execute("ALTER TABLE views ADD COLUMN used REAL NOT NULL DEFAULT 0")
            if not empty and version in (1, 2):
                # same columns, stored as a rowid table (`_OBJECTS`): copied over, the old table dropped
                db.execute("ALTER TABLE objects RENAME TO objects_old")
                db.execute(_OBJECTS)
                db.execute("INSERT INTO objects SELECT * FROM objects_old")
                db.execute("DROP TABLE objects_old")
            for statement in _SCHEMA:
                db.execute(statement)
            if not empty and version == 1:
                now = self._clock()
                db.execute("UPDATE views SET used=?", (now,))
                db.execute(
                    "INSERT OR IGNORE INTO components (component, used) "
                    "SELECT DISTINCT component, ? FROM objects UNION SELECT DISTINCT component, ? FROM views",
                    (now, now),
                )
            if not empty and version != SCHEMA_VERSION:
                log.info("cache file %s migrated from schema version %d to %d", self.path, version, SCHEMA_VERSION)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def close(self) -> None:
        with contextlib.suppress(errors.StorageError):
            self._flush_uses()
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

    # -- last use ---------------------------------------------------------------------------------

    def _wrote(self, db: sqlite3.Connection, component: str) -> None:
        now = self._clock()
        with self._uses:
            self._used[component] = now
        flushed = self._flushed.get(component)
        if flushed is None or now - flushed >= USE_FLUSH_S:
            db.execute(
                "INSERT INTO components (component, used) VALUES (?, ?) "
                "ON CONFLICT (component) DO UPDATE SET used=excluded.used",
                (component, now),
            )
            self._flushed[component] = now

    def _read(self, component: str) -> None:
        now = self._clock()
        with self._uses:
            if component in self._used:
                self._used[component] = now

    def touch(self, component: str) -> None:
        """A request of `component` that touched no storage (a held or quiet watch) still counts as use.

        Memory only (no I/O, a lock held for one dict update), and only for a component already held (no key
        is added), so it is cheap and safe to call from the event loop while the writer thread works.
        """
        self._read(component)

    def forgotten(self) -> int:
        return self._forgotten

    def _flush_uses(self) -> None:
        with self._uses:
            stale = [(c, u) for c, u in self._used.items() if self._flushed.get(c) != u]
        if not stale:
            return
        with self._tx() as db:
            db.executemany(
                "INSERT INTO components (component, used) VALUES (?, ?) "
                "ON CONFLICT (component) DO UPDATE SET used=excluded.used",
                stale,
            )
        self._flushed.update(stale)

    # -- writes -----------------------------------------------------------------------------------

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
            pack(obj.body),
        )

    def _view_id(self, db: sqlite3.Connection, key: ViewKey) -> int | None:
        s = key.scope
        row = db.execute(
            "SELECT id FROM views WHERE component=? AND encoding=? AND gvr=? AND namespace=? AND label=? AND field=?",
            (s.component, s.encoding.value, s.gvr, key.namespace, key.label_selector, key.field_selector),
        ).fetchone()
        return int(row[0]) if row else None

    def _put_rows(self, db: sqlite3.Connection, scope: Scope, objs: Sequence[wire.Obj]) -> list[wire.Obj]:
        """Upsert `objs` except those their tombstone buries; clear the tombstones of the others."""
        if not objs:
            return []
        if len(objs) == 1:
            rows = db.execute(
                "SELECT namespace, name, rv FROM tombstones WHERE component=? AND gvr=? AND namespace=? AND name=?",
                (scope.component, scope.gvr, objs[0].namespace, objs[0].name),
            ).fetchall()
        else:
            rows = db.execute(
                "SELECT namespace, name, rv FROM tombstones WHERE component=? AND gvr=?", (scope.component, scope.gvr)
            ).fetchall()
        tombs: dict[Ident, str] = {(ns, n): rv for ns, n, rv in rows}
        live = [o for o in objs if not buried(o.resource_version, tombs.get((o.namespace, o.name)))]
        if len(live) == 1:
            db.execute(_UPSERT, self._row(scope, live[0]))
        else:
            db.executemany(_UPSERT, (self._row(scope, o) for o in live))  # one row tuple at a time
        cleared = [(scope.component, scope.gvr, o.namespace, o.name) for o in live if (o.namespace, o.name) in tombs]
        if cleared:
            db.executemany("DELETE FROM tombstones WHERE component=? AND gvr=? AND namespace=? AND name=?", cleared)
        return live

    def _gone(self, db: sqlite3.Connection, component: str, gvr: str, ident: Ident, rv: str) -> None:
        """The cloud says `ident` is gone (at `rv`): every encoding's copy goes and a tombstone stays.
        The caller trims the tombstones (`_trim`) once per transaction."""
        ns, name = ident
        where = (component, *_ENCODINGS, gvr, ns, name)
        copies = db.execute(f"SELECT rv FROM objects WHERE {_EVERY_ENCODING}", where).fetchall()  # noqa: S608 - fixed SQL
        if any(not newer_or_same(rv, old) for (old,) in copies):
            return  # a copy newer than the deletion: the object was made again since
        db.execute(f"DELETE FROM objects WHERE {_EVERY_ENCODING}", where)  # noqa: S608 - fixed SQL
        db.execute(
            f"DELETE FROM members WHERE namespace=? AND name=? AND view IN ({_KIND_VIEWS})",  # noqa: S608 - fixed SQL, values bound
            (ns, name, component, gvr),
        )
        earlier = db.execute(
            "SELECT rv FROM tombstones WHERE component=? AND gvr=? AND namespace=? AND name=?",
            (component, gvr, ns, name),
        ).fetchone()
        rv = tombstone_rv(rv, [str(old) for (old,) in copies] + ([str(earlier[0])] if earlier else []))
        db.execute(
            "INSERT OR REPLACE INTO tombstones (component, gvr, namespace, name, rv) VALUES (?, ?, ?, ?, ?)",
            (component, gvr, ns, name, rv),
        )

    def _trim(self, db: sqlite3.Connection, component: str, gvr: str) -> None:
        db.execute(
            "DELETE FROM tombstones WHERE id IN (SELECT id FROM tombstones WHERE component=? AND gvr=? "
            "ORDER BY id DESC LIMIT -1 OFFSET ?)",
            (component, gvr, self._max_tombstones),
        )

    def _drop(self, db: sqlite3.Connection, scope: Scope, ident: Ident, rv: str | None) -> None:
        """Delete one scope's copy of an object no view of that scope lists any more."""
        s = (scope.component, scope.encoding.value, scope.gvr)
        still = db.execute(
            f"SELECT 1 FROM members WHERE namespace=? AND name=? AND view IN ({_SCOPE_VIEWS}) LIMIT 1",  # noqa: S608 - fixed SQL, values bound
            (*ident, *s),
        ).fetchone()
        if still:
            return
        where = "component=? AND encoding=? AND gvr=? AND namespace=? AND name=?"
        row = db.execute(f"SELECT rv FROM objects WHERE {where}", (*s, *ident)).fetchone()  # noqa: S608 - fixed SQL
        if row is not None and (rv is None or newer_or_same(rv, row[0])):
            db.execute(f"DELETE FROM objects WHERE {where}", (*s, *ident))  # noqa: S608 - fixed SQL

    def replace_list(self, key: ViewKey, listing: wire.ListBody) -> None:
        self._replace_list(key, listing)
        self._bound_wal()

    def _bound_wal(self) -> None:
        """Checkpoint and truncate the write-ahead log when a transaction left it past `WAL_LIMIT` (a list
        bigger than that was just written): otherwise the log keeps a second copy of the list's pages on
        disk until the next write after the next checkpoint."""
        try:
            size = Path(f"{self.path}-wal").stat().st_size
        except FileNotFoundError:
            return
        if size > WAL_LIMIT:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as exc:
                raise errors.StorageError(f"cache checkpoint failed: {exc}") from exc

    def _replace_list(self, key: ViewKey, listing: wire.ListBody) -> None:
        s = key.scope
        with self._tx() as db:
            view = self._view_id(db, key)
            if view is not None:
                (view_rv,) = db.execute("SELECT rv FROM views WHERE id=?", (view,)).fetchone()
                if not newer_or_same(listing.resource_version, view_rv):
                    self._merge_older(db, key, view, listing)
                    return
            live = self._put_rows(db, s, listing.items)
            header = (
                listing.api_version,
                listing.kind,
                listing.resource_version,
                int(listing.items_typed),
                listing.envelope,
                self._clock(),
            )
            old: set[Ident] = set()
            old_view = view is not None
            if view is None:
                view = db.execute(
                    "INSERT INTO views (component, encoding, gvr, namespace, label, field, api_version, kind, "
                    "rv, typed, envelope, used) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (
                        s.component,
                        s.encoding.value,
                        s.gvr,
                        key.namespace,
                        key.label_selector,
                        key.field_selector,
                        *header,
                    ),
                ).fetchone()[0]
            else:
                db.execute(
                    "UPDATE views SET api_version=?, kind=?, rv=?, typed=?, envelope=?, used=? WHERE id=?",
                    (*header, view),
                )
                old = {(ns, n) for ns, n in db.execute("SELECT namespace, name FROM members WHERE view=?", (view,))}
                db.execute("DELETE FROM members WHERE view=?", (view,))
            db.executemany(
                "INSERT OR IGNORE INTO members (view, namespace, name) VALUES (?, ?, ?)",
                ((view, o.namespace, o.name) for o in live),
            )
            if not old_view:
                self._evict(db, key, view)  # after the new members are in: what they list stays
            dropped = sorted(old - {(o.namespace, o.name) for o in listing.items})
            for ident in dropped:
                if key.exhaustive:
                    self._gone(db, s.component, s.gvr, ident, listing.resource_version)
                else:
                    self._drop(db, s, ident, listing.resource_version)
            if dropped and key.exhaustive:
                self._trim(db, s.component, s.gvr)
            self._wrote(db, s.component)

    def _merge_older(self, db: sqlite3.Connection, key: ViewKey, view: int, listing: wire.ListBody) -> None:
        """A list older than the view: only what it can still tell (see `older_list_stale`)."""
        s = key.scope
        members = {(ns, n) for ns, n in db.execute("SELECT namespace, name FROM members WHERE view=?", (view,))}
        self._put_rows(db, s, [o for o in listing.items if (o.namespace, o.name) in members])
        missing = members - {(o.namespace, o.name) for o in listing.items}
        held: dict[Ident, str | None] = dict.fromkeys(missing)
        for ident in missing:
            row = db.execute(
                "SELECT rv FROM objects WHERE component=? AND encoding=? AND gvr=? AND namespace=? AND name=?",
                (s.component, s.encoding.value, s.gvr, *ident),
            ).fetchone()
            held[ident] = str(row[0]) if row else None
        stale = older_list_stale(held, listing.resource_version)
        db.executemany("DELETE FROM members WHERE view=? AND namespace=? AND name=?", [(view, *m) for m in stale])
        for ident in stale:
            if key.exhaustive:
                self._gone(db, s.component, s.gvr, ident, listing.resource_version)
            else:
                self._drop(db, s, ident, listing.resource_version)
        if stale and key.exhaustive:
            self._trim(db, s.component, s.gvr)
        db.execute("UPDATE views SET used=? WHERE id=?", (self._clock(), view))
        self._wrote(db, s.component)

    def _evict(self, db: sqlite3.Connection, fresh: ViewKey, fresh_id: int) -> None:
        """Keep at most `max_views_per_scope` views in the fresh view's scope: least recently used go first."""
        s = fresh.scope
        rows = db.execute(
            "SELECT id, used FROM views WHERE component=? AND encoding=? AND gvr=? AND id != ?",
            (s.component, s.encoding.value, s.gvr, fresh_id),
        ).fetchall()
        excess = len(rows) + 1 - self._max_views
        if excess <= 0:
            return
        ranked = sorted(rows, key=lambda r: (max(float(r[1]), self._view_read.get(int(r[0]), 0.0)), r[0]))
        for victim, _used in ranked[:excess]:
            members = db.execute("SELECT namespace, name FROM members WHERE view=?", (victim,)).fetchall()
            db.execute("DELETE FROM members WHERE view=?", (victim,))
            db.execute("DELETE FROM views WHERE id=?", (victim,))
            self._view_read.pop(int(victim), None)
            self._forgotten += 1
            for ns, name in members:
                self._drop(db, s, (ns, name), None)

    def _put_one(self, db: sqlite3.Connection, scope: Scope, obj: wire.Obj) -> Written:
        """`_put_rows` for one object (a watch event), saying whether it is now the held copy."""
        ident = (obj.namespace, obj.name)
        tomb, held = db.execute(
            "SELECT (SELECT rv FROM tombstones WHERE component=:c AND gvr=:g AND namespace=:ns AND name=:n), "
            "(SELECT rv FROM objects WHERE component=:c AND encoding=:e AND gvr=:g AND namespace=:ns AND name=:n)",
            {"c": scope.component, "e": scope.encoding.value, "g": scope.gvr, "ns": ident[0], "n": ident[1]},
        ).fetchone()
        if buried(obj.resource_version, tomb):
            return "buried"
        if tomb is not None:
            db.execute(
                "DELETE FROM tombstones WHERE component=? AND gvr=? AND namespace=? AND name=?",
                (scope.component, scope.gvr, *ident),
            )
        if not newer_or_same(obj.resource_version, held):
            return "older"
        db.execute(_UPSERT, self._row(scope, obj))
        return "current"

    def apply_events(self, key: ViewKey, events: Sequence[wire.Event]) -> None:
        s = key.scope
        with self._tx() as db:
            view = self._view_id(db, key)
            view_rv = db.execute("SELECT rv FROM views WHERE id=?", (view,)).fetchone()[0] if view else None
            moved = trim = False
            for event in events:
                obj = event.obj
                if obj is None:
                    continue
                behind = view_rv is not None and not newer_or_same(obj.resource_version, view_rv)
                if view is not None and obj.resource_version and not behind:
                    view_rv, moved = obj.resource_version, True
                if event.type in ("ADDED", "MODIFIED"):
                    if self._put_one(db, s, obj) == "current" and view is not None and not behind:
                        db.execute(
                            "INSERT OR IGNORE INTO members (view, namespace, name) VALUES (?, ?, ?)",
                            (view, obj.namespace, obj.name),
                        )
                elif event.type == "DELETED":
                    ident = (obj.namespace, obj.name)
                    # As in `MemoryStorage._delete`: from an exhaustive view, gone from the cloud unless a
                    # newer copy says made again; from a selecting one, maybe "no longer matches".
                    if key.exhaustive:
                        self._gone(db, s.component, s.gvr, ident, obj.resource_version)
                        trim = True
                    else:
                        if view is not None and not behind:
                            db.execute("DELETE FROM members WHERE view=? AND namespace=? AND name=?", (view, *ident))
                        self._drop(db, s, ident, obj.resource_version)
            if trim:
                self._trim(db, s.component, s.gvr)
            if view is not None:
                if moved:
                    db.execute("UPDATE views SET rv=?, used=? WHERE id=?", (view_rv, self._clock(), view))
                else:
                    db.execute("UPDATE views SET used=? WHERE id=?", (self._clock(), view))
            self._wrote(db, s.component)

    def put_object(self, scope: Scope, obj: wire.Obj) -> None:
        with self._tx() as db:
            self._put_rows(db, scope, [obj])
            self._wrote(db, scope.component)

    def delete_object(self, component: str, gvr: str, namespace: str, name: str, rv: str = "") -> None:
        with self._tx() as db:
            holds = db.execute(
                "SELECT EXISTS (SELECT 1 FROM objects WHERE component=:component AND gvr=:gvr) "
                "OR EXISTS (SELECT 1 FROM views WHERE component=:component AND gvr=:gvr) "
                "OR EXISTS (SELECT 1 FROM tombstones WHERE component=:component AND gvr=:gvr)",
                {"component": component, "gvr": gvr},
            ).fetchone()[0]
            if not holds:
                return
            self._gone(db, component, gvr, (namespace, name), rv)
            self._trim(db, component, gvr)
            self._wrote(db, component)

    def drop_idle(self, prefix: str, before: float) -> int:
        self._flush_uses()
        with self._uses:
            idle = {c: used for c, used in self._used.items() if c.startswith(prefix) and used < before}
            for component in idle:  # gone from memory first: a `touch` from now on finds nothing to renew
                del self._used[component]
        if not idle:
            return 0
        try:
            with self._tx() as db:
                for component in sorted(idle):
                    views = [int(v) for (v,) in db.execute("SELECT id FROM views WHERE component=?", (component,))]
                    db.executemany("DELETE FROM members WHERE view=?", [(v,) for v in views])
                    for table in ("views", "objects", "tombstones", "components"):
                        db.execute(f"DELETE FROM {table} WHERE component=?", (component,))  # noqa: S608 - fixed names
                    for v in views:
                        self._view_read.pop(v, None)
                    self._forgotten += len(views)
        except errors.StorageError:
            with self._uses:  # still on disk: still tracked, for the next try
                for component, used in idle.items():
                    self._used.setdefault(component, used)
            raise
        for component in idle:
            self._flushed.pop(component, None)
        return len(idle)

    # -- reads ------------------------------------------------------------------------------------

    def _query(self, sql: str, args: Iterable[object]) -> list[Any]:
        try:
            return list(self._db.execute(sql, tuple(args)).fetchall())
        except sqlite3.Error as exc:
            raise errors.StorageError(f"cache read failed: {exc}") from exc

    def get_object(self, scope: Scope, namespace: str, name: str) -> bytes | None:
        self._read(scope.component)
        rows = self._query(
            "SELECT body FROM objects WHERE component=? AND encoding=? AND gvr=? AND namespace=? AND name=?",
            (scope.component, scope.encoding.value, scope.gvr, namespace, name),
        )
        return unpack(bytes(rows[0][0])) if rows else None

    def is_deleted(self, component: str, gvr: str, namespace: str, name: str) -> bool:
        self._read(component)
        return bool(
            self._query(
                "SELECT 1 FROM tombstones WHERE component=? AND gvr=? AND namespace=? AND name=?",
                (component, gvr, namespace, name),
            )
        )

    def read_view(self, key: ViewKey) -> View | None:
        s = key.scope
        self._read(s.component)
        with self._tx() as db:  # one snapshot: the view's header and its members agree
            view = self._view_id(db, key)
            if view is None:
                return None
            self._view_read[view] = self._clock()
            api_version, kind, rv, typed, envelope = db.execute(
                "SELECT api_version, kind, rv, typed, envelope FROM views WHERE id=?", (view,)
            ).fetchone()
            rows = db.execute(
                "SELECT o.body FROM members m JOIN objects o ON o.component=? AND o.encoding=? AND o.gvr=? "
                "AND o.namespace=m.namespace AND o.name=m.name WHERE m.view=? ORDER BY m.namespace, m.name",
                (s.component, s.encoding.value, s.gvr, view),
            ).fetchall()
        return View(api_version, kind, rv, bool(typed), [unpack(bytes(r[0])) for r in rows], bytes(envelope))

    def counts(self) -> Counts:
        """Row counts (the objects count walks the objects table's keys once: a status or metrics refresh,
        like `usage`, not a per-request cost)."""
        (views, tombstones, objects), *_ = self._query(
            "SELECT (SELECT COUNT(*) FROM views), (SELECT COUNT(*) FROM tombstones), (SELECT COUNT(*) FROM objects)",
            (),
        )
        with self._uses:
            components = list(self._used)
        return Counts(
            views=int(views),
            components=len(components),
            token_scopes=sum(1 for c in components if c.startswith(TOKEN_SCOPE)),
            tombstones=int(tombstones),
            objects=int(objects),
        )

    def usage(self) -> list[Usage]:
        rows = self._query(
            "SELECT component, gvr, encoding, COUNT(*), SUM(LENGTH(body)) FROM objects "
            "GROUP BY component, gvr, encoding ORDER BY component, gvr",
            (),
        )
        return [Usage(str(c), str(g), str(e), int(n), int(b or 0)) for c, g, e, n, b in rows]

    def scope_objects(self, scope: Scope) -> list[bytes]:
        """Every object body one scope holds (offline endpoint rewrites look through a component's slices)."""
        self._read(scope.component)
        rows = self._query(
            "SELECT body FROM objects WHERE component=? AND encoding=? AND gvr=? ORDER BY namespace, name",
            (scope.component, scope.encoding.value, scope.gvr),
        )
        return [unpack(bytes(r[0])) for r in rows]

    def is_member(self, key: ViewKey, namespace: str, name: str) -> bool:
        """Whether the view lists this object (a held watch of that view is told when it changes offline)."""
        s = key.scope
        return bool(
            self._query(
                "SELECT 1 FROM members m JOIN views v ON v.id = m.view WHERE v.component=? AND v.encoding=? AND "
                "v.gvr=? AND v.namespace=? AND v.label=? AND v.field=? AND m.namespace=? AND m.name=?",
                (
                    s.component,
                    s.encoding.value,
                    s.gvr,
                    key.namespace,
                    key.label_selector,
                    key.field_selector,
                    namespace,
                    name,
                ),
            )
        )
