"""What an X.509 certificate says, read from its DER bytes without `cryptography`.

Why: yurthub reads its certificates at start and whenever a file changes, and nothing else on its request
path needs `cryptography`; importing it keeps about 9 MB resident for the life of the process (its Rust
extension and its modules), a sixth of an idle hub. Keys and CertificateSigningRequests are still made with
`cryptography` (`certificate`), imported only when a node asks for a certificate.

Pure: bytes in, values out. Only what `certificate.Summary` reports is read: the serial number, the
validity, the subject (as RFC 4514 text, the way `cryptography` writes it) and the subject alternative
names of kinds DNS and IP. Anything malformed raises `DerError` (a `ValueError`).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import ipaddress

SEQUENCE, SET, INTEGER, OCTET_STRING, OID = 0x30, 0x31, 0x02, 0x04, 0x06
UTC_TIME, GENERALIZED_TIME, BOOLEAN = 0x17, 0x18, 0x01
EXPLICIT_VERSION, EXPLICIT_EXTENSIONS = 0xA0, 0xA3
SAN_OID = "2.5.29.17"
SAN_DNS, SAN_IP = 0x82, 0x87
NAMES = {
    "2.5.4.3": "CN",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.9": "STREET",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "0.9.2342.19200300.100.1.1": "UID",
    "0.9.2342.19200300.100.1.25": "DC",
}
"""Attribute types RFC 4514 names (and `cryptography` writes by name); any other is written by its dotted
number, and a value that is not a string as `#` and its DER in hex."""
STRINGS = frozenset({0x0C, 0x12, 0x13, 0x14, 0x16, 0x1A, 0x1C, 0x1E})
"""UTF8String, NumericString, PrintableString, T61String, IA5String, VisibleString, UniversalString,
BMPString: the string types an attribute value may have."""


class DerError(ValueError):
    """Not a DER certificate (or not one this reader understands); the message says where it went wrong."""


@dataclasses.dataclass(frozen=True)
class Tlv:
    tag: int
    value: bytes
    raw: bytes
    """The whole element, tag and length included."""


def _read(data: bytes, pos: int) -> tuple[Tlv, int]:
    """The element at `pos` and the position after it."""
    if pos + 2 > len(data):
        raise DerError("truncated element")
    tag, first = data[pos], data[pos + 1]
    if tag & 0x1F == 0x1F:
        raise DerError("multi-byte tags are not used in certificates")
    start = pos + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or start + count > len(data):
            raise DerError("bad length")
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    end = start + length
    if end > len(data):
        raise DerError("element runs past its container")
    return Tlv(tag, data[start:end], data[pos:end]), end


def _children(value: bytes) -> list[Tlv]:
    out: list[Tlv] = []
    pos = 0
    while pos < len(value):
        element, pos = _read(value, pos)
        out.append(element)
    return out


def _expect(element: Tlv, tag: int, what: str) -> Tlv:
    if element.tag != tag:
        raise DerError(f"{what}: tag {element.tag:#04x}, expected {tag:#04x}")
    return element


def _oid(value: bytes) -> str:
    if not value:
        raise DerError("empty object identifier")
    arcs: list[int] = []
    n = 0
    for byte in value:
        n = (n << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(n)
            n = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def _time(element: Tlv) -> datetime.datetime:
    text = element.value.decode("ascii", "replace")
    try:
        if element.tag == UTC_TIME:
            parsed = datetime.datetime.strptime(text, "%y%m%d%H%M%SZ")
            if parsed.year >= 2050:  # RFC 5280: UTCTime years 50-99 are 19xx (strptime makes 69-99 19xx only)
                parsed = parsed.replace(year=parsed.year - 100)
        elif element.tag == GENERALIZED_TIME:
            parsed = datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ")
        else:
            raise DerError(f"validity: tag {element.tag:#04x} is not a time")
    except ValueError as exc:
        raise DerError(f"validity: {text!r} is not a DER time") from exc
    return parsed.replace(tzinfo=datetime.UTC)


def _escape(text: str) -> str:
    """An attribute value in RFC 4514 text, escaped as `cryptography` escapes it."""
    out = "".join("\\" + c if c in '\\"+,;<>' else "\\00" if c == "\0" else c for c in text)
    if out.startswith(("#", " ")):
        out = "\\" + out
    if out.endswith(" ") and not out.endswith("\\ "):
        out = out[:-1] + "\\ "
    return out


def _attribute(element: Tlv) -> str:
    oid_element, value = _children(_expect(element, SEQUENCE, "attribute").value)
    oid = _oid(_expect(oid_element, OID, "attribute type").value)
    name = NAMES.get(oid, oid)
    if value.tag not in STRINGS:
        return f"{name}=#{binascii.hexlify(value.raw).decode()}"
    if value.tag == 0x1E:
        text = value.value.decode("utf-16-be", "replace")
    elif value.tag == 0x1C:
        text = value.value.decode("utf-32-be", "replace")
    else:
        text = value.value.decode("utf-8", "replace")
    return f"{name}={_escape(text)}"


def _name(element: Tlv) -> str:
    """A Name as RFC 4514 text: the last RDN first, the values of one RDN joined by `+`."""
    rdns = [
        _expect(rdn, SET, "relative distinguished name") for rdn in _children(_expect(element, SEQUENCE, "name").value)
    ]
    return ",".join("+".join(_attribute(a) for a in _children(rdn.value)) for rdn in reversed(rdns))


def _alt_names(extensions: Tlv) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(IP addresses, DNS names) of the subjectAltName extension, or two empty tuples without one."""
    for extension in _children(_expect(extensions, SEQUENCE, "extensions").value):
        parts = _children(_expect(extension, SEQUENCE, "extension").value)
        if not parts or _oid(_expect(parts[0], OID, "extension id").value) != SAN_OID:
            continue
        inner, _ = _read(_expect(parts[-1], OCTET_STRING, "extension value").value, 0)
        ips: list[str] = []
        dns: list[str] = []
        for general in _children(_expect(inner, SEQUENCE, "subjectAltName").value):
            if general.tag == SAN_IP and len(general.value) in (4, 16):
                ips.append(str(ipaddress.ip_address(general.value)))
            elif general.tag == SAN_DNS:
                dns.append(general.value.decode("ascii", "replace"))
        return tuple(ips), tuple(dns)
    return (), ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Fields:
    subject: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    serial: int
    ip_addresses: tuple[str, ...]
    dns_names: tuple[str, ...]


