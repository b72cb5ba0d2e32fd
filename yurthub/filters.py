"""Response filters: what a node component sees of Services and EndpointSlices, rewritten for the edge.

Pure: no I/O. A filter is one callable over one decoded object (a GET-form JSON document, `kind` and
`apiVersion` included); it returns the object unchanged (the same instance), a changed copy (it never mutates
its input), or None to drop it. `Chain` runs the filters a request gets, in `ORDER`.

Filters (OpenYurt's names and semantics):
- `masterservice`: the `default/kubernetes` Service gets yurthub's HTTPS door as clusterIP/clusterIPs and as
  the port of its `https` port (kubelet turns that into pods' `KUBERNETES_SERVICE_HOST/PORT`); the
  `default/kubernetes` EndpointSlice gets one ready endpoint at the door (kube-proxy then sends the
  Service's traffic there; OpenYurt's `forwardkubesvctraffic`). Slices of the other address family are dropped.
- `discardcloudservice`: LoadBalancer Services annotated `svc.openyurt.io/discard: "true"` (and OpenYurt's
  own `kube-system/x-tunnel-server-internal-svc`) are dropped: they only make sense in the cloud.
- `servicetopology`: an EndpointSlice whose Service is annotated `openyurt.io/topologyKeys` keeps only the
  endpoints on this node (`kubernetes.io/hostname`) or on the nodes of this node's pool (`openyurt.io/nodepool`
  or `kubernetes.io/zone`; a node names its pool by a label, `apps.openyurt.io/nodepool` by default, and the
  pool's members are its NodePool's `status.nodes`, see `topology`). Endpoints with no nodeName are dropped
  then. The Service annotations and the pool members are `Facts` the shell hands in.

Bodies: filtered responses are JSON only (the proxy negotiates JSON upstream for exactly these requests, see
`proxy`), so this module reads and writes JSON. Objects no filter changed keep their bytes; a list no filter
changed is returned byte for byte. In a watch stream, an object a filter drops becomes a DELETED event (the
client may hold it from before), except in an ADDED event, which is left out (the client cannot hold it).
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from yurthub import config, errors, wire
from yurthub.requestinfo import RequestInfo

K8sObject = dict[str, Any]
Filter = Callable[[RequestInfo, K8sObject], K8sObject | None]

MASTER_SERVICE = "masterservice"
DISCARD_CLOUD_SERVICE = "discardcloudservice"
SERVICE_TOPOLOGY = "servicetopology"
ORDER = (SERVICE_TOPOLOGY, MASTER_SERVICE, DISCARD_CLOUD_SERVICE)
"""Chain order, as OpenYurt registers them."""

RESOURCES = {
    "services": ("", "v1"),
    "endpointslices": ("discovery.k8s.io", "v1"),
}
"""The (group, version) of each resource a filter may be applied to."""
KNOWS = {
    MASTER_SERVICE: frozenset({"services", "endpointslices"}),
    DISCARD_CLOUD_SERVICE: frozenset({"services"}),
    SERVICE_TOPOLOGY: frozenset({"endpointslices"}),
}
DEFAULT_RULES: Mapping[str, tuple[str, ...]] = {
    MASTER_SERVICE: ("kubelet/services", "kube-proxy/endpointslices"),
    DISCARD_CLOUD_SERVICE: ("kube-proxy/services",),
    SERVICE_TOPOLOGY: (
        "kube-proxy/endpointslices",
        "coredns/endpointslices",
        "nginx-ingress-controller/endpointslices",
    ),
}
"""Which component (User-Agent) gets which filter on which resource, unless configured otherwise."""
FILTERED_VERBS = frozenset({"get", "list", "watch"})

DISCARD_ANNOTATION = "svc.openyurt.io/discard"
ALWAYS_DISCARDED = frozenset({("kube-system", "x-tunnel-server-internal-svc")})
TOPOLOGY_ANNOTATION = "openyurt.io/topologyKeys"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
HOSTNAME = "kubernetes.io/hostname"
POOL_KEYS = frozenset({"openyurt.io/nodepool", "kubernetes.io/zone"})


# --- configuration -------------------------------------------------------------------------------


Rules = Mapping[tuple[str, str], tuple[str, ...]]
"""(component, resource) → the filters it gets, in chain order."""


def parse_rules(values: Iterable[str], disabled: Iterable[str] = ()) -> dict[str, tuple[str, ...]]:
    """`NAME=TARGET[,TARGET…]` entries (TARGET is `component` or `component/resource`) over the defaults.

    An entry replaces the default targets of its filter; an empty target list (`NAME=`) turns it off, as
    does naming it in `disabled`. A bare component means every resource the filter knows.
    """
    rules = dict(DEFAULT_RULES)
    for value in values:
        name, sep, targets = value.partition("=")
        name = name.strip()
        if not sep or name not in KNOWS:
            raise config.ConfigError(
                f"--filter {value!r}: expected NAME=COMPONENT[/RESOURCE],…; NAME is one of {ORDER}"
            )
        expanded: list[str] = []
        for target in (t.strip().lower() for t in targets.split(",") if t.strip()):
            component, _, resource = target.partition("/")
            if not component:
                raise config.ConfigError(f"--filter {value!r}: {target!r} names no component")
            if resource and resource not in KNOWS[name]:
                raise config.ConfigError(f"--filter {value!r}: {name} filters {sorted(KNOWS[name])}, not {resource!r}")
            expanded += [f"{component}/{r}" for r in sorted(KNOWS[name])] if not resource else [target]
        rules[name] = tuple(expanded)
    for name in disabled:
        if name not in KNOWS:
            raise config.ConfigError(f"--disabled-resource-filters: unknown filter {name!r}; known: {ORDER}")
        rules[name] = ()
    return rules


def index(rules: Mapping[str, tuple[str, ...]]) -> Rules:
    """The (component, resource) lookup table the proxy asks per request."""
    table: dict[tuple[str, str], list[str]] = {}
    for name in ORDER:
        for target in rules.get(name, ()):
            component, _, resource = target.partition("/")
            table.setdefault((component, resource), []).append(name)
    return {key: tuple(names) for key, names in table.items()}


def names_for(rules: Rules, info: RequestInfo) -> tuple[str, ...]:
    """The filters this request's response goes through; empty for everything else (byte-exact pass-through)."""
    if not info.is_resource or info.verb not in FILTERED_VERBS or info.subresource or not info.component:
        return ()
    if RESOURCES.get(info.resource) != (info.group, info.version):
        return ()
    return rules.get((info.component, info.resource), ())


