"""kubelet's pod status writes while the cloud is away, and their delivery when it is back (the I/O shell).

`offline_patch` answers `PATCH /api/v1/namespaces/NS/pods/NAME/status` from kubelet as the cloud would: the
cached pod (kubelet's own JSON copy: `hub.AS_JSON` makes kubelet read its pods as JSON) is patched
(`podstatus`), stored in its place, answered with 200 and the whole pod as JSON, and queued in the outbox as
the pod's latest status (one entry per pod). Every cached EndpointSlice and Endpoints object, in any JSON
scope, with an endpoint that targets that pod gets the pod's addresses and readiness (`endpoints`). Held
offline watches whose view lists a changed object receive a MODIFIED event.

Trust: only kubelet on the plain port (no credentials of its own: the node's identity) from a process of a
trusted uid (`--node-uids`, `peers`; `local` checks `Admitted.node` before calling `offline_patch`, and
answers 403 otherwise) may do this, only on the status subresource, only for a pod whose cached
`spec.nodeName` is this node. A request with a pod's token (door or plain port) never gets here: `local`
refuses its writes offline.

`deliver` sends a queued status when the cloud is back: it reads the cloud's pod, drops the status when the
pod is gone (404) or is another pod by now (other uid: deleted and recreated), and otherwise patches the
status onto that very object (`podstatus.delivery_patch`, uid and resourceVersion preconditions); a 409 is
retried against a fresh read, a few times.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from yurthub import endpoints, errors, outbox, podstatus, replies, requestinfo, status, storage, wire
from yurthub.hub import Hub

log = logging.getLogger(__name__)

PODS = "pods.v1.core"
REWRITTEN = {
    "endpointslices.v1.discovery.k8s.io": endpoints.rewrite_slice,
    "endpoints.v1.core": endpoints.rewrite_endpoints,
}
DELIVERY_CONFLICT_RETRIES = 3


@dataclasses.dataclass(frozen=True)
class Changed:
    """One object the node rewrote offline, as stored in `key`'s scope."""

    scope: storage.Scope
    namespace: str
    name: str
    body: bytes


def is_offline_status_patch(info: requestinfo.RequestInfo) -> bool:
    """kubelet's pod status patch, the one write to a pod the node may make offline (see the module doc); by
    its name only: whether the sender is the node's kubelet is `Admitted.node`, checked by `local`."""
    return (
        info.component == "kubelet"
        and info.verb == "patch"
        and info.resource == "pods"
        and not info.group
        and info.subresource == "status"
        and bool(info.namespace and info.name)
    )


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _status_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods/{name}/status"


def apply_offline(
    store: storage.Storage,
    queue: Callable[[outbox.Write], None],
    node: str,
    info: requestinfo.RequestInfo,
    body: bytes,
    content_type: str,
) -> tuple[int, bytes, list[Changed]]:
    """On the writer thread: patch the cached pod, queue its status, store it and the endpoints it changes.

    Returns the answer (code and JSON body: the pod, or a Status) and the objects changed. The status is
    queued before the cache is written: a crash in between leaves the cache as it was, and kubelet, seeing
    the old status, sends its patch again (a cache showing a status that is not queued would never send it).
    A patch that changes nothing queues nothing: the apiserver answers a no-op patch with the object as is.
    """
    scope = storage.Scope(info.component, wire.Encoding.JSON, PODS)
    cached = store.get_object(scope, info.namespace, info.name)
    if cached is None:
        if store.is_deleted(info.component, PODS, info.namespace, info.name):
            return 404, _status(404, f'pods "{info.name}" not found', "NotFound"), []
        raise errors.PatchRefused(
            503, "ServiceUnavailable", f"cloud unreachable and pod {info.namespace}/{info.name} is not cached as JSON"
        )
    pod = json.loads(cached)
    if (pod.get("spec") or {}).get("nodeName") != node:
        who = f"pods {json.dumps(info.name)} is forbidden: node {json.dumps(node)}"
        message = (
            f"{who} can only update pod status for pods with spec.nodeName set to itself (answered from the cache)"  # noqa: S608 - the NodeRestriction message, not SQL
        )
        return 403, _status(403, message, "Forbidden"), []
    try:
        patched = podstatus.patch_status(pod, body, content_type)
    except errors.PatchConflict as exc:
        return 409, _status(409, str(exc), "Conflict"), []
    if patched.get("status") == pod.get("status"):
        return 200, cached, []
    meta = patched["metadata"]
    new = _dump(patched)
    key = f"pods/{info.namespace}/{info.name}"
    queue(outbox.Write("PATCH", _status_path(info.namespace, info.name), wire.JSON, new, info.component, key))
    store.put_object(scope, wire.Obj(info.namespace, info.name, meta["resourceVersion"], new))
    changed = [Changed(scope, info.namespace, info.name, new)]
    changed += rewrite_endpoints(store, node, {(info.namespace, info.name): patched})
    return 200, new, changed


