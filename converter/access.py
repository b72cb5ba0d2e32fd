"""The converter's one seam to a cluster: six REST verbs on Kubernetes paths, JSON in and out.

`Api` is implemented for real by `converter.kube` (the only module that imports the kubernetes client) and
in memory by `MemoryApi` below, which the unit tests drive the controller steps and the convert plan with.

Paths are the apiserver's own: a collection (``/api/v1/namespaces/kube-system/pods``, or the cluster-wide
``/api/v1/pods``), an object (collection + ``/<name>``), or a subresource (object + ``/approval``).
Contract, shared by both implementations:
- `get` returns None for a missing object; `patch`, `replace` and `delete` raise `errors.NotFound`.
- `create` raises `errors.Conflict` when the name is taken.
- `patch` is a JSON merge patch; `patch` and `replace` raise `errors.Conflict` when the body carries a
  ``metadata.resourceVersion`` that is not the stored one (optimistic concurrency).
- `delete` of a missing object returns False instead of raising, so cleanup steps stay idempotent.
- `list_at` also returns the list's resourceVersion; `watch` from it yields `(type, object)` for every
  change after it (ADDED, MODIFIED, DELETED; BOOKMARK objects carry only a newer resourceVersion), ends
  when `timeout_s` has passed (the in-memory one as soon as it has told what happened so far), and raises
  `errors.Expired` when that resourceVersion is too old to watch from.
"""

from __future__ import annotations

import builtins
import copy
import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any, Protocol

from converter import errors

Obj = dict[str, Any]


