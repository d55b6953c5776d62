"""A TCP fault proxy for the native runtime: cut, delay and reset the path to a server.

Runs asyncio in a background thread. Kafka clients only stay behind it if the broker advertises
the proxy's address (see NativeKafka.advertised_port).
"""
from __future__ import annotations

import asyncio
import socket
import struct
import threading


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int, listen_port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.listen_port = listen_port
        self.port = 0
        self.connections_total = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self._cut = False
        self._delay = 0.0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None

    # --- lifecycle ---
    def start(self) -> "TcpProxy":
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._accept, "127.0.0.1", self.listen_port))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        async def shutdown() -> None:
            if self._server:
                self._server.close()
            self._abort_all(rst=False)
        self._call(shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> "TcpProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- faults ---
    def cut(self) -> None:
        """A partition: open connections are reset and new ones refused until heal()."""
        self._cut = True
        self._loop.call_soon_threadsafe(self._abort_all, True)

    def heal(self) -> None:
        self._cut = False

    def delay(self, ms: int) -> None:
        """Added latency per chunk, each way (0 clears it)."""
        self._delay = ms / 1000

    def reset(self) -> None:
        """Reset (RST) every open connection; new ones are still accepted."""
        self._loop.call_soon_threadsafe(self._abort_all, True)

    # --- internals ---
    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def _abort_all(self, rst: bool) -> None:
        for writer in list(self._writers):
            _abort(writer, rst)
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            _abort(writer, rst=True)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _abort(writer, rst=True)
            return
        self.connections_total += 1
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer, "bytes_up"), self._pipe(up_reader, writer, "bytes_down"))
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counter: str) -> None:
        try:
            while data := await reader.read(65536):
                if self._delay:
                    await asyncio.sleep(self._delay)
                if self._cut:
                    break
                setattr(self, counter, getattr(self, counter) + len(data))
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            _abort(writer, rst=False) if self._cut else writer.close()


def _abort(writer: asyncio.StreamWriter, rst: bool) -> None:
    sock = writer.get_extra_info("socket")
    if rst and sock is not None:
        try:  # linger 0: close() sends RST instead of FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()
