"""A local copy of one collection, kept current by list then watch, for yurt-manager's passes.

`Informer.run` lists once, then watches from the list's resourceVersion, applying every change to its copy
and calling `changed()`; a watch that ends (its timeout) is resumed from the last resourceVersion seen
(bookmarks included), a resourceVersion too old to watch from means listing again, and any other trouble
is retried with a doubling pause. So the apiserver sees one list per collection and then only watches,
instead of full lists every few seconds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from converter import access, errors

log = logging.getLogger(__name__)


def _key(obj: access.Obj) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


class Informer:
    def __init__(
        self,
        api: access.Api,
        path: str,
        changed: Callable[[], None],
        stopping: threading.Event,
        *,
        watch_s: int = 300,
        max_pause_s: float = 30.0,
        listed: Callable[[], None] = lambda: None,
    ) -> None:
        self.api = api
        self.path = path
        self.changed = changed
        self.stopping = stopping
        self.watch_s = watch_s
        self.max_pause_s = max_pause_s
        self.listed = listed
        self._items: dict[str, access.Obj] = {}
        self._lock = threading.Lock()
        self.synced = threading.Event()
        """Set once the first list is in."""
        self.lists = 0
        """How many times the collection was listed (once, unless watches expired or failed)."""

    def items(self) -> list[access.Obj]:
        with self._lock:
            return list(self._items.values())

    def relist(self) -> str:
        items, version = self.api.list_at(self.path)
        with self._lock:
            self._items = {_key(o): o for o in items}
        self.lists += 1
        self.listed()
        self.synced.set()
        self.changed()
        return version

    def follow(self, version: str) -> str:
        """One watch from `version`, applied; returns the last resourceVersion seen."""
        for kind, obj in self.api.watch(self.path, version, self.watch_s):
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            if kind == "BOOKMARK":
                continue
            with self._lock:
                if kind == "DELETED":
                    self._items.pop(_key(obj), None)
                else:
                    self._items[_key(obj)] = obj
            self.changed()
            if self.stopping.is_set():
                break
        return version

    def run(self) -> None:
        pause = 0.5
        version = ""
        while not self.stopping.is_set():
            try:
                if not version:
                    version = self.relist()
                version = self.follow(version)
                pause = 0.5
            except errors.Expired:
                log.info("watch expired, listing again path=%s", self.path)
                version = ""
            except errors.ConverterError as exc:
                log.warning("watch failed path=%s error=%s; retrying in %.1fs", self.path, exc, pause)
                self.stopping.wait(pause)
                pause = min(pause * 2, self.max_pause_s)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name=f"informer {self.path}", daemon=True)
        thread.start()
        return thread
