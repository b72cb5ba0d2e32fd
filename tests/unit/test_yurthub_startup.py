"""yurthub's start through `server.serve`: nothing blocking runs on the event loop while it starts.

The CA file is a named pipe: whoever opens it blocks until the test writes into it. If that open happened
on the event loop, the loop could run nothing else until then; the test asks the loop to run a callback
while the open is blocked and sees whether it did."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
import time
from pathlib import Path

import aiohttp

from testenv import controlplane, pki
from yurthub import config, filters, server

BOUND_S = 20.0
"""How long the pipe's feeder waits for a reader, and then for the loop; a bound so that code that blocks
the loop fails the assertion instead of hanging, not a measure of anything."""


def settings(tmp_path: Path, ca_file: Path, crt: Path, key: Path) -> config.HubSettings:
    return config.HubSettings(
        node_name="edge-1",
        cloud=config.CloudSettings(servers=(f"https://127.0.0.1:{controlplane.free_port()}",), heartbeat_timeout_s=1),
        listen=config.ListenSettings(proxy_port=controlplane.free_port(), serve_port=controlplane.free_port()),
        cache=config.CacheSettings(disk_cache_path=str(tmp_path / "cache")),
        identity=config.IdentitySettings(ca_file=str(ca_file), client_cert=str(crt), client_key=str(key)),
        outbox=config.OutboxSettings(path=str(tmp_path / "outbox")),
        filters=config.FilterSettings(rules=tuple(filters.parse_rules([]).items())),
    )


class PipeFeeder:
    """Writes the CA into the pipe once someone opens it for reading, after asking the event loop to run a
    callback and waiting (bounded) for it to run; then puts a plain file with the CA in the pipe's place for
    every later reader."""

    def __init__(self, pipe: Path, ca_pem: bytes, loop: asyncio.AbstractEventLoop) -> None:
        self.pipe, self.ca_pem, self.loop = pipe, ca_pem, loop
        self.loop_ran = threading.Event()
        self.loop_free_while_blocked: bool | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="pipe-feeder", daemon=True)

    def _open_when_read(self) -> int | None:
        """The pipe opened for writing once a reader is blocked in its open (ENXIO until then)."""
        deadline = time.monotonic() + BOUND_S
        while not self.stopping.is_set() and time.monotonic() < deadline:
            try:
                return os.open(self.pipe, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
            self.stopping.wait(0.01)  # no notification exists for "a reader arrived"
        return None

    def _run(self) -> None:
        fd = self._open_when_read()
        if fd is None:
            return
        self.loop.call_soon_threadsafe(self.loop_ran.set)
        self.loop_free_while_blocked = self.loop_ran.wait(BOUND_S)
        plain = self.pipe.with_name("ca.pem")
        plain.write_bytes(self.ca_pem)
        os.replace(plain, self.pipe)  # later readers open a plain file
        os.set_blocking(fd, True)
        os.write(fd, self.ca_pem)
        os.close(fd)  # the only writer gone: the reader sees the end of the CA


async def test_serve_builds_its_tls_contexts_off_the_event_loop(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority("test-ca")
    crt, key = ca.issue("system:node:edge-1", organizations=("system:nodes",), client=True).write(tmp_path, "node")
    pipe = tmp_path / "ca.pipe"
    os.mkfifo(pipe)
    s = settings(tmp_path, pipe, crt, key)
    feeder = PipeFeeder(pipe, ca.pair.cert_pem, asyncio.get_running_loop())
    feeder.thread.start()
    stop = asyncio.Event()

    async def until_serving() -> None:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{s.listen.serve_port}/v1/healthz"
            for _ in range(int(BOUND_S * 10)):
                with contextlib.suppress(aiohttp.ClientConnectionError, TimeoutError):
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)  # polling a port that has no other way to say it is listening
        raise AssertionError("yurthub did not start serving")

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(server.serve(s, stop), name="yurthub")
            try:
                await until_serving()
            finally:
                stop.set()
    finally:
        feeder.stopping.set()
        feeder.thread.join(BOUND_S)
    assert feeder.loop_free_while_blocked is True
