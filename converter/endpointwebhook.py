"""yurt-manager's endpoint admission webhook: an HTTPS server (aiohttp, on a thread of its own) answering the
apiserver's AdmissionReview v1 for EndpointSlices and Endpoints with a JSON Patch that keeps the endpoints of
pods on autonomous, unreachable nodes ready (`converter.continuity` decides).

Contract with the apiserver:
- `POST /mutate-endpointslices` and `POST /mutate-endpoints`, body an `admission.k8s.io/v1` AdmissionReview;
  the answer is always `allowed: true` (this webhook changes, it never refuses), with a `JSONPatch` when
  something is kept. A body that is not an AdmissionReview gets a 400 `Status`.
- The Nodes and Pods it decides from are the apiserver's own, read through `Facts` (yurt-manager's informer
  copies, or the apiserver directly); from the admitted object it takes only which endpoint names which pod.
  So a caller other than the apiserver learns nothing and changes nothing, and a forged object gets ready
  only what is truly a ready pod on an autonomous, unreachable node (see `continuity.keep`).
- When the facts cannot be read the answer is "allowed, unchanged": the stock behaviour, as the
  configuration's `failurePolicy: Ignore` gives when yurt-manager is down.

TLS: the serving certificate comes from the Secret `servingcert` describes; `Webhook` keeps it (reads it at
start and every `upkeep_s`, writes a new one when `servingcert.wanted` says so) and loads it into the live
`ssl.SSLContext`, so new connections get a renewed certificate without a restart. The server starts once the
first certificate is in; until then yurt-manager runs without it (the apiserver ignores the failed call).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import datetime
import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from aiohttp import web

from converter import access, continuity, errors, servingcert, tolerations

log = logging.getLogger(__name__)

PORT = 10273
SLICES_PATH = "/mutate-endpointslices"
ENDPOINTS_PATH = "/mutate-endpoints"
MAX_BODY = 3 * 1024 * 1024
"""Larger than the biggest object etcd stores (1.5 MiB) wrapped in a review with its old object."""
NODES = "/api/v1/nodes"
PODS = "/api/v1/pods"


class Facts(Protocol):
    def nodes(self) -> Mapping[str, access.Obj]: ...
    def pods_on(self, nodes: set[str]) -> Mapping[continuity.PodKey, access.Obj]: ...
    def node(self, name: str) -> access.Obj | None:
        """The Node as the apiserver holds it right now (not a copy that may be a moment behind)."""
        ...


class ReadFacts:
    """Facts from a `read(path)` that lists a collection (yurt-manager's informer copies when it watches) and
    a `get(path)` that reads one object from the apiserver."""

    def __init__(
        self, read: Callable[[str], list[access.Obj]], get: Callable[[str], access.Obj | None] | None = None
    ) -> None:
        self.read = read
        self.get = get

    def node(self, name: str) -> access.Obj | None:
        if self.get is None:
            return self.nodes().get(name)
        return self.get(f"{NODES}/{name}")

    def nodes(self) -> Mapping[str, access.Obj]:
        return {str(n["metadata"]["name"]): n for n in self.read(NODES)}

    def pods_on(self, nodes: set[str]) -> Mapping[continuity.PodKey, access.Obj]:
        return {
            (str(p["metadata"].get("namespace", "")), str(p["metadata"]["name"])): p
            for p in self.read(PODS)
            if (p.get("spec") or {}).get("nodeName") in nodes
        }


def decide(resource: str, obj: access.Obj, facts: Facts, now: float) -> list[access.Obj]:
    """The JSON Patch for an admitted EndpointSlice (`resource` "endpointslices") or Endpoints.

    Nodes come from the copies, except an autonomous node the copy shows Ready while one of its endpoints is
    not ready: that node is read again from the apiserver, since the lifecycle controller writes the node
    before it marks the pods, and a copy a moment behind must not let the pod go."""
    if resource == "endpointslices":
        endpoints = obj.get("endpoints") or []
        targets = [
            t for i, t in continuity.slice_targets(obj) if (endpoints[i].get("conditions") or {}).get("ready") is False
        ]
    else:
        targets = [t for _, field, _, t in continuity.endpoints_targets(obj) if field == "notReadyAddresses"]
    if not targets:
        return []
    nodes = dict(facts.nodes())
    for name in sorted({t.node for t in targets}):
        cached = nodes.get(name)
        if tolerations.autonomy_of(cached) is not None and not continuity.unreachable(cached):
            fresh = facts.node(name)
            if fresh is not None:
                nodes[name] = fresh
    keeping = continuity.candidate_nodes(targets, nodes, now)
    if not keeping:
        return []
    pods = facts.pods_on(keeping)
    if resource == "endpointslices":
        return continuity.admit_slice(obj, nodes, pods, now)
    return continuity.admit_endpoints(obj, nodes, pods, now)


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason}
    return web.json_response({**body, "message": message}, status=code)


FACTS: web.AppKey[Facts] = web.AppKey("facts", Facts)
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
ADMITTED: web.AppKey[Callable[[str, int], None]] = web.AppKey("admitted")


def _review_handler(resource: str, kind: str) -> Callable[[web.Request], Any]:
    async def handle(request: web.Request) -> web.Response:
        try:
            review = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _status(400, "BadRequest", "the body is not JSON: send an admission.k8s.io/v1 AdmissionReview")
        req = review.get("request") if isinstance(review, dict) else None
        if (
            not isinstance(req, dict)
            or review.get("apiVersion") != "admission.k8s.io/v1"
            or review.get("kind") != "AdmissionReview"
            or not isinstance(req.get("uid"), str)
        ):
            return _status(400, "BadRequest", "expected an admission.k8s.io/v1 AdmissionReview with a request uid")
        response: access.Obj = {"uid": req["uid"], "allowed": True}
        obj = req.get("object")
        if isinstance(obj, dict) and obj.get("kind") == kind and req.get("operation") in ("CREATE", "UPDATE"):
            app = request.app
            try:
                ops = await asyncio.to_thread(decide, resource, obj, app[FACTS], app[CLOCK]())
            except errors.ConverterError as exc:
                log.warning("endpoint review left unchanged resource=%s error=%s", resource, exc)
                ops = []
            if ops:
                response["patchType"] = "JSONPatch"
                response["patch"] = base64.b64encode(json.dumps(ops).encode()).decode()
                meta = obj.get("metadata") or {}
                log.info(
                    "endpoints kept ready resource=%s object=%s/%s changes=%d",
                    resource,
                    meta.get("namespace", ""),
                    meta.get("name", ""),
                    len(ops),
                )
            app[ADMITTED](resource, len(ops))
        return web.json_response({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})

    return handle


def make_app(
    facts: Facts,
    clock: Callable[[], float] = time.time,
    admitted: Callable[[str, int], None] = lambda resource, changes: None,
) -> web.Application:
    """The webhook's routes (plain `web.Application`, so tests can serve it however they like)."""
    app = web.Application(client_max_size=MAX_BODY)
    app[FACTS] = facts
    app[CLOCK] = clock
    app[ADMITTED] = admitted
    app.router.add_post(SLICES_PATH, _review_handler("endpointslices", "EndpointSlice"))
    app.router.add_post(ENDPOINTS_PATH, _review_handler("endpoints", "Endpoints"))
    return app


def load_in_memory(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """Load a certificate and key into `context` from an anonymous memory file: the key never touches a file
    system (`ssl` loads only from a path; `/proc/self/fd/N` of a memfd is one only this process can open)."""
    fd = os.memfd_create("webhook-serving-pair", os.MFD_CLOEXEC)
    try:
        view = memoryview(cert + b"\n" + key)
        while view:
            view = view[os.write(fd, view) :]
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def _decoded(secret: access.Obj) -> dict[str, bytes]:
    out = {}
    for k, v in (secret.get("data") or {}).items():
        try:
            out[k] = base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            continue
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    host: str
    port: int
    names: tuple[str, ...]
    """The names and addresses the apiserver reaches the webhook by (in the serving certificate)."""
    namespace: str = "kube-system"
    secret: str = "yurt-manager-webhook-certs"  # noqa: S105 - a Secret's name
    upkeep_s: float = 300.0
    """How often the Secret is read again (a renewal by another replica is picked up within this)."""


class Webhook:
    """The serving certificate's upkeep and the HTTPS server, on two daemon threads."""

    def __init__(self, api: access.Api, settings: Settings, admitted: Callable[[str, int], None]) -> None:
        """`admitted(resource, changes)` is called after each review answered."""
        self.api = api
        self.settings = settings
        self.facts: Facts = ReadFacts(api.list, api.get)
        self.admitted = admitted
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._material: servingcert.Material | None = None
        self._lock = threading.Lock()
        self.serving = threading.Event()
        """Set once the server listens."""
        self.port = 0
        self._stop: Callable[[], None] = lambda: None
        self._missing_told = False

    @property
    def _path(self) -> str:
        return f"/api/v1/namespaces/{self.settings.namespace}/secrets/{self.settings.secret}"

    def ca(self) -> bytes | None:
        """The CA certificate the apiserver must trust (the configuration's caBundle), once known."""
        with self._lock:
            return self._material.ca_cert if self._material else None

    def keep_certificate(self, now: datetime.datetime | None = None) -> bool:
        """Read the Secret, renew what `servingcert.wanted` says (under its resourceVersion), load the result;
        whether a certificate is loaded. A Secret that does not exist (no `yurtctl convert`) is told once."""
        for _ in range(3):
            secret = self.api.get(self._path)
            if secret is None:
                if not self._missing_told:
                    log.warning(
                        "webhook certificate Secret missing secret=%s/%s; endpoints are not kept until it exists",
                        self.settings.namespace,
                        self.settings.secret,
                    )
                    self._missing_told = True
                return False
            data = _decoded(secret)
            want = servingcert.wanted(data, self.settings.names, now or datetime.datetime.now(datetime.UTC))
            if want is None:
                material = servingcert.Material(*(data[k] for k in servingcert.KEYS))
            else:
                body = dict(secret)
                body["data"] = {k: base64.b64encode(v).decode() for k, v in want.data().items()}
                try:
                    self.api.replace(self._path, body)
                except errors.Conflict:
                    continue  # another replica wrote it first: adopt theirs
                log.info(
                    "webhook serving certificate written secret=%s names=%s", self.settings.secret, self.settings.names
                )
                material = want
            self._load(material)
            return True
        return False

    def _load(self, material: servingcert.Material) -> None:
        with self._lock:
            if self._material == material:
                return
            load_in_memory(self.context, material.cert, material.key)
            self._material = material

    def _upkeep(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                ok = self.keep_certificate()
            except (errors.ConverterError, ValueError, ssl.SSLError) as exc:
                log.warning("webhook certificate upkeep failed error=%s", exc)
                ok = False
            if ok and not self.serving.is_set():
                self._serve(stopping)
            stopping.wait(self.settings.upkeep_s if ok else 5.0)

    def _serve(self, stopping: threading.Event) -> None:
        started = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            runner = web.AppRunner(make_app(self.facts, admitted=self.admitted), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, self.settings.host, self.settings.port, ssl_context=self.context)
            try:
                await site.start()
            except OSError as exc:
                failure.append(exc)
                started.set()
                await runner.cleanup()
                return
            bound = runner.addresses
            self.port = int(bound[0][1]) if bound else self.settings.port
            done = asyncio.Event()
            loop = asyncio.get_running_loop()

            def stop() -> None:
                loop.call_soon_threadsafe(done.set)

            self._stop = stop
            started.set()
            await done.wait()
            await runner.cleanup()

        thread = threading.Thread(target=lambda: asyncio.run(main()), name="yurt-manager-webhook", daemon=True)
        thread.start()
        started.wait(30)
        if failure:
            log.warning("webhook cannot listen on %s:%d error=%s", self.settings.host, self.settings.port, failure[0])
            return
        self.serving.set()
        log.info("webhook serving address=%s:%d names=%s", self.settings.host, self.port, self.settings.names)

    def start(self, stopping: threading.Event, facts: Facts | None = None) -> None:
        """Keep the certificate and serve once it is in; `facts`: where Nodes and Pods are read (default: a
        list from the apiserver per review)."""
        if facts is not None:
            self.facts = facts
        threading.Thread(target=self._upkeep, args=(stopping,), name="yurt-manager-webhook-cert", daemon=True).start()

    def stop(self) -> None:
        self._stop()
