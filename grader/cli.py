"""The `labkit` command: what the Makefile targets call."""
from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Optional

import psutil
import typer
from rich.console import Console
from rich.table import Table

from .lab import REPO_ROOT, LabError, all_labs, find_lab
from .report.safe_text import markup_safe
from .stack import RUNTIMES, StackError, make_stack, resolve_runtime

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Hands-on distributed-systems labs with real infrastructure, and their grader.")
console = Console()
STATE_FILE = REPO_ROOT / ".labkit" / "up.json"

RuntimeOpt = typer.Option("auto", "--runtime", "-r", help=f"one of {', '.join(RUNTIMES)}; auto = docker if a daemon answers, else native")


def fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {markup_safe(message, multiline=True)}", highlight=False)
    raise typer.Exit(code)


def _lab(name: str):
    try:
        return find_lab(name)
    except LabError as e:
        fail(str(e))


@app.command()
def doctor() -> None:
    """Report which runtimes can work here and what is missing."""
    from .doctor import diagnose, runtimes

    findings = diagnose()
    table = Table("check", "", "detail", "how to fix", show_lines=False)
    for f in findings:
        table.add_row(f.area, "[green]ok[/]" if f.ok else "[red]missing[/]", f.detail, f.fix)
    console.print(table)
    usable = [name for name, ok in runtimes(findings).items() if ok]
    console.print(f"usable runtimes: [bold]{', '.join(usable)}[/]")
    if "native" not in usable and "docker" not in usable:
        raise typer.Exit(1)


@app.command("labs")
def list_labs() -> None:
    """List the labs."""
    for lab in all_labs():
        console.print(f"[bold]{lab.id}[/]  {lab.title}  [dim]({', '.join(lab.infra)})[/]")


def _start_stack(lab, runtime: str):
    """Start a lab's stack with a progress line per server; exits with a clear message on failure."""
    try:
        runtime = resolve_runtime(runtime, learner=True)
        stack = make_stack(lab.infra, runtime, lab_id=lab.id)
    except StackError as e:
        fail(str(e))
    console.print(f"starting {', '.join(lab.infra)} on the [bold]{runtime}[/] runtime ...")

    def progress(kind: str, state: str, seconds: float | None) -> None:
        if state == "ready":
            console.print(f"  [green]✓[/] {kind} ready in {seconds:.1f}s  [dim]{stack.url(kind)}[/]")
        elif state == "failed":
            console.print(f"  [red]✗[/] {kind} failed after {seconds:.1f}s")

    with console.status("waiting for servers ..."):
        try:
            stack.start(progress=progress)
        except StackError as e:
            fail(str(e))
    console.print(f"stack ready in {stack.started_in:.1f}s")
    return stack


@app.command()
def up(lab: str = typer.Argument(..., help="lab id, e.g. lab-1"), runtime: str = RuntimeOpt) -> None:
    """Start the infrastructure a lab needs and keep it running until Ctrl-C (or `labkit down`)."""
    from .kafka import ensure_topics

    spec = _lab(lab)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stack = _start_stack(spec, runtime)
    try:
        ns = stack.namespace(prefix=spec.id.replace("-", ""))
        if "kafka" in stack.servers and spec.topics:
            ensure_topics(stack.url("kafka"), {ns.topic(t.name): t.partitions for t in spec.topics})
        env = ns.env()
        STATE_FILE.parent.mkdir(exist_ok=True)
        STATE_FILE.write_text(json.dumps({"pid": os.getpid(), "lab": spec.id, "env": env}))
        console.print("\nexport these to run your services against it (or: eval $(labkit env)):")
        for key, value in env.items():
            console.print(f"  export {key}='{value}'", highlight=False, soft_wrap=True)
        console.print("\n[bold]running[/] - Ctrl-C or `labkit down` stops everything")
        stop.wait()
    finally:
        console.print("stopping ...")
        stack.stop()
        STATE_FILE.unlink(missing_ok=True)
        console.print("stopped; nothing left behind")


@app.command()
def down(timeout: float = 60) -> None:
    """Stop the stack that `labkit up` is running."""
    from .wait import WaitTimeout, wait_until

    if not STATE_FILE.exists():
        console.print("nothing is running (no labkit up state)")
        return
    pid = json.loads(STATE_FILE.read_text())["pid"]
    if not psutil.pid_exists(pid):
        STATE_FILE.unlink(missing_ok=True)
        console.print(f"labkit up (pid {pid}) is gone already; cleared its state")
        return
    os.kill(pid, signal.SIGTERM)
    try:
        wait_until(lambda: not psutil.pid_exists(pid), timeout, f"labkit up (pid {pid}) to stop")
    except WaitTimeout as e:
        fail(str(e))
    console.print(f"stopped labkit up (pid {pid})")


