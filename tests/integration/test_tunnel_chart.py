"""The Helm chart `charts/yurt-tunnel-server`, checked with the reference helm binary, the real kube-apiserver
(server-side dry run) and the tunnel's own console scripts.

The rendered `yurt-tunnel-server` and `yurt-tunnel-agent` arguments are parsed with the CLI's parsers, so
the chart cannot pass a flag the commands lack. Then the rendered pods are played on the host: what their
volumes would hold (the rendered Secret and ConfigMap, a stand-in cluster CA and kubelet certificate) is
written under a scratch root, the rendered arguments run the real server and agent with paths under that
root, and the agent verifies the generated serving certificate by the name the chart gives it, while a
CONNECT authenticates with the generated kube-apiserver client certificate.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from converter import helm as charts
from testenv import cluster, controlplane, pki, tunnelhost
from testenv.kubectl import wait_for
from tunnel import cli

CHART = cluster.REPO / "charts" / "yurt-tunnel-server"
RELEASE = "yurt-tunnel-server"
NS = "kube-system"
NODE = "edge-a"
SA_CA = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
CLUSTER_CA = pki.CertificateAuthority("stand-in-cluster-ca")
"""Signs the stand-in kubelet certificate; the server finds it where its service account's ca.crt would be."""
OPERATOR_CA = pki.CertificateAuthority("operator-tunnel-ca")


@pytest.fixture(scope="module")
def helm() -> Path:
    return cluster.binaries() / "helm"


def _helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120, check=False)


def render_text(helm: Path, *args: str) -> str:
    proc = _helm(helm, "template", RELEASE, str(CHART), "--namespace", NS, *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def render(helm: Path, *args: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render_text(helm, *args)) if doc]


def one(objects: list[dict[str, Any]], kind: str, name: str = RELEASE) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {[(o['kind'], o['metadata']['name']) for o in objects]}"
    return found[0]


def values_file(directory: Path, values: dict[str, Any]) -> str:
    path = directory / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def agent_values(directory: Path) -> str:
    """The agent DaemonSet with the operator's own serving certificate."""
    return values_file(
        directory,
        {
            "agent": {"enabled": True, "serverAddresses": ["192.0.2.10:31008", "192.0.2.11:31008"]},
            "tls": {"existingSecret": "operator-tunnel-tls", "caBundle": OPERATOR_CA.pair.cert_pem.decode()},
            "service": {"agent": {"nodePort": 31008}},
        },
    )


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def files_named(parsed: dict[str, Any], flags: tuple[str, ...]) -> list[str]:
    return [parsed[f] for f in flags if parsed.get(f)]


def assert_files_mounted(workload: dict[str, Any], paths: list[str], also: tuple[str, ...] = ()) -> None:
    """Every file a flag names is under one of the container's mounts (or a path Kubernetes itself provides)."""
    mounts = [m["mountPath"].rstrip("/") + "/" for m in container(workload).get("volumeMounts", [])]
    for path in paths:
        assert path in also or any(path.startswith(m) for m in mounts), f"{path} is not mounted: {mounts}"


