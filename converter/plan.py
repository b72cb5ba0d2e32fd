"""What `yurtctl convert` and `yurtctl revert` will change: computed from the cluster's state, no I/O.

A plan is data: API changes before the node work, the nodes whose Jobs run (edge nodes, in order), and
API changes after. `--dry-run` prints it; `runner` applies it. Every change is idempotent (a merge patch, a
create-or-patch, a delete that tolerates absence), so running a plan again after an interruption finishes it.

The conversion is recorded in the ConfigMap `kube-system/yurtctl-conversion` (the options it ran with and
each node's outcome): a second convert with the same options resumes from it, skipping nodes already
converted; revert reads it to know what to undo, and deletes it last.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any, Literal

from converter import components, helm, jointoken, names, nodeconversion, nodepool, nodestep, tolerations

Obj = dict[str, Any]
NS = components.NAMESPACE
RECORD = "yurtctl-conversion"
RECORD_PATH = f"/api/v1/namespaces/{NS}/configmaps/{RECORD}"
CONFIGMAPS = f"/api/v1/namespaces/{NS}/configmaps"
SUPPORTED_MINORS = range(28, 37)
"""Kubernetes 1.28 to 1.36: Job, Lease and certificates.k8s.io/v1 as used here, and tested on 1.34."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
    cloud_nodes: tuple[str, ...]
    """Nodes that stay cloud nodes (label is-edge-worker=false); at least one."""
    edge_nodes: tuple[str, ...] = ()
    """Nodes to convert; empty means every node not named a cloud node."""
    autonomous_nodes: tuple[str, ...] = ()
    """Edge nodes whose pods are never evicted for being unreachable; empty means every edge node."""
    image: str = "yurt-edge/converter:0.1.0"
    """Image of the per-node Jobs and of yurt-manager."""
    hub_args: str = ""
    """Extra yurthub flags written to each node's yurthub.env."""
    node_timeout_s: float = 600.0
    """How long one node's Job may take."""
    manager_replicas: int = 2
    """yurt-manager replicas in the Deployment (0 where it runs elsewhere, e.g. beside the control plane)."""
    manager_webhook_url: str = ""
    """Where the apiserver reaches yurt-manager's endpoint webhook when it runs outside the cluster
    (`https://host:port`); empty: through the Service `components.WEBHOOK_SERVICE`."""
    tunnel_servers: tuple[str, ...] = ()
    """With the tunnel: the server addresses (host:port) edge nodes' agents dial; empty: no tunnel."""
    tunnel_server_name: str = helm.SERVER_NAME
    """Name the tunnel server's certificate carries, which agents verify."""
    tunnel_replicas: int = 2
    """Tunnel server replicas in the chart's Deployment (0 where it runs beside the control plane)."""
    parallel: int = 5
    """Node Jobs yurt-manager runs at once for this conversion (its own flag caps it)."""
    join_token: str = dataclasses.field(default="", repr=False)
    """Bootstrap token for the edge nodes' yurthubs (from `--join-token-file`): each yurthub gets its own
    client certificate by CSR. It reaches the nodes through the Secret `components.JOIN_TOKEN_SECRET` only."""

    @property
    def tunnel(self) -> bool:
        return bool(self.tunnel_servers)

    def job_settings(self) -> nodeconversion.JobSettings:
        """What yurt-manager's node Jobs run, written for it in `nodeconversion.SETTINGS_CONFIGMAP`."""
        return nodeconversion.JobSettings(
            image=self.image,
            hub_args=self.hub_args,
            node_timeout_s=self.node_timeout_s,
            tunnel_servers=self.tunnel_servers,
            tunnel_server_name=self.tunnel_server_name if self.tunnel_servers else "",
            join_token=bool(self.join_token),
            parallel=self.parallel,
        )

    def recorded(self) -> str:
        options: dict[str, object] = {
            "cloudNodes": sorted(self.cloud_nodes),
            "edgeNodes": sorted(self.edge_nodes),
            "autonomousNodes": sorted(self.autonomous_nodes),
            "tunnel": self.tunnel,
        }
        if self.join_token:
            options["joinToken"] = True  # that one was given, never the token
        return json.dumps(options, sort_keys=True)


