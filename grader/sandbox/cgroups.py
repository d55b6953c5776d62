"""A cgroup per run: memory, process-count and CPU limits, and a way to list and kill everything in it.

Works with cgroups v2 (a writable unified hierarchy with the controllers delegated to us) and with
v1 (one hierarchy per controller, as on these VMs: `pids`, `memory` and `cpu` mounted under
/sys/fs/cgroup). CPU: a hard quota (`cpu.cfs_quota_us`/`cpu.cfs_period_us`, v2 `cpu.max`) of
`cpus` CPUs for the whole run, and half the default weight (`cpu.shares` 512, v2 `cpu.weight` 50), so
a run's spinners neither slow the runs beside it past their own share nor starve the grader and the
servers it reads from (they stay in the cgroup the grader is in, at the default weight).
The group is created below the cgroup the grader itself is in. Where neither is writable,
`Cgroup.create` returns None and the sandbox relies on its PID namespace and rlimits alone.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Callable

ROOT = Path("/sys/fs/cgroup")
CPU_PERIOD_US = 100_000
V1_CONTROLLERS = ("pids", "memory", "cpu")


def _own_paths() -> dict[str, str]:
    """controller ('' for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    paths = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in (controllers.split(",") if controllers else [""]):
            paths[controller] = path
    return paths


class Cgroup:
    def __init__(self, dirs: list[Path], version: int) -> None:
        self.dirs = dirs  # one per hierarchy (v2: exactly one)
        self.version = version

    @classmethod
    def create(cls, name: str, memory_bytes: int, pids_max: int, cpus: float | None = None) -> "Cgroup | None":
        """`cpus`: CPU time the whole group may use, in CPUs (1.0: one core's worth); None: no quota."""
        own = _own_paths()
        if (ROOT / "cgroup.controllers").exists():  # pure v2
            return cls._create_v2(ROOT / own.get("", "/").lstrip("/") / name, memory_bytes, pids_max, cpus)
        quota = str(int(cpus * CPU_PERIOD_US)) if cpus else "-1"
        settings = {"pids": [("pids.max", str(pids_max))],
                    "memory": [("memory.limit_in_bytes", str(memory_bytes))],
                    "cpu": [("cpu.cfs_period_us", str(CPU_PERIOD_US)), ("cpu.cfs_quota_us", quota),
                            ("cpu.shares", "512")]}
        made: list[Path] = []
        try:
            for controller in V1_CONTROLLERS:
                base = ROOT / controller
                if not base.is_dir():
                    continue
                path = base / own.get(controller, "/").lstrip("/") / name
                path.mkdir()
                made.append(path)
                for setting, value in settings[controller]:
                    (path / setting).write_text(value)
        except OSError:
            for path in made:
                _rmdir(path)
            return None
        return cls(made, 1) if made else None

    @classmethod
    def sweep(cls, prefix: str, in_use: "Callable[[str], bool]") -> None:
        """Remove empty groups named `prefix...` that no live run claims (a grader that was killed
        leaves its groups behind; their processes died with their PID namespace)."""
        own = _own_paths()
        version = 2 if (ROOT / "cgroup.controllers").exists() else 1
        bases = [ROOT / own.get("", "/").lstrip("/")] if version == 2 else \
            [ROOT / c / own.get(c, "/").lstrip("/") for c in V1_CONTROLLERS if (ROOT / c).is_dir()]
        for base in bases:
            for group in base.glob(prefix + "*"):
                if group.is_dir() and not in_use(group.name):
                    stale = cls([group], version)
                    if not stale.pids():
                        stale.remove()

    @classmethod
    def _create_v2(cls, path: Path, memory_bytes: int, pids_max: int, cpus: float | None) -> "Cgroup | None":
        try:
            path.mkdir()
        except OSError:
            return None
        try:
            (path / "memory.max").write_text(str(memory_bytes))
            (path / "pids.max").write_text(str(pids_max))
            if (path / "cpu.max").exists():  # the cpu controller is not always delegated
                (path / "cpu.max").write_text(f"{int(cpus * CPU_PERIOD_US) if cpus else 'max'} {CPU_PERIOD_US}")
                (path / "cpu.weight").write_text("50")
        except OSError:  # controllers not delegated to us
            _rmdir(path)
            return None
        return cls([path], 2)

    def child(self, name: str) -> "Cgroup | None":
        """A group inside this one (one per service life): the parent's limits still hold."""
        made = []
        try:
            for d in self.dirs:
                (d / name).mkdir()
                made.append(d / name)
        except OSError:
            for path in made:
                _rmdir(path)
            return None
        return Cgroup(made, self.version)

    @property
    def procs_files(self) -> list[Path]:
        """Write a PID into each of these to put it (and its future children) in the group."""
        return [d / "cgroup.procs" for d in self.dirs]

    def pids(self) -> set[int]:
        """Every process in this group and the groups inside it."""
        found: set[int] = set()
        for d in self.dirs:
            for f in d.rglob("cgroup.procs"):
                try:
                    found |= {int(p) for p in f.read_text().split()}
                except OSError:
                    pass
        return found

    def kill(self, timeout: float = 10) -> bool:
        """SIGKILL every process in the group until it is empty; True when it is."""
        deadline = time.monotonic() + timeout
        if self.version == 2 and (self.dirs[0] / "cgroup.kill").exists():
            try:
                (self.dirs[0] / "cgroup.kill").write_text("1")
            except OSError:
                pass
        while True:
            pids = self.pids()
            if not pids:
                return True
            if time.monotonic() > deadline:
                return False
            for pid in pids:  # a fork racing with us is caught on the next round
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)

    def cpu_limit(self) -> float | None:
        """The group's CPU quota in CPUs (None: no quota, or no cpu controller)."""
        for d in self.dirs:
            try:
                if (d / "cpu.max").exists():
                    quota, period = (d / "cpu.max").read_text().split()
                else:
                    quota, period = (d / "cpu.cfs_quota_us").read_text(), (d / "cpu.cfs_period_us").read_text()
            except (OSError, ValueError):
                continue
            return None if quota.strip() in ("max", "-1") else int(quota) / int(period)
        return None

    def memory_peak(self) -> int | None:
        for d in self.dirs:
            for name in ("memory.max_usage_in_bytes", "memory.peak"):
                try:
                    return int((d / name).read_text())
                except (OSError, ValueError):
                    continue
        return None

    def remove(self) -> None:
        self.kill()
        for d in self.dirs:
            for inner in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                _rmdir(inner)
            _rmdir(d)


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()  # cgroup dirs are removed with rmdir, never rmtree
    except OSError:
        pass
