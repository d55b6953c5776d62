"""junit.xml: one testsuite per run, one testcase per check, for CI systems and LMS importers."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from . import RunReport


def write_junit(report: RunReport, path: Path) -> None:
    failures = sum(1 for r in report.results if not r.passed and not r.errored)
    errors = sum(1 for r in report.results if r.errored)
    suite = ET.Element("testsuite", name=f"{report.lab}", tests=str(len(report.results)), failures=str(failures),
                       errors=str(errors), time=f"{report.duration:.2f}", timestamp=report.started_at)
    props = ET.SubElement(suite, "properties")
    for name, value in (("seed", report.seed), ("runtime", report.runtime), ("submission", report.submission),
                        ("score", f"{report.score:g}/{report.max_score:g}")):
        ET.SubElement(props, "property", name=name, value=str(value))
    for r in report.results:
        case = ET.SubElement(suite, "testcase", classname=report.lab, name=r.id, time=f"{r.duration:.2f}")
        if not r.passed:
            body = "\n".join([r.message, *r.evidence] + ([f"hint: {r.hint}"] if r.hint else []))
            ET.SubElement(case, "error" if r.errored else "failure", message=r.message).text = body
    if report.notes:
        ET.SubElement(suite, "system-out").text = "\n".join(report.notes)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
