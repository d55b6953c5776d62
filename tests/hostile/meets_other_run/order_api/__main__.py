"""Hostile: meet another run graded at the same time through an abstract Unix socket (`@name` lives in
the network namespace, not in the file system), and list the host's sockets through /proc/net."""
import os
import re
import socket
import threading

from services.common.http import json_app, serve

MEETING = b"\0labkit-hostile-meeting"
given = {int(p) for v in os.environ.values() for p in re.findall(r"127\.0\.0\.1:(\d+)", v)} | {int(os.environ["PORT"])}

sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    sock.bind(MEETING)
    sock.listen(8)
    print("ATTACK FAILED: bound @labkit-hostile-meeting myself (nobody else holds it here)", flush=True)

    def answer() -> None:
        while True:
            peer, _ = sock.accept()
            peer.sendall(f"hello from run {os.getuid()}".encode())
            peer.close()

    threading.Thread(target=answer, daemon=True).start()
except OSError:  # taken: another run holds it - talk to it
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.connect(MEETING)
    print(f"ATTACK SUCCEEDED: another run answered on @labkit-hostile-meeting: {other.recv(100)!r}", flush=True)

listening = set()
with open("/proc/net/tcp") as f:
    for line in f.readlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A":
            listening.add(int(local.split(":")[1], 16))
print(f"ATTACK {'SUCCEEDED' if listening - given else 'FAILED'}: /proc/net/tcp lists listeners "
      f"{sorted(listening - given)} besides the {len(given)} ports given", flush=True)
with open("/proc/net/unix") as f:
    names = {line.split()[-1] for line in f.readlines()[1:] if len(line.split()) >= 8}
foreign = sorted(n for n in names if n != "@labkit-hostile-meeting" and "labkit-sandbox" not in n)
print(f"ATTACK {'SUCCEEDED' if foreign else 'FAILED'}: /proc/net/unix lists {foreign[:10]} "
      f"({len(names)} named sockets in all)", flush=True)
serve(json_app("meets-other-run"))