class Api(Protocol):
    def get(self, path: str) -> Obj | None: ...
    def list(self, path: str, *, labels: str = "", fields: str = "") -> list[Obj]: ...
    def create(self, path: str, body: Obj) -> Obj: ...
    def patch(self, path: str, body: Obj) -> Obj: ...
    def replace(self, path: str, body: Obj) -> Obj: ...
    def delete(self, path: str) -> bool: ...
    def list_at(self, path: str) -> tuple[builtins.list[Obj], str]: ...
    def watch(self, path: str, resource_version: str, timeout_s: int) -> Iterator[tuple[str, Obj]]: ...


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge key by key, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _selector_matches(selector: str, values: dict[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, want = term.split("!=", 1)
            if values.get(key) == want:
                return False
        elif "=" in term:
            key, want = term.split("=", 1)
            if values.get(key.rstrip("=")) != want:
                return False
        elif term.startswith("!"):
            if term[1:] in values:
                return False
        elif term not in values:
            return False
    return True


def _fields(obj: Obj) -> dict[str, str]:
    meta = obj.get("metadata", {})
    out = {"metadata.name": meta.get("name", ""), "metadata.namespace": meta.get("namespace", "")}
    node = obj.get("spec", {}).get("nodeName")
    if node is not None:
        out["spec.nodeName"] = node
    return out


@dataclasses.dataclass(frozen=True)
class _Path:
    prefix: str
    namespace: str
    resource: str
    name: str
    sub: str


def _parse(path: str) -> _Path:
    parts = path.strip("/").split("/")
    n = 2 if parts[0] == "api" else 3
    prefix, rest = "/" + "/".join(parts[:n]), parts[n:]
    namespace = ""
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    resource = rest[0] if rest else ""
    name = rest[1] if len(rest) > 1 else ""
    sub = rest[2] if len(rest) > 2 else ""
    return _Path(prefix, namespace, resource, name, sub)


class MemoryApi:
    """An in-memory `Api`: enough of the apiserver's semantics (names, resourceVersions, merge patch,
    label and field selectors) for the pure steps to be tested without a cluster."""

    HISTORY = 1000
    """Changes kept for watches; older resourceVersions are Expired, as the apiserver's watch cache does."""
    FIRST = 1000
    """The first resourceVersion: like a running apiserver, it has no history from before it started."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str, str], Obj] = {}
        self._versions = itertools.count(self.FIRST + 1)
        self._last = self.FIRST
        self._history: list[tuple[int, str, tuple[str, str, str, str], Obj]] = []

    def _key(self, p: _Path) -> tuple[str, str, str, str]:
        return (p.prefix, p.namespace, p.resource, p.name)

    def _stamp(self, obj: Obj, key: tuple[str, str, str, str] | None = None, kind: str = "MODIFIED") -> Obj:
        self._last = next(self._versions)
        obj.setdefault("metadata", {})["resourceVersion"] = str(self._last)
        if key is not None:
            self._history = [*self._history[-(self.HISTORY - 1) :], (self._last, kind, key, copy.deepcopy(obj))]
        return copy.deepcopy(obj)

    def list_at(self, path: str) -> tuple[list[Obj], str]:
        return self.list(path), str(self._last)

    def watch(self, path: str, resource_version: str, timeout_s: int) -> Iterator[tuple[str, Obj]]:
        p = _parse(path)
        since = int(resource_version)
        floor = self._history[0][0] - 1 if self._history else self._last
        if since < floor:
            raise errors.Expired(410, "Expired", f"too old resource version: {since}")
        for version, kind, (prefix, namespace, resource, _), obj in list(self._history):
            if version <= since or (prefix, resource) != (p.prefix, p.resource):
                continue
            if p.namespace and namespace != p.namespace:
                continue
            yield kind, copy.deepcopy(obj)

    def get(self, path: str) -> Obj | None:
        obj = self.objects.get(self._key(_parse(path)))
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, path: str, *, labels: str = "", fields: str = "") -> list[Obj]:
        p = _parse(path)
        out = []
        for (prefix, namespace, resource, _), obj in sorted(self.objects.items()):
            if (prefix, resource) != (p.prefix, p.resource) or (p.namespace and namespace != p.namespace):
                continue
            if _selector_matches(labels, obj.get("metadata", {}).get("labels", {})) and _selector_matches(
                fields, _fields(obj)
            ):
                out.append(copy.deepcopy(obj))
        return out

    def create(self, path: str, body: Obj) -> Obj:
        p = _parse(path)
        name = body.get("metadata", {}).get("name", "")
        obj = copy.deepcopy(body)
        if not name and obj.get("metadata", {}).get("generateName"):
            name = obj["metadata"]["name"] = f"{obj['metadata']['generateName']}{self._last + 1:x}"
        key = (p.prefix, p.namespace, p.resource, name)
        if key in self.objects:
            raise errors.Conflict(409, "AlreadyExists", f"{p.resource} {name!r} already exists")
        if p.namespace:
            obj["metadata"]["namespace"] = p.namespace
        self.objects[key] = obj
        return self._stamp(obj, key, "ADDED")

    def _existing(self, p: _Path, body: Obj) -> Obj:
        obj = self.objects.get(self._key(p))
        if obj is None:
            raise errors.NotFound(404, "NotFound", f"{p.resource} {p.name!r} not found")
        want = (body.get("metadata") or {}).get("resourceVersion")
        if want is not None and want != obj["metadata"]["resourceVersion"]:
            raise errors.Conflict(409, "Conflict", "the object has been modified")
        return obj

    def patch(self, path: str, body: Obj) -> Obj:
        p = _parse(path)
        obj = self._existing(p, body)
        patched = merge_patch(obj, body)
        self.objects[self._key(p)] = patched
        return self._stamp(patched, self._key(p))

    def replace(self, path: str, body: Obj) -> Obj:
        p = _parse(path)
        self._existing(p, body)
        new = copy.deepcopy(body)
        self.objects[self._key(p)] = new
        return self._stamp(new, self._key(p))

    def delete(self, path: str) -> bool:
        key = self._key(_parse(path))
        gone = self.objects.pop(key, None)
        if gone is None:
            return False
        self._stamp(gone, key, "DELETED")
        return True
