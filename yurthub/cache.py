"""Cache policy: what may be cached, where it goes, and how an offline answer is made from it.

Pure apart from the storage it is handed. The proxy asks `cacheable(info)` before teeing a response,
hands the finished body or each watch batch to `record_*` (and a GET the cloud answered 404 to
`record_absent`), asks `answer_read(...)` when the cloud is away, and calls `expire_idle_scopes` now and
then (with `note_use` on every request) so token scopes of pods that are gone do not stay forever.

An offline GET of an object the cache knows the cloud deleted answers the cloud's own 404 `Status`
(`not_found`), byte for byte, in the encoding the client asked for first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from yurthub import errors, storage, wire
from yurthub.requestinfo import RequestInfo

NEVER_CACHED = frozenset(
    {
        "certificatesigningrequests",
        "subjectaccessreviews",
        "selfsubjectaccessreviews",
        "localsubjectaccessreviews",
        "tokenreviews",
        "selfsubjectreviews",
        "selfsubjectrulesreviews",
    }
)
CACHED_VERBS = frozenset({"get", "list", "watch", "create", "update", "patch"})
TOKEN_SCOPE = storage.TOKEN_SCOPE
"""Prefix of the cache component of requests made with a pod's own token on the HTTPS door. A User-Agent
never yields a component with a `/`, so no client of the plain port can name one of these."""


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes


def cacheable(info: RequestInfo, agents: frozenset[str]) -> bool:
    """Whether responses to this request are kept: cache agents' reads and writes of resources."""
    return (
        info.is_resource
        and bool(info.component)
        and ("*" in agents or info.component in agents or is_token_scope(info.component))
        and info.verb in CACHED_VERBS
        and info.subresource in ("", "status")
        and info.resource not in NEVER_CACHED
        and not info.paged
    )


def kept(info: RequestInfo, agents: frozenset[str], *, node: bool) -> bool:
    """Whether the answer to this request is written to the cache: `cacheable`, and into a cache agent's
    scope only when the node's own component asked (`node`: `hub.Admitted.node`, a trusted uid). A local
    process of another uid that names itself kubelet is still answered, but what it lists is not kept as
    kubelet's: it can neither fill kubelet's scope nor push kubelet's own views out of it (a scope keeps
    `--max-views-per-scope` views, the least recently used go first), nor make the cache writer parse
    its answers. A token's own scope (a pod's, or a plain-port request with its own `Authorization`) is
    kept whoever sends it: only that token reads it. A component cached only because `--cache-agents`
    holds `*` names nobody the node trusts, so it is kept as before."""
    if not cacheable(info, agents):
        return False
    return node or is_token_scope(info.component) or info.component not in agents


def token_scope(token: str, filtered: tuple[str, ...] = ()) -> str:
    """The cache component of one bearer token: a hash, so the token itself is never stored.

    Only requests carrying that very token read what is kept there; a pod whose token was rotated starts
    with an empty scope (what the old token saw is not handed to the new one). Filters are chosen by the
    User-Agent, so one token sent as kube-proxy (filtered) and as something else (unfiltered) gets one
    scope per filter chain: offline, a filtered client never gets the unfiltered list, nor the other way.
    """
    material = token if not filtered else token + "\0" + ",".join(filtered)
    return TOKEN_SCOPE + hashlib.sha256(material.encode()).hexdigest()[:40]


def is_token_scope(component: str) -> bool:
    return component.startswith(TOKEN_SCOPE)


def scope(info: RequestInfo, encoding: wire.Encoding) -> storage.Scope:
    return storage.Scope(info.component, encoding, info.gvr)


def view_key(info: RequestInfo, encoding: wire.Encoding) -> storage.ViewKey:
    return storage.ViewKey(scope(info, encoding), info.namespace, info.label_selector, info.field_selector)


def accepted(accept: str) -> list[wire.Encoding]:
    """Encodings a client takes, in its order of preference; JSON when it sends no Accept at all."""
    if not accept.strip():
        return [wire.Encoding.JSON]
    found: list[wire.Encoding] = []
    for clause in accept.split(","):
        media, _, params = clause.partition(";")
        if "as=" in params.replace(" ", ""):
            continue  # a Table or partial metadata: not what the cache holds
        media = media.strip().lower()
        options = {
            wire.PROTOBUF: [wire.Encoding.PROTOBUF],
            wire.JSON: [wire.Encoding.JSON],
            "*/*": [wire.Encoding.JSON, wire.Encoding.PROTOBUF],
            "application/*": [wire.Encoding.JSON, wire.Encoding.PROTOBUF],
        }.get(media, [])
        found += [e for e in options if e not in found]
    return found


