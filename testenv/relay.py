"""A TCP relay on loopback that a test can black-hole: a cloud link for components run on the host.

While `cut`, bytes stop flowing both ways and new connections hang unanswered, as on a dead WAN link
(nothing is reset: peers find out only through their own timeouts). `restore` lets traffic through again
for new connections; connections caught in the cut are dropped, as a NAT box would have forgotten them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading


class Relay:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._cut = False
        self._loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._ready = threading.Event()
        self._conns: set[asyncio.StreamWriter] = set()
        self._frozen: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            self._frozen.add(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._conns |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._conns -= {writer, up_writer}

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                await self._flowing.wait()
                if writer in self._frozen:
                    return
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()

    def cut(self) -> None:
        def stop_flowing() -> None:
            self._cut = True
            self._flowing.clear()

        self._loop.call_soon_threadsafe(stop_flowing)

    def restore(self) -> None:
        def forget() -> None:
            for w in list(self._conns) + list(self._frozen):
                with contextlib.suppress(OSError):
                    w.transport.abort()
            self._frozen.clear()
            self._cut = False
            self._flowing.set()

        self._loop.call_soon_threadsafe(forget)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
