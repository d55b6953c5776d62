"""Hostile: leave a process behind that outlives the run (double fork, new session, SIGTERM ignored)."""
import os
import signal
import time

from services.common.http import json_app, serve

if os.fork() == 0:
    os.setsid()  # out of the process group the grader kills
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        print(f"survivor running as pid {os.getpid()} (in its namespace)", flush=True)
        while True:
            time.sleep(1)
    os._exit(0)
os.wait()
serve(json_app("forks-survivor"))
