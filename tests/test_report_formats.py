"""Result formats for instructors: class CSV, Gradescope results.json (validated against a JSON schema
written from Gradescope's published autograder specification), GitHub Classroom runner results (the
shape autograding-grading-reporter reads), the run timeline (both history shapes) and the HTML report,
checked in a real headless browser. Reports are built by hand: no graded run needed."""
from __future__ import annotations

import base64
import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from grader import cli

from grader.checks import CheckResult
from grader.history import History
from grader.report import RunReport
from grader.report.classroom import encoded, to_classroom
from grader.report.csv import class_table, write_class_csv, write_pass_rates_csv
from grader.report.gradescope import summary_line, to_gradescope
from grader.report.html import render_html, write_html
from grader.report.json import to_dict
from grader.report.timeline import build, cited, throughput

VISIBILITY = {"enum": ["hidden", "after_due_date", "after_published", "visible"]}
FORMAT = {"enum": ["text", "html", "simple_format", "md", "ansi"]}
# Gradescope autograder specification, "Output format" (docs/specs.md of gradescope/autograder_samples):
# score is required at the top level unless every test has one; tests[].status is passed|failed.
GRADESCOPE_SCHEMA = {
    "type": "object",
    "properties": {
        "score": {"type": "number"},
        "execution_time": {"type": "number"},
        "output": {"type": "string"},
        "output_format": FORMAT, "test_output_format": FORMAT, "test_name_format": FORMAT,
        "visibility": VISIBILITY, "stdout_visibility": VISIBILITY,
        "extra_data": {"type": "object"},
        "tests": {"type": "array", "items": {
            "type": "object",
            "properties": {
                "score": {"type": "number"}, "max_score": {"type": "number"},
                "status": {"enum": ["passed", "failed"]},
                "name": {"type": "string"}, "name_format": FORMAT, "number": {"type": "string"},
                "output": {"type": "string"}, "output_format": FORMAT,
                "tags": {"type": "array", "items": {"type": "string"}},
                "visibility": VISIBILITY, "extra_data": {"type": "object"},
            },
            "additionalProperties": False,
        }},
        "leaderboard": {"type": "array"},
    },
    "additionalProperties": False,
    "anyOf": [{"required": ["score"]},
              {"required": ["tests"], "properties": {"tests": {"items": {"required": ["score"]}}}}],
}
# What classroom-resources/autograding-grading-reporter reads (src/main.js, console-results.js,
# notify-classroom.js): status pass|fail|error, max_score, tests[].{name,status,score,message,line_no}.
CLASSROOM_SCHEMA = {
    "type": "object",
    "required": ["version", "status", "max_score", "tests"],
    "properties": {
        "version": {"const": 1},
        "status": {"enum": ["pass", "fail", "error"]},
        "max_score": {"type": "number", "minimum": 0},
        "tests": {"type": "array", "items": {
            "type": "object",
            "required": ["name", "status", "score", "message", "line_no"],
            "properties": {"name": {"type": "string"}, "status": {"enum": ["pass", "fail", "error"]},
                           "score": {"type": "number"}, "message": {"type": ["string", "null"]},
                           "test_code": {"type": "string"}, "filename": {"type": "string"},
                           "line_no": {"type": "integer"}, "duration": {"type": "number"}},
        }},
    },
}


def report(**overrides) -> RunReport:
    results = [
        CheckResult.verdict("api-contract", "API contract", 2, True, "all 8 cases as expected"),
        CheckResult.verdict("no-lost-orders", "No acknowledged order is lost", 3, False,
                            "2 of 40 acknowledged orders missing", ["order k-0000000012: acknowledged, never applied",
                                                                    "order k-0000000031: acknowledged, never applied"],
                            hint="commit the offset after the transaction"),
        CheckResult.error("ordering", "Ordering", 1, "read_model crashed", "apply events in order"),
        CheckResult.skip("traces", "Traces", 1, "the docker runtime has no fault proxy"),
    ]
    fields = dict(lab="lab-1", title="Exactly-once", submission="/class/alice", seed=2**62 + 5, runtime="native",
                  started_at="2026-01-01T00:00:00+00:00", duration=51.4, results=results,
                  notes=["load: 40 orders acknowledged"], logs={"read_model": "Traceback (most recent call last):\nboom"},
                  crashed=["read_model"])
    fields.update(overrides)
    return RunReport(**fields)


