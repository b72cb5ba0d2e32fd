"""The pure parts of yurthub's identity: CSRs as the stock signers want them, what a CSR's status means,
when to rotate, and root-only files replaced atomically."""

from __future__ import annotations

import base64
import datetime
import os
import random
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from yurthub import certificate, cli, config
from yurthub.certificate import Kind

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def sign(csr_pem: bytes, not_before: datetime.datetime, not_after: datetime.datetime) -> bytes:
    """What the controller-manager's signer does with an approved request (the essentials)."""
    csr = x509.load_pem_x509_csr(csr_pem)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_name)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    for ext in csr.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_a_client_request_names_the_node_in_system_nodes_and_carries_no_sans() -> None:
    key = certificate.new_key()
    csr = x509.load_pem_x509_csr(certificate.csr_pem(key, "edge-1", Kind.CLIENT))
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:edge-1"
    assert [a.value for a in csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == ["system:nodes"]
    assert len(csr.extensions) == 0  # the kube-apiserver-client-kubelet signer refuses any SAN


def test_a_serving_request_carries_every_address_once() -> None:
    key = certificate.new_key()
    pem = certificate.csr_pem(
        key,
        "edge-1",
        Kind.SERVING,
        ip_addresses=("127.0.0.1", "169.254.2.1", "10.0.0.5", "127.0.0.1"),
        dns_names=certificate.KUBERNETES_DNS_NAMES,
    )
    san = x509.load_pem_x509_csr(pem).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "169.254.2.1", "10.0.0.5"]
    assert san.get_values_for_type(x509.DNSName) == list(certificate.KUBERNETES_DNS_NAMES)


def test_a_serving_request_without_any_name_is_refused() -> None:
    with pytest.raises(certificate.CertificateError, match="at least one"):
        certificate.csr_pem(certificate.new_key(), "edge-1", Kind.SERVING)


@pytest.mark.parametrize(
    ("kind", "signer", "usage"),
    [
        (Kind.CLIENT, "kubernetes.io/kube-apiserver-client-kubelet", "client auth"),
        (Kind.SERVING, "kubernetes.io/kubelet-serving", "server auth"),
    ],
)
def test_the_csr_object_asks_the_signer_the_stock_approver_knows(kind: Kind, signer: str, usage: str) -> None:
    obj = certificate.csr_object("yurthub-x", b"PEM", kind)
    assert obj["apiVersion"] == "certificates.k8s.io/v1"
    assert obj["metadata"]["name"] == "yurthub-x"
    assert obj["spec"]["signerName"] == signer
    assert obj["spec"]["usages"] == ["digital signature", usage]
    assert base64.b64decode(obj["spec"]["request"]) == b"PEM"


def test_csr_names_are_valid_object_names_and_differ() -> None:
    rng = random.Random(1)  # noqa: S311 - seeded for a repeatable test
    a, b = certificate.csr_name("edge-1", Kind.SERVING, rng), certificate.csr_name("edge-1", Kind.SERVING, rng)
    assert a != b
    assert a.startswith("yurthub-serving-edge-1-") and a == a.lower()


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ({}, certificate.CsrState.PENDING),
        ({"conditions": [{"type": "Approved", "status": "True"}]}, certificate.CsrState.PENDING),
        ({"conditions": [{"type": "Denied", "status": "True", "message": "no"}]}, certificate.CsrState.DENIED),
        ({"conditions": [{"type": "Failed", "status": "True", "reason": "x"}]}, certificate.CsrState.FAILED),
        (
            {"conditions": [{"type": "Approved", "status": "True"}], "certificate": base64.b64encode(b"C").decode()},
            certificate.CsrState.ISSUED,
        ),
    ],
)
def test_a_csr_status_reads_as_one_state(status: dict[str, object], state: certificate.CsrState) -> None:
    got, cert, _ = certificate.csr_outcome({"status": status})
    assert got is state
    assert (cert == b"C") is (state is certificate.CsrState.ISSUED)


def summary(not_before: datetime.datetime, not_after: datetime.datetime) -> certificate.Summary:
    return certificate.Summary(subject="CN=x", not_before=not_before, not_after=not_after, serial=1)


def test_rotation_comes_at_the_given_fraction_of_the_life() -> None:
    s = summary(T0, T0 + datetime.timedelta(days=100))
    assert certificate.rotation_deadline(s, T0, 0.8) == T0 + datetime.timedelta(days=80)


def test_a_backdated_short_certificate_counts_its_life_from_when_it_was_obtained() -> None:
    # a 2-minute certificate whose notBefore the signer put 5 minutes in the past
    s = summary(T0 - datetime.timedelta(minutes=5), T0 + datetime.timedelta(minutes=2))
    assert certificate.rotation_deadline(s, T0, 0.8) == T0 + datetime.timedelta(seconds=96)


def test_an_already_expired_certificate_is_due_at_once() -> None:
    s = summary(T0, T0 + datetime.timedelta(minutes=2))
    assert certificate.rotation_deadline(s, T0 + datetime.timedelta(hours=1), 0.8) <= T0 + datetime.timedelta(minutes=2)


