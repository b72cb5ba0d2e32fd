"""`yurtctl join` against the real kube-apiserver and controller-manager: the token Secret and its expiry,
the join RBAC (the token reads the kubelet configuration and gets a node client certificate approved by the
stock controller-manager), the printed command, and the machine side's discovery (CA pinned by the printed
hash; a wrong hash, an expired token refused)."""

from __future__ import annotations

import base64
import datetime
import json
import shlex
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from converter import cli, components, errors, join, kube, nodejoin
from testenv import cluster, nodepools
from testenv.kubectl import wait_for


@pytest.fixture(scope="module")
def cloud() -> Iterator[cluster.Cluster]:
    with cluster.Cluster.start(cluster.Settings(real_node=False)) as c:
        # The test cluster grants every bootstrap token kubeadm's join rights; take them away, so what the
        # tests see a token do is what `yurtctl join`'s own RBAC allows.
        c.kubectl.run(
            "delete", "clusterrolebinding", "yurt-edge:kubelet-bootstrap", "yurt-edge:node-autoapprove-bootstrap"
        )
        c.kubectl.apply([components.nodepool_crd()])
        wait_for(
            "the NodePool CRD to be served",
            lambda: "nodepools" in c.kubectl.run("api-resources", "--api-group=apps.openyurt.io"),
            timeout=60,
        )
        c.kubectl.apply([nodepools.nodepool("hangzhou"), nodepools.nodepool("core", "Cloud")])
        yield c


def yurtctl_join(cloud: cluster.Cluster, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    assert cloud.plane is not None
    rc = cli.main(["--kubeconfig", str(cloud.plane.admin_kubeconfig), "join", "--server", cloud.plane.server, *args])
    out, err = capsys.readouterr()
    return rc, out, err


def printed(out: str) -> tuple[str, list[str]]:
    token = next(line.split()[1] for line in out.splitlines() if line.startswith("token: "))
    command = shlex.split(next(line for line in out.splitlines() if "yurtctl node join" in line))
    return token, command


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def request(server: str, path: str, token: str, ca: bytes, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    context = ssl.create_default_context(cadata=ca.decode())
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        server + path,
        data=data,
        method="POST" if body is not None else "GET",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, context=context, timeout=10) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None


def test_join_makes_a_short_lived_token_with_join_rights_and_prints_one_command(
    cloud: cluster.Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cloud.plane is not None
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    rc, out, err = yurtctl_join(cloud, capsys, "--nodepool", "hangzhou", "--node-name", "edge-9", "--ttl", "10m")
    assert rc == 0, err
    token, command = printed(out)
    token_id, token_secret = token.split(".")

    secret = cloud.kubectl.get("secret", "-n", "kube-system", f"bootstrap-token-{token_id}")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert secret["type"] == "bootstrap.kubernetes.io/token"
    assert data["token-secret"] == token_secret
    assert data["auth-extra-groups"] == join.JOIN_GROUP
    assert data["usage-bootstrap-authentication"] == "true"
    expiry = datetime.datetime.fromisoformat(data["expiration"].replace("Z", "+00:00"))
    assert before + datetime.timedelta(minutes=10) <= expiry <= before + datetime.timedelta(minutes=11)

    # The command: the pinned hash of the cluster's CA, the pool, and no token anywhere in it.
    assert command[:4] == ["/opt/yurt-edge/bin/yurtctl", "node", "join", "--server"]
    assert flag(command, "--server") == cloud.plane.server
    assert flag(command, "--ca-cert-hash") == join.ca_cert_hash(cloud.plane.ca.pair.cert_pem)
    assert flag(command, "--nodepool") == "hangzhou" and flag(command, "--node-name") == "edge-9"
    assert flag(command, "--token-file") == "-"
    assert token_secret not in " ".join(command)

    for name in ("yurt-edge:join:node-bootstrapper", "yurt-edge:join:node-autoapprove"):
        binding = cloud.kubectl.get("clusterrolebinding", name)
        assert binding["subjects"][0]["name"] == join.JOIN_GROUP

    # What the machine does with it: the CA pinned by the printed hash, the token accepted.
    found = nodejoin.Discovery(flag(command, "--server"), flag(command, "--ca-cert-hash"))
    assert found.cluster_ca() == cloud.plane.ca.pair.cert_pem
    assert found.kubelet_config(token) is None  # the token is accepted and may look; the cluster has none
    cloud.kubectl.run(
        "create", "configmap", "kubelet-config", "-n", "kube-system", "--from-literal=kubelet=cgroupDriver: x"
    )
    assert found.kubelet_config(token) == "cgroupDriver: x"


def test_the_token_gets_a_node_client_certificate_approved_by_the_controller_manager(
    cloud: cluster.Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cloud.plane is not None
    rc, out, err = yurtctl_join(cloud, capsys)
    assert rc == 0, err
    token, _ = printed(out)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
            x509.NameAttribute(NameOID.COMMON_NAME, "system:node:edge-9"),
        ]
    )
    csr_pem = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    body = {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"generateName": "join-test-"},
        "spec": {
            "request": base64.b64encode(csr_pem.public_bytes(serialization.Encoding.PEM)).decode(),
            "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
            "usages": ["digital signature", "client auth"],
        },
    }
    status, created = request(
        cloud.plane.server,
        "/apis/certificates.k8s.io/v1/certificatesigningrequests",
        token,
        cloud.plane.ca.pair.cert_pem,
        body,
    )
    assert status == 201, status
    name = created["metadata"]["name"]
    assert created["spec"]["username"] == f"system:bootstrap:{token.split('.')[0]}"
    assert join.JOIN_GROUP in created["spec"]["groups"]

    def issued() -> bool:
        return bool(cloud.kubectl.get("csr", name).get("status", {}).get("certificate"))

    wait_for("the controller-manager to approve and sign the node client CSR", issued, timeout=60)