@dataclasses.dataclass(frozen=True)
class Change:
    verb: Literal["apply", "patch", "delete"]
    path: str
    """The object's path (apply: its collection; the object's name is in the body)."""
    body: Obj | None
    what: str
    """One line for people."""


@dataclasses.dataclass(frozen=True)
class Plan:
    action: Literal["convert", "revert"]
    before: list[Change]
    nodes: list[str]
    """Nodes whose Job runs, in order."""
    skipped: list[str]
    """Nodes already done by an earlier run (resumed)."""
    after: list[Change]
    cloud: list[str]
    edge: list[str]
    autonomous: list[str]
    tunnel: bool = False
    """Convert: install or upgrade the tunnel chart before the node Jobs (and the agents with them); revert:
    the chart is installed and is uninstalled after the node Jobs."""
    join_token: bool = False
    """Convert: the Jobs mount the bootstrap token's Secret and install it for yurthub."""
    labels: list[Change] = dataclasses.field(default_factory=list)
    """The edge nodes' labels, applied once the cloud parts are in: they hand the nodes to yurt-manager,
    which runs their Jobs (convert: `is-edge-worker=true`; revert: `false`)."""

    def lines(self, image: str, node_args: list[str], tunnel_objects: Sequence[str] = ()) -> list[str]:
        """The whole plan, as printed by --dry-run; `tunnel_objects` are the chart's rendered objects."""

        def listed(nodes: list[str]) -> str:
            return ", ".join(nodes) or "-"

        out = [
            f"yurtctl {self.action}: cloud nodes {listed(self.cloud)}; edge nodes {listed(self.edge)};"
            f" autonomous {listed(self.autonomous)}"
        ]
        out += [f"  api    {c.verb:6} {c.what}" for c in self.before]
        if self.tunnel and self.action == "convert":
            out.append(
                f"  helm   upgrade --install {helm.RELEASE} in {helm.NAMESPACE} (the tunnel server chart), objects:"
            )
            out += [f"           {o}" for o in tunnel_objects]
        out += [f"  api    {c.verb:6} {c.what}" for c in self.labels]
        for node in self.skipped:
            out.append(f"  node   {node}: already {self.action}ed by an earlier run, skipped")
        for node in self.nodes:
            job = self.job(node, image, node_args)
            cmd = " ".join(job["spec"]["template"]["spec"]["containers"][0]["command"])
            out.append(
                f"  node   {node}: yurt-manager runs Job {NS}/{job['metadata']['name']} (privileged, host /): {cmd}"
            )
        if self.nodes:
            out.append("  files  on each of those nodes:")
            out += [f"           {path}: {what}" for path, what in nodestep.HOST_FILES.items()]
            if self.join_token and self.action == "convert":
                out += [f"           {path}: {what}" for path, what in nodestep.TOKEN_HOST_FILES.items()]
            if self.tunnel or self.action == "revert":
                out += [f"           {path}: {what}" for path, what in nodestep.TUNNEL_HOST_FILES.items()]
            if self.action == "convert":
                out.append("           kubelet.service restarted; rolled back if not Ready through yurthub")
                if self.tunnel:
                    out.append("           yurt-tunnel-agent.service started; rolled back if not connected")
        if self.tunnel and self.action == "revert":
            out.append(f"  helm   uninstall {helm.RELEASE} in {helm.NAMESPACE} (the tunnel server chart)")
        out += [f"  api    {c.verb:6} {c.what}" for c in self.after]
        return out

    def job(self, node: str, image: str, node_args: list[str]) -> Obj:
        """The Job of `node`, as the runner creates it."""
        return node_job(self.action, node, image, node_args, tunnel=self.tunnel, join_token=self.join_token)


