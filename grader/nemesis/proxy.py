"""A TCP fault proxy for the native runtime: cut, one-way cut, delay and reset the path to a server.

Runs asyncio in a background thread; every method is safe to call from any thread. Kafka clients
only stay behind it if the broker advertises the proxy's address: start the broker with its
advertised port set to the proxy's listen port (NativeKafka.advertised_port; the runner does this).
"""
from __future__ import annotations

import asyncio
import socket
import struct
import threading

CHUNK = 65536
QUEUED_CHUNKS = 64  # per direction while delayed: back-pressure instead of unbounded buffering


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int, listen_port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.listen_port = listen_port
        self.port = 0
        self.connections_total = 0  # accepted and connected upstream
        self.bytes_up = 0  # client -> server, forwarded
        self.bytes_down = 0  # server -> client, forwarded
        self.refused = 0  # connections refused while cut
        self.reset_total = 0  # connections reset by cut()/reset()/heal()
        self.dropped_down = 0  # server -> client bytes discarded by a one-way cut
        self._cut = False
        self._drop_responses = False
        self._lost: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()  # lost responses
        self._delay = 0.0
        # A protocol tap (e.g. grader/nemesis/pgwire.PgTap): sees each connection's client bytes and
        # may hold that connection's next answer. None: a raw byte proxy, as before.
        self.tap = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task] = set()
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
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        self._call(shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> "TcpProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- faults ---
    def cut(self) -> int:
        """A partition: open connections are reset, new ones are reset as soon as they arrive
        (to a client that is a refused connection) until heal(). Returns how many were reset."""
        self._cut = True
        return self._call(self._on_loop(self._abort_all, True))

    def cut_responses(self) -> None:
        """A one-way cut: client -> server bytes still flow (requests reach the server and take
        effect), server -> client bytes are discarded (the client never hears back), on open and
        new connections alike, until heal()."""
        self._drop_responses = True

    def heal(self) -> int:
        """End a cut or one-way cut. Connections that lost responses are reset (their byte streams
        are no longer whole), so clients reconnect cleanly. Returns how many were reset."""
        def heal_now() -> int:
            self._cut = self._drop_responses = False
            lost, self._lost = self._lost & self._pairs, set()
            for pair in lost:
                self._abort_pair(pair, rst=True)
            self.reset_total += len(lost)
            return len(lost)

        return self._call(self._on_loop(heal_now))

    def delay(self, ms: int) -> None:
        """Added latency for every chunk, each way (0 clears it). Latency, not a bandwidth cap:
        chunks in flight are delayed together."""
        self._delay = max(ms, 0) / 1000

    def reset(self) -> int:
        """Reset (RST) every open connection; new ones are still accepted. Returns how many."""
        return self._call(self._on_loop(self._abort_all, True))

    # --- internals (all on the proxy's loop) ---
    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    @staticmethod
    async def _on_loop(fn, *args):
        return fn(*args)

    def _abort_all(self, rst: bool) -> int:
        pairs = list(self._pairs)
        for pair in pairs:
            self._abort_pair(pair, rst)
        if rst:
            self.reset_total += len(pairs)
        return len(pairs)

    def _abort_pair(self, pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter], rst: bool) -> None:
        self._pairs.discard(pair)
        self._lost.discard(pair)
        for writer in pair:
            _abort(writer, rst)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            self.refused += 1
            _abort(writer, rst=True)
            return
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            try:
                up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.upstream), 10)
            except (OSError, asyncio.TimeoutError):
                _abort(writer, rst=True)  # the server is down: so is the path to it
                return
            pair = (writer, up_writer)
            if self._cut:  # cut while we were connecting
                self.refused += 1
                self._abort_pair(pair, rst=True)
                return
            self.connections_total += 1
            self._pairs.add(pair)
            tapped = self.tap.connection() if self.tap is not None else None
            await asyncio.gather(self._pipe(reader, up_writer, "bytes_up", pair, tapped),
                                 self._pipe(up_reader, writer, "bytes_down", pair, tapped))
            self._pairs.discard(pair)
            self._lost.discard(pair)
            for w in pair:
                w.close()
        except asyncio.CancelledError:
            # stop() cancels us. End normally: on Python 3.11 the stream server's done-callback
            # calls task.exception() on a cancelled handler and logs a CancelledError traceback.
            pass
        finally:
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counter: str,
                    pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter], tapped=None) -> None:
        """One direction. A receiver stamps each chunk with its due time, so a delay adds latency
        without serialising the chunks; EOF is passed on as a half close, a reset as a reset."""
        chunks: asyncio.Queue = asyncio.Queue(QUEUED_CHUNKS)

        async def receive() -> None:
            try:
                while data := await reader.read(CHUNK):
                    if tapped is not None and counter == "bytes_up":
                        tapped.client_bytes(data)  # before forwarding: a hold is set before the answer exists
                    await chunks.put((self._loop.time() + self._delay, data))
                await chunks.put((0.0, b""))
            except (ConnectionError, OSError):
                await chunks.put((0.0, None))

        receiver = asyncio.ensure_future(receive())
        try:
            while True:
                due, data = await chunks.get()
                if data is None or self._cut:
                    self._abort_pair(pair, rst=True)
                    return
                if not data:
                    if self._drop_responses and counter == "bytes_down":
                        self._lost.add(pair)  # the server's close is a response too
                        return
                    if not writer.is_closing() and writer.can_write_eof():
                        writer.write_eof()
                    return
                if (wait := due - self._loop.time()) > 0:
                    await asyncio.sleep(wait)
                if tapped is not None and counter == "bytes_down":
                    await tapped.before_answer()
                if self._cut or writer.is_closing():
                    return
                if self._drop_responses and counter == "bytes_down":
                    self.dropped_down += len(data)
                    self._lost.add(pair)
                    continue
                writer.write(data)
                setattr(self, counter, getattr(self, counter) + len(data))
                await writer.drain()
        except (ConnectionError, OSError):
            self._abort_pair(pair, rst=True)
        finally:
            receiver.cancel()


def _abort(writer: asyncio.StreamWriter, rst: bool) -> None:
    sock = writer.get_extra_info("socket")
    if rst and sock is not None:
        try:  # linger 0: closing sends RST instead of FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()
