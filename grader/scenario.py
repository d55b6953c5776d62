"""A lab's scenario as data: params, phases (a workload step and the faults that run alongside it),
and checks keyed by the ids in lab.toml. `play` runs the phases; `judge` runs the checks over the
history alone, so a saved history gets the same verdicts (`labkit recheck`).

    SCENARIO = Scenario(
        params=Params(orders=120, rate=40),
        phases=[Phase("contract", probe_contract),
                Phase("load", load, nemesis=[[At(CrashPoint(...), after_ok=10), At(Kill(...), after_ok=40)],
                                             [At(Cut("kafka"), after_s=5)]]),
                Phase("quiesce", settle)],
        checks={"no-lost-orders": Check(lost, needs=[("crash-point", "read_model")])})
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .checks import CheckResult
from .history import History
from .nemesis import Fault, fault_events, happened, why_not

if TYPE_CHECKING:
    from .lab import Lab
    from .runner import Run


class Params(dict):
    """A scenario's numbers in one place (rates, counts, bounds); attribute access for brevity."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class At:
    """A fault and when it fires: once `after_ok` operations named `f` completed ok since the phase
    began, at least `after_s` seconds into the phase, and once `ready(run)` holds (e.g. "the
    consumer is processing again"; bounded by `ready_within` seconds, then it fires anyway)."""

    fault: Fault
    after_ok: int = 0
    after_s: float = 0.0
    f: str | None = None
    ready: Callable[["Run"], bool] | None = None
    ready_within: float = 30.0


class Nemesis:
    """Runs schedules of faults in background threads (one thread per schedule, faults in order)."""

    def __init__(self, run: "Run", schedules: list[list[At]], phase_started: float, ok_ops: Callable[[str | None], int]):
        self.run = run
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._t0 = phase_started
        self._ok_ops = ok_ops
        self._threads = [threading.Thread(target=self._play, args=(steps,), name=f"nemesis-{i}", daemon=True)
                         for i, steps in enumerate(schedules) if steps]

    def start(self) -> "Nemesis":
        for t in self._threads:
            t.start()
        return self

    def done(self) -> bool:
        return not any(t.is_alive() for t in self._threads)

    @property
    def stopped(self) -> threading.Event:
        """Set when the phase's faults are stopped (a workload helper can wait on it)."""
        return self._stop

    def _due(self, step: At) -> bool:
        return (time.monotonic() - self._t0 >= step.after_s and
                (step.after_ok <= 0 or self._ok_ops(step.f) >= step.after_ok))

    def _ready(self, step: At) -> None:
        if step.ready is None:
            return
        deadline = time.monotonic() + step.ready_within
        while time.monotonic() < deadline and not self._stop.is_set():
            try:
                if step.ready(self.run):
                    return
            except Exception:  # not ready yet (a server restarting, a table not there)
                pass
            self._stop.wait(0.2)

    def _play(self, steps: list[At]) -> None:
        try:
            for step in steps:
                while not self._due(step):
                    if self._stop.wait(0.05):
                        return
                self._ready(step)
                if self._stop.is_set():
                    return
                step.fault.apply(self.run)
        except BaseException as e:  # surfaced by finish(): the run must not hang on a nemesis bug
            self.errors.append(e)

    def finish(self, timeout: float = 60) -> None:
        """Stop scheduling new faults; faults under way still heal. Raises a nemesis error."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(deadline - time.monotonic(), 0.1))
        if self.errors:
            raise self.errors[0]


@dataclass
class PhaseContext:
    """What a workload step sees: whether to keep going, and the phase's own nemesis."""

    nemesis: Nemesis
    started: float
    max_seconds: float

    def nemesis_done(self) -> bool:
        return self.nemesis.done()

    def out_of_time(self) -> bool:
        return time.monotonic() - self.started >= self.max_seconds


@dataclass
class Phase:
    name: str
    step: Callable[["Run", PhaseContext], None]
    nemesis: list[list[At]] | Callable[["Run"], list[list[At]]] = field(default_factory=list)  # or drawn per run
    max_seconds: float = 120  # the workload step is told to stop after this; faults are then stopped too
    # What `labkit check --only CHECK` selects phases by: the fault kinds the phase injects (those of a
    # static nemesis list are found without saying), the checks its workload exists for, and whether
    # every run needs it (starting the services, settling and observing).
    injects: tuple[str, ...] = ()
    serves: tuple[str, ...] = ()
    always: bool = False

    def kinds(self) -> set[str]:
        static = [] if callable(self.nemesis) else [step.fault.kind for steps in self.nemesis for step in steps]
        return {*self.injects, *static}

    @property
    def declared(self) -> bool:
        return bool(self.injects or self.serves or self.always or not callable(self.nemesis) and self.nemesis)


