"""The node-side steps on an in-memory host: which files change, which commands run, what is rolled back."""

from __future__ import annotations

import dataclasses
import json

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


EXE = {
    f"{nodestep.VENV}/lib/yurt-edge/yurt-edge": "ELF",
    f"{nodestep.VENV}/lib/yurt-edge/_internal/libpython3.11.so.1.0": "ELF",
}


def test_revert_removes_the_executable_the_job_installed() -> None:
    node = Node()
    host = MemoryHost({**FILES, **EXE, nodestep.CREATED_INSTALL: ""}, node.run)
    nodestep.convert(host, node.fetch, SETTINGS)
    nodestep.revert(host, node.fetch, SETTINGS)
    assert host.files == {k: v for k, v in FILES.items() if not k.startswith(nodestep.VENV)}


def test_revert_keeps_an_install_that_was_there_before_convert() -> None:
    node = Node()
    host = MemoryHost({**FILES, **EXE}, node.run)
    nodestep.convert(host, node.fetch, SETTINGS)
    nodestep.revert(host, node.fetch, SETTINGS)
    assert host.files == {**FILES, **EXE}


def test_revert_without_a_backup_strips_only_our_flags() -> None:
    redirected = nodestep.redirected(FLAGS)
    host = MemoryHost({**FILES, nodestep.FLAGS_ENV: redirected})
    nodestep.revert(host, Node().fetch, SETTINGS)
    assert host.files[nodestep.FLAGS_ENV] == FLAGS


def test_ports_held_by_something_else_stop_the_node_before_anything_changes() -> None:
    host = MemoryHost(FILES, busy_ports=frozenset({10261, 10266}))
    with pytest.raises(errors.PreflightFailed, match=r"127\.0\.0\.1:10261 \(yurthub's proxy\)$"):
        nodestep.convert(host, Node().fetch, SETTINGS)
    host = MemoryHost({**FILES, nodestep.TUNNEL_CA: "CA"}, busy_ports=frozenset({10266}))
    with pytest.raises(errors.PreflightFailed, match=r"10266 \(yurt-tunnel-agent's"):
        nodestep.convert(host, TunnelNode().fetch, TUNNEL)
    assert host.commands == []


def test_a_rerun_does_not_mistake_its_own_running_services_for_squatters() -> None:
    node = TunnelNode()
    host = MemoryHost({**FILES, nodestep.TUNNEL_CA: "CA"}, node.run)
    nodestep.convert(host, node.fetch, TUNNEL)
    converted = dict(host.files)
    host.busy_ports = frozenset({10261, 10266, 10267})  # ours, now running
    assert nodestep.busy_ports(host, TUNNEL) == []
    host.commands.clear()
    nodestep.convert(host, node.fetch, TUNNEL)  # would raise PreflightFailed naming the ports
    assert host.files == converted
    # running with exactly these files: neither service is restarted by the re-run
    assert ["systemctl", "restart", "yurthub.service"] not in host.commands
    assert ["systemctl", "restart", "yurt-tunnel-agent.service"] not in host.commands


TOKEN = "abcdef.0123456789abcdef"  # noqa: S105 - a made-up token in the documented shape
STAGED = {**FILES, nodestep.STAGED_TOKEN: TOKEN + "\n"}
STAGE, MISSING = "/t", "/missing"


def test_a_join_token_file_is_installed_owner_only_and_yurthub_reads_it_from_there() -> None:
    node = Node()
    host = MemoryHost(STAGED, node.run)
    nodestep.convert(host, node.fetch, dataclasses.replace(SETTINGS, join_token_file=nodestep.STAGED_TOKEN))
    assert host.files[nodestep.HUB_TOKEN] == TOKEN + "\n"
    assert host.modes[nodestep.HUB_TOKEN] == 0o600
    assert host.modes[nodestep.ENV_FILE] == 0o600
    env = host.files[nodestep.ENV_FILE]
    assert f"--join-token-file={nodestep.HUB_TOKEN}" in env
    assert TOKEN not in env  # yurthub's command line (from the env file) carries the path, not the token
    assert "--client-cert" not in env
    nodestep.revert(host, node.fetch, SETTINGS)
    assert nodestep.HUB_TOKEN not in host.files


@pytest.mark.parametrize(
    ("files", "settings", "message"),
    [
        (FILES, dataclasses.replace(SETTINGS, join_token_file=MISSING), "no such file"),
        ({**FILES, STAGE: "\n"}, dataclasses.replace(SETTINGS, join_token_file=STAGE), "empty"),
        ({**FILES, STAGE: "abcdef:0123"}, dataclasses.replace(SETTINGS, join_token_file=STAGE), "expected a bootstrap"),
        (FILES, dataclasses.replace(SETTINGS, hub_args=f"--join-token={TOKEN}"), "use --join-token-file"),
        (FILES, dataclasses.replace(SETTINGS, hub_args=f"-v --join-token {TOKEN}"), "use --join-token-file"),
    ],
)
def test_a_bad_join_token_stops_the_node_before_anything_changes(
    files: dict[str, str], settings: nodestep.Settings, message: str
) -> None:
    host = MemoryHost(files)
    with pytest.raises(errors.PreflightFailed, match=message) as caught:
        nodestep.convert(host, Node().fetch, settings)
    assert TOKEN not in str(caught.value)
    assert host.files == files and host.commands == []


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


