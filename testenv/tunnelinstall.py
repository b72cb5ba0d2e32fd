"""Put yurt-tunnel-agent on the real node the way an operator would: the yurt-edge virtualenv (shared with
yurthub), the server's CA, an environment file and the systemd unit from `systemd/`."""

from __future__ import annotations

import json

from testenv import cluster, hubinstall
from testenv.node import Node

UNIT = cluster.REPO / "systemd" / "yurt-tunnel-agent.service"


def install_agent(node: Node, *, ca_pem: bytes, servers: list[str], extra_args: str = "") -> None:
    hubinstall.install_package(node, hubinstall.wheelhouse())
    hubinstall.write(node, "/etc/yurt-tunnel/ca.crt", ca_pem.decode())
    args = (
        f"--node-name={node.settings.name} --server-addr={','.join(servers)} --ca-file=/etc/yurt-tunnel/ca.crt "
        f"--node-ip={node.settings.address} --allowed-ports=10250 --backoff-max=5 {extra_args}"
    )
    hubinstall.write(node, "/etc/yurt-tunnel/agent.env", f'TUNNEL_AGENT_ARGS="{args.strip()}"\n')
    hubinstall.write(node, "/etc/systemd/system/yurt-tunnel-agent.service", UNIT.read_text())
    node.run(["systemctl", "daemon-reload"])
    node.run(["systemctl", "enable", "--now", "yurt-tunnel-agent.service"], timeout=60)


def agent_status(node: Node) -> dict[str, object]:
    out = node.run(["/opt/yurt-edge/bin/yurt-tunnel-agent", "status", "--json"], check=False)
    if out.returncode != 0:
        return {}
    report: dict[str, object] = json.loads(out.stdout)
    return report
