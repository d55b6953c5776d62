"""Find the submissions in what an instructor hands over, and make each a folder to grade.

Accepted as SUBMISSIONS:
- a folder of submissions, each a folder, a git clone or a zip/tar archive (named after the student);
- a GitHub Classroom export (`gh classroom clone student-repos`: `<assignment>-<login>` clones) -
  the common `<assignment>-` prefix is dropped from the names;
- a Gradescope export ("Export Submissions": `submission_<id>/` folders and `submission_metadata.yml`
  naming the submitters) - names come from the metadata;
- one archive holding any of the above, or a single submission (a folder whose services are there).
A submission's services may sit a few folders deep (an archive of a folder, `src/`): the graded
folder is the shallowest one holding one of the lab's service packages.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..lab import Lab
from .archive import extract, is_archive, stem

SKIP_NAMES = {"__MACOSX", "__pycache__", ".git", ".venv", "node_modules"}
GRADESCOPE_METADATA = "submission_metadata.yml"
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]+")


@dataclass
class Submission:
    name: str  # the student (or group): unique in the class, safe as a folder name
    source: Path  # what the instructor gave: a folder, a git clone or an archive
    people: list[str] = field(default_factory=list)  # submitters, when the export names them

    @property
    def kind(self) -> str:
        if is_archive(self.source):
            return "archive"
        return "git" if (self.source / ".git").exists() else "folder"


def _safe(name: str) -> str:
    cleaned = _UNSAFE.sub("_", name).strip("._") or "submission"
    return cleaned[:80]


def _entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if not p.name.startswith(".") and p.name not in SKIP_NAMES and (p.is_dir() or is_archive(p)))


def _module_names(lab: Lab) -> set[str]:
    """The importable names the lab's service commands run (`python -m order_api` -> order_api)."""
    names = set()
    for spec in lab.services.values():
        argv = spec.command
        if "-m" in argv and argv.index("-m") + 1 < len(argv):
            names.add(argv[argv.index("-m") + 1].split(".")[0])
    return names or set(lab.services)


def holds_services(folder: Path, lab: Lab) -> bool:
    return any((folder / name).is_dir() or (folder / f"{name}.py").is_file() for name in _module_names(lab))


def service_root(folder: Path, lab: Lab, depth: int = 3) -> Path:
    """The shallowest folder under `folder` holding a service package; `folder` itself if none does
    (the run then reports that the services did not start - the learner's problem to see)."""
    level = [folder]
    for _ in range(depth + 1):
        for candidate in level:
            if holds_services(candidate, lab):
                return candidate
        level = [p for d in level for p in sorted(d.iterdir())
                 if p.is_dir() and not p.name.startswith(".") and p.name not in SKIP_NAMES]
    return folder


def _strip_common_prefix(names: list[str]) -> list[str]:
    """Classroom clones are `<assignment>-<login>`: drop the shared `<assignment>-`."""
    if len(names) < 2:
        return names
    prefix = os.path.commonprefix(names)
    cut = prefix.rfind("-") + 1
    stripped = [n[cut:] for n in names]
    return stripped if cut and all(stripped) else names


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def _gradescope(folder: Path) -> list[Submission] | None:
    meta = folder / GRADESCOPE_METADATA
    if not meta.exists():
        return None
    import yaml  # only Gradescope exports need it

    data = yaml.safe_load(meta.read_text()) or {}
    found = []
    for key, entry in sorted(data.items()):
        path = folder / str(key)
        if not path.exists():
            continue
        entry = entry or {}
        people = entry.get(":submitters") or entry.get("submitters") or []
        labels = [str(p.get(":sid") or p.get(":email") or p.get(":name") or p.get("sid") or p.get("email")
                      or p.get("name")) for p in people if isinstance(p, dict)]
        names = [str(p.get(":name") or p.get("name") or "") for p in people if isinstance(p, dict)]
        student = "+".join(label.split("@")[0] for label in labels if label and label != "None") or str(key)
        found.append(Submission(_safe(student), path, [n for n in names if n]))
    names = _unique([s.name for s in found])
    for sub, name in zip(found, names):
        sub.name = name
    return found


def discover(root: Path, lab: Lab, work: Path) -> list[Submission]:
    """The class in `root`. An archive given as `root` is unpacked under `work` first."""
    root = root.resolve()
    if is_archive(root):
        unpacked = work / "class" / _safe(stem(root))
        if not unpacked.exists():
            extract(root, unpacked)
        root = unpacked
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder or an archive")
    if holds_services(root, lab):
        return [Submission(_safe(root.name), root)]
    entries = _entries(root)
    while len(entries) == 1 and entries[0].is_dir() and not holds_services(entries[0], lab) \
            and not (entries[0] / ".git").exists() and _entries(entries[0]):
        root, entries = entries[0], _entries(entries[0])  # an export's wrapper folder
    gradescope = _gradescope(root)
    if gradescope is not None:
        return gradescope
    if not entries:  # loose files and no services: one submission, graded so its report says what is missing
        return [Submission(_safe(root.name), root)]
    names = _unique(_strip_common_prefix([_safe(stem(p)) for p in entries]))
    return [Submission(name, path) for name, path in zip(names, entries)]


def materialize(sub: Submission, lab: Lab, work: Path) -> Path:
    """The folder to grade: an archive is unpacked (once) under `work/<name>`; then its service root."""
    if sub.kind == "archive":
        target = work / sub.name
        if not target.exists():
            extract(sub.source, target)
        return service_root(target, lab)
    return service_root(sub.source, lab)


def fingerprint(sub: Submission) -> str:
    """Identifies what was submitted: a changed submission is graded again on a resumed run."""
    digest = hashlib.sha256()
    if sub.kind == "archive":
        with open(sub.source, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()
    return content_digest(sub.source)


def content_digest(folder: Path) -> str:
    """The files of a folder (names and bytes, links and caches left out): equal for identical code."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink() and not SKIP_NAMES.intersection(path.relative_to(folder).parts):
            digest.update(str(path.relative_to(folder)).encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()


def git_commit(sub: Submission) -> str | None:
    if sub.kind != "git":
        return None
    try:
        out = subprocess.run(["git", "-C", str(sub.source), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None
