"""junit.xml: one testsuite per run, one testcase per check, for CI systems and LMS importers.

FAIL -> <failure>, ERROR (could not run) -> <error>, SKIP -> <skipped>; the body is the message,
the evidence and the hint. Log tails of crashed services go to <system-err>.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from ..checks import shown
from . import RunReport, plain

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")  # XML 1.0 forbids these


def _text(s: str) -> str:
    """Logs carry ANSI escapes and other control characters that would make the file unparsable."""
    return _NOT_XML.sub("\ufffd", s)


def write_junit(report: RunReport, path: str | Path, replay: str | None = None) -> None:
    """`replay`: the command that replays this run (default the report's own)."""
    states = [r.state for r in report.results]
    suite = ET.Element("testsuite", name=report.lab, tests=str(len(states)), failures=str(states.count("FAIL")),
                       errors=str(states.count("ERROR")), skipped=str(states.count("SKIP")),
                       time=f"{report.duration:.2f}", timestamp=report.started_at)
    props = ET.SubElement(suite, "properties")
    for name, value in (("title", report.title), ("seed", report.seed), ("runtime", report.runtime),
                        ("submission", report.submission), ("score", f"{report.score:g}/{report.max_score:g}"),
                        ("replay", replay or report.replay_command()),
                        ("faults_injected", sum(1 for f in report.faults if f["effective"]))):
        ET.SubElement(props, "property", name=name, value=_text(str(value)))
    for r in report.results:
        case = ET.SubElement(suite, "testcase", classname=report.lab, name=_text(r.id), time=f"{r.duration:.2f}")
        if r.state == "PASS":
            continue
        if r.state == "SKIP":
            ET.SubElement(case, "skipped", message=_text(r.message))
            continue
        body = "\n".join([r.message, *shown(r.evidence)] + ([f"hint: {r.hint}"] if r.hint else []))
        element = ET.SubElement(case, "error" if r.state == "ERROR" else "failure", message=_text(r.message),
                                type=r.state)
        element.text = _text(body)
    faults = [f"fault {f['fault']} on {f['target']}: " + (f"not injected ({f['reason']})" if f.get("reason") else
              f"{f.get('start')}s-{f.get('end')}s, {'bit' if f['effective'] else 'did not bite'}"
              + (f" - {f['description']}" if f.get("description") else "")) for f in report.faults]
    if report.notes or faults:
        ET.SubElement(suite, "system-out").text = _text("\n".join(report.notes + faults))
    logs = report.logs_to_show()
    if logs:
        ET.SubElement(suite, "system-err").text = _text(
            "\n".join(f"--- {name} ---\n{plain(log).rstrip()}" for name, log in logs.items()))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