@app.command("env")
def env_cmd() -> None:
    """Print `export` lines for the stack `labkit up` is running."""
    if not STATE_FILE.exists():
        fail("nothing is running: start it with `labkit up LAB`")
    for key, value in json.loads(STATE_FILE.read_text())["env"].items():
        typer.echo(f"export {key}='{value}'")


def main() -> None:  # pragma: no cover - console entry point
    app()


SubmissionOpt = typer.Option(None, "--submission", "-s", help="folder with your services (default: the lab's starter/)")


@app.command()
def run(lab: str = typer.Argument(..., help="lab id, e.g. lab-1"), submission: Optional[Path] = SubmissionOpt,
        runtime: str = RuntimeOpt, rate: float = typer.Option(10.0, help="orders per second")) -> None:
    """Run a lab: stack + your services + traffic + a live view. Ctrl-C stops everything."""
    from .live import run_live

    spec = _lab(lab)
    try:
        run_live(spec, submission or spec.starter, runtime, console, rate=rate)
    except StackError as e:
        fail(str(e))


@app.command()
def check(lab: str = typer.Argument(..., help="lab id, e.g. lab-1"), submission: Optional[Path] = SubmissionOpt,
          runtime: str = RuntimeOpt, seed: Optional[int] = typer.Option(None, help="replay a run with its seed"),
          out: Optional[Path] = typer.Option(None, help="folder for report.json/.html, junit.xml, history and logs"),
          only: Optional[list[str]] = typer.Option(None, "--only", help="judge just this check (repeatable): "
                                                   "only the phases and faults it needs run - faster, not a grade"),
          exit_zero: bool = typer.Option(False, "--exit-zero", help="exit 0 for a graded run even below full "
                                         "marks (`make check-N` uses it; a run that could not happen still exits 1); "
                                         "without it: 1 unless every check passed")) -> None:
    """Grade a submission: per-check points, evidence and hints, and report.html with the run's timeline.
    Exit code 1 if any check did not pass (unless --exit-zero), 2 if it could not start."""
    from .report.console import print_report
    from .runner import grade

    spec = _lab(lab)
    known = [c.id for c in spec.checks]
    unknown = [c for c in only or [] if c not in known]
    if unknown:
        fail(f"{spec.id} has no check {', '.join(unknown)} (its checks: {', '.join(known)})")
    submission = submission or spec.starter
    out = out or Path("results") / spec.id
    console.print(f"grading [bold]{markup_safe(submission)}[/] against {spec.id} ({spec.title})")
    report = grade(spec, submission, runtime, seed, out,
                   say=lambda m: console.print(f"[dim]· {markup_safe(m, multiline=True)}[/]", highlight=False),
                   only=tuple(only or ()))
    print_report(report, console)
    with console.status("writing report.html ..."):
        html = _write_reports(report, out)
    console.print(f"[dim]reports: {out / 'report.json'}, {out / 'junit.xml'}; history: {out / 'history.jsonl'}[/]",
                  highlight=False)
    console.print(f"[bold]report with the timeline, faults and traces:[/] {html}", highlight=False, soft_wrap=True)
    graded = not all(r.state == "ERROR" for r in report.results)  # a run that could not happen is an error
    raise typer.Exit(0 if report.passed or (exit_zero and graded) else 1)


def _write_reports(report, out: Path) -> Path:
    """report.json, junit.xml and report.html of a run; returns the HTML's path (absolute: a link to click)."""
    from .report.html import write_html
    from .report.json import write_json
    from .report.junit import write_junit

    write_json(report, out / "report.json")
    write_junit(report, out / "junit.xml")
    html = (out / "report.html").resolve()
    write_html(report, html, out / "history.jsonl")
    return html


@app.command("report")
def report_cmd(results: Path = typer.Argument(..., help="a results folder of `labkit check` (report.json, history.jsonl)"),
               out: Optional[Path] = typer.Option(None, help="where to write the page (default RESULTS/report.html)")) -> None:
    """Render report.html (checks, evidence, timeline with fault bands, failing traces) from a saved run."""
    from .report.html import write_html

    try:
        data = json.loads((results / "report.json").read_text())
    except (OSError, ValueError) as e:
        fail(f"{results}: no readable report.json ({e}); give a folder written by `labkit check` or `labkit grade`")
    if not isinstance(data, dict) or "checks" not in data:
        fail(f"{results / 'report.json'}: not a labkit report")
    page = (out or results / "report.html").resolve()
    write_html(data, page, results / "history.jsonl")
    console.print(f"report: {page}", highlight=False, soft_wrap=True)