def test_the_jitter_keeps_rotation_between_70_and_90_percent() -> None:
    rng = random.Random(7)  # noqa: S311 - seeded for a repeatable test
    fractions = [certificate.jitter_fraction(rng) for _ in range(1000)]
    assert min(fractions) >= 0.7 and max(fractions) <= 0.9
    assert 0.78 < sum(fractions) / len(fractions) < 0.82


def test_retries_back_off_to_a_cap_that_keeps_a_returning_link_within_a_minute() -> None:
    assert [certificate.retry_delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 16, 16]


def issued_pair(tmp_path: Path) -> tuple[bytes, bytes]:
    key = certificate.new_key()
    cert = sign(certificate.csr_pem(key, "edge-1", Kind.CLIENT), T0, T0 + datetime.timedelta(days=1))
    return cert, certificate.key_pem(key)


def test_a_certificate_and_its_key_round_trip_through_one_root_only_file(tmp_path: Path) -> None:
    cert, key = issued_pair(tmp_path)
    path = tmp_path / "pki" / "yurthub-client-current.pem"
    certificate.write_private(path, certificate.combine(cert, key))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert certificate.read_pair(path) == (cert, key)
    s = certificate.summarize(cert)
    assert s.subject == "CN=system:node:edge-1,O=system:nodes"
    assert s.not_after == T0 + datetime.timedelta(days=1)


def test_replacing_the_file_leaves_no_temporary_files_and_the_new_content(tmp_path: Path) -> None:
    path = tmp_path / "pki" / "f.pem"
    first, second = issued_pair(tmp_path), issued_pair(tmp_path)
    certificate.write_private(path, certificate.combine(*first))
    inode = path.stat().st_ino
    certificate.write_private(path, certificate.combine(*second))
    assert certificate.read_pair(path) == second
    assert path.stat().st_ino != inode  # renamed over, not rewritten in place
    assert os.listdir(path.parent) == ["f.pem"]


def test_a_missing_file_is_none_and_a_broken_one_is_an_error(tmp_path: Path) -> None:
    assert certificate.read_pair(tmp_path / "absent.pem") is None
    cert, _ = issued_pair(tmp_path)
    _, other_key = issued_pair(tmp_path)
    (tmp_path / "only-cert.pem").write_bytes(cert)
    with pytest.raises(certificate.CertificateError, match="a certificate and a private key"):
        certificate.read_pair(tmp_path / "only-cert.pem")
    (tmp_path / "mismatch.pem").write_bytes(cert + other_key)
    with pytest.raises(certificate.CertificateError, match="not for the key"):
        certificate.read_pair(tmp_path / "mismatch.pem")


def test_a_signed_certificate_for_another_key_is_refused(tmp_path: Path) -> None:
    cert, _ = issued_pair(tmp_path)
    with pytest.raises(certificate.CertificateError):
        certificate.combine(cert, certificate.key_pem(certificate.new_key()))


BASE = ["--server-addr", "https://10.0.0.1:6443", "--node-name", "edge-1"]
TOKEN = "abcdef.0123456789abcdef"  # noqa: S105 - a made-up token in the documented shape


def test_a_join_token_makes_yurthub_keep_its_own_certificates_under_the_root_dir() -> None:
    ids = cli.settings_from_args(cli.parse_args([*BASE, "--join-token", TOKEN, "--root-dir", "/r/"])).identity
    assert ids.client_source is config.ClientSource.CSR
    assert ids.client_file == "/r/pki/yurthub-client-current.pem"
    assert ids.serving_file == "/r/pki/yurthub-server-current.pem"
    assert TOKEN not in repr(ids)


def test_without_a_token_the_kubelet_certificate_is_followed() -> None:
    ids = cli.settings_from_args(cli.parse_args(BASE)).identity
    assert ids.client_source is config.ClientSource.KUBELET
    assert ids.client_file == "/var/lib/kubelet/pki/kubelet-client-current.pem"


def test_the_token_can_come_from_a_bootstrap_kubeconfig(tmp_path: Path) -> None:
    conf = tmp_path / "bootstrap-hub.conf"
    conf.write_text(f"apiVersion: v1\nkind: Config\nusers:\n- name: b\n  user:\n    token: {TOKEN}\n")
    ids = cli.settings_from_args(cli.parse_args([*BASE, "--bootstrap-file", str(conf)])).identity
    assert ids.bootstrap_token == TOKEN


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (["--join-token", "not-a-token"], "bootstrap token: expected"),
        (["--serving-ip-addresses", "127.0.0.1,nope"], "'nope' is not an IP address"),
        (["--bootstrap-file", "/nonexistent/bootstrap.conf"], "--bootstrap-file /nonexistent"),
    ],
)
def test_bad_identity_flags_are_refused_with_the_reason(
    flags: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([*BASE, *flags]) == 2
    assert complaint in capsys.readouterr().err
