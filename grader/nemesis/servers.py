"""Faults on an infrastructure server: restart it (on the same port, with its data)."""
from __future__ import annotations

import time
from typing import Callable

from .base import Fault, Need, Target

# How the server goes down: immediate = no clean shutdown (PostgreSQL's immediate mode: no
# checkpoint, crash recovery at start; other servers: SIGKILL); fast = a clean shutdown
# (PostgreSQL's fast mode: open transactions rolled back); kill = SIGKILL.
MODES = ("immediate", "fast", "kill")


class RestartServer(Fault):
    """Shut a server down (`mode`: immediate, fast or kill) and start it again `down` seconds later
    (applied on its own; as a context manager, after the caller's block): same port, same data.

    Probes how services treat a dependency that goes away and comes back: in-flight transactions
    fail (psycopg OperationalError) and must be retried, not dead-lettered or dropped; pools and
    consumers must reconnect; nothing acknowledged may be lost. keep_data=False allows servers
    that lose their data on a restart (Redis as a cache); by default those are unavailable.
    Effective when the server's processes changed and it answered again.
    """

    kind = "restart-server"

    def __init__(self, kind: str, mode: str = "immediate", down: float = 0.0, keep_data: bool = True,
                 timeout: float = 90.0, checkpoint_url: str | None = None,
                 then: "Callable[[Target], None] | None" = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode is one of {', '.join(MODES)}")
        super().__init__(kind)
        self.mode, self.down, self.keep_data, self.timeout = mode, down, keep_data, timeout
        # PostgreSQL writes a replication slot's confirmed position to disk only at a checkpoint:
        # without one, a crash puts every slot back, and a relay that confirmed too early is hidden
        # behind the re-send. CHECKPOINT first, then crash, so the slot keeps what it was told -
        # mostly: a checkpoint skips a slot whose restart point has not moved since it was last
        # saved, so a scenario restarts the database before it probes a relay's confirms.
        self.checkpoint_url = checkpoint_url
        # Run once the server answers again, before the fault ends: e.g. a server that lost its data
        # (Redis without persistence) gets the run's ACL user back - a restart, not a revoked login.
        self.then = then
        self._shut = False

    def needs(self) -> list[Need]:
        return [Need("durable-restart" if self.keep_data else "restart", self.target)]

    def unavailable(self, run: Target) -> str | None:
        reason = super().unavailable(run)
        if reason is None and not hasattr(run.stack.servers[self.target], "shut_down"):
            reason = f"the {run.stack.runtime} runtime cannot restart {self.target} in {self.mode} mode"
        return reason

    def inject(self, run: Target) -> None:
        server = run.stack.servers[self.target]
        self.detail.update(mode=self.mode, pids_before=server.pids())
        if self.checkpoint_url:
            import psycopg

            with psycopg.connect(self.checkpoint_url, autocommit=True, connect_timeout=10) as conn:
                conn.execute("CHECKPOINT")
            self.detail["checkpoint"] = True
        t0 = time.monotonic()
        server.shut_down(self.mode)
        self._shut = True
        self._t_down = t0

    def hold(self, run: Target) -> None:
        time.sleep(self.down)

    def heal(self, run: Target) -> None:
        if not self._shut:
            return
        server = run.stack.servers[self.target]
        server.start_again(self.timeout)  # raises unless it answers a real request
        self._shut = False
        if self.then is not None:
            self.then(run)
        self.detail["pids_after"] = pids = server.pids()
        self.detail["down_seconds"] = round(time.monotonic() - self._t_down, 3)
        self.effective = bool(pids) and pids != self.detail["pids_before"]

    def describe(self) -> str:
        how = {"immediate": "an immediate shutdown (crash recovery at start)" if self.target == "postgres" else "SIGKILL",
               "fast": "a clean shutdown", "kill": "SIGKILL"}[self.mode]
        return (f"restart {self.target} after {'a CHECKPOINT and ' if self.checkpoint_url else ''}{how}"
                + (f", down {self.down:g} s" if self.down else ""))
