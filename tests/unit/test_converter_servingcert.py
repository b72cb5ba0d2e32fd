"""The webhook's serving certificate (`converter.servingcert`): what the Secret should hold, and when it
changes."""

from __future__ import annotations

import datetime
import ipaddress

from cryptography import x509

from converter import servingcert

NOW = datetime.datetime(2026, 11, 29, 10, 0, tzinfo=datetime.UTC)
NAMES = ("yurt-manager-webhook.kube-system.svc", "127.0.0.1")


def names_of(pem: bytes) -> set[str]:
    san = x509.load_pem_x509_certificate(pem).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(i) for i in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))


def test_an_empty_secret_gets_a_ca_and_a_serving_certificate_signed_by_it_for_every_name() -> None:
    m = servingcert.wanted({}, NAMES, NOW)
    assert m is not None
    ca, cert = x509.load_pem_x509_certificate(m.ca_cert), x509.load_pem_x509_certificate(m.cert)
    cert.verify_directly_issued_by(ca)
    assert names_of(m.cert) == set(NAMES)
    assert x509.ExtendedKeyUsageOID.SERVER_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ipaddress.ip_address("127.0.0.1") in cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.IPAddress)


def test_a_good_secret_is_kept_as_it_is_across_restarts() -> None:
    m = servingcert.wanted({}, NAMES, NOW)
    assert m is not None
    assert servingcert.wanted(m.data(), NAMES, NOW + datetime.timedelta(days=200)) is None


def test_the_serving_certificate_is_renewed_from_the_same_ca_near_its_end_or_for_a_new_name() -> None:
    m = servingcert.wanted({}, NAMES, NOW)
    assert m is not None
    later = NOW + datetime.timedelta(days=250)  # less than a third of a year left
    renewed = servingcert.wanted(m.data(), NAMES, later)
    assert renewed is not None and renewed.ca_cert == m.ca_cert and renewed.cert != m.cert
    wider = servingcert.wanted(m.data(), (*NAMES, "10.0.0.5"), NOW)
    assert wider is not None and wider.ca_cert == m.ca_cert and "10.0.0.5" in names_of(wider.cert)


def test_a_certificate_from_another_ca_or_unreadable_material_is_replaced() -> None:
    a, b = servingcert.wanted({}, NAMES, NOW), servingcert.wanted({}, NAMES, NOW)
    assert a is not None and b is not None
    mixed = a.data() | {"tls.crt": b.cert, "tls.key": b.key}
    fixed = servingcert.wanted(mixed, NAMES, NOW)
    assert fixed is not None and fixed.ca_cert == a.ca_cert
    x509.load_pem_x509_certificate(fixed.cert).verify_directly_issued_by(x509.load_pem_x509_certificate(a.ca_cert))
    garbage = servingcert.wanted({"ca.crt": b"junk", "ca.key": b"junk"}, NAMES, NOW)
    assert garbage is not None and garbage.ca_cert != b"junk"


def test_a_ca_near_its_end_is_replaced_with_everything_it_signed() -> None:
    m = servingcert.wanted({}, NAMES, NOW)
    assert m is not None
    late = NOW + datetime.timedelta(days=servingcert.CA_DAYS - 100)
    fresh = servingcert.wanted(m.data(), NAMES, late)
    assert fresh is not None and fresh.ca_cert != m.ca_cert
