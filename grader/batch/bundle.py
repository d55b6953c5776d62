"""What an instructor hands out or uploads, built from this kit.

- student(OUT): the kit without the reference solutions (services/ except services/common, the learner
  library), without tests/ (mutants, grader tests) and CI, with a README for learners
  (templates/student-README.md); `make lab-N` / `make check-N` work from it.
- classroom(LAB, OUT): a student kit plus `.github/workflows/classroom.yml` - a GitHub Classroom template
  repository whose workflow runs `labkit check` on the runner and reports the points.
- gradescope(LAB, OUT.zip): setup.sh + run_autograder at the zip's root and the student kit in kit/;
  the autograder grades /autograder/submission with the native runtime (Gradescope's container has no
  Docker) and writes /autograder/results/results.json.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import zipfile
from pathlib import Path, PurePosixPath

from ..lab import REPO_ROOT, Lab

LEARNER_SERVICES = {"common", "__init__.py"}  # what of services/ a learner gets
LEFT_OUT_TOP = {"tests", ".ci", ".git", ".venv", ".labkit", "results", "build", "dist"}
TEMPLATES = Path(__file__).parent / "templates"


def kit_files(root: Path = REPO_ROOT) -> list[PurePosixPath]:
    """The kit's files as git knows them (tracked and new, not ignored), or a walk without git."""
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, check=True, timeout=60).stdout.decode()
        names = sorted({n for n in out.split("\0") if n})
    except (OSError, subprocess.SubprocessError):
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    return [PurePosixPath(n) for n in names if (root / n).is_file() and "__pycache__" not in n]


def is_student_file(path: PurePosixPath) -> bool:
    parts = path.parts
    if parts[0] in LEFT_OUT_TOP or any(p.endswith(".egg-info") for p in parts):
        return False
    if parts[0] == "services" and len(parts) > 1 and parts[1] not in LEARNER_SERVICES:
        return False  # a reference solution
    return True


def student(out: Path, root: Path = REPO_ROOT) -> list[PurePosixPath]:
    """Copy the student kit to `out` (must not exist). Returns the files copied."""
    if out.exists():
        raise FileExistsError(f"{out} exists; give a new folder")
    files = [f for f in kit_files(root) if is_student_file(f)]
    for rel in files:
        target = out.joinpath(*rel.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root.joinpath(*rel.parts), target)
    # The kit's README is the learner's: the repository's offers the kit's own tests, benchmarks and
    # reference solutions, none of which the kit has.
    (out / "README.md").write_text((TEMPLATES / "student-README.md").read_text())
    return files


def _render(template: str, lab: Lab, **extra: str) -> str:
    text = (TEMPLATES / template).read_text()
    needs_rabbitmq = "rabbitmq" in lab.infra
    values = {"LAB": lab.id, "LAB_DIR": lab.dir.name, "MAX_POINTS": f"{sum(c.points for c in lab.checks):g}",
              "APT_PACKAGES": "rabbitmq-server" if needs_rabbitmq else "", **extra}
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def classroom(lab: Lab, out: Path, root: Path = REPO_ROOT) -> Path:
    """A template repository for GitHub Classroom; returns the workflow's path."""
    student(out, root)
    workflow = out / ".github" / "workflows" / "classroom.yml"
    workflow.parent.mkdir(parents=True)
    workflow.write_text(_render("classroom.yml", lab))
    return workflow


def gradescope(lab: Lab, zip_path: Path, root: Path = REPO_ROOT) -> list[str]:
    """The autograder zip; returns its member names."""
    staging = zip_path.with_name(zip_path.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        student(staging / "kit", root)
        for name in ("setup.sh", "run_autograder"):
            script = staging / name
            script.write_text(_render(f"gradescope_{name}", lab))
            script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        zip_path.parent.mkdir(parents=True, exist_ok=True)
        names = []
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(staging.rglob("*")):
                if path.is_file():
                    arcname = path.relative_to(staging).as_posix()
                    info = zipfile.ZipInfo.from_file(path, arcname)  # keeps the executable bits
                    with open(path, "rb") as f:
                        zf.writestr(info, f.read(), zipfile.ZIP_DEFLATED)
                    names.append(arcname)
        return names
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def unpack_gradescope(zip_path: Path, dest: Path) -> None:
    """For tests and instructors: unzip keeping the executable bits (zipfile drops them)."""
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            target = dest / info.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(info))
            mode = info.external_attr >> 16
            if mode:
                os.chmod(target, stat.S_IMODE(mode))
