"""The node Job's entry script (images/converter/yurt-node-entry.sh) run by the image's own busybox shell in a
chroot laid out like the Job's container: the bundle at /opt/yurt-edge-node, the node's root at /host. Its
`nsenter` (into the node's PID 1) is replaced by a recorder, so what would run on the node is seen, not run."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from testenv import cluster

ENTRY = cluster.REPO / "images" / "converter" / "yurt-node-entry.sh"
RECORDER = '#!/bin/sh\necho "$*" >> /calls\n'


def bundle(directory: Path, content: str, stamp: str | None = None) -> None:
    """A bundle whose bootloader holds `content` and whose build stamp says `stamp` (by default the same)."""
    (directory / "lib" / "yurt-edge" / "_internal").mkdir(parents=True)
    (directory / "lib" / "yurt-edge" / "_internal" / "yurt-edge-build.json").write_text(stamp or content)
    (directory / "lib" / "yurt-edge" / "yurt-edge").write_text(content)
    (directory / "lib" / "yurt-edge" / "yurt-edge").chmod(0o755)
    (directory / "bin").mkdir()
    for name in ("yurthub", "yurtctl"):
        (directory / "bin" / name).symlink_to("../lib/yurt-edge/yurt-edge")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    busybox = shutil.which("busybox")
    assert busybox is not None, "busybox-static is needed (make setup installs it)"
    if os.geteuid() != 0:
        pytest.fail("the entry script runs in a chroot: root is needed")
    root = tmp_path / "job"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    for applet in ("sh", "mkdir", "cp", "mv", "rm", "touch", "cmp", "cat"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "bin" / "nsenter").write_text(RECORDER)
    (root / "bin" / "nsenter").chmod(0o755)
    (root / "host").mkdir()
    bundle(root / "opt" / "yurt-edge-node", "build 1")
    return root


def entry(root: Path, *args: str) -> tuple[int, list[str], str]:
    (root / "calls").unlink(missing_ok=True)
    chroot = shutil.which("chroot")
    assert chroot is not None
    proc = subprocess.run(
        [chroot, str(root), "/bin/sh", "-s", *args],
        input=ENTRY.read_text(),
        env={"PATH": "/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    calls = (root / "calls").read_text().splitlines() if (root / "calls").exists() else []
    return proc.returncode, calls, proc.stderr


NODE_STEP = "-t 1 -m -u -i -n -p -- /opt/yurt-edge/bin/yurtctl node {} --node-name=n1"
RESTART = "-t 1 -m -u -i -n -p -- systemctl try-restart yurthub.service yurt-tunnel-agent.service"


def test_convert_installs_the_executable_and_marks_it_ours(root: Path) -> None:
    rc, calls, err = entry(root, "convert", "--node-name=n1")
    assert rc == 0, err
    installed = root / "host" / "opt" / "yurt-edge"
    assert os.readlink(installed / "bin" / "yurthub") == "../lib/yurt-edge/yurt-edge"
    assert (installed / "bin" / "yurtctl").read_text() == "build 1"
    assert (root / "host" / "var/lib/yurt-edge/convert/created-install").exists()
    assert calls == [RESTART, NODE_STEP.format("convert")]
    assert sorted(p.name for p in (root / "host" / "opt").iterdir()) == ["yurt-edge"]  # no .new, no .old


def test_the_same_build_again_restarts_nothing_and_a_new_one_restarts_the_services(root: Path) -> None:
    assert entry(root, "convert", "--node-name=n1")[0] == 0
    installed = (root / "host" / "opt" / "yurt-edge" / "lib" / "yurt-edge" / "yurt-edge").stat().st_ino
    rc, calls, err = entry(root, "convert", "--node-name=n1")
    assert (rc, calls) == (0, [NODE_STEP.format("convert")]), err
    # not even copied again: a running service keeps running the files that are installed
    assert (root / "host" / "opt" / "yurt-edge" / "lib" / "yurt-edge" / "yurt-edge").stat().st_ino == installed
    shutil.rmtree(root / "opt" / "yurt-edge-node")
    bundle(root / "opt" / "yurt-edge-node", "build 2")
    rc, calls, err = entry(root, "convert", "--node-name=n1")
    assert (rc, calls) == (0, [RESTART, NODE_STEP.format("convert")]), err
    assert (root / "host" / "opt" / "yurt-edge" / "bin" / "yurthub").read_text() == "build 2"
    assert sorted(p.name for p in (root / "host" / "opt").iterdir()) == ["yurt-edge"]
    # new sources, the same bootloader (PyInstaller's does not change with them): a new build all the same
    shutil.rmtree(root / "opt" / "yurt-edge-node")
    bundle(root / "opt" / "yurt-edge-node", "build 2", stamp="build 3")
    rc, calls, err = entry(root, "convert", "--node-name=n1")
    assert (rc, calls) == (0, [RESTART, NODE_STEP.format("convert")]), err


def test_an_operators_virtualenv_is_used_as_it_is(root: Path) -> None:
    venv = root / "host" / "opt" / "yurt-edge"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (venv / "bin" / "yurtctl").write_text("#!/bin/sh\n")
    (venv / "bin" / "yurtctl").chmod(0o755)
    rc, calls, err = entry(root, "revert", "--node-name=n1")
    assert (rc, calls) == (0, [NODE_STEP.format("revert")]), err
    assert sorted(p.name for p in venv.iterdir()) == ["bin", "pyvenv.cfg"]
    assert not (root / "host" / "var/lib/yurt-edge/convert/created-install").exists()
    (venv / "bin" / "yurtctl").unlink()  # a virtualenv without yurt-edge: refused, with what to do
    rc, calls, err = entry(root, "convert", "--node-name=n1")
    assert (rc, calls) == (3, [])
    assert "pip install yurt-edge into it" in err
