"""Cloud health: per server, with hysteresis, and a choice of server for each request.

`ServerHealth` is the pure state machine: a failed probe (or a connection error while proxying) makes a
server unhealthy at once; it is healthy again only after `healthy_threshold` successful probes in a row.
Before the first probe a server counts as healthy (a fresh node forwards from its first second), or, when a
cache already exists, as unhealthy (a node rebooting during an outage answers from its cache at once and
does not wait for a dead link to time out; online, the first probe flips it within milliseconds).
`Servers` holds one per server and picks one per request (`rr` or `priority`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time

from yurthub import config

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ServerHealth:
    server: str
    healthy_threshold: int = 2
    healthy: bool = True
    since: float = dataclasses.field(default_factory=time.time)
    successes: int = 0
    probed: bool = False

    def record(self, ok: bool, now: float | None = None) -> bool:
        """Count one probe or request outcome; True when the state flipped."""
        now = time.time() if now is None else now
        first, self.probed = not self.probed, True
        if ok:
            self.successes += 1
            if not self.healthy and (first or self.successes >= self.healthy_threshold):
                self.healthy, self.since = True, now
                return True
            return False
        self.successes = 0
        if self.healthy:
            self.healthy, self.since = False, now
            return True
        return False


class Servers:
    def __init__(self, settings: config.CloudSettings, *, start_healthy: bool = True) -> None:
        """`start_healthy=False` serves from the cache until the first probe says otherwise."""
        self.settings = settings
        self.states = [
            ServerHealth(s, settings.heartbeat_healthy_threshold, healthy=start_healthy) for s in settings.servers
        ]
        self._turn = itertools.count()
        self.cloud_since = time.time()
        self._was_healthy = start_healthy

    @property
    def is_healthy(self) -> bool:
        return any(s.healthy for s in self.states)

    def pick(self) -> str | None:
        healthy = [s for s in self.states if s.healthy]
        if not healthy:
            return None
        if self.settings.lb_mode is config.LoadBalancingMode.PRIORITY:
            return healthy[0].server
        return healthy[next(self._turn) % len(healthy)].server

    def record(self, server: str, ok: bool, detail: str = "") -> bool:
        """Record an outcome for `server`; True when the cloud as a whole went away or came back."""
        state = next(s for s in self.states if s.server == server)
        if state.record(ok):
            if state.healthy:
                log.info("cloud server healthy again server=%s", server)
            else:
                log.warning("cloud server unhealthy server=%s reason=%s", server, detail or "probe failed")
        now_healthy = self.is_healthy
        if now_healthy != self._was_healthy:
            self._was_healthy, self.cloud_since = now_healthy, time.time()
            log.warning("cloud %s", "reachable again" if now_healthy else "unreachable: serving from the cache")
            return True
        return False
