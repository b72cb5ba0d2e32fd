"""`yurtctl node join` / `reset` on the machine: discovery against a real TLS server on loopback (the real
cluster-info protocol, an impostor included), the files join writes (with their modes) in a memory host,
the order (yurthub serving before kubelet is configured), undo on failure, and reset."""

from __future__ import annotations

import base64
import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from converter import errors, join, nodejoin, nodestep
from converter.host import MemoryHost
from testenv import pki

TOKEN = "abcdef.0123456789abcdef"  # noqa: S105 - a test token
CA = pki.CertificateAuthority("join-node-ca")
KUBELET_CONFIG = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncgroupDriver: cgroupfs\n"


class Cloud:
    """An HTTPS server on loopback answering cluster-info (with `ca_pem` as the CA it hands out) and
    kube-system/kubelet-config to `TOKEN` only."""

    def __init__(self, tmp: Path, serving_ca: pki.CertificateAuthority, ca_pem: bytes) -> None:
        crt, key = serving_ca.issue("apiserver", server=True, ip_addresses=("127.0.0.1",)).write(tmp, "serving")
        info = {
            "kind": "ConfigMap",
            "data": {
                "kubeconfig": json.dumps(
                    {
                        "clusters": [
                            {
                                "cluster": {
                                    "server": "x",
                                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                                }
                            }
                        ]
                    }
                )
            },
        }
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.auths.append(self.headers.get("Authorization", ""))
                if self.path == join.CLUSTER_INFO:
                    self._send(200, info)
                elif self.path == join.KUBELET_CONFIG:
                    if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                        self._send(401, {"kind": "Status"})
                    else:
                        self._send(200, {"kind": "ConfigMap", "data": {"kubelet": KUBELET_CONFIG}})
                else:
                    self._send(404, {"kind": "Status"})

            def _send(self, code: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: object) -> None:
                pass

        self.auths: list[str] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(crt, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    c = Cloud(tmp_path, CA, CA.pair.cert_pem)
    yield c
    c.close()


PIN = join.ca_cert_hash(CA.pair.cert_pem)


def test_discovery_returns_the_pinned_ca_and_reads_kubelet_config_with_the_token(cloud: Cloud) -> None:
    found = nodejoin.Discovery(cloud.url, PIN)
    assert found.cluster_ca() == CA.pair.cert_pem
    assert found.kubelet_config(TOKEN) == KUBELET_CONFIG
    assert cloud.auths[:2] == ["", ""]  # the token is not sent before the server is trusted
    with pytest.raises(errors.PreflightFailed, match="refused the bootstrap token"):
        found.kubelet_config("zzzzzz.zzzzzzzzzzzzzzzz")


def test_a_wrong_hash_refuses_the_server_before_the_token_is_sent(cloud: Cloud) -> None:
    other = join.ca_cert_hash(pki.CertificateAuthority("elsewhere").pair.cert_pem)
    with pytest.raises(errors.PreflightFailed, match=f"has hash {PIN}, not the --ca-cert-hash given"):
        nodejoin.Discovery(cloud.url, other).cluster_ca()
    assert all(a == "" for a in cloud.auths)


def test_an_impostor_handing_out_the_real_ca_cannot_prove_it(tmp_path: Path) -> None:
    """A man in the middle copies the real cluster-info (the CA is public) but has no certificate that CA
    signed: the hash matches, the verified second request fails."""
    impostor = Cloud(tmp_path, pki.CertificateAuthority("impostor"), CA.pair.cert_pem)
    try:
        with pytest.raises(errors.Unreachable, match="CERTIFICATE_VERIFY_FAILED"):
            nodejoin.Discovery(impostor.url, PIN).cluster_ca()
    finally:
        impostor.close()


@pytest.mark.parametrize("bad", ["", "sha256:abc", "md5:" + "a" * 64, "a" * 64])
def test_malformed_hashes_are_refused(bad: str) -> None:
    with pytest.raises(errors.PreflightFailed, match="expected sha256:<64 hex digits>"):
        nodejoin.check_hash(bad)


def test_only_https_servers() -> None:
    with pytest.raises(errors.PreflightFailed, match="expected https://host:port"):
        nodejoin.Discovery("http://10.0.0.1:6443", PIN)


SETTINGS = nodejoin.Settings(server="https://127.0.0.1:1", ca_hash=PIN, node="edge-9", nodepool="hangzhou")


def test_kubelet_flags_point_at_yurthub_only_and_label_the_pool() -> None:
    flags = nodejoin.kubelet_flags(SETTINGS)
    assert flags == (
        'KUBELET_KUBEADM_ARGS="--hostname-override=edge-9 '
        "--node-labels=apps.openyurt.io/nodepool=hangzhou,openyurt.io/is-edge-worker=true"
        ' --kubeconfig=/etc/kubernetes/kubelet-yurthub.conf --bootstrap-kubeconfig="\n'
    )
    assert nodestep.redirected(flags) == flags  # the converter sees it as pointed at yurthub already


def test_yurthub_env_names_the_token_file_never_the_token() -> None:
    env = nodejoin.hub_env(SETTINGS)
    assert "--join-token-file=/etc/yurthub/join-token" in env and TOKEN not in env
    assert "--server-addr=https://127.0.0.1:1 --node-name=edge-9" in env


def test_kubelet_config_is_the_clusters_or_kubeadms_defaults() -> None:
    assert nodejoin.kubelet_config(KUBELET_CONFIG) == KUBELET_CONFIG
    default = json.loads(nodejoin.kubelet_config(None))
    assert default["authentication"]["x509"]["clientCAFile"] == "/etc/kubernetes/pki/ca.crt"
    assert default["authentication"]["anonymous"]["enabled"] is False


BEFORE = {"/opt/yurt-edge/bin/yurthub": "exe", "/etc/hostname": "edge-9\n", "/var/lib/kubelet/.keep": ""}


def machine(active_kubelet: bool = False) -> MemoryHost:
    def answer(argv: list[str]) -> tuple[int, str]:
        if argv[:2] == ["systemctl", "cat"]:
            return 0, "ExecStart=/usr/bin/kubelet\nEnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env\n"
        if argv[:2] in (["systemctl", "is-active"], ["systemctl", "is-enabled"]):
            return (0 if active_kubelet else 3), ""
        return 0, ""

    return MemoryHost(dict(BEFORE), answer)


def healthy(url: str) -> tuple[int, str]:
    if url == nodestep.METRICS:
        return 200, 'yurthub_requests_total{component="kubelet",verb="get",outcome="forwarded"} 3\n'
    if url.endswith("/api/v1/nodes/edge-9"):
        return 200, json.dumps({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    return 200, ""


def test_join_installs_yurthub_before_kubelet_with_private_modes_and_reset_leaves_the_machine_as_before(
    cloud: Cloud,
) -> None:
    host = machine()
    settings = nodejoin.Settings(server=cloud.url, ca_hash=PIN, node="edge-9", nodepool="hangzhou", interval_s=0)
    nodejoin.run_join(host, healthy, nodejoin.Discovery(cloud.url, PIN), settings, TOKEN)

    assert host.files[nodejoin.HUB_TOKEN] == TOKEN + "\n"
    secret_files = [nodejoin.HUB_TOKEN, nodejoin.HUB_ENV, nodejoin.KUBELET_KUBECONFIG, nodejoin.STATE]
    assert {p: host.modes[p] for p in secret_files} == dict.fromkeys(secret_files, 0o600)
    assert all(TOKEN not in host.files[p] for p in host.files if p != nodejoin.HUB_TOKEN)
    assert all(TOKEN not in " ".join(argv) for argv in host.commands)
    assert host.files[nodejoin.CA_FILE] == CA.pair.cert_pem.decode()
    assert host.files[nodejoin.KUBELET_CONFIG] == KUBELET_CONFIG
    assert "apps.openyurt.io/nodepool=hangzhou" in host.files[nodejoin.FLAGS_ENV]
    started = host.commands.index(["systemctl", "enable", "--now", "yurthub.service"])
    assert host.commands.index(["systemctl", "start", "kubelet.service"]) > started
    assert nodejoin.load_state(host) is not None

    nodejoin.run_join(host, healthy, nodejoin.Discovery(cloud.url, PIN), settings, TOKEN)  # again: a check only
    assert host.commands.count(["systemctl", "start", "kubelet.service"]) == 1

    assert "kubectl delete node edge-9" in nodejoin.reset(host)
    assert host.files == BEFORE
    assert ["systemctl", "disable", "--now", "kubelet.service"] in host.commands
    assert "nothing to reset" in nodejoin.reset(host)


def test_a_yurthub_that_never_serves_is_undone_and_the_machine_is_as_before(cloud: Cloud) -> None:
    host = machine()
    settings = nodejoin.Settings(server=cloud.url, ca_hash=PIN, node="edge-9", timeout_s=0.2, interval_s=0.05)
    with pytest.raises(errors.NodeStepFailed, match=r"yurthub did not get its node certificate.*as it was before"):
        nodejoin.run_join(host, lambda url: (0, ""), nodejoin.Discovery(cloud.url, PIN), settings, TOKEN)
    assert host.files == BEFORE
    assert ["systemctl", "disable", "--now", "yurthub.service"] in host.commands
    assert ["systemctl", "start", "kubelet.service"] not in host.commands


def test_a_node_that_never_gets_ready_is_undone_kubelet_included(cloud: Cloud) -> None:
    host = machine()
    settings = nodejoin.Settings(server=cloud.url, ca_hash=PIN, node="edge-9", timeout_s=0.2, interval_s=0.05)

    def hub_only(url: str) -> tuple[int, str]:
        return (200, "") if url == nodestep.HEALTHZ else (0, "")

    with pytest.raises(errors.NodeStepFailed, match="did not register a Ready node"):
        nodejoin.run_join(host, hub_only, nodejoin.Discovery(cloud.url, PIN), settings, TOKEN)
    assert host.files == BEFORE
    assert ["systemctl", "disable", "--now", "kubelet.service"] in host.commands


def test_a_join_interrupted_hard_is_undone_by_the_next_one(cloud: Cloud) -> None:
    host = machine()
    state = nodejoin.State(node="edge-9", created=["/etc/yurthub"], hub_installed=True)
    host.write(nodejoin.STATE, state.to_json(), 0o600)
    host.write(nodejoin.HUB_TOKEN, TOKEN, 0o600)
    settings = nodejoin.Settings(server=cloud.url, ca_hash=PIN, node="edge-9", interval_s=0)
    nodejoin.run_join(host, healthy, nodejoin.Discovery(cloud.url, PIN), settings, TOKEN)
    loaded = nodejoin.load_state(host)
    assert loaded is not None and loaded.done


@pytest.mark.parametrize(
    ("files", "active", "problem"),
    [
        ({"/etc/kubernetes/kubelet.conf": "x"}, False, "already has a kubelet or yurthub set up"),
        ({"/var/lib/yurthub/cache/x": "x"}, False, "/var/lib/yurthub"),
        ({}, True, "kubelet.service is running already"),
        ({"/etc/kubernetes/pki/ca.crt": pki.CertificateAuthority("x").pair.cert_pem.decode()}, False, "another CA"),
    ],
)
def test_a_machine_that_is_a_node_already_is_refused_untouched(
    cloud: Cloud, files: dict[str, str], active: bool, problem: str
) -> None:
    host = machine(active)
    host.files.update(files)
    before = dict(host.files)
    settings = nodejoin.Settings(server=cloud.url, ca_hash=PIN, node="edge-9")
    with pytest.raises(errors.PreflightFailed, match=problem):
        nodejoin.run_join(host, healthy, nodejoin.Discovery(cloud.url, PIN), settings, TOKEN)
    assert host.files == before


def test_no_executable_is_refused() -> None:
    host = machine()
    del host.files["/opt/yurt-edge/bin/yurthub"]
    with pytest.raises(errors.PreflightFailed, match="unpack yurt-edge's executable"):
        nodejoin.preflight(host, SETTINGS)


def test_a_refused_token_stops_the_join_before_the_machine_changes(cloud: Cloud) -> None:
    host = machine()
    settings = nodejoin.Settings(server=cloud.url, ca_hash=PIN, node="edge-9")
    with pytest.raises(errors.PreflightFailed, match="refused the bootstrap token"):
        nodejoin.run_join(host, healthy, nodejoin.Discovery(cloud.url, PIN), settings, "zzzzzz.zzzzzzzzzzzzzzzz")
    assert host.files == BEFORE


def test_the_node_convert_step_leaves_a_joined_node_alone_and_its_revert_refuses(cloud: Cloud) -> None:
    """Conversion by label reaches a joined node too (it carries openyurt.io/is-edge-worker=true): convert must
    not fail on its missing kubeadm kubeconfig, and revert must not strip the only kubeconfig its kubelet has."""
    host = machine()
    settings = nodejoin.Settings(server=cloud.url, ca_hash=PIN, node="edge-9", interval_s=0)
    nodejoin.run_join(host, healthy, nodejoin.Discovery(cloud.url, PIN), settings, TOKEN)
    files, commands = dict(host.files), len(host.commands)
    step = nodestep.Settings(node="edge-9")
    nodestep.convert(host, healthy, step)
    with pytest.raises(errors.PreflightFailed, match="yurtctl node reset"):
        nodestep.revert(host, healthy, step)
    assert host.files == files and len(host.commands) == commands


def test_reset_leaves_kubelet_enabled_when_it_was_enabled_before(cloud: Cloud) -> None:
    def answer(argv: list[str]) -> tuple[int, str]:
        if argv[:2] == ["systemctl", "cat"]:
            return 0, "EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env\n"
        if argv[:2] == ["systemctl", "is-active"]:
            return 3, ""
        return 0, ""  # is-enabled: yes, as some distributions' packages leave it

    host = MemoryHost(dict(BEFORE), answer)
    settings = nodejoin.Settings(server=cloud.url, ca_hash=PIN, node="edge-9", interval_s=0)
    nodejoin.run_join(host, healthy, nodejoin.Discovery(cloud.url, PIN), settings, TOKEN)
    nodejoin.reset(host)
    assert ["systemctl", "stop", "kubelet.service"] in host.commands
    assert ["systemctl", "disable", "--now", "kubelet.service"] not in host.commands
    assert host.files == BEFORE
