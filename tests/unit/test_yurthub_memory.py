"""`memory`: giving freed heap back after a big cache write. What it saves is measured in bench/
(`rss_mb_idle_10k_objects`); here, that the wrapper is transparent: the write's result and its errors pass
through, and the heap is given back either way."""

from __future__ import annotations

import pytest

from yurthub import memory


def test_a_wrapped_write_returns_its_result_and_raises_its_errors() -> None:
    memory.settle()
    assert memory.then_give_back(lambda a, b: a + b)(2, 3) == 5

    def fails() -> None:
        raise ValueError("malformed")

    with pytest.raises(ValueError, match="malformed"):
        memory.then_give_back(fails)()
