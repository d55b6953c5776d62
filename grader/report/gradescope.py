"""Gradescope's results.json (the autograder specification's "Output format").

One test per check: score/max_score/status/name/output/visibility. Public checks are `visible`; hidden
checks (lab.toml visibility "hidden") are `after_due_date`, so students see "public passed, N hidden
pending" until the deadline and their total score only afterwards, as Gradescope does for hidden tests.
A skipped check (its faults did not happen) scores 0 of its points, as in every other format
(docs/instructors.md, "How a SKIP counts").
The seed and the replay command go to `extra_data`, which only instructors see.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from . import RunReport
from .json import to_dict

VISIBLE, HIDDEN = "visible", "after_due_date"


def _is_hidden(check: Mapping) -> bool:
    return check.get("visibility", "public") == "hidden"


def _test_output(check: Mapping) -> str:
    lines = [f"{check['state']}: {check.get('message', '')}"]
    evidence = check.get("evidence") or []
    if evidence:
        lines += ["", "evidence:"] + [f"  {e}" for e in evidence[:20]]
        if len(evidence) > 20:
            lines.append(f"  ... and {len(evidence) - 20} more")
    if check.get("hint"):
        lines += ["", f"hint: {check['hint']}"]
    return "\n".join(lines)


def summary_line(report: Mapping) -> str:
    """What a student reads first: public checks passed, hidden ones pending."""
    checks = report.get("checks", [])
    public = [c for c in checks if not _is_hidden(c)]
    hidden = [c for c in checks if _is_hidden(c)]
    text = f"public checks: {sum(c.get('state') == 'PASS' for c in public)}/{len(public)} passed"
    if hidden:
        text += f"; {len(hidden)} hidden pending (shown after the due date)"
    return text


def to_gradescope(report: RunReport | Mapping) -> dict:
    data = to_dict(report) if isinstance(report, RunReport) else report
    tests = []
    for number, check in enumerate(data.get("checks", []), 1):
        tests.append({
            "name": f"{check.get('title') or check['id']} [{check['id']}]",
            "number": str(number),
            "score": float(check.get("points", 0)) if check.get("state") != "SKIP" else 0.0,
            "max_score": float(check.get("max_points", 0)),
            "status": "passed" if check.get("state") == "PASS" else "failed",
            "output": _test_output(check),
            "output_format": "text",
            "visibility": HIDDEN if _is_hidden(check) else VISIBLE,
            "tags": [check["id"]],
        })
    output = [summary_line(data)]
    notes = data.get("notes") or []
    if notes and all(c.get("state") == "ERROR" for c in data.get("checks", [])):
        output.append(notes[-1])  # why nothing could be checked (e.g. a service did not start)
    return {
        "score": float(sum(t["score"] for t in tests)),
        "execution_time": int(round(float(data.get("duration_s", 0)))),
        "output": "\n".join(output),
        "output_format": "text",
        "visibility": VISIBLE,
        "stdout_visibility": "hidden",
        "tests": tests,
        "extra_data": {"lab": data.get("lab"), "seed": data.get("seed"), "runtime": data.get("runtime"),
                       "replay": data.get("replay"), "max_score": data.get("max_score")},
    }


def write_gradescope(report: RunReport | Mapping, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_gradescope(report), indent=2) + "\n")