@app.command()
def trace(results: Path = typer.Argument(..., help="a results folder written by `labkit check`"),
          order: Optional[str] = typer.Option(None, "--order", help="the order (or other resource) id whose trace to show"),
          all_traced: bool = typer.Option(False, "--all", help="every trace the grader sent a traced request for")) -> None:
    """Show a run's traces as waterfalls: spans by service, kind and timing, errors, overlapping faults."""
    from .checks.tracing import wall_t0_ns
    from .history import History
    from .nemesis import fault_events
    from .otlp import spans_from_history
    from .report.waterfall import faults_in_span_clock, render_trace

    try:
        history = History.load_jsonl(results / "history.jsonl")
    except OSError as e:
        fail(f"{results}: no history.jsonl ({e})")
    spans = spans_from_history(history)
    if not spans:
        fail(f"{results}: the run received no spans (do the services export OTLP to OTEL_EXPORTER_OTLP_ENDPOINT?)")
    ops = [op for op in history.ops() if op.invoke.get("trace_id")]
    if order:
        ops = [op for op in ops if order in (str((op.result.get("body") or {}).get("order_id", "")
                                                 if isinstance(op.result.get("body"), dict) else ""), op.invoke.get("key"))]
        if not ops:
            fail(f"no request for {order} in {results / 'history.jsonl'}")
    else:
        ops = [op for op in ops if op.invoke.get("probe") == "trace"] or ops[-1:]
    faults = faults_in_span_clock(fault_events(history), wall_t0_ns(history))
    for op in ops if (all_traced or order) else ops[-1:]:
        console.print(f"[bold]{markup_safe(op.f)}[/] request #{op.id} (key {markup_safe(op.invoke.get('key'))}) -> "
                      f"{markup_safe(op.result.get('status'))}  [dim]trace {markup_safe(op.invoke['trace_id'])}[/]",
                      highlight=False)
        console.print(render_trace(spans, op.invoke["trace_id"], faults))


@app.command()
def recheck(results: Path = typer.Argument(..., help="a results folder written by `labkit check` (history.jsonl, run.json)"),
            ) -> None:
    """Judge a saved run again from its history alone - no servers - and print the verdicts."""
    from .history import History
    from .report.console import print_report
    from .runner import report_from_history

    try:
        meta = json.loads((results / "run.json").read_text())
        history = History.load_jsonl(results / "history.jsonl")
    except (OSError, ValueError) as e:
        fail(f"{results}: not a results folder of `labkit check` ({e})")
    report = report_from_history(_lab(meta["lab"]), history, meta["submission"], meta["seed"], meta["runtime"],
                                 meta["started_at"], meta["duration"], meta.get("failure", ""))
    print_report(report, console)
    raise typer.Exit(0 if report.passed else 1)


@app.command("grade")
def grade_cmd(lab: str = typer.Argument(..., help="lab id, e.g. lab-1"),
              submissions: Path = typer.Argument(..., help="folder (or archive) of submissions: folders, git clones, "
                                                 "zip/tar archives; GitHub Classroom and Gradescope exports as they are"),
              out: Path = typer.Option(..., "--out", "-o", help="folder for every student's reports and the class CSV"),
              jobs: int = typer.Option(2, "--jobs", "-j", min=1, help="runs at once; a run mostly waits (~0.2 core, ~0.5 GB each), so more "
                                                           "than the cores is fine (docs/instructors.md)"),
              force: bool = typer.Option(False, help="grade again what an earlier run already graded"),
              repeat: int = typer.Option(1, min=1, help="grade each submission N times: pass rate per check"),
              runtime: str = RuntimeOpt,
              seed: Optional[int] = typer.Option(None, help="one seed for every run (default: a secret one per run)"),
              trust_submissions: bool = typer.Option(False, "--trust-submissions",
                                                     help="run submissions unisolated, as your own user")) -> None:
    """Grade a class: every submission, in parallel, resumable, with every result format."""
    from .batch import Options, grade_class, isolation_available

    spec = _lab(lab)
    if not submissions.exists():
        fail(f"{submissions}: no such folder or archive")
    why_not = isolation_available()
    if why_not and not trust_submissions:
        fail(f"cannot isolate submissions here: {why_not}.\nA submission would run as you, able to read and "
             f"change your files and other students' results. Grade only code you trust with --trust-submissions.")
    if why_not:
        console.print(f"[yellow]warning:[/] submissions run unisolated ({why_not})", highlight=False)
    opts = Options(runtime=runtime, jobs=jobs, force=force, repeat=repeat, seed=seed, isolated=not why_not)
    result = grade_class(spec, submissions, out, opts, console=console)
    firsts = result.first_runs()
    table = Table("student", "score", "failed checks", title=f"{spec.id}: {len(firsts)} submissions")
    for name, report in sorted(firsts.items()):
        checks = report.get("checks", [])
        failed = ", ".join(c["id"] for c in checks if c.get("state") in ("FAIL", "ERROR")) or "-"
        if checks and all(c.get("state") == "ERROR" for c in checks):  # nothing ran: say why instead
            failed = f"not graded: {checks[0].get('message', '')}"
        table.add_row(markup_safe(name), f"{report.get('score', 0):g}/{report.get('max_score', 0):g}",
                      markup_safe(failed, multiline=True))
    console.print(table)
    console.print(f"class table: {out / 'class.csv'}; per student: {out / 'students'}/<student>/ (report.json, report.html, "
                  f"results.json, classroom.json, junit.xml); summary: {out / 'summary.json'}", highlight=False)
    for names in result.identical():
        console.print(f"[yellow]identical submissions:[/] {', '.join(names)} (the same files; summary.json: identical_to)",
                      highlight=False)
    if repeat > 1:
        flaky = [(name, cid, passed, runs) for name, rates in sorted(result.pass_rates().items())
                 for cid, (passed, runs) in rates.items() if runs and 0 < passed < runs]
        for name, cid, passed, runs in flaky:
            console.print(f"[yellow]flaky:[/] {markup_safe(name)} {cid} passed {passed}/{runs} runs", highlight=False)
        console.print(f"pass rates: {out / 'pass-rates.csv'}; a replay command per failure in summary.json")


