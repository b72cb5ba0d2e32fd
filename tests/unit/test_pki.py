"""Certificates issued by the test CA carry the identity and usages Kubernetes checks."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from testenv import pki


def test_client_certificate_names_user_and_groups_and_verifies_against_the_ca() -> None:
    ca = pki.CertificateAuthority("test-ca")
    pair = ca.issue("system:node:edge-1", organizations=("system:nodes",), client=True)
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    assert cert.subject.rfc4514_string() == "CN=system:node:edge-1,O=system:nodes"
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ca_cert = x509.load_pem_x509_certificate(ca.pair.cert_pem)
    cert.verify_directly_issued_by(ca_cert)


def test_serving_certificate_carries_dns_and_ip_sans() -> None:
    ca = pki.CertificateAuthority("test-ca")
    cert = x509.load_pem_x509_certificate(
        ca.issue("apiserver", server=True, dns_names=("kubernetes",), ip_addresses=("10.0.0.1",)).cert_pem
    )
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["kubernetes"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.1")]


def test_written_key_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    _crt, key = pki.CertificateAuthority("test-ca").pair.write(tmp_path, "ca")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
