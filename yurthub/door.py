"""The HTTPS door for pods: a TLS listener on a node-local address, with a certificate that follows its files.

Pods cannot reach the node's loopback, so yurthub puts an address (169.254.2.1 by default) on an interface
of its own (`yurthub0`; a `dummy` link, or an `ifb` one on kernels built without dummy links), listens there,
and the `masterservice` filter points the `kubernetes` Service at it. What comes in through the door is
routed by `proxy.handle(..., door=True)`: a pod's own bearer token is required and forwarded.

Certificate rotation: whoever renews the serving certificate writes the files atomically (write a temporary
file, rename it over the old one; the certificate before the key, or both in one PEM). `ServingCert.reload`
notices the change (path, mtime, size), loads the pair into a new `SSLContext` and, only if that succeeds,
makes it the one new handshakes use (a server-name callback hands each handshake the current context).
Connections already open keep the certificate they were made with; a half-written pair (new certificate,
old key) fails to load and is tried again on the next poll.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import subprocess

from yurthub import config

log = logging.getLogger(__name__)

POLL_S = 2.0
"""How often the certificate files are checked for a change."""


def _mark(paths: list[str]) -> tuple[object, ...]:
    marks: list[object] = []
    for path in paths:
        real = os.path.realpath(path)
        st = os.stat(real)
        marks += [real, st.st_ino, st.st_mtime_ns, st.st_size]
    return tuple(marks)


class ServingCert:
    """The door's certificate and key, reloaded from disk when they change."""

    def __init__(self, settings: config.DoorSettings) -> None:
        self.cert_file = settings.cert_file
        self.key_file = settings.key_file or None
        self.paths = [p for p in (settings.cert_file, settings.key_file) if p]
        self.ciphers = settings.tls_ciphers
        self.mark: tuple[object, ...] | None = None
        self.current: ssl.SSLContext | None = None
        self.server_context = self._bare()
        self.server_context.sni_callback = self._choose
        self.waiting_logged = False

    def _bare(self) -> ssl.SSLContext:
        """A server context with the door's protocol settings (the listener's and each loaded one share them)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.ciphers:
            context.set_ciphers(self.ciphers)
        return context

    def _context(self) -> ssl.SSLContext:
        context = self._bare()
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def _choose(self, conn: ssl.SSLObject, _server_name: str | None, _context: ssl.SSLContext) -> None:
        """Called for every handshake, with or without SNI: it gets the newest good certificate."""
        if self.current is not None:
            conn.context = self.current

    def reload(self) -> bool:
        """Load the files if they changed; True when a new certificate is now in use."""
        try:
            mark = _mark(self.paths)
            if mark == self.mark:
                return False
            context = self._context()
        except (OSError, ssl.SSLError) as exc:
            if self.current is None and not self.waiting_logged:
                log.info("door waits for its serving certificate file=%s error=%s", self.cert_file, exc)
                self.waiting_logged = True
            elif self.current is not None:
                log.warning("serving certificate changed but cannot be loaded yet error=%s", exc)
            return False
        if self.current is None:
            # The listener's own context answers too (before the callback swaps it in): give it the pair.
            self.server_context.load_cert_chain(self.cert_file, self.key_file)
        else:
            log.info("serving certificate reloaded; new connections use it, open ones keep theirs")
        self.mark, self.current = mark, context
        return True


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)


class InterfaceError(RuntimeError):
    """The door's interface could not be set up; the message carries what `ip` said."""


def interface_up(settings: config.DoorSettings) -> None:
    """Create the door's interface with its address (idempotent: one left by a crash is reused)."""
    name = settings.interface
    prefix = 128 if ipaddress.ip_address(settings.address).version == 6 else 32
    if _ip("link", "show", "dev", name).returncode != 0:
        made = _ip("link", "add", name, "type", "dummy")
        if made.returncode != 0:
            made = _ip("link", "add", name, "type", "ifb")  # kernels built without dummy links
        if made.returncode != 0:
            raise InterfaceError(f"cannot create interface {name}: {made.stderr.strip()}")
    for step in (
        ("address", "replace", f"{settings.address}/{prefix}", "dev", name),
        ("link", "set", "dev", name, "up"),
    ):
        done = _ip(*step)
        if done.returncode != 0:
            raise InterfaceError(f"ip {' '.join(step)}: {done.stderr.strip()}")
    log.info("door interface up name=%s address=%s", name, settings.address)


def interface_down(settings: config.DoorSettings) -> None:
    done = _ip("link", "del", "dev", settings.interface)
    if done.returncode != 0:
        log.warning("cannot remove interface name=%s error=%s", settings.interface, done.stderr.strip())
    else:
        log.info("door interface removed name=%s", settings.interface)
