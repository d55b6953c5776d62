"""Carry a sandboxed run's allowed connections across its network namespace (stdlib only).

Each service life runs in a network namespace of its own (bwrap --unshare-net): its loopback holds
its own sockets and nothing else. Two relays, one on each side, join it to the ports its env names,
over filesystem Unix sockets the grader created in a root-owned folder (they cross network
namespaces; abstract ones do not; the submission can neither move nor replace them):

    outside (the run's uid, the host's loopback)         inside (the run's uid, its namespace)
    out-P (Unix) -> 127.0.0.1:P (proxy, receiver)   <-   127.0.0.1:P (listened here) -> out-P
    127.0.0.1:Q (the grader calls) -> in-Q          ->   in-Q (Unix) -> 127.0.0.1:Q (the service)

`python -I relay.py [--uid U] LISTEN=TARGET ... -- ARGV...`: LISTEN is `fd:N` (a listening socket
inherited from the grader) or `tcp:P` (bound here on 127.0.0.1), TARGET is `tcp:P` or `unix:PATH`.
It binds, forks ARGV (the next stage: bwrap outside, the service inside), drops to uid U (outside; the
grader starts it as root so that ARGV can be bwrap) and relays until ARGV exits, then exits as ARGV
did, so the service's exit status reaches the grader unchanged. SIGTERM and SIGINT are ignored: a
polite stop is for the service, whose last spans still go through here.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import threading

CHUNK = 65536
LIVE: set[asyncio.Task] = set()  # asyncio keeps only weak references to tasks: a connection's is kept here


def listener(spec: str) -> socket.socket:
    kind, _, arg = spec.partition(":")
    if kind == "fd":
        sock = socket.socket(fileno=int(arg))
    elif kind == "tcp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", int(arg)))
    else:
        raise SystemExit(f"relay: bad listen spec {spec!r}")
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def connect(target: str):
    kind, _, arg = target.partition(":")
    if kind == "unix":
        return await asyncio.open_unix_connection(arg)
    return await asyncio.open_connection("127.0.0.1", int(arg))


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # a half-close travels on
    except OSError:
        writer.transport.abort()


def handler(target: str):
    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        LIVE.add(task)
        try:
            try:
                far_reader, far_writer = await connect(target)
            except OSError:  # nothing listens there (yet): the caller sees its connection closed
                writer.transport.abort()
                return
            try:
                await asyncio.gather(pipe(reader, far_writer), pipe(far_reader, writer))
            finally:
                writer.transport.abort()
                far_writer.transport.abort()
        finally:
            LIVE.discard(task)
    return relay


async def serve(routes: list[tuple[socket.socket, str]]) -> None:
    for sock, target in routes:
        if sock.family == socket.AF_UNIX:
            await asyncio.start_unix_server(handler(target), sock=sock)
        else:
            await asyncio.start_server(handler(target), sock=sock)
    await asyncio.Event().wait()


def drop_to(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def exit_as(status: int) -> None:
    """Exit the way the child did (a signal's death as that signal, so bwrap reports 128+N)."""
    sys.stdout.flush()
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those two cannot be caught, nor reset
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def main(argv: list[str]) -> None:
    uid = None
    if argv[:1] == ["--uid"]:
        uid, argv = int(argv[1]), argv[2:]
    split = argv.index("--")
    specs, command = argv[:split], argv[split + 1:]
    routes = []
    for spec in specs:
        listen, _, target = spec.partition("=")
        routes.append((listener(listen), target))
    child = os.fork()
    if child == 0:
        for sock, _ in routes:
            sock.close()
        os.execvp(command[0], command)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    if uid is not None:
        drop_to(uid)
    threading.Thread(target=asyncio.run, args=(serve(routes),), name="relay", daemon=True).start()
    _, status = os.waitpid(child, 0)
    exit_as(status)


if __name__ == "__main__":
    main(sys.argv[1:])
