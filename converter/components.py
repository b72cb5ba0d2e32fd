"""The cloud objects `yurtctl convert` installs and `yurtctl revert` removes, as plain manifests.

Every object carries the label `app.kubernetes.io/managed-by: yurtctl`, so revert (and the tests comparing
the cluster before and after) can tell ours from the cluster's own.
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import json
from importlib import resources
from typing import Any

import yaml

from converter import continuity

Obj = dict[str, Any]
NAMESPACE = "kube-system"
MANAGER = "yurt-manager"
MANAGED_BY = {"app.kubernetes.io/managed-by": "yurtctl"}
HEALTH_PORT = 10272
WEBHOOK_PORT = 10273
"""yurt-manager's HTTPS port for the endpoint admission webhook (`converter.endpointwebhook`)."""
ENDPOINT_WEBHOOK = "yurt-manager-endpoints"
"""The MutatingWebhookConfiguration keeping endpoints of pods on autonomous nodes ready."""
WEBHOOK_SERVICE = "yurt-manager-webhook"
"""The Service in front of yurt-manager's webhook port."""
WEBHOOK_SECRET = "yurt-manager-webhook-certs"  # noqa: S105 - a Secret's name, not a secret
"""The Secret holding the webhook's CA and serving certificate, filled by yurt-manager (`converter.servingcert`)."""


def _meta(name: str, namespace: str | None = None) -> Obj:
    meta: Obj = {"name": name, "labels": dict(MANAGED_BY)}
    if namespace:
        meta["namespace"] = namespace
    return meta


def manager_rules() -> list[Obj]:
    """What yurt-manager needs, and nothing more."""
    return [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": [""], "resources": ["services"], "verbs": ["get"]},
        {
            "apiGroups": ["certificates.k8s.io"],
            "resources": ["certificatesigningrequests"],
            "verbs": ["get", "list", "watch"],
        },
        {
            "apiGroups": ["certificates.k8s.io"],
            "resources": ["certificatesigningrequests/approval"],
            "verbs": ["update"],
        },
        {
            "apiGroups": ["certificates.k8s.io"],
            "resources": ["signers"],
            "resourceNames": ["kubernetes.io/kubelet-serving", "kubernetes.io/kube-apiserver-client"],
            "verbs": ["approve"],
        },
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
        *endpoint_rules(),
        *appset_rules(),
        *nodepool_manager_rules(),
        *conversion_rules(),
    ]


CONVERSION_SETTINGS = "yurt-node-conversion"
"""The ConfigMap (in `NAMESPACE`) saying what node Jobs run; `converter.nodeconversion` reads it."""


def conversion_rules() -> list[Obj]:
    """Cluster-wide part of conversion by label: write the node condition `YurtEdgeConversion` (nodes/status)
    and the annotation recording a retry (nodes patch, granted with NodePools), tell it in Events."""
    return [{"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]}]


def manager_namespace_rules() -> list[Obj]:
    """What yurt-manager may do in `NAMESPACE` only (a Role): create and delete the node Jobs, read the one
    ConfigMap with their settings. Nowhere else may it create a Job or a pod."""
    return [
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch", "create", "delete"]},
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [CONVERSION_SETTINGS], "verbs": ["get"]},
    ]


def manager_role(subject: Obj) -> list[Obj]:
    """The Role of `manager_namespace_rules` and its binding to `subject`."""
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(MANAGER, NAMESPACE),
            "rules": manager_namespace_rules(),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(MANAGER, NAMESPACE),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": MANAGER},
            "subjects": [subject],
        },
    ]


