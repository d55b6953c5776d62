"""report.json: one object per run, stable keys, for scripts and dashboards."""
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
        "checks": [asdict(r) for r in report.results],
        "notes": report.notes, "logs": report.logs,
    }


def write_json(report: RunReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_dict(report), indent=2) + "\n")
