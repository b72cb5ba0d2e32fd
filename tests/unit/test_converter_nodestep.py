"""The node-side steps on an in-memory host: which files change, which commands run, what is rolled back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from converter import errors, nodestep
from converter.host import MemoryHost

FLAGS = 'KUBELET_KUBEADM_ARGS="--node-ip=10.0.0.2 --hostname-override=n1"\n'
FILES = {
    nodestep.FLAGS_ENV: FLAGS,
    nodestep.KUBELET_CONF: "apiVersion: v1\nclusters:\n- cluster:\n    server: https://10.0.0.1:6443\n",
    nodestep.KUBELET_CERT: "pem",
    f"{nodestep.VENV}/bin/yurthub": "#!",
}
SETTINGS = nodestep.Settings(node="n1", timeout_s=0.05, interval_s=0.01)
READY = json.dumps({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})


class Node:
    """What the node's endpoints answer; kubelet shows up in yurthub's metrics once restarted through it."""

    def __init__(self, kubelet_comes_back: bool = True) -> None:
        self.restarts = 0
        self.kubelet_comes_back = kubelet_comes_back

    def run(self, argv: list[str]) -> tuple[int, str]:
        if argv[:2] == ["systemctl", "restart"] and argv[2] == "kubelet.service":
            self.restarts += 1
        return 0, ""

    def fetch(self, url: str) -> tuple[int, str]:
        if url == nodestep.METRICS:
            n = self.restarts if self.kubelet_comes_back else 0
            return 200, f'yurthub_requests_total{{component="kubelet",verb="get",outcome="forwarded"}} {n * 5}\n'
        if url.startswith(nodestep.PROXY):
            return (200, READY) if self.kubelet_comes_back else (0, "")
        return 200, "ok"


def test_convert_installs_yurthub_and_points_kubelet_at_it() -> None:
    node = Node()
    host = MemoryHost(FILES, node.run)
    nodestep.convert(host, node.fetch, SETTINGS)
    assert host.files[nodestep.BACKUP] == FLAGS
    assert host.files[nodestep.FLAGS_ENV] == (
        'KUBELET_KUBEADM_ARGS="--node-ip=10.0.0.2 --hostname-override=n1'
        ' --kubeconfig=/etc/kubernetes/kubelet-yurthub.conf --bootstrap-kubeconfig="\n'
    )
    assert "--server-addr=https://10.0.0.1:6443 --node-name=n1" in host.files[nodestep.ENV_FILE]
    assert host.files[nodestep.UNIT] == nodestep.UNIT_TEXT
    assert "http://127.0.0.1:10261" in host.files[nodestep.HUB_KUBECONFIG]
    assert ["systemctl", "restart", "kubelet.service"] in host.commands


def test_convert_twice_changes_the_flags_once_and_keeps_the_first_backup() -> None:
    node = Node()
    host = MemoryHost(FILES, node.run)
    nodestep.convert(host, node.fetch, SETTINGS)
    flags = host.files[nodestep.FLAGS_ENV]
    nodestep.convert(host, node.fetch, SETTINGS)
    assert host.files[nodestep.FLAGS_ENV] == flags
    assert host.files[nodestep.BACKUP] == FLAGS


def test_a_kubelet_that_does_not_come_back_through_yurthub_is_rolled_back() -> None:
    node = Node(kubelet_comes_back=False)
    host = MemoryHost({**FILES, nodestep.CREATED_VENV: ""}, node.run)
    with pytest.raises(errors.NodeStepFailed, match="rolled back"):
        nodestep.convert(host, node.fetch, SETTINGS)
    assert host.files == {k: v for k, v in FILES.items() if not k.startswith(nodestep.VENV)}
    assert ["systemctl", "disable", "--now", "yurthub.service"] in host.commands


def test_revert_restores_the_node_byte_for_byte() -> None:
    node = Node()
    host = MemoryHost(FILES, node.run)
    nodestep.convert(host, node.fetch, SETTINGS)
    nodestep.revert(host, node.fetch, SETTINGS)
    assert host.files == FILES  # the venv was there before convert: kept


def test_revert_without_a_backup_strips_only_our_flags() -> None:
    redirected = nodestep.redirected(FLAGS)
    host = MemoryHost({**FILES, nodestep.FLAGS_ENV: redirected})
    nodestep.revert(host, Node().fetch, SETTINGS)
    assert host.files[nodestep.FLAGS_ENV] == FLAGS


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({**FILES, nodestep.FLAGS_ENV: "OTHER=1\n"}, "not a kubeadm-layout kubelet"),
        ({k: v for k, v in FILES.items() if k != nodestep.KUBELET_CONF}, "kubelet.conf not found"),
        ({**FILES, nodestep.KUBELET_CONF: "apiVersion: v1\n"}, "names no apiserver"),
        ({k: v for k, v in FILES.items() if k != nodestep.KUBELET_CERT}, "client certificate"),
        ({k: v for k, v in FILES.items() if not k.startswith(nodestep.VENV)}, "not installed"),
    ],
)
def test_preflight_refuses_a_node_it_cannot_convert_and_changes_nothing(files: dict[str, str], message: str) -> None:
    host = MemoryHost(files)
    with pytest.raises(errors.PreflightFailed, match=message):
        nodestep.convert(host, Node().fetch, SETTINGS)
    assert host.files == files and host.commands == []


def test_the_unit_written_to_nodes_is_the_repositorys() -> None:
    unit = Path(__file__).resolve().parents[2] / "systemd" / "yurthub.service"
    assert unit.read_text() == nodestep.UNIT_TEXT
