"""`yurtctl node convert` / `yurtctl node revert`: what changes on one node, run on that node.

Convert, each step idempotent so a re-run after any interruption finishes the job:
1. preflight, before anything on the node changes: the kubeadm layout (`kubeadm-flags.env` with
   `KUBELET_KUBEADM_ARGS`, `kubelet.conf` naming the apiserver, the kubelet's client certificate),
   /opt/yurt-edge/bin/yurthub installed (the self-contained executable the Job's entry script installs, or an
   operator's virtualenv), and the loopback ports yurthub (and the tunnel agent) will listen
   on free (unless our own services from an earlier run hold them);
2. yurthub as a systemd service (`/etc/systemd/system/yurthub.service`, `/etc/yurthub/yurthub.env`),
   started and answering `/v1/healthz`; with `--join-token-file` the bootstrap token is installed as
   `/etc/yurthub/join-token` (0600) and yurthub gets its own client certificate with it
   (`--join-token-file=`, never the token itself in yurthub.env, which would put it on the process list);
3. kubelet pointed at yurthub: `kubeadm-flags.env` backed up once under `STATE_DIR`, then later flags
   `--kubeconfig=/etc/kubernetes/kubelet-yurthub.conf --bootstrap-kubeconfig=` appended (later flags win;
   the empty bootstrap flag keeps kubelet from re-bootstrapping a kubeconfig without credentials), kubelet
   restarted;
4. verified: yurthub has forwarded kubelet requests since the restart and the Node is Ready as read through
   yurthub;
5. with `--tunnel-server-addr`: yurt-tunnel-agent as a systemd service (`yurt-tunnel-agent.service`,
   `/etc/yurt-tunnel/agent.env`, the tunnel server's CA in `/etc/yurt-tunnel/ca.crt`), allowed to reach the
   kubelet on the addresses of this node's Node object, and verified connected to a server (`/readyz`).
If a step does not succeed within the timeout, the node is rolled back (revert below) and the step fails.

A node `yurtctl node join` made (`JOINED_STATE`) is behind yurthub from its first start: convert leaves it as
it is, revert refuses (its kubelet has no stock configuration to go back to; `yurtctl node reset` is its way
out), so the label-driven conversion never breaks a joined node.

Revert stops and removes the tunnel agent when it is there, restores `kubeadm-flags.env` byte for byte from
the backup, restarts kubelet and waits for its health, then stops and removes yurthub, its files and state,
and /opt/yurt-edge when convert created it (`STATE_DIR/created-install`, written by the Job's entry script
before it installs the executable there; `created-venv`, from earlier versions that made a virtualenv),
last of all, since the running `yurtctl` may be the one it removes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable
from importlib import resources

from converter import errors, jointoken
from converter.host import Host

log = logging.getLogger(__name__)

FLAGS_ENV = "/var/lib/kubelet/kubeadm-flags.env"
KUBELET_CONF = "/etc/kubernetes/kubelet.conf"
KUBELET_CERT = "/var/lib/kubelet/pki/kubelet-client-current.pem"
CA_FILE = "/etc/kubernetes/pki/ca.crt"
HUB_KUBECONFIG = "/etc/kubernetes/kubelet-yurthub.conf"
UNIT = "/etc/systemd/system/yurthub.service"
ENV_FILE = "/etc/yurthub/yurthub.env"
VENV = "/opt/yurt-edge"
HUB_STATE = "/var/lib/yurthub"
STATE_DIR = "/var/lib/yurt-edge/convert"
BACKUP = f"{STATE_DIR}/kubeadm-flags.env"
CREATED_INSTALL = f"{STATE_DIR}/created-install"
"""Left by the Job's entry script when it created /opt/yurt-edge (the self-contained executable)."""
CREATED_VENV = f"{STATE_DIR}/created-venv"
"""The same, left by earlier versions of the entry script, which made a virtualenv there."""
REDIRECT = f" --kubeconfig={HUB_KUBECONFIG} --bootstrap-kubeconfig="
HEALTHZ = "http://127.0.0.1:10267/v1/healthz"
METRICS = "http://127.0.0.1:10267/metrics"
PROXY = "http://127.0.0.1:10261"
KUBELET_HEALTHZ = "http://127.0.0.1:10248/healthz"
AGENT_UNIT = "/etc/systemd/system/yurt-tunnel-agent.service"
AGENT_DIR = "/etc/yurt-tunnel"
AGENT_ENV = f"{AGENT_DIR}/agent.env"
AGENT_CA = f"{AGENT_DIR}/ca.crt"
HUB_TOKEN = "/etc/yurthub/join-token"  # noqa: S105 - a path, not a secret
"""The bootstrap token yurthub reads with `--join-token-file` (0600)."""
STAGED_TOKEN = f"{STATE_DIR}/join-token"
"""Where the node Job's entry script leaves the bootstrap token (from its Secret), 0600; removed after the step."""
TUNNEL_CA = f"{STATE_DIR}/tunnel-ca.crt"
"""Where the node Job's entry script leaves the tunnel server's CA (from the chart's CA ConfigMap)."""
AGENT_READYZ = "http://127.0.0.1:10266/readyz"
JOINED_STATE = "/var/lib/yurt-edge/join/state.json"
"""`yurtctl node join`'s record (`converter.nodejoin`): a node joined behind yurthub from its first start."""

