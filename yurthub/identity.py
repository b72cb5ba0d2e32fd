"""The node's certificates at run time: obtained by CSR (or followed on disk), rotated before they expire,
and the client session that carries the client certificate.

Client certificate, by source (`config.ClientSource`):
- csr: yurthub's own in `<root>/pki/yurthub-client-current.pem`. With none on disk it asks with the
  bootstrap token before serving (a kubeadm join); an existing file is reused as it is, expired or not, so an
  offline restart serves the cache at once. Renewed at 70-90 % of its life with its own identity (the
  controller-manager approves `selfnodeclient`); once expired, with the bootstrap token again, as kubelet
  falls back to its bootstrap kubeconfig.
- kubelet / file: the file is followed; when it changes, new requests use it.
Serving certificate (kubelet-serving signer): asked for with the node identity and written to
`<root>/pki/yurthub-server-current.pem`, which the HTTPS door reloads. Nobody approves it by default: the
log names the CSR and who must approve it, and the plain port serves meanwhile.

A new client certificate gets a new session for new requests; the old session stays open for
`OLD_SESSION_GRACE_S`, so watches already open through it go on undisturbed.

Bootstrap token: from `--join-token-file` it is read when needed, off the event loop, and read again only
when the file's (inode, mtime, size) changed, so an operator can replace a token before it expires; a file
gone bad keeps the last good token and is reported once. Every file read, `stat` and SSL context built here
runs in a worker thread (`asyncio.to_thread`): a slow disk never stalls the proxy sharing this loop.

Offline grace: nothing here gates serving. An expired certificate makes the cloud answer 401, which the
health prober counts as unreachable, so the cache answers (OpenYurt answers 503 to everything instead), while
`step` keeps asking for a new certificate with backoff capped at 16 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import random
import socket
import ssl
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from yurthub import certificate, config, metrics, proxy
from yurthub.certificate import Kind

log = logging.getLogger(__name__)
CSR_PATH = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
OLD_SESSION_GRACE_S = 900.0
SERVING_DENIED_RETRY_S = 300.0


class NoCredentials(Exception):
    """Nothing to authenticate a request with: no valid client certificate and no bootstrap token."""


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclasses.dataclass
class Slot:
    """One certificate: what is installed, what has been asked for, and when to act next."""

    kind: Kind
    path: Path
    source: config.ClientSource
    summary: certificate.Summary | None = None
    deadline: datetime.datetime | None = None
    """When to ask for the next one (None: someone else rotates it)."""
    pending: str = ""
    """Name of the CSR waiting for approval or signing."""
    pending_key: bytes = b""
    attempts: int = 0
    next_try: float = 0.0
    """Monotonic time before which nothing is sent for this slot."""
    rotations: int = 0
    problem: str = ""
    """The last failure, logged when it changes, not on every retry."""
    mark: tuple[object, ...] = ()

    def report(self, at: datetime.datetime) -> dict[str, Any]:
        s = self.summary
        return {
            "source": self.source.value,
            "file": str(self.path),
            "subject": s.subject if s else None,
            "notAfter": s.not_after.strftime("%Y-%m-%dT%H:%M:%SZ") if s else None,
            "expired": s.expired(at) if s else None,
            "renewAfter": self.deadline.strftime("%Y-%m-%dT%H:%M:%SZ") if self.deadline else None,
            "pendingCSR": self.pending or None,
            "rotations": self.rotations,
            "problem": self.problem or None,
        }


def _fingerprint(paths: list[str]) -> tuple[object, ...]:
    """What changes when kubelet rotates its certificate: the file the symlink points at, its inode, mtime,
    size. Blocking: called at start or in a worker thread."""
    marks: list[object] = []
    for path in paths:
        real = os.path.realpath(path)
        st = os.stat(real)
        marks += [real, st.st_ino, st.st_mtime_ns, st.st_size]
    return tuple(marks)


class Identity:
    def __init__(self, settings: config.HubSettings, stats: metrics.Metrics, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.ids = settings.identity
        self.stats = stats
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrecy
        self.client = Slot(Kind.CLIENT, Path(self.ids.client_file), self.ids.client_source)
        self.serving: Slot | None = None
        if self.ids.serving_cert:
            self.serving = Slot(Kind.SERVING, Path(self.ids.serving_file), config.ClientSource.CSR)
        self.retired: list[tuple[float, aiohttp.ClientSession]] = []
        self._token = self.ids.bootstrap_token
        self._token_mark: tuple[int, int, int] | None = None
        self._token_problem = ""
        self._ca_tls: ssl.SSLContext | None = None
        self._load()

    # ---- files -------------------------------------------------------------------------------------------

    def _load(self) -> None:
        """Take what is on disk; a CSR-mode file's life is counted from its mtime (when it was obtained)."""
        for slot in self.slots:
            if slot.source is config.ClientSource.CSR:
                try:
                    pair = certificate.read_pair(slot.path)
                except certificate.CertificateError as exc:
                    log.warning("ignoring an unusable %s certificate file, asking anew: %s", slot.kind.value, exc)
                    pair = None
                if pair is not None:
                    obtained = datetime.datetime.fromtimestamp(slot.path.stat().st_mtime, datetime.UTC)
                    self._install(slot, certificate.summarize(pair[0]), obtained)
            else:
                slot.summary = certificate.summarize(Path(self.ids.client_cert).read_bytes())
                slot.mark = _fingerprint(self._client_paths())

    def _client_paths(self) -> list[str]:
        if self.client.source is config.ClientSource.CSR:
            return [str(self.client.path)]
        return [p for p in (self.ids.client_cert, self.ids.client_key) if p]

    @property
    def slots(self) -> list[Slot]:
        return [self.client] if self.serving is None else [self.client, self.serving]

    def _install(self, slot: Slot, summary: certificate.Summary, obtained: datetime.datetime) -> None:
        slot.summary = summary
        slot.deadline = certificate.rotation_deadline(summary, obtained, certificate.jitter_fraction(self.rng))
        slot.attempts, slot.next_try, slot.problem = 0, 0.0, ""

    def node_tls(self) -> ssl.SSLContext:
        """A client context with the node certificate. Blocking (reads files): at start or in a thread."""
        ctx = ssl.create_default_context(cafile=self.ids.ca_file)
        if self.client.source is config.ClientSource.CSR:
            ctx.load_cert_chain(str(self.client.path))
        else:
            ctx.load_cert_chain(self.ids.client_cert, self.ids.client_key or None)
        return ctx

    def client_valid(self, at: datetime.datetime) -> bool:
        return self.client.summary is not None and not self.client.summary.expired(at)

    async def bootstrap_token(self) -> str:
        """The bootstrap token now: the flag's, or the token file's, read in a thread only when the file
        changed. A file that went bad keeps the last good token ("" if there never was one), reported once."""
        path = self.ids.bootstrap_token_file
        if not path:
            return self._token
        mark = self._token_mark

        def read() -> tuple[str, tuple[int, int, int]] | None:
            if mark is not None:
                st = os.stat(path)
                if (st.st_ino, st.st_mtime_ns, st.st_size) == mark:
                    return None
            return config.read_token_file(path)

        try:
            got = await asyncio.to_thread(read)
        except (config.ConfigError, OSError) as exc:
            problem = str(exc) if isinstance(exc, config.ConfigError) else f"--join-token-file {path}: {exc.strerror}"
            if problem != self._token_problem:
                log.warning(
                    "cannot use the bootstrap token file, %s: %s",
                    "keeping the last good token" if self._token else "no token",
                    problem,
                )
                self._token_problem = problem
            return self._token
        if got is not None:
            if self._token_mark is not None and got[0] != self._token:
                log.info("bootstrap token file changed; the new token is used from now on file=%s", path)
            self._token, self._token_mark, self._token_problem = got[0], got[1], ""
        return self._token

    async def _ca_context(self) -> ssl.SSLContext:
        """A context that trusts the apiserver's CA, with no client certificate (built once, in a thread)."""
        if self._ca_tls is None:
            self._ca_tls = await asyncio.to_thread(ssl.create_default_context, cafile=self.ids.ca_file)
        return self._ca_tls

    # ---- the cloud ---------------------------------------------------------------------------------------

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, node_only: bool = False
    ) -> tuple[int, dict[str, Any]]:
        """One API call with the node identity while it is valid, else (or on 401) the bootstrap token.

        Servers are tried in order; raises `OSError`-like errors only when none answered."""
        token = "" if node_only else await self.bootstrap_token()
        attempts: list[str | None] = []  # a token, or None: with the node certificate
        if self.client_valid(now()):
            attempts.append(None)
        if token:
            attempts.append(token)
        if not attempts:
            raise NoCredentials("no valid client certificate" + ("" if node_only else " and no bootstrap token"))
        answer: tuple[int, dict[str, Any]] = (0, {})
        for with_token in attempts:
            answer = await self._call_as(method, path, body, with_token)
            if answer[0] != 401:
                break
        return answer

    async def _call_as(
        self, method: str, path: str, body: dict[str, Any] | None, token: str | None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Accept": "application/json", "User-Agent": "yurthub/identity"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
            ctx = await self._ca_context()
        else:
            ctx = await asyncio.to_thread(self.node_tls)
        last: BaseException | None = None
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
            for server in self.settings.cloud.servers:
                try:
                    async with asyncio.timeout(min(10.0, self.settings.cloud.request_timeout_s)):
                        async with session.request(
                            method, server + path, json=body, headers=headers, allow_redirects=False
                        ) as resp:
                            raw = await resp.read()
                            try:
                                doc = json.loads(raw) if raw else {}
                            except ValueError:
                                doc = {"message": raw[:200].decode(errors="replace")}
                            return resp.status, doc if isinstance(doc, dict) else {}
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    last = exc
        raise ConnectionError(f"no cloud server answered: {type(last).__name__}: {last}")

    # ---- one step ----------------------------------------------------------------------------------------

    async def step(self, hub: proxy.Hub) -> None:
        """Everything due now: follow files, ask for certificates, look at pending requests, publish metrics."""
        self._close_retired(hub)
        if self.client.source is config.ClientSource.CSR:
            changed = await self._advance(self.client)
        else:
            changed = await self.follow_file()
        if changed:
            await self.swap_session(hub)
        if self.serving is not None and self.client_valid(now()):
            await self._advance(self.serving)
        self.publish()

    async def obtain_client(self, stop: asyncio.Event) -> None:
        """Before serving in CSR mode with nothing on disk: ask until a client certificate is issued (or
        `stop` is set)."""
        while self.client.summary is None and not stop.is_set():
            await self._advance(self.client)
            if self.client.summary is None:
                pause = max(0.2, min(self.ids.csr_poll_s, self.client.next_try - time.monotonic()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)

    async def _advance(self, slot: Slot) -> bool:
        """Move `slot` on by at most one request; True when a new certificate was installed."""
        if time.monotonic() < slot.next_try:
            return False
        at = now()
        try:
            if slot.pending:
                return await self._poll(slot)
            if slot.summary is None or (slot.deadline is not None and at >= slot.deadline):
                await self._submit(slot)
                return await self._poll(slot) if slot.pending else False
        except (ConnectionError, NoCredentials, ssl.SSLError, OSError, certificate.CertificateError) as exc:
            self._failed(slot, f"{type(exc).__name__}: {exc}")
        return False

    async def _submit(self, slot: Slot) -> None:
        node = self.settings.node_name
        ips: tuple[str, ...] = ()
        dns: tuple[str, ...] = ()
        if slot.kind is Kind.SERVING:
            ips, dns = await self._serving_names()
        made = await run_helper({"op": "request", "node": node, "kind": slot.kind.value, "ips": ips, "dns": dns})
        key, request = made["key"].encode(), made["csr"].encode()
        name = certificate.csr_name(node, slot.kind)
        body = certificate.csr_object(name, request, slot.kind)
        code, doc = await self._call("POST", CSR_PATH, body, node_only=slot.kind is Kind.SERVING)
        if code not in (200, 201):
            self._failed(slot, f"creating CSR {name} answered {code}: {doc.get('message', '')}")
            return
        slot.pending, slot.pending_key = name, key
        if slot.kind is Kind.SERVING:
            log.warning(
                "waiting for approval of the serving certificate csr=%s signer=%s: yurt-manager approves it, or an "
                "admin with 'kubectl certificate approve %s'; the plain port serves meanwhile",
                name,
                slot.kind.signer,
                name,
            )
        else:
            log.info("asked for a client certificate csr=%s signer=%s", name, slot.kind.signer)

    async def _poll(self, slot: Slot) -> bool:
        code, doc = await self._call("GET", f"{CSR_PATH}/{slot.pending}", node_only=slot.kind is Kind.SERVING)
        if code == 404:
            self._failed(slot, f"CSR {slot.pending} is gone")
            slot.pending = ""
            return False
        if code != 200:
            self._failed(slot, f"reading CSR {slot.pending} answered {code}: {doc.get('message', '')}")
            return False
        state, issued, message = certificate.csr_outcome(doc)
        if state is certificate.CsrState.PENDING:
            slot.next_try = time.monotonic() + self.ids.csr_poll_s
            return False
        name, slot.pending = slot.pending, ""
        if state is not certificate.CsrState.ISSUED:
            self._failed(slot, f"CSR {name} {state.value}: {message}")
            if slot.kind is Kind.SERVING:
                slot.next_try = time.monotonic() + SERVING_DENIED_RETRY_S
            return False
        try:
            combined = await run_helper({"op": "combine", "cert": issued.decode(), "key": slot.pending_key.decode()})
            if "error" in combined:
                raise certificate.CertificateError(combined["error"])
            data = combined["pem"].encode()
            summary = certificate.summarize(issued)
        except (ValueError, certificate.CertificateError) as exc:
            self._failed(slot, f"CSR {name}: the signed certificate is unusable: {exc}")
            return False
        await asyncio.to_thread(certificate.write_private, slot.path, data)
        replaced = slot.summary is not None
        self._install(slot, summary, now())
        slot.pending_key = b""
        if replaced:
            slot.rotations += 1
            self.stats.cert_rotations.labels(slot.kind.value).inc()
        log.info(
            "got a %s certificate csr=%s subject=%s notAfter=%s renewAfter=%s",
            slot.kind.value,
            name,
            summary.subject,
            summary.not_after.isoformat(),
            slot.deadline.isoformat() if slot.deadline else "-",
        )
        return True

    def _failed(self, slot: Slot, problem: str) -> None:
        slot.attempts += 1
        slot.next_try = time.monotonic() + certificate.retry_delay(slot.attempts)
        if problem != slot.problem:
            log.warning("cannot get a %s certificate yet, retrying: %s", slot.kind.value, problem)
            slot.problem = problem

    async def _serving_names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The door's address(es) and the node IP, and no DNS name: pods reach the door at its address
        (kubelet hands them `KUBERNETES_SERVICE_HOST` = the door). Never loopback, the `kubernetes`
        Service's ClusterIP or its names: a node certificate for those could impersonate the apiserver, and
        yurt-manager does not approve them by default."""
        ips = list(self.ids.serving_ip_addresses)
        ips.append(self.ids.node_ip or await asyncio.to_thread(_route_address, self.settings.cloud.servers[0]))
        return tuple(i for i in dict.fromkeys(ips) if i), ()

    # ---- sessions and files ------------------------------------------------------------------------------

    async def swap_session(self, hub: proxy.Hub) -> None:
        """New requests use the new client certificate; the old session lives on for open streams."""
        try:
            node_tls = await asyncio.to_thread(self.node_tls)
        except (OSError, ssl.SSLError) as exc:
            log.warning("client certificate changed but cannot be loaded yet error=%s", exc)
            return
        self.retired.append((time.monotonic() + OLD_SESSION_GRACE_S, hub.node_session))
        hub.node_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=node_tls, limit=0))
        log.info("client certificate replaced; new requests use it, open streams keep theirs")

    async def follow_file(self) -> bool:
        """Take a client certificate file someone else rotated (kubelet / file source); True when it changed.
        The check (`stat`) and the read run in a worker thread."""
        paths, cert, known = self._client_paths(), self.ids.client_cert, self.client.mark

        def look() -> tuple[tuple[object, ...], certificate.Summary] | None:
            mark = _fingerprint(paths)
            if mark == known:
                return None
            return mark, certificate.summarize(Path(cert).read_bytes())

        try:
            found = await asyncio.to_thread(look)
        except (OSError, certificate.CertificateError) as exc:
            log.warning("client certificate changed but cannot be read yet error=%s", exc)
            return False
        if found is None:
            return False
        self.client.mark, self.client.summary = found
        self.client.rotations += 1
        self.stats.cert_rotations.labels(Kind.CLIENT.value).inc()
        return True

    def _close_retired(self, hub: proxy.Hub) -> None:
        mono = time.monotonic()
        while self.retired and self.retired[0][0] <= mono:
            _, old = self.retired.pop(0)
            hub.spawn_close(old)

    async def close(self) -> None:
        for _, old in self.retired:
            await old.close()
        self.retired.clear()

    def publish(self) -> None:
        at = now()
        for slot in self.slots:
            if slot.summary is not None:
                left = (slot.summary.not_after - at).total_seconds()
                self.stats.cert_expiry.labels(slot.kind.value).set(left)
            self.stats.cert_pending.labels(slot.kind.value).set(1 if slot.pending else 0)

    def report(self) -> dict[str, Any]:
        at = now()
        return {slot.kind.value: slot.report(at) for slot in self.slots}


def _route_address(server: str) -> str:
    """The local address this node reaches `server` from (a UDP connect sends no packet)."""
    host = urlsplit(server).hostname or ""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((host, 443))
            return str(sock.getsockname()[0])
    except OSError:
        return ""


HELPER_TIMEOUT_S = 60.0


async def run_helper(request: dict[str, Any]) -> dict[str, str]:
    """Ask the certificate helper, in a child process, to make a key and request or combine a pair
    (`certificate.helper`: `cryptography` is loaded there, never in the hub). The key travels only
    through the child's pipes. A helper that fails raises `CertificateError` with the end of what it said."""
    child = await asyncio.create_subprocess_exec(
        *certificate.helper_command(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(HELPER_TIMEOUT_S):
            out, err = await child.communicate(json.dumps(request).encode())
    except BaseException as exc:  # timed out, or this task was cancelled (yurthub stopping): no child left
        if child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()
        if isinstance(exc, TimeoutError):
            message = f"the certificate helper gave no answer in {HELPER_TIMEOUT_S:g}s"
            raise certificate.CertificateError(message) from None
        raise
    if child.returncode != 0:
        said = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit status {child.returncode}"]
        raise certificate.CertificateError(f"the certificate helper failed: {said[0][:300]}")
    answer: dict[str, str] = json.loads(out)
    return answer


async def run(hub: proxy.Hub, identity: Identity) -> None:
    while True:
        await identity.step(hub)
        await asyncio.sleep(1)
