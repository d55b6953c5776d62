"""The `labkit` command as a user runs it: doctor, a broken lab.toml, up + Ctrl-C, and what a submission
shaped (span names, messages, logs) reaching the terminal as text, never as escape sequences or markup."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from grader.lab import LabError, find_lab, load_lab
from grader.wait import wait_until

LABKIT = [sys.executable, "-m", "grader.cli"]


def labkit(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*LABKIT, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"}, **kw)


def test_doctor_reports_the_native_runtime():
    out = labkit("doctor")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "native kafka" in out.stdout and "usable runtimes: native" in out.stdout


def test_a_broken_lab_toml_names_the_file_and_line(tmp_path):
    bad = tmp_path / "lab.toml"
    bad.write_text('id = "lab-9"\nslug = "x"\ntitle = "broken\n')
    with pytest.raises(LabError, match=r"lab\.toml.*line 3"):
        load_lab(bad)


def test_unknown_lab_is_a_clear_cli_error():
    out = labkit("check", "lab-99", "--runtime", "native")
    assert out.returncode == 2 and "no lab 'lab-99'" in out.stdout


def test_lab_one_is_found_by_id_number_and_folder():
    lab = find_lab("lab-1")
    assert find_lab("1") == lab and find_lab(lab.dir.name) == lab
    assert {"kafka", "postgres"} <= set(lab.infra)


def test_up_prints_urls_and_ctrl_c_stops_everything():
    proc = subprocess.Popen([*LABKIT, "up", "lab-1", "--runtime", "native"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("running" in line for line in lines), 90, "labkit up to be running")
        text = "".join(lines)
        assert re.search(r"export KAFKA_BOOTSTRAP_SERVERS='127\.0\.0\.1:\d+'", text)
        assert re.search(r"export DATABASE_URL='postgresql://", text)
        servers = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        reader.join(10)
        assert "nothing left behind" in "".join(lines)
        survivors = [pid for pid in servers if psutil.pid_exists(pid)
                     and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                     and "guardian" not in " ".join(psutil.Process(pid).cmdline())]
        assert not survivors
    finally:
        if proc.poll() is None:
            proc.kill()


# --- terminal injection: what a submission shaped is shown, never obeyed ------------------------

HOSTILE_TEXT = "\x1b[2J\x1b]0;pwned\x07\x1b]52;c;cm0gLXJmIH4=\x07\x1b]8;;http://evil\x1b\\click\x1b]8;;\x1b\\\x9b31m\u202e[bold]x[/bold]"


def _assert_inert(output: str) -> None:
    assert not re.search("[\x1b\x07\x9b\u202e]", output), repr(output[:500])
    assert "\\x1b" in output and "[bold]x[/bold]" in output  # shown, as text


def test_labkit_trace_shows_hostile_span_names_as_text(tmp_path, monkeypatch):
    from rich.console import Console
    from typer.testing import CliRunner

    from grader import cli
    from grader.cli import app
    from grader.history import History
    from grader.otlp.spans import SPAN_EVENT, Span

    history = History()
    history.record("note", "grader", message="seed 1", seed=1, wall_t0_ns=1_000)
    op = history.invoke("client", "create", key="k1", trace_id="ab" * 16, probe="trace")
    history.complete(op, "ok", "client", "create", status=201)
    span = Span("ab" * 16, "cd" * 8, "", HOSTILE_TEXT, "SERVER", HOSTILE_TEXT, 2_000, 3_000,
                status={"code": "ERROR", "message": HOSTILE_TEXT})
    history.record(SPAN_EVENT, "otlp", **span.record())
    history.dump_jsonl(tmp_path / "history.jsonl")
    # wide enough that the waterfall shows the whole name (the CLI's console is made at import)
    monkeypatch.setattr(cli, "console", Console(width=400))
    result = CliRunner().invoke(app, ["trace", str(tmp_path)])
    assert result.exit_code == 0, result.output
    _assert_inert(result.output)


def test_a_report_on_the_console_shows_hostile_text_as_text():
    import io

    from rich.console import Console

    from grader.checks import CheckResult
    from grader.report import RunReport
    from grader.report.console import print_report

    failed = CheckResult.error("c1", HOSTILE_TEXT, 1, HOSTILE_TEXT, HOSTILE_TEXT)
    report = RunReport(lab="lab-1", title="t", submission=HOSTILE_TEXT, seed=1, runtime="native", started_at="",
                       duration=1.0, results=[failed], notes=[HOSTILE_TEXT], logs={"svc": HOSTILE_TEXT + "\nTraceback"},
                       crashed=["svc"], faults=[{"fault": HOSTILE_TEXT, "target": HOSTILE_TEXT, "reason": HOSTILE_TEXT}])
    out = io.StringIO()
    print_report(report, Console(file=out, width=400, force_terminal=True, color_system=None))
    _assert_inert(out.getvalue())


def test_printable_keeps_ordinary_text():
    from grader.report.safe_text import markup_safe, printable

    assert printable("José → ✓ 日本 tab\there") == "José → ✓ 日本 tab\there"
    assert printable("a\nb") == "a\\x0ab" and printable("a\r\nb", multiline=True) == "a\nb"
    assert markup_safe("[link=http://evil]x[/link]") == "\\[link=http://evil]x\\[/link]"


def test_labkit_check_never_runs_code_through_a_link_out_of_the_submission():
    """tests/hostile/links_out, checked from the kit's folder (where /proc/self/cwd/services is the
    reference): without the links nothing runs, so 0 points, and the notes say which links were left out."""
    out = labkit("check", "lab-1", "--submission", "tests/hostile/links_out", "--runtime", "native", "--seed", "3",
                 cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-2000:]
    assert "score 0/" in out.stdout
    for name in ("order_api", "read_model", "services", "kit"):
        assert f"note: {name}: a link out of the submission" in out.stdout


def test_check_exit_code_html_and_only(tmp_path, monkeypatch):
    """A graded score below full is a result: `--exit-zero` (what `make check-N` passes) exits 0 for it,
    never for a run that could not happen; the HTML report is written and its path printed; `--only`
    with a check the lab lacks is refused before anything starts."""
    from typer.testing import CliRunner

    from grader import cli, runner
    from grader.checks import CheckResult
    from grader.report import RunReport

    def fake(results):
        def grade(lab, submission, runtime, seed, out, say, only=()):
            (out / "history.jsonl").parent.mkdir(parents=True, exist_ok=True)
            (out / "history.jsonl").write_text("")
            return RunReport(lab=lab.id, title=lab.title, submission=str(submission), seed=1, runtime="native",
                             started_at="2026-01-01T00:00:00+00:00", duration=1.0, results=results)
        return grade

    below_full = [CheckResult.verdict("a", "A", 1, True, "ok"), CheckResult.verdict("b", "B", 1, False, "lost")]
    monkeypatch.setattr(runner, "grade", fake(below_full))
    args = ["check", "lab-1", "--out", str(tmp_path)]
    assert CliRunner().invoke(cli.app, args).exit_code == 1
    done = CliRunner().invoke(cli.app, [*args, "--exit-zero"])
    assert done.exit_code == 0 and (tmp_path / "report.html").exists()
    assert str(tmp_path / "report.html") in done.output.replace("\n", "")
    monkeypatch.setattr(runner, "grade", fake([CheckResult.error("a", "A", 1, "the stack failed")]))
    assert CliRunner().invoke(cli.app, [*args, "--exit-zero"]).exit_code == 1
    refused = CliRunner().invoke(cli.app, [*args, "--only", "nope"])
    assert refused.exit_code == 2 and "no check nope" in refused.output
