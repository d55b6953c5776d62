"""Mutation analysis of the grader (`labkit mutate LAB`): wrong solutions made from the reference.

Each mutant is the reference with ONE small change a learner could make, from these operators:
  delete-statement   a statement inside a function becomes `pass`
  remove-call        the same, for a call that makes something durable or acknowledges it (flush,
                     commit, confirm, ack, store_offsets, advance, publish, ...)
  swap-statements    two adjacent statements of one block change places
  drop-with          a `with` block's body runs without its context (a transaction, a lock, ...)
  flip-bool          a boolean keyword argument or config value is negated
  replace-constant   a number becomes 0 (or 1 for a 0)
  remove-await       `await x` becomes `x`
A seeded sample is written as submission folders (the lab's service packages and the shared code
they import, one file changed) and graded in parallel by the batch grader's worker; a mutant that
passes every check survived: its diff is printed for triage (equivalent, or a gap in the grader).

The operators are the standard ones (statement deletion and swap, constant and boolean replacement,
call removal) written over the standard library's `ast` positions, splicing the source text so that
a diff shows only the change. Existing mutation tools were weighed: cosmic-ray's operators (parso)
and mutmut 3's (libcst) are expression-level replacements bound to their own test runners; neither
deletes or swaps statements, drops a `with` block or removes a flush/confirm call, which are the
mutations that matter for these services.
"""
from __future__ import annotations

import ast
import difflib
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .lab import REPO_ROOT, Lab

SERVICES = REPO_ROOT / "services"
# calls whose removal is a classic wrong solution: an effect not made durable, input not acknowledged
EFFECT_CALL = re.compile(r"(flush|commit|confirm|ack|nack|reject|store_offsets|advance|feedback|publish|produce|"
                         r"send|execute|wait|join|close|sync|set|delete|expire|incr|release|acquire)", re.I)
OPERATORS = ("delete-statement", "remove-call", "swap-statements", "drop-with", "flip-bool", "replace-constant",
             "remove-await")


@dataclass(frozen=True)
class Mutant:
    id: str
    operator: str
    path: Path  # relative to services/, e.g. read_model/consumer.py or common/orders/consumer.py
    line: int
    start: int  # byte offsets of the splice in the original file
    end: int
    replacement: bytes

    def apply(self, source: bytes) -> bytes:
        return source[:self.start] + self.replacement + source[self.end:]

    def diff(self) -> str:
        before = (SERVICES / self.path).read_bytes()
        a, b = before.decode().splitlines(keepends=True), self.apply(before).decode().splitlines(keepends=True)
        name = f"services/{self.path}"
        return "".join(difflib.unified_diff(a, b, f"a/{name}", f"b/{name}", n=2))


# --- which code: the lab's services and the shared code they import ----------------------------

def service_packages(lab: Lab) -> list[str]:
    """The reference packages the lab's lab.toml starts (`python -m order_api` -> order_api)."""
    packages = []
    for spec in lab.services.values():
        command = list(spec.command)
        if "-m" in command and command.index("-m") + 1 < len(command):
            name = command[command.index("-m") + 1].split(".")[0]
            if (SERVICES / name).is_dir() and name not in packages:
                packages.append(name)
    return packages


def _module_file(dotted: str) -> Path | None:
    """services.common.orders.consumer -> its file under services/, if it is one of ours."""
    parts = dotted.split(".")
    if parts[0] != "services" or len(parts) < 2:
        return None
    base = SERVICES.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[Path]:
    found = set()
    package = ".".join(("services",) + path.relative_to(SERVICES).parent.parts)
    for node in ast.walk(ast.parse(path.read_bytes())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            for i in range(2, len(parts) + 1):  # the package's __init__ runs too
                file = _module_file(".".join(parts[:i]))
                if file:
                    found.add(file)
    return found


def source_files(lab: Lab) -> list[Path]:
    """The lab's service packages and every services/ module they import, transitively."""
    todo = [p for name in service_packages(lab) for p in sorted((SERVICES / name).rglob("*.py"))]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo += sorted(_imports(path) - seen)
    return sorted(seen)


# --- the operators ----------------------------------------------------------------------------

class _Source:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.starts = [0]
        for i, b in enumerate(data):
            if b == 10:
                self.starts.append(i + 1)

    def offset(self, line: int, col: int) -> int:  # ast columns are UTF-8 byte offsets
        return self.starts[line - 1] + col

    def line_start(self, line: int) -> int:
        return self.starts[line - 1]

    def line_end(self, line: int) -> int:  # just past the line's newline
        return self.starts[line] if line < len(self.starts) else len(self.data)

    def indent(self, line: int) -> bytes:
        text = self.data[self.line_start(line):self.line_end(line)]
        return text[:len(text) - len(text.lstrip(b" \t"))]

    def whole_lines(self, node: ast.stmt) -> bool:
        """The statement alone on its lines (no `a; b`, no `if x: y`)."""
        before = self.data[self.line_start(node.lineno):self.offset(node.lineno, node.col_offset)]
        after = self.data[self.offset(node.end_lineno, node.end_col_offset):self.line_end(node.end_lineno)]
        return not before.strip() and (not after.strip() or after.strip().startswith(b"#"))

    def lines(self, node: ast.stmt) -> tuple[int, int]:
        return self.line_start(node.lineno), self.line_end(node.end_lineno)


def _is_docstring(stmt: ast.stmt, body: list[ast.stmt]) -> bool:
    return stmt is body[0] and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) \
        and isinstance(stmt.value.value, str)


