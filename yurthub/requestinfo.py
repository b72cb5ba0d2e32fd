"""What a request to the Kubernetes API asks for, parsed from its method, path, query and User-Agent.

Pure: no I/O. Follows kube-apiserver's own RequestInfo rules (`/api/v1/...`, `/apis/<group>/<version>/...`,
the `namespaces` special case, `?watch=true`), and refuses paths that could confuse a cache key: `.`/`..`
segments, encoded slashes, empty segments, over-long names.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from urllib.parse import unquote

from yurthub import errors

MAX_NAME = 253
"""Longest object name Kubernetes accepts (DNS subdomain)."""
MAX_PATH = 4096
_SEGMENT = re.compile(r"^[A-Za-z0-9._:~@+=-]+$")
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RequestInfo:
    method: str
    path: str
    verb: str
    """get, list, watch, create, update, patch, delete, deletecollection; or the lower-cased method."""
    is_resource: bool
    group: str = ""
    version: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    label_selector: str = ""
    field_selector: str = ""
    resource_version: str = ""
    timeout_seconds: int | None = None
    paged: bool = False
    """The request asks for a page (`limit` with a `continue` token): never a whole list."""
    component: str = ""
    """The client program, from the User-Agent up to the first `/`, lower-cased (`kubelet`)."""

    @property
    def gvr(self) -> str:
        """`resource.version.group` (core group spelled `core`), a stable name for the resource type."""
        return f"{self.resource}.{self.version}.{self.group or 'core'}"


def component_of(user_agent: str) -> str:
    return user_agent.split("/", 1)[0].strip().lower()


def parse(method: str, raw_path: str, query: Mapping[str, str], user_agent: str = "") -> RequestInfo:
    """Classify one request. Raises `errors.BadRequest` for paths no honest client sends."""
    method = method.upper()
    if len(raw_path) > MAX_PATH:
        raise errors.BadRequest(f"request path is {len(raw_path)} bytes long; at most {MAX_PATH} are accepted")
    if "%2f" in raw_path.lower() or "%5c" in raw_path.lower():
        raise errors.BadRequest("encoded slashes are not allowed in API paths")
    path = unquote(raw_path)
    if not path.startswith("/"):
        raise errors.BadRequest(f"request path {path!r} is not absolute")
    parts = path.split("/")[1:]
    if parts and parts[-1] == "":
        parts = parts[:-1]
    for part in parts:
        if part in ("", ".", "..") or not _SEGMENT.match(part):
            raise errors.BadRequest(f"request path {path!r} has an invalid segment {part!r}")
    component = component_of(user_agent)
    non_resource = RequestInfo(method=method, path=path, component=component, verb=method.lower(), is_resource=False)
    if len(parts) < 2 or parts[0] not in ("api", "apis"):
        return non_resource
    if parts[0] == "api":
        group, rest = "", parts[1:]
    else:
        if len(parts) < 3:
            return non_resource
        group, rest = parts[1], parts[2:]
    version, rest = rest[0], rest[1:]
    if not rest:
        return non_resource
    watch = False
    if rest[0] == "watch":  # the deprecated /watch/ path prefix
        watch, rest = True, rest[1:]
    namespace = ""
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    elif len(rest) >= 2 and rest[0] == "namespaces":
        rest = ["namespaces", rest[1]]
    if not rest or len(rest) > 3:
        raise errors.BadRequest(f"request path {path!r} does not name a resource")
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    if resource == "namespaces" and len(rest) >= 2:
        namespace = ""
    for what, value in (("name", name), ("namespace", namespace)):
        if len(value) > MAX_NAME:
            raise errors.BadRequest(f"{what} is {len(value)} characters long; Kubernetes allows {MAX_NAME}")
    watch = watch or query.get("watch", "").lower() in ("true", "1")
    if method == "GET":
        verb = "watch" if watch else ("get" if name else "list")
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = _VERBS.get(method, method.lower())
    timeout = query.get("timeoutSeconds", "")
    return RequestInfo(
        method=method,
        path=path,
        component=component,
        verb=verb,
        is_resource=True,
        group=group,
        version=version,
        resource=resource,
        subresource=subresource,
        namespace=namespace,
        name=name,
        label_selector=query.get("labelSelector", ""),
        field_selector=query.get("fieldSelector", ""),
        resource_version=query.get("resourceVersion", ""),
        timeout_seconds=int(timeout) if timeout.isdigit() else None,
        paged=bool(query.get("continue")),
    )