node_job = nodeconversion.node_job


def _name(obj: Obj) -> str:
    return str(obj["metadata"]["name"])


def node_ready(node: Obj) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in node.get("status", {}).get("conditions") or []
    )


def _collection(obj: Obj) -> str:
    api = obj["apiVersion"]
    base = f"/api/{api}" if "/" not in api else f"/apis/{api}"
    plural = {
        "ServiceAccount": "serviceaccounts",
        "ClusterRole": "clusterroles",
        "ClusterRoleBinding": "clusterrolebindings",
        "Role": "roles",
        "RoleBinding": "rolebindings",
        "Deployment": "deployments",
        "ConfigMap": "configmaps",
        "Secret": "secrets",
        "Service": "services",
        "MutatingWebhookConfiguration": "mutatingwebhookconfigurations",
        "Job": "jobs",
        "CustomResourceDefinition": "customresourcedefinitions",
        "ValidatingAdmissionPolicy": "validatingadmissionpolicies",
        "ValidatingAdmissionPolicyBinding": "validatingadmissionpolicybindings",
    }[obj["kind"]]
    ns = obj["metadata"].get("namespace")
    return f"{base}/namespaces/{ns}/{plural}" if ns else f"{base}/{plural}"


def object_path(obj: Obj) -> str:
    return f"{_collection(obj)}/{_name(obj)}"


def _apply(obj: Obj) -> Change:
    ns = obj["metadata"].get("namespace")
    return Change("apply", _collection(obj), obj, f"{obj['kind']} {ns + '/' if ns else ''}{_name(obj)}")


def _delete(obj: Obj) -> Change:
    ns = obj["metadata"].get("namespace")
    return Change("delete", object_path(obj), None, f"{obj['kind']} {ns + '/' if ns else ''}{_name(obj)}")


def cloud_objects(image: str, replicas: int = 2, webhook_url: str = "") -> list[Obj]:
    """Installed in this order by convert, removed in the reverse order by revert (so the endpoint webhook's
    configuration goes first, before the yurt-manager that answers it)."""
    return [
        *components.nodepool_objects(),
        *components.appset_objects(),
        *components.manager_rbac(),
        components.manager_deployment(image, replicas=replicas),
        *components.endpoint_webhook_objects(webhook_url),
    ]


def crd_paths() -> list[str]:
    """The CustomResourceDefinitions convert installs, as paths."""
    return [object_path(o) for o in cloud_objects("-") if o["kind"] == "CustomResourceDefinition"]


def foreign_crds(existing: list[Obj | None]) -> list[str]:
    """Preflight problems for CRDs convert would install that exist without our label (OpenYurt's own, say):
    convert would overwrite them, and revert delete them with every object in them."""
    return [
        f"CustomResourceDefinition {_name(crd)} exists and was not installed by yurtctl: convert would replace "
        "it and revert delete it with all its objects; remove it (or the tool that installed it) first"
        for crd in existing
        if crd is not None and not components.MANAGED_BY.items() <= (crd["metadata"].get("labels") or {}).items()
    ]


def node_states(record: Obj | None) -> dict[str, str]:
    data = (record or {}).get("data") or {}
    return {k.removeprefix("node."): v for k, v in data.items() if k.startswith("node.")}


