"""The entry point of yurt-edge's self-contained executable (built by hack/build-exe.sh with PyInstaller).

One executable, several programs: the program is chosen by the name it is called by (`bin/yurthub` is a
symbolic link to it), or, called by its own name, by its first argument (`yurt-edge yurthub --help`). Each
program's module is imported only when that program runs, so yurthub never loads the kubernetes client.
`--version` alone, under any name, prints the version, the source hash and the Python the build carries.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable

PROGRAMS = {
    "yurthub": ("yurthub.cli", "main"),
    "yurt-tunnel-agent": ("tunnel.cli", "agent_main"),
    "yurt-tunnel-server": ("tunnel.cli", "server_main"),
    "yurtctl": ("converter.cli", "yurtctl_main"),
    "yurt-manager": ("converter.cli", "manager_main"),
}
SELF = "yurt-edge"
BUILD_INFO = "yurt-edge-build.json"


def version() -> str:
    """One line: what was built, from which source, with which Python (the build writes BUILD_INFO)."""
    base = getattr(sys, "_MEIPASS", os.path.dirname(os.path.abspath(__file__)))
    try:
        with open(os.path.join(base, BUILD_INFO), encoding="utf-8") as fh:
            info = json.load(fh)
    except OSError:
        info = {"version": "unknown", "source": "unknown"}
    python = ".".join(str(n) for n in sys.version_info[:3])
    return f"{SELF} {info['version']} (source {info['source']}, Python {python})"


def program(argv: list[str]) -> tuple[Callable[[list[str]], int] | None, list[str], str]:
    """The program `argv` names and its arguments; None and a message when it names none."""
    name = os.path.basename(argv[0]) if argv else SELF
    args = argv[1:]
    if name not in PROGRAMS:
        if not args or args[0] not in PROGRAMS:
            names = ", ".join(PROGRAMS)
            return None, args, f"usage: {SELF} PROGRAM [ARGS...] (or call it by a program's name); PROGRAM: {names}"
        name, args = args[0], args[1:]
    module, function = PROGRAMS[name]
    main: Callable[[list[str]], int] = getattr(importlib.import_module(module), function)
    return main, args, name


def run(argv: list[str]) -> int:
    if argv[1:] == ["--version"]:
        sys.stdout.write(version() + "\n")
        return 0
    main, args, name = program(argv)
    if main is None:
        sys.stderr.write(name + "\n")
        return 2
    sys.argv = [name, *args]
    return main(args)


if __name__ == "__main__":
    sys.exit(run(sys.argv))