def _call_name(stmt: ast.stmt) -> str:
    value = stmt.value if isinstance(stmt, ast.Expr) else None
    if isinstance(value, ast.Await):
        value = value.value
    if isinstance(value, ast.Call):
        func = value.func
        return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return ""


SKIP = (ast.Pass, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom, ast.Global,
        ast.Nonlocal)
JUMPS = (ast.Return, ast.Raise, ast.Continue, ast.Break)


def _blocks(func: ast.AST):
    """Every statement list inside a function (nested functions included, class bodies not)."""
    for node in ast.walk(func):
        if isinstance(node, ast.ClassDef):
            continue
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            if isinstance(stmts, list) and stmts and isinstance(stmts[0], ast.stmt):
                yield stmts
        if isinstance(node, ast.Try):
            for handler in node.handlers:
                yield handler.body


def mutations(path: Path) -> list[tuple[str, int, int, int, bytes]]:
    """(operator, line, start, end, replacement) for every mutation of one file."""
    src = _Source(path.read_bytes())
    tree = ast.parse(src.data)
    found: list[tuple[str, int, int, int, bytes]] = []
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    blocks, seen = [], set()
    for func in functions:
        for block in _blocks(func):
            if id(block) not in seen:
                seen.add(id(block))
                blocks.append(block)
    for block in blocks:
        eligible = [s for s in block if not isinstance(s, SKIP) and not _is_docstring(s, block) and src.whole_lines(s)]
        for stmt in eligible:
            start, end = src.lines(stmt)
            op = "remove-call" if EFFECT_CALL.search(_call_name(stmt)) else "delete-statement"
            found.append((op, stmt.lineno, start, end, src.indent(stmt.lineno) + b"pass\n"))
        for a, b in zip(block, block[1:]):
            if a in eligible and b in eligible and not isinstance(a, JUMPS) and not isinstance(b, JUMPS):
                (a0, a1), (b0, b1) = src.lines(a), src.lines(b)
                if a1 == b0 and src.data[a0:a1].strip() != src.data[b0:b1].strip():
                    found.append(("swap-statements", a.lineno, a0, b1, src.data[b0:b1] + src.data[a0:a1]))
        for stmt in block:
            if isinstance(stmt, (ast.With, ast.AsyncWith)) and src.whole_lines(stmt) \
                    and all(item.optional_vars is None for item in stmt.items) and stmt.body[0].lineno > stmt.lineno:
                outer, inner = src.indent(stmt.lineno), src.indent(stmt.body[0].lineno)
                body = src.data[src.line_start(stmt.body[0].lineno):src.line_end(stmt.end_lineno)]
                dedented = b"".join(line[len(inner) - len(outer):] if line.startswith(inner) else line
                                    for line in body.splitlines(keepends=True))
                found.append(("drop-with", stmt.lineno, src.line_start(stmt.lineno), src.line_end(stmt.end_lineno),
                              dedented))
    inside = {id(n) for func in functions for n in ast.walk(func)}
    for node in ast.walk(tree):
        values = []
        if isinstance(node, ast.keyword):
            values = [node.value]
        elif isinstance(node, ast.Dict):
            values = node.values
        for v in values:
            if isinstance(v, ast.Constant) and isinstance(v.value, bool):
                found.append(("flip-bool", v.lineno, src.offset(v.lineno, v.col_offset),
                              src.offset(v.end_lineno, v.end_col_offset), str(not v.value).encode()))
        if isinstance(node, ast.Constant) and type(node.value) in (int, float) and id(node) in inside:
            new = "1" if node.value == 0 else "0"
            found.append(("replace-constant", node.lineno, src.offset(node.lineno, node.col_offset),
                          src.offset(node.end_lineno, node.end_col_offset), new.encode()))
        if isinstance(node, ast.Await) and node.lineno == node.value.lineno:
            found.append(("remove-await", node.lineno, src.offset(node.lineno, node.col_offset),
                          src.offset(node.value.lineno, node.value.col_offset), b""))
    # module-level constants (`POLL_TIMEOUT = 1.0`): a number assigned to a name
    for stmt in tree.body:
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and isinstance(stmt.value, ast.Constant) \
                and type(stmt.value.value) in (int, float):
            v = stmt.value
            found.append(("replace-constant", v.lineno, src.offset(v.lineno, v.col_offset),
                          src.offset(v.end_lineno, v.end_col_offset), b"1" if v.value == 0 else b"0"))
    return sorted(set(found), key=lambda m: (m[2], m[0]))


