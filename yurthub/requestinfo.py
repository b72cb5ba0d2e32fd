"""What a request to the Kubernetes API asks for, parsed from its method, path, query and User-Agent.

Pure: no I/O. Follows kube-apiserver's own `RequestInfoFactory` (k8s.io/apiserver, endpoints/request), so
online yurthub forwards every path shape the apiserver itself accepts and classifies it the way the
apiserver's authorizer sees it:

- `/api/VERSION/...` (groupless) and `/apis/GROUP/VERSION/...`; anything shorter (`/api`, `/api/v1`, `/apis`,
  `/apis/GROUP`, `/apis/GROUP/VERSION`) and anything outside those prefixes (`/version`, `/openapi/v2`,
  `/healthz`, `/metrics`) is a non-resource request;
- the path-verb prefixes `watch/` and `proxy/` (the latter never has a subresource);
- `namespaces/NS/RESOURCE/...` is namespaced, while `namespaces/NAME`, `namespaces/NAME/status` and
  `namespaces/NAME/finalize` are the Namespace object itself and its two subresources;
- after the resource come its name, its subresource and any number of further segments (`pods/p/proxy/a/b`,
  `services/NAME:PORT/proxy/...`), all kept in `parts`;
- the verb from the method: GET is get, or list/watch without a name (`watch` is true unless it is `0` or
  `false`), and a list or watch with `fieldSelector=metadata.name=X` names X; DELETE without a name is
  deletecollection.

Where yurthub deliberately differs from the apiserver, it is said below (`parse`). It refuses what could make
the path it classifies differ from the path the cloud serves, or confuse a cache key or a log line:
`.`/`..` and empty segments, encoded slashes and backslashes, malformed escapes, bytes that are not UTF-8,
control characters, over-long names.
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
_API_PREFIXES = frozenset({"api", "apis"})
_GROUPLESS_PREFIXES = frozenset({"api"})
_PATH_VERBS = frozenset({"watch", "proxy"})
"""kube-apiserver's `specialVerbs`: a path segment right after the version that is the verb."""
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
_METHOD_VERBS = {"POST": "create", "GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RequestInfo:
    method: str
    path: str
    """The decoded path, without the query."""
    verb: str
    """get, list, watch, create, update, patch, delete, deletecollection, proxy; or the lower-cased method
    (non-resource requests, HEAD and methods the API does not know)."""
    is_resource: bool
    group: str = ""
    version: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    """The namespace the object lives in: empty for cluster-scoped objects, Namespaces included."""
    name: str = ""
    """The object's name from the path, or from `fieldSelector=metadata.name=X` on a list or watch."""
    parts: tuple[str, ...] = ()
    """The path from the resource on: resource, name, subresource, then any further segments (a proxy path)."""
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

    @property
    def subpath(self) -> str:
        """What follows the subresource (`a/b` in `pods/p/proxy/a/b`); empty when nothing does."""
        return "/".join(self.parts[3:])


def component_of(user_agent: str) -> str:
    return user_agent.split("/", 1)[0].strip().lower()


def parse(method: str, raw_path: str, query: Mapping[str, str], user_agent: str = "") -> RequestInfo:
    """Classify one request by kube-apiserver's rules. Raises `errors.BadRequest` for paths no honest client
    sends (see `segments`) and for a path-verb prefix with nothing after it (`/api/v1/watch`, which the
    apiserver answers with a 500).

    Deliberate differences from the apiserver's RequestInfo, none of which changes what is forwarded:
    - `namespace` of a Namespace object (`namespaces/NAME`, `namespaces/NAME/status|finalize`) is empty, not
      NAME: the field is where the object lives, which is how the cache keys it;
    - HEAD keeps the verb `head` (the apiserver authorizes it as get): a bodiless answer must never be taken
      for an object to cache; a method the API does not know keeps its lower-cased name, not "";
    - the selectors, `resourceVersion`, `timeoutSeconds` and `continue` are read for every verb (the cache
      keys lists by them); the apiserver exposes selectors only for list, watch and deletecollection.

    `query` holds one value per parameter, the first one given, as Go reads it (`dict(request.query)` does).
    """
    method = method.upper()
    path, parts = segments(raw_path)
    component = component_of(user_agent)
    non_resource = RequestInfo(method=method, path=path, component=component, verb=method.lower(), is_resource=False)
    if len(parts) < 3 or parts[0] not in _API_PREFIXES:
        return non_resource
    rest = parts[1:]
    group = ""
    if parts[0] not in _GROUPLESS_PREFIXES:
        if len(rest) < 3:
            return non_resource
        group, rest = rest[0], rest[1:]
    version, rest = rest[0], rest[1:]
    if rest[0] in _PATH_VERBS:
        if len(rest) < 2:
            raise errors.BadRequest(f"request path {path!r} names the verb {rest[0]!r} but no resource")
        verb, rest = rest[0], rest[1:]
    else:
        verb = _METHOD_VERBS.get(method, method.lower())
    namespace = ""
    # `namespaces/NS/RESOURCE/...` is namespaced; `namespaces[/NAME[/status|finalize]]` is the Namespace itself
    if rest[0] == "namespaces" and len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
        namespace, rest = rest[1], rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 and verb != "proxy" else ""
    for what, value in (("name", name), ("namespace", namespace)):
        if len(value) > MAX_NAME:
            raise errors.BadRequest(f"{what} is {len(value)} characters long; Kubernetes allows {MAX_NAME}")
    if not name and verb == "get":
        verb = "watch" if _truthy(query.get("watch")) else "list"
        name = selected_name(query.get("fieldSelector", ""))
    elif not name and verb == "delete":
        verb = "deletecollection"
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
        parts=tuple(rest),
        label_selector=query.get("labelSelector", ""),
        field_selector=query.get("fieldSelector", ""),
        resource_version=query.get("resourceVersion", ""),
        timeout_seconds=int(timeout) if timeout.isdigit() else None,
        paged=bool(query.get("continue")),
    )


