"""Files holding a key or a token are never readable by others, not even for an instant.

What a test can see of "an instant": Python raises an audit event (PEP 578) before every `os.chmod`,
`os.fchmod`, `os.rename`/`os.replace` and `open` it performs. A hook here lists the target directory's
files at each of those moments. A write-then-chmod (create with the umask's mode, write, then chmod) is
caught at its own chmod: the file already exists, with the wide mode, when the chmod's event fires. The
tests run under umask 000, so a create that relies on the umask makes a 0666 file. What this does not see:
a wide window closed without any audited call in between (chmod through ctypes, say) - not a way our code
could write a file.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from converter import host
from yurthub import certificate

_watching: list[tuple[Path, list[tuple[str, str, int]]]] = []
_inside = threading.local()


def _hook(event: str, _args: tuple[Any, ...]) -> None:
    if not _watching or getattr(_inside, "busy", False):
        return
    _inside.busy = True  # listing the directory raises events of its own
    try:
        directory, seen = _watching[-1]
        with contextlib.suppress(OSError):
            for entry in os.scandir(directory):
                with contextlib.suppress(OSError):
                    seen.append((event, entry.name, stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode)))
    finally:
        _inside.busy = False


sys.addaudithook(_hook)


@contextlib.contextmanager
def watched(directory: Path) -> Iterator[list[tuple[str, str, int]]]:
    """Every (event, file name, mode) seen in `directory` while the block runs, under umask 000."""
    seen: list[tuple[str, str, int]] = []
    old = os.umask(0)
    _watching.append((directory, seen))
    try:
        yield seen
    finally:
        _watching.pop()
        os.umask(old)


def test_the_converter_writes_a_node_secret_owner_only_from_its_first_moment(tmp_path: Path) -> None:
    etc = tmp_path / "etc" / "yurthub"
    etc.mkdir(parents=True)
    with watched(etc) as seen:
        host.LocalHost(str(tmp_path)).write("/etc/yurthub/join-token", "abcdef.0123456789abcdef\n", 0o600)
    assert any(name.endswith(".yurtctl") for _, name, _ in seen)  # the temporary file was seen
    wide = [(event, name, f"{mode:04o}") for event, name, mode in seen if mode & 0o077]
    assert wide == []
    assert stat.S_IMODE((etc / "join-token").stat().st_mode) == 0o600
    assert [p.name for p in etc.iterdir()] == ["join-token"]


def test_a_replaced_node_secret_keeps_its_mode_and_a_public_file_gets_its_own(tmp_path: Path) -> None:
    node = host.LocalHost(str(tmp_path))
    node.write("/etc/yurthub/yurthub.env", "A=1\n", 0o600)
    with watched(tmp_path / "etc" / "yurthub") as seen:
        node.write("/etc/yurthub/yurthub.env", "A=2\n", 0o600)
    assert [m for _, _, m in seen if m & 0o077] == []
    node.write("/etc/systemd/system/yurthub.service", "[Unit]\n", 0o644)
    assert stat.S_IMODE((tmp_path / "etc/systemd/system/yurthub.service").stat().st_mode) == 0o644
    assert (tmp_path / "etc/yurthub/yurthub.env").read_text() == "A=2\n"


def test_the_create_step_alone_makes_an_owner_only_file_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        fd, tmp = host.create_private(tmp_path / "secret")
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600  # before a byte is written
        assert Path(tmp).parent == tmp_path
    finally:
        os.close(fd)


def test_yurthubs_certificate_and_key_are_written_owner_only_from_their_first_moment(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir(mode=0o700)
    with watched(pki) as seen:
        certificate.write_private(pki / "yurthub-client-current.pem", b"-----BEGIN PRIVATE KEY-----\n")
    assert seen
    assert [m for _, _, m in seen if m & 0o077] == []
    assert stat.S_IMODE((pki / "yurthub-client-current.pem").stat().st_mode) == 0o600
