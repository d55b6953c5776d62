"""Hostile: fill the grader's disk through its log, a huge file, and many files."""
import threading

from services.common.http import json_app, serve

CHUNK = b"x" * (1 << 20)


def fill(what: str, files: int, chunks_per_file: int) -> None:
    """Write `files` files of `chunks_per_file` MiB each; report how far it got."""
    written = 0
    try:
        for i in range(files):
            with open(f"fill-{i}.bin", "wb") as f:
                for _ in range(chunks_per_file):
                    f.write(CHUNK)
                    written += len(CHUNK)
        print(f"ATTACK SUCCEEDED: {what}: wrote {written} bytes", flush=True)
    except OSError as e:
        print(f"ATTACK FAILED: {what} stopped after {written} bytes: {e}", flush=True)


def flood() -> None:
    line = "flood " * 170 + "\n"  # ~1 KiB
    while True:
        print(line, end="", flush=False)


fill("big file", 1, 1024)      # 1 GiB in one file
fill("many files", 1024, 1)    # 1 GiB in 1 MiB files, each under any per-file cap
threading.Thread(target=flood, daemon=True).start()
serve(json_app("floods-log"))
