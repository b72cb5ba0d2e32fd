"""yurt-manager's webhook serving certificate: what the Secret should hold, decided without I/O.

Why a CA of its own: stock Kubernetes has no signer for an arbitrary serving certificate. The
`kubernetes.io/kubelet-serving` signer signs only for `system:node:*` requesters and node names and addresses;
`kubernetes.io/legacy-unknown` is not signed by kube-controller-manager since 1.22; a custom signer name is
signed by nobody. So yurt-manager keeps a small CA of its own (as controller-runtime based webhooks do): the
CA signs only the webhook's serving certificate, and its certificate is the `caBundle` of the one
MutatingWebhookConfiguration `yurtctl convert` installs, so it is trusted for nothing else.

The Secret `kube-system/yurt-manager-webhook-certs` (created empty by `yurtctl convert`, so yurt-manager needs
no right to create Secrets) holds `ca.crt`, `ca.key`, `tls.crt`, `tls.key`. Every replica reads it at start
and on its upkeep clock; `wanted` says what it should hold instead (a new CA only when there is none or it
is near its end; a new serving certificate when it is missing, not from that CA, near its end or without
one of the names the webhook is reached by). The shell writes that under the Secret's resourceVersion, so
of two replicas starting together one wins and the other adopts its certificate. Restarts keep it.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
SERVING_DAYS = 365
RENEW_FRACTION = 1 / 3
"""A certificate is replaced once less than this fraction of its lifetime is left."""
KEYS = ("ca.crt", "ca.key", "tls.crt", "tls.key")


@dataclasses.dataclass(frozen=True)
class Material:
    """PEM bytes of the CA and of the serving certificate and key."""

    ca_cert: bytes
    ca_key: bytes
    cert: bytes
    key: bytes

    def data(self) -> dict[str, bytes]:
        return dict(zip(KEYS, (self.ca_cert, self.ca_key, self.cert, self.key), strict=True))


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(names: tuple[str, ...]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def new_ca(now: datetime.datetime) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "yurt-manager-webhook-ca")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def issue(ca_cert: bytes, ca_key: bytes, names: tuple[str, ...], now: datetime.datetime) -> tuple[bytes, bytes]:
    """A serving certificate for `names` (DNS names or IP addresses), signed by the CA."""
    ca = x509.load_pem_x509_certificate(ca_cert)
    signer = serialization.load_pem_private_key(ca_key, None)
    if not isinstance(signer, ec.EllipticCurvePrivateKey):
        raise ValueError("the webhook CA key is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=SERVING_DAYS), ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_san(names), critical=False)
        # key identifiers: strict verifiers (Python 3.13's default, RFC 5280) refuse a chain without them
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(signer, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _fresh(cert: x509.Certificate, now: datetime.datetime) -> bool:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start <= now and (end - now) > (end - start) * RENEW_FRACTION


def _covers(cert: x509.Certificate, names: tuple[str, ...]) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} | {
        d.lower() for d in san.get_values_for_type(x509.DNSName)
    }
    return all(str(_normal(n)) in have for n in names)


def _normal(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.lower()


def _load(data: dict[str, bytes]) -> tuple[x509.Certificate | None, x509.Certificate | None]:
    ca = cert = None
    try:
        if data.get("ca.crt") and data.get("ca.key"):
            ca = x509.load_pem_x509_certificate(data["ca.crt"])
            serialization.load_pem_private_key(data["ca.key"], None)
        if data.get("tls.crt") and data.get("tls.key"):
            cert = x509.load_pem_x509_certificate(data["tls.crt"])
            serialization.load_pem_private_key(data["tls.key"], None)
    except ValueError:
        return None, None  # unreadable: made anew
    return ca, cert


def wanted(data: dict[str, bytes], names: tuple[str, ...], now: datetime.datetime) -> Material | None:
    """What the Secret should hold instead of `data`, or None when `data` serves `names` well."""
    if not names:
        raise ValueError("a serving certificate needs at least one name")
    ca, cert = _load(data)
    if ca is None or not _fresh(ca, now):
        ca_cert, ca_key = new_ca(now)
        cert_pem, key_pem = issue(ca_cert, ca_key, names, now)
        return Material(ca_cert, ca_key, cert_pem, key_pem)
    if cert is not None and cert.issuer == ca.subject and _fresh(cert, now) and _covers(cert, names):
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            pass
        else:
            return None
    cert_pem, key_pem = issue(data["ca.crt"], data["ca.key"], names, now)
    return Material(data["ca.crt"], data["ca.key"], cert_pem, key_pem)
