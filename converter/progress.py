"""A progress display with one line per node: redrawn in place on a terminal, one printed line per change
otherwise (logs, CI)."""

from __future__ import annotations

import threading
import time
from typing import TextIO


class Progress:
    def __init__(self, nodes: list[str], stream: TextIO, *, tty: bool | None = None) -> None:
        self.nodes = list(nodes)
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.state = dict.fromkeys(self.nodes, "waiting")
        self.started: dict[str, float] = {}
        self._lock = threading.Lock()
        self._drawn = False
        self._width = max((len(n) for n in self.nodes), default=4)

    def _line(self, node: str) -> str:
        elapsed = ""
        if node in self.started:
            elapsed = f" ({time.monotonic() - self.started[node]:.0f}s)"
        return f"  {node:<{self._width}}  {self.state[node]}{elapsed}"

    def set(self, node: str, text: str) -> None:
        with self._lock:
            if node not in self.state:
                self.nodes.append(node)
                self._width = max(self._width, len(node))
            if text == "running" and node not in self.started:
                self.started[node] = time.monotonic()
            self.state[node] = text
            if self.tty:
                if self._drawn:
                    self.stream.write(f"\x1b[{len(self.nodes)}F")
                for n in self.nodes:
                    self.stream.write("\x1b[2K" + self._line(n) + "\n")
                self._drawn = True
            else:
                self.stream.write(self._line(node) + "\n")
            self.stream.flush()