def endpoint_rules() -> list[Obj]:
    """What keeping endpoints needs: read and update EndpointSlices and Endpoints (to let go of what it kept
    once autonomy lapses: `converter.continuitysync`), its own certificate Secret and webhook configuration
    by name (get and update only: `yurtctl convert` creates both, so yurt-manager may create no Secret)."""
    return [
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch", "update"],
        },
        {"apiGroups": [""], "resources": ["endpoints"], "verbs": ["get", "list", "watch", "update"]},
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [WEBHOOK_SECRET], "verbs": ["get", "update"]},
        {
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["mutatingwebhookconfigurations"],
            "resourceNames": [ENDPOINT_WEBHOOK],
            "verbs": ["get", "update"],
        },
    ]


def _webhook(name: str, path: str, resource: str, group: str, version: str, url: str) -> Obj:
    client: Obj = (
        {"url": f"{url.rstrip('/')}{path}"}
        if url
        else {"service": {"namespace": NAMESPACE, "name": WEBHOOK_SERVICE, "path": path, "port": 443}}
    )
    return {
        "name": name,
        "clientConfig": client,
        "rules": [
            {
                "apiGroups": [group],
                "apiVersions": [version],
                "operations": ["CREATE", "UPDATE"],
                "resources": [resource],
                "scope": "Namespaced",
            }
        ],
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": "Ignore",
        "matchPolicy": "Equivalent",
        "reinvocationPolicy": "Never",
        "timeoutSeconds": 3,
    }


def endpoint_webhook_objects(url: str = "") -> list[Obj]:
    """The endpoint webhook: the (empty) Secret yurt-manager keeps its certificate in, the Service in front of
    its port, and the MutatingWebhookConfiguration (caBundle written by yurt-manager). Only the objects the
    stock controllers write are sent, on create and update: EndpointSlices by the EndpointSlice controller's
    label, Endpoints by their writer (a match condition: they carry no label of their own).
    `failurePolicy: Ignore`, so a yurt-manager that is down leaves the stock behaviour. `url`: where the
    apiserver reaches a yurt-manager that runs outside the cluster (beside the control plane); empty: through
    the Service."""
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(WEBHOOK_SECRET, NAMESPACE), "type": "Opaque"},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(WEBHOOK_SERVICE, NAMESPACE),
            "spec": {
                "selector": {"app": MANAGER},
                "ports": [{"name": "webhook", "port": 443, "targetPort": WEBHOOK_PORT, "protocol": "TCP"}],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": _meta(ENDPOINT_WEBHOOK),
            "webhooks": [
                _webhook(
                    "endpointslices.yurt-manager.yurt-edge.io",
                    "/mutate-endpointslices",
                    "endpointslices",
                    "discovery.k8s.io",
                    "v1",
                    url,
                )
                | {"objectSelector": {"matchLabels": dict(continuity.SLICE_MANAGED_BY)}},
                _webhook("endpoints.yurt-manager.yurt-edge.io", "/mutate-endpoints", "endpoints", "", "v1", url)
                | {
                    "matchConditions": [
                        {
                            "name": "by-the-endpoints-controller",
                            "expression": "request.userInfo.username in "
                            + json.dumps(list(continuity.ENDPOINTS_WRITERS)).replace('"', "'"),
                        }
                    ]
                },
            ],
        },
    ]


def with_ca_bundle(config: Obj, ca_pem: bytes) -> Obj | None:
    """`config` with `ca_pem` as every webhook's caBundle, or None when it already is."""
    bundle = base64.b64encode(ca_pem).decode()
    if all((w.get("clientConfig") or {}).get("caBundle") == bundle for w in config.get("webhooks") or []):
        return None
    out = copy.deepcopy(config)
    for w in out.get("webhooks") or []:
        w.setdefault("clientConfig", {})["caBundle"] = bundle
    return out