HOST_FILES = {
    UNIT: "written (yurthub systemd unit)",
    ENV_FILE: "written (yurthub arguments)",
    HUB_KUBECONFIG: "written (kubelet's kubeconfig through yurthub)",
    FLAGS_ENV: f"backed up to {BACKUP}, then `{REDIRECT.strip()}` appended",
    VENV: "the image's self-contained executable, installed when missing or older (removed on revert only if "
    "convert created it; an operator's virtualenv there is used as it is)",
    HUB_STATE: "yurthub's cache (removed on revert)",
    STATE_DIR: "convert's backup and state (removed on revert)",
}
"""Every host path convert touches, for `--dry-run`."""

TUNNEL_HOST_FILES = {
    AGENT_UNIT: "written (yurt-tunnel-agent systemd unit)",
    AGENT_ENV: "written (yurt-tunnel-agent arguments)",
    AGENT_CA: "written (the tunnel server's CA)",
}
"""The host paths `--tunnel` adds."""

TOKEN_HOST_FILES = {HUB_TOKEN: "written 0600 (the bootstrap token yurthub reads with --join-token-file)"}
"""The host path `--join-token-file` adds."""

HUB_KUBECONFIG_TEXT = """\
# kubelet kubeconfig that sends the kubelet through yurthub's plain loopback port (written by yurtctl).
apiVersion: v1
kind: Config
clusters:
- name: yurthub
  cluster:
    server: http://127.0.0.1:10261
contexts:
- name: yurthub
  context:
    cluster: yurthub
current-context: yurthub
users: []
"""


def _unit(name: str) -> str:
    return resources.files("converter").joinpath("units", name).read_text()


UNIT_TEXT = _unit("yurthub.service")
"""The repository's systemd/yurthub.service, shipped in the package."""
AGENT_UNIT_TEXT = _unit("yurt-tunnel-agent.service")
"""The repository's systemd/yurt-tunnel-agent.service, shipped in the package."""

Fetch = Callable[[str], tuple[int, str]]
"""GET a URL on the node; (status, body), status 0 when nothing answered."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    node: str
    """This node's name."""
    hub_args: str = ""
    """Extra yurthub flags for yurthub.env."""
    timeout_s: float = 120.0
    """How long yurthub may take to serve, and kubelet to come back Ready through it."""
    interval_s: float = 1.0
    tunnel_servers: tuple[str, ...] = ()
    """Tunnel server addresses (host:port) the agent dials; empty: no tunnel agent on this node."""
    tunnel_server_name: str = ""
    """Name the tunnel server's certificate must carry (empty: each address's host)."""
    tunnel_ca_file: str = TUNNEL_CA
    """The tunnel server's CA, on this node."""
    tunnel_ports: tuple[int, ...] = (10250,)
    """Local ports the cloud may reach through the agent."""
    join_token_file: str = ""
    """A file on this node holding the bootstrap token; yurthub then gets its own client certificate by CSR."""


