"""identity's file work runs off the event loop, and the token file is re-read when it changes.

How "off the loop" is proved, without timings: the file is a named pipe (FIFO), so whoever opens it blocks
until the test's writer thread opens the other end, and the writer does so only once a ticker task on the
event loop has run. If the read happened on the loop thread, the ticker could never run, the writer would
give up waiting (a bound of 10 s, only there so a regression fails instead of hanging) and the test fails
on `released_by_the_loop`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
import time
from collections.abc import Awaitable
from pathlib import Path

import pytest

from testenv import pki
from yurthub import config, identity, metrics

TOKEN = "abcdef.0123456789abcdef"  # noqa: S105 - a made-up token in the documented shape
OTHER = "ghijkl.0123456789abcdef"


class OneShotFifo:
    """A named pipe at `path` whose writer hands `payload` to one reader, after `release` is set."""

    def __init__(self, path: Path, payload: bytes) -> None:
        os.mkfifo(path, 0o600)
        self.path, self.payload = path, payload
        self.release = threading.Event()
        self.released_by_the_loop: bool | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.released_by_the_loop = self.release.wait(10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # wait for the reader to open its end
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                time.sleep(0.005)
                continue
            os.write(fd, self.payload)
            os.close(fd)
            return


async def beside_a_ticker(fifo: OneShotFifo, work: Awaitable[object]) -> object:
    """Await `work` while a ticker on the loop releases the FIFO's writer after a few turns."""
    turns = 0
    done = asyncio.Event()

    async def tick() -> None:
        nonlocal turns
        while not done.is_set():
            turns += 1
            if turns == 3:
                fifo.release.set()
            await asyncio.sleep(0.001)

    async def run() -> object:
        try:
            return await work
        finally:
            done.set()

    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(tick(), name="ticker")
            result = tasks.create_task(run(), name="work")
    finally:
        fifo.thread.join(30)
    return result.result()


def hub_settings(tmp_path: Path, **ids: object) -> config.HubSettings:
    base: dict[str, object] = {
        "ca_file": str(tmp_path / "ca.crt"),
        "client_cert": str(tmp_path / "client.pem"),
        "root_dir": str(tmp_path / "root"),
        "serving_cert": False,
    }
    return config.HubSettings(
        node_name="edge-1",
        cloud=config.CloudSettings(servers=("https://127.0.0.1:6443",)),
        listen=config.ListenSettings(),
        cache=config.CacheSettings(),
        identity=config.IdentitySettings(**(base | ids)),  # type: ignore[arg-type]
        outbox=config.OutboxSettings(),
    )


def test_the_token_file_is_read_off_the_event_loop(tmp_path: Path) -> None:
    fifo = OneShotFifo(tmp_path / "join-token", TOKEN.encode() + b"\n")
    ids = identity.Identity(hub_settings(tmp_path, bootstrap_token_file=str(fifo.path)), metrics.Metrics())

    async def main() -> object:
        return await beside_a_ticker(fifo, ids.bootstrap_token())

    assert asyncio.run(main()) == TOKEN
    assert fifo.released_by_the_loop is True


def test_a_followed_client_certificate_is_checked_and_read_off_the_event_loop(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority("test-ca")
    first = ca.issue("system:node:edge-1", organizations=("system:nodes",), client=True)
    second = ca.issue("system:node:edge-2", organizations=("system:nodes",), client=True)
    client = tmp_path / "client.pem"
    client.write_bytes(first.cert_pem + first.key_pem)
    ids = identity.Identity(hub_settings(tmp_path), metrics.Metrics())
    assert ids.client.source is config.ClientSource.FILE
    fifo = OneShotFifo(tmp_path / "rotated", second.cert_pem + second.key_pem)
    os.replace(fifo.path, client)  # the rotated file appears (a new inode)
    fifo.path = client

    async def main() -> object:
        return await beside_a_ticker(fifo, ids.follow_file())

    assert asyncio.run(main()) is True
    assert fifo.released_by_the_loop is True
    assert ids.client.summary is not None and "edge-2" in ids.client.summary.subject
    assert ids.client.rotations == 1


def test_a_replaced_token_file_is_picked_up_and_a_broken_one_keeps_the_last_good_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "join-token"

    def put(text: str) -> None:
        fresh = tmp_path / "fresh"
        fd = os.open(fresh, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.write(fd, text.encode())
        os.close(fd)
        os.replace(fresh, path)

    put(TOKEN + "\n")
    ids = identity.Identity(hub_settings(tmp_path, bootstrap_token_file=str(path)), metrics.Metrics())
    caplog.set_level(logging.INFO, logger="yurthub.identity")

    async def main() -> list[str]:
        seen = [await ids.bootstrap_token()]
        put(OTHER + "\n")  # an operator replaces the token before the old one expires
        seen.append(await ids.bootstrap_token())
        put("garbage\n")
        seen += [await ids.bootstrap_token(), await ids.bootstrap_token()]
        path.unlink()
        seen.append(await ids.bootstrap_token())
        return seen

    assert asyncio.run(main()) == [TOKEN, OTHER, OTHER, OTHER, OTHER]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # once for the garbage, once for the missing file: not on every call
    assert all("keeping the last good token" in w for w in warnings)
    assert all(TOKEN not in r.getMessage() and OTHER not in r.getMessage() for r in caplog.records)
