"""What a harness run could leave on the host, found from the outside, and how to clear it.

Used at start (to clean up after an earlier run that crashed or was killed) and by the test that proves a
teardown left nothing: processes, cgroups, network links and namespaces, mounts, iptables rules.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

from testenv import cgroups

LINK_PREFIX = "ye-"
ADDRESS_PREFIXES = ("10.213.", "10.214.", "10.215.", "10.216.")


def _processes(cache: Path) -> list[str]:
    """Processes in a harness cgroup, or running a binary from the harness's cache (built or rootfs)."""
    found = []
    in_groups = set()
    for root in cgroups.leftover_roots():
        for dirpath, _d, _f in os.walk(root):
            with contextlib.suppress(OSError):
                in_groups.update((Path(dirpath) / "cgroup.procs").read_text().split())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            exe = os.readlink(entry / "exe")
        except OSError:
            exe = ""
        if entry.name in in_groups or exe.startswith(str(cache)):
            with contextlib.suppress(OSError):
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                found.append(f"pid {entry.name}: {cmd or exe}")
    return found


def _links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=False).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]
    return [n for n in names if n.startswith(LINK_PREFIX)]


def _netns() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(LINK_PREFIX)]


def _mounts(cache: Path) -> list[str]:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line.split()[4] for line in lines if line.split()[4].startswith(str(cache))]


def _iptables() -> list[str]:
    rules = []
    for tool in ("iptables-save", "ip6tables-save"):
        with contextlib.suppress(FileNotFoundError):
            out = subprocess.run([tool], capture_output=True, text=True, check=False).stdout
            rules += [
                r
                for r in out.splitlines()
                if r.startswith("-A")
                and (
                    any(p in r for p in ADDRESS_PREFIXES)
                    or LINK_PREFIX in r
                    or "KUBE-" in r
                    or "CNI-" in r
                    or "YURT-EDGE" in r
                )
            ]
    return rules


def find(cache: Path) -> dict[str, list[str]]:
    """Everything of the harness still on the host, by kind; all lists empty means a clean host."""
    return {
        "processes": _processes(cache),
        "cgroups": [str(p) for p in cgroups.leftover_roots()],
        "links": _links(),
        "netns": _netns(),
        "mounts": _mounts(cache),
        "iptables": _iptables(),
    }


def clear(cache: Path) -> None:
    """Remove what an earlier run left: kill its processes, remove its cgroups, links and mounts."""
    roots = cgroups.leftover_roots()
    if roots:
        cgroups.kill_and_remove(roots)
    for line in _processes(cache):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(line.split()[1].rstrip(":")), 9)
    for link in _links():
        subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)
    for name in _netns():
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    for mount in sorted(_mounts(cache), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
