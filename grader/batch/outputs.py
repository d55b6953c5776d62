"""Every per-submission format from one run, written next to its history and logs."""
from __future__ import annotations

import json
import shlex
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

from ..checks import CheckResult
from ..lab import Lab
from ..report import RunReport
from ..report.classroom import write_classroom
from ..report.gradescope import write_gradescope
from ..report.html import write_html
from ..report.json import to_dict
from ..report.junit import write_junit

FILES = {"json": "report.json", "junit": "junit.xml", "gradescope": "results.json", "classroom": "classroom.json",
         "html": "report.html"}


def write_all(report: RunReport, out_dir: Path, extra: Mapping | None = None) -> dict[str, Path]:
    """report.json (plus `extra` keys, e.g. the batch's student and replay), junit.xml, Gradescope
    results.json, Classroom classroom.json and report.html (timeline from out_dir/history.jsonl)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: out_dir / name for kind, name in FILES.items()}
    data = {**to_dict(report), **(extra or {})}
    paths["json"].write_text(json.dumps(data, indent=2) + "\n")  # labkit.report/1: keys are only ever added
    write_junit(report, paths["junit"], replay=data.get("replay"))
    write_gradescope(data, paths["gradescope"])
    write_classroom(data, paths["classroom"])
    write_html(data, paths["html"], out_dir / "history.jsonl")
    return paths


def error_report(lab: Lab, submission: Path, message: str, runtime: str, seed: int = 0) -> RunReport:
    """A run that could not happen: every check ERROR with the reason, so the student still has a row."""
    results = [CheckResult.error(spec.id, spec.title or spec.id, spec.points, message, spec.hint or None)
               for spec in lab.checks]
    return RunReport(lab=lab.id, title=lab.title, submission=str(submission), seed=seed, runtime=runtime,
                     started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), duration=0.0,
                     results=results, notes=[message])


def replay_command(lab: Lab, submission: Path, seed: int, runtime: str) -> str:
    return shlex.join(["labkit", "check", lab.id, "--submission", str(submission), "--seed", str(seed),
                       "--runtime", runtime])
