"""The node-side steps' one seam to the machine they change: files under a root, and commands.

`LocalHost` is the real one: files under `root` ("/" when an operator runs `yurtctl node convert` on the
node, "/host" inside the Job's container, which mounts the node's root there) and commands run directly
(in the Job, the whole step already runs in the node's namespaces through nsenter). `MemoryHost` keeps
files in a dict and records commands, for the unit tests of the steps.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from converter import errors


class Host(Protocol):
    def read(self, path: str) -> str | None: ...
    def write(self, path: str, text: str, mode: int = 0o644) -> None: ...
    def remove(self, path: str) -> None: ...
    def run(self, argv: list[str], timeout: float = 120.0) -> tuple[int, str]: ...
    def exists(self, path: str) -> bool: ...
    def port_free(self, port: int) -> bool: ...


def create_private(target: Path) -> tuple[int, str]:
    """Create a fresh temporary file beside `target`, open for writing, mode exactly 0600 (the umask can
    only take bits away from 0600 at creation; `fchmod` restores exactly 0600). Returns (fd, path)."""
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.yurtctl")
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            continue
        os.fchmod(fd, 0o600)
        return fd, str(tmp)
    raise FileExistsError(f"no free temporary name beside {target}")


class LocalHost:
    def __init__(self, root: str = "/") -> None:
        self.root = Path(root)

    def _p(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def read(self, path: str) -> str | None:
        try:
            return self._p(path).read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise errors.NodeStepFailed(f"cannot read {path}: {exc}") from exc

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """Replace `path` atomically with `text`, the file having `mode` from its first moment: a temporary
        file is created owner-only (O_CREAT|O_EXCL, 0600, whatever the umask), set to `mode` before a byte
        is written, fsynced, then renamed over the target. A token or a key is never readable by others,
        not even for the instant a write-then-chmod would leave open."""
        target = self._p(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = create_private(target)
            try:
                os.fchmod(fd, mode)
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(text)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise errors.NodeStepFailed(f"cannot write {path}: {exc}") from exc

    def remove(self, path: str) -> None:
        target = self._p(path)
        try:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        except OSError as exc:
            raise errors.NodeStepFailed(f"cannot remove {path}: {exc}") from exc

    def exists(self, path: str) -> bool:
        return self._p(path).exists()

    def port_free(self, port: int) -> bool:
        """Whether a service could listen on the loopback `port` (the step runs in the node's network)."""
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # lingering closed connections do not count
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
        return True

    def run(self, argv: list[str], timeout: float = 120.0) -> tuple[int, str]:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return 127, str(exc)
        return proc.returncode, (proc.stdout + proc.stderr).strip()


class MemoryHost:
    def __init__(
        self,
        files: dict[str, str] | None = None,
        answer: Callable[[list[str]], tuple[int, str]] | None = None,
        busy_ports: frozenset[int] = frozenset(),
    ) -> None:
        self.files = dict(files or {})
        self.modes: dict[str, int] = {}
        """The mode each file was written with."""
        self.commands: list[list[str]] = []
        self._answer = answer or (lambda argv: (0, ""))
        self.busy_ports = busy_ports

    def port_free(self, port: int) -> bool:
        return port not in self.busy_ports

    def read(self, path: str) -> str | None:
        return self.files.get(path)

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        self.files[path] = text
        self.modes[path] = mode

    def remove(self, path: str) -> None:
        for name in [f for f in self.files if f == path or f.startswith(path.rstrip("/") + "/")]:
            del self.files[name]

    def exists(self, path: str) -> bool:
        return any(f == path or f.startswith(path.rstrip("/") + "/") for f in self.files)

    def run(self, argv: list[str], timeout: float = 120.0) -> tuple[int, str]:
        self.commands.append(argv)
        return self._answer(argv)
