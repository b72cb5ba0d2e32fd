"""A pod's status subresource patched the way kube-apiserver patches it, for kubelet while the cloud is away.

Pure: no I/O. `patch_status(pod, patch, content_type)` applies one `PATCH .../pods/NAME/status` body to the
cached pod (a decoded GET-form JSON document) and returns the pod the cloud would have answered with:

- The three patch types the apiserver takes for a built-in type: `application/strategic-merge-patch+json`
  (what kubelet's status manager sends), `application/merge-patch+json` (RFC 7386) and
  `application/json-patch+json` (RFC 6902). Any other media type is `errors.PatchRefused` with the
  apiserver's own 415 `UnsupportedMediaType` message (server-side apply is among the accepted types there,
  but cannot be honoured offline: it is refused with a 503 by the caller).
- Strategic merge follows the patch tags of `k8s.io/api` core/v1 `PodStatus` (v0.34): `conditions` merge by
  `type`, `podIPs` and `hostIPs` by `ip`, `resourceClaimStatuses` by `name` (with `$retainKeys`);
  `containerStatuses`, `initContainerStatuses` and `ephemeralContainerStatuses` carry no patch strategy in
  those tags, so a list sent replaces the cached one whole (kubelet always sends them whole). Directives:
  `$patch: replace|delete|merge` on maps and list elements, `$setElementOrder/<list>`, `$retainKeys`,
  `$deleteFromPrimitiveList/<list>`; a `null` value deletes the key.
- The status subresource's rules: only `status` changes; spec and metadata stay as cached (the apiserver's
  status strategy resets them). `metadata.uid` in the patch is a precondition (kubelet always sends it) and
  `metadata.resourceVersion`, when sent, an optimistic lock: a mismatch is `errors.PatchConflict`, the 409
  the apiserver gives.
- The result's `metadata.resourceVersion` is the cached one plus one (`next_version`): resourceVersions
  are etcd revisions, so it sorts after the cached copy, and any write the cloud makes after the outage
  has a higher one and replaces ours in the cache.

`delivery_patch(cloud_pod, status)` is the other direction: the strategic merge patch that makes the
cloud's current pod carry the status the node holds, against that very object (uid and resourceVersion
preconditions), so a conflict is retried against the fresh object and a pod recreated meanwhile is never
given another pod's status.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from yurthub import errors

STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"
ACCEPTED = (JSON_PATCH, MERGE, STRATEGIC, APPLY)
"""The media types kube-apiserver accepts for PATCH, in the order its 415 message lists them."""

Doc = dict[str, Any]
Schema = Mapping[str, Any]
"""Field name → the merge key (str) of a list of maps merged by that key, or the schema of a nested map."""

POD_SCHEMA: Schema = {
    "status": {
        "conditions": "type",
        "podIPs": "ip",
        "hostIPs": "ip",
        "resourceClaimStatuses": "name",
    }
}
"""The patch tags of core/v1 Pod that a status patch can reach (`patchStrategy:"merge"` + `patchMergeKey`)."""

_CLOUD_OWNED = frozenset({"conditions", "podIPs", "hostIPs", "resourceClaimStatuses", "extendedResourceClaimStatus"})
"""Status fields a delivery never removes: merged by key, or written by the cloud only (kubelet copies
the resource claim statuses from the server)."""

_DIRECTIVE_PREFIXES = ("$setElementOrder/", "$deleteFromPrimitiveList/")


def media_type(content_type: str) -> str:
    """The media type of a Content-Type header, as the apiserver's patch handler reads it (params dropped)."""
    return content_type.split(";", 1)[0].strip().lower()


def unsupported_message() -> str:
    return "the body of the request was in an unknown format - accepted media types include: " + ", ".join(ACCEPTED)


def patch_status(pod: Doc, body: bytes, content_type: str) -> Doc:
    """The pod after this status patch (a new document; `pod` is not changed). Raises `errors.PatchRefused`
    (415 or 400, with the apiserver's reason) or `errors.PatchConflict` (409)."""
    kind = media_type(content_type)
    if kind not in (STRATEGIC, MERGE, JSON_PATCH):
        raise errors.PatchRefused(415, "UnsupportedMediaType", unsupported_message())
    try:
        patch = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.PatchRefused(400, "BadRequest", f"error decoding patch: {exc}") from None
    if kind == JSON_PATCH:
        patched = json_patch(pod, patch)
    elif not isinstance(patch, dict):
        raise errors.PatchRefused(400, "BadRequest", "the patch is not a JSON object")
    elif kind == MERGE:
        patched = merge_patch(pod, patch)
    else:
        patched = strategic_merge(pod, patch, POD_SCHEMA)
    if not isinstance(patched, dict):
        raise errors.PatchRefused(400, "BadRequest", "the patch does not leave an object")
    _preconditions(pod, patched)
    result = copy.deepcopy(pod)
    status = patched.get("status")
    if status is None:
        result.pop("status", None)
    else:
        result["status"] = status
    result.setdefault("metadata", {})["resourceVersion"] = next_version(str(_meta(pod).get("resourceVersion", "")))
    return result


