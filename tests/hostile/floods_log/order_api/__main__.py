"""Hostile: fill the grader's disk through its log, a huge file, and many files."""
import threading

from services.common.http import json_app, serve

CHUNK = b"x" * (1 << 20)


def big_file() -> None:
    written = 0
    try:
        with open("huge.bin", "wb") as f:
            for _ in range(1024):  # 1 GiB
                f.write(CHUNK)
                written += len(CHUNK)
        print(f"ATTACK SUCCEEDED: wrote {written} bytes", flush=True)
    except OSError as e:
        print(f"ATTACK FAILED: big file stopped after {written} bytes: {e}", flush=True)


def many_files() -> None:
    written = 0
    try:
        for i in range(1024):  # 1 GiB in 1 MiB files, each under any per-file cap
            with open(f"part-{i}.bin", "wb") as f:
                f.write(CHUNK)
            written += len(CHUNK)
        print(f"ATTACK SUCCEEDED: wrote {written} bytes in many files", flush=True)
    except OSError as e:
        print(f"ATTACK FAILED: many files stopped after {written} bytes: {e}", flush=True)


def flood() -> None:
    line = "flood " * 170 + "\n"  # ~1 KiB
    while True:
        print(line, end="", flush=False)


big_file()
many_files()
threading.Thread(target=flood, daemon=True).start()
serve(json_app("floods-log"))
