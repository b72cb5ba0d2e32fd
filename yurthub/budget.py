"""Byte budgets: how much the request path holds in memory at once, node wide.

Pure: no I/O. A `Budget` is a counter with a ceiling; a `Hold` is what one request took from it, given back
in one call when that request is done (whatever way it ends). Taking never waits: past the ceiling the
caller refuses (a 429) or stops buffering, so one client's flood cannot make another client wait.
"""

from __future__ import annotations


class Budget:
    """At most `capacity` bytes held at once by all the `Hold`s on it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0

    def take(self, n: int) -> bool:
        """Reserve `n` bytes; False (and nothing reserved) when that would pass the ceiling."""
        if n < 0 or self.held + n > self.capacity:
            return False
        self.held += n
        return True

    def give(self, n: int) -> None:
        self.held = max(0, self.held - n)

    def hold(self) -> Hold:
        return Hold(self)


class Hold:
    """The bytes one request holds of a `Budget`; `release` gives all of them back and may be called twice."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.size = 0

    def grow(self, n: int) -> bool:
        if not self.budget.take(n):
            return False
        self.size += n
        return True

    def release(self) -> None:
        self.budget.give(self.size)
        self.size = 0

    def handover(self) -> Hold:
        """A new `Hold` with this one's bytes (for whoever outlives this request); this one then holds none."""
        other = Hold(self.budget)
        other.size, self.size = self.size, 0
        return other
