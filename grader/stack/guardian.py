"""Outlives the process that started servers, to clean up after it if it dies.

The parent writes lines on our stdin: `+pid N` / `-pid N` (a process group to kill) and
`+dir PATH` / `-dir PATH` (a temp dir to remove), `+mnt PATH` / `-mnt PATH` (a mount to undo before
that, e.g. a sandbox's tmpfs), `+ctr ID` / `-ctr ID` (a Docker container to remove). When stdin closes - the parent exited,
crashed, or was SIGKILLed - whatever is still registered is killed and removed. This is what
makes "no orphan servers after Ctrl-C or a failed test" true even for kill -9.
"""
import os
import shutil
import signal
import subprocess
import sys

import psutil


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C aimed at the parent must not stop us first
    pids: set[int] = set()
    dirs: set[str] = set()
    mounts: set[str] = set()
    containers: set[str] = set()
    for line in sys.stdin:
        op, _, arg = line.strip().partition(" ")
        if op == "+pid":
            pids.add(int(arg))
        elif op == "-pid":
            pids.discard(int(arg))
        elif op == "+dir":
            dirs.add(arg)
        elif op == "-dir":
            dirs.discard(arg)
        elif op == "+mnt":
            mounts.add(arg)
        elif op == "-mnt":
            mounts.discard(arg)
        elif op == "+ctr":
            containers.add(arg)
        elif op == "-ctr":
            containers.discard(arg)
    doomed = []
    for pid in pids:
        try:
            doomed.append(psutil.Process(pid))
            os.killpg(pid, signal.SIGKILL)  # servers lead their own process group
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass
    psutil.wait_procs(doomed, timeout=10)  # data dirs may be in use until the processes are gone
    for m in mounts:
        subprocess.run(["umount", "--lazy", m], capture_output=True, timeout=30)
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
    if containers:
        subprocess.run(["docker", "rm", "--force", "--volumes", *containers], capture_output=True, timeout=120)


if __name__ == "__main__":
    main()
