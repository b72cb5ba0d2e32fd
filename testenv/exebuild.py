"""yurt-edge's wheel and self-contained executable for the tests, from `hack/build-exe.sh` (built once per
source, cached outside the repository; the same build `make dist` gives), and fresh installs of the wheel
into a virtualenv of any supported Python."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import shutil
import subprocess
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


def extra_pythons() -> list[Path]:
    """The extra supported Pythons' virtualenvs `make setup` made (hack/extra-pythons.sh; EXTRA_PYTHONS)."""
    proc = subprocess.run(
        [str(cluster.REPO / "hack" / "extra-pythons.sh"), "list"], stdout=subprocess.PIPE, text=True, check=True
    )
    return [cluster.REPO / line for line in proc.stdout.split()]


def python_version(python: Path) -> str:
    """ "3.12" for a 3.12 interpreter."""
    out = subprocess.run(
        [str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def dependency_wheels(python: Path) -> Path:
    """yurt-edge's dependencies as wheels for `python`'s version (fetched once per version and setup.cfg,
    cached), so each fresh install is offline and quick."""
    key = hashlib.sha256((cluster.REPO / "setup.cfg").read_bytes()).hexdigest()[:12]
    house = cluster.cache_dir() / "wheels" / f"py{python_version(python)}-{key}"
    if not (house / ".complete").exists():
        shutil.rmtree(house, ignore_errors=True)
        wheel = build().wheel
        subprocess.run([str(python), "-m", "pip", "-q", "wheel", "--wheel-dir", str(house), str(wheel)], check=True)
        for own in house.glob("yurt_edge-*.whl"):
            own.unlink()
        (house / ".complete").touch()
    return house


def fresh_install(python: Path, directory: Path) -> Path:
    """A new virtualenv of `python`'s interpreter in `directory` with the built wheel installed (the way a
    user installs it: `pip install yurt_edge-*.whl`, here from a local wheelhouse); returns its bin/."""
    house = dependency_wheels(python)
    subprocess.run([str(python), "-m", "venv", str(directory)], check=True)
    pip = [str(directory / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index", "--find-links", str(house)]
    subprocess.run([*pip, str(build().wheel)], check=True)
    return directory / "bin"
