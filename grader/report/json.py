"""report.json: one object per run, stable keys, for scripts and dashboards.

Shape (schema "labkit.report/1"; keys are only ever added):
{
  "schema": "labkit.report/1",
  "lab": "lab-1", "title": str, "submission": str, "seed": int, "runtime": "native" | "docker" | ...,
  "started_at": ISO 8601 str, "duration_s": float,
  "score": float, "max_score": float, "passed": bool,      # a SKIP earns 0 of its max_points
  "replay": "labkit check lab-1 --seed N",
  "checks": [{"id", "title", "state": "PASS" | "FAIL" | "ERROR" | "SKIP", "passed", "points", "max_points",
              "message", "evidence": [str, ...] (all of it, uncapped), "hint": str | null,
              "duration", "skipped", "errored"}, ...],
  "notes": [str, ...], "logs": {service: log tail}, "crashed": [service, ...],
  "faults": [{"fault", "target", "fid", "start", "end", "effective", "reason", "description", "detail"}, ...],
  "coverage": {service: "3 of 3 boundaries killed after, 2 held before"}   # crash coverage per service swept
}
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from . import RunReport

SCHEMA = "labkit.report/1"


def to_dict(report: RunReport) -> dict:
    return {
        "schema": SCHEMA,
        "lab": report.lab, "title": report.title, "submission": report.submission, "seed": report.seed,
        "runtime": report.runtime, "started_at": report.started_at, "duration_s": round(report.duration, 2),
        "score": report.score, "max_score": report.max_score, "passed": report.passed,
        "replay": report.replay_command(),
        "checks": [{"id": r.id, "title": r.title, "state": r.state, **asdict(r)} for r in report.results],
        "notes": report.notes, "logs": report.logs, "crashed": report.crashed,
        "faults": report.faults, "coverage": report.coverage,
    }


def write_json(report: RunReport, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_dict(report), indent=2) + "\n")