def test_gradescope_results_follow_the_published_spec():
    data = to_gradescope(report())
    jsonschema.validate(data, GRADESCOPE_SCHEMA)
    tests = {t["tags"][0]: t for t in data["tests"]}
    assert data["score"] == 2.0 and tests["api-contract"]["status"] == "passed"
    assert tests["no-lost-orders"] == {**tests["no-lost-orders"], "score": 0.0, "max_score": 3.0, "status": "failed"}
    assert "k-0000000012" in tests["no-lost-orders"]["output"] and "hint:" in tests["no-lost-orders"]["output"]
    assert (tests["traces"]["score"], tests["traces"]["max_score"]) == (0.0, 1.0), "a SKIP is 0 of its points"
    assert data["execution_time"] == 51
    assert str(2**62 + 5) not in data["output"] and data["extra_data"]["seed"] == 2**62 + 5, "seed only for instructors"


def test_gradescope_hidden_checks_are_pending_until_the_due_date():
    data = to_dict(report())
    data["checks"][1]["visibility"] = "hidden"
    out = to_gradescope(data)
    jsonschema.validate(out, GRADESCOPE_SCHEMA)
    assert [t["visibility"] for t in out["tests"]] == ["visible", "after_due_date", "visible", "visible"]
    assert summary_line(data) == "public checks: 1/3 passed; 1 hidden pending (shown after the due date)"


def test_classroom_result_is_what_the_reporter_reads():
    data = to_classroom(report())
    jsonschema.validate(data, CLASSROOM_SCHEMA)
    assert data["status"] == "fail" and data["max_score"] == 7.0  # 2 + 3 + 1 + 1: a SKIP keeps its points in the max
    assert sum(t["score"] for t in data["tests"]) == 2.0  # the reporter adds tests[].score
    decoded = json.loads(base64.b64decode(encoded(report())))
    assert decoded == data
    passing = RunReport(**{**report().__dict__, "results": [report().results[0]]})
    assert to_classroom(passing)["status"] == "pass"
    down = RunReport(**{**report().__dict__, "results": [report().results[2]]})
    assert to_classroom(down)["status"] == "error"


def test_classroom_cli_prints_a_github_output_line(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps(to_dict(report())))
    out = subprocess.run([sys.executable, "-m", "grader.report.classroom", str(tmp_path / "report.json")],
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("result=") and out.count("\n") == 1
    jsonschema.validate(json.loads(base64.b64decode(out.strip().removeprefix("result="))), CLASSROOM_SCHEMA)
    missing = subprocess.run([sys.executable, "-m", "grader.report.classroom", str(tmp_path / "none.json")],
                             capture_output=True, text=True, check=True).stdout
    assert json.loads(base64.b64decode(missing.strip().removeprefix("result=")))["status"] == "error"


def test_class_csv_has_one_row_per_student_and_one_column_per_check(tmp_path):
    bob = to_dict(report(submission="/class/bob"))
    bob["checks"] = [dict(c, state="PASS", points=c["max_points"]) for c in bob["checks"]]
    bob.update(score=7.0, max_score=7.0, passed=True)
    write_class_csv({"alice": report(), "bob": bob}, tmp_path / "class.csv")
    rows = list(csv.DictReader(open(tmp_path / "class.csv")))
    assert [r["student"] for r in rows] == ["alice", "bob"]
    assert list(rows[0])[:8] == ["student", "score", "max_score", "passed", "api-contract", "no-lost-orders",
                                 "ordering", "traces"]
    assert rows[0]["api-contract"] == "2" and rows[0]["no-lost-orders"] == "0" and rows[0]["traces"] == "0"
    assert rows[1]["score"] == "7" and rows[1]["passed"] == "yes"
    _, table = class_table({"carol": report(results=[CheckResult.error("api-contract", "x", 2, "did not start")],
                                            notes=["a service failed: order_api exited"])})
    assert table[0][-1] == "a service failed: order_api exited"


def test_pass_rates_csv(tmp_path):
    write_pass_rates_csv({"alice": {"ordering": (2, 3), "traces": (0, 0)}}, tmp_path / "rates.csv")
    rows = list(csv.DictReader(open(tmp_path / "rates.csv")))
    assert rows == [{"student": "alice", "ordering": "0.67", "traces": ""}]


def jepsen_history() -> list[dict]:
    """As history.jsonl holds it: invoke then ok/fail/info with the same id; faults with phases."""
    events = [(0.1, "invoke", {"id": 1, "f": "place", "key": "k-0000000012"}), (0.15, "ok", {"id": 1, "f": "place"}),
              (0.2, "invoke", {"id": 2, "f": "place", "key": "k-0000000013"}),
              (1.3, "fault", {"fault": "cut", "target": "kafka", "fid": 7, "phase": "start"}),
              (1.4, "invoke", {"id": 3, "f": "place", "key": "k-0000000031"}), (2.4, "info", {"id": 3, "f": "place"}),
              (2.5, "fault", {"fault": "cut", "target": "kafka", "fid": 7, "phase": "end", "effective": True}),
              (2.6, "fault", {"fault": "restart", "target": "postgres", "phase": "unavailable", "reason": "native"}),
              (2.7, "fail", {"id": 2, "f": "place"})]
    return [{"t": t, "kind": kind, "actor": "nemesis" if kind == "fault" else "client", "data": data}
            for t, kind, data in events]


def write_history(path: Path) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in jepsen_history()))
    return History.load_jsonl(path) and path  # loadable by the grader's own reader too