def wait_until(what: str, check: Callable[[], bool], timeout_s: float, interval_s: float) -> None:
    """Poll `check` every `interval_s` until it holds; past `timeout_s`, `NodeStepFailed` saying `what`
    (phrased as what did not happen: "yurthub did not answer ...")."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval_s)
    raise errors.NodeStepFailed(f"{what} within {timeout_s:.0f}s")


def _wait(what: str, check: Callable[[], bool], settings: Settings) -> None:
    wait_until(what, check, settings.timeout_s, settings.interval_s)


def _must(host: Host, argv: list[str], timeout: float = 120.0) -> str:
    rc, out = host.run(argv, timeout)
    if rc != 0:
        raise errors.NodeStepFailed(f"`{' '.join(argv)}` failed ({rc}): {out[-500:]}")
    return out


def server_of(kubeconfig: str) -> str:
    match = re.search(r"^\s*server:\s*(\S+)\s*$", kubeconfig, re.M)
    if match is None:
        raise errors.PreflightFailed(f"{KUBELET_CONF} names no apiserver (no `server:` line)")
    return match.group(1).strip("'\"")


HUB_PORTS = {10261: "yurthub's proxy", 10267: "yurthub's health and metrics"}
AGENT_PORTS = {10266: "yurt-tunnel-agent's health and metrics"}


def busy_ports(host: Host, settings: Settings) -> list[str]:
    """Ports our services will listen on that something else holds (a re-run's own services do not count)."""
    wanted = dict(HUB_PORTS) if not host.exists(UNIT) else {}
    if settings.tunnel_servers and not host.exists(AGENT_UNIT):
        wanted |= AGENT_PORTS
    return [f"127.0.0.1:{port} ({what})" for port, what in sorted(wanted.items()) if not host.port_free(port)]


def preflight(host: Host, settings: Settings | None = None) -> str:
    """Check the node's layout and ports; return the apiserver address kubelet uses."""
    flags = host.read(FLAGS_ENV)
    if flags is None or not re.search(r'^KUBELET_KUBEADM_ARGS="', flags, re.M):
        raise errors.PreflightFailed(f"{FLAGS_ENV} with KUBELET_KUBEADM_ARGS not found: not a kubeadm-layout kubelet")
    conf = host.read(KUBELET_CONF)
    if conf is None:
        raise errors.PreflightFailed(f"{KUBELET_CONF} not found")
    if not host.exists(KUBELET_CERT):
        raise errors.PreflightFailed(f"kubelet client certificate {KUBELET_CERT} not found")
    if not host.exists(f"{VENV}/bin/yurthub"):
        raise errors.PreflightFailed(
            f"{VENV}/bin/yurthub not installed (unpack yurt-edge's executable into {VENV}, or pip install "
            f"yurt-edge into a virtualenv there)"
        )
    taken = busy_ports(host, settings) if settings is not None else []
    if taken:
        raise errors.PreflightFailed(f"ports already in use by something else: {', '.join(taken)}")
    return server_of(conf)


def redirected(flags: str) -> str:
    """kubeadm-flags.env with the yurthub kubeconfig appended to KUBELET_KUBEADM_ARGS (idempotent)."""
    if REDIRECT in flags:
        return flags
    out, n = re.subn(
        r'^(KUBELET_KUBEADM_ARGS=".*?)"\s*$', lambda m: f'{m.group(1)}{REDIRECT}"', flags, count=1, flags=re.M
    )
    if n != 1:
        raise errors.PreflightFailed(f'{FLAGS_ENV}: no KUBELET_KUBEADM_ARGS="..." line to extend')
    return out if out.endswith("\n") else out + "\n"


def kubelet_forwarded(metrics: str) -> float:
    pattern = r'^yurthub_requests_total\{component="kubelet",[^}]*outcome="forwarded"[^}]*\} (\S+)'
    return sum(float(m) for m in re.findall(pattern, metrics, re.M))


def _ready_through_hub(fetch: Fetch, node: str) -> bool:
    status, body = fetch(f"{PROXY}/api/v1/nodes/{node}")
    if status != 200:
        return False
    conditions = json.loads(body).get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _install_service(host: Host, service: str, files: dict[str, tuple[str, int]]) -> None:
    """Write a service's files (path: text and mode), enable it, and (re)start it unless it already runs
    with exactly these files, so a re-run leaves a healthy service alone."""
    changed = any(host.read(path) != text for path, (text, _) in files.items())
    for path, (text, mode) in files.items():
        host.write(path, text, mode)
    _must(host, ["systemctl", "daemon-reload"])
    _must(host, ["systemctl", "enable", service])
    active = host.run(["systemctl", "is-active", "--quiet", service])[0] == 0
    if changed or not active:
        _must(host, ["systemctl", "restart", service], timeout=90)


def join_token(host: Host, settings: Settings) -> str:
    """The bootstrap token of `settings.join_token_file` ("" without one); checked before the node changes."""
    if jointoken.in_flags(settings.hub_args):
        raise errors.PreflightFailed(
            "--hub-args carries --join-token, which puts the token on the process list: use --join-token-file"
        )
    if not settings.join_token_file:
        return ""
    text = host.read(settings.join_token_file)
    if text is None:
        raise errors.PreflightFailed(f"--join-token-file {settings.join_token_file}: no such file on this node")
    return jointoken.parse(text, f"--join-token-file {settings.join_token_file}")


def hub_env(settings: Settings, server: str, with_token: bool) -> str:
    """yurthub.env: the token's file with a bootstrap token (yurthub's own certificate), else the kubelet's."""
    identity = f"--join-token-file={HUB_TOKEN}" if with_token else f"--client-cert={KUBELET_CERT}"
    args = f"--server-addr={server} --node-name={settings.node} --ca-file={CA_FILE} {identity} {settings.hub_args}"
    return f'YURTHUB_ARGS="{args.strip()}"\n'


def install_hub(host: Host, fetch: Fetch, settings: Settings, server: str) -> None:
    token = join_token(host, settings)
    files = {ENV_FILE: (hub_env(settings, server, bool(token)), 0o600), UNIT: (UNIT_TEXT, 0o644)}
    if token:
        files = {HUB_TOKEN: (token + "\n", 0o600), **files}
    _install_service(host, "yurthub.service", files)
    _wait("yurthub did not answer /v1/healthz", lambda: fetch(HEALTHZ)[0] == 200, settings)
    log.info("yurthub serving node=%s", settings.node)


def redirect_kubelet(host: Host, fetch: Fetch, settings: Settings) -> None:
    flags = host.read(FLAGS_ENV) or ""
    if host.read(BACKUP) is None:
        host.write(BACKUP, flags, 0o600)
    host.write(HUB_KUBECONFIG, HUB_KUBECONFIG_TEXT, 0o600)
    host.write(FLAGS_ENV, redirected(flags))
    before = kubelet_forwarded(fetch(METRICS)[1])
    _must(host, ["systemctl", "restart", "kubelet.service"], timeout=90)
    _wait(
        "kubelet did not come back Ready through yurthub",
        lambda: kubelet_forwarded(fetch(METRICS)[1]) > before and _ready_through_hub(fetch, settings.node),
        settings,
    )
    log.info("kubelet Ready through yurthub node=%s", settings.node)


def joined(host: Host) -> bool:
    """Whether `yurtctl node join` made this node (its kubelet has only ever known yurthub)."""
    text = host.read(JOINED_STATE)
    try:
        return text is not None and json.loads(text).get("done") is True
    except ValueError:
        return False


def convert(host: Host, fetch: Fetch, settings: Settings) -> None:
    if joined(host):  # already behind yurthub, with no stock kubelet configuration to convert
        log.info("node joined behind yurthub by yurtctl node join; nothing to convert node=%s", settings.node)
        return
    server = preflight(host, settings)
    join_token(host, settings)
    if settings.tunnel_servers and host.read(settings.tunnel_ca_file) is None:
        raise errors.PreflightFailed(f"the tunnel server's CA {settings.tunnel_ca_file} not found")
    try:
        install_hub(host, fetch, settings, server)
        redirect_kubelet(host, fetch, settings)
        if settings.tunnel_servers:
            install_agent(host, fetch, settings)
    except errors.NodeStepFailed as exc:
        log.error("convert failed node=%s error=%s; rolling back", settings.node, exc)
        try:
            revert(host, fetch, settings)
        except errors.ConverterError as again:
            raise errors.NodeStepFailed(f"{exc}; rollback failed too: {again}") from again
        raise errors.NodeStepFailed(f"{exc}; node {settings.node} rolled back") from exc


def restore_kubelet(host: Host, fetch: Fetch, settings: Settings) -> None:
    backup = host.read(BACKUP)
    flags = host.read(FLAGS_ENV) or ""
    if backup is not None:
        wanted = backup
    elif REDIRECT in flags:
        wanted = flags.replace(REDIRECT, "")
    else:
        wanted = flags
    touched = wanted != flags or host.exists(HUB_KUBECONFIG)
    if wanted != flags:
        host.write(FLAGS_ENV, wanted)
    host.remove(HUB_KUBECONFIG)
    if touched:
        _must(host, ["systemctl", "restart", "kubelet.service"], timeout=90)
        _wait("kubelet did not report healthy after the restore", lambda: fetch(KUBELET_HEALTHZ)[0] == 200, settings)
        log.info("kubelet restored to the cloud node=%s", settings.node)


def remove_hub(host: Host) -> None:
    if host.exists(UNIT):
        host.run(["systemctl", "disable", "--now", "yurthub.service"], 90)
    for path in (UNIT, "/etc/yurthub", HUB_STATE):
        host.remove(path)
    _must(host, ["systemctl", "daemon-reload"])
    host.run(["systemctl", "reset-failed", "yurthub.service"])


def node_addresses(fetch: Fetch, node: str) -> list[str]:
    """This node's addresses from its Node object, read through yurthub."""
    status, body = fetch(f"{PROXY}/api/v1/nodes/{node}")
    if status != 200:
        raise errors.NodeStepFailed(f"could not read Node {node} through yurthub (HTTP {status})")
    addresses = json.loads(body).get("status", {}).get("addresses") or []
    found = [a["address"] for a in addresses if a.get("type") in ("InternalIP", "ExternalIP") and a.get("address")]
    if not found:
        raise errors.NodeStepFailed(f"Node {node} has no InternalIP or ExternalIP address for the tunnel agent")
    return list(dict.fromkeys(found))


def agent_env(settings: Settings, addresses: list[str]) -> str:
    args = [
        f"--node-name={settings.node}",
        f"--server-addr={','.join(settings.tunnel_servers)}",
        f"--ca-file={AGENT_CA}",
        f"--cert-file={KUBELET_CERT}",
        f"--node-ip={','.join(addresses)}",
        f"--allowed-ports={','.join(str(p) for p in settings.tunnel_ports)}",
    ]
    if settings.tunnel_server_name:
        args.append(f"--server-name={settings.tunnel_server_name}")
    return f'TUNNEL_AGENT_ARGS="{" ".join(args)}"\n'


def install_agent(host: Host, fetch: Fetch, settings: Settings) -> None:
    ca = host.read(settings.tunnel_ca_file)
    if ca is None:
        raise errors.NodeStepFailed(f"the tunnel server's CA {settings.tunnel_ca_file} went missing")
    env = agent_env(settings, node_addresses(fetch, settings.node))
    files = {AGENT_CA: (ca, 0o644), AGENT_ENV: (env, 0o600), AGENT_UNIT: (AGENT_UNIT_TEXT, 0o644)}
    _install_service(host, "yurt-tunnel-agent.service", files)
    _wait(
        f"yurt-tunnel-agent did not connect to a tunnel server ({', '.join(settings.tunnel_servers)})",
        lambda: fetch(AGENT_READYZ)[0] == 200,
        settings,
    )
    log.info("tunnel agent connected node=%s servers=%s", settings.node, ",".join(settings.tunnel_servers))


def remove_agent(host: Host) -> None:
    if not host.exists(AGENT_UNIT) and not host.exists(AGENT_DIR):
        return
    if host.exists(AGENT_UNIT):
        host.run(["systemctl", "disable", "--now", "yurt-tunnel-agent.service"], 90)
    for path in (AGENT_UNIT, AGENT_DIR):
        host.remove(path)
    _must(host, ["systemctl", "daemon-reload"])
    host.run(["systemctl", "reset-failed", "yurt-tunnel-agent.service"])


def revert(host: Host, fetch: Fetch, settings: Settings) -> None:
    if joined(host):
        raise errors.PreflightFailed(
            "this node was joined behind yurthub by `yurtctl node join`: its kubelet has no configuration of its "
            "own to go back to; `yurtctl node reset` on the machine removes it from the cluster"
        )
    remove_agent(host)
    restore_kubelet(host, fetch, settings)
    remove_hub(host)
    created = host.exists(CREATED_INSTALL) or host.exists(CREATED_VENV)
    host.remove(STATE_DIR)
    log.info("node reverted node=%s", settings.node)
    if created:
        host.remove(VENV)