def segments(raw_path: str) -> tuple[str, list[str]]:
    """The decoded path and its segments (leading and trailing slashes dropped, as the apiserver does).

    Refused, because the path yurthub classifies must be the path the cloud serves, and names end up in
    cache keys and log lines: `.` and `..` segments (an HTTP client on the way normalises them away, so the
    cloud would serve another path than the one classified), empty segments, `%2F` and `%5C` (Go decodes them
    into separators after the split is decided), a raw backslash, a `%` not followed by two hex digits (Go's
    HTTP server answers those 400 itself), escapes that are not UTF-8 (two different byte strings would meet
    in one cache key) and control characters (a newline would forge log lines). Everything else a segment may
    hold is the cloud's to judge: `:` in `NAME:PORT`, `?`, `#`, `;`, `,`, `%25`, spaces and other escapes in a
    proxy path.
    """
    if len(raw_path) > MAX_PATH:
        raise errors.BadRequest(f"request path is {len(raw_path)} bytes long; at most {MAX_PATH} are accepted")
    lowered = raw_path.lower()
    if "%2f" in lowered or "%5c" in lowered:
        raise errors.BadRequest("encoded slashes are not allowed in API paths")
    if _BAD_ESCAPE.search(raw_path):
        raise errors.BadRequest("request path has a '%' that does not start a %XX escape")
    try:
        path = unquote(raw_path, errors="strict")
    except UnicodeDecodeError:
        raise errors.BadRequest("request path escapes bytes that are not UTF-8") from None
    if not path.startswith("/"):
        raise errors.BadRequest(f"request path {path!r} is not absolute")
    if _CONTROL.search(path) or "\\" in path:
        raise errors.BadRequest(f"request path {path!r} holds a control character or a backslash")
    parts = path.strip("/").split("/") if path.strip("/") else []
    if path.startswith("//") or path.endswith("//"):
        raise errors.BadRequest(f"request path {path!r} has an empty segment")
    for part in parts:
        if part in ("", ".", ".."):
            raise errors.BadRequest(f"request path {path!r} has an invalid segment {part!r}")
    return path, parts


def selected_name(field_selector: str) -> str:
    """The name a list or watch selects with `metadata.name=X` (or `==`), as the apiserver reads it: terms
    sorted, the first exact match wins; a selector that does not parse, or a name that could not be a path
    segment (`.`, `..`, with `/` or `%`), selects no name."""
    try:
        terms = sorted(_split_terms(field_selector))
    except ValueError:
        return ""
    for term in terms:
        if not term:
            continue
        field, op, value = _split_term(term)
        if field == "metadata.name" and op in ("=", "=="):
            return value if value not in (".", "..") and "/" not in value and "%" not in value else ""
    return ""


def _split_terms(selector: str) -> list[str]:
    """Split on unescaped commas; a backslash escapes the next character."""
    terms, current, escaped = [], [], False
    for char in selector:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == ",":
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    terms.append("".join(current))
    for term in terms:
        if term:
            _split_term(term)  # raises on a term the apiserver would not parse
    return terms


def _split_term(term: str) -> tuple[str, str, str]:
    """`field`, operator, unescaped value of one term; ValueError where fields.ParseSelector fails."""
    for i in range(len(term)):
        for op in ("!=", "==", "="):
            if term.startswith(op, i):
                return term[:i], op, _unescape(term[i + len(op) :])
    raise ValueError(f"field selector term {term!r} has no operator")


def _unescape(value: str) -> str:
    out, escaped = [], False
    for char in value:
        if escaped:
            if char not in "\\,=":
                raise ValueError(f"invalid escape \\{char}")
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in ",=":
            raise ValueError(f"unescaped {char!r} in a field selector value")
        else:
            out.append(char)
    if escaped:
        raise ValueError("field selector value ends in a backslash")
    return "".join(out)


def _truthy(value: str | None) -> bool:
    """A query boolean as the apiserver converts it: present and neither `0` nor `false`."""
    return value is not None and value != "0" and value.lower() != "false"
