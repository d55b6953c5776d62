"""GitHub Classroom: the autograding runner's result, as `autograding-grading-reporter` reads it.

The reporter takes, per runner id, an env var `<RUNNER>_RESULTS` holding base64 of
{"version": 1, "status": "pass"|"fail"|"error", "max_score": N,
 "tests": [{"name", "status", "score", "message", "test_code", "filename", "line_no", "duration"}]}
and adds up `tests[].score` against `max_score` (the points Classroom records). The workflow from
`labkit bundle --classroom` runs `labkit check`, then

    python -m grader.report.classroom results/lab-1/report.json >> "$GITHUB_OUTPUT"

which prints `result=<base64>` for the reporter step.

A skipped check (its faults did not happen) is listed with status "error" (the reporter has no
"skipped" status) and 0 of its points; its points stay in max_score, as in every other format.
"""
from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Mapping

from . import RunReport
from .json import to_dict

STATUS = {"PASS": "pass", "FAIL": "fail", "ERROR": "error", "SKIP": "error"}


def _message(check: Mapping) -> str:
    text = check.get("message", "")
    if check.get("state") == "SKIP":
        text = f"SKIP, 0 of {check.get('max_points', 0):g} points: {text}"
    if check.get("hint"):
        text += f"\nhint: {check['hint']}"
    return text


def to_classroom(report: RunReport | Mapping) -> dict:
    data = to_dict(report) if isinstance(report, RunReport) else report
    checks = data.get("checks", [])
    if checks and all(c.get("state") == "ERROR" for c in checks):
        status = "error"  # nothing could be checked: the services did not start, the stack failed, ...
    elif checks and all(c.get("state") == "PASS" for c in checks):
        status = "pass"
    else:
        status = "fail"
    return {
        "version": 1,
        "status": status,
        "max_score": float(sum(c.get("max_points", 0) for c in checks)),
        "tests": [{
            "name": check.get("title") or check["id"],
            "status": STATUS[check.get("state", "ERROR")],
            "score": 0.0 if check.get("state") == "SKIP" else float(check.get("points", 0)),
            "message": _message(check),
            "test_code": f"{data.get('replay', '')}  # check {check['id']}",
            "filename": "",
            "line_no": 0,
            "duration": int(round(float(check.get("duration", 0)) * 1000)),  # ms, as the runners report it
        } for check in checks],
    }


def encoded(report: RunReport | Mapping) -> str:
    """What the reporter's `<RUNNER>_RESULTS` env var holds: base64 of the compact JSON."""
    return base64.b64encode(json.dumps(to_classroom(report), separators=(",", ":")).encode()).decode()


def write_classroom(report: RunReport | Mapping, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_classroom(report), indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    """`python -m grader.report.classroom REPORT.json`: print `result=<base64>` for $GITHUB_OUTPUT."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m grader.report.classroom results/<lab>/report.json", file=sys.stderr)
        return 2
    path = Path(args[0])
    if not path.exists():  # the check never wrote a report: still give Classroom a (zero) result
        data = {"checks": [{"id": "grading", "title": "grading", "state": "ERROR", "points": 0, "max_points": 0,
                            "message": f"no report at {path}: labkit check did not finish (see the log above)"}]}
    else:
        data = json.loads(path.read_text())
    print(f"result={encoded(data)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