@dataclass
class Check:
    """A checker (a pure function of the history) and the faults it needs to mean anything:
    (kind, target) pairs that must all have bitten, else the check is SKIP with the reason. And the
    events its bug needs (grader/checks/events.py: each a function of the history returning None
    if the event happened, else why not): a fault that bit while nothing it could expose was going on
    proves nothing either, so a missing event is SKIP too, never a vacuous PASS."""

    fn: Callable[..., CheckResult]
    needs: list[tuple[str, str | None]] = field(default_factory=list)
    events: list[Callable[[History], str | None]] = field(default_factory=list)


@dataclass
class Scenario:
    params: Params
    phases: list[Phase]
    checks: dict[str, Check]
    observers: list[Callable[["Run", threading.Event], None]] = field(default_factory=list)  # sample until set


@dataclass
class Selection:
    """The phases `--only` runs for some checks, and a sentence saying so."""

    phases: list[Phase]
    checks: list[str]
    message: str


def select(scenario: Scenario, only: list[str] | tuple[str, ...]) -> Selection:
    """The phases the checks `only` need: the ones injecting a fault kind they need, the ones serving
    them, and the ones every run needs. A lab whose phases do not say what they inject runs them all
    (and says so): running less than a check needs would turn its verdict into a guess."""
    unknown = [c for c in only if c not in scenario.checks]
    if unknown:
        raise ValueError(f"no check {', '.join(unknown)} (known: {', '.join(scenario.checks)})")
    kinds = {kind for c in only for kind, _ in scenario.checks[c].needs}
    unplaced = [c for c in only if not scenario.checks[c].needs and not any(c in p.serves for p in scenario.phases)]
    if not all(p.declared for p in scenario.phases) or unplaced:
        why = ("this lab's phases do not declare their faults" if not all(p.declared for p in scenario.phases)
               else f"no phase says it serves {', '.join(unplaced)}")
        return Selection(list(scenario.phases), list(only),
                         f"--only {', '.join(only)}: {why}, so all phases run; only the chosen checks are judged")
    chosen = [p for p in scenario.phases if p.always or p.kinds() & kinds or set(p.serves) & set(only)]
    skipped = [p.name for p in scenario.phases if p not in chosen]
    return Selection(chosen, list(only),
                     f"--only {', '.join(only)}: {len(chosen)} of {len(scenario.phases)} phases run"
                     + (f" (left out: {'; '.join(skipped)})" if skipped else "")
                     + "; only the chosen checks are judged, so the score is not a grade")


def undeclared_faults(scenario: Scenario, history: History) -> list[str]:
    """Faults a run injected in a phase that does not declare their kind (`Phase.injects`): what
    `--only` would then wrongly leave out. Empty for a lab whose phases declare nothing (all run)."""
    if not all(p.declared for p in scenario.phases):
        return []
    phases = {p.name: p for p in scenario.phases}
    current, wrong = None, []
    for e in history.events():
        if e.kind == "note" and e.data.get("phase") in phases:
            current = phases[e.data["phase"]]
        elif e.kind == "fault" and e.data.get("phase") in ("start", "unavailable") and current is not None:
            if e.data.get("fault") not in current.kinds():
                wrong.append(f"{e.data.get('fault')} in phase {current.name!r}")
    return sorted(set(wrong))


def play(scenario: Scenario, run: "Run") -> None:
    """Run each phase: its nemesis in the background, its workload step in the foreground; the
    scenario's observers sample in the background for the whole play."""
    done = threading.Event()
    watchers = [threading.Thread(target=observer, args=(run, done), daemon=True, name=f"observer-{i}")
                for i, observer in enumerate(scenario.observers)]
    for w in watchers:
        w.start()
    phases = scenario.phases
    if getattr(run, "only", ()):
        selection = select(scenario, run.only)
        phases = selection.phases
        run.history.record("note", "grader", message=selection.message, only=selection.checks)
        run.say(selection.message)
    try:
        _play_phases(phases, run)
    finally:
        done.set()
        for w in watchers:
            w.join(10)


