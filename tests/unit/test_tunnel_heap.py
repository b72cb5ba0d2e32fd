"""tunnel.heap: a tuned process serves a TLS read's 256 KiB buffer from the heap, not from a mapping of its own
(one mmap, mremap and munmap per read before). Each case runs in a fresh interpreter: glibc's thresholds are
per process and this one's may have moved already."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

PROBE = """
import ctypes, ssl, sys
from tunnel import heap

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
if sys.argv[1] == "tuned":
    assert heap.tune()
before = libc.mallinfo2().hblks
buffer = bytes(256 * 1024 + 1)  # what ssl's read(256 KiB) allocates before it reads
print(libc.mallinfo2().hblks - before)
"""


def _mapped_chunks_for_a_read(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], check=True, capture_output=True, text=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt and mallinfo2 are glibc's")
def test_a_tls_read_buffer_is_no_mapping_of_its_own_once_tuned() -> None:
    assert _mapped_chunks_for_a_read("untuned") == 1  # the behaviour tune() exists for
    assert _mapped_chunks_for_a_read("tuned") == 0
