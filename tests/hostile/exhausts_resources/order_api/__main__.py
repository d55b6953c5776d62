"""Hostile: take the machine's processes (a fork bomb) and memory (allocate until something gives)."""
import os
import signal
import time

children = []
try:
    for _ in range(100_000):
        pid = os.fork()
        if pid == 0:
            time.sleep(600)
            os._exit(0)
        children.append(pid)
    print(f"ATTACK SUCCEEDED: {len(children)} processes", flush=True)
except OSError as e:
    print(f"ATTACK FAILED: fork bomb stopped after {len(children)} processes: {e}", flush=True)
for pid in children:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)

hoard = []
try:
    while True:
        hoard.append(bytearray(64 << 20))  # touched: bytearray zero-fills
        print(f"holding {len(hoard) * 64} MiB", flush=True)
except MemoryError:
    print(f"ATTACK FAILED: MemoryError after {len(hoard) * 64} MiB", flush=True)
    os._exit(4)
