"""Packaging: yurt-edge's self-contained executable against the same source installed with pip into a fresh
virtualenv, measured in the same run.

- start-up: wall time and peak resident memory of `yurthub --help` (imports the whole yurthub CLI, runs
  nothing), median of REPEATS runs each, alternating, each process's own figures (GNU time);
- a running yurthub against the real control plane (no node; the cluster from testenv): time from exec to
  its status endpoint answering, resident memory once serving and after LISTS LISTs of kube-system's
  ConfigMaps through it (keep-alive, as kubelet), and those LISTs' p50 / p99;
- size on disk of each install (the executable's tree; the virtualenv's site-packages and the Python it
  links to are not comparable, so the venv's is its directory only) and of the tarball.
"""

from __future__ import annotations

import http.client
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from testenv import cluster, exebuild, hosthub
from testenv.kubectl import wait_for

KUBELET = "kubelet/v1.34.12 (linux/amd64) kubernetes/bench"
NODE = "bench-exe"
REPEATS = 10
LISTS = 300


def _tree_mb(path: Path) -> float:
    total = sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return round(total / 1e6, 1)


TIME = "/usr/bin/time"
"""GNU time (Debian's `time`): a small parent, so the child's peak RSS is its own. Measured from this Python
directly, a child's peak would count this process's pages from before its exec."""


def _once(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one run of `argv`, from the kernel's accounting of that child."""
    if not os.access(TIME, os.X_OK):
        raise RuntimeError(f"{TIME} is needed (apt-get install time)")
    proc = subprocess.run(
        [TIME, "-f", "%e %M", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}: {proc.stderr[-500:]}")
    elapsed, peak_kb = proc.stderr.split()[-2:]
    return float(elapsed), int(peak_kb) / 1024


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for {pid}")


def _running(kube: cluster.Cluster, directory: Path, program: Path) -> dict[str, Any]:
    assert kube.plane is not None
    start = time.perf_counter()
    hub = hosthub.start(kube.plane, kube.plane.server, NODE, directory, program=str(program))
    ready_s = time.perf_counter() - start
    try:
        rss_idle = _rss_mb(hub.proc.pid)
        host, port = hub.proxy.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=15)
        times = []
        for _ in range(LISTS):
            t = time.perf_counter()
            conn.request(
                "GET",
                "/api/v1/namespaces/kube-system/configmaps",
                headers={"Accept": "application/json", "User-Agent": KUBELET},
            )
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"LIST through yurthub: HTTP {resp.status}")
            times.append((time.perf_counter() - t) * 1000)
        conn.close()
        ordered = sorted(times)
        return {
            "ready_s": round(ready_s, 3),
            "rss_serving_mb": rss_idle,
            "rss_after_lists_mb": _rss_mb(hub.proc.pid),
            "list_p50_ms": round(ordered[len(ordered) // 2], 3),
            "list_p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))], 3),
        }
    finally:
        hub.stop()


def run() -> dict[str, Any]:
    build = exebuild.build()
    work = Path(tempfile.mkdtemp(prefix="yurt-edge-exe-bench-"))
    venv_bin = exebuild.fresh_install(Path(os.environ.get("BENCH_PYTHON", "python3.11")), work / "venv")
    installs = {"executable": build.program("yurthub"), "venv": venv_bin / "yurthub"}
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in installs}
    for _ in range(REPEATS):
        for name, program in installs.items():
            samples[name].append(_once([str(program), "--help"]))
    result: dict[str, Any] = {
        "build": build.directory.name,
        "size_executable_tree_mb": _tree_mb(build.tree),
        "size_tarball_mb": round(build.tarball.stat().st_size / 1e6, 1),
        "size_venv_mb": _tree_mb(work / "venv"),
    }
    for name, runs in samples.items():
        result[f"help_start_s_{name}"] = round(statistics.median(t for t, _ in runs), 3)
        result[f"help_rss_mb_{name}"] = round(statistics.median(r for _, r in runs), 1)
    with cluster.Cluster.start(cluster.Settings(real_node=False)) as kube:
        kube.kubectl.apply(
            [
                {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}},
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": "bench-exe-view"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                    "subjects": [
                        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": f"system:node:{NODE}"}
                    ],
                },
            ]
        )
        wait_for(
            "the view role's rules", lambda: bool(kube.kubectl.get("clusterrole", "view").get("rules")), timeout=60
        )
        for name, program in installs.items():
            for key, value in _running(kube, work / name, program).items():
                result[f"{key}_{name}"] = value
    return {"median": result}
