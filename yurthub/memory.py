"""Giving the C heap's free memory back to the system after a big cache write.

A relayed list of thousands of objects is buffered, parsed into one object per item and written on the cache
writer thread; Python frees all of it afterwards, but glibc keeps the freed pages in that thread's malloc
arena, so an idle yurthub's RSS stayed at its largest list's peak (a 10k-object list left ~15 MB behind).
`malloc_trim(0)` returns those pages. It walks the heap (about a millisecond), so it runs only after writes
of at least `TRIM_AFTER` bytes, on the writer thread, never on the event loop. `settle` (once, at start)
also fixes glibc's mmap threshold at its initial 128 KiB: left dynamic, it rises to the largest block freed
(a whole list body), and every later block that size comes from the heap, where freeing it returns nothing
(in the hostile soak, the RSS peak was 182 MB with the dynamic threshold and 83 MB with the fixed one).
Where the C library is not glibc (no `malloc_trim`/`mallopt`), nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

log = logging.getLogger(__name__)

TRIM_AFTER = 1024 * 1024
"""Bytes buffered for one cache write from which the heap is trimmed after it."""

P = ParamSpec("P")
R = TypeVar("R")


def _find_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_TRIM = _find_trim()
M_MMAP_THRESHOLD = -3
"""glibc's `mallopt` parameter number (malloc.h)."""
MMAP_THRESHOLD = 128 * 1024


def settle() -> None:
    """Fix the mmap threshold (see the module docstring); call once at start, before any big allocation."""
    name = ctypes.util.find_library("c")
    if _TRIM is None or name is None:
        return
    try:
        mallopt: Callable[[int, int], int] = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return
    if not mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD):
        log.debug("mallopt refused the mmap threshold")


def give_back() -> None:
    """Return the free pages of the calling thread's heap (and the others') to the system; blocking."""
    if _TRIM is not None:
        _TRIM(0)


def then_give_back(fn: Callable[P, R]) -> Callable[P, R]:
    """`fn`, followed by `give_back` whatever its outcome (for a write big enough to leave pages behind)."""

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        finally:
            give_back()

    return run