def test_a_second_join_only_adds_a_token(cloud: cluster.Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    assert cloud.plane is not None
    api = kube.KubeApi(str(cloud.plane.admin_kubeconfig))
    try:
        issued = join.issue(
            api,
            join.Request(server=cloud.plane.server),
            admin_ca=cloud.plane.ca.pair.cert_pem,
            now=datetime.datetime.now(datetime.UTC),
        )
    finally:
        api.close()
    assert issued.created == (f"Secret/kube-system/bootstrap-token-{issued.token.split('.')[0]}",)


def test_an_expired_token_is_refused_by_the_cloud(cloud: cluster.Cluster) -> None:
    assert cloud.plane is not None
    api = kube.KubeApi(str(cloud.plane.admin_kubeconfig))
    try:
        long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=2)
        issued = join.issue(
            api,
            join.Request(server=cloud.plane.server, ttl=datetime.timedelta(minutes=1)),
            admin_ca=cloud.plane.ca.pair.cert_pem,
            now=long_ago,
        )
    finally:
        api.close()
    found = nodejoin.Discovery(cloud.plane.server, issued.ca_hash)
    found.cluster_ca()
    with pytest.raises(errors.PreflightFailed, match="refused the bootstrap token"):
        found.kubelet_config(issued.token)


def test_a_wrong_ca_hash_refuses_the_real_apiserver(cloud: cluster.Cluster) -> None:
    assert cloud.plane is not None
    wrong = "sha256:" + "0" * 64
    with pytest.raises(errors.PreflightFailed, match="refusing to trust"):
        nodejoin.Discovery(cloud.plane.server, wrong).cluster_ca()


def test_a_missing_or_cloud_pool_is_refused_and_makes_no_token(
    cloud: cluster.Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    def tokens() -> set[str]:
        found = cloud.kubectl.get("secrets", "-n", "kube-system", "--field-selector=type=bootstrap.kubernetes.io/token")
        return {str(s["metadata"]["name"]) for s in found["items"]}

    before = tokens()
    rc, _, err = yurtctl_join(cloud, capsys, "--nodepool", "nowhere")
    assert rc == 1 and "NodePool nowhere not found" in err
    rc, _, err = yurtctl_join(cloud, capsys, "--nodepool", "core")
    assert rc == 1 and "of type Cloud" in err
    # by name, not by count: the controller-manager's token cleaner may delete another test's expired token
    # meanwhile (a CI run saw 5 tokens become 4)
    assert tokens() - before == set()


def test_token_out_writes_an_owner_only_file_and_prints_no_token(
    cloud: cluster.Cluster, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "join-token"
    rc, out, err = yurtctl_join(cloud, capsys, "--token-out", str(target))
    assert rc == 0, err
    token = target.read_text().strip()
    assert (target.stat().st_mode & 0o777) == 0o600
    assert token.split(".")[1] not in out
    assert f"--token-file {target}" in out
    rc, _, err = yurtctl_join(cloud, capsys, "--token-out", str(target))
    assert rc == 1 and "cannot create a new file" in err  # never overwrites (nor follows a planted link)
