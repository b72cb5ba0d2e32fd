"""The node's certificates without network I/O: keys, CertificateSigningRequests, what a certificate says,
when to rotate it, and the root-only files that hold it.

Two kinds, as a kubelet has them (facts in the yurthub reference, section 4):
- client: CN `system:node:<node>`, O `system:nodes`, digital signature + client auth, signer
  `kubernetes.io/kube-apiserver-client-kubelet`. The stock controller-manager approves it by itself when a
  bootstrap-token user (kubeadm's `nodeclient` binding) or the node itself (`selfnodeclient`) asks.
- serving: same subject, digital signature + server auth, signer `kubernetes.io/kubelet-serving`, SANs for
  yurthub's addresses. Nobody approves it by default: yurt-manager or an admin must.

`cryptography` is imported only to make keys and requests and to check a signed certificate against its
key (`new_key`, `key_pem`, `csr_pem`, `combine`), and yurthub does that in a short-lived child process of
its own (`helper`, run by `identity`): reading what a certificate says goes through `der` and checking a
file's pair through OpenSSL (`ssl`), so the hub itself never loads it (about 10 MB of resident memory
for the life of the process, a sixth of an idle hub, for what happens once per certificate).

A certificate and its key live in one PEM file (certificate first, then key, like kubelet's
`kubelet-client-current.pem`), replaced atomically (temp file, fsync, rename) so a reader never sees a
certificate with the wrong key.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import enum
import ipaddress
import json
import os
import random
import secrets
import ssl
import string
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from yurthub import der

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

NODE_GROUP = "system:nodes"
KUBERNETES_DNS_NAMES = (
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
"""DNS names of the `default/kubernetes` Service that in-cluster clients may check the serving cert for."""


class Kind(enum.StrEnum):
    CLIENT = "client"
    SERVING = "serving"

    @property
    def signer(self) -> str:
        if self is Kind.CLIENT:
            return "kubernetes.io/kube-apiserver-client-kubelet"
        return "kubernetes.io/kubelet-serving"

    @property
    def usages(self) -> list[str]:
        return ["digital signature", "client auth" if self is Kind.CLIENT else "server auth"]


class CertificateError(ValueError):
    """A certificate file or a signed certificate that cannot be used; the message says why."""


def new_key() -> ec.EllipticCurvePrivateKey:
    """An ECDSA P-256 key, as client-go's certificate manager makes."""
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415 - lazily (module docstring)

    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - lazily (module docstring)

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def csr_pem(
    key: ec.EllipticCurvePrivateKey,
    node: str,
    kind: Kind,
    *,
    ip_addresses: tuple[str, ...] = (),
    dns_names: tuple[str, ...] = (),
) -> bytes:
    """A PKCS#10 request for the node's `kind` certificate; SANs only for serving certificates (the client
    signer refuses requests that carry any)."""
    from cryptography import x509  # noqa: PLC0415 - lazily (module docstring)
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, NODE_GROUP),
            x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node}"),
        ]
    )
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if kind is Kind.SERVING:
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dict.fromkeys(dns_names)]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in dict.fromkeys(ip_addresses)]
        if not sans:
            raise CertificateError("a serving certificate needs at least one DNS name or IP address")
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def csr_name(node: str, kind: Kind, rng: random.Random | None = None) -> str:
    """A name chosen before submitting, so the log can name the request an admin has to approve."""
    alphabet = string.ascii_lowercase + string.digits
    pick = rng.choice if rng is not None else secrets.choice
    return f"yurthub-{kind}-{node}-" + "".join(pick(alphabet) for _ in range(5))


def csr_object(name: str, request: bytes, kind: Kind) -> dict[str, Any]:
    """The `certificates.k8s.io/v1` CertificateSigningRequest to POST."""
    return {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "yurthub"}},
        "spec": {"request": base64.b64encode(request).decode(), "signerName": kind.signer, "usages": kind.usages},
    }


class CsrState(enum.StrEnum):
    PENDING = "pending"
    """Not approved yet, or approved and not signed yet."""
    ISSUED = "issued"
    DENIED = "denied"
    FAILED = "failed"


def csr_outcome(obj: dict[str, Any]) -> tuple[CsrState, bytes, str]:
    """(state, certificate PEM when issued, the condition's message) of a CSR as the apiserver returns it."""
    status = obj.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") in ("Denied", "Failed") and cond.get("status", "True") == "True":
            state = CsrState.DENIED if cond["type"] == "Denied" else CsrState.FAILED
            return state, b"", str(cond.get("message") or cond.get("reason") or "")
    issued = status.get("certificate")
    if issued:
        return CsrState.ISSUED, base64.b64decode(issued), ""
    return CsrState.PENDING, b"", ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Summary:
    """What a person needs to know about a certificate (never its key)."""

    subject: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    serial: int
    ip_addresses: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()

    def expired(self, now: datetime.datetime) -> bool:
        return now >= self.not_after


def summarize(cert_pem: bytes) -> Summary:
    """The first certificate of a PEM bundle, summarized (read by `der`, without `cryptography`)."""
    try:
        fields = der.certificate(der.first_pem_certificate(cert_pem))
    except der.DerError as exc:
        raise CertificateError(f"not a PEM certificate: {exc}") from exc
    return Summary(**dataclasses.asdict(fields))