NODE = json.dumps(
    {
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "addresses": [
                {"type": "InternalIP", "address": "10.0.0.2"},
                {"type": "Hostname", "address": "n1"},
                {"type": "ExternalIP", "address": "192.0.2.7"},
            ],
        }
    }
)
TUNNEL = dataclasses.replace(SETTINGS, tunnel_servers=("cloud:31062", "cloud2:31062"), tunnel_server_name="yts.svc")


class TunnelNode(Node):
    """A node whose tunnel agent connects (or never does) once started."""

    def __init__(self, agent_connects: bool = True) -> None:
        super().__init__()
        self.agent_connects = agent_connects
        self.agent_started = False

    def run(self, argv: list[str]) -> tuple[int, str]:
        if argv[:2] == ["systemctl", "restart"] and argv[2] == "yurt-tunnel-agent.service":
            self.agent_started = True
        return super().run(argv)

    def fetch(self, url: str) -> tuple[int, str]:
        if url == nodestep.AGENT_READYZ:
            return (200, "ok") if self.agent_started and self.agent_connects else (0, "")
        if url.startswith(nodestep.PROXY):
            return 200, NODE
        return super().fetch(url)


def test_with_the_tunnel_the_agent_is_installed_for_the_nodes_own_addresses() -> None:
    node = TunnelNode()
    host = MemoryHost({**FILES, nodestep.TUNNEL_CA: "CA PEM"}, node.run)
    nodestep.convert(host, node.fetch, TUNNEL)
    assert host.files[nodestep.AGENT_CA] == "CA PEM"
    assert host.files[nodestep.AGENT_UNIT] == nodestep.AGENT_UNIT_TEXT
    assert host.files[nodestep.AGENT_ENV] == (
        'TUNNEL_AGENT_ARGS="--node-name=n1 --server-addr=cloud:31062,cloud2:31062 --ca-file=/etc/yurt-tunnel/ca.crt'
        " --cert-file=/var/lib/kubelet/pki/kubelet-client-current.pem --node-ip=10.0.0.2,192.0.2.7"
        ' --allowed-ports=10250 --server-name=yts.svc"\n'
    )
    assert ["systemctl", "enable", "yurt-tunnel-agent.service"] in host.commands
    restarts = host.commands.count(["systemctl", "restart", "yurt-tunnel-agent.service"])
    nodestep.convert(host, node.fetch, TUNNEL)  # again: nothing changed, the running agent is left alone
    assert host.commands.count(["systemctl", "restart", "yurt-tunnel-agent.service"]) == restarts


def test_an_agent_that_never_connects_rolls_the_whole_node_back() -> None:
    node = TunnelNode(agent_connects=False)
    files = {**FILES, nodestep.TUNNEL_CA: "CA PEM"}
    host = MemoryHost(files, node.run)
    with pytest.raises(errors.NodeStepFailed, match=r"did not connect to a tunnel server.*rolled back"):
        nodestep.convert(host, node.fetch, TUNNEL)
    assert host.files == {k: v for k, v in files.items() if not k.startswith(nodestep.STATE_DIR)}
    assert ["systemctl", "disable", "--now", "yurt-tunnel-agent.service"] in host.commands


def test_the_tunnel_without_its_ca_is_refused_before_anything_changes() -> None:
    host = MemoryHost(FILES)
    with pytest.raises(errors.PreflightFailed, match="tunnel server's CA"):
        nodestep.convert(host, TunnelNode().fetch, TUNNEL)
    assert host.files == FILES and host.commands == []


def test_revert_removes_the_agent_and_restores_the_node() -> None:
    node = TunnelNode()
    host = MemoryHost(FILES, node.run)
    host.write(nodestep.TUNNEL_CA, "CA PEM")
    nodestep.convert(host, node.fetch, TUNNEL)
    nodestep.revert(host, node.fetch, SETTINGS)
    assert host.files == FILES


def test_the_units_written_to_nodes_are_the_ones_shipped_in_the_package() -> None:
    assert "ExecStart=/opt/yurt-edge/bin/yurthub $YURTHUB_ARGS" in nodestep.UNIT_TEXT
    assert "ExecStart=/opt/yurt-edge/bin/yurt-tunnel-agent $TUNNEL_AGENT_ARGS" in nodestep.AGENT_UNIT_TEXT
