"""Graceful shutdown: SIGTERM/SIGINT set an event that loops check between units of work."""
from __future__ import annotations

import signal
import threading

stopping = threading.Event()


def install_signal_handlers() -> threading.Event:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    return stopping
