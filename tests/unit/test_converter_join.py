"""`yurtctl join`'s cloud side: the token, its Secret, the CA pin, the RBAC and the printed command, driven
against the in-memory Api (the same contract as the real one)."""

from __future__ import annotations

import argparse
import base64
import datetime
import io
import json
import stat
import subprocess
from pathlib import Path

import pytest

from converter import access, appset, errors, join, joincli, jointoken
from testenv import pki

NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
CA = pki.CertificateAuthority("join-test-ca")


def test_a_new_token_has_kubeadms_shape_and_is_fresh_each_time() -> None:
    tokens = {join.new_token() for _ in range(50)}
    assert len(tokens) == 50
    assert all(jointoken.TOKEN.fullmatch(t) for t in tokens)


def test_the_ca_hash_is_kubeadms_sha256_of_the_public_key_info() -> None:
    """The documented recipe: openssl x509 -pubkey | openssl pkey -pubin -outform der | sha256sum."""
    pubkey = subprocess.run(
        ["openssl", "x509", "-pubkey", "-noout"], input=CA.pair.cert_pem, capture_output=True, check=True
    ).stdout
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "der"], input=pubkey, capture_output=True, check=True
    ).stdout
    digest = subprocess.run(["sha256sum"], input=der, capture_output=True, check=True).stdout.split()[0].decode()
    assert join.ca_cert_hash(CA.pair.cert_pem) == f"sha256:{digest}"
    assert join.ca_cert_hash(pki.CertificateAuthority("other").pair.cert_pem) != join.ca_cert_hash(CA.pair.cert_pem)


def test_not_a_certificate_is_a_clear_error() -> None:
    with pytest.raises(errors.PreflightFailed, match="not a PEM certificate"):
        join.ca_cert_hash(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")


def test_the_token_secret_expires_after_the_ttl_with_join_usages_and_group() -> None:
    secret = join.token_secret("abcdef.0123456789abcdef", datetime.timedelta(minutes=30), NOW, "for edge-9")
    assert secret["type"] == "bootstrap.kubernetes.io/token"
    assert secret["metadata"] == {
        "name": "bootstrap-token-abcdef",
        "namespace": "kube-system",
        "labels": {"app.kubernetes.io/managed-by": "yurtctl"},
    }
    data = secret["stringData"]
    assert data["token-id"] == "abcdef" and data["token-secret"] == "0123456789abcdef"
    assert data["expiration"] == "2026-01-02T03:34:05Z"
    assert data["usage-bootstrap-authentication"] == data["usage-bootstrap-signing"] == "true"
    assert data["auth-extra-groups"] == join.JOIN_GROUP
    assert data["auth-extra-groups"].startswith("system:bootstrappers:")  # the apiserver requires this prefix


def test_a_malformed_token_never_becomes_a_secret() -> None:
    with pytest.raises(errors.PreflightFailed):
        join.token_secret("ABCDEF.0123456789abcdef", datetime.timedelta(hours=1), NOW, "")


def test_the_rbac_binds_only_the_join_group_to_csr_creation_and_node_client_approval() -> None:
    by_name = {o["metadata"]["name"]: o for o in join.rbac_objects()}
    creator = by_name["yurt-edge:join:node-bootstrapper"]
    assert creator["roleRef"]["name"] == "system:node-bootstrapper"
    approve = by_name["yurt-edge:join:node-autoapprove"]
    assert approve["roleRef"]["name"] == "system:certificates.k8s.io:certificatesigningrequests:nodeclient"
    for obj in (creator, approve, by_name["yurt-edge:join:kubelet-config"]):
        if obj["kind"].endswith("Binding"):
            assert obj["subjects"] == [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": join.JOIN_GROUP}
            ]
    renew = by_name["yurt-edge:join:node-autoapprove-renewal"]
    assert renew["subjects"][0]["name"] == "system:nodes"
    config_role = next(o for o in join.rbac_objects() if o["kind"] == "Role")
    assert config_role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["kubelet-config"], "verbs": ["get"]}
    ]


def test_the_printed_command_carries_no_secret_and_reads_the_token_from_stdin_or_a_file() -> None:
    req = join.Request(server="https://10.0.0.1:6443", nodepool="hangzhou", node_name="edge-9")
    cmd = join.node_command(req, "sha256:" + "a" * 64)
    assert cmd == (
        "/opt/yurt-edge/bin/yurtctl node join --server https://10.0.0.1:6443 --ca-cert-hash sha256:"
        + "a" * 64
        + " --nodepool hangzhou --node-name edge-9 --token-file -"
    )
    odd = join.Request(server="https://h:6443", token_file="/root/my token")  # noqa: S106 - a path
    assert join.node_command(odd, "sha256:x").endswith("--token-file '/root/my token'")


def pools_api() -> access.MemoryApi:
    api = access.MemoryApi()
    api.create(appset.NODEPOOLS, {"metadata": {"name": "hangzhou"}, "spec": {"type": "Edge"}})
    api.create(appset.NODEPOOLS, {"metadata": {"name": "core"}, "spec": {"type": "Cloud"}})
    return api


