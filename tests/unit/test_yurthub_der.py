"""`der` reads what `cryptography` reads from a certificate, and a hub reading its certificates never loads
`cryptography` (its resident memory is what the reader exists to save)."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

from yurthub import certificate, der, identity

UTC = datetime.UTC


def _cert(
    subject: x509.Name,
    *,
    serial: int = 12345,
    not_before: datetime.datetime = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
    not_after: datetime.datetime = datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    sans: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")]))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()), key


def _names(*attrs: tuple[ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in attrs])


CASES = {
    "node client": (
        _names((NameOID.ORGANIZATION_NAME, "system:nodes"), (NameOID.COMMON_NAME, "system:node:edge-1")),
        {},
    ),
    "serving with sans": (
        _names((NameOID.COMMON_NAME, "system:node:edge-1")),
        {
            "sans": [
                x509.DNSName("kubernetes.default.svc"),
                x509.IPAddress(ipaddress.ip_address("169.254.2.1")),
                x509.IPAddress(ipaddress.ip_address("fd00::1")),
                x509.DNSName("edge-1"),
                x509.UniformResourceIdentifier("spiffe://x"),
            ]
        },
    ),
    "characters RFC 4514 escapes": (
        _names(
            (NameOID.COMMON_NAME, '#a,b+c;d<e>f"g\\h '),
            (NameOID.ORGANIZATION_NAME, " leading space"),
            (NameOID.ORGANIZATIONAL_UNIT_NAME, "ünïcödé"),
        ),
        {},
    ),
    "every named attribute and an unnamed one": (
        _names(
            (NameOID.COUNTRY_NAME, "DE"),
            (NameOID.STATE_OR_PROVINCE_NAME, "Berlin"),
            (NameOID.LOCALITY_NAME, "Berlin"),
            (NameOID.STREET_ADDRESS, "Street 1"),
            (NameOID.DOMAIN_COMPONENT, "example"),
            (NameOID.USER_ID, "u1"),
            (NameOID.EMAIL_ADDRESS, "a@example.com"),
            (NameOID.SERIAL_NUMBER, "42"),
        ),
        {},
    ),
    "multi-valued RDN": (
        x509.Name(
            [
                x509.RelativeDistinguishedName(
                    [
                        x509.NameAttribute(NameOID.COMMON_NAME, "a"),
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "b"),
                    ]
                ),
                x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "US")]),
            ]
        ),
        {},
    ),
    "large serial, times past 2049 (GeneralizedTime)": (
        _names((NameOID.COMMON_NAME, "long")),
        {
            "serial": (1 << 158) + 7,
            "not_before": datetime.datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),
            "not_after": datetime.datetime(2051, 6, 1, tzinfo=UTC),
        },
    ),
    "UTCTime years 50-68 are 19xx": (
        _names((NameOID.COMMON_NAME, "old")),
        {
            "not_before": datetime.datetime(1955, 1, 1, tzinfo=UTC),
            "not_after": datetime.datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC),
        },
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_der_reads_what_cryptography_reads(case: str) -> None:
    subject, options = CASES[case]
    cert, _ = _cert(subject, **options)  # type: ignore[arg-type]
    fields = der.certificate(cert.public_bytes(serialization.Encoding.DER))
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
        dns = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        ips, dns = (), ()
    assert fields == der.Fields(
        subject=cert.subject.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        serial=cert.serial_number,
        ip_addresses=ips,
        dns_names=dns,
    )


def test_summarize_takes_the_first_certificate_of_a_bundle() -> None:
    leaf, _ = _cert(_names((NameOID.COMMON_NAME, "leaf")))
    other, _ = _cert(_names((NameOID.COMMON_NAME, "other")))
    pem = (
        b"junk before\n"
        + leaf.public_bytes(serialization.Encoding.PEM)
        + other.public_bytes(serialization.Encoding.PEM)
    )
    assert certificate.summarize(pem).subject == "CN=leaf"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x30",
        b"\x30\x05\x02\x01",  # runs past its end
        b"\x30\x84\xff\xff\xff\xff",  # a length past the data
        b"\x30\x00trailing",
        b"\x02\x01\x01",  # not a sequence
        b"\x30\x03\x02\x01\x01",  # one part, not three
    ],
)
def test_malformed_der_is_a_der_error(data: bytes) -> None:
    with pytest.raises(der.DerError):
        der.certificate(data)


def test_a_truncated_certificate_is_a_certificate_error() -> None:
    cert, _ = _cert(_names((NameOID.COMMON_NAME, "x")))
    raw = cert.public_bytes(serialization.Encoding.DER)
    for cut in (10, len(raw) // 2, len(raw) - 1):
        with pytest.raises(der.DerError):
            der.certificate(raw[:cut])
    with pytest.raises(certificate.CertificateError):
        certificate.summarize(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n")
    with pytest.raises(certificate.CertificateError):
        certificate.summarize(b"no certificate here")


def test_a_hub_reading_its_certificates_never_loads_cryptography(tmp_path: Path) -> None:
    """What a hub with file certificates does at start and on rotation (read and check its pair, summarize
    it, build its TLS contexts), in a fresh interpreter: `cryptography` stays unloaded."""
    cert, key = _cert(_names((NameOID.COMMON_NAME, "system:node:edge-1")))
    pair = tmp_path / "pair.pem"
    pair.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    script = f"""
