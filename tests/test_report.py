"""Reports rendered from a synthetic run: the console text, and JSON/JUnit parsed back."""
from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET

from rich.console import Console

from grader.checks import CheckResult, check_duplicates, check_lost
from grader.report import RunReport
from grader.report.console import print_report
from grader.report.json import SCHEMA, write_json
from grader.report.junit import write_junit


def sample_report() -> RunReport:
    results = [
        check_lost("no-lost-orders", "No acknowledged order lost", 4, {"o-1": "request #1"}, {"o-1"}),
        check_duplicates("effects-once", "Each order counted once", 5,
                         {f"customer c-{i}": 100 for i in range(14)}, {f"customer c-{i}": 200 for i in range(14)},
                         hint="Deduplicate by [order id] in the same transaction", unit=" cents"),
        CheckResult.error("poison-message", "Poison messages", 2, "read-model exited with code 1"),
        CheckResult.skip("traces", "Trace shape", 1, "no OTLP receiver on this runtime"),
    ]
    return RunReport(lab="lab-1", title="Outbox & idempotent consumers", submission="labs/lab-1/starter", seed=4242,
                     runtime="native", started_at="2024-05-01T10:00:00+00:00", duration=42.5, results=results,
                     notes=["cut the broker for 3 s"],
                     logs={"read-model": "boot\nTraceback (most recent call last):\n  KeyError: 'amount'\x1b[0m\x00",
                           "order-api": "INFO all fine", "worker": "starting\n"},
                     crashed=["worker"], coverage={"read-model": "3 of 3 boundaries killed after, 2 held before"})


def render(report: RunReport) -> str:
    console = Console(file=io.StringIO(), width=160, color_system=None)
    print_report(report, console)
    return console.file.getvalue()


def test_a_skipped_check_earns_zero_of_its_points():
    """A check whose faults did not happen is SKIP with 0 points: never full marks by omission."""
    report = sample_report()
    assert (report.score, report.max_score, report.passed) == (4, 12, False)
    assert set(report.logs_to_show()) == {"read-model", "worker"}  # a traceback, a crash; not the healthy one
    only_skipped = RunReport("lab-1", "t", "s", 1, "native", "now", 0, [report.results[3]])
    assert not only_skipped.passed  # nothing verified is not a pass


def test_console_shows_table_failures_evidence_hint_logs_and_replay():
    out = render(sample_report())
    for text in ("No acknowledged order lost", "PASS", "FAIL", "ERROR", "SKIP", "4/4", "0/5", "0/2",
                 "14 of 14 keys with the wrong total", "customer c-0: 200 cents (expected 100 cents, 2.0x)",
                 "... and 4 more", "Deduplicate by [order id] in the same transaction",  # markup-like text survives
                 "read-model exited with code 1", "KeyError: 'amount'", "worker: last log lines",
                 "cut the broker for 3 s", "score 4/12",
                 "crash coverage: read-model: 3 of 3 boundaries killed after, 2 held before", "seed 4242", "labkit check lab-1 --seed 4242"):
        assert text in out, text
    assert "customer c-13" not in out and "order-api" not in out
    assert "\x00" not in out and "[0m" not in out  # the service's colour codes do not leak


def test_json_round_trips_with_a_stable_shape(tmp_path):
    write_json(sample_report(), tmp_path / "out" / "report.json")
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["schema"] == SCHEMA
    assert {k: data[k] for k in ("lab", "seed", "runtime", "score", "max_score", "passed", "replay")} == {
        "lab": "lab-1", "seed": 4242, "runtime": "native", "score": 4, "max_score": 12, "passed": False,
        "replay": "labkit check lab-1 --seed 4242"}
    checks = {c["id"]: c for c in data["checks"]}
    assert [c["state"] for c in data["checks"]] == ["PASS", "FAIL", "ERROR", "SKIP"]
    assert len(checks["effects-once"]["evidence"]) == 14  # the machine-readable report keeps all of it
    assert set(checks["no-lost-orders"]) >= {"id", "title", "passed", "points", "max_points", "message", "evidence",
                                             "hint", "duration", "skipped", "errored"}
    assert data["crashed"] == ["worker"] and data["notes"] == ["cut the broker for 3 s"]
    assert data["coverage"] == {"read-model": "3 of 3 boundaries killed after, 2 held before"}


def test_junit_is_valid_xml_with_one_testcase_per_check(tmp_path):
    write_junit(sample_report(), tmp_path / "junit.xml")
    suite = ET.parse(tmp_path / "junit.xml").getroot()  # parses: control characters from logs were replaced
    assert suite.tag == "testsuite" and suite.get("name") == "lab-1"
    assert {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped")} == {
        "tests": "4", "failures": "1", "errors": "1", "skipped": "1"}
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["seed"] == "4242" and props["score"] == "4/12"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert list(cases) == ["no-lost-orders", "effects-once", "poison-message", "traces"]
    assert len(cases["no-lost-orders"]) == 0
    failure = cases["effects-once"].find("failure")
    assert failure.get("message") == "14 of 14 keys with the wrong total (14 too high, 0 too low)"
    assert "customer c-0: 200 cents" in failure.text and "... and 4 more" in failure.text
    assert failure.text.endswith("hint: Deduplicate by [order id] in the same transaction")
    assert cases["poison-message"].find("error").get("message") == "read-model exited with code 1"
    assert cases["traces"].find("skipped") is not None
    assert "KeyError: 'amount'\n" in suite.find("system-err").text + "\n" and "cut the broker" in suite.find("system-out").text
