"""One graded run in a process of its own: `python -m grader.batch.worker ...` (what `labkit grade` starts).

A process per run keeps runs apart (a crash, a leak or a hang of one run cannot take the batch down,
and the batch can kill it at its deadline) and lets the batch run several at once. It writes every
per-submission format into --out; the batch reads report.json back.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

from ..lab import find_lab
from ..report.safe_text import printable
from .outputs import error_report, replay_command, write_all


def _unwind(signum, frame) -> None:
    raise KeyboardInterrupt


ORPHANED = threading.Event()  # the batch is gone: nobody will read this run's outputs


def _stop_when_orphaned(parent: int, grace: float = 20.0) -> None:
    """A batch that was SIGKILLed cannot stop its workers: each stops itself once its parent is gone,
    as on the batch's SIGTERM (unwinding stops the run's servers and services), and writes nothing, so
    the next `labkit grade` grades it again. If unwinding takes longer than `grace`, SIGKILL: the
    stack's guardian then removes what the run started."""
    def watch() -> None:
        while os.getppid() == parent:
            ORPHANED.wait(1.0)
        ORPHANED.set()
        os.kill(os.getpid(), signal.SIGTERM)
        threading.Event().wait(grace)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grader.batch.worker")
    parser.add_argument("lab")
    parser.add_argument("submission", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--student", default="")
    parser.add_argument("--isolated", action="store_true", help="grade in the sandbox (grader/sandbox)")
    parser.add_argument("--note", action="append", default=[], help="a note for the report (what unpacking left out)")
    args = parser.parse_args(argv)
    # SIGTERM from the batch (its deadline, or the batch being stopped): unwind, so grade() stops the
    # run's servers and services on the way out instead of leaving them to the guardian.
    signal.signal(signal.SIGTERM, _unwind)
    # the batch's pid as it started us (by the time we ask getppid(), a killed batch is gone already)
    _stop_when_orphaned(int(os.environ.get("LABKIT_BATCH_PID") or os.getppid()))

    from ..runner import grade
    from . import grade_options

    lab = find_lab(args.lab)
    try:
        report = grade(lab, args.submission, args.runtime, args.seed, args.out,
                       say=lambda m: print(printable(m, multiline=True), flush=True), **grade_options(args.isolated))
    except Exception as e:  # grade() reports learner failures itself; this is the grader's own crash
        (args.out / "grader-error.txt").write_text(traceback.format_exc())
        report = error_report(lab, args.submission, f"the grader failed ({type(e).__name__}: {e}); not the "
                              f"student's code - see {args.out / 'grader-error.txt'}", args.runtime, args.seed or 0)
    if ORPHANED.is_set():
        return 1
    report.notes += args.note
    extra = {"student": args.student, "replay": replay_command(lab, args.submission, report.seed, report.runtime)}
    write_all(report, args.out, extra)
    print(json.dumps({"score": report.score, "max_score": report.max_score, "seed": report.seed}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
