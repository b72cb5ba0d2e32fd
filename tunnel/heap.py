"""glibc's malloc tuned for the TLS reads of a tunnel process (`tune`, called once at start by the commands).

Python's ssl `read(n)` allocates an `n`-byte bytes object, reads into it and shrinks it to what was read; uvloop
reads TLS with `n` = 256 KiB. glibc serves a request above its mmap threshold (128 KiB at start) with a mapping of
its own, so every TLS read cost three system calls (mmap, mremap to shrink it, munmap when freed) and a page
fault: on a 1-byte echo through the tunnel, 3 of the 9 system calls of each side (`strace -c` on server and agent).
glibc raises the threshold by itself once it frees a large mapped chunk, but these chunks are freed after being
shrunk to one page, so it never does. `tune` sets the threshold above those reads, so they come from the heap,
and the trim threshold to twice that (glibc's own rule when it raises the threshold), so the heap's top is not
handed back and taken again on every read. The server hands free pages back in bulk (`server.Trimmer`).
A no-op where the C library has no `mallopt` (musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 512 * 1024
"""Above uvloop's 256 KiB TLS read size with its bytes object's header."""
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD


def tune() -> bool:
    """Set the thresholds; False where they cannot be set."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