def preflight(opts: Options, nodes: list[Obj], version: Obj, record: Obj | None) -> list[str]:
    """Everything that keeps convert from starting, as messages a person can act on (empty: go)."""
    problems: list[str] = []
    try:
        minor = int(str(version.get("minor", "")).rstrip("+"))
    except ValueError:
        minor = -1
    if str(version.get("major")) != "1" or minor not in SUPPORTED_MINORS:
        problems.append(
            f"Kubernetes {version.get('gitVersion', '?')} is not supported (1.{SUPPORTED_MINORS.start}"
            f" to 1.{SUPPORTED_MINORS.stop - 1})"
        )
    by_name = {_name(n): n for n in nodes}
    if not opts.cloud_nodes:
        problems.append("--cloud-nodes names no node; at least one node must stay in the cloud")
    if jointoken.in_flags(opts.hub_args):
        problems.append(
            "--hub-args carries --join-token, which would put the token in the Jobs' spec and on the nodes' "
            "process lists: give it with --join-token-file instead"
        )
    for role, wanted in (("cloud", opts.cloud_nodes), ("edge", opts.edge_nodes), ("autonomous", opts.autonomous_nodes)):
        missing = [n for n in wanted if n not in by_name]
        if missing:
            problems.append(f"{role} nodes not in the cluster: {', '.join(missing)}")
    overlap = set(opts.cloud_nodes) & set(opts.edge_nodes)
    if overlap:
        problems.append(f"nodes named both cloud and edge: {', '.join(sorted(overlap))}")
    edge = edge_nodes(opts, nodes)
    stray = [n for n in opts.autonomous_nodes if n not in edge]
    if stray:
        problems.append(f"autonomous nodes that are not edge nodes: {', '.join(stray)}")
    if record is None:
        labelled = [_name(n) for n in nodes if names.EDGE_WORKER_LABEL in (n["metadata"].get("labels") or {})]
        if labelled:
            problems.append(
                f"nodes already carry {names.EDGE_WORKER_LABEL} but no conversion is recorded "
                f"(converted by another tool?): {', '.join(labelled)}"
            )
    elif (record.get("data") or {}).get("options") != opts.recorded():
        problems.append(
            f"a conversion with other options is recorded in {NS}/{RECORD}: run `yurtctl revert` first, "
            "or convert again with the same options to finish it"
        )
    done = node_states(record)
    not_ready = [n for n in edge if n in by_name and not node_ready(by_name[n]) and done.get(n) != "converted"]
    if not_ready:
        problems.append(f"edge nodes not Ready: {', '.join(not_ready)}")
    return problems


def edge_nodes(opts: Options, nodes: list[Obj]) -> list[str]:
    if opts.edge_nodes:
        return list(opts.edge_nodes)
    return sorted(_name(n) for n in nodes if _name(n) not in opts.cloud_nodes)


def minor_of(version: Obj) -> int:
    """The minor version from `/version` (-1 when unreadable)."""
    try:
        return int(str(version.get("minor", "")).rstrip("+"))
    except ValueError:
        return -1