def jitter_fraction(rng: random.Random) -> float:
    """Where in a certificate's life to renew it: 70-90 %, 80 % on average, as client-go does, so that nodes
    that joined together do not all renew at the same moment."""
    return 0.7 + 0.2 * rng.random()


def rotation_deadline(summary: Summary, obtained_at: datetime.datetime, fraction: float) -> datetime.datetime:
    """When to ask for the next certificate: `fraction` of the way through the certificate's useful life.

    The life starts at the later of notBefore and the moment the certificate was obtained: the signer
    backdates notBefore (by up to 5 minutes) to allow for clock skew, which for a short-lived certificate
    would otherwise put the deadline at or before the moment it was issued and renew in a loop.
    """
    start = max(summary.not_before, min(obtained_at, summary.not_after))
    return start + (summary.not_after - start) * fraction


def retry_delay(attempt: int, cap: float = 16.0) -> float:
    """Seconds to wait after `attempt` failures in a row: 1, 2, 4 ... up to `cap` (client-go: 2 s doubling to
    32 s; capped lower here so a node whose link returns gets its certificate within a minute)."""
    return min(cap, float(2 ** min(attempt, 10)) / 2)


def combine(cert_pem: bytes, key: bytes) -> bytes:
    """One PEM file with the certificate chain and then its key, after checking that they belong together."""
    from cryptography import x509  # noqa: PLC0415 - lazily (module docstring)
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    cert = x509.load_pem_x509_certificate(cert_pem)
    private = serialization.load_pem_private_key(key, password=None)
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(serialization.Encoding.PEM, pub) != private.public_key().public_bytes(
        serialization.Encoding.PEM, pub
    ):
        raise CertificateError("the signed certificate is not for the key this request was made with")
    return cert_pem.rstrip(b"\n") + b"\n" + key.rstrip(b"\n") + b"\n"


def read_pair(path: Path) -> tuple[bytes, bytes] | None:
    """(certificate PEM, key PEM) from a combined file, or None when there is no file yet.

    A file that exists but does not hold a matching certificate and key raises `CertificateError`: the
    operator must see it, not have it silently replaced."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CertificateError(f"{path}: {exc}") from exc
    certs, keys = _pem_blocks(data)
    if not certs or not keys:
        raise CertificateError(f"{path}: expected a certificate and a private key in one PEM file")
    cert_pem, key = b"".join(certs), keys[0]
    try:
        # OpenSSL checks that the key belongs to the certificate (as `combine` does, without `cryptography`)
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(path)
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(
            f"{path}: the certificate is not for the key beside it, or cannot be read: {exc}"
        ) from exc
    return cert_pem, key


def _pem_blocks(data: bytes) -> tuple[list[bytes], list[bytes]]:
    certs: list[bytes] = []
    keys: list[bytes] = []
    block: list[bytes] = []
    for line in data.splitlines(keepends=True):
        if line.startswith(b"-----BEGIN "):
            block = [line]
        elif block:
            block.append(line)
            if line.startswith(b"-----END "):
                text = b"".join(block)
                (certs if b"CERTIFICATE" in block[0] else keys if b"PRIVATE KEY" in block[0] else []).append(text)
                block = []
    return certs, keys


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically, readable by root only (0600, in a 0700 directory).

    A temp file in the same directory, fsynced, then renamed over the target: a reader (the HTTPS door
    reloading its certificate, or yurthub restarting after a power cut) sees the old file or the new one,
    never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


HELPER = "certificate-helper"
"""The hidden yurthub command that runs `helper` (in the self-contained executable, which has no `-m`)."""


def helper_command() -> list[str]:
    """How to start `helper` in a child process: this Python with `-m`, or the self-contained executable
    (chosen by its first argument unless it is called `yurthub`) with `HELPER`."""
    if getattr(sys, "frozen", False):
        name = os.path.basename(sys.executable)
        return [sys.executable, HELPER] if name == "yurthub" else [sys.executable, "yurthub", HELPER]
    return [sys.executable, "-m", "yurthub.certificate"]


def helper(request: bytes) -> bytes:
    """Run in the child: one JSON request in, one JSON answer out (the key travels only through the pipe).

    `{"op": "request", "node", "kind", "ips", "dns"}` answers `{"key": PEM, "csr": PEM}`;
    `{"op": "combine", "cert", "key"}` answers `{"pem": the combined file}` or `{"error": why not}`."""
    doc = json.loads(request)
    if doc["op"] == "request":
        key = new_key()
        ips, dns = tuple(doc.get("ips", ())), tuple(doc.get("dns", ()))
        csr = csr_pem(key, doc["node"], Kind(doc["kind"]), ip_addresses=ips, dns_names=dns)
        return json.dumps({"key": key_pem(key).decode(), "csr": csr.decode()}).encode()
    if doc["op"] == "combine":
        try:
            return json.dumps({"pem": combine(doc["cert"].encode(), doc["key"].encode()).decode()}).encode()
        except (ValueError, CertificateError) as exc:
            return json.dumps({"error": str(exc)}).encode()
    raise CertificateError(f"unknown certificate helper operation {doc['op']!r}")


def helper_main() -> int:
    sys.stdout.buffer.write(helper(sys.stdin.buffer.read()))
    return 0


if __name__ == "__main__":
    sys.exit(helper_main())
