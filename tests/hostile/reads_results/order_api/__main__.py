"""Hostile: find the instructor's results, seeds and environment, and print them into its log."""
import os

from services.common.http import json_app, serve

WANTED = ("report.json", "history.jsonl", "results.json", "seed", "grader-error.txt")
found = 0
for top in ["/", os.getcwd(), os.path.dirname(os.getcwd())]:
    for folder, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if d not in ("proc", "sys", "dev", "usr", "lib", "site-packages")]
        if folder.count(os.sep) > 8:
            dirs[:] = []
        for name in files:
            if name in WANTED or "seed" in name or folder.endswith("results"):
                try:
                    with open(os.path.join(folder, name), errors="replace") as f:
                        print(f"ATTACK SUCCEEDED: read {folder}/{name}: {f.read(2000)}", flush=True)
                        found += 1
                except OSError as e:
                    print(f"ATTACK FAILED: {folder}/{name}: {e}", flush=True)
for pid in os.listdir("/proc"):  # other processes' environment and command lines (the grader's?)
    if pid.isdigit() and int(pid) != os.getpid():
        for what in ("environ", "cmdline"):
            try:
                with open(f"/proc/{pid}/{what}", "rb") as f:
                    print(f"read /proc/{pid}/{what}: {f.read(4000)!r}", flush=True)
            except OSError as e:
                print(f"ATTACK FAILED: /proc/{pid}/{what}: {e}", flush=True)
print(f"ATTACK {'SUCCEEDED' if found else 'FAILED'}: {found} result files read", flush=True)
serve(json_app("reads-results"))
