"""The tunnel server's Helm chart, as `yurtctl convert --tunnel` installs it and `revert` removes it.

The chart is `charts/yurt-tunnel-server` from the repository, shipped inside the package so yurtctl needs
nothing but the `helm` binary. What convert sets (`values`) comes first; the operator's own values files
come after it and win (certificates, Services, replica placement: see the chart's README).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from importlib import resources
from typing import Any

import yaml

from converter import errors, names

RELEASE = "yurt-tunnel-server"
NAMESPACE = "kube-system"
CA_CONFIGMAP = f"{RELEASE}-ca"
"""The chart's ConfigMap with the server's CA (`ca.crt`), for the agents."""
SERVER_NAME = f"{RELEASE}.{NAMESPACE}.svc"
"""The name the chart's generated serving certificate carries and agents verify by default."""
RELEASE_SECRETS = f"owner=helm,name={RELEASE}"
"""Labels of the Secrets in which helm keeps the release."""


def bundled_chart() -> str:
    return str(resources.files("converter").joinpath("charts", "yurt-tunnel-server"))


def split_image(image: str) -> tuple[str, str]:
    """`registry/repo:tag` into repository and tag, as the chart takes them."""
    if "@" in image:
        raise errors.ConverterError(f"--image {image}: the tunnel chart takes a tag, not a digest")
    name, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        raise errors.ConverterError(f"--image {image}: give a tag (repository:tag)")
    return name, tag


def values(image: str, replicas: int) -> dict[str, Any]:
    """What convert sets: the image, the replicas on the cloud nodes, no agent DaemonSet (convert installs
    each edge node's agent as a systemd service beside yurthub, like yurthub independent of the pod
    runtime)."""
    repository, tag = split_image(image)
    return {
        "image": {"repository": repository, "tag": tag},
        "server": {"replicaCount": replicas, "nodeSelector": {names.EDGE_WORKER_LABEL: "false"}},
        "agent": {"enabled": False},
    }


def install_argv(helm: str, chart: str, kubeconfig: str, values_files: list[str]) -> list[str]:
    argv = [helm, "upgrade", "--install", RELEASE, chart, "--namespace", NAMESPACE, "--kubeconfig", kubeconfig]
    for f in values_files:
        argv += ["--values", f]
    return argv


def template_argv(helm: str, chart: str, values_files: list[str]) -> list[str]:
    argv = [helm, "template", RELEASE, chart, "--namespace", NAMESPACE]
    for f in values_files:
        argv += ["--values", f]
    return argv


def uninstall_argv(helm: str, kubeconfig: str) -> list[str]:
    return [helm, "uninstall", RELEASE, "--namespace", NAMESPACE, "--kubeconfig", kubeconfig, "--wait"]


def objects_of(manifest: str) -> list[str]:
    """`Kind namespace/name` of every object in a rendered manifest, for --dry-run."""
    out = []
    for doc in yaml.safe_load_all(manifest):
        if not doc:
            continue
        meta = doc.get("metadata") or {}
        ns = meta.get("namespace")
        out.append(f"{doc.get('kind')} {ns + '/' if ns else ''}{meta.get('name')}")
    return out


class Helm:
    """Runs the helm binary with the chart and the values convert computed."""

    def __init__(self, binary: str, chart: str, kubeconfig: str, extra_values: tuple[str, ...] = ()) -> None:
        self.binary = binary
        self.chart = chart
        self.kubeconfig = kubeconfig
        self.extra_values = list(extra_values)
        for f in self.extra_values:
            if not os.path.isfile(f):
                raise errors.ConverterError(f"--tunnel-values {f}: no such file")

    def _run(self, argv: list[str], timeout: float = 600.0) -> str:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except FileNotFoundError as exc:
            raise errors.ConverterError(
                f"helm not found ({self.binary}): --tunnel installs the tunnel server with helm; give --helm"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise errors.ConverterError(f"`helm {argv[1]}` did not finish within {timeout:.0f}s") from exc
        if proc.returncode != 0:
            raise errors.ConverterError(f"`helm {argv[1]}` failed: {proc.stderr.strip()[-1500:]}")
        return proc.stdout

    def _with_values(self, ours: dict[str, Any], build: Callable[[list[str]], list[str]]) -> str:
        with tempfile.NamedTemporaryFile("w", prefix="yurtctl-tunnel-", suffix=".yaml") as f:
            json.dump(ours, f)
            f.flush()
            return self._run(build([f.name, *self.extra_values]))

    def render(self, ours: dict[str, Any]) -> list[str]:
        manifest = self._with_values(ours, lambda v: template_argv(self.binary, self.chart, v))
        return objects_of(manifest)

    def install(self, ours: dict[str, Any]) -> None:
        self._with_values(ours, lambda v: install_argv(self.binary, self.chart, self.kubeconfig, v))

    def uninstall(self) -> None:
        self._run(uninstall_argv(self.binary, self.kubeconfig))
