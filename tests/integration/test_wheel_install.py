"""The install paths a user has, against the real kube-apiserver: yurt-edge's wheel (hack/build-exe.sh, as
`make dist` builds it) installed into a fresh virtualenv of every supported Python, and the self-contained
executable; each starts `yurthub` and answers a LIST through it, the same as the apiserver's own answer."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from testenv import cluster, exebuild, hosthub, relay

KUBELET = "kubelet/v1.34.12 (linux/amd64) kubernetes/test"
PYTHONS = [Path(sys.executable), *exebuild.extra_pythons()]


def list_through(hub: hosthub.HostHub) -> list[str]:
    request = urllib.request.Request(
        f"{hub.proxy}/api/v1/namespaces/kube-system/configmaps",
        headers={"Accept": "application/json", "User-Agent": KUBELET},
    )
    with urllib.request.urlopen(request, timeout=15) as resp:
        assert resp.status == 200
        doc = json.loads(resp.read())
    assert doc["kind"] == "ConfigMapList"
    return sorted(item["metadata"]["name"] for item in doc["items"])


def serves_a_list(cloud: cluster.Cluster, link: relay.Relay, directory: Path, program: Path) -> None:
    assert cloud.plane is not None
    hub = hosthub.start(cloud.plane, f"https://127.0.0.1:{link.port}", "yurt-test", directory, program=str(program))
    try:
        direct = sorted(cm["metadata"]["name"] for cm in cloud.kubectl.get("configmaps", "-n", "kube-system")["items"])
        assert "kube-root-ca.crt" in direct
        assert list_through(hub) == direct
    finally:
        hub.stop()


@pytest.mark.parametrize("python", PYTHONS, ids=lambda p: str(p.parent.parent.name))
def test_the_wheel_in_a_fresh_venv_serves_a_list(
    python: Path, cloud: cluster.Cluster, link: relay.Relay, tmp_path: Path
) -> None:
    assert python.exists(), f"{python} missing: `make setup` makes the extra Pythons' virtualenvs"
    bin_dir = exebuild.fresh_install(python, tmp_path / "venv")
    version = subprocess.run(
        [str(bin_dir / "python"), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    ).stdout.strip()
    assert version == exebuild.python_version(python)
    serves_a_list(cloud, link, tmp_path / "hub", bin_dir / "yurthub")


def test_the_executable_serves_a_list_and_says_what_it_is(
    cloud: cluster.Cluster, link: relay.Relay, tmp_path: Path
) -> None:
    build = exebuild.build()
    out = subprocess.run(
        [str(build.program("yurthub")), "--version"], stdout=subprocess.PIPE, text=True, check=True
    ).stdout
    assert out.startswith(f"yurt-edge {build.wheel.name.split('-')[1]} (source {build.directory.name}, Python 3.")
    recorded = (build.tarball.parent / f"{build.tarball.name}.sha256").read_text().split()[0]
    assert recorded == hashlib.sha256(build.tarball.read_bytes()).hexdigest()
    for name in ("yurt-tunnel-agent", "yurtctl"):
        helped = subprocess.run([str(build.program(name)), "--help"], stdout=subprocess.PIPE, text=True, check=True)
        assert helped.stdout.startswith(f"usage: {name}")
    # called by its own name, the first argument names the program; nothing else runs anything
    exe = build.tree / "lib" / "yurt-edge" / "yurt-edge"
    helped = subprocess.run([str(exe), "yurt-manager", "--help"], stdout=subprocess.PIPE, text=True, check=True)
    assert helped.stdout.startswith("usage: yurt-manager")
    unknown = subprocess.run([str(exe), "sh"], capture_output=True, text=True, check=False)
    assert (unknown.returncode, unknown.stdout) == (2, "")
    assert unknown.stderr.startswith("usage: yurt-edge PROGRAM")
    serves_a_list(cloud, link, tmp_path / "hub", build.program("yurthub"))


def test_the_executable_imports_only_what_it_carries(tmp_path: Path) -> None:
    """A local user's PYTHONPATH or working directory cannot put their code into the root service."""
    fake = tmp_path / "yurthub"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "cli.py").write_text('raise SystemExit("planted module imported")\n')
    build = exebuild.build()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path), "PYTHONHOME": str(tmp_path)}
    out = subprocess.run(
        [str(build.program("yurthub")), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout.startswith("usage: yurthub")