def appset_rules() -> list[Obj]:
    """What the YurtAppSet controller needs: read YurtAppSets and NodePools, write YurtAppSet status, and
    manage Deployments (it writes only Deployments rendered from a YurtAppSet's template, in that
    YurtAppSet's namespace, with a controller ownerReference to it: `converter.appset`)."""
    return [
        {"apiGroups": ["apps.openyurt.io"], "resources": ["yurtappsets"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["apps.openyurt.io"], "resources": ["yurtappsets/status"], "verbs": ["update", "patch"]},
        {"apiGroups": ["apps.openyurt.io"], "resources": ["nodepools"], "verbs": ["get", "list", "watch"]},
        {
            "apiGroups": ["apps"],
            "resources": ["deployments"],
            "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
        },
    ]


@functools.cache
def _crd(filename: str) -> Obj:
    loaded: Obj = yaml.safe_load(resources.files("converter").joinpath("crds", filename).read_text())
    return loaded


def appset_objects() -> list[Obj]:
    """The YurtAppSet CustomResourceDefinition (package data, OpenYurt's v1beta1 schema)."""
    return [copy.deepcopy(_crd("yurtappsets.apps.openyurt.io.yaml"))]


def manager_rbac(subject: Obj | None = None) -> list[Obj]:
    """ServiceAccount, ClusterRole and ClusterRoleBinding of yurt-manager (bound to `subject` if given)."""
    subject = subject or {"kind": "ServiceAccount", "name": MANAGER, "namespace": NAMESPACE}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(MANAGER, NAMESPACE)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": _meta(MANAGER),
            "rules": manager_rules(),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": _meta(MANAGER),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": MANAGER},
            "subjects": [subject],
        },
        *manager_role(subject),
    ]


def manager_deployment(image: str, *, replicas: int = 2) -> Obj:
    """yurt-manager on the cloud nodes (`openyurt.io/is-edge-worker=false`), two replicas under a Lease."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(MANAGER, NAMESPACE),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": MANAGER}},
            "template": {
                "metadata": {"labels": {"app": MANAGER, **MANAGED_BY}},
                "spec": {
                    "serviceAccountName": MANAGER,
                    "nodeSelector": {"openyurt.io/is-edge-worker": "false"},
                    "tolerations": [{"operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [
                        {
                            "name": MANAGER,
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": [
                                "yurt-manager",
                                f"--health-port={HEALTH_PORT}",
                                f"--webhook-port={WEBHOOK_PORT}",
                            ],
                            "ports": [
                                {"name": "health", "containerPort": HEALTH_PORT},
                                {"name": "webhook", "containerPort": WEBHOOK_PORT},
                            ],
                            "livenessProbe": {
                                "httpGet": {"path": "/healthz", "port": HEALTH_PORT},
                                "periodSeconds": 10,
                            },
                            "readinessProbe": {"httpGet": {"path": "/readyz", "port": HEALTH_PORT}, "periodSeconds": 5},
                            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
                        }
                    ],
                },
            },
        },
    }


JOB_LABEL = "yurtctl.openyurt.io/node-job"
"""Label on every per-node Job (value: the node), so leftovers of any earlier run are found and removed."""


def job_name(action: str, node: str) -> str:
    name = f"yurtctl-{action}-{node}"
    return name if len(name) <= 63 else name[:54] + "-" + hashlib.sha256(node.encode()).hexdigest()[:8]


TUNNEL_CA_MOUNT = "/etc/yurt-edge/tunnel-ca"
"""Where a convert Job sees the tunnel server's CA; its entry script copies `ca.crt` to the node."""
JOIN_TOKEN_SECRET = "yurtctl-join-token"  # noqa: S105 - a Secret's name, not a secret
"""The Secret holding the bootstrap token for the edge nodes' yurthubs (`yurtctl convert --join-token-file`)."""
JOIN_TOKEN_MOUNT = "/etc/yurt-edge/join-token"  # noqa: S105 - a path, not a secret
"""Where a convert Job sees that Secret (file `token`, mode 0400); its entry script copies it to the node."""