import sys
from pathlib import Path
import yurthub.cli, yurthub.server, yurthub.identity, yurthub.door
from yurthub import certificate
found = certificate.read_pair(Path({str(pair)!r}))
assert found is not None
print(certificate.summarize(found[0]).subject)
loaded = sorted(m for m in sys.modules if m.startswith("cryptography"))
assert not loaded, loaded
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "CN=system:node:edge-1"


async def test_the_certificate_helper_makes_a_key_and_request_and_checks_a_pair_in_a_child() -> None:
    made = await identity.run_helper(
        {"op": "request", "node": "edge-1", "kind": "serving", "ips": ["169.254.2.1"], "dns": ["edge-1"]}
    )
    key = serialization.load_pem_private_key(made["key"].encode(), password=None)
    csr = x509.load_pem_x509_csr(made["csr"].encode())
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=system:node:edge-1,O=system:nodes"
    assert csr.public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["169.254.2.1"]
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    # what the signer would send back: a certificate for that key, and one for another key
    signed, _ = _cert(_names((NameOID.COMMON_NAME, "system:node:edge-1")))
    good = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(signed.issuer)
        .public_key(csr.public_key())
        .serial_number(7)
        .not_valid_before(datetime.datetime(2024, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime.datetime(2034, 1, 1, tzinfo=UTC))
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    ).public_bytes(serialization.Encoding.PEM)
    combined = await identity.run_helper({"op": "combine", "cert": good.decode(), "key": made["key"]})
    assert combined["pem"].encode() == certificate.combine(good, made["key"].encode())
    wrong = signed.public_bytes(serialization.Encoding.PEM).decode()
    refused = await identity.run_helper({"op": "combine", "cert": wrong, "key": made["key"]})
    assert "not for the key" in refused["error"]
    with pytest.raises(certificate.CertificateError, match="a serving certificate needs"):
        await identity.run_helper({"op": "request", "node": "edge-1", "kind": "serving", "ips": [], "dns": []})


def test_asking_the_helper_leaves_cryptography_unloaded_in_the_hub() -> None:
    script = """
import asyncio, sys
from yurthub import identity
made = asyncio.run(identity.run_helper({"op": "request", "node": "edge-1", "kind": "client"}))
assert made["key"].startswith("-----BEGIN PRIVATE KEY-----"), made
loaded = sorted(m for m in sys.modules if m.startswith("cryptography"))
assert not loaded, loaded
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