def record_object(store: storage.Storage, info: RequestInfo, encoding: wire.Encoding, body: bytes) -> None:
    """Keep the object a GET, CREATE, UPDATE or PATCH returned."""
    store.put_object(scope(info, encoding), wire.parse_object(encoding, body))


def record_list(store: storage.Storage, info: RequestInfo, encoding: wire.Encoding, body: bytes) -> bool:
    """Replace the view this LIST defines; False (and nothing stored) for a partial page."""
    listing = wire.parse_list(encoding, body)
    if not listing.complete:
        return False
    store.replace_list(view_key(info, encoding), listing)
    return True


def record_list_moved(store: storage.Storage, info: RequestInfo, encoding: wire.Encoding, rv: str) -> None:
    """The cloud listed this view's objects again, unchanged, at `rv`: the view moves to it (as a watch
    BOOKMARK moves it; never back), so an offline LIST answers with the cloud's latest resourceVersion."""
    store.apply_events(view_key(info, encoding), [wire.Event("BOOKMARK", wire.Obj("", "", rv, b""))])


def record_events(store: storage.Storage, info: RequestInfo, encoding: wire.Encoding, frames: list[bytes]) -> None:
    store.apply_events(view_key(info, encoding), [wire.parse_event(encoding, f) for f in frames])


def record_absent(store: storage.Storage, info: RequestInfo) -> None:
    """The cloud answered 404 to this GET: the object is gone, in every encoding, and remembered as deleted.

    Only for a resource type the component already holds something of (the storage's rule), so 404s for
    made-up resource types cannot grow the cache; tombstones per resource type are capped.
    """
    if info.verb == "get" and info.name:
        store.delete_object(info.component, info.gvr, info.namespace, info.name)


def note_use(store: storage.Storage, info: RequestInfo) -> None:
    """Count any request of this component as use of its scope (memory only; safe on the event loop).

    A pod that only holds a quiet watch makes no cache read or write, yet its token scope is in use.
    """
    store.touch(info.component)


def expire_idle_scopes(store: storage.Storage, now: float, idle_s: float) -> int:
    """Remove every token scope (objects, views, tombstones) unused for longer than `idle_s` seconds.

    Called with a token's lifetime: a scope idle that long belongs to a token that has expired (its pod
    gone, or holding a rotated token, which is a new scope). Returns how many scopes were removed.
    """
    return store.drop_idle(TOKEN_SCOPE, now - idle_s)


def not_found(info: RequestInfo, encoding: wire.Encoding) -> Answer:
    """The 404 `Status` kube-apiserver sends for a GET of an object that does not exist.

    As apimachinery's `errors.NewNotFound(GroupResource, name)`: message `<resource>[.<group>] "<name>" not
    found`, details {name, group (omitted for the core group in JSON), kind: the resource}. In protobuf, the
    `k8s\\0` envelope around a `metav1.Status` whose fields the generated code always writes (empty strings,
    `retryAfterSeconds` 0), so the bytes are the apiserver's too.
    """
    resource = f"{info.resource}.{info.group}" if info.group else info.resource
    message = f"{resource} {json.dumps(info.name)} not found"
    if encoding is wire.Encoding.PROTOBUF:
        details = (
            wire.bytes_field(1, info.name.encode())
            + wire.bytes_field(2, info.group.encode())
            + wire.bytes_field(3, info.resource.encode())
            + _varint_field(5, 0)
            + wire.bytes_field(6, b"")
        )
        list_meta = wire.bytes_field(1, b"") + wire.bytes_field(2, b"") + wire.bytes_field(3, b"")
        raw = (
            wire.bytes_field(1, list_meta)
            + wire.bytes_field(2, b"Failure")
            + wire.bytes_field(3, message.encode())
            + wire.bytes_field(4, b"NotFound")
            + wire.bytes_field(5, details)
            + _varint_field(6, 404)
        )
        return Answer(404, wire.content_type(encoding), wire.wrap("v1", "Status", raw))
    detail: dict[str, str] = {"name": info.name}
    if info.group:
        detail["group"] = info.group
    detail["kind"] = info.resource
    doc = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "NotFound",
        "details": detail,
        "code": 404,
    }
    return Answer(404, wire.content_type(encoding), json.dumps(doc, separators=(",", ":")).encode() + b"\n")


