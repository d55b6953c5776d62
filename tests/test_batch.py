"""Grading a class: discovery of every layout, safe archive extraction, resumable parallel runs, --repeat
pass rates, stopping a batch, and the bundles (student, Gradescope, Classroom). `labkit grade` end to end on a
whole class (formats, resume) is tests/test_synthetic_class.py."""
from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from grader import cli
from grader.batch import bundle
from grader.archive import Limits, UnsafeArchive, extract
from grader.batch.discover import _unique, discover, fingerprint, materialize, safe_name, service_root
from grader.batch.run import ClassResult, RunOutcome
from grader.lab import REPO_ROOT, find_lab
from grader.wait import wait_until

MUTANTS = REPO_ROOT / "tests" / "mutants" / "lab1"


@pytest.fixture(scope="module")
def lab():
    return find_lab("lab-1")


def services(folder: Path) -> Path:
    """A minimal submission: the two service packages of lab 1 (their content is not run here)."""
    for name in ("order_api", "read_model"):
        (folder / name).mkdir(parents=True)
        (folder / name / "__main__.py").write_text("print('hello')\n")
    return folder


def zip_of(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


# --- archives ---------------------------------------------------------------------------------

def test_archive_extracts_a_submission_with_its_wrapper_folder(tmp_path, lab):
    archive = zip_of(tmp_path / "alice.zip", {"alice-lab1/order_api/__main__.py": b"x", "alice-lab1/read_model/__main__.py": b"y",
                                              "__MACOSX/._junk": b"z"})
    extract(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "__MACOSX").exists()
    assert service_root(tmp_path / "out", lab) == tmp_path / "out" / "alice-lab1"


@pytest.mark.parametrize("name", ["../evil.py", "/etc/evil.py", "a/../../evil.py", "C:/evil.py"])
def test_archive_refuses_paths_outside_its_folder(tmp_path, name):
    archive = zip_of(tmp_path / "bad.zip", {"ok.py": b"x", name: b"evil"})
    with pytest.raises(UnsafeArchive):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil.py").exists() and not (tmp_path / "out").exists()


def test_archive_skips_links_and_devices(tmp_path):
    path = tmp_path / "links.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        data = b"print(1)\n"
        info = tarfile.TarInfo("sub/main.py")
        info.size, info.mode = len(data), 0o4755  # setuid must not survive
        tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("sub/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
        hard = tarfile.TarInfo("sub/hard")
        hard.type, hard.linkname = tarfile.LNKTYPE, "/etc/shadow"
        tf.addfile(hard)
        fifo = tarfile.TarInfo("sub/fifo")
        fifo.type = tarfile.FIFOTYPE
        tf.addfile(fifo)
    skipped = extract(path, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out" / "sub").iterdir()) == ["main.py"]
    assert len(skipped) == 3
    assert not (tmp_path / "out" / "sub" / "main.py").stat().st_mode & stat.S_ISUID


def test_archive_caps_what_it_unpacks(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * (4 << 20))  # 4 MiB of zeros compress to a few KiB
    assert bomb.stat().st_size < 64 << 10
    with pytest.raises(UnsafeArchive, match="larger than"):
        extract(bomb, tmp_path / "out", Limits(file_bytes=1 << 20))
    many = zip_of(tmp_path / "many.zip", {f"f{i}.py": b"x" for i in range(20)})
    with pytest.raises(UnsafeArchive, match="more than 10 entries"):
        extract(many, tmp_path / "out2", Limits(files=10))
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(UnsafeArchive, match="cannot read"):
        extract(tmp_path / "broken.zip", tmp_path / "out3")


def _tar_header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    return info.tobuf(format=tarfile.GNU_FORMAT)


def test_archive_refuses_a_huge_tar_header_before_reading_it(tmp_path):
    """A pax header declaring 1.5 GiB (a few KiB once compressed) is refused from its declared size."""
    import bz2

    path = tmp_path / "pax.tar.bz2"
    with bz2.open(path, "wb") as f:
        f.write(_tar_header("././@PaxHeader", 3 << 29, tarfile.XHDTYPE))
        f.write(b"0" * (1 << 20))  # the header's start; the rest never comes
    with pytest.raises(UnsafeArchive, match="tar header extension"):
        extract(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_archive_refuses_a_member_declaring_more_than_the_cap(tmp_path):
    """A member declaring 8 GiB is refused at its header, not after decompressing 8 GiB to skip it."""
    import bz2

    path = tmp_path / "big.tar.bz2"
    with bz2.open(path, "wb") as f:
        f.write(_tar_header("order_api/__main__.py", 8 << 30))
        f.write(b"\0" * 4096)
    with pytest.raises(UnsafeArchive, match="declares 8589934592 bytes"):
        extract(path, tmp_path / "out")


def test_archive_unpacking_has_a_deadline(tmp_path):
    archive = zip_of(tmp_path / "alice.zip", {"order_api/__main__.py": b"x"})
    with pytest.raises(UnsafeArchive, match="took longer than"):
        extract(archive, tmp_path / "out", Limits(seconds=0.001))
    assert not (tmp_path / "out").exists()


def test_archive_counts_folders_as_entries(tmp_path):
    path = tmp_path / "dirs.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(60):
            zf.writestr(zipfile.ZipInfo(f"d{i}/"), b"")
    with pytest.raises(UnsafeArchive, match="more than 50 entries"):
        extract(path, tmp_path / "out", Limits(files=50))


def test_archive_unpacks_in_a_child_limited_in_memory(tmp_path):
    """With the header cap lifted, a 200 MiB pax header meets the child's memory limit: refused, and
    the batch's own process never held it."""
    import gzip

    path = tmp_path / "pax.tar.gz"
    size = 200 << 20
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(_tar_header("././@PaxHeader", size, tarfile.XHDTYPE))
        chunk = b"9" * (1 << 20)
        for _ in range(size >> 20):
            f.write(chunk)
    with pytest.raises(UnsafeArchive, match="memory|killed"):
        extract(path, tmp_path / "out", Limits(header_bytes=1 << 40, memory=128 << 20))
    assert not (tmp_path / "out").exists()


# --- discovery --------------------------------------------------------------------------------

def test_discovers_folders_git_clones_and_archives(tmp_path, lab):
    root = tmp_path / "class"
    services(root / "alice")
    services(root / "bob" / "src")  # services one level down
    subprocess.run(["git", "init", "-q", str(root / "bob")], check=True)
    zip_of(root / "carol.zip", {"carol/order_api/__main__.py": b"x", "carol/read_model/__main__.py": b"y"})
    (root / "notes.txt").write_text("not a submission")
    subs = discover(root, lab, tmp_path / "work")
    assert [(s.name, s.kind) for s in subs] == [("alice", "folder"), ("bob", "git"), ("carol", "archive")]
    assert materialize(subs[1], lab, tmp_path / "work") == root / "bob" / "src"
    assert materialize(subs[2], lab, tmp_path / "work") == tmp_path / "work" / "carol" / fingerprint(subs[2])[:16] / "carol"


def test_discovers_a_github_classroom_export(tmp_path, lab):
    root = tmp_path / "lab-1-submissions"
    for login in ("ada-l", "grace"):
        services(root / f"lab-1-exactly-once-{login}")
    assert [s.name for s in discover(root, lab, tmp_path / "work")] == ["ada-l", "grace"]


def test_discovers_a_gradescope_export_with_its_metadata(tmp_path, lab):
    export = tmp_path / "export"
    services(export / "assignment_1_export" / "submission_101")
    services(export / "assignment_1_export" / "submission_102")
    (export / "assignment_1_export" / "submission_metadata.yml").write_text(yaml.safe_dump({
        "submission_101": {":submitters": [{":name": "Ada L", ":sid": "s1", ":email": "ada@uni.edu"}], ":score": 0},
        "submission_102": {":submitters": [{":name": "Grace H", ":email": "grace@uni.edu"},
                                           {":name": "Alan T", ":email": "alan@uni.edu"}]},
    }))
    shutil.make_archive(str(tmp_path / "gradescope"), "zip", export)
    subs = discover(tmp_path / "gradescope.zip", lab, tmp_path / "work")
    assert [(s.name, s.people) for s in subs] == [("s1", ["Ada L"]), ("grace+alan", ["Grace H", "Alan T"])]


def test_a_single_submission_is_a_class_of_one(tmp_path, lab):
    services(tmp_path / "submission")
    assert [s.name for s in discover(tmp_path / "submission", lab, tmp_path / "work")] == ["submission"]


def test_a_submission_without_services_is_still_one_to_grade(tmp_path, lab):
    (tmp_path / "submission").mkdir()
    (tmp_path / "submission" / "main.py").write_text("print('wrong layout')\n")
    assert [s.source for s in discover(tmp_path / "submission", lab, tmp_path / "work")] == [tmp_path / "submission"]


def test_fingerprint_changes_with_the_submission(tmp_path, lab):
    services(tmp_path / "alice")
    (sub,) = discover(tmp_path / "alice", lab, tmp_path / "work")
    before = fingerprint(sub)
    (tmp_path / "alice" / "__pycache__").mkdir()
    (tmp_path / "alice" / "__pycache__" / "x.pyc").write_bytes(b"noise")
    assert fingerprint(sub) == before
    (tmp_path / "alice" / "order_api" / "__main__.py").write_text("print('changed')\n")
    assert fingerprint(sub) != before


# --- links: never followed out of a submission ----------------------------------------------

HOSTILE = REPO_ROOT / "tests" / "hostile"


def test_links_out_of_a_submission_are_never_followed(tmp_path, lab):
    """tests/hostile/links_out (the kit's reference through /proc/self/cwd, a classmate through `..`, a
    link to a link) and `src -> /proc/self/cwd/services`: neither is graded as the reference."""
    from grader.untrusted import copy_tree

    root = tmp_path / "class"
    services(root / "correct")
    shutil.copytree(HOSTILE / "links_out", root / "links_out", symlinks=True)
    (root / "src_only").mkdir()
    (root / "src_only" / "src").symlink_to("/proc/self/cwd/services")
    subs = {s.name: s for s in discover(root, lab, tmp_path / "work")}
    assert set(subs) == {"correct", "links_out", "src_only"}
    cwd = os.getcwd()
    os.chdir(REPO_ROOT)  # where /proc/self/cwd leads to the kit's reference
    try:
        for name in ("links_out", "src_only"):
            folder = materialize(subs[name], lab, tmp_path / "work")
            assert folder == root / name, "a folder reached through a link is never the service root"
            notes = copy_tree(folder, tmp_path / "copy" / name)
            assert [p.name for p in (tmp_path / "copy" / name).iterdir()] == []
            assert notes and all("a link out of the submission" in n for n in notes), notes
    finally:
        os.chdir(cwd)
    assert any("'../correct/read_model'" in n for n in copy_tree(root / "links_out", tmp_path / "again"))


def test_links_inside_a_submission_are_kept_as_links(tmp_path):
    from grader.untrusted import copy_tree, resolves_inside

    sub = services(tmp_path / "sub")
    (sub / "lib").mkdir()
    (sub / "lib" / "util.py").write_text("X = 1\n")
    links = {"util.py": "lib/util.py", "here": "lib/..", "dl": "lib", "up": "dl/../..", "chain": "hop",
             "hop": "/etc/passwd", "loop": "loop", "abs": str(sub / "lib"), "classmate": "../bob"}
    for name, target in links.items():
        (sub / name).symlink_to(target)
    inside = {name for name in links if resolves_inside(sub, sub / name)}
    assert inside == {"util.py", "here", "dl"}
    notes = copy_tree(sub, tmp_path / "copy")
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == sorted(["order_api", "read_model", "lib", *inside])
    assert os.readlink(tmp_path / "copy" / "util.py") == "lib/util.py"
    assert (tmp_path / "copy" / "util.py").read_text() == "X = 1\n"  # resolves inside the copy
    assert len(notes) == len(links) - len(inside)


def test_a_submission_given_as_a_link_is_refused_with_a_row(tmp_path, lab):
    from grader.untrusted import Refused

    services(tmp_path / "elsewhere" / "bob")
    (tmp_path / "class").mkdir()
    services(tmp_path / "class" / "alice")
    (tmp_path / "class" / "bob").symlink_to(tmp_path / "elsewhere" / "bob")
    subs = {s.name: s for s in discover(tmp_path / "class", lab, tmp_path / "work")}
    assert subs["bob"].kind == "link"
    with pytest.raises(Refused, match="is a link"):
        materialize(subs["bob"], lab, tmp_path / "work")


def test_fingerprint_hashes_links_by_their_text(tmp_path, lab):
    sub = services(tmp_path / "alice")
    (sub / "ref").symlink_to("/etc")
    (s,) = discover(sub, lab, tmp_path / "work")
    before = fingerprint(s)
    (sub / "ref").unlink()
    (sub / "ref").symlink_to("/usr")
    assert fingerprint(s) != before


def test_a_resubmitted_archive_is_unpacked_again(tmp_path, lab):
    root = tmp_path / "class"
    root.mkdir()
    zip_of(root / "bob.zip", {"order_api/__main__.py": b"v1", "read_model/__main__.py": b"v1"})
    (sub,) = discover(root, lab, tmp_path / "work")
    first = materialize(sub, lab, tmp_path / "work", fingerprint(sub))
    assert (first / "order_api" / "__main__.py").read_bytes() == b"v1"
    zip_of(root / "bob.zip", {"order_api/__main__.py": b"v2", "read_model/__main__.py": b"v2"})
    second = materialize(sub, lab, tmp_path / "work", fingerprint(sub))
    assert second != first and (second / "order_api" / "__main__.py").read_bytes() == b"v2"
    assert not first.exists(), "the earlier version's unpacking is removed"
    assert materialize(sub, lab, tmp_path / "work") == second  # unpacked once per version


# --- names --------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, safe", [("summary.json", "summary.json"), ("..", "submission"), ("...", "submission"),
                                       ("a/b\\c", "a_b_c"), ("\x1b]0;pwned\x07bob", "0_pwned_bob"),
                                       ("\u202eevil", "evil"), ("-rf", "rf"), ("=HYPERLINK(1)", "HYPERLINK_1"),
                                       ("José Núñez", "José_Núñez"), ("", "submission")])
def test_student_names_are_safe_folder_names(raw, safe):
    assert safe_name(raw) == safe
    assert len(safe_name("é" * 200).encode()) <= 80


def test_student_names_are_unique_without_case():
    assert _unique(["bob", "Bob", "bob-2", "alice"]) == ["bob", "Bob-3", "bob-2", "alice"]


def test_students_named_after_the_batchs_own_files_cannot_break_it(tmp_path):
    """`summary.json.zip` and `class.csv.zip`: student folders live under students/, the batch's files
    beside it; --out is the instructor's alone (0700, files 0600). Both archives are refused (cheap: no
    run), which still writes each a row and a folder."""
    (tmp_path / "class").mkdir()
    for name in ("summary.json", "class.csv"):
        zip_of(tmp_path / "class" / f"{name}.zip", {"../escape.py": b"x"})
    out = tmp_path / "graded"
    result = CliRunner().invoke(cli.app, ["grade", "lab-1", str(tmp_path / "class"), "--out", str(out),
                                          "--runtime", "native", "--trust-submissions"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text())["students"].keys() == {"summary.json", "class.csv"}
    assert (out / "students" / "summary.json" / "report.json").is_file()
    assert len((out / "class.csv").read_text().splitlines()) == 3
    assert stat.S_IMODE(out.stat().st_mode) == 0o700 and stat.S_IMODE((out / "students").stat().st_mode) == 0o700
    for path in [out / "summary.json", out / "class.csv", *(out / "students").rglob("*")]:
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


# --- repeat: pass rates -----------------------------------------------------------------------

def test_pass_rates_count_runs_per_check(tmp_path):
    def outcome(run, states):
        return RunOutcome("alice", run, tmp_path, {"checks": [{"id": cid, "state": s} for cid, s in states.items()]})
    result = ClassResult(tmp_path, [outcome(1, {"a": "PASS", "b": "FAIL", "c": "SKIP"}),
                                    outcome(2, {"a": "PASS", "b": "PASS", "c": "SKIP"}),
                                    outcome(3, {"a": "PASS", "b": "ERROR", "c": "PASS"})])
    assert result.pass_rates() == {"alice": {"a": (3, 3), "b": (1, 3), "c": (1, 1)}}


# --- labkit grade -----------------------------------------------------------------------------

def test_grade_refuses_to_run_unisolated_without_being_told(tmp_path, monkeypatch):
    import grader.batch as batch

    monkeypatch.setattr(batch, "isolation_available", lambda: "no user namespaces here")
    services(tmp_path / "class" / "alice")
    result = CliRunner().invoke(cli.app, ["grade", "lab-1", str(tmp_path / "class"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "no user namespaces here" in result.output and "--trust-submissions" in result.output
    assert not (tmp_path / "out").exists()


def test_repeat_grades_each_submission_n_times_with_a_replay_per_failure(tmp_path):
    """A submission that does not start: cheap to grade twice, every check an ERROR each time."""
    broken = services(tmp_path / "class" / "broken")
    (broken / "order_api" / "__main__.py").write_text("raise SystemExit('missing configuration')\n")
    out = tmp_path / "graded"
    result = CliRunner().invoke(cli.app, ["grade", "lab-1", str(tmp_path / "class"), "--out", str(out), "--repeat", "2",
                                          "--runtime", "native", "--trust-submissions"])
    assert result.exit_code == 0, result.output
    assert (out / "students" / "broken" / "runs" / "2" / "report.json").exists()
    rates = (out / "pass-rates.csv").read_text().splitlines()
    assert rates[1].startswith("broken,0.00,")
    summary = json.loads((out / "summary.json").read_text())["students"]["broken"]
    assert summary["runs"] == 2 and len(summary["failures"]) == 2 * len(find_lab("lab-1").checks)
    assert {f["run"] for f in summary["failures"]} == {1, 2}
    assert all("--seed" in f["replay"] for f in summary["failures"])
    assert json.loads((out / "students" / "broken" / "repeat.json").read_text())["runs"] == 2


# --- bundles ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def student_kit(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "kit"
    bundle.student(out)
    return out


def test_student_bundle_has_no_reference_mutants_or_grader_tests(student_kit):
    assert sorted(p.name for p in (student_kit / "services").iterdir()) == ["__init__.py", "common"]
    assert not (student_kit / "tests").exists() and not (student_kit / ".ci").exists()
    assert (student_kit / "labs" / "lab-1-exactly-once" / "starter").is_dir()
    assert (student_kit / "Makefile").exists() and (student_kit / "pyproject.toml").exists()
    leaked = [p for p in student_kit.rglob("*") if p.name in ("order_api", "read_model") and "starter" not in p.parts]
    assert not leaked


def test_labkit_runs_from_the_student_bundle(student_kit):
    env = {**os.environ, "PYTHONPATH": str(student_kit)}
    code = "import grader, sys; from grader.cli import app; print(grader.__file__); sys.argv=['labkit','labs']; app()"
    out = subprocess.run([sys.executable, "-c", code], cwd=student_kit, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[0].startswith(str(student_kit)), "the bundle's own grader must be the one run"
    assert "lab-1" in out.stdout
    dry = subprocess.run(["make", "-n", "check-1", "lab-1"], cwd=student_kit, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "labkit check lab-1" in dry.stdout and "labkit run lab-1" in dry.stdout


def test_gradescope_bundle(tmp_path, lab):
    names = bundle.gradescope(lab, tmp_path / "autograder.zip")
    assert "setup.sh" in names and "run_autograder" in names, "both must sit at the zip's root"
    assert not [n for n in names if n.startswith(("kit/tests/", "kit/services/order_api", "kit/services/read_model"))]
    bundle.unpack_gradescope(tmp_path / "autograder.zip", tmp_path / "source")
    for script in ("setup.sh", "run_autograder"):
        path = tmp_path / "source" / script
        assert os.access(path, os.X_OK), f"{script} must be executable"
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0, f"{script}: bash syntax"
    run = (tmp_path / "source" / "run_autograder").read_text()
    assert "grader.batch.gradescope lab-1 /autograder/submission /autograder/results/results.json" in run
    assert "--trust-submissions" not in run
    assert "bubblewrap util-linux nftables" in (tmp_path / "source" / "setup.sh").read_text()


def test_the_gradescope_autograder_refuses_to_grade_unisolated(tmp_path, monkeypatch):
    import grader.batch
    from grader.batch import gradescope

    monkeypatch.setattr(grader.batch, "isolation_available", lambda: "bwrap not found: apt-get install bubblewrap")
    results = tmp_path / "results" / "results.json"
    results.parent.mkdir()
    results.write_text('{"score": 10}')  # whatever was there is replaced
    assert gradescope.main(["lab-1", str(tmp_path / "submission"), str(results)]) == 0
    data = json.loads(results.read_text())
    assert data["score"] == 0 and "not graded" in data["output"] and "bwrap not found" in data["output"]
    assert not (tmp_path / "graded").exists()  # nothing of the submission ran


def test_the_gradescope_autograder_writes_only_after_the_submission_is_gone(tmp_path, monkeypatch):
    """A process of a sandbox uid still running (a survivor) is killed before results.json is written."""
    from grader.batch import gradescope

    if os.geteuid() != 0:
        pytest.skip("running a process as a sandbox uid needs root")
    uid = 3_919_990  # outside the sandboxes' range: other runs on this machine are never touched
    survivor = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sleep", "600"])
    monkeypatch.setattr(gradescope, "uid_range", lambda: (uid, uid))
    try:
        # setpriv switches to the uid as it starts: wait for it (bounded), never assume it already did
        wait_until(lambda: survivor.pid in gradescope.sandbox_processes(), 30, "the survivor to run as its uid")
        assert gradescope.wait_submission_gone(30)
        assert survivor.wait(10) == -9
    finally:
        if survivor.poll() is None:
            survivor.kill()
    graded = tmp_path / "graded" / "students" / "alice"
    graded.mkdir(parents=True)
    (graded / "results.json").write_text('{"score": 3, "tests": []}')
    (tmp_path / "graded" / "students" / "bob").symlink_to(graded)  # a link is never read
    assert gradescope.graded_results(tmp_path / "graded") == {"score": 3, "tests": []}


def test_classroom_bundle_has_the_workflow_the_reporter_needs(tmp_path, lab):
    workflow = bundle.classroom(lab, tmp_path / "template")
    flow = yaml.safe_load(workflow.read_text())
    assert flow["name"] == "Autograding Tests" and list(flow["jobs"]) == ["run-autograding-tests"]
    steps = flow["jobs"]["run-autograding-tests"]["steps"]
    grade = next(s for s in steps if s.get("id") == "labkit")
    assert "labkit check lab-1" in grade["run"] and "grader.report.classroom" in grade["run"]
    reporter = next(s for s in steps if "autograding-grading-reporter" in s.get("uses", ""))
    assert reporter["with"]["runners"] == "labkit"
    assert reporter["env"]["LABKIT_RESULTS"] == "${{ steps.labkit.outputs.result }}"
    assert not (tmp_path / "template" / "services" / "order_api").exists()


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_stopping_the_batch_stops_its_runs_and_leaves_them_ungraded(tmp_path, how):
    """SIGTERM to `labkit grade` mid-run: workers stop (and their servers with them), nothing is marked
    graded, and the next invocation grades the submission. SIGKILL: the orphaned workers stop themselves."""
    import signal

    import psutil

    from grader.wait import wait_until

    slow = services(tmp_path / "class" / "slow")
    (slow / "order_api" / "__main__.py").write_text("import time\ntime.sleep(600)\n")  # never healthy
    out = tmp_path / "graded"
    proc = subprocess.Popen([sys.executable, "-m", "grader.cli", "grade", "lab-1", str(tmp_path / "class"), "--out",
                             str(out), "--runtime", "native", "--trust-submissions"], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def worker_running() -> bool:
            def cmdline(c: psutil.Process) -> str:
                try:
                    return " ".join(c.cmdline())
                except psutil.NoSuchProcess:  # a short-lived child gone between the listing and the read
                    return ""
            return any("grader.batch.worker" in cmdline(c) for c in psutil.Process(proc.pid).children())
        wait_until(worker_running, 60, "the worker to start")
        workers = [c for c in psutil.Process(proc.pid).children(recursive=True)]
        proc.send_signal(getattr(signal, how))
        proc.wait(90)
    finally:
        if proc.poll() is None:
            proc.kill()
    def alive(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    wait_until(lambda: not any(alive(p) for p in workers), 60, "the run's processes to stop")
    assert not (out / "students" / "slow" / "meta.json").exists() and not (out / "students" / "slow" / "report.json").exists()


def test_a_refused_archive_gets_a_row_that_says_why(tmp_path):
    services(tmp_path / "class" / "alice")
    zip_of(tmp_path / "class" / "mallory.zip", {"../../escape.py": b"x"})
    (tmp_path / "class" / "alice" / "order_api" / "__main__.py").write_text("raise SystemExit(1)\n")
    out = tmp_path / "graded"
    result = CliRunner().invoke(cli.app, ["grade", "lab-1", str(tmp_path / "class"), "--out", str(out),
                                          "--runtime", "native", "--trust-submissions"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "students" / "mallory" / "report.json").read_text())
    assert report["score"] == 0 and "the archive was refused" in report["checks"][0]["message"]
    assert not (tmp_path / "escape.py").exists() and not list(tmp_path.rglob("escape.py"))
    assert "mallory" in (out / "class.csv").read_text()


def test_bundle_command(tmp_path):
    runner = CliRunner()
    assert runner.invoke(cli.app, ["bundle", "--gradescope", "lab-1", str(tmp_path / "ag.zip")]).exit_code == 0
    assert zipfile.ZipFile(tmp_path / "ag.zip").getinfo("run_autograder")
    assert runner.invoke(cli.app, ["bundle", "--classroom", "lab-1", str(tmp_path / "tpl")]).exit_code == 0
    assert (tmp_path / "tpl" / ".github" / "workflows" / "classroom.yml").exists()
    assert runner.invoke(cli.app, ["bundle", "--student", str(tmp_path / "kit")]).exit_code == 0
    again = runner.invoke(cli.app, ["bundle", "--student", str(tmp_path / "kit")])
    assert again.exit_code == 2 and "exists" in again.output
    assert runner.invoke(cli.app, ["bundle", "lab-1", str(tmp_path / "x")]).exit_code == 2


def test_identical_submissions_are_flagged():
    from grader.batch.run import ClassResult

    result = ClassResult(Path("graded"), contents={"alice": "d1", "bob": "d1", "carol": "d2", "dan": "d1"})
    assert result.identical() == [["alice", "bob", "dan"]]


def test_eta_comes_from_the_batch_pace_even_one_run_at_a_time():
    from rich.progress import Progress

    from grader.batch.run import EtaColumn

    clock = [0.0]
    column = EtaColumn()
    with Progress(column, get_time=lambda: clock[0], disable=True) as progress:
        task = progress.add_task("grading", total=5, completed=1, initial=1)  # one graded by an earlier call
        assert column.render(progress.tasks[task]).plain == "-:--:--"
        clock[0] = 60.0
        progress.advance(task)
        assert column.render(progress.tasks[task]).plain == "0:03:00"  # 3 left at 60 s each


def test_the_worker_starts_without_a_runpy_warning():
    done = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "grader.batch.worker", "--help"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0 and "RuntimeWarning" not in done.stderr, done.stderr


def test_junit_replay_names_the_submission(tmp_path):
    import xml.etree.ElementTree as ET

    from grader.batch.outputs import error_report, replay_command, write_all
    from grader.lab import find_lab

    lab = find_lab("lab-1")
    report = error_report(lab, tmp_path / "alice", "did not start", "native", seed=7)
    write_all(report, tmp_path / "out", {"replay": replay_command(lab, tmp_path / "alice", 7, "native")})
    props = {p.get("name"): p.get("value") for p in ET.parse(tmp_path / "out" / "junit.xml").getroot().iter("property")}
    assert f"--submission {tmp_path / 'alice'}" in props["replay"]
    assert f"--submission {tmp_path / 'alice'}" in report.replay_command()


def _kit_docs(kit: Path) -> list[Path]:
    return [kit / "README.md", *sorted(kit.glob("labs/*/README.md"))]


def test_student_kit_readmes_commands_run_and_point_at_what_the_kit_has(student_kit):
    """Every `make ...` / `labkit ...` its READMEs offer works in the kit (targets dry-run, labkit commands
    that need no stack run, the others parse), and every path they name is in the kit - no reference
    solution, test, benchmark or mutant of the full kit."""
    import re
    import shlex

    text = "\n".join(p.read_text() for p in _kit_docs(student_kit))
    commands = set(re.findall(r"^(make [^#\n]*?|\.venv/bin/labkit [^#\n]*?)\s*(?:#.*)?$", text, re.M))
    commands |= set(re.findall(r"`((?:make|\.venv/bin/labkit) [^`]+)`", text))
    assert any(c.startswith("make check-") for c in commands) and any("labkit report" in c for c in commands)
    env = {**os.environ, "PYTHONPATH": str(student_kit)}
    for command in sorted(commands):
        words = [w for w in shlex.split(command.replace("N", "1").replace("[", "").replace("]", ""))
                 if not w.startswith("path/") and w != "|"]
        if words[0] == "make":
            assert not {"test", "bench"} & set(words), f"the kit has no tests or benchmarks: {command}"
            dry = subprocess.run(["make", "-n", *words[1:]], cwd=student_kit, capture_output=True, text=True, timeout=60)
            assert dry.returncode == 0, f"{command}: {dry.stderr}"
            continue
        sub = [w for w in words[1:] if not w.startswith(("-", "results/", "$"))][:1]
        argv = [sys.executable, "-c", "import sys; from grader.cli import app; sys.argv[0] = 'labkit'; app()", *sub]
        argv += [] if sub == ["labs"] else ["--help"]  # the others need a stack or a saved run
        done = subprocess.run(argv, cwd=student_kit, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{command}: {done.stderr[-1500:]}"
    named = set(re.findall(r"`((?:services|tests|labs|compose|grader|docs)/[^`\s<>*]*)", text))
    named |= set(re.findall(r"\((?:\./)?((?:services|tests|docs|grader)/[^)\s]+)\)", text))
    missing = [p for p in sorted(named) if "lab-N" not in p and not (student_kit / p.rstrip("/")).exists()]
    assert not missing, f"the kit's READMEs name what the kit does not have: {missing}"
    mutants = {p.name for p in (REPO_ROOT / "tests" / "mutants").glob("*/*") if p.is_dir()}
    named_mutants = [m for m in mutants if re.search(rf"\b{m}\b(?!=)", text)]  # `auto_ack=True` is pika's
    assert not named_mutants, "a mutant's name gives its bug away"


def test_a_clone_s_commit_is_read_without_running_git(tmp_path, lab):
    from grader.batch.discover import git_commit

    clone = services(tmp_path / "class" / "alice")
    run = lambda *a: subprocess.run(["git", "-C", str(clone), *a], check=True, capture_output=True, text=True)
    run("init", "-q")
    run("-c", "user.email=a@b", "-c", "user.name=a", "add", ".")
    run("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "x")
    head = run("rev-parse", "HEAD").stdout.strip()
    (sub,) = [s for s in discover(tmp_path / "class", lab, tmp_path / "work") if s.name == "alice"]
    assert git_commit(sub) == head
    run("pack-refs", "--all")
    assert git_commit(sub) == head
    (clone / ".git" / "config").write_text(f"[core]\n\tfsmonitor = touch {tmp_path / 'ran'}\n")
    assert git_commit(sub) == head and not (tmp_path / "ran").exists()