def convert_plan(
    opts: Options, nodes: list[Obj], record: Obj | None, *, policies: bool = True, retry: str = ""
) -> Plan:
    """`policies`: the cluster serves admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy (1.30+);
    without it those objects are left out. `retry`: this run's value of the annotation
    `nodeconversion.RETRY` on the edge nodes still to convert, so yurt-manager tries a failed one again and
    the run tells its outcome from an earlier one."""
    edge = edge_nodes(opts, nodes)
    cloud = list(opts.cloud_nodes)
    autonomous = list(opts.autonomous_nodes) or edge
    before: list[Change] = []
    if record is None:
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": RECORD, "namespace": NS, "labels": dict(components.MANAGED_BY)},
            "data": {"options": opts.recorded(), "state": "converting"},
        }
        before.append(Change("apply", CONFIGMAPS, body, f"ConfigMap {NS}/{RECORD} (the record of this conversion)"))
    settings = nodeconversion.settings_configmap(opts.job_settings())
    what = f"ConfigMap {NS}/{nodeconversion.SETTINGS_CONFIGMAP} (what yurt-manager's node Jobs run)"
    before.append(Change("apply", CONFIGMAPS, settings, what))
    done = node_states(record)
    labels: list[Change] = []
    for name in cloud + edge:
        is_edge = name in edge
        annotations: dict[str, object] = {names.AUTONOMY_ANNOTATION: "true"} if name in autonomous else {}
        what = f"Node {name}: label {names.EDGE_WORKER_LABEL}={'true' if is_edge else 'false'}"
        if annotations:
            what += f", annotation {names.AUTONOMY_ANNOTATION}=true"
        if is_edge and done.get(name) != "converted":
            annotations[nodeconversion.RETRY] = retry
            what += f"; yurt-manager converts it (asked with annotation {nodeconversion.RETRY})"
        patch: Obj = {"metadata": {"labels": {names.EDGE_WORKER_LABEL: "true" if is_edge else "false"}}}
        if annotations:
            patch["metadata"]["annotations"] = annotations
        (labels if is_edge else before).append(Change("patch", f"/api/v1/nodes/{name}", patch, what))
    before += [
        _apply(o)
        for o in cloud_objects(opts.image, opts.manager_replicas, opts.manager_webhook_url)
        if policies or o["kind"] not in components.POLICY_KINDS
    ]
    todo = [n for n in edge if done.get(n) != "converted"]
    skipped = [n for n in edge if done.get(n) == "converted"]
    after = [
        Change("patch", RECORD_PATH, {"data": {"state": "converted"}}, f"ConfigMap {NS}/{RECORD}: state converted")
    ]
    if opts.join_token:
        secret = components.join_token_secret(opts.join_token)
        before.append(
            Change("apply", _collection(secret), secret, f"Secret {NS}/{_name(secret)} (the bootstrap token)")
        )
        after.append(_delete(secret))  # the nodes have it now; kept until then, for a resumed run
    return Plan(
        "convert",
        before,
        todo,
        skipped,
        after,
        cloud,
        edge,
        autonomous,
        tunnel=opts.tunnel,
        join_token=bool(opts.join_token),
        labels=labels,
    )


def pool_attributes_removed(nodes: list[Obj]) -> list[Change]:
    """Revert, once yurt-manager and the NodePool CRD are gone: take off every node what its pool put there
    (recorded in `nodepool.PREVIOUS`). The pool label itself is the operator's and stays."""
    out = []
    for n in nodes:
        patch = nodepool.node_patch(n, {}) if nodepool.PREVIOUS in (n["metadata"].get("annotations") or {}) else None
        if patch is not None:
            out.append(
                Change("patch", f"/api/v1/nodes/{_name(n)}", patch, f"Node {_name(n)}: NodePool attributes removed")
            )
    return out


YURTHUB_CSR_LABEL = "app.kubernetes.io/managed-by=yurthub"
"""The label yurthub puts on the CertificateSigningRequests it makes."""


