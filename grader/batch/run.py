"""Grade a class: every submission (N times with --repeat), in parallel up to a bound, resumable.

Layout of --out (0700, files 0600: seeds and reports are the instructor's alone):
  class.csv                       one row per student, one column per check (run 1)
  pass-rates.csv                  --repeat N: per student and check, the fraction of runs that passed
  summary.json                    per student: score, runs, pass rates, and a replay command per failure
  students/<student>/             run 1: report.json, junit.xml, results.json (Gradescope), classroom.json,
                                  report.html, history.jsonl, logs/, worker.log, meta.json
  students/<student>/runs/<k>/    runs 2..N of --repeat, the same files
  .work/<student>/<fingerprint>/  unpacked archives (the folders actually graded), one per version
Student folders sit under students/: a name comes from what a student handed in (`summary.json.zip`),
so no name can be a file of the batch's own. A run is skipped on a second invocation when its
report.json exists and meta.json's fingerprint matches the submission as it is now (a resubmission is
graded again, from a fresh unpacking); --force grades everything.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn,
                           TimeElapsedColumn)
from rich.text import Text

from ..lab import REPO_ROOT, Lab
from ..report.csv import write_class_csv, write_pass_rates_csv
from ..report.safe_text import markup_safe
from ..archive import UnsafeArchive
from ..stack.procs import CappedLog
from ..untrusted import Refused
from .discover import Submission, content_digest, discover, fingerprint, git_commit, materialize
from .outputs import error_report, replay_command, write_all


@dataclass
class Options:
    runtime: str = "auto"
    jobs: int = 2
    force: bool = False
    repeat: int = 1
    seed: int | None = None  # None: a fresh secret seed per run (the grader picks it)
    isolated: bool = True  # False only with --trust-submissions
    timeout: float = 900.0  # one run's total deadline, seconds (lab 1 takes ~50 s)


@dataclass
class RunOutcome:
    student: str
    run: int
    out_dir: Path
    report: dict
    skipped: bool = False  # graded by an earlier invocation
    seconds: float = 0.0

    @property
    def failures(self) -> list[dict]:
        return [c for c in self.report.get("checks", []) if c.get("state") in ("FAIL", "ERROR")]


@dataclass
class ClassResult:
    out: Path
    outcomes: list[RunOutcome] = field(default_factory=list)
    contents: dict[str, str] = field(default_factory=dict)  # student -> digest of the code graded

    def identical(self) -> list[list[str]]:
        """Groups of students who handed in the very same code (worth a look; the starter included)."""
        groups: dict[str, list[str]] = {}
        for student, digest in sorted(self.contents.items()):
            groups.setdefault(digest, []).append(student)
        return [names for names in groups.values() if len(names) > 1]

    def first_runs(self) -> dict[str, dict]:
        return {o.student: o.report for o in self.outcomes if o.run == 1}

    def pass_rates(self) -> dict[str, dict[str, tuple[int, int]]]:
        """rates[student][check] = (runs passed, runs counted); SKIP runs are not counted."""
        rates: dict[str, dict[str, tuple[int, int]]] = {}
        for o in sorted(self.outcomes, key=lambda o: (o.student, o.run)):
            per_check = rates.setdefault(o.student, {})
            for c in o.report.get("checks", []):
                passed, runs = per_check.get(c["id"], (0, 0))
                if c.get("state") != "SKIP":
                    per_check[c["id"]] = (passed + (c.get("state") == "PASS"), runs + 1)
                else:
                    per_check.setdefault(c["id"], (passed, runs))
        return rates


STUDENTS = "students"  # --out/students/<name>/: where no file of the batch's own can be


class EtaColumn(ProgressColumn):
    """Time left from this batch's own pace (elapsed / runs finished here x runs left). Rich's
    TimeRemainingColumn only keeps 30 s of samples: with runs of a minute each, one at a time, it
    never had two and showed -:--:-- for the whole batch."""

    def render(self, task) -> Text:
        done = task.completed - task.fields.get("initial", 0)
        if done <= 0 or not task.elapsed or task.total is None:
            return Text("-:--:--", style="progress.remaining")
        left = (task.total - task.completed) * task.elapsed / done
        return Text(str(timedelta(seconds=int(left))), style="progress.remaining")


def run_dir(out: Path, student: str, run: int) -> Path:
    folder = out / STUDENTS / student
    return folder if run == 1 else folder / "runs" / str(run)


def private(path: Path) -> None:
    """`path` (a file, or a folder and all in it) for the instructor alone: folders 0700, files 0600.
    Links are left alone (never followed)."""
    if path.is_symlink() or not path.exists():
        return
    if not path.is_dir():
        os.chmod(path, 0o600)
        return
    os.chmod(path, 0o700)
    for folder, dirs, files in os.walk(path):
        for name in dirs:
            if not os.path.islink(os.path.join(folder, name)):
                os.chmod(os.path.join(folder, name), 0o700)
        for name in files:
            if not os.path.islink(os.path.join(folder, name)):
                os.chmod(os.path.join(folder, name), 0o600)


def _graded(folder: Path, fp: str) -> dict | None:
    """The report of an earlier run of this very submission, if there is one."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("fingerprint") == fp:
            return json.loads((folder / "report.json").read_text())
    except (OSError, ValueError):
        pass
    return None