@app.command("mutate")
def mutate_cmd(lab: str = typer.Argument(..., help="lab id, e.g. lab-1"),
               sample: int = typer.Option(6, "--sample", "-n", min=0, help="mutants to grade (0: all of them)"),
               jobs: int = typer.Option(3, "--jobs", "-j", min=1, help="graded runs at once"),
               seed: int = typer.Option(1, help="picks the sample and the runs' seeds"),
               runtime: str = RuntimeOpt,
               out: Optional[Path] = typer.Option(None, help="folder for the mutants and their runs"),
               list_only: bool = typer.Option(False, "--list", help="list the mutants, grade nothing")) -> None:
    """Mutation analysis of the grader: grade wrong solutions made from the reference, print the kill rate."""
    from .mutate import all_mutants, analyse, service_packages

    spec = _lab(lab)
    if not service_packages(spec):
        fail(f"{spec.id}: no reference services here to mutate (a student kit has none)")
    if list_only:
        for m in all_mutants(spec):
            console.print(f"{m.id}  services/{m.path}:{m.line}", highlight=False)
        return
    out = out or Path("results") / "mutate" / spec.id
    if out.exists() and any(out.iterdir()):
        if not (out / "mutants").is_dir():
            fail(f"{out}: exists and is not an earlier `labkit mutate` output; give another --out")
        import shutil
        shutil.rmtree(out)  # an earlier analysis: replaced
    analyse(spec, sample, jobs, seed, out, runtime, say=lambda m: console.print(m, highlight=False, markup=False))
    console.print(f"summary: {out / 'summary.json'}; mutants: {out / 'mutants'}; runs: {out / 'runs'}", highlight=False)


@app.command("bundle")
def bundle_cmd(target: list[str] = typer.Argument(..., help="OUT (--student), or LAB OUT"),
               student: bool = typer.Option(False, "--student", help="the kit without reference solutions and tests"),
               gradescope: bool = typer.Option(False, "--gradescope", help="Gradescope autograder zip: LAB OUT.zip"),
               classroom: bool = typer.Option(False, "--classroom", help="GitHub Classroom template repo: LAB OUT_DIR")) -> None:
    """Build what to hand out: a student kit, a Gradescope autograder, a GitHub Classroom template."""
    from .batch import bundle

    if sum((student, gradescope, classroom)) != 1:
        fail("give exactly one of --student, --gradescope, --classroom")
    if student:
        if len(target) != 1:
            fail("usage: labkit bundle --student OUT")
        try:
            files = bundle.student(Path(target[0]))
        except FileExistsError as e:
            fail(str(e))
        console.print(f"student kit: {target[0]} ({len(files)} files; no reference solutions, no tests)")
        return
    if len(target) != 2:
        fail("usage: labkit bundle --gradescope LAB OUT.zip  |  labkit bundle --classroom LAB OUT_DIR")
    spec, out = _lab(target[0]), Path(target[1])
    if gradescope:
        names = bundle.gradescope(spec, out)
        console.print(f"Gradescope autograder: {out} ({len(names)} files). Upload it on the assignment's "
                      f"'Configure Autograder' page (base image Ubuntu 22.04 or 24.04).")
    else:
        try:
            workflow = bundle.classroom(spec, out)
        except FileExistsError as e:
            fail(str(e))
        console.print(f"GitHub Classroom template: {out} (workflow {workflow.relative_to(out)}). Push it as the "
                      f"assignment's template repository.")


if __name__ == "__main__":
    app()
