"""The Gradescope autograder's one step: `python -m grader.batch.gradescope LAB SUBMISSION RESULTS`.

What `run_autograder` (templates/gradescope_run_autograder) runs, as root, in the container Gradescope
starts for one submission:
- no isolation here (no bubblewrap, no namespaces, not root): no grade. results.json says why, score
  0; the submission is never run trusted, since it could then rewrite its own score;
- else `labkit grade` in the sandbox, then, once every process of the submission is gone (the
  sandbox's uids own no process any more; any left is killed by its PID), the grade's results.json
  is copied to RESULTS by this process, which the submission never could reach (another uid, another
  PID namespace, and /autograder is not mounted in its sandbox).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..sandbox.uids import uid_range


def refusal(reason: str) -> dict:
    return {"score": 0, "output": "This submission was not graded: the autograder could not isolate it "
                                  f"({reason}). Please tell your instructor; resubmitting will not help.",
            "tests": []}


def sandbox_processes() -> list[int]:
    """PIDs of live processes whose real uid is a sandbox uid (what is left of any submission; a zombie
    runs nothing, it only waits for its parent)."""
    first, last = uid_range()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            uid = int(status.split("\nUid:")[1].split()[0])
            zombie = status.split("\nState:")[1].split()[0] == "Z"
        except (OSError, IndexError, ValueError):
            continue
        if first <= uid <= last and not zombie:
            found.append(int(entry.name))
    return found


def wait_submission_gone(timeout: float = 60.0) -> bool:
    """Kill, by PID, whatever a sandbox uid still runs, until nothing does. True when none is left."""
    deadline = time.monotonic() + timeout
    while pids := sandbox_processes():
        if time.monotonic() > deadline:
            return False
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    return True


def write_results(path: Path, data: dict) -> None:
    """Atomically (a reader never sees half of it), replacing whatever was there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".labkit-tmp")
    tmp.unlink(missing_ok=True)
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def graded_results(graded: Path) -> dict | None:
    """The one run's results.json the grade wrote (a regular file, never through a link)."""
    for found in sorted(graded.glob("students/*/results.json")):  # one submission: graded/students/<its name>/results.json
        if found.is_file() and not found.is_symlink() and not found.parent.is_symlink():
            try:
                return json.loads(found.read_text())
            except (OSError, ValueError):
                return None
    return None


def main(argv: list[str] | None = None) -> int:
    lab, submission, results = (argv or sys.argv[1:])[:3]
    results_path = Path(results)
    from . import isolation_available

    reason = isolation_available()
    if reason is not None:
        print(f"refusing to grade without isolation: {reason}", flush=True)
        write_results(results_path, refusal(reason))
        return 0
    graded = results_path.parent.parent / "graded"
    shutil.rmtree(graded, ignore_errors=True)
    labkit = Path(sys.executable).with_name("labkit")
    subprocess.run([str(labkit), "grade", lab, submission, "--out", str(graded), "--runtime", "native",
                    "--jobs", "1"], stdin=subprocess.DEVNULL)
    if not wait_submission_gone():
        write_results(results_path, refusal("processes of the submission outlived its grading"))
        return 0
    data = graded_results(graded)
    if data is None:
        data = {"score": 0, "output": "labkit could not grade this submission; the instructor sees why in the "
                                      "autograder output.", "tests": []}
    write_results(results_path, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