def test_issue_creates_token_rbac_and_cluster_info_once_and_prints_the_pinned_hash() -> None:
    api = pools_api()
    req = join.Request(server="https://10.0.0.1:6443", nodepool="hangzhou", ttl=datetime.timedelta(minutes=10))
    first = join.issue(api, req, admin_ca=CA.pair.cert_pem, now=NOW)
    assert first.ca_hash == join.ca_cert_hash(CA.pair.cert_pem)
    assert first.expires == NOW + datetime.timedelta(minutes=10)
    assert f"--ca-cert-hash {first.ca_hash}" in first.command and first.token not in first.command
    assert "ConfigMap/kube-public/cluster-info" in first.created
    assert "ClusterRoleBinding/yurt-edge:join:node-autoapprove" in first.created
    info = api.get(join.CLUSTER_INFO)
    assert info is not None
    assert join.cluster_info_ca(info) == ("https://10.0.0.1:6443", CA.pair.cert_pem)
    secret = api.get(f"/api/v1/namespaces/kube-system/secrets/bootstrap-token-{first.token.split('.')[0]}")
    assert secret is not None and secret["stringData"]["token-secret"] == first.token.split(".")[1]

    second = join.issue(api, req, admin_ca=CA.pair.cert_pem, now=NOW)
    assert second.token != first.token
    assert second.created == (f"Secret/kube-system/bootstrap-token-{second.token.split('.')[0]}",)


def test_an_existing_cluster_info_is_what_the_hash_pins_and_is_left_alone() -> None:
    api = pools_api()
    kubeadm_ca = pki.CertificateAuthority("kubeadm-ca").pair.cert_pem
    kubeconfig = (
        "apiVersion: v1\nkind: Config\nclusters:\n- name: ''\n  cluster:\n"
        f"    certificate-authority-data: {base64.b64encode(kubeadm_ca).decode()}\n    server: https://lb:6443\n"
    )
    api.create(
        "/api/v1/namespaces/kube-public/configmaps",
        {"metadata": {"name": "cluster-info"}, "data": {"kubeconfig": kubeconfig}},
    )
    issued = join.issue(api, join.Request(server="https://lb:6443"), admin_ca=CA.pair.cert_pem, now=NOW)
    assert issued.ca_hash == join.ca_cert_hash(kubeadm_ca)
    info = api.get(join.CLUSTER_INFO)
    assert info is not None and info["data"]["kubeconfig"] == kubeconfig


@pytest.mark.parametrize(("pool", "problem"), [("nowhere", "NodePool nowhere not found"), ("core", "of type Cloud")])
def test_a_missing_or_cloud_pool_is_refused_before_any_token_exists(pool: str, problem: str) -> None:
    api = pools_api()
    with pytest.raises(errors.PreflightFailed, match=problem):
        join.issue(api, join.Request(server="https://h:6443", nodepool=pool), admin_ca=CA.pair.cert_pem, now=NOW)
    assert api.list("/api/v1/namespaces/kube-system/secrets") == []


def test_the_output_shows_the_token_only_when_it_was_not_written_to_a_file() -> None:
    req = join.Request(server="https://h:6443")
    issued = join.Issued("abcdef.0123456789abcdef", NOW, "sha256:x", "CMD", ())
    shown = join.render(issued, req, "")
    assert "token: abcdef.0123456789abcdef" in shown and "  CMD\n" in shown
    assert "valid until 2026-01-02T03:04:05Z" in shown
    hidden = join.render(issued, req, "/root/t")
    assert "0123456789abcdef" not in hidden and "/root/t" in hidden


@pytest.mark.parametrize(("text", "seconds"), [("1h", 3600), ("90s", 90), ("2h30m", 9000), ("0.5h", 1800)])
def test_ttl_durations(text: str, seconds: int) -> None:
    assert joincli._duration(text) == datetime.timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "0s", "1d", "h", "10"])
def test_bad_ttl_durations(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        joincli._duration(text)


def test_cluster_info_without_a_ca_is_an_error() -> None:
    bad = {"data": {"kubeconfig": json.dumps({"clusters": [{"cluster": {"server": "https://h"}}]})}}
    with pytest.raises(errors.PreflightFailed, match="no cluster CA"):
        join.cluster_info_ca(bad)


def test_the_machine_reads_the_token_from_stdin_or_an_owner_only_file_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("abcdef.0123456789abcdef\n"))
    assert joincli.read_token("-") == "abcdef.0123456789abcdef"
    monkeypatch.setattr("sys.stdin", io.StringIO("x" * 5000))
    with pytest.raises(errors.PreflightFailed, match="longer than"):
        joincli.read_token("-")
    shared = tmp_path / "token"
    shared.write_text("abcdef.0123456789abcdef\n")
    shared.chmod(0o644)
    with pytest.raises(errors.PreflightFailed, match="lets other users read"):
        joincli.read_token(str(shared))
    shared.chmod(0o600)
    assert joincli.read_token(str(shared)) == "abcdef.0123456789abcdef"


def test_token_out_is_created_owner_only_and_never_replaces_or_follows_a_link(tmp_path: Path) -> None:
    target = tmp_path / "out"
    joincli._write_private(str(target), "abcdef.0123456789abcdef\n")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    with pytest.raises(errors.PreflightFailed, match="cannot create a new file"):
        joincli._write_private(str(target), "again\n")
    planted = tmp_path / "planted"
    planted.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(errors.PreflightFailed, match="cannot create a new file"):
        joincli._write_private(str(planted), "x\n")
    assert not (tmp_path / "elsewhere").exists()