def certificate(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    key = ca.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            assert cert.signature_hash_algorithm is not None
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            assert cert.signature_hash_algorithm is not None
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        else:
            return False
    except InvalidSignature:
        return False
    return cert.issuer == ca.subject


def secret_file(secret: dict[str, Any], key: str) -> bytes:
    return base64.b64decode(secret["data"][key])


# --- lint and render -------------------------------------------------------------------------------------


def test_helm_lint_strict_is_clean(helm: Path, tmp_path: Path) -> None:
    for args in ((), ("-f", agent_values(tmp_path))):
        proc = _helm(helm, "lint", "--strict", str(CHART), "--namespace", NS, *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout
        assert "0 chart(s) failed" in proc.stdout


def test_every_value_is_documented() -> None:
    """Every key of values.yaml has a comment right above it. A `# --` comment documents a key together with
    its default, so the keys inside that default (resources, tolerations...) need none of their own."""
    stack: list[tuple[int, bool]] = []  # (indent, inside a documented default) of the enclosing keys
    comment = ""  # the first line of the comment block right above, if any
    for number, line in enumerate((CHART / "values.yaml").read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith(("#", "-")) and ":" in stripped:
            indent = len(line) - len(stripped)
            while stack and stack[-1][0] >= indent:
                stack.pop()
            in_default = any(exempt for _, exempt in stack)
            assert in_default or comment, f"values.yaml line {number} has no comment: {line}"
            stack.append((indent, in_default or comment.startswith("# --")))
        if stripped.startswith("#"):
            comment = comment or stripped
        elif stripped:
            comment = ""


def test_default_render_server_deployment(helm: Path) -> None:
    objects = render(helm)
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    assert kinds == sorted(
        [
            ("ClusterRole", RELEASE),
            ("ClusterRoleBinding", RELEASE),
            ("ConfigMap", f"{RELEASE}-ca"),
            ("Deployment", RELEASE),
            ("PodDisruptionBudget", RELEASE),
            ("Secret", f"{RELEASE}-apiserver-client"),
            ("Secret", f"{RELEASE}-tls"),
            ("Service", RELEASE),
            ("Service", f"{RELEASE}-connect"),
            ("Service", f"{RELEASE}-headless"),
            ("Service", f"{RELEASE}-metrics"),
            ("ServiceAccount", RELEASE),
        ]
    )
    deployment = one(objects, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert spec["serviceAccountName"] == RELEASE
    preferred = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert (
        preferred[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    )
    assert {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    assert spec["securityContext"]["runAsNonRoot"] is True
    main = container(deployment)
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    assert main["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert main["resources"]["requests"] and main["resources"]["limits"]
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports == {"agent": 10262, "connect": 10263, "serve": 10265}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "serve"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "serve"}
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in main["env"]

    # The arguments are flags yurt-tunnel-server accepts, agreeing with the ports, mounts and Services.
    assert main["command"] == ["yurt-tunnel-server"]
    args = cli.build_server_parser().parse_args(main["args"])
    assert args.server_id == "$(POD_NAME)"
    assert (args.agent_port, args.connect_port, args.serve_port) == (10262, 10263, 10265)
    assert args.connect_allowed_names == frozenset({tunnelhost.APISERVER_CLIENT})
    assert args.connect_allow_any_client is False and args.status_on_connect is False
    assert (args.max_queued_bytes, args.agent_pings_per_second, args.edge_cidrs) == (1048576, 10.0, frozenset())
    assert args.agent_ca == SA_CA  # the cluster CA, from the service account
    assert spec.get("automountServiceAccountToken", True) is True
    paths = files_named(
        vars(args), ("agent_cert", "agent_key", "agent_ca", "connect_cert", "connect_key", "connect_ca")
    )
    assert_files_mounted(deployment, paths, also=(SA_CA,))

    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert one(objects, "ClusterRole")["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}
    ]
    binding = one(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NS}]

    services = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "Service"}
    assert services[RELEASE]["type"] == "NodePort"
    assert services[f"{RELEASE}-headless"]["clusterIP"] == "None"
    assert services[f"{RELEASE}-connect"]["type"] == "ClusterIP"
    assert services[f"{RELEASE}-metrics"]["type"] == "ClusterIP"
    for svc in services.values():
        assert svc["selector"] == deployment["spec"]["selector"]["matchLabels"]
        for port in svc["ports"]:
            assert port["targetPort"] in ports, port
            assert port["port"] == ports[port["targetPort"]]


def test_generated_certificates_name_the_services_and_the_allowed_client(helm: Path) -> None:
    objects = render(helm, "--set", "service.connect.clusterIP=10.215.0.63", "--set", "tls.extraIPs={192.0.2.10}")
    config_map = one(objects, "ConfigMap", f"{RELEASE}-ca")
    assert "PRIVATE KEY" not in yaml.safe_dump(config_map)  # edge nodes may mount it
    ca = certificate(config_map["data"]["ca.crt"].encode())
    server_secret = one(objects, "Secret", f"{RELEASE}-tls")
    assert server_secret["type"] == "kubernetes.io/tls"
    serving = certificate(secret_file(server_secret, "tls.crt"))
    assert signed_by(serving, ca)
    assert secret_file(server_secret, "ca.crt") == config_map["data"]["ca.crt"].encode()
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = set(sans.get_values_for_type(x509.DNSName))
    for svc in (RELEASE, f"{RELEASE}-headless", f"{RELEASE}-connect"):
        assert {svc, f"{svc}.{NS}", f"{svc}.{NS}.svc", f"{svc}.{NS}.svc.cluster.local"} <= names
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"10.215.0.63", "192.0.2.10"}
    client = certificate(secret_file(one(objects, "Secret", f"{RELEASE}-apiserver-client"), "tls.crt"))
    assert signed_by(client, ca)
    cn = client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    args = cli.build_server_parser().parse_args(container(one(objects, "Deployment"))["args"])
    assert cn in args.connect_allowed_names


def test_agent_daemonset_and_an_existing_secret(helm: Path, tmp_path: Path) -> None:
    objects = render(helm, "-f", agent_values(tmp_path))
    assert not [o for o in objects if o["kind"] == "Secret"]  # the operator's Secret is used, none generated
    deployment = one(objects, "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "operator-tunnel-tls"
    config_map = one(objects, "ConfigMap", f"{RELEASE}-ca")
    assert config_map["data"]["ca.crt"].strip() == OPERATOR_CA.pair.cert_pem.decode().strip()
    assert one(objects, "Service")["spec"]["ports"][0]["nodePort"] == 31008

    daemonset = one(objects, "DaemonSet", f"{RELEASE}-agent")
    spec = daemonset["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    assert spec["nodeSelector"] == {"openyurt.io/is-edge-worker": "true"}
    assert spec["automountServiceAccountToken"] is False
    agent = container(daemonset)
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in agent["env"]}
    assert env == {"NODE_NAME": "spec.nodeName", "NODE_IP": "status.hostIP"}
    assert agent["command"] == ["yurt-tunnel-agent"]
    args = cli.build_agent_parser().parse_args(agent["args"])
    assert args.node_name == "$(NODE_NAME)"
    assert args.node_ip == frozenset({"$(NODE_IP)"})
    assert args.server_addr == "192.0.2.10:31008,192.0.2.11:31008"
    assert args.server_name == f"{RELEASE}.{NS}.svc"
    assert args.allowed_ports == frozenset({10250})
    assert args.cert_file == "/var/lib/kubelet/pki/kubelet-client-current.pem"
    assert_files_mounted(daemonset, files_named(vars(args), ("ca_file", "cert_file", "key_file")))
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    assert mounts["kubelet-pki"]["readOnly"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["kubelet-pki"]["hostPath"]["path"] == mounts["kubelet-pki"]["mountPath"] == "/var/lib/kubelet/pki"
    assert volumes["ca"]["configMap"] == {"name": f"{RELEASE}-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    assert agent["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert agent["securityContext"]["readOnlyRootFilesystem"] is True
    assert agent["livenessProbe"]["httpGet"]["host"] == "127.0.0.1"
    assert agent["livenessProbe"]["httpGet"]["port"] == args.serve_port


def test_server_flags_from_values_reach_the_cli(helm: Path) -> None:
    objects = render(
        helm,
        *("--set", "routing.directFallback=false", "--set", "connect.enabled=false", "--set", "server.replicaCount=1"),
        *("--set", "server.extraArgs={--connect-uds=/run/yurt-tunnel/connect.sock}", "--set", "server.verbose=true"),
    )
    assert not [o for o in objects if o["kind"] == "PodDisruptionBudget"]  # one replica: a PDB would block drains
    assert not [o for o in objects if o["metadata"]["name"].endswith("-apiserver-client")]
    args = cli.build_server_parser().parse_args(container(one(objects, "Deployment"))["args"])
    assert args.direct_fallback is False
    assert args.connect_port == 0
    assert args.connect_uds == "/run/yurt-tunnel/connect.sock"
    assert args.verbose is True
    args = cli.build_server_parser().parse_args(
        container(
            one(
                render(
                    helm,
                    *(
                        "--set",
                        "routing.edgeCIDRs={192.168.50.0/24,fd00:50::/64}",
                        "--set",
                        "connect.allowedNames=null",
                    ),
                    *("--set", "connect.allowAnyClient=true", "--set", "connect.statusOnConnect=true"),
                    *("--set", "limits.maxQueuedBytes=262144", "--set", "limits.agentPingsPerSecond=2"),
                ),
                "Deployment",
            )
        )["args"]
    )
    assert args.edge_cidrs == frozenset({"192.168.50.0/24", "fd00:50::/64"})
    assert args.connect_allowed_names == frozenset() and args.connect_allow_any_client and args.status_on_connect
    assert (args.max_queued_bytes, args.agent_pings_per_second) == (262144, 2.0)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"agent": {"enabled": True}}, "agent.serverAddresses is required"),
        ({"tls": {"existingSecret": "mine"}}, "tls.caBundle is required with tls.existingSecret"),
        ({"service": {"agent": {"type": "ExternalName"}}}, "service.agent.type must be"),
        ({"server": {"replicaCount": -1}}, "server.replicaCount must be 0 (the server runs outside"),
        ({"connect": {"allowedNames": []}}, "connect.allowedNames is required with connect.enabled"),
    ],
)
def test_values_that_cannot_work_fail_the_render_with_a_reason(
    helm: Path, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    proc = _helm(helm, "template", RELEASE, str(CHART), "--namespace", NS, "-f", values_file(tmp_path, values))
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


# --- the rendered pods, played on the host with the real console scripts -----------------------------------


def _script(name: str) -> str:
    found = shutil.which(name, path=os.path.dirname(sys.executable))
    assert found is not None, f"{name} is not installed next to this Python"
    return found


def materialize(objects: list[dict[str, Any]], workload: dict[str, Any], root: Path) -> None:
    """Write what the workload's Secret and ConfigMap volumes hold under `root` + their mount paths."""
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    for mount in container(workload)["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "secret" in volume:
            source = one(objects, "Secret", volume["secret"]["secretName"])
            data = {k: base64.b64decode(v) for k, v in source["data"].items()}
            items = volume["secret"].get("items")
        elif "configMap" in volume:
            source = one(objects, "ConfigMap", volume["configMap"]["name"])
            data = {k: v.encode() for k, v in source["data"].items()}
            items = volume["configMap"].get("items")
        else:
            continue
        target = root / mount["mountPath"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        for item in items or [{"key": k, "path": k} for k in data]:
            (target / item["path"]).write_bytes(data[item["key"]])


def rooted(args: list[str], root: Path, env: dict[str, str]) -> list[str]:
    """The rendered arguments with `$(VAR)` expanded as the kubelet does and absolute paths moved under root."""
    result = []
    for rendered in args:
        expanded = rendered
        for name, replacement in env.items():
            expanded = expanded.replace(f"$({name})", replacement)
        flag, sep, value = expanded.partition("=")
        result.append(f"{flag}={root}{value}" if sep and value.startswith("/") else expanded)
    return result


def test_rendered_server_and_agent_run_with_the_generated_certificates(helm: Path, tmp_path: Path) -> None:
    objects = render(
        helm,
        *("--set", "agent.enabled=true", "--set", "agent.serverAddresses={127.0.0.1:10262}"),
        *("--set", "service.connect.clusterIP=127.0.0.1"),  # the CONNECT address kube-apiserver would dial
    )
    server_root, agent_root = tmp_path / "server", tmp_path / "agent"
    deployment, daemonset = one(objects, "Deployment"), one(objects, "DaemonSet", f"{RELEASE}-agent")
    materialize(objects, deployment, server_root)
    materialize(objects, daemonset, agent_root)
    (server_root / SA_CA.lstrip("/")).parent.mkdir(parents=True)
    (server_root / SA_CA.lstrip("/")).write_bytes(CLUSTER_CA.pair.cert_pem)
    kubelet_pem = agent_root / "var/lib/kubelet/pki/kubelet-client-current.pem"
    kubelet_pem.parent.mkdir(parents=True)
    kubelet_pem.write_bytes(tunnelhost.node_cert(CLUSTER_CA, tmp_path, NODE).read_bytes())

    agent_port, connect_port, serve_port = (controlplane.free_port() for _ in range(3))
    server_args = rooted(container(deployment)["args"], server_root, {"POD_NAME": f"{RELEASE}-0"})
    server = tunnelhost.Running(
        "chart-server",
        [
            _script("yurt-tunnel-server"),
            *server_args,
            *(f"--agent-port={agent_port}", f"--connect-port={connect_port}", f"--serve-port={serve_port}"),
            *("--agent-bind-address=127.0.0.1", "--connect-bind-address=127.0.0.1", "--serve-address=127.0.0.1"),
        ],
        tmp_path / "server.log",
        serve_port,
    )
    agent_serve = controlplane.free_port()
    agent_args = rooted(container(daemonset)["args"], agent_root, {"NODE_NAME": NODE, "NODE_IP": "127.0.0.1"})
    agent = tunnelhost.Running(
        "chart-agent",
        [
            _script("yurt-tunnel-agent"),
            *agent_args,
            f"--server-addr=127.0.0.1:{agent_port}",  # the address changes; the verified name stays the chart's
            f"--serve-port={agent_serve}",
        ],
        tmp_path / "agent.log",
        agent_serve,
    )
    server.start()
    try:
        server.wait_ready()
        agent.start()
        wait_for(
            "the agent on the server",
            lambda: [a["node"] for a in server.status()["agents"]] == [NODE],
            timeout=30,
            interval=0.2,
        )
        assert server.status()["server"] == f"{RELEASE}-0"

        # kube-apiserver's side: the generated client certificate, the CA from the ConfigMap, the pinned IP.
        client_secret = one(objects, "Secret", f"{RELEASE}-apiserver-client")
        for key in ("tls.crt", "tls.key"):
            (tmp_path / key).write_bytes(secret_file(client_secret, key))
        context = ssl.create_default_context(cafile=str(server_root / "etc/yurt-tunnel/ca/ca.crt"))
        context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
        with (
            socket.create_connection(("127.0.0.1", connect_port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(f"CONNECT {NODE}:9 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            answer = tls.recv(4096).decode()
        # Through the server to the agent, which refuses: port 9 is not in the chart's allowed ports.
        assert answer.startswith("HTTP/1.1 403"), answer
        assert "port 9 is not open" in answer, answer
    finally:
        agent.stop()
        server.stop()
    assert "Traceback" not in server.log_text() + agent.log_text()


# --- the real kube-apiserver -------------------------------------------------------------------------------


def test_rendered_manifests_pass_a_server_side_dry_run(cloud: cluster.Cluster, helm: Path, tmp_path: Path) -> None:
    variants = {
        "defaults": render_text(helm),
        "agent and existing secret": render_text(helm, "-f", agent_values(tmp_path)),
        "load balancer, pinned ClusterIP": render_text(
            helm, "--set", "service.agent.type=LoadBalancer", "--set", "service.connect.clusterIP=10.215.0.63"
        ),
    }
    for variant, manifests in variants.items():
        expected = sum(1 for doc in yaml.safe_load_all(manifests) if doc)
        out = cloud.kubectl.run("apply", "--dry-run=server", "-f", "-", stdin=manifests)
        accepted = [line for line in out.splitlines() if line.endswith("(server dry run)")]
        assert len(accepted) == expected, f"{variant}: {out}"
    # A dry run stores nothing.
    assert not cloud.kubectl.get("deployments", "-n", NS, "-l", f"app.kubernetes.io/instance={RELEASE}")["items"]


def test_install_and_upgrade_keep_the_generated_certificates(
    cloud: cluster.Cluster, helm: Path, tmp_path: Path
) -> None:
    """A real `helm install`, then `helm upgrade`: the upgrade finds the generated Secrets and keeps them, so
    agents and kube-apiserver keep trusting the server."""
    assert cloud.plane is not None
    env = {
        **os.environ,
        "KUBECONFIG": str(cloud.plane.admin_kubeconfig),
        **{f"HELM_{d}_HOME": str(tmp_path / d.lower()) for d in ("CACHE", "CONFIG", "DATA")},
    }

    def run(*args: str) -> str:
        proc = subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120, check=False, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    def trust() -> tuple[str, str, str]:
        server = cloud.kubectl.get("secret", "-n", NS, f"{RELEASE}-tls")["data"]
        client = cloud.kubectl.get("secret", "-n", NS, f"{RELEASE}-apiserver-client")["data"]
        ca = cloud.kubectl.get("configmap", "-n", NS, f"{RELEASE}-ca")["data"]["ca.crt"]
        assert base64.b64decode(server["ca.crt"]).decode().strip() == ca.strip()
        return server["tls.crt"], client["tls.crt"], ca

    installed = run("install", RELEASE, str(CHART), "--namespace", NS, "--set", "service.connect.clusterIP=10.215.0.63")
    assert f"kube-apiserver's client certificate is in Secret {RELEASE}-apiserver-client" in installed
    before = trust()
    run("upgrade", RELEASE, str(CHART), "--namespace", NS, "--reuse-values", "--set", "server.replicaCount=3")
    assert cloud.kubectl.get("deployment", "-n", NS, RELEASE)["spec"]["replicas"] == 3
    assert trust() == before
    run("uninstall", RELEASE, "--namespace", NS, "--wait")
    assert not cloud.kubectl.get("secrets", "-n", NS, "-l", f"app.kubernetes.io/instance={RELEASE}")["items"]


def test_the_chart_yurtctl_ships_renders_what_convert_asks_for(helm: Path) -> None:
    """`yurtctl convert --tunnel`'s values on the chart inside the package: the server only on cloud nodes,
    with the image convert was given, no agent DaemonSet (convert puts agents on nodes as systemd services),
    and the CA ConfigMap its node Jobs hand to the agents. Replicas 0 is the server beside kube-apiserver."""
    assert (Path(charts.bundled_chart()) / "Chart.yaml").read_text() == (CHART / "Chart.yaml").read_text()
    for replicas in (0, 2):
        lines = charts.Helm(str(helm), charts.bundled_chart(), "-").render(
            charts.values("registry.example:5000/yurt-edge:v2", replicas)
        )
        assert f"ConfigMap {NS}/{charts.CA_CONFIGMAP}" in lines
        assert not [line for line in lines if line.startswith("DaemonSet")]
    rendered = yaml.safe_load_all(
        subprocess.run(
            charts.template_argv(str(helm), charts.bundled_chart(), ["/dev/stdin"]),
            input=yaml.safe_dump(charts.values("registry.example:5000/yurt-edge:v2", 0)),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    deployment = one([d for d in rendered if d], "Deployment")
    assert deployment["spec"]["replicas"] == 0
    spec = deployment["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"openyurt.io/is-edge-worker": "false"}
    assert container(deployment)["image"] == "registry.example:5000/yurt-edge:v2"
