"""Hostile: connect to every port listening on loopback that it was not given - the real broker
behind the fault proxy, other runs' services, the machine's own servers on standard ports."""
import os
import re
import socket
from pathlib import Path

from services.common.http import json_app, serve

given = {int(p) for v in os.environ.values() for p in re.findall(r"127\.0\.0\.1:(\d+)", v)} | {int(os.environ["PORT"])}
listening = set()
with open("/proc/net/tcp") as f:  # in a shared network namespace, every listener is listed here
    for line in f.readlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A" and local.startswith("0100007F:"):  # LISTEN on 127.0.0.1
            listening.add(int(local.split(":")[1], 16))
print(f"listening on loopback: {len(listening)} ports, given {sorted(given)}", flush=True)
targets = Path(__file__).with_name("targets.txt")  # ports a test knows of (the real broker)
known = {int(p) for p in targets.read_text().split()} if targets.exists() else set()
for port in sorted((listening | known | {5432, 6379, 5672, 9092, 15672}) - given):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        print(f"ATTACK SUCCEEDED: connected to 127.0.0.1:{port}", flush=True)
    except OSError as e:
        print(f"ATTACK FAILED: 127.0.0.1:{port}: {e}", flush=True)
serve(json_app("reaches-around-proxy"))