def test_timeline_reads_jepsen_operations_and_fault_phases():
    tl = build(jepsen_history())
    assert [(o.key, o.outcome) for o in tl.ops] == [("k-0000000012", "ok"), ("k-0000000013", "fail"),
                                                      ("k-0000000031", "info")]
    assert tl.ops[0].latency == pytest.approx(0.05)
    assert [(f.label, f.start, f.end) for f in tl.faults] == [("cut kafka", 1.3, 2.5)]
    assert tl.unavailable == ["restart postgres: native"]
    _, per_outcome = throughput(tl)
    assert sum(per_outcome["ok"]) == 1 and sum(per_outcome["info"]) == 1
    assert [o.key for o in cited(tl, ["order k-0000000031: acknowledged, never applied"])] == ["k-0000000031"]


def test_timeline_reads_request_response_histories():
    events = [{"t": 0.5, "kind": "request", "actor": "client", "data": {"n": 1, "op": "place", "key": "key-aaaaaa"}},
              {"t": 0.6, "kind": "request", "actor": "client", "data": {"n": 2, "op": "place", "key": "key-bbbbbb"}},
              {"t": 0.7, "kind": "response", "actor": "client", "data": {"n": 1, "status": 201}},
              {"t": 1.0, "kind": "fault", "actor": "nemesis", "data": {"fault": "cut", "target": "kafka"}},
              {"t": 1.5, "kind": "response", "actor": "client", "data": {"n": 2, "status": 503}},
              {"t": 2.0, "kind": "fault", "actor": "nemesis", "data": {"fault": "heal", "target": "kafka"}},
              {"t": 2.2, "kind": "fault", "actor": "nemesis", "data": {"fault": "sigkill", "target": "read_model"}},
              {"t": 2.3, "kind": "request", "actor": "client", "data": {"n": 3, "op": "cancel"}}]
    tl = build(events)
    assert [(o.outcome, o.end) for o in tl.ops] == [("ok", 0.7), ("info", 1.5), ("info", None)]
    assert [(f.label, f.start, f.end) for f in tl.faults] == [("cut kafka", 1.0, 2.0), ("sigkill read_model", 2.2, None)]