def _varint_field(number: int, value: int) -> bytes:
    """A protobuf varint field (wire type 0) for a small non-negative value."""
    out = bytearray([number << 3])
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def answer_read(store: storage.Storage, info: RequestInfo, accept: str) -> Answer | None:
    """A GET or LIST answered from the cache in the first encoding the client accepts that we hold.

    A GET of an object the cache knows to be deleted answers the cloud's 404 (`not_found`).
    """
    encodings = accepted(accept)
    if info.verb == "get":
        for encoding in encodings:
            body = store.get_object(scope(info, encoding), info.namespace, info.name)
            if body is not None:
                return Answer(200, wire.content_type(encoding), body)
        if encodings and store.is_deleted(info.component, info.gvr, info.namespace, info.name):
            return not_found(info, encodings[0])
        return None
    for encoding in encodings:
        if info.verb == "list":
            view = store.read_view(view_key(info, encoding))
            if view is not None:
                body = wire.build_list(
                    encoding,
                    view.api_version,
                    view.kind,
                    view.resource_version,
                    view.items_typed,
                    view.items,
                    view.envelope,
                )
                return Answer(200, wire.content_type(encoding), body)
            single = _by_name(store, info, encoding)
            if single is not None:
                return single
    return None


def _by_name(store: storage.Storage, info: RequestInfo, encoding: wire.Encoding) -> Answer | None:
    """`fieldSelector=metadata.name=X` is a GET in disguise (kubelet watches its own Node that way)."""
    prefix = "metadata.name="
    selector = info.field_selector
    if info.label_selector or not selector.startswith(prefix) or "," in selector:
        return None
    body = store.get_object(scope(info, encoding), info.namespace, selector.removeprefix(prefix))
    if body is None:
        return None
    if encoding is wire.Encoding.PROTOBUF:
        api_version, kind, _raw = wire.unwrap(body)
    else:
        api_version, kind = _json_type(body)
    obj = wire.parse_object(encoding, body)
    listed = wire.build_list(encoding, api_version, f"{kind}List", obj.resource_version, False, [body])
    return Answer(200, wire.content_type(encoding), listed)


def is_token_request(info: RequestInfo) -> bool:
    return info.resource == "serviceaccounts" and info.subresource == "token" and info.verb == "create"


def _token_scope(info: RequestInfo, encoding: wire.Encoding) -> storage.Scope:
    return storage.Scope(info.component, encoding, f"serviceaccounts.token.{info.version}.core")


def _token_key(info: RequestInfo, request_body: bytes) -> str:
    """Which token request this is: kubelet asks again with the same body (audience, expiry, bound pod)."""
    return f"{info.name}.{hashlib.sha256(request_body).hexdigest()[:32]}"


def record_token(
    store: storage.Storage, info: RequestInfo, encoding: wire.Encoding, request_body: bytes, response_body: bytes
) -> None:
    """Keep a real service-account token the cloud issued, to hand out again while it is away.

    OpenYurt invents a fake token offline; a pod restarted during an outage gets its real, still-valid
    token from here instead (and a stale one is no worse than a fake one while nothing can verify it).
    """
    obj = wire.Obj(info.namespace, _token_key(info, request_body), "", response_body)
    store.put_object(_token_scope(info, encoding), obj)


def answer_token(store: storage.Storage, info: RequestInfo, accept: str, request_body: bytes) -> Answer | None:
    for encoding in accepted(accept):
        body = store.get_object(_token_scope(info, encoding), info.namespace, _token_key(info, request_body))
        if body is not None:
            return Answer(201, wire.content_type(encoding), body)
    return None


def cached_node_named(store: storage.Storage, info: RequestInfo, request_body: bytes, content_type: str) -> bool:
    """Whether a node create is for a node we hold: kubelet re-registering after a restart."""
    encoding = wire.encoding_of(content_type)
    if encoding is None:
        return False
    try:
        name = wire.parse_object(encoding, request_body).name
    except errors.WireFormatError:
        return False
    node_scope = storage.Scope(info.component, encoding, info.gvr)
    return store.get_object(node_scope, "", name) is not None


def _json_type(body: bytes) -> tuple[str, str]:
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise errors.WireFormatError(f"cached JSON object does not parse: {exc}") from exc
    return str(doc.get("apiVersion", "")), str(doc.get("kind", ""))
