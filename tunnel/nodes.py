"""Which addresses belong to which node, from the Kubernetes API (list, then watch, relist on any break).

The server routes a CONNECT for `10.0.0.7:10250` to the agent of the node that has that address. Those
addresses come from Node objects only, never from what an agent says about itself (a node still writes its
own status: `routes` decides what those claims may capture). Access is a kubeconfig file or, inside a pod,
the service account; a token file is read again on every request, as projected tokens rotate. A client key
from a kubeconfig stays in memory: it reaches `ssl` through an anonymous memory file, never a file on disk.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tunnel import errors

log = logging.getLogger(__name__)
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclasses.dataclass(frozen=True)
class Node:
    addresses: tuple[str, ...]
    edge: bool
    pod_cidrs: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Access:
    server: str
    context: ssl.SSLContext
    token_file: str = ""
    token: str = ""

    def headers(self) -> dict[str, str]:
        token = Path(self.token_file).read_text().strip() if self.token_file else self.token
        return {"Authorization": f"Bearer {token}"} if token else {}


def load_access(kubeconfig: str) -> Access | None:
    """From a kubeconfig file, else from the pod's service account, else None (route by node name only)."""
    if kubeconfig:
        return _from_kubeconfig(Path(kubeconfig))
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if host and port and (SERVICE_ACCOUNT / "token").exists():
        context = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT / "ca.crt"))
        server_host = f"[{host}]" if ":" in host else host
        return Access(f"https://{server_host}:{port}", context, token_file=str(SERVICE_ACCOUNT / "token"))
    return None


def _from_kubeconfig(path: Path) -> Access:
    try:
        config: dict[str, Any] = yaml.safe_load(path.read_text())
        current = config.get("current-context") or config["contexts"][0]["name"]
        context = next(c["context"] for c in config["contexts"] if c["name"] == current)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
    except (OSError, yaml.YAMLError, KeyError, IndexError, StopIteration, TypeError) as exc:
        raise errors.ConfigError(f"cannot read kubeconfig {path}: {exc}") from exc
    base = path.parent

    def pem(key: str) -> bytes | None:
        if f"{key}-data" in cluster or f"{key}-data" in user:
            return base64.b64decode((cluster | user)[f"{key}-data"])
        name = (cluster | user).get(key)
        return (base / name).read_bytes() if name else None

    ca = pem("certificate-authority")
    ssl_context = ssl.create_default_context(cadata=ca.decode() if ca else None)
    cert, key = pem("client-certificate"), pem("client-key")
    if cert and key:
        load_pair_in_memory(ssl_context, cert + b"\n" + key)
    return Access(str(cluster["server"]).rstrip("/"), ssl_context, token=str(user.get("token", "")))


def load_pair_in_memory(context: ssl.SSLContext, pair: bytes) -> None:
    """Load a PEM certificate and key into `context` without the key ever touching a file system.

    `ssl` loads keys only from a path. An anonymous memory file (`memfd_create`) has one, `/proc/self/fd/N`,
    which only this process (and root) can open, and which vanishes with its descriptor; nothing is written
    to disk or to a temporary directory, so there is no file to create with the right mode or to remove."""
    fd = os.memfd_create("kubeconfig-client-pair", os.MFD_CLOEXEC)
    try:
        view = memoryview(pair)
        while view:
            view = view[os.write(fd, view) :]
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def node_of(obj: dict[str, Any], edge_label: str) -> tuple[str, Node]:
    metadata = obj.get("metadata", {})
    status = obj.get("status", {})
    addresses = tuple(a["address"] for a in status.get("addresses", []) if a.get("address"))
    edge = metadata.get("labels", {}).get(edge_label) == "true"
    spec = obj.get("spec", {})
    cidrs = tuple(spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []))
    return str(metadata.get("name", "")), Node(addresses, edge, cidrs)


class NodeWatch:
    """Keeps `on_list` (a full set) and `on_change` (one node, None when deleted) told about Nodes."""

    def __init__(
        self,
        access: Access,
        edge_label: str,
        on_list: Callable[[dict[str, Node]], None],
        on_change: Callable[[str, Node | None], None],
    ) -> None:
        self._access = access
        self._edge_label = edge_label
        self._on_list = on_list
        self._on_change = on_change
        self.synced = asyncio.Event()

    async def run(self) -> None:
        delay = 1.0
        connector = aiohttp.TCPConnector(ssl=self._access.context)
        async with aiohttp.ClientSession(connector=connector) as session:
            while True:
                try:
                    version = await self._list(session)
                    delay = 1.0
                    await self._watch(session, version)
                except (aiohttp.ClientError, TimeoutError, OSError, ValueError, KeyError) as exc:
                    log.warning("node watch broke, retrying error=%s retry_in_s=%.0f", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)

    async def _list(self, session: aiohttp.ClientSession) -> str:
        async with asyncio.timeout(30):
            url = f"{self._access.server}/api/v1/nodes"
            async with session.get(url, headers=self._access.headers()) as resp:
                if resp.status != 200:
                    raise ValueError(f"listing nodes answered {resp.status}: {(await resp.text())[:200]}")
                body = await resp.json()
        nodes = dict(node_of(item, self._edge_label) for item in body.get("items", []))
        self._on_list(nodes)
        if not self.synced.is_set():
            log.info("node addresses synced nodes=%d", len(nodes))
        self.synced.set()
        return str(body["metadata"]["resourceVersion"])

    async def _watch(self, session: aiohttp.ClientSession, version: str) -> None:
        url = f"{self._access.server}/api/v1/nodes?watch=1&allowWatchBookmarks=true&resourceVersion={version}"
        timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
        async with session.get(url, headers=self._access.headers(), timeout=timeout) as resp:
            if resp.status != 200:
                raise ValueError(f"watching nodes answered {resp.status}")
            buffer = b""
            async for chunk in resp.content.iter_any():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip() and not self.apply_event(json.loads(line)):
                        return

    def apply_event(self, event: dict[str, Any]) -> bool:
        """Apply one watch event; False when the watch must be restarted with a relist."""
        kind = event.get("type")
        if kind == "ERROR":
            return False
        if kind == "BOOKMARK":
            return True
        name, node = node_of(event.get("object", {}), self._edge_label)
        self._on_change(name, None if kind == "DELETED" else node)
        return True