def certificate(der: bytes) -> Fields:
    """The fields `certificate.Summary` reports, read from one DER certificate."""
    top, end = _read(der, 0)
    if end != len(der):
        raise DerError("bytes after the certificate")
    parts = _children(_expect(top, SEQUENCE, "certificate").value)
    if len(parts) != 3:
        raise DerError("a certificate has three parts")
    tbs = _children(_expect(parts[0], SEQUENCE, "tbsCertificate").value)
    if tbs and tbs[0].tag == EXPLICIT_VERSION:
        tbs = tbs[1:]
    if len(tbs) < 6:
        raise DerError("tbsCertificate is too short")
    serial = int.from_bytes(_expect(tbs[0], INTEGER, "serial number").value, "big", signed=True)
    validity = _children(_expect(tbs[3], SEQUENCE, "validity").value)
    if len(validity) != 2:
        raise DerError("validity has two times")
    extensions = next((t for t in tbs[6:] if t.tag == EXPLICIT_EXTENSIONS), None)
    ips, dns = _alt_names(_read(extensions.value, 0)[0]) if extensions is not None else ((), ())
    return Fields(
        subject=_name(tbs[4]),
        not_before=_time(validity[0]),
        not_after=_time(validity[1]),
        serial=serial,
        ip_addresses=ips,
        dns_names=dns,
    )


def first_pem_certificate(pem: bytes) -> bytes:
    """The DER bytes of the first `CERTIFICATE` block of a PEM bundle."""
    begin, end = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"
    start = pem.find(begin)
    stop = pem.find(end, start + len(begin)) if start >= 0 else -1
    if start < 0 or stop < 0:
        raise DerError("no PEM certificate block")
    try:
        return base64.b64decode(b"".join(pem[start + len(begin) : stop].split()), validate=True)
    except binascii.Error as exc:
        raise DerError(f"the PEM certificate block is not base64: {exc}") from exc
