"""A supervisor for a run's services, as a deployment has one (systemd, Kubernetes): a service
that exits on its own is started again, a bounded number of times.

Exiting on a transient error (a lost database, a broker cut) is a legitimate design if nothing is
lost; crash-looping is not. Each exit is an observation in the history (`observe what="exit"`),
so checks can judge it (e.g. "the consumer exited after a poison record"). Processes the nemesis
SIGKILLed (exit -9) are the nemesis' to restart; stopped services are left alone.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .runner import Run

MAX_RESTARTS = 5  # per service and run: past this it stays down and the report says so
SIGKILLED = -9


class Supervisor:
    def __init__(self, run: "Run", interval: float = 0.5) -> None:
        self.run, self.interval = run, interval
        self.restarts: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)

    def start(self) -> "Supervisor":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            for name, service in self.run.services.items():
                proc, code = service.proc, service.exit_code()
                if not service.supervised or proc is None or code is None or code == SIGKILLED:
                    continue
                with service.lifecycle:  # a fault's restart may own the next life already
                    if service.proc is not proc or not service.supervised:
                        continue
                    service.supervised = False  # handled: one observation and one restart per exit
                    service.died_on_its_own = True
                    n = self.restarts[name] = self.restarts.get(name, 0) + 1
                    self.run.history.observe("exit", service=name, code=code, restart=n <= MAX_RESTARTS)
                    if n > MAX_RESTARTS:
                        self.run.note(f"{name} exited by itself (code {code}) {n} times; leaving it down")
                        continue
                    self.run.note(f"{name} exited by itself (code {code}); the supervisor starts it again")
                    try:
                        service.start_after(proc)  # unarmed: a planned crash belongs to its fault
                    except Exception as e:  # a service that cannot even start is reported, not fatal here
                        self.run.note(f"{name} could not be started again: {e}")
