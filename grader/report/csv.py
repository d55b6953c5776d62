"""class.csv: one row per student, one column per check (its points), for gradebooks and spreadsheets.

Input is each student's report in the `labkit.report/1` JSON shape (grader/report/json.py), so a class
table can be rebuilt from the per-student report.json files without re-grading. Check columns follow
the order of first appearance; a check a student's run did not report is left empty, a SKIP is 0.

Columns: student, score, max_score, passed, <check id>..., state (graded / error), seed, runtime,
duration_s, replay, note (why a run did not complete).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Mapping

from . import RunReport
from .json import to_dict


def _as_dict(report: RunReport | Mapping) -> Mapping:
    return to_dict(report) if isinstance(report, RunReport) else report


def check_ids(reports: Iterable[Mapping]) -> list[str]:
    """Every check id, in the order the reports list them (one lab: the lab.toml order)."""
    seen: dict[str, None] = {}
    for report in reports:
        for check in report.get("checks", []):
            seen.setdefault(check["id"], None)
    return list(seen)


def _points(value: float) -> str:
    return f"{value:g}"


def _errored(report: Mapping) -> bool:
    checks = report.get("checks", [])
    return bool(checks) and all(c.get("state") == "ERROR" for c in checks)


def class_table(students: Mapping[str, RunReport | Mapping]) -> tuple[list[str], list[list[str]]]:
    """Header and rows, one per student (sorted by name)."""
    reports = {name: _as_dict(r) for name, r in students.items()}
    ids = check_ids(reports.values())
    header = ["student", "score", "max_score", "passed", *ids, "state", "seed", "runtime", "duration_s",
              "replay", "note"]
    rows = []
    for name in sorted(reports):
        report = reports[name]
        by_id = {c["id"]: c for c in report.get("checks", [])}
        cells = [_points(by_id[i]["points"]) if i in by_id else "" for i in ids]  # a SKIP: 0
        notes = report.get("notes") or []
        rows.append([name, _points(report.get("score", 0)), _points(report.get("max_score", 0)),
                     "yes" if report.get("passed") else "no", *cells,
                     "error" if _errored(report) else "graded", str(report.get("seed", "")),
                     report.get("runtime", ""), str(report.get("duration_s", "")), report.get("replay", ""),
                     notes[-1].splitlines()[0] if _errored(report) and notes else ""])
    return header, rows


def write_class_csv(students: Mapping[str, RunReport | Mapping], path: str | Path) -> None:
    header, rows = class_table(students)
    _write(path, header, rows)


def write_pass_rates_csv(rates: Mapping[str, Mapping[str, tuple[int, int]]], path: str | Path) -> None:
    """`--repeat N`: per student and check, passes/runs as a fraction (1 = always, 0 = never).

    `rates[student][check_id] = (passed, runs)`; skipped runs are not counted in `runs`."""
    ids: dict[str, None] = {}
    for per_check in rates.values():
        for check_id in per_check:
            ids.setdefault(check_id, None)
    header = ["student", *ids]
    rows = []
    for name in sorted(rates):
        cells = []
        for check_id in ids:
            passed, runs = rates[name].get(check_id, (0, 0))
            cells.append(f"{passed / runs:.2f}" if runs else "")
        rows.append([name, *cells])
    _write(path, header, rows)


def _write(path: str | Path, header: list[str], rows: list[list[str]]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
