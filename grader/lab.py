"""A lab as described by its `labs/lab-N-<slug>/lab.toml`."""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .stack import KINDS

REPO_ROOT = Path(__file__).resolve().parents[1]


class LabError(ValueError):
    """A lab or its lab.toml is missing or malformed; the message names the file (and line)."""


@dataclass(frozen=True)
class HttpSpec:
    port_env: str = "PORT"
    health: str = "/healthz"


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    command: list[str]
    http: HttpSpec | None = None
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckSpec:
    id: str
    points: float
    hint: str = ""
    title: str = ""
    visibility: str = "public"  # "hidden": students see it only after the due date (Gradescope)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 1


@dataclass(frozen=True)
class Lab:
    id: str
    slug: str
    title: str
    dir: Path
    infra: list[str]
    scenario: str
    topics: list[TopicSpec]
    services: dict[str, ServiceSpec]
    checks: list[CheckSpec]

    @property
    def number(self) -> str:
        return self.id.removeprefix("lab-")

    @property
    def starter(self) -> Path:
        return self.dir / "starter"

    @property
    def reference(self) -> Path:
        return REPO_ROOT / "services"

    def check(self, check_id: str) -> CheckSpec:
        for spec in self.checks:
            if spec.id == check_id:
                return spec
        raise LabError(f"{self.dir / 'lab.toml'}: no check with id {check_id!r}")


def labs_dir() -> Path:
    return Path(os.environ.get("LABKIT_LABS_DIR", REPO_ROOT / "labs"))


def load_lab(path: Path) -> Lab:
    """Parse one lab.toml (path to the file or its folder)."""
    path = path / "lab.toml" if path.is_dir() else path
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise LabError(f"{path}: not found") from None
    except tomllib.TOMLDecodeError as e:
        raise LabError(f"{path}: {e}") from None  # tomllib's message carries line and column
    try:
        infra = list(data.get("infra", []))
        unknown = [k for k in infra if k not in KINDS]
        if unknown:
            raise LabError(f"{path}: infra {unknown} unknown; known: {', '.join(KINDS)}")
        services = {
            name: ServiceSpec(
                name=name,
                command=list(spec["command"]),
                http=HttpSpec(**spec["http"]) if "http" in spec else None,
                env={k: str(v) for k, v in spec.get("env", {}).items()},
            )
            for name, spec in data.get("services", {}).items()
        }
        return Lab(
            id=data["id"], slug=data["slug"], title=data["title"], dir=path.parent, infra=infra,
            scenario=data.get("scenario", ""),
            topics=[TopicSpec(**t) for t in data.get("topics", [])],
            services=services,
            checks=[_check(path, c) for c in data.get("checks", [])],
        )
    except (KeyError, TypeError) as e:
        raise LabError(f"{path}: missing or unexpected field: {e}") from None


def _check(path: Path, data: dict) -> CheckSpec:
    spec = CheckSpec(**data)
    if spec.visibility not in ("public", "hidden"):
        raise LabError(f"{path}: check {spec.id!r}: visibility is 'public' or 'hidden', not {spec.visibility!r}")
    return spec


def all_labs() -> list[Lab]:
    return [load_lab(p) for p in sorted(labs_dir().glob("lab-*/lab.toml"))]


def find_lab(name: str) -> Lab:
    """Accept `lab-1`, `1`, or the folder name `lab-1-exactly-once`."""
    wanted = name if name.startswith("lab-") else f"lab-{name}"
    for lab in all_labs():
        if wanted in (lab.id, lab.dir.name):
            return lab
    known = ", ".join(lab.id for lab in all_labs()) or "none found"
    raise LabError(f"no lab {name!r} under {labs_dir()} (known: {known})")