def join_token_secret(token: str) -> Obj:
    """The Secret the convert Jobs mount the bootstrap token from (kube-system, where bootstrap tokens live)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(JOIN_TOKEN_SECRET, NAMESPACE),
        "type": "Opaque",
        "data": {"token": base64.b64encode(token.encode()).decode()},
    }


def node_job(
    action: str,
    node: str,
    image: str,
    args: list[str],
    *,
    tunnel_ca: str | None = None,
    join_token_secret: str | None = None,
) -> Obj:
    """The Job that runs `yurtctl node <action>` on `node`, in the node's root and namespaces; `tunnel_ca`
    names the ConfigMap with the tunnel server's CA (`ca.crt`) to hand to the node, `join_token_secret` the
    Secret with the bootstrap token, mounted as a file: the token is never in the Job's spec or command."""
    job: Obj = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {**_meta(job_name(action, node), NAMESPACE), "labels": {**MANAGED_BY, JOB_LABEL: node}},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": 900,
            "template": {
                "metadata": {"labels": {**MANAGED_BY, JOB_LABEL: node}},
                "spec": {
                    "nodeName": node,
                    "restartPolicy": "Never",
                    "hostPID": True,
                    "hostNetwork": True,
                    "terminationGracePeriodSeconds": 5,
                    "tolerations": [{"operator": "Exists"}],
                    "automountServiceAccountToken": False,
                    "containers": [
                        {
                            "name": "node",
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["/usr/local/bin/yurt-node-entry", action, f"--node-name={node}", *args],
                            "securityContext": {"privileged": True, "runAsUser": 0},
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "volumeMounts": [{"name": "host", "mountPath": "/host"}],
                        }
                    ],
                    "volumes": [{"name": "host", "hostPath": {"path": "/", "type": "Directory"}}],
                },
            },
        },
    }
    if tunnel_ca is not None:
        pod = job["spec"]["template"]["spec"]
        pod["volumes"].append(
            {"name": "tunnel-ca", "configMap": {"name": tunnel_ca, "items": [{"key": "ca.crt", "path": "ca.crt"}]}}
        )
        pod["containers"][0]["volumeMounts"].append(
            {"name": "tunnel-ca", "mountPath": TUNNEL_CA_MOUNT, "readOnly": True}
        )
    if join_token_secret is not None:
        pod = job["spec"]["template"]["spec"]
        pod["volumes"].append(
            {
                "name": "join-token",
                "secret": {
                    "secretName": join_token_secret,
                    "defaultMode": 0o400,
                    "items": [{"key": "token", "path": "token"}],
                },
            }
        )
        pod["containers"][0]["volumeMounts"].append(
            {"name": "join-token", "mountPath": JOIN_TOKEN_MOUNT, "readOnly": True}
        )
    return job


NODEPOOL_CRD = "nodepools.apps.openyurt.io"
HUB_NODEPOOLS = "yurt-hub-nodepools"
"""ClusterRole and binding letting every node (group `system:nodes`) get a NodePool by name, for servicetopology
(not list or watch: a node need not enumerate every site's pool and members)."""


def nodepool_manager_rules() -> list[Obj]:
    """yurt-manager keeps pools' attributes on their nodes, their status, and tells refusals as Events."""
    return [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["patch"]},
        {"apiGroups": ["apps.openyurt.io"], "resources": ["nodepools"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["apps.openyurt.io"], "resources": ["nodepools/status"], "verbs": ["patch", "update"]},
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
    ]


def nodepool_crd() -> Obj:
    """The NodePool CustomResourceDefinition shipped in the package."""
    text = resources.files("converter").joinpath("crds", f"{NODEPOOL_CRD}.yaml").read_text()
    crd: Obj = yaml.safe_load(text)
    return crd


POOL_LABEL_POLICY = "yurt-nodepool-membership"
"""ValidatingAdmissionPolicy (and binding) refusing a node's own change of its pool label."""
POLICY_KINDS = frozenset({"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"})
POLICY_MINOR = 30
"""admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy is served from Kubernetes 1.30 on."""