def test_html_report_carries_checks_evidence_and_timeline(tmp_path):
    history = write_history(tmp_path / "history.jsonl")
    html = render_html(report(), history)
    assert html.count("<svg") == 1 and "<script" not in html
    assert not re.search(r"(src|href)=\"https?:|@import|url\(https?:", html), "nothing may load from the network"
    for text in ("No acknowledged order is lost", "k-0000000012", "commit the offset after the transaction",
                 "cut", "read_model", "Traceback", "labkit check lab-1 --seed"):
        assert text in html, text
    assert "No operations were recorded" in render_html(report())  # no history: still a page


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_html_report_renders_in_a_headless_browser(tmp_path):
    browser = chromium()
    if browser is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is required in CI (.ci/run installs it)")
        pytest.skip("chromium not installed (apt-get install chromium) - the HTML is checked in CI")
    history = write_history(tmp_path / "history.jsonl")
    page = tmp_path / "report.html"
    (tmp_path / "report.json").write_text(json.dumps(to_dict(report())))
    rendered = CliRunner().invoke(cli.app, ["report", str(tmp_path)])  # what `labkit report RESULTS` does
    assert rendered.exit_code == 0 and str(page) in rendered.output.replace("\n", ""), rendered.output
    base = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert "<svg" in dom.stdout and "No acknowledged order is lost" in dom.stdout, dom.stderr[-2000:]
    assert "<th>#</th>" in dom.stdout, "faults are numbered in the table as above the plot"
    shot = tmp_path / "report.png"
    subprocess.run([*base, "--window-size=1200,1800", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000, "the screenshot (a test artefact) is missing or blank"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fault_labels_close_in_time_take_lanes_of_their_own():
    from grader.report.html import timeline_svg
    from grader.report.timeline import label_lanes

    assert label_lanes([1.0, 1.1, 1.2, 5.0, 5.05, 9.0], min_gap=0.5) == [0, 1, 2, 0, 1, 0]
    events = list(jepsen_history())
    for i, (fault, target) in enumerate([("kill", "order_api"), ("reset", "postgres"), ("restart-server", "postgres")]):
        for phase, t in (("start", 1.31 + i * 0.01), ("end", 1.32 + i * 0.01)):
            events.append({"t": t, "kind": "fault", "actor": "nemesis",
                           "data": {"fault": fault, "target": target, "fid": 10 + i, "phase": phase}})
    svg = timeline_svg(build(sorted(events, key=lambda e: e["t"])))
    labels = re.findall(r'<text[^>]*fill: #1565c0" x="([\d.]+)" y="([\d.]+)"[^>]*>(\d+)</text>', svg)
    by_number = {n: (float(x), float(y)) for x, y, n in labels}
    assert set(by_number) >= {"1", "2", "3", "4"}, labels
    heights = {by_number[n][1] for n in ("1", "2", "3", "4")}
    assert len(heights) == 4, "four faults within 0.1 s: four lanes, no label over another"


def test_html_shows_the_waterfall_of_a_trace_a_failing_check_cites(tmp_path):
    from grader.otlp.spans import SPAN_EVENT, Span

    trace = "ab" * 16
    spans = [Span(trace, "1" * 16, "", "POST /orders", "SERVER", "order_api", 1_000_000_000, 1_050_000_000),
             Span(trace, "2" * 16, "1" * 16, "orders publish", "PRODUCER", "order_api", 1_010_000_000, 1_040_000_000)]
    history = tmp_path / "history.jsonl"
    history.write_text("".join(json.dumps({"t": 1.0, "kind": SPAN_EVENT, "actor": "otlp", "data": s.record()}) + "\n"
                               for s in spans))
    failing = CheckResult.verdict("traces", "One trace per order", 1, False, "1 of 1 operations broken",
                                  [f"order k-1: no CONSUMER span in trace {trace}"])
    html = render_html(report(results=[failing]), history)
    assert f"trace {trace}" in html and "orders publish" in html and "POST /orders" in html


def test_every_format_counts_a_skip_the_same(tmp_path):
    """One rule (docs/instructors.md, "How a SKIP counts"): a SKIP is 0 of its points, the maximum stays."""
    import xml.etree.ElementTree as ET

    from grader.batch.run import write_summaries
    from grader.report.junit import write_junit

    r = report()
    assert [c.state for c in r.results].count("SKIP") == 1
    expected = (r.score, r.max_score)
    assert expected == (2.0, 7.0)
    data = to_dict(r)
    assert (data["score"], data["max_score"]) == expected
    gradescope = to_gradescope(r)
    assert (gradescope["score"], sum(t["max_score"] for t in gradescope["tests"])) == expected
    classroom = to_classroom(r)
    assert (sum(t["score"] for t in classroom["tests"]), classroom["max_score"]) == expected
    header, rows = class_table({"alice": r})
    row = dict(zip(header, rows[0]))
    assert (float(row["score"]), float(row["max_score"])) == expected
    assert sum(float(row[c.id]) for c in r.results) == expected[0]
    write_junit(r, tmp_path / "junit.xml")
    props = {p.get("name"): p.get("value") for p in ET.parse(tmp_path / "junit.xml").getroot().iter("property")}
    assert props["score"] == "2/7"
    html = render_html(r)
    assert "2<small> / 7 points" in html and ">0 / 1</td>" in html

    class Result:  # what write_summaries reads of a graded class
        out = tmp_path
        outcomes = []

        def first_runs(self):
            return {"alice": data}

        def pass_rates(self):
            return {}

        def identical(self):
            return []

    write_summaries(Result(), type("Opts", (), {"repeat": 1})())
    summary = json.loads((tmp_path / "summary.json").read_text())["students"]["alice"]
    assert (summary["score"], summary["max_score"]) == expected


def test_labkit_report_renders_a_saved_run_and_refuses_other_folders(tmp_path):
    write_history(tmp_path / "history.jsonl")
    (tmp_path / "report.json").write_text(json.dumps(to_dict(report())))
    done = CliRunner().invoke(cli.app, ["report", str(tmp_path), "--out", str(tmp_path / "page.html")])
    assert done.exit_code == 0, done.output
    html = (tmp_path / "page.html").read_text()
    assert "<svg" in html and "No acknowledged order is lost" in html
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = CliRunner().invoke(cli.app, ["report", str(empty)])
    assert refused.exit_code == 2 and "report.json" in refused.output
