"""`labkit doctor`: which runtimes can work here, and exactly what is missing and how to get it."""
from __future__ import annotations

import shutil
import socket
import sys
from dataclasses import dataclass

import psutil

from .stack import docker_available
from .stack.base import MissingDependency
from .stack.native import SERVERS

MIN_FREE_MEMORY = 2 * 1024**3  # a full native stack plus services stays well under this
STANDARD_PORTS = {"kafka": 9092, "postgres": 5432, "redis": 6379, "rabbitmq": 5672}


@dataclass
class Finding:
    area: str
    ok: bool
    detail: str
    fix: str = ""


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _short(path) -> str:
    """Binaries inside the venv are shown relative to it; the full path is noise there."""
    text = str(path)
    return text.replace(sys.prefix, "<venv>") if text.startswith(sys.prefix) else text


def diagnose() -> list[Finding]:
    ok = sys.version_info >= (3, 11)
    findings = [Finding("python", ok, f"Python {sys.version.split()[0]}", "" if ok else "labkit needs Python 3.11+")]
    free = psutil.virtual_memory().available
    ok = free >= MIN_FREE_MEMORY
    findings.append(Finding("memory", ok, f"{free / 1024**3:.1f} GiB available",
                            "" if ok else "close other programs: a full stack wants about 2 GiB"))
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
        findings.append(Finding("ports", True, "can listen on free ports on 127.0.0.1"))
    except OSError as e:
        findings.append(Finding("ports", False, f"cannot listen on 127.0.0.1: {e}", "check loopback networking"))
    for kind, cls in SERVERS.items():
        try:
            bins = cls().binaries()
            detail = ", ".join(_short(p) for p in bins.values())
            taken = STANDARD_PORTS[kind]
            if _port_in_use(taken):
                detail += f" (port {taken} is taken by another server: fine, labkit uses private ports)"
            findings.append(Finding(f"native {kind}", True, detail))
        except MissingDependency as e:
            findings.append(Finding(f"native {kind}", False, f"{e.what} not found", e.install))
    has_client = shutil.which("docker") is not None
    daemon = has_client and docker_available()
    findings.append(Finding(
        "docker", daemon,
        "daemon answers" if daemon else ("client found, but no daemon answers" if has_client else "not installed"),
        "optional: without Docker labkit uses the native runtime" if not daemon else ""))
    return findings


def runtimes(findings: list[Finding]) -> dict[str, bool]:
    by_area = {f.area: f.ok for f in findings}
    native = all(ok for area, ok in by_area.items() if area.startswith("native "))
    return {"native": native, "docker": by_area.get("docker", False), "external": True}