def rewrite_endpoints(store: storage.Storage, node: str, pods: dict[endpoints.PodKey, dict[str, Any]]) -> list[Changed]:
    """Every JSON-cached EndpointSlice and Endpoints object made true to `pods`, stored; what changed."""
    changed: list[Changed] = []
    scopes = {(u.component, u.gvr) for u in store.usage() if u.gvr in REWRITTEN and u.encoding == wire.Encoding.JSON}
    for component, gvr in sorted(scopes):
        scope = storage.Scope(component, wire.Encoding.JSON, gvr)
        rewrite: Callable[..., dict[str, Any] | None] = REWRITTEN[gvr]
        for body in store.scope_objects(scope):
            try:
                doc = json.loads(body)
            except ValueError:
                continue
            new = rewrite(doc, node, pods)
            if new is None:
                continue
            meta = new.setdefault("metadata", {})
            rv = str(meta.get("resourceVersion", ""))
            if not rv.isdigit():
                continue  # no version after it to give the rewrite: left as the cloud sent it
            meta["resourceVersion"] = podstatus.next_version(rv)
            out = _dump(new)
            namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
            store.put_object(scope, wire.Obj(namespace, name, meta["resourceVersion"], out))
            changed.append(Changed(scope, namespace, name, out))
    return changed


def _status(code: int, message: str, reason: str) -> bytes:
    return status.body(code, message, reason)


def _queue(hub: Hub, write: outbox.Write) -> None:
    """On the writer thread: queue (replacing the pod's older status) and note the depth."""
    hub.outbox.put(write)
    hub.outbox_depth = len(hub.outbox)
    hub.metrics.outbox_depth.set(hub.outbox_depth)
    hub.metrics.outbox_dropped.set(hub.outbox.dropped)


async def offline_patch(hub: Hub, request: web.Request, info: requestinfo.RequestInfo, body: bytes) -> web.Response:
    content_type = request.headers.get("Content-Type", "")
    if podstatus.media_type(content_type) == podstatus.APPLY:
        return replies.error(503, "cloud unreachable: server-side apply of a pod status cannot be honoured offline")
    try:
        code, answer, changed = await hub.in_writer(
            apply_offline, hub.store, functools.partial(_queue, hub), hub.settings.node_name, info, body, content_type
        )
    except errors.PatchRefused as exc:
        return replies.error(exc.code, str(exc), exc.reason)
    await publish(hub, changed)
    return web.Response(status=code, body=answer, content_type=None, headers={"Content-Type": wire.JSON})


async def publish(hub: Hub, changed: list[Changed]) -> None:
    """A MODIFIED event to every held watch whose view lists a changed object."""
    for watch in list(hub.held):
        for c in changed:
            key = watch.key
            if key.scope != c.scope or (key.namespace and key.namespace != c.namespace):
                continue
            if await hub.in_writer(hub.store.is_member, key, c.namespace, c.name):
                watch.events.put_nowait(b'{"type":"MODIFIED","object":' + c.body.rstrip(b"\n") + b"}\n")


# --- delivery --------------------------------------------------------------------------------------


async def _call(
    hub: Hub, method: str, url: str, body: bytes | None = None, content_type: str = ""
) -> tuple[int, bytes]:
    headers = {"Accept": wire.JSON, "User-Agent": "kubelet/outbox"}
    if content_type:
        headers["Content-Type"] = content_type
    async with asyncio.timeout(hub.settings.cloud.request_timeout_s):
        async with hub.node_session.request(method, url, data=body, headers=headers) as resp:
            return resp.status, await resp.read()


async def deliver(hub: Hub, server: str, write: outbox.Write) -> bool:
    """Deliver one queued pod status; True when it leaves the outbox (delivered, or moot), False to keep it
    and pause (the cloud is unreachable or busy). See the module doc for the rules."""
    ours = json.loads(write.body)
    meta = ours.get("metadata") or {}
    namespace, name, uid = str(meta.get("namespace", "")), str(meta.get("name", "")), meta.get("uid")
    pod_url = f"{server}/api/v1/namespaces/{namespace}/pods/{name}"
    try:
        for _ in range(DELIVERY_CONFLICT_RETRIES):
            code, text = await _call(hub, "GET", pod_url)
            if code == 404:
                log.info("pod status dropped: the pod is gone from the cloud pod=%s/%s", namespace, name)
                await hub.in_writer(hub.store.delete_object, write.component, PODS, namespace, name)
                return True
            if code != 200:
                return _refused(code, text, namespace, name)
            cloud = json.loads(text)
            if (cloud.get("metadata") or {}).get("uid") != uid:
                log.info("pod status dropped: the pod was recreated in the cloud pod=%s/%s", namespace, name)
                return True
            patch = _dump(podstatus.delivery_patch(cloud, ours.get("status") or {}))
            code, text = await _call(hub, "PATCH", pod_url + "/status", patch, podstatus.STRATEGIC)
            if code == 200:
                obj = wire.parse_object(wire.Encoding.JSON, text)
                scope = storage.Scope(write.component, wire.Encoding.JSON, PODS)
                await hub.in_writer(hub.store.put_object, scope, obj)
                log.info("pod status delivered pod=%s/%s", namespace, name)
                return True
            if code != 409:
                return _refused(code, text, namespace, name)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        log.info("pod status delivery paused pod=%s/%s error=%s", namespace, name, type(exc).__name__)
        return False
    log.info("pod status delivery conflicted repeatedly, kept for the next round pod=%s/%s", namespace, name)
    return False


def _refused(code: int, text: bytes, namespace: str, name: str) -> bool:
    if code >= 500 or code == 429:
        return False
    log.warning("pod status refused by the cloud pod=%s/%s status=%d body=%r", namespace, name, code, text[:300])
    return True