def _play_phases(phases: list[Phase], run: "Run") -> None:
    for phase in phases:
        run.say(phase.name)
        run.history.record("note", "grader", message=f"phase {phase.name}", phase=phase.name)
        started = time.monotonic()
        since = len(run.history)

        def ok_ops(f: str | None, since=since) -> int:
            return sum(1 for e in run.history.events()[since:] if e.kind == "ok" and (f is None or e.data.get("f") == f))

        schedules = phase.nemesis(run) if callable(phase.nemesis) else phase.nemesis
        for steps in schedules:
            run.note("nemesis plan: " + "; ".join(f"{s.fault.describe()} (after {s.after_ok} ok, {s.after_s:g}s)"
                                                  for s in steps))
        nemesis = Nemesis(run, schedules, started, ok_ops).start()
        try:
            phase.step(run, PhaseContext(nemesis, started, phase.max_seconds))
        finally:
            nemesis.finish()


def only_of(history: History) -> list[str]:
    """The checks a `--only` run chose (recorded in its history), or [] for a full run."""
    return next((list(e.data["only"]) for e in history.events("note") if e.data.get("only")), [])


def judge(lab: "Lab", scenario: Scenario, history: History) -> list[CheckResult]:
    """Every check of lab.toml (those a `--only` run chose), judged from the history alone (SKIP
    when its faults did not bite)."""
    results = []
    only = only_of(history)
    checks = [spec for spec in lab.checks if not only or spec.id in only]
    for spec in checks:
        args = {"id": spec.id, "title": spec.title or spec.id, "max_points": spec.points, "hint": spec.hint or None}
        check = scenario.checks.get(spec.id)
        if check is None:
            results.append(CheckResult.error(args["id"], args["title"], spec.points,
                                             "this lab's scenario has no checker for it (a grader bug)"))
            continue
        missing = [why_not(history, kind, target) for kind, target in check.needs if not happened(history, kind, target)]
        if not missing:
            missing = [why for event in check.events if (why := event(history))]
        started = time.monotonic()
        try:
            result = check.fn(history, **args)
        except Exception as e:  # a checker bug must not take the other verdicts with it
            result = CheckResult.error(args["id"], args["title"], spec.points,
                                       f"the grader's checker failed ({type(e).__name__}: {e}); not your code")
        # A check whose faults or events did not all happen cannot PASS (its bug may simply not have
        # been provoked): SKIP. But a violation it did see is evidence all the same: it FAILs.
        if missing and not (result.state == "FAIL"):
            result = CheckResult.skip(args["id"], args["title"], spec.points, skip_message(missing))
        elif missing:
            result.message += f" (seen although not every fault it needs happened: {'; '.join(missing)})"
        result.duration = time.monotonic() - started
        results.append(result)
    for result, spec in zip(results, checks):
        result.visibility = spec.visibility
    return results


class _Reading(History):
    """The same events, noting which observation kinds the checks ask for."""

    def __init__(self, history: History) -> None:
        super().__init__()
        self._events = history.events()
        self.read: set[str] = set()

    def observations(self, what: str) -> list:
        self.read.add(what)
        return super().observations(what)


def unread_observations(lab: "Lab", scenario: Scenario, history: History) -> set[str]:
    """Observation kinds the history holds that no check of the lab reads (judged as `judge` does):
    evidence the grader gathers must prove some invariant (a lab README's "What the grader checks")."""
    reading = _Reading(history)
    judge(lab, scenario, reading)
    return {e.data.get("what") for e in history.events("observe")} - reading.read


def skip_message(missing: list[str]) -> str:
    """Why a check could not be verified, and whose doing that was: the runtime lacking a fault (not
    the submission's), or the run never reaching it / the fault not biting (the submission's: it
    crashed, stalled or exited before the fault, or the process was already gone)."""
    runtime = all(" not injected: " in m for m in missing)
    cause = ("this runtime cannot inject it (not your submission)" if runtime else
             "your submission did not get there or was already down (a crash, a stall or an exit before the fault)")
    return f"not verified, 0 points: {cause}: " + "; ".join(missing)


def fault_summary(history: History) -> list[dict]:
    """The faults of a run for reports: kind, target, when, whether they bit, what they did."""
    return fault_events(history)
