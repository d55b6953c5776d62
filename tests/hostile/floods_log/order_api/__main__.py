"""Hostile: fill the grader's disk through its log, and through a huge file of its own."""
import threading

from services.common.http import json_app, serve


def flood() -> None:
    line = "flood " * 170 + "\n"  # ~1 KiB
    while True:
        print(line, end="", flush=False)


def big_file() -> None:
    chunk = b"x" * (1 << 20)
    written = 0
    try:
        with open("huge.bin", "wb") as f:
            for _ in range(1024):  # 1 GiB
                f.write(chunk)
                written += len(chunk)
        print(f"ATTACK SUCCEEDED: wrote {written} bytes", flush=True)
    except OSError as e:
        print(f"ATTACK FAILED: big file stopped after {written} bytes: {e}", flush=True)


big_file()
threading.Thread(target=flood, daemon=True).start()
serve(json_app("floods-log"))
