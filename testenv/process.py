"""Start a harness process inside its cgroup group, with its output going to a log file."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from testenv import cgroups

# `sh` joins the group first and then execs the real program, so even the program's first child is inside.
_JOIN = 'for f in $YURT_EDGE_CGROUP_PROCS; do echo $$ > "$f"; done; exec "$@"'


def join_argv(group: cgroups.Group, argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    env = {"YURT_EDGE_CGROUP_PROCS": " ".join(str(p) for p in group.procs_files)}
    return ["sh", "-c", _JOIN, "sh", *argv], env


class Process:
    """A long-running harness process: its argv, its log, and how to stop it politely."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        group: cgroups.Group,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        wrapped, join_env = join_argv(group, argv)
        log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                wrapped,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {}), **join_env},
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self._popen.pid

    def running(self) -> bool:
        return self._popen.poll() is None

    def check_running(self) -> None:
        if not self.running():
            raise RuntimeError(f"{self.name} exited with {self._popen.returncode}; last log lines:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        if not self.running():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._popen.pid, signal.SIGTERM)
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait(timeout)