def next_version(rv: str) -> str:
    """The resourceVersion of an object the node changed offline: the cached one plus one."""
    if not rv.isdigit():
        raise errors.PatchRefused(503, "ServiceUnavailable", f"cached resourceVersion {rv!r} is not a number")
    return str(int(rv) + 1)


def _meta(doc: Doc) -> Doc:
    meta = doc.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _preconditions(pod: Doc, patched: Doc) -> None:
    old, new = _meta(pod), _meta(patched)
    name = old.get("name", "")
    if new.get("uid", old.get("uid")) != old.get("uid"):
        raise errors.PatchConflict(
            f'Operation cannot be fulfilled on pods "{name}": Precondition failed: UID in precondition: '
            f"{new.get('uid')}, UID in object meta: {old.get('uid')}"
        )
    if new.get("resourceVersion", old.get("resourceVersion")) != old.get("resourceVersion"):
        raise errors.PatchConflict(
            f'Operation cannot be fulfilled on pods "{name}": the object has been modified; please apply your '
            "changes to the latest version and try again"
        )


# --- RFC 7386 --------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """JSON merge patch: maps merge key by key, `null` deletes, anything else (lists too) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


# --- RFC 6902 --------------------------------------------------------------------------------------


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise errors.PatchRefused(400, "BadRequest", f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]] if path else []


def _parent(doc: Any, parts: list[str]) -> tuple[Any, str]:
    node = doc
    for part in parts[:-1]:
        node = _child(node, part)
    return node, parts[-1]


def _child(node: Any, part: str) -> Any:
    if isinstance(node, dict) and part in node:
        return node[part]
    if isinstance(node, list) and part.isdigit() and int(part) < len(node):
        return node[int(part)]
    raise errors.PatchRefused(422, "Invalid", f"path element {part!r} does not exist")


def _get(doc: Any, parts: list[str]) -> Any:
    node = doc
    for part in parts:
        node = _child(node, part)
    return node


def _remove(doc: Any, parts: list[str]) -> Any:
    if not parts:
        raise errors.PatchRefused(422, "Invalid", "cannot remove the whole document")
    parent, last = _parent(doc, parts)
    value = _child(parent, last)
    if isinstance(parent, dict):
        del parent[last]
    else:
        del parent[int(last)]
    return value


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return copy.deepcopy(value)
    parent, last = _parent(doc, parts)
    if isinstance(parent, dict):
        parent[last] = copy.deepcopy(value)
    elif isinstance(parent, list) and (last == "-" or (last.isdigit() and int(last) <= len(parent))):
        parent.insert(len(parent) if last == "-" else int(last), copy.deepcopy(value))
    else:
        raise errors.PatchRefused(422, "Invalid", f"cannot add at path element {last!r}")
    return doc


def json_patch(target: Doc, ops: Any) -> Any:
    """RFC 6902: add, remove, replace, move, copy, test, in order, on a copy."""
    if not isinstance(ops, list):
        raise errors.PatchRefused(400, "BadRequest", "a JSON patch is a list of operations")
    doc: Any = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict):
            raise errors.PatchRefused(400, "BadRequest", "a JSON patch operation is an object")
        kind, parts = op.get("op"), _pointer(op.get("path"))
        if kind == "add":
            doc = _add(doc, parts, op.get("value"))
        elif kind == "remove":
            _remove(doc, parts)
        elif kind == "replace":
            _get(doc, parts)
            if parts:
                _remove(doc, parts)
            doc = _add(doc, parts, op.get("value"))
        elif kind in ("move", "copy"):
            source = _pointer(op.get("from"))
            value = _remove(doc, source) if kind == "move" else copy.deepcopy(_get(doc, source))
            doc = _add(doc, parts, value)
        elif kind == "test":
            if _get(doc, parts) != op.get("value"):
                raise errors.PatchRefused(422, "Invalid", f"test failed at {op.get('path')!r}")
        else:
            raise errors.PatchRefused(400, "BadRequest", f"unknown JSON patch operation {kind!r}")
    return doc


# --- strategic merge patch -------------------------------------------------------------------------


def strategic_merge(original: Doc, patch: Doc, schema: Schema) -> Doc:
    """apimachinery's strategic merge of `patch` into `original`, driven by `schema` (see `Schema`)."""
    merged = _merge_map(original, patch, schema)
    if merged is None:
        raise errors.PatchRefused(422, "Invalid", "the patch deletes the whole object")
    return merged