_POOL = "'apps.openyurt.io/nodepool'"
_POOL_OF = (
    "(has({o}.metadata.labels) && " + _POOL + " in {o}.metadata.labels ? {o}.metadata.labels[" + _POOL + "] : '')"
)


def nodepool_policy() -> list[Obj]:
    """A node (user `system:node:*`) may not change its own `apps.openyurt.io/nodepool` label once registered:
    joining a pool gives a node the pool's attributes, its workloads (pinned by that label) and a place in
    the pool's `status.nodes`, so a compromised node must not pick its pool. Registration (create) may carry
    it (`--node-labels`, as `yurtadm join --nodepool-name` does); admins change it as before. A CEL policy,
    evaluated by the apiserver itself: no webhook to run or to fail open."""
    same = f"{_POOL_OF.format(o='object')} == {_POOL_OF.format(o='oldObject')}"
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": _meta(POOL_LABEL_POLICY),
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["UPDATE"],
                            "resources": ["nodes", "nodes/status"],
                        }
                    ]
                },
                "matchConditions": [
                    {"name": "by-a-node", "expression": "request.userInfo.username.startsWith('system:node:')"}
                ],
                "validations": [
                    {
                        "expression": same,
                        "message": "a node cannot change its own NodePool membership (label "
                        "apps.openyurt.io/nodepool); an administrator changes it",
                        "reason": "Forbidden",
                    }
                ],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": _meta(POOL_LABEL_POLICY),
            "spec": {"policyName": POOL_LABEL_POLICY, "validationActions": ["Deny"]},
        },
    ]


POOL_IN_USE_POLICY = "yurt-nodepool-in-use"
"""ValidatingAdmissionPolicy (and binding) refusing to delete a NodePool that still has member nodes."""
_MEMBERS = "oldObject.status.nodes"


def nodepool_in_use_policy() -> list[Obj]:
    """A NodePool whose `status.nodes` is not empty cannot be deleted, by anyone: its members would keep the
    pool's label (so its workloads, pinned by that label, stay unschedulable or stranded) and lose the pool's
    topology, with nothing to say why. The message names the members; take them out of the pool (remove
    their `apps.openyurt.io/nodepool` label), let yurt-manager empty the status, then delete. Removing the
    CRD (`yurtctl revert`) deletes pools without admission, so it is not held up by this."""
    empty = f"!has(oldObject.status) || !has({_MEMBERS}) || size({_MEMBERS}) == 0"
    message = (
        "'NodePool ' + oldObject.metadata.name + ' still has member nodes (' + "
        f"{_MEMBERS}.join(', ') + '): remove their label apps.openyurt.io/nodepool first, then delete it "
        "once its status lists no nodes'"
    )
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": _meta(POOL_IN_USE_POLICY),
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": ["apps.openyurt.io"],
                            "apiVersions": ["*"],
                            "operations": ["DELETE"],
                            "resources": ["nodepools"],
                        }
                    ]
                },
                "validations": [{"expression": empty, "messageExpression": message, "reason": "Forbidden"}],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": _meta(POOL_IN_USE_POLICY),
            "spec": {"policyName": POOL_IN_USE_POLICY, "validationActions": ["Deny"]},
        },
    ]


def nodepool_objects() -> list[Obj]:
    """What `yurtctl convert` installs for NodePools: the CRD, read access to pools for every node
    (yurthub's servicetopology reads its pool's members with the node's own identity), and the policy
    keeping a node from choosing its pool (`nodepool_policy`) and the one keeping a pool with members from
    being deleted (`nodepool_in_use_policy`); the policies only on Kubernetes 1.30 and later."""
    return [
        nodepool_crd(),
        *nodepool_policy(),
        *nodepool_in_use_policy(),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": _meta(HUB_NODEPOOLS),
            "rules": [{"apiGroups": ["apps.openyurt.io"], "resources": ["nodepools"], "verbs": ["get"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": _meta(HUB_NODEPOOLS),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": HUB_NODEPOOLS},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}],
        },
    ]