# --- the filters ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Facts:
    """What `servicetopology` needs to know about the cluster, gathered by the shell (`topology`)."""

    node_name: str
    pool_nodes: frozenset[str] = frozenset()
    """Names of the nodes in this node's pool (this node included); empty when the node is in no pool."""
    topology: Mapping[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    """(namespace, service) → the value of its `openyurt.io/topologyKeys` annotation, for annotated ones."""

    def to_json(self) -> bytes:
        doc = {
            "nodeName": self.node_name,
            "poolNodes": sorted(self.pool_nodes),
            "topology": [[ns, name, key] for (ns, name), key in sorted(self.topology.items())],
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, body: bytes) -> Facts:
        try:
            doc = json.loads(body)
            return cls(
                str(doc["nodeName"]),
                frozenset(str(n) for n in doc["poolNodes"]),
                {(str(ns), str(name)): str(key) for ns, name, key in doc["topology"]},
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise errors.WireFormatError(f"stored topology facts do not parse: {exc}") from exc


def _meta(obj: K8sObject) -> K8sObject:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _named(obj: K8sObject, namespace: str, name: str) -> bool:
    meta = _meta(obj)
    return meta.get("namespace") == namespace and meta.get("name") == name


def _family(address: str) -> str:
    return "IPv6" if ipaddress.ip_address(address).version == 6 else "IPv4"


def master_service(host: str, port: int) -> Filter:
    """Point `default/kubernetes` (Service and EndpointSlices) at yurthub's HTTPS door `host:port`."""
    family = _family(host)

    def apply(info: RequestInfo, obj: K8sObject) -> K8sObject | None:
        kind = obj.get("kind")
        if kind == "Service" and _named(obj, "default", "kubernetes"):
            out = copy.deepcopy(obj)
            spec = out.setdefault("spec", {})
            spec["clusterIP"] = host
            spec["clusterIPs"] = [host]
            for p in spec.get("ports") or []:
                if p.get("name") == "https":
                    p["port"] = port
            return out
        meta = _meta(obj)
        labels = meta.get("labels") or {}
        if (
            kind == "EndpointSlice"
            and meta.get("namespace") == "default"
            and labels.get(SERVICE_NAME_LABEL) == "kubernetes"
        ):
            if obj.get("addressType") != family:
                return None
            out = copy.deepcopy(obj)
            out["endpoints"] = [{"addresses": [host], "conditions": {"ready": True}}]
            for p in out.get("ports") or []:
                if p.get("name") == "https":
                    p["port"] = port
            return out
        return obj

    return apply


def discard_cloud_service(info: RequestInfo, obj: K8sObject) -> K8sObject | None:
    """Drop Services meant for the cloud only."""
    if obj.get("kind") != "Service":
        return obj
    meta = _meta(obj)
    if (meta.get("namespace"), meta.get("name")) in ALWAYS_DISCARDED:
        return None
    annotations = meta.get("annotations") or {}
    spec = obj.get("spec") or {}
    if spec.get("type") == "LoadBalancer" and str(annotations.get(DISCARD_ANNOTATION, "")).lower() == "true":
        return None
    return obj


def service_topology(facts: Facts) -> Filter:
    """Keep an EndpointSlice's endpoints within the topology its Service asks for."""

    def apply(info: RequestInfo, obj: K8sObject) -> K8sObject | None:
        if obj.get("kind") != "EndpointSlice":
            return obj
        meta = _meta(obj)
        service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        key = facts.topology.get((str(meta.get("namespace", "")), str(service))) if service else None
        if key == HOSTNAME:
            allowed = frozenset({facts.node_name})
        elif key in POOL_KEYS:
            allowed = facts.pool_nodes or frozenset({facts.node_name})
        else:
            return obj
        endpoints = obj.get("endpoints") or []
        kept = [e for e in endpoints if e.get("nodeName") in allowed]
        if len(kept) == len(endpoints):
            return obj
        out = dict(obj)
        out["endpoints"] = kept
        return out

    return apply


# --- applying a chain to response bodies -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Chain:
    """The filters one request gets, in order."""

    filters: tuple[Filter, ...]

    def __bool__(self) -> bool:
        return bool(self.filters)

    def apply(self, info: RequestInfo, obj: K8sObject) -> K8sObject | None:
        for f in self.filters:
            result = f(info, obj)
            if result is None:
                return None
            obj = result
        return obj


def build(names: Iterable[str], *, door: tuple[str, int] | None, facts: Facts | None) -> Chain:
    """The chain for these filter names. `masterservice` needs the door and `servicetopology` the facts;
    a filter whose input is missing is left out (the caller logs that once)."""
    filters: list[Filter] = []
    for name in names:
        if name == MASTER_SERVICE and door is not None:
            filters.append(master_service(*door))
        elif name == DISCARD_CLOUD_SERVICE:
            filters.append(discard_cloud_service)
        elif name == SERVICE_TOPOLOGY and facts is not None:
            filters.append(service_topology(facts))
    return Chain(tuple(filters))


def _dump(obj: K8sObject) -> bytes:
    """Compact JSON as the apiserver writes it (UTF-8, no spaces, keys in their original order)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _decode(body: bytes) -> K8sObject:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.WireFormatError(f"JSON object does not parse: {exc}") from exc
    if not isinstance(doc, dict):
        raise errors.WireFormatError("JSON body is not an object")
    return doc


def object_body(chain: Chain, info: RequestInfo, body: bytes) -> bytes | None:
    """A GET-form JSON body through the chain: the same bytes when unchanged, None when dropped."""
    obj = _decode(body)
    result = chain.apply(info, obj)
    if result is None:
        return None
    return body if result is obj else _dump(result)


def list_body(chain: Chain, info: RequestInfo, body: bytes) -> bytes:
    """A JSON LIST body through the chain, framed as the apiserver frames it; the same bytes when unchanged."""
    listing = wire.parse_list(wire.Encoding.JSON, body)
    items: list[bytes] = []
    changed = False
    for item in listing.items:
        out = object_body(chain, info, item.body)
        changed = changed or out is not item.body
        if out is not None:
            items.append(out)
    if not changed:
        return body
    return wire.build_list(
        wire.Encoding.JSON,
        listing.api_version,
        listing.kind,
        listing.resource_version,
        listing.items_typed,
        items,
        listing.envelope,
    )


def event_frame(chain: Chain, info: RequestInfo, frame: bytes) -> bytes | None:
    """One JSON watch event (a line, without its newline) through the chain; None to leave it out."""
    spans = wire.top_level(frame)
    event_type = json.loads(frame[slice(*spans["type"])]) if "type" in spans else ""
    if event_type in ("BOOKMARK", "ERROR") or "object" not in spans:
        return frame
    original = frame[slice(*spans["object"])]
    out = object_body(chain, info, original)
    if out is original:
        return frame
    if out is None:
        if event_type == "ADDED":
            return None
        event_type, out = "DELETED", original
    return b'{"type":' + json.dumps(event_type).encode() + b',"object":' + out.rstrip(b"\n") + b"}"