def _merge_map(original: Any, patch: Doc, schema: Schema) -> Doc | None:
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    plain = {k: v for k, v in patch.items() if not _is_directive(k)}
    if directive == "replace":
        return copy.deepcopy(plain)
    if directive not in (None, "merge"):
        raise errors.PatchRefused(400, "BadRequest", f"unknown $patch directive {directive!r}")
    out: Doc = copy.deepcopy(original) if isinstance(original, dict) else {}
    for key, value in plain.items():
        sub = schema.get(key)
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            merged = _merge_map(out.get(key), value, sub if isinstance(sub, Mapping) else {})
            if merged is None:
                out.pop(key, None)
            else:
                out[key] = merged
        elif isinstance(value, list) and isinstance(sub, str):
            out[key] = _merge_list(out.get(key), value, sub)
        else:
            out[key] = copy.deepcopy(value)
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/") and isinstance(value, list):
            field = key.removeprefix("$deleteFromPrimitiveList/")
            if isinstance(out.get(field), list):
                out[field] = [v for v in out[field] if v not in value]
        elif key.startswith("$setElementOrder/") and isinstance(value, list):
            field = key.removeprefix("$setElementOrder/")
            sub = schema.get(field)
            if isinstance(out.get(field), list):
                out[field] = _ordered(out[field], value, sub if isinstance(sub, str) else None)
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        out = {k: v for k, v in out.items() if k in retain}
    return out


def _is_directive(key: str) -> bool:
    return key in ("$patch", "$retainKeys") or key.startswith(_DIRECTIVE_PREFIXES)


def _merge_list(original: Any, patch: list[Any], key: str) -> list[Any]:
    """A list of maps merged by `key`: patch elements merge into the element with the same key or are
    appended; `{key: X, $patch: delete}` removes X; an element `{$patch: replace}` makes the list the patch's."""
    if any(isinstance(e, dict) and e.get("$patch") == "replace" for e in patch):
        return [copy.deepcopy(e) for e in patch if not (isinstance(e, dict) and e.get("$patch") == "replace")]
    out = [copy.deepcopy(e) for e in original] if isinstance(original, list) else []
    for element in patch:
        if not isinstance(element, dict) or key not in element:
            raise errors.PatchRefused(400, "BadRequest", f"a list element merged by {key!r} lacks that key")
        at = next((i for i, e in enumerate(out) if isinstance(e, dict) and e.get(key) == element[key]), None)
        if element.get("$patch") == "delete":
            if at is not None:
                del out[at]
            continue
        if at is None:
            out.append({k: v for k, v in element.items() if k != "$patch"})
        else:
            merged = _merge_map(out[at], element, {})
            if merged is None:
                del out[at]
            else:
                out[at] = merged
    return out


def _ordered(items: list[Any], order: list[Any], key: str | None) -> list[Any]:
    """`$setElementOrder`: the elements it names in its order; any others (the server's own) after them,
    in their original order."""

    def ident(e: Any) -> Any:
        return json.dumps(e.get(key) if key and isinstance(e, dict) else e, sort_keys=True)

    rank = {ident(o): i for i, o in enumerate(order)}
    named = sorted((e for e in items if ident(e) in rank), key=lambda e: rank[ident(e)])
    return named + [e for e in items if ident(e) not in rank]


# --- delivery --------------------------------------------------------------------------------------


def delivery_patch(cloud_pod: Doc, status: Doc) -> Doc:
    """The strategic merge patch that gives `cloud_pod` (the cloud's current copy) the node's `status`.

    Preconditions: the cloud pod's uid and resourceVersion (a conflict means it changed since it was read:
    read it again and make the patch again). Lists merged by key get the node's elements, and the cloud's
    `podIPs`/`hostIPs` the node does not have are deleted (the node is the authority for its pod's
    addresses); condition types only the cloud has (set by controllers, e.g. `DisruptionTarget`) stay, as
    kubelet's own `mergePodStatus` keeps them. Everything else in `status` replaces the cloud's.
    """
    meta = _meta(cloud_pod)
    cloud_status = cloud_pod.get("status")
    if not isinstance(cloud_status, dict):
        cloud_status = {}
    out: Doc = {}
    for field, value in status.items():
        out[field] = copy.deepcopy(value)
    for field in ("podIPs", "hostIPs"):
        ours = {e.get("ip") for e in status.get(field, []) if isinstance(e, dict)}
        stale = [e.get("ip") for e in cloud_status.get(field, []) if isinstance(e, dict) and e.get("ip") not in ours]
        if stale:
            out[field] = list(out.get(field, [])) + [{"ip": ip, "$patch": "delete"} for ip in stale]
        if field in status:
            out[f"$setElementOrder/{field}"] = [{"ip": e.get("ip")} for e in status[field] if isinstance(e, dict)]
    for field in cloud_status:
        if field not in status and field not in _CLOUD_OWNED:
            out[field] = None  # gone from the node's status: gone from the cloud's
    return {
        "metadata": {"uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")},
        "status": out,
    }
