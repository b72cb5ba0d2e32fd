"""yurt-edge's wheel and self-contained executable for the tests, from `hack/build-exe.sh` (built once per
source, cached outside the repository; the same build `make dist` gives)."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from testenv import cluster


@dataclasses.dataclass(frozen=True)
class Build:
    directory: Path
    """The cache directory of this source's build."""

    @property
    def wheel(self) -> Path:
        """yurt-edge's own wheel (its dependencies come from an index or a wheelhouse)."""
        return next(self.directory.glob("yurt_edge-*.whl"))

    @property
    def tree(self) -> Path:
        """What a node's /opt/yurt-edge holds: bin/<program> links to lib/yurt-edge/yurt-edge."""
        return self.directory / "yurt-edge"

    def program(self, name: str) -> Path:
        return self.tree / "bin" / name

    @property
    def tarball(self) -> Path:
        return next(self.directory.glob("yurt-edge-*.tar.gz"))


@functools.cache
def build() -> Build:
    """The build of the checkout as it is now (once per process: a run does not change its own source)."""
    return Build(cluster._script_output("build-exe.sh"))