def _stop(proc: subprocess.Popen, grace: float = 30) -> None:
    """TERM first (the run then stops its stack and services), KILL after `grace` seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


_running: set[subprocess.Popen] = set()  # live workers: stopped if the batch itself is stopped
_running_lock = threading.Lock()
_stopping = threading.Event()  # the batch is being stopped: unfinished runs are left ungraded, not ERROR


WORKER_LOG_MAX = 4 << 20  # bytes of a run's worker.log; the rest is read and dropped


class Interrupted(Exception):
    """A run stopped because the batch was stopped; it is graded on the next invocation."""


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _grade_once(lab: Lab, sub: Submission, folder: Path, out_dir: Path, opts: Options) -> dict:
    """One run in a worker process; its report.json, or an error report when it produced none."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").unlink(missing_ok=True)
    argv = [sys.executable, "-m", "grader.batch.worker", lab.id, str(folder), "--out", str(out_dir),
            "--runtime", opts.runtime, "--student", sub.name, *(f"--note={note}" for note in sub.notes)]
    if opts.seed is not None:
        argv += ["--seed", str(opts.seed)]
    if opts.isolated:
        argv.append("--isolated")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p),
           "LABKIT_BATCH_PID": str(os.getpid())}  # the worker stops itself once this process is gone
    with open(out_dir / "worker.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=REPO_ROOT)
        copier = CappedLog(proc.stdout, log, WORKER_LOG_MAX)  # its messages quote the submission's errors
        copier.start()
        with _running_lock:
            _running.add(proc)
        try:
            proc.wait(opts.timeout)
            reason = f"the grading run exited with code {proc.returncode} before writing its report"
        except subprocess.TimeoutExpired:
            _stop(proc)
            reason = f"the run took longer than {opts.timeout:.0f} s and was stopped"
        finally:
            with _running_lock:
                _running.discard(proc)
            copier.join(10)
    if _stopping.is_set():
        raise Interrupted(sub.name)
    try:
        return json.loads((out_dir / "report.json").read_text())
    except (OSError, ValueError):
        seed = opts.seed or 0
        report = error_report(lab, folder, f"{reason} (see {out_dir / 'worker.log'})", opts.runtime, seed)
        report.notes += sub.notes
        write_all(report, out_dir, {"student": sub.name, "replay": replay_command(lab, folder, seed, opts.runtime)})
        return json.loads((out_dir / "report.json").read_text())


def _refused(lab: Lab, sub: Submission, out: Path, why: str, opts: Options) -> list[RunOutcome]:
    """Nothing to run (e.g. an unsafe archive): every run an error report saying why."""
    outcomes = []
    for k in range(1, opts.repeat + 1):
        folder = run_dir(out, sub.name, k)
        write_all(error_report(lab, sub.source, why, opts.runtime), folder, {"student": sub.name})
        private(folder)
        outcomes.append(RunOutcome(sub.name, k, folder, json.loads((folder / "report.json").read_text())))
    return outcomes


def grade_class(lab: Lab, submissions: Path, out: Path, opts: Options | None = None,
                console: Console | None = None, on_outcome: Callable[[RunOutcome], None] | None = None) -> ClassResult:
    opts = opts or Options()
    out = out.resolve()
    work = out / ".work"
    ours = not out.exists() or work.is_dir()  # never chmod a folder that was not made for this (`--out /tmp`)
    out.mkdir(parents=True, exist_ok=True)
    for folder in (out, work, out / STUDENTS):  # seeds, reports and submissions: the instructor's alone
        folder.mkdir(exist_ok=True)
        if folder != out or ours:
            os.chmod(folder, 0o700)
    console = console or Console(stderr=True)
    result = ClassResult(out)
    todo: list[tuple[Submission, Path, str, int]] = []
    for sub in discover(submissions, lab, work):
        try:
            fp = fingerprint(sub)
            folder = materialize(sub, lab, work, fp)
        except Refused as e:  # this student only: the batch goes on
            shutil.rmtree(work / sub.name, ignore_errors=True)
            why = f"the archive was refused: {e}" if isinstance(e, UnsafeArchive) else str(e)
            result.outcomes += _refused(lab, sub, out, why, opts)
            continue
        result.contents[sub.name] = content_digest(folder)
        for k in range(1, opts.repeat + 1):
            done = None if opts.force else _graded(run_dir(out, sub.name, k), fp)
            if done is not None:
                result.outcomes.append(RunOutcome(sub.name, k, run_dir(out, sub.name, k), done, skipped=True))
            else:
                todo.append((sub, folder, fp, k))

    def one(sub: Submission, folder: Path, fp: str, k: int) -> RunOutcome:
        t0 = time.monotonic()
        folder_out = run_dir(out, sub.name, k)
        report = _grade_once(lab, sub, folder, folder_out, opts)
        meta = {"student": sub.name, "source": str(sub.source), "kind": sub.kind, "graded": str(folder),
                "fingerprint": fp, "commit": git_commit(sub), "people": sub.people, "run": k,
                "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (folder_out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        private(folder_out)
        return RunOutcome(sub.name, k, folder_out, report, seconds=time.monotonic() - t0)

    skipped = sum(o.skipped for o in result.outcomes)
    columns = (SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("ETA"), EtaColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(f"grading {lab.id}", total=len(todo) + len(result.outcomes),
                                completed=len(result.outcomes), initial=len(result.outcomes))
        if skipped:
            progress.console.print(f"[dim]{skipped} run(s) already graded: skipped (--force grades them again)[/]")
        for names in result.identical():
            progress.console.print(f"[yellow]identical submissions:[/] {', '.join(names)} (the same files)",
                                   highlight=False)
        with ThreadPoolExecutor(max(1, opts.jobs)) as pool, _stopping_workers(pool):
            futures = [pool.submit(one, *task) for task in todo]
            for future in as_completed(futures):
                outcome = future.result()
                result.outcomes.append(outcome)
                r = outcome.report
                mark = "[green]✓[/]" if r.get("passed") else "[red]✗[/]"
                run = f" run {outcome.run}" if opts.repeat > 1 else ""
                progress.console.print(f"{mark} {markup_safe(outcome.student)}{run}: {r.get('score', 0):g}/{r.get('max_score', 0):g}"
                                       f"  [dim]{outcome.seconds:.0f} s[/]", highlight=False)
                progress.advance(bar)
                if on_outcome:
                    on_outcome(outcome)
    result.outcomes.sort(key=lambda o: (o.student, o.run))
    write_summaries(result, opts)
    return result


@contextmanager
def _stopping_workers(pool: ThreadPoolExecutor) -> Iterator[None]:
    """Ctrl-C or SIGTERM of the batch stops its running workers (each then stops its own servers) and
    starts no more; what finished stays graded, so the next invocation resumes from there."""
    previous = signal.getsignal(signal.SIGTERM)
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        signal.signal(signal.SIGTERM, _interrupt)
    _stopping.clear()
    try:
        yield
    except BaseException:
        _stopping.set()
        pool.shutdown(wait=False, cancel_futures=True)
        with _running_lock:
            live = list(_running)
        for proc in live:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in live:
            _stop(proc, grace=30)
        raise
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def write_summaries(result: ClassResult, opts: Options) -> None:
    out = result.out
    write_class_csv(result.first_runs(), out / "class.csv")
    rates = result.pass_rates()
    if opts.repeat > 1:
        write_pass_rates_csv(rates, out / "pass-rates.csv")
    students = {}
    for name, report in sorted(result.first_runs().items()):
        runs = [o for o in result.outcomes if o.student == name]
        failures = [{"run": o.run, "check": c["id"], "state": c["state"], "seed": o.report.get("seed"),
                     "replay": o.report.get("replay")} for o in runs for c in o.failures]
        students[name] = {
            "score": report.get("score"), "max_score": report.get("max_score"), "passed": report.get("passed"),
            "runs": len(runs),
            "pass_rate": {cid: (p / n if n else None) for cid, (p, n) in rates.get(name, {}).items()},
            "failures": failures, "report": str(run_dir(out, name, 1) / "report.json"),
            "identical_to": next((others for others in ([n for n in g if n != name] for g in result.identical()
                                                        if name in g)), []),
        }
        if opts.repeat > 1:
            (run_dir(out, name, 1) / "repeat.json").write_text(json.dumps(students[name], indent=2) + "\n")
    (out / "summary.json").write_text(json.dumps({"schema": "labkit.class/1", "students": students}, indent=2) + "\n")
    for path in out.iterdir():
        if path.is_file() and not path.is_symlink():
            private(path)