def all_mutants(lab: Lab) -> list[Mutant]:
    """Every mutant of the lab's reference, in a stable order; each one compiles."""
    mutants = []
    for path in source_files(lab):
        rel = path.relative_to(SERVICES)
        original = path.read_bytes()
        for op, line, start, end, replacement in mutations(path):
            mutant = Mutant(f"m{len(mutants) + 1:03d}-{op}-{rel.stem}-L{line}", op, rel, line, start, end, replacement)
            try:
                compile(mutant.apply(original), str(rel), "exec")
            except SyntaxError:
                continue
            mutants.append(mutant)
    return mutants


def sample(mutants: list[Mutant], n: int, seed: int) -> list[Mutant]:
    return sorted(random.Random(seed).sample(mutants, min(n, len(mutants))), key=lambda m: m.id) if n else mutants


# --- mutants as submissions -------------------------------------------------------------------

def _copy(src: Path, dest: Path) -> None:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True)


def write_submission(lab: Lab, mutant: Mutant, dest: Path) -> Path:
    """The reference as a learner would hand it in with one change: the lab's service packages at the
    top, and the shared code vendored as the submission's own `services` package (it shadows the kit's,
    as in a learner's copy), so a change to shared code is graded too."""
    for name in service_packages(lab):
        _copy(SERVICES / name, dest / name)
    (dest / "services").mkdir(parents=True, exist_ok=True)
    (dest / "services" / "__init__.py").write_text("")
    vendored = {p.relative_to(SERVICES).parts[0] for p in source_files(lab)} - set(service_packages(lab))
    for name in sorted(vendored):
        if (SERVICES / name).is_dir():
            _copy(SERVICES / name, dest / "services" / name)
    top = mutant.path.parts[0]
    target = dest / mutant.path if top in service_packages(lab) else dest / "services" / mutant.path
    target.write_bytes(mutant.apply((SERVICES / mutant.path).read_bytes()))
    return dest


# --- grading a sample -------------------------------------------------------------------------

def verdict(outcome) -> str:
    """killed (a check failed), broken (it did not start: every check ERROR), or survived."""
    checks = outcome.report.get("checks", [])
    if not checks:
        return "no report"
    if all(c.get("state") == "ERROR" for c in checks):
        return "broken"
    return "killed" if any(c.get("state") in ("FAIL", "ERROR") for c in checks) else "survived"


def analyse(lab: Lab, n: int, jobs: int, seed: int, out: Path, runtime: str = "native",
            say=print) -> dict:
    """Grade a seeded sample of `n` mutants (0: all), `jobs` at once; print and return the figures."""
    import json
    import os
    import time
    from collections import Counter

    from .mutate_runs import Job, grade_many

    mutants = all_mutants(lab)
    chosen = sample(mutants, n, seed)
    per_op = Counter(m.operator for m in mutants)
    say(f"{lab.id}: {len(mutants)} mutants of {len(source_files(lab))} files ("
        + ", ".join(f"{op} {per_op[op]}" for op in OPERATORS if per_op[op]) + f"); grading {len(chosen)} "
        f"(sample seed {seed}), {jobs} at once, load {os.getloadavg()[0]:.1f}")
    rng = random.Random(seed)
    jobs_ = []
    for m in chosen:
        folder = write_submission(lab, m, out / "mutants" / m.id)
        jobs_.append(Job(lab, m.id, folder, rng.getrandbits(63)))
    by_id = {m.id: m for m in chosen}

    def progress(o) -> None:
        failed = ", ".join(c["id"] for c in o.failed_checks())
        say(f"  {o.job.name:52} {verdict(o):9} {o.seconds:5.0f}s  {failed}")

    t0 = time.monotonic()
    outcomes = grade_many(jobs_, out / "runs", jobs, runtime, progress)
    states = Counter(verdict(o) for o in outcomes)
    judged = states["killed"] + states["survived"]
    rate = states["killed"] / judged if judged else 0.0
    survivors = [o for o in outcomes if verdict(o) == "survived"]
    say(f"\n{lab.id}: killed {states['killed']} of {judged} mutants that started ({rate:.0%}); "
        f"{states['broken']} did not start (killed trivially), {states['no report']} without a report; "
        f"{time.monotonic() - t0:.0f} s, load {os.getloadavg()[0]:.1f}")
    for o in survivors:
        m = by_id[o.job.name]
        say(f"\nsurvived: {m.id} ({m.operator}, services/{m.path}:{m.line}); replay: labkit check {lab.id} "
            f"--runtime {runtime} --submission {o.job.submission} --seed {o.job.seed}\n{m.diff()}")
    summary = {"lab": lab.id, "mutants": len(mutants), "by_operator": dict(per_op), "sample": len(chosen),
               "sample_seed": seed, "jobs": jobs, "killed": states["killed"], "survived": states["survived"],
               "broken": states["broken"], "no_report": states["no report"], "kill_rate": rate,
               "runs": [{"id": o.job.name, "seed": o.job.seed, "verdict": verdict(o), "seconds": round(o.seconds, 1),
                         "failed": [c["id"] for c in o.failed_checks()],
                         "diff": by_id[o.job.name].diff()} for o in outcomes]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
