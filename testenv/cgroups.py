"""The harness's cgroup subtree: every process it starts lives under one `yurt-edge` group.

The subtree sits below the harness's own cgroup in every mounted hierarchy (cgroup v1 controllers, the
`name=systemd` hierarchy and cgroup2), so whatever limits the machine puts on the harness still apply. The
node's systemd gets a cgroup namespace rooted at its own child group, so the cgroups that systemd,
containerd and kubelet create all land inside it too. Stopping is therefore: kill every process listed in the
subtree, then remove its directories, deepest first. Nothing escapes, even after a crash of the harness.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

ROOT_NAME = "yurt-edge"
_CGROUP_FS = Path("/sys/fs/cgroup")
_MOUNT_OPTIONS = {
    "rw",
    "ro",
    "relatime",
    "noatime",
    "nosuid",
    "nodev",
    "noexec",
    "nsdelegate",
    "memory_recursiveprot",
}


def _mounts() -> list[tuple[Path, str, frozenset[str]]]:
    """(mount point, fstype, controller set) of every cgroup hierarchy mounted under /sys/fs/cgroup."""
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, point, fstype, opts, *_ = line.split()
        if fstype in ("cgroup", "cgroup2") and point.startswith(f"{_CGROUP_FS}/"):
            controllers = frozenset(o for o in opts.split(",") if o not in _MOUNT_OPTIONS)
            found.append((Path(point), fstype, controllers))
    return found


def _own_paths() -> dict[frozenset[str], str]:
    """This process's cgroup path per hierarchy, keyed by the hierarchy's controller set ('' for cgroup2)."""
    paths: dict[frozenset[str], str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        paths[frozenset(controllers.split(",")) if controllers else frozenset()] = path
    return paths


def hierarchy_roots() -> list[Path]:
    """Where the harness subtree lives (or would live) in each hierarchy: below this process's own group."""
    own = _own_paths()
    roots = []
    for point, fstype, controllers in _mounts():
        key = frozenset() if fstype == "cgroup2" else controllers
        base = own.get(key, "/").lstrip("/")
        roots.append(point / base / ROOT_NAME)
    return roots


class Group:
    """One named group of the harness subtree, present in every hierarchy."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.paths = [root / name for root in hierarchy_roots()]

    def create(self) -> None:
        for path in self.paths:
            for level in (path.parent, path):
                level.mkdir(exist_ok=True)
                _inherit_cpuset(level)

    @property
    def procs_files(self) -> list[Path]:
        """The cgroup.procs files a process writes its pid into to join this group."""
        return [p / "cgroup.procs" for p in self.paths]

    def pids(self) -> set[int]:
        return _pids_under(self.paths)

    def kill(self, timeout: float = 10.0) -> None:
        kill_and_remove(self.paths, timeout)


def _inherit_cpuset(path: Path) -> None:
    """cgroup v1 cpuset groups start with no CPUs or memory nodes; copy the parent's so tasks can join."""
    for knob in ("cpuset.cpus", "cpuset.mems"):
        mine, parents = path / knob, path.parent / knob
        if mine.exists() and not mine.read_text().strip():
            mine.write_text(parents.read_text())


def _walk(paths: list[Path]) -> Iterator[Path]:
    """Every group directory under `paths`, deepest first."""
    for top in paths:
        if not top.is_dir():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
            yield Path(dirpath)


def _pids_under(paths: list[Path]) -> set[int]:
    pids: set[int] = set()
    for group in _walk(paths):
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in (group / "cgroup.procs").read_text().split())
    return pids


def kill_and_remove(paths: list[Path], timeout: float = 10.0) -> None:
    """SIGKILL every process under `paths` until none is left, then remove the groups deepest first."""
    deadline = time.monotonic() + timeout
    while pids := _pids_under(paths):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError(f"cgroup cleanup: processes {sorted(pids)} survive SIGKILL under {paths[0]}")
        time.sleep(0.05)
    while True:
        left = [g for g in _walk(paths) if g.exists()]
        for group in left:
            with contextlib.suppress(FileNotFoundError, OSError):
                group.rmdir()
        if not any(p.exists() for p in paths):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"cgroup cleanup: cannot remove {[str(g) for g in left if g.exists()]}")
        time.sleep(0.05)


def leftover_roots() -> list[Path]:
    """Harness subtrees that exist now, wherever an earlier run (with another own cgroup) made them."""
    found = []
    for point, _fstype, _controllers in _mounts():
        found += [Path(d) for d, _sub, _f in os.walk(point) if Path(d).name == ROOT_NAME]
    return found
