"""The `labkit` command as a user runs it: doctor, a broken lab.toml, up + Ctrl-C."""
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