def revert_plan(
    nodes: list[Obj],
    pods: list[Obj],
    record: Obj | None,
    csrs: list[Obj] | None = None,
    *,
    tunnel: bool = False,
    retry: str = "",
) -> Plan:
    """Undo convert; `csrs` are the CSRs labelled `YURTHUB_CSR_LABEL` (those the yurthubs of the edge nodes,
    and of the nodes yurt-manager reverted already, made go); `tunnel`: the tunnel chart's release is
    installed; `retry`: this run's value of the annotation `nodeconversion.RETRY`, so yurt-manager tries a
    node whose revert failed again.

    The edge nodes are labelled `is-edge-worker=false` first (false, not removed, so a NodePool of type Edge
    cannot keep them edge nodes), and yurt-manager reverts those it converted. Then yurt-manager and the
    other cloud objects go, and only then the nodes' labels, annotations and conversion condition (so a
    yurt-manager run elsewhere that is still up sees no autonomy left either), the pods' tolerations and the
    pools' attributes: nothing is left to act on them again."""
    labelled = [n for n in nodes if names.EDGE_WORKER_LABEL in (n["metadata"].get("labels") or {})]
    edge = sorted(_name(n) for n in labelled if n["metadata"]["labels"][names.EDGE_WORKER_LABEL] == "true")
    cloud = sorted(_name(n) for n in labelled if n["metadata"]["labels"][names.EDGE_WORKER_LABEL] != "true")
    converted = sorted(_name(n) for n in nodes if nodeconversion.reason_of(n) not in ("", nodeconversion.REVERTED))
    edge = sorted(set(edge) | set(converted))  # a node labelled false by an earlier revert that failed too
    cloud = [n for n in cloud if n not in edge]
    labelled_names = {_name(n) for n in labelled}
    autonomous = sorted(
        _name(n) for n in labelled if names.AUTONOMY_ANNOTATION in (n["metadata"].get("annotations") or {})
    )
    labels = [
        Change(
            "patch",
            f"/api/v1/nodes/{n}",
            {
                "metadata": {
                    "labels": {names.EDGE_WORKER_LABEL: "false"},
                    "annotations": {nodeconversion.RETRY: retry},
                }
            },
            f"Node {n}: label {names.EDGE_WORKER_LABEL}=false; yurt-manager reverts it",
        )
        for n in edge
        if n in converted
    ]
    after: list[Change] = []
    # a node yurt-manager converted and reverted already (its label gone) keeps the CSRs its yurthub made
    reverted = {_name(n) for n in nodes if nodeconversion.reason_of(n) == nodeconversion.REVERTED}
    requesters = {f"system:node:{n}" for n in set(edge) | reverted}
    for csr in csrs or []:
        if csr.get("spec", {}).get("username") in requesters:
            name = _name(csr)
            after.append(
                Change(
                    "delete",
                    f"/apis/certificates.k8s.io/v1/certificatesigningrequests/{name}",
                    None,
                    f"CertificateSigningRequest {name} (made by {csr['spec']['username']}'s yurthub)",
                )
            )
    after += [_delete(o) for o in reversed(cloud_objects("-"))]
    conversion = (nodeconversion.RETRY, nodeconversion.RETRY_SEEN)
    for n in nodes:
        meta = n["metadata"]
        keys = [k for k in (names.AUTONOMY_ANNOTATION, *conversion) if k in (meta.get("annotations") or {})]
        if _name(n) in labelled_names or keys:
            patch = {
                "metadata": {
                    "labels": {names.EDGE_WORKER_LABEL: None},
                    "annotations": {k: None for k in (names.AUTONOMY_ANNOTATION, *conversion)},
                }
            }
            after.append(
                Change(
                    "patch",
                    f"/api/v1/nodes/{_name(n)}",
                    patch,
                    f"Node {_name(n)}: label {names.EDGE_WORKER_LABEL} and annotations "
                    f"{', '.join((names.AUTONOMY_ANNOTATION, *conversion))} removed",
                )
            )
        if nodeconversion.condition(n) is not None:
            after.append(
                Change(
                    "patch",
                    f"/api/v1/nodes/{_name(n)}/status",
                    None,
                    f"Node {_name(n)}: condition {nodeconversion.CONDITION} removed",
                )
            )
    for pod in pods:
        restore = tolerations.desired_patch(pod, None)
        if restore is not None:
            meta = pod["metadata"]
            after.append(
                Change(
                    "patch",
                    f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                    restore,
                    f"Pod {meta['namespace']}/{meta['name']}: original tolerations restored",
                )
            )
    after += pool_attributes_removed(nodes)
    after.append(_delete(components.join_token_secret("")))  # left by a convert that did not complete
    after.append(_delete(nodeconversion.settings_configmap(nodeconversion.JobSettings(image="-"))))
    lease = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{components.MANAGER}"
    after.append(Change("delete", lease, None, f"Lease {NS}/{components.MANAGER} (yurt-manager's leader election)"))
    if record is not None:
        after.append(Change("delete", RECORD_PATH, None, f"ConfigMap {NS}/{RECORD}"))
    todo = [n for n in edge if n in converted]
    skipped = [n for n in edge if n not in converted]
    return Plan("revert", [], todo, skipped, after, cloud, edge, autonomous, tunnel=tunnel, labels=labels)
